//! The internal link: how connection servers and gateways reach app servers, and how app
//! servers push deliveries back to connection servers.
//!
//! # Layout
//! - [`auth`]: mutual authentication of each link connection from the cluster secret.
//! - [`frame`]: the frames and their codec (length-prefixed JSON, bounded, flushed per burst).
//! - [`client`]: [`LinkClient`], one persistent connection to one app server: multiplexed and
//!   pipelined (request ids, many in flight), bounded queues, a timeout on every wait,
//!   heartbeats, reconnect with backoff. Implements [`chat_proto::api::AppApi`].
//! - [`pool`]: [`AppPool`], several app servers behind one [`chat_proto::api::AppApi`], with
//!   rendezvous hashing (a conversation's sends go to one app server while it is up, so its
//!   sequencer batches them).
//! - [`server`]: the app server's side: [`server::serve`] answers requests from an
//!   [`chat_proto::api::AppApi`], and [`LinkRoutes`] implements
//!   [`chat_proto::link::Delivery`] over the connections of connection servers.
//!
//! Everything runs on the `tokio` alias, so the link runs unchanged under madsim. There, a
//! partition raises no error: it shows up only as a heartbeat or request timeout, which is
//! why every wait has one.

pub mod auth;
pub mod client;
pub mod frame;
pub mod pool;
pub mod server;

pub use auth::LinkKey;
pub use client::LinkClient;
pub use pool::AppPool;
pub use server::LinkRoutes;

use std::time::Duration;

/// Tunables of both ends of the link. Every queue is bounded; every wait has a timeout.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Frames queued for one connection's socket.
    pub outbound_queue_len_max: usize,
    /// Requests of one connection being served at once by an app server; beyond, it stops
    /// reading that connection (backpressure).
    pub requests_in_flight_max: usize,
    /// A request gets no answer after this long: the caller sees `unavailable` (a send may
    /// still have been stored; resending its id is safe).
    pub request_timeout: Duration,
    /// A client pings this often...
    pub heartbeat_interval: Duration,
    /// ...and either side drops a connection silent for this long.
    pub idle_timeout: Duration,
    /// Connecting gives up after this long.
    pub connect_timeout: Duration,
    /// Reconnect backoff bounds.
    pub reconnect_backoff_min: Duration,
    pub reconnect_backoff_max: Duration,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            outbound_queue_len_max: 8192,
            requests_in_flight_max: 1024,
            request_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(4),
            connect_timeout: Duration::from_secs(2),
            reconnect_backoff_min: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(2),
        }
    }
}
