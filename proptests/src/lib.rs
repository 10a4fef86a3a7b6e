//! chat-proptests
