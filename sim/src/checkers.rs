//! The invariants, each a named checker, apart from the cluster and the workload.
//!
//! They read only what clients observed ([`Observed`]) and what the system answers at the end
//! (full histories, inboxes), never the store's internals:
//! - `durability`: every message acknowledged with `sent` is in history with that seq;
//! - `no_duplicates`: one stored message per (sender, client id);
//! - `order`: per conversation `seq` is gapless from 1, every connection saw each
//!   conversation's pushes in increasing `seq`, and no device is left with a gap;
//! - `liveness`: after faults stop, every device settled, every send resolved, every member
//!   has every message;
//! - `inbox`: `last_seq` and `last_message` match history, `unread` matches the read cursor
//!   (a sender's cursor is at least its own newest message; after reading all, zero);
//! - `idempotency`: every ack of one client id carries the same seq, across resends and
//!   across `commit_unknown_result`.

use crate::workload::{ConnEvent, Device, Observed};
use chat_proto::rest::{Inbox, MessageView};
use chat_proto::{ConvId, Seq};
use std::collections::{BTreeMap, HashMap, HashSet};

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub checker: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.checker, self.detail)
    }
}

/// Everything the checkers look at.
pub struct Evidence<'a> {
    pub convs: &'a [(ConvId, Vec<String>)],
    pub devices: &'a [Device],
    pub observed: &'a [Observed],
    pub histories: &'a HashMap<ConvId, Vec<MessageView>>,
    /// Each user's inbox before and after marking everything read.
    pub inboxes_before: &'a HashMap<String, Inbox>,
    pub inboxes_after: &'a HashMap<String, Inbox>,
}

/// Runs every checker; returns all violations (empty: the run is correct).
pub fn check_all(e: &Evidence) -> Vec<Violation> {
    let mut out = Vec::new();
    durability(e, &mut out);
    no_duplicates(e, &mut out);
    order(e, &mut out);
    liveness(e, &mut out);
    inbox(e, &mut out);
    idempotency(e, &mut out);
    out
}

fn violation(out: &mut Vec<Violation>, checker: &'static str, detail: String) {
    // One line per problem is plenty; cap so a systemic failure stays readable.
    if out.iter().filter(|v| v.checker == checker).count() < 5 {
        out.push(Violation { checker, detail });
    }
}

fn durability(e: &Evidence, out: &mut Vec<Violation>) {
    for o in e.observed {
        for (id, send) in &o.sends {
            let Some(&seq) = send.acks.first() else { continue };
            let stored = e.histories.get(&send.conv).and_then(|h| h.get((seq as usize).wrapping_sub(1)));
            match stored {
                Some(m) if m.seq == seq && m.client_msg_id == *id && m.sender == o.user => {}
                other => violation(out, "durability", format!("{}'s {id} acked as conv {} seq {seq}, history has {:?}", o.user, send.conv, other.map(|m| (&m.sender, &m.client_msg_id)))),
            }
        }
    }
}

fn no_duplicates(e: &Evidence, out: &mut Vec<Violation>) {
    let mut seen: HashMap<(&str, &str), (ConvId, Seq)> = HashMap::new();
    for (conv, history) in e.histories {
        for m in history {
            if let Some(first) = seen.insert((&m.sender, &m.client_msg_id), (*conv, m.seq)) {
                violation(out, "no_duplicates", format!("{}/{} stored twice: {first:?} and {:?}", m.sender, m.client_msg_id, (conv, m.seq)));
            }
        }
    }
}

fn order(e: &Evidence, out: &mut Vec<Violation>) {
    for (conv, history) in e.histories {
        if let Some((i, m)) = history.iter().enumerate().find(|(i, m)| m.seq != *i as Seq + 1) {
            violation(out, "order", format!("conv {conv}: history position {i} holds seq {}", m.seq));
        }
    }
    // On one connection, a conversation's messages come in increasing seq; the only
    // restart allowed is the start of the answer to a `sync` the client asked for, at
    // `after + 1` (a sync re-sends what was asked, even if pushed before).
    for o in e.observed {
        for (n, events) in o.pushes.iter().enumerate() {
            let mut last: BTreeMap<ConvId, Seq> = BTreeMap::new();
            // Per conversation: syncs asked and not yet answered, oldest first: (after, restarted).
            let mut asked: BTreeMap<ConvId, std::collections::VecDeque<(Seq, bool)>> = BTreeMap::new();
            for event in events {
                match *event {
                    ConnEvent::SyncSent { conv, after } => asked.entry(conv).or_default().push_back((after, false)),
                    ConnEvent::Synced { conv, .. } => {
                        if let Some(queue) = asked.get_mut(&conv) {
                            queue.pop_front();
                        }
                    }
                    ConnEvent::Message { conv, seq } => {
                        let previous = last.get(&conv).copied().unwrap_or(0);
                        let restart = asked.get_mut(&conv).and_then(|q| q.iter_mut().find(|(after, restarted)| !*restarted && after + 1 == seq));
                        if seq > previous {
                            last.insert(conv, seq);
                        } else if let Some(entry) = restart {
                            entry.1 = true;
                            last.insert(conv, seq);
                        } else {
                            violation(out, "order", format!("{} connection #{n}: conv {conv} got seq {seq} after {previous}, not at the start of a sync", o.user));
                        }
                    }
                }
            }
        }
    }
}

