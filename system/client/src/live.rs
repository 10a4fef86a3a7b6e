//! [`LiveSession`]: a [`Tracker`] wired to a WebSocket, with heartbeats and reconnection.
//!
//! This is the client recipe of the protocol in one place: sends carry fresh ids and stay
//! pending until acked, a gap in a conversation's `seq` asks for a `sync`, and a reconnect
//! syncs every followed conversation from its last seen `seq` and resends what is pending.

use crate::error::ClientError;
use crate::rest::Client;
use crate::tracker::{LiveEvent, Tracker};
use crate::ws::{WsConnection, WsEvent};
use chat_proto::frame::ClientFrame;
use chat_proto::{ConvId, Seq};
use std::collections::VecDeque;
use std::time::Duration;

/// A logged-in client's live connection. Not `Clone`: one per device.
pub struct LiveSession {
    client: Client,
    ws: Option<WsConnection>,
    tracker: Tracker,
    /// Frames waiting to be written: written before the next read, so none is lost when a
    /// write fails (at worst one is written twice, which the protocol makes harmless).
    outbox: VecDeque<ClientFrame>,
    /// After this long without a frame, a `ping` frame checks the connection is alive.
    heartbeat_interval: Duration,
    awaiting_pong: bool,
    /// A write error found after events were taken from the tracker; reported next call.
    deferred_error: Option<ClientError>,
}

impl LiveSession {
    /// Connects with a fresh [`Tracker`]. `client` must carry a token.
    pub async fn connect(client: Client) -> Result<LiveSession, ClientError> {
        Self::connect_with(client, Tracker::new()).await
    }

    /// Connects with a given tracker (e.g. one with a fixed id prefix, or kept from before).
    /// The tracker's followed conversations are synced and its pending sends resent.
    pub async fn connect_with(
        client: Client,
        tracker: Tracker,
    ) -> Result<LiveSession, ClientError> {
        let heartbeat_interval = client.timeout() / 2;
        let mut session = LiveSession {
            client,
            ws: None,
            tracker,
            outbox: VecDeque::new(),
            heartbeat_interval,
            awaiting_pong: false,
            deferred_error: None,
        };
        session.reconnect().await?;
        Ok(session)
    }

