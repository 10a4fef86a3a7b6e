//! The v1 chat protocol and the seams between components.
//!
//! # Layout
//! - [`limits`]: every bound the system enforces, in one place.
//! - [`model`]: identifiers, messages, conversations and their validation.
//! - [`frame`]: WebSocket frames (client and server), parsing with clear errors.
//! - [`rest`]: REST request and response bodies.
//! - [`error`]: the error codes shared by REST and WebSocket answers.
//! - [`api`]: the app server's API: one request enum, one response enum, typed helpers.
//! - [`link`]: deliveries from app servers back to connection servers.
//! - [`sim`]: fault points for the simulator (`buggify`); nothing in production builds.
//! - [`deadline`]: bounded waits sharing one timer, for read loops and other repeated waits
//!   (on the runtime its caller passes in).
//!
//! This crate has no runtime dependency: it builds the same under `--cfg madsim`.

pub mod api;
pub mod deadline;
pub mod error;
pub mod frame;
pub mod limits;
pub mod link;
pub mod model;
pub mod rest;
pub mod sim;

pub use error::{ApiError, ErrorCode};
pub use model::{
    Amend, ConnAddr, ConnId, ConvEvent, ConvId, ConvKind, Conversation, Message, Role, Seq,
    ServerId,
};