fn liveness(e: &Evidence, out: &mut Vec<Violation>) {
    for (device, o) in e.devices.iter().zip(e.observed) {
        if !o.settled {
            violation(out, "liveness", format!("device {} ({}) did not settle in time", device.index, o.user));
        }
        for (id, send) in &o.sends {
            if send.acks.is_empty() {
                violation(out, "liveness", format!("{}'s send {id} never resolved", o.user));
            }
        }
        for conv in &device.convs {
            let last = e.histories.get(conv).map_or(0, |h| h.len() as Seq);
            let got = o.received.get(conv).map_or(0, |r| r.len() as Seq);
            let complete = o.received.get(conv).is_some_and(|r| r.iter().copied().eq(1..=last)) || last == 0;
            if !complete {
                violation(out, "liveness", format!("device {} ({}) has {got} of {last} messages of conv {conv}", device.index, o.user));
            }
        }
        for (what, detail) in &o.refused {
            violation(out, "liveness", format!("{} got a non-retryable refusal for {what}: {detail}", o.user));
        }
    }
}

fn inbox(e: &Evidence, out: &mut Vec<Violation>) {
    let mut own_newest: HashMap<(&str, ConvId), Seq> = HashMap::new();
    for (conv, history) in e.histories {
        for m in history {
            let newest = own_newest.entry((&m.sender, *conv)).or_insert(0);
            *newest = (*newest).max(m.seq);
        }
    }
    for (user, inbox) in e.inboxes_before {
        let mine: HashSet<ConvId> = e.convs.iter().filter(|(_, m)| m.contains(user)).map(|(c, _)| *c).collect();
        let listed: HashSet<ConvId> = inbox.conversations.iter().map(|c| c.conv_id).collect();
        if mine != listed {
            violation(out, "inbox", format!("{user}'s inbox lists {listed:?}, member of {mine:?}"));
        }
        let mut previous_ts = u64::MAX;
        for entry in &inbox.conversations {
            let history = e.histories.get(&entry.conv_id).map(Vec::as_slice).unwrap_or(&[]);
            let last = history.last();
            if entry.last_seq != last.map_or(0, |m| m.seq) || entry.last_message.as_ref() != last {
                violation(out, "inbox", format!("{user} conv {}: last_seq {} / last message {:?}, history ends at {:?}", entry.conv_id, entry.last_seq, entry.last_message.as_ref().map(|m| m.seq), last.map(|m| m.seq)));
            }
            let own = own_newest.get(&(user.as_str(), entry.conv_id)).copied().unwrap_or(0);
            if entry.unread > entry.last_seq.saturating_sub(own) {
                violation(out, "inbox", format!("{user} conv {}: unread {} but own newest message is seq {own} of {}", entry.conv_id, entry.unread, entry.last_seq));
            }
            if let Some(m) = &entry.last_message {
                if m.ts > previous_ts {
                    violation(out, "inbox", format!("{user}: conv {} (ts {}) listed after a less recent one", entry.conv_id, m.ts));
                }
                previous_ts = m.ts;
            }
        }
    }
    for (user, inbox) in e.inboxes_after {
        for entry in &inbox.conversations {
            if entry.unread != 0 {
                violation(out, "inbox", format!("{user} conv {}: unread {} after reading up to {}", entry.conv_id, entry.unread, entry.last_seq));
            }
        }
    }
}

fn idempotency(e: &Evidence, out: &mut Vec<Violation>) {
    for o in e.observed {
        for (id, send) in &o.sends {
            if send.acks.windows(2).any(|w| w[0] != w[1]) {
                violation(out, "idempotency", format!("{}'s {id} acked with different seqs {:?}", o.user, send.acks));
            }
        }
    }
}