    /// Sets how long the connection may stay silent before a `ping` checks it; the `pong` must
    /// then come within the client's timeout.
    pub fn with_heartbeat_interval(mut self, interval: Duration) -> LiveSession {
        self.heartbeat_interval = interval;
        self
    }

    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    pub fn tracker_mut(&mut self) -> &mut Tracker {
        &mut self.tracker
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The client used to reconnect, e.g. to put in a fresh token after the old one expired.
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Whether a WebSocket is open (as far as we know: a partition shows only as silence).
    pub fn is_connected(&self) -> bool {
        self.ws.is_some()
    }

    /// Follows `conv` from `last_seen` (see [`Tracker::follow`]).
    pub fn follow(&mut self, conv: ConvId, last_seen: Seq) {
        self.tracker.follow(conv, last_seen);
    }

    /// Sends `body` to `conv` under a fresh id and returns the id; the ack comes later as
    /// [`LiveEvent::Acked`]. On error the send stays pending and [`LiveSession::reconnect`]
    /// resends it with the same id.
    pub async fn send_message(
        &mut self,
        conv: ConvId,
        body: impl Into<String>,
    ) -> Result<String, ClientError> {
        let frame = self.tracker.send(conv, body);
        let ClientFrame::Send { id, .. } = &frame else {
            unreachable!("Tracker::send makes send frames")
        };
        let id = id.clone();
        self.outbox.push_back(frame);
        self.flush().await?;
        Ok(id)
    }

    /// Moves the read cursor of `conv` to the last `seq` seen (nothing if none seen).
    pub async fn mark_read(&mut self, conv: ConvId) -> Result<(), ClientError> {
        if let Some(frame) = self.tracker.read_frame(conv) {
            self.outbox.push_back(frame);
        }
        self.flush().await
    }

    /// Sends any frame (e.g. a `sync` from an explicit `seq`).
    pub async fn send_frame(&mut self, frame: ClientFrame) -> Result<(), ClientError> {
        self.outbox.push_back(frame);
        self.flush().await
    }

    /// Waits for the next events worth showing: new messages in order, acks, failed sends,
    /// finished syncs, errors. Answers gaps with `sync` and keeps the connection alive with
    /// pings. An error means the connection is gone (call [`LiveSession::reconnect`]), except
    /// [`ClientError::Decode`], after which the connection is still usable. Cancel-safe: no
    /// frame is lost if the future is dropped.
    pub async fn next_events(&mut self) -> Result<Vec<LiveEvent>, ClientError> {
        if let Some(e) = self.deferred_error.take() {
            return Err(e);
        }
        loop {
            self.flush().await?;
            let ws = self.ws.as_mut().ok_or_else(|| ClientError::Closed {
                code: None,
                reason: "not connected".into(),
            })?;
            let wait = if self.awaiting_pong {
                self.client.timeout()
            } else {
                self.heartbeat_interval
            };
            let event = match ws.recv_timeout(wait).await {
                Ok(event) => event,
                Err(ClientError::Timeout { .. }) if !self.awaiting_pong => {
                    self.awaiting_pong = true;
                    self.outbox.push_back(ClientFrame::Ping);
                    continue;
                }
                Err(ClientError::Timeout { after, .. }) => {
                    self.ws = None;
                    return Err(ClientError::Timeout {
                        op: "heartbeat",
                        after,
                    });
                }
                Err(e @ ClientError::Decode(_)) => return Err(e),
                Err(e) => {
                    self.ws = None;
                    return Err(e);
                }
            };
            self.awaiting_pong = false;
            let frame = match event {
                WsEvent::Frame(frame) => frame,
                WsEvent::Pong(_) => continue,
                WsEvent::Closed { code, reason } => {
                    self.ws = None;
                    return Err(ClientError::Closed { code, reason });
                }
            };
            let step = self.tracker.on_frame(frame);
            self.outbox.extend(step.outgoing);
            let events: Vec<LiveEvent> = step
                .events
                .into_iter()
                .filter(|e| *e != LiveEvent::Pong)
                .collect();
            if !events.is_empty() {
                if let Err(e) = self.flush().await {
                    self.deferred_error = Some(e);
                }
                return Ok(events);
            }
        }
    }

    /// Opens a new WebSocket (closing the old one, if any), syncs every followed conversation
    /// from its last seen `seq` and resends every pending send with its id.
    pub async fn reconnect(&mut self) -> Result<(), ClientError> {
        if let Some(old) = self.ws.take() {
            // Best effort: the old connection may be dead already.
            drop(old);
        }
        self.outbox.clear();
        self.awaiting_pong = false;
        self.deferred_error = None;
        self.ws = Some(self.client.connect_ws().await?);
        self.outbox.extend(self.tracker.on_connect());
        self.flush().await
    }

    /// Closes the connection cleanly.
    pub async fn close(&mut self) -> Result<(), ClientError> {
        match self.ws.take() {
            Some(ws) => ws.close().await,
            None => Ok(()),
        }
    }

    /// Writes the outbox; a frame leaves it only once written.
    async fn flush(&mut self) -> Result<(), ClientError> {
        let Some(ws) = self.ws.as_mut() else {
            return if self.outbox.is_empty() {
                Ok(())
            } else {
                Err(ClientError::Closed {
                    code: None,
                    reason: "not connected".into(),
                })
            };
        };
        while let Some(frame) = self.outbox.front() {
            if let Err(e) = ws.send(frame).await {
                self.ws = None;
                return Err(e);
            }
            self.outbox.pop_front();
        }
        Ok(())
    }
}
