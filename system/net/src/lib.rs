//! The network edge every role shares, written once.
//!
//! # Layout
//! - [`accept`]: the [`accept::Listener`] seam and the one accept loop (a connection limit,
//!   backoff on errors), used by the HTTP edges and the link server alike.
//! - [`http`]: HTTP/1 serving of an axum router over that loop, on the runtime alias (not
//!   `axum::serve`, which calls the real tokio and panics under madsim).
//! - [`websocket`]: the WebSocket handshake by hand (axum's `WebSocketUpgrade` spawns on the
//!   real tokio): header checks, the 101 answer, the upgraded stream, the token.
//! - [`error`]: protocol errors as HTTP responses, the extractors whose rejections use them,
//!   and the not-found and wrong-method fallbacks.
//! - [`proxy`]: trusted reverse proxies, and the client address behind them.
//! - [`ratelimit`]: keyed rate limits (`governor`) on the simulated clock.
//! - [`rendezvous`]: rendezvous (highest-random-weight) hashing, for app servers in the link
//!   pool and connection servers in the gateway's placement.

pub mod accept;
pub mod error;
pub mod http;
pub mod proxy;
pub mod ratelimit;
pub mod rendezvous;
pub mod websocket;
