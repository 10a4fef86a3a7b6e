//! [`AppPool`]: several app servers behind one [`AppApi`].
//!
//! Rendezvous hashing ([`chat_net::rendezvous`]) picks an app server per
//! [`Request::route_key`]: a conversation's sends go to one app server while it is up, so
//! that server's sequencer batches them and cross-server conflicts on the conversation's
//! `head` key stay rare; a user's other requests go to one server too. When the first
//! choice is disconnected the next one in that key's order is used, and only the keys of a
//! lost server move.
//!
//! A conversation's sends stay on the app server that has sends of it in flight from this
//! pool, while that server is connected: otherwise a server coming back (its link
//! reconnected) would take the next send while the previous one still waits in the other
//! server's queue, and the later send would get the smaller `seq`, breaking the
//! per-connection send order (found by the simulator's `send_order` checker when an
//! isolated app server rejoined). Sends in flight on a server whose link is lost fail at once
//! (retryable), so the conversation moves on as soon as the loss is noticed.

use crate::LinkClient;
use chat_net::rendezvous;
use chat_proto::ConvId;
use chat_proto::api::{AppApi, Call, Request, RouteKey};
use futures::FutureExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct AppPool {
    clients: Vec<LinkClient>,
    /// Each client's name in the rendezvous ranking: its address, formatted once.
    names: Arc<[String]>,
    /// Per conversation with sends in flight: the server they went to.
    in_flight: Arc<Mutex<HashMap<ConvId, InFlight>>>,
}

/// Sends of one conversation in flight on one app server.
struct InFlight {
    client: usize,
    /// Bumped when the conversation moves to another server, so answers from the old one
    /// do not count down the new one's sends.
    generation: u64,
    count: usize,
}

/// One send in flight, counted down on drop.
struct Ticket {
    in_flight: Arc<Mutex<HashMap<ConvId, InFlight>>>,
    conv: ConvId,
    generation: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = map
            .get_mut(&self.conv)
            .filter(|e| e.generation == self.generation)
        {
            entry.count = entry.count.saturating_sub(1);
            if entry.count == 0 {
                map.remove(&self.conv);
            }
        }
    }
}

impl AppPool {
    pub fn new(clients: Vec<LinkClient>) -> AppPool {
        assert!(
            !clients.is_empty(),
            "an app pool needs at least one app server"
        );
        let names = clients.iter().map(|c| c.addr().to_string()).collect();
        AppPool {
            clients,
            names,
            in_flight: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<ConvId, InFlight>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn clients(&self) -> &[LinkClient] {
        &self.clients
    }

    /// The app server for `key` (its index): the connected one with the highest weight.
    fn pick(&self, key: u64) -> usize {
        let names = self.names.iter().map(String::as_str);
        rendezvous::pick(key, names.clone(), |i| self.clients[i].is_connected())
            // None connected: ask the first choice anyway; it answers `unavailable` at once.
            .or_else(|| rendezvous::pick(key, names, |_| true))
            .unwrap_or(0)
    }

    /// Submits a send of `conv` (in the caller's order), on the server that has sends of
    /// the conversation in flight while it is connected, else on the conversation's own.
    fn call_on_conv_server(&self, conv: ConvId, request: Request) -> Call {
        let (client, generation) = {
            let mut in_flight = self.lock_in_flight();
            let chosen = match in_flight.get(&conv) {
                Some(f) if f.count > 0 && self.clients[f.client].is_connected() => f.client,
                _ => self.pick(rendezvous::key(1, &conv.to_be_bytes())),
            };
            let entry = in_flight.entry(conv).or_insert(InFlight {
                client: chosen,
                generation: 0,
                count: 0,
            });
            if entry.client != chosen {
                entry.client = chosen;
                entry.generation += 1;
                entry.count = 0;
            }
            entry.count += 1;
            (chosen, entry.generation)
        };
        // Submitted now (in the caller's order); only the answer is awaited.
        let answer = self.clients[client].call(request);
        // Counted down when answered, or when the caller stops waiting (dropped).
        let ticket = Ticket {
            in_flight: self.in_flight.clone(),
            conv,
            generation,
        };
        async move {
            let result = answer.await;
            drop(ticket);
            result
        }
        .boxed()
    }
}

impl AppApi for AppPool {
    fn call(&self, request: Request) -> Call {
        match request.route_key() {
            RouteKey::User(user) => {
                let key = rendezvous::key(0, user.as_bytes());
                self.clients[self.pick(key)].call(request)
            }
            RouteKey::Conv(conv) => self.call_on_conv_server(conv, request),
        }
    }
}
