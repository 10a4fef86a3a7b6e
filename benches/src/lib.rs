//! chat-benches
