//! The invariants, each a named checker, apart from the cluster and the workload.
//!
//! They read only what clients observed ([`Observed`]), the faults as they were played, and
//! what the system answers at the end (full histories, inboxes), never the store's internals:
//! - `durability`: every message acknowledged with `sent` is in history with that seq;
//! - `no_duplicates`: one stored message per (sender, client id);
//! - `order`: per conversation `seq` is gapless from 1, and every connection saw each
//!   conversation's messages in increasing `seq` (restarting only where a sync asked);
//! - `liveness`: after faults stop, every device settled, every send resolved, no valid
//!   request was refused;
//! - `inbox`: the inbox lists exactly the user's conversations, `last_seq` and
//!   `last_message` match history, most recent first;
//! - `idempotency`: every ack of one client id carries the same seq;
//! - `live_delivery`: a message committed while a member's device is connected over a
//!   healthy path is pushed to it within [`PUSH_BOUND`];
//! - `content`: every frame, page and inbox entry carries exactly what its sender sent;
//! - `recipients`: nothing of a conversation reaches a non-member; every device of every
//!   member ends with every message;
//! - `send_order`: sends written A then B on one connection get seq(A) < seq(B);
//! - `read_state`: unread is exact once quiet; an observed cursor never moves backwards;
//! - `reads`: a read that starts after an ack includes that message; a device's reads never
//!   go backwards; pages are exactly the messages asked for;
//! - `failover`: while one app server is down (and nothing else is wrong), sends are
//!   acknowledged by the other within [`FAILOVER_ACK_BOUND`];
//! - `accounts`: registrations, logins and conversation creations made during the faults,
//!   retried after answers that may have been applied, end as exactly one account that logs
//!   in with its password and conversations with exactly their members, nothing else;
//! - `receipts`: a receipt reaches only members of its conversation, names a member, never
//!   says more than that reader asked to mark read, and never reaches anyone else's device
//!   for a reader who turned receipts off;
//! - `typing`: a typing notice reaches only a member of its conversation, names another
//!   member, and is throttled: a typer's burst of notices is one (away from faults);
//! - `membership`: in a group whose members come and go during the faults, nobody is
//!   pushed a message of a `seq` at which they were not a member, pushes carry what history
//!   holds, every change was made by someone allowed to, and after the faults each user reads
//!   exactly the history up to their removal (or all of it, as a member);
//! - `slow_consumers`: a client that stops reading for good is dropped by the server it is
//!   connected to (its connection server, or the gateway splicing it) within
//!   [`Evidence::stall_drop_bound`]; the other checkers see that nobody else suffers.

use crate::accounts::{Newcomer, Registration};
use crate::cluster::Node;
use crate::faults::Fault;
use crate::membership::{KEEP, MembershipRun, OWNER};
use crate::workload::{ConnEvent, ConnRecord, Device, Observed, ReadAnswer, ReadKind};
use chat_proto::rest::{Inbox, MessageView};
use chat_proto::{ConvId, ErrorCode, Seq};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

/// A message must reach every healthy, connected member device within this.
pub const PUSH_BOUND: Duration = Duration::from_secs(5);
/// A device counts as connected (and registered) this long after its socket opened.
const REGISTERED_AFTER: Duration = Duration::from_secs(2);
/// After a fault ends, links reconnect (with backoff) and connection servers re-register
/// their connections; the path is healthy again after this.
const RECOVERY: Duration = Duration::from_secs(15);

/// Connection servers notice a dead app server's link within its idle timeout (4 s).
const FAILOVER_DETECTED_AFTER: Duration = Duration::from_secs(6);
/// Once noticed, a send is acknowledged by another app server within this (the backlog of
/// resends that piled up meanwhile drains first: 5 s was once just too short, seed 61).
pub const FAILOVER_ACK_BOUND: Duration = Duration::from_secs(8);

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

/// A fault as it was played, in simulated microseconds since the epoch.
#[derive(Debug, Clone)]
pub struct PlayedFault {
    pub fault: Fault,
    pub begin_us: u64,
    pub end_us: u64,
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
    pub faults: &'a [PlayedFault],
    /// When buggify (fault points everywhere) was on.
    pub buggify: Option<(u64, u64)>,
    /// How long after a client stops reading for good its server must have dropped it (from
    /// the seed's idle and write timeouts)...
    pub stall_drop_bound: Duration,
    /// ...plus this for each request it had not had answered (the connection server's
    /// request timeout: frames are handled in order before the silence is noticed).
    pub stall_request_allowance: Duration,
    /// Who registered during the faults, and what they saw.
    pub newcomers: &'a [Newcomer],
    /// The group whose members came and went, and what they saw.
    pub membership: &'a MembershipRun,
}

/// How live delivery went: the share of (member device, message) pairs whose message was
/// pushed live within the bound, and the push latency.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LiveFigures {
    pub pairs: usize,
    pub live: usize,
    /// Pairs the `live_delivery` checker judged (a healthy path for the whole bound).
    pub judged: usize,
    pub push_p99_ms: f64,
}

impl LiveFigures {
    pub fn share_percent(&self) -> f64 {
        if self.pairs == 0 {
            100.0
        } else {
            self.live as f64 * 100.0 / self.pairs as f64
        }
    }
}

/// Runs every checker; returns all violations (empty: the run is correct) and the live
/// delivery figures.
pub fn check_all(e: &Evidence) -> (Vec<Violation>, LiveFigures) {
    let mut out = Vec::new();
    durability(e, &mut out);
    no_duplicates(e, &mut out);
    order(e, &mut out);
    liveness(e, &mut out);
    inbox(e, &mut out);
    idempotency(e, &mut out);
    let live = live_delivery(e, &mut out);
    content(e, &mut out);
    recipients(e, &mut out);
    send_order(e, &mut out);
    read_state(e, &mut out);
    reads(e, &mut out);
    failover(e, &mut out);
    slow_consumers(e, &mut out);
    accounts(e, &mut out);
    membership(e, &mut out);
    receipts(e, &mut out);
    typing(e, &mut out);
    (out, live)
}

/// See the module's list. The throttle: a typer's client sends a burst of notices as they
/// type; one per interval is passed on, so three within a second at one device mean
/// the burst went through. Judged away from faults and fault points (a delayed notice may
/// meet the next ones there).
fn typing(e: &Evidence, out: &mut Vec<Violation>) {
    const TYPING_BURST_US: u64 = 1_000_000;
    let members: HashMap<ConvId, &Vec<String>> = e.convs.iter().map(|(c, m)| (*c, m)).collect();
    let quiet = |from: u64, to: u64| {
        let recovered = RECOVERY.as_micros() as u64;
        e.faults
            .iter()
            .all(|f| !overlaps((f.begin_us, f.end_us + recovered), (from, to)))
            && e.buggify.is_none_or(|b| !overlaps(b, (from, to)))
    };
    for (device, o) in e.devices.iter().zip(e.observed) {
        let mut recent: HashMap<(ConvId, &str), Vec<u64>> = HashMap::new();
        let mut reported = 0;
        for (conv, typer, at) in &o.typing {
            let problem = match members.get(conv) {
                None => Some("of a conversation outside the scenario".to_owned()),
                Some(m) if !m.contains(&o.user) => Some("while not a member".to_owned()),
                Some(m) if !m.contains(typer) => Some("naming a non-member".to_owned()),
                Some(_) if *typer == o.user => Some("naming its own user".to_owned()),
                Some(_) => {
                    let times = recent.entry((*conv, typer.as_str())).or_default();
                    times.push(*at);
                    if times.len() > 3 {
                        times.remove(0);
                    }
                    let first = times[0];
                    (times.len() == 3
                        && at - first < TYPING_BURST_US
                        && quiet(first.saturating_sub(10_000_000), *at))
                    .then(|| format!("three times within {} us: not throttled", at - first))
                }
            };
            if let Some(problem) = problem {
                reported += 1;
                if reported <= 3 {
                    violation(
                        out,
                        "typing",
                        format!(
                            "device {} ({}) got {typer} typing in conv {conv} {problem}",
                            device.index, o.user
                        ),
                    );
                }
            }
        }
    }
}

/// See the module's list. What each reader asked to mark read comes from every `read` frame
/// their devices wrote (a receipt may come from any of them).
fn receipts(e: &Evidence, out: &mut Vec<Violation>) {
    let members: HashMap<ConvId, &Vec<String>> = e.convs.iter().map(|(c, m)| (*c, m)).collect();
    let mut asked: HashMap<(&str, ConvId), Seq> = HashMap::new();
    for o in e.observed {
        for mark in &o.marks {
            let most = asked.entry((o.user.as_str(), mark.conv)).or_insert(0);
            *most = (*most).max(mark.seq);
        }
    }
    for (device, o) in e.devices.iter().zip(e.observed) {
        let mut reported = 0;
        for (conv, reader, seq) in &o.receipts {
            let problem = match members.get(conv) {
                None => Some("of a conversation outside the scenario".to_owned()),
                Some(m) if !m.contains(&o.user) => Some("while not a member".to_owned()),
                Some(m) if !m.contains(reader) => Some("naming a non-member".to_owned()),
                Some(_) if *reader != o.user && crate::scenario::receipts_off(reader) => {
                    Some(format!("though {reader} turned receipts off"))
                }
                Some(_) => {
                    let most = asked.get(&(reader.as_str(), *conv)).copied().unwrap_or(0);
                    (*seq > most).then(|| format!("beyond what {reader} marked read ({most})"))
                }
            };
            if let Some(problem) = problem {
                reported += 1;
                if reported <= 3 {
                    violation(
                        out,
                        "receipts",
                        format!(
                            "device {} ({}) got receipt {reader}@{seq} of conv {conv} {problem}",
                            device.index, o.user
                        ),
                    );
                }
            }
        }
    }
}

/// See the module's list. Who was a member at each `seq` comes from the group's final
/// history: its events are the membership changes, in order.
fn membership(e: &Evidence, out: &mut Vec<Violation>) {
    use chat_proto::ConvEvent;
    let run = e.membership;
    let Some(conv) = run.conv else {
        return;
    };
    let v = |out: &mut Vec<Violation>, detail: String| violation(out, "membership", detail);
    let Some(history) = &run.history else {
        v(
            out,
            format!("group {conv}: its history could not be read after the faults"),
        );
        return;
    };
    let seqs: Vec<Seq> = history.iter().map(|m| m.seq).collect();
    if seqs != (1..=history.len() as Seq).collect::<Vec<_>>() {
        v(out, format!("group {conv}: history is not gapless from 1"));
        return;
    }
    // members[s] = who was a member after the event at `s` (index 0: at creation).
    let mut members: Vec<HashSet<&str>> = vec![[OWNER, KEEP].into_iter().collect()];
    // Each user's last removal, for the final reads.
    let mut removed_at: HashMap<&str, Seq> = HashMap::new();
    for m in history {
        let mut now = members.last().cloned().unwrap_or_default();
        match &m.event {
            Some(ConvEvent::MemberAdded { user, .. }) => {
                now.insert(user);
                removed_at.remove(user.as_str());
            }
            Some(ConvEvent::MemberRemoved { user }) => {
                now.remove(user.as_str());
                removed_at.insert(user, m.seq);
                if m.sender != OWNER && m.sender != *user {
                    v(
                        out,
                        format!("group {conv} seq {}: {} removed {user}", m.seq, m.sender),
                    );
                }
            }
            Some(ConvEvent::Edited { seq: at } | ConvEvent::Deleted { seq: at }) => {
                let target = history.get((*at as usize).wrapping_sub(1));
                if target.is_none_or(|t| t.sender != m.sender || t.event.is_some()) {
                    v(
                        out,
                        format!(
                            "group {conv} seq {}: {} amended seq {at}, not a message of theirs",
                            m.seq, m.sender
                        ),
                    );
                }
            }
            Some(other) if m.sender != OWNER => {
                v(
                    out,
                    format!("group {conv} seq {}: {} made {other:?}", m.seq, m.sender),
                );
            }
            _ => {}
        }
        if matches!(&m.event, Some(ConvEvent::MemberAdded { .. })) && m.sender != OWNER {
            v(
                out,
                format!("group {conv} seq {}: {} added a member", m.seq, m.sender),
            );
        }
        members.push(now);
    }
    // Edits and deletes: each amended message holds the body of its newest edit (or none
    // once deleted), and so does every edit event of it.
    let mut newest: HashMap<Seq, (&str, bool)> = HashMap::new();
    for m in history {
        match &m.event {
            Some(ConvEvent::Edited { seq: at }) => {
                let body = run.edits.get(&m.client_msg_id).map_or("?", String::as_str);
                let slot = newest.entry(*at).or_insert((body, false));
                if !slot.1 {
                    slot.0 = body;
                }
            }
            Some(ConvEvent::Deleted { seq: at }) => {
                newest.insert(*at, ("", true));
            }
            _ => {}
        }
    }
    for m in history {
        let amended = match &m.event {
            Some(ConvEvent::Edited { seq: at }) => newest.get(at).map(|n| (n.0, "its edit event")),
            None => newest.get(&m.seq).map(|n| (n.0, "the message")),
            _ => None,
        };
        let expected_marks = newest.get(&m.seq).map_or((false, false), |n| (!n.1, n.1));
        if m.event.is_none()
            && (m.edited || m.deleted, m.deleted)
                != (expected_marks.0 || expected_marks.1, expected_marks.1)
        {
            v(
                out,
                format!(
                    "group {conv} seq {}: marked edited {} deleted {}, its events say edited {} deleted {}",
                    m.seq, m.edited, m.deleted, expected_marks.0, expected_marks.1
                ),
            );
        }
        if let Some((body, what)) = amended
            && m.body != body
        {
            v(
                out,
                format!(
                    "group {conv} seq {}: {what} reads {:?}, expected {body:?}",
                    m.seq, m.body
                ),
            );
        }
    }
    for done in &run.forbidden_done {
        v(
            out,
            format!("group {conv}: a forbidden change was answered as done: {done}"),
        );
    }
    for p in &run.pushed {
        let Some(stored) = history.get((p.seq as usize).wrapping_sub(1)) else {
            v(
                out,
                format!(
                    "group {conv}: {} was pushed seq {}, which history lacks",
                    p.user, p.seq
                ),
            );
            continue;
        };
        let s = p.seq as usize;
        // A user's own addition and removal reach them too.
        let member =
            members[s - 1].contains(p.user.as_str()) || members[s].contains(p.user.as_str());
        if !member {
            v(
                out,
                format!(
                    "group {conv}: {} was pushed seq {} ({:?}) while not a member",
                    p.user, p.seq, p.event
                ),
            );
        }
        // Bodies change with later edits and deletes: compared only where none came.
        let amended = stored.edited
            || stored.deleted
            || matches!(stored.event, Some(ConvEvent::Edited { .. }));
        if (&p.sender, &p.event) != (&stored.sender, &stored.event)
            || (!amended && p.body != stored.body)
        {
            v(
                out,
                format!(
                    "group {conv} seq {}: pushed to {} as {}/{:?}/{:?}, stored as {}/{:?}/{:?}",
                    p.seq,
                    p.user,
                    p.sender,
                    p.body,
                    p.event,
                    stored.sender,
                    stored.body,
                    stored.event
                ),
            );
        }
    }
    let last = members.last().cloned().unwrap_or_default();
    for (user, seen) in &run.seen_by {
        let Some(seen) = seen else {
            v(
                out,
                format!("group {conv}: {user}'s reads failed after the faults"),
            );
            continue;
        };
        // A member reads all of it: at least what the owner's first read held (sends may
        // still have landed between the owner's two reads).
        let (least, most): (Seq, Seq) = if last.contains(user.as_str()) {
            let first = run.history_first_len.unwrap_or(history.len()) as Seq;
            (first, history.len() as Seq)
        } else {
            let removed = removed_at.get(user.as_str()).copied().unwrap_or(0);
            (removed, removed)
        };
        let got: Vec<Seq> = seen.iter().map(|m| m.seq).collect();
        let expected = got.len() as Seq;
        // Every device converges to the same edited and deleted state.
        if let Some(m) = seen.iter().zip(history).find(|(mine, truth)| mine != truth) {
            v(
                out,
                format!(
                    "group {conv}: {user} reads seq {} as {:?}, the owner as {:?}",
                    m.0.seq, m.0, m.1
                ),
            );
        }
        if !(least..=most).contains(&expected) || got != (1..=expected).collect::<Vec<_>>() {
            v(
                out,
                format!(
                    "group {conv}: {user} reads {} messages up to {:?}, expected 1..=n, {least} <= n <= {most}",
                    got.len(),
                    got.last()
                ),
            );
        }
    }
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
            let Some(&seq) = send.acks.first() else {
                continue;
            };
            let stored = e
                .histories
                .get(&send.conv)
                .and_then(|h| h.get((seq as usize).wrapping_sub(1)));
            match stored {
                Some(m) if m.seq == seq && m.client_msg_id == *id && m.sender == o.user => {}
                other => violation(
                    out,
                    "durability",
                    format!(
                        "{}'s {id} acked as conv {} seq {seq}, history has {:?}",
                        o.user,
                        send.conv,
                        other.map(|m| (&m.sender, &m.client_msg_id))
                    ),
                ),
            }
        }
    }
}

fn no_duplicates(e: &Evidence, out: &mut Vec<Violation>) {
    let mut seen: HashMap<(&str, &str), (ConvId, Seq)> = HashMap::new();
    for (conv, history) in e.histories {
        for m in history {
            if let Some(first) = seen.insert((&m.sender, &m.client_msg_id), (*conv, m.seq)) {
                violation(
                    out,
                    "no_duplicates",
                    format!(
                        "{}/{} stored twice: {first:?} and {:?}",
                        m.sender,
                        m.client_msg_id,
                        (conv, m.seq)
                    ),
                );
            }
        }
    }
}

fn order(e: &Evidence, out: &mut Vec<Violation>) {
    for (conv, history) in e.histories {
        if let Some((i, m)) = history
            .iter()
            .enumerate()
            .find(|(i, m)| m.seq != *i as Seq + 1)
        {
            violation(
                out,
                "order",
                format!("conv {conv}: history position {i} holds seq {}", m.seq),
            );
        }
    }
    // On one connection, a conversation's messages come in increasing seq; the only
    // restart allowed is the start of the answer to a `sync` the client asked for, at
    // `after + 1` (a sync re-sends what was asked, even if pushed before).
    for o in e.observed {
        for (n, connection) in o.connections.iter().enumerate() {
            let mut last: BTreeMap<ConvId, Seq> = BTreeMap::new();
            // Per conversation: syncs asked and not yet answered, oldest first: (after, restarted).
            let mut asked: BTreeMap<ConvId, std::collections::VecDeque<(Seq, bool)>> =
                BTreeMap::new();
            for event in &connection.events {
                match *event {
                    ConnEvent::SyncSent { conv, after, .. } => {
                        asked.entry(conv).or_default().push_back((after, false))
                    }
                    ConnEvent::Synced { conv, .. } | ConnEvent::SyncFailed { conv, .. } => {
                        if let Some(queue) = asked.get_mut(&conv) {
                            queue.pop_front();
                        }
                    }
                    ConnEvent::Message { conv, seq } => {
                        let previous = last.get(&conv).copied().unwrap_or(0);
                        let restart = asked.get_mut(&conv).and_then(|q| {
                            q.iter_mut()
                                .find(|(after, restarted)| !*restarted && after + 1 == seq)
                        });
                        if seq > previous {
                            last.insert(conv, seq);
                        } else if let Some(entry) = restart {
                            entry.1 = true;
                            last.insert(conv, seq);
                        } else {
                            violation(
                                out,
                                "order",
                                format!(
                                    "{} connection #{n}: conv {conv} got seq {seq} after {previous}, not at the start of a sync",
                                    o.user
                                ),
                            );
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
            violation(
                out,
                "liveness",
                format!(
                    "device {} ({}) did not settle in time",
                    device.index, o.user
                ),
            );
        }
        for (id, send) in &o.sends {
            if send.acks.is_empty() {
                violation(
                    out,
                    "liveness",
                    format!("{}'s send {id} never resolved", o.user),
                );
            }
        }
        for (what, detail) in &o.refused {
            violation(
                out,
                "liveness",
                format!(
                    "{} got a non-retryable refusal for {what}: {detail}",
                    o.user
                ),
            );
        }
    }
}

fn inbox(e: &Evidence, out: &mut Vec<Violation>) {
    for (user, inbox) in e.inboxes_before {
        let mine: HashSet<ConvId> = e
            .convs
            .iter()
            .filter(|(_, m)| m.contains(user))
            .map(|(c, _)| *c)
            .collect();
        let listed: HashSet<ConvId> = inbox.conversations.iter().map(|c| c.conv_id).collect();
        if mine != listed {
            violation(
                out,
                "inbox",
                format!("{user}'s inbox lists {listed:?}, member of {mine:?}"),
            );
        }
        let mut previous_ts = u64::MAX;
        for entry in &inbox.conversations {
            let history = e
                .histories
                .get(&entry.conv_id)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let last = history.last();
            if entry.last_seq != last.map_or(0, |m| m.seq) || entry.last_message.as_ref() != last {
                violation(
                    out,
                    "inbox",
                    format!(
                        "{user} conv {}: last_seq {} / last message {:?}, history ends at {:?}",
                        entry.conv_id,
                        entry.last_seq,
                        entry.last_message.as_ref().map(|m| m.seq),
                        last.map(|m| m.seq)
                    ),
                );
            }
            if let Some(m) = &entry.last_message {
                if m.ts > previous_ts {
                    violation(
                        out,
                        "inbox",
                        format!(
                            "{user}: conv {} (ts {}) listed after a less recent one",
                            entry.conv_id, m.ts
                        ),
                    );
                }
                previous_ts = m.ts;
            }
        }
    }
}

fn idempotency(e: &Evidence, out: &mut Vec<Violation>) {
    for o in e.observed {
        for (id, send) in &o.sends {
            if send.acks.windows(2).any(|w| w[0] != w[1]) {
                violation(
                    out,
                    "idempotency",
                    format!(
                        "{}'s {id} acked with different seqs {:?}",
                        o.user, send.acks
                    ),
                );
            }
        }
    }
}

/// Who a fault can slow down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    All,
    /// Only connections that go through this node first (a gateway: its splices).
    Via(Node),
    Device(usize),
}

/// Windows during which a path may be unhealthy: each fault from its start to its end plus
/// the time the system takes to recover.
fn unhealthy(e: &Evidence) -> Vec<(u64, u64, Scope)> {
    let recovery = RECOVERY.as_micros() as u64;
    let mut windows: Vec<(u64, u64, Scope)> = e
        .faults
        .iter()
        .map(|f| {
            let scope = match &f.fault {
                Fault::Kill(node @ Node::Gateway(_))
                | Fault::Isolate(node @ Node::Gateway(_))
                | Fault::Pause(node @ Node::Gateway(_)) => Scope::Via(*node),
                Fault::Partition(a @ Node::Gateway(_), _)
                | Fault::OneWay(a @ Node::Gateway(_), _) => Scope::Via(*a),
                Fault::Partition(_, b @ Node::Gateway(_))
                | Fault::OneWay(_, b @ Node::Gateway(_)) => Scope::Via(*b),
                Fault::Disconnect(device) | Fault::Stall { device, .. } => Scope::Device(*device),
                _ => Scope::All,
            };
            (f.begin_us, f.end_us.saturating_add(recovery), scope)
        })
        .collect();
    // A stall as the device lived it (it starts when the device next looks at its orders).
    for (device, o) in e.devices.iter().zip(e.observed) {
        for stall in &o.stalls {
            windows.push((
                stall.begin_us,
                stall.end_us.saturating_add(recovery),
                Scope::Device(device.index),
            ));
        }
    }
    if let Some((begin, end)) = e.buggify {
        // Fault points delay acks and deliveries by seconds, registrations too, and hold
        // acks for 30 s: nothing is healthy while they are live.
        windows.push((begin, end.saturating_add(recovery + 30_000_000), Scope::All));
    }
    windows
}

/// Per conversation, the intervals of `connection` during which a sync was outstanding: the
/// connection server holds live pushes of the conversation back until the sync's pages are
/// out (pushes stay in `seq` order), and a sync from far behind, with pages of a few
/// messages, can take seconds (a person's own scroll-back sync did, seed 159).
fn sync_windows(connection: &ConnRecord) -> HashMap<ConvId, Vec<(u64, u64)>> {
    let mut open: HashMap<ConvId, std::collections::VecDeque<u64>> = HashMap::new();
    let mut windows: HashMap<ConvId, Vec<(u64, u64)>> = HashMap::new();
    for event in &connection.events {
        match *event {
            ConnEvent::SyncSent { conv, at_us, .. } => {
                open.entry(conv).or_default().push_back(at_us)
            }
            ConnEvent::Synced { conv, at_us, .. } | ConnEvent::SyncFailed { conv, at_us } => {
                if let Some(from) = open.get_mut(&conv).and_then(|q| q.pop_front()) {
                    windows.entry(conv).or_default().push((from, at_us));
                }
            }
            ConnEvent::Message { .. } => {}
        }
    }
    // Never answered: outstanding until the connection closed.
    for (conv, queue) in open {
        windows
            .entry(conv)
            .or_default()
            .extend(queue.into_iter().map(|from| (from, connection.closed_us)));
    }
    windows
}

fn slow_consumers(e: &Evidence, out: &mut Vec<Violation>) {
    let bound = e.stall_drop_bound.as_micros() as u64;
    for (device, o) in e.devices.iter().zip(e.observed) {
        for stall in o.stalls.iter().filter(|s| s.forever) {
            // A paused server does nothing meanwhile; its pause is added to the bound.
            let paused: u64 = e
                .faults
                .iter()
                .filter(|f| matches!(f.fault, Fault::Pause(_)))
                .map(|f| {
                    f.end_us
                        .min(stall.begin_us + bound)
                        .saturating_sub(f.begin_us.max(stall.begin_us))
                })
                .sum();
            let requests =
                e.stall_request_allowance.as_micros() as u64 * stall.open_requests as u64;
            let allowed = bound + paused + requests;
            let waited = stall.end_us.saturating_sub(stall.begin_us);
            // The process holding the connection ended (killed, or restarted to recover its
            // disk) as the device stopped reading, or after: that dropped it, and a device
            // that no longer reads cannot see it (seed 16 of the single-node scenario
            // restarted the server 11 us before its device stopped reading).
            let ended = e.faults.iter().any(|f| {
                let at = match &f.fault {
                    Fault::Kill(node) if *node == stall.via => f.begin_us,
                    Fault::DiskErrors(_) if stall.via == Node::Serve => f.end_us,
                    _ => return false,
                };
                (stall.begin_us.saturating_sub(1_000_000)..=stall.begin_us + allowed).contains(&at)
            });
            if ended {
                continue;
            }
            match stall.dropped_us {
                Some(at) if at.saturating_sub(stall.begin_us) <= allowed => {}
                Some(at) => violation(
                    out,
                    "slow_consumers",
                    format!(
                        "device {} ({}) stopped reading via {}; the server dropped it after {} ms, bound {} ms",
                        device.index,
                        device.user,
                        stall.via,
                        (at - stall.begin_us) / 1000,
                        allowed / 1000
                    ),
                ),
                // The device stopped waiting before the bound (the chaos phase ended): no verdict.
                None if waited < allowed => {}
                None => violation(
                    out,
                    "slow_consumers",
                    format!(
                        "device {} ({}) stopped reading via {}; still connected {} ms later, bound {} ms",
                        device.index,
                        device.user,
                        stall.via,
                        waited / 1000,
                        allowed / 1000
                    ),
                ),
            }
        }
    }
}

fn accounts(e: &Evidence, out: &mut Vec<Violation>) {
    let by_name: HashMap<&str, &Newcomer> =
        e.newcomers.iter().map(|n| (n.user.as_str(), n)).collect();
    let creations: Vec<&crate::accounts::Creation> =
        e.newcomers.iter().flat_map(|n| &n.creations).collect();
    for n in e.newcomers {
        match &n.registration {
            Registration::TakenAtFirst => violation(
                out,
                "accounts",
                format!(
                    "{}: a name nobody had used was taken at the first attempt",
                    n.user
                ),
            ),
            Registration::Refused(code) => violation(
                out,
                "accounts",
                format!("{}: registration refused with {code}", n.user),
            ),
            // Ours (applied before its answer was lost): the password must work.
            Registration::Created | Registration::TakenAfterUnknown => {
                if let Err(code) = &n.final_login {
                    violation(
                        out,
                        "accounts",
                        format!(
                            "{} registered ({:?}) but cannot log in after the faults: {code}",
                            n.user, n.registration
                        ),
                    );
                } else if n.final_inbox.is_none() {
                    violation(
                        out,
                        "accounts",
                        format!("{}: the inbox could not be read after the faults", n.user),
                    );
                }
            }
            // Applied or not: either logs in or is unknown; both are fine.
            Registration::Unanswered => {}
        }
        for c in &n.creations {
            if let Some(code) = &c.refused {
                violation(
                    out,
                    "accounts",
                    format!(
                        "{}: creating {:?} {:?} refused with {code}",
                        n.user, c.members, c.title
                    ),
                );
            }
            let Some(view) = &c.created else { continue };
            if view.members != c.members || view.title != c.title {
                violation(
                    out,
                    "accounts",
                    format!(
                        "{}: asked for {:?} {:?}, answered conv {} with {:?} {:?}",
                        n.user, c.members, c.title, view.conv_id, view.members, view.title
                    ),
                );
            }
            // Every member finds it, with these members.
            for member in &c.members {
                let Some(inbox) = by_name
                    .get(member.as_str())
                    .and_then(|m| m.final_inbox.as_ref())
                else {
                    continue;
                };
                match inbox.iter().find(|v| v.conv_id == view.conv_id) {
                    Some(v) if v.members == c.members && v.title == c.title => {}
                    other => violation(
                        out,
                        "accounts",
                        format!(
                            "conv {} created by {} for {:?}: {member}'s inbox has {other:?}",
                            view.conv_id, n.user, c.members
                        ),
                    ),
                }
            }
        }
        let Some(inbox) = &n.final_inbox else {
            continue;
        };
        // Nothing nobody asked for: a conversation is one that was answered, or the duplicate
        // of an attempt that may have been applied (a group has no idempotency key; a direct
        // conversation is unique per pair, so it never has a duplicate).
        let mut seen: HashMap<(&Vec<String>, &Option<String>), u32> = HashMap::new();
        for v in inbox {
            *seen.entry((&v.members, &v.title)).or_default() += 1;
            let asked = creations.iter().any(|c| {
                c.members == v.members
                    && c.title == v.title
                    && (c.created.as_ref().is_some_and(|x| x.conv_id == v.conv_id)
                        || c.unknown_attempts > 0)
            });
            if !asked {
                violation(
                    out,
                    "accounts",
                    format!(
                        "{}'s inbox has conv {} {:?} {:?}, which nobody created",
                        n.user, v.conv_id, v.members, v.title
                    ),
                );
            }
        }
        for ((members, title), count) in seen {
            let allowed: u32 = creations
                .iter()
                .filter(|c| &c.members == members && &c.title == title)
                .map(|c| {
                    if title.is_none() && members.len() == 2 {
                        1
                    } else {
                        u32::from(c.created.is_some()) + c.unknown_attempts
                    }
                })
                .max()
                .unwrap_or(0)
                .max(1);
            if count > allowed {
                violation(
                    out,
                    "accounts",
                    format!(
                        "{}'s inbox has {count} conversations {members:?} {title:?}; at most {allowed} can come from the attempts",
                        n.user
                    ),
                );
            }
        }
    }
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

fn live_delivery(e: &Evidence, out: &mut Vec<Violation>) -> LiveFigures {
    let bound = PUSH_BOUND.as_micros() as u64;
    let registered_after = REGISTERED_AFTER.as_micros() as u64;
    // Split by scope: a (message, device) pair looks only at the windows that can apply
    // to it, not at every device's (the scale scenario has thousands of devices).
    // Windows of every path (`None`) or of the connections through one node.
    let mut windows: Vec<(u64, u64, Option<Node>)> = Vec::new();
    let mut device_windows: HashMap<usize, Vec<(u64, u64)>> = HashMap::new();
    for (from, to, scope) in unhealthy(e) {
        match scope {
            Scope::All => windows.push((from, to, None)),
            Scope::Via(node) => windows.push((from, to, Some(node))),
            Scope::Device(i) => device_windows.entry(i).or_default().push((from, to)),
        }
    }
    // Each conversation's member devices, in device order: a message is judged for them
    // only (looking at every device for every message is messages times devices).
    let mut devices_of: HashMap<&str, Vec<usize>> = HashMap::new();
    for (d, device) in e.devices.iter().enumerate() {
        devices_of.entry(device.user.as_str()).or_default().push(d);
    }
    let member_devices: HashMap<ConvId, Vec<usize>> = e
        .convs
        .iter()
        .map(|(c, members)| {
            let mut ds: Vec<usize> = members
                .iter()
                .filter_map(|m| devices_of.get(m.as_str()))
                .flatten()
                .copied()
                .collect();
            ds.sort_unstable();
            ds.dedup();
            (*c, ds)
        })
        .collect();
    // The first arrival of each (device, conv, seq).
    let mut first: HashMap<(usize, ConvId, Seq), (u64, bool)> = HashMap::new();
    for (d, o) in e.observed.iter().enumerate() {
        for f in &o.frames {
            first.entry((d, f.conv, f.seq)).or_insert((f.at_us, f.live));
        }
    }
    let syncs: Vec<Vec<HashMap<ConvId, Vec<(u64, u64)>>>> = e
        .observed
        .iter()
        .map(|o| o.connections.iter().map(sync_windows).collect())
        .collect();
    let mut figures = LiveFigures::default();
    let mut latencies: Vec<u64> = Vec::new();
    for (conv, history) in e.histories {
        let Some(ds) = member_devices.get(conv) else {
            continue;
        };
        for m in history {
            let committed = m.ts.saturating_mul(1000);
            let window = (
                committed.saturating_sub(registered_after),
                committed.saturating_add(bound),
            );
            for &d in ds {
                let (device, o) = (&e.devices[d], &e.observed[d]);
                if o.user == m.sender && o.sends.contains_key(&m.client_msg_id) {
                    continue;
                }
                figures.pairs += 1;
                let arrival = first.get(&(d, *conv, m.seq)).copied();
                let on_time = arrival.is_some_and(|(at, _)| at <= committed + bound);
                if let Some((at, true)) = arrival {
                    if at <= committed + bound {
                        figures.live += 1;
                        latencies.push(at.saturating_sub(committed));
                    }
                }
                // Judged only over a healthy path: connected (and registered) before the
                // commit and still connected after the bound, no fault near the path, no
                // sync of the conversation that could hold its pushes back (the share above
                // still counts a push that came during a person's own browsing sync).
                let Some(k) = o
                    .connections
                    .iter()
                    .position(|c| c.opened_us <= window.0 && c.closed_us >= window.1)
                else {
                    continue;
                };
                let connection = &o.connections[k];
                let healthy = windows.iter().all(|&(from, to, via)| {
                    let applies = via.is_none_or(|node| connection.via == node);
                    !applies || !overlaps((from, to), window)
                }) && device_windows
                    .get(&device.index)
                    .is_none_or(|ws| ws.iter().all(|w| !overlaps(*w, window)));
                if !healthy
                    || syncs[d][k]
                        .get(conv)
                        .is_some_and(|ws| ws.iter().any(|w| overlaps(*w, window)))
                {
                    continue;
                }
                figures.judged += 1;
                if !on_time {
                    let got = match arrival {
                        Some((at, _)) => format!(
                            "got it {} ms after the commit",
                            at.saturating_sub(committed) / 1000
                        ),
                        None => "never got it".to_owned(),
                    };
                    violation(
                        out,
                        "live_delivery",
                        format!(
                            "device {} ({}), connected via {} since {} ms before, {got}: conv {conv} seq {} committed at ts {}",
                            device.index,
                            device.user,
                            connection.via,
                            committed.saturating_sub(connection.opened_us) / 1000,
                            m.seq,
                            m.ts
                        ),
                    );
                }
            }
        }
    }
    latencies.sort_unstable();
    if !latencies.is_empty() {
        let at = ((latencies.len() as f64) * 0.99).ceil() as usize;
        figures.push_p99_ms =
            latencies[at.saturating_sub(1).min(latencies.len() - 1)] as f64 / 1000.0;
    }
    figures
}

/// What each sender sent, by (sender, client id).
fn sent_by<'a>(e: &'a Evidence) -> HashMap<(&'a str, &'a str), (ConvId, &'a str)> {
    let mut sent = HashMap::new();
    for o in e.observed {
        for (id, send) in &o.sends {
            sent.insert(
                (o.user.as_str(), id.as_str()),
                (send.conv, send.body.as_str()),
            );
        }
    }
    sent
}

fn content(e: &Evidence, out: &mut Vec<Violation>) {
    let sent = sent_by(e);
    let stored = |conv: ConvId, seq: Seq| {
        e.histories
            .get(&conv)
            .and_then(|h| h.get((seq as usize).wrapping_sub(1)))
    };
    // What the final history holds was sent, by that sender, to that conversation.
    for (conv, history) in e.histories {
        for m in history {
            match sent.get(&(m.sender.as_str(), m.client_msg_id.as_str())) {
                Some((c, body)) if c == conv && *body == m.body && m.conv_id == *conv => {}
                other => violation(
                    out,
                    "content",
                    format!(
                        "history conv {conv} seq {}: {}/{} {:?} was not sent like that (sent: {other:?})",
                        m.seq, m.sender, m.client_msg_id, m.body
                    ),
                ),
            }
        }
    }
    for (device, o) in e.devices.iter().zip(e.observed) {
        for f in &o.frames {
            let same = stored(f.conv, f.seq).is_some_and(|m| {
                m.sender == f.sender && m.client_msg_id == f.id && m.body == f.body && m.ts == f.ts
            });
            let was_sent = sent
                .get(&(f.sender.as_str(), f.id.as_str()))
                .is_some_and(|(c, body)| *c == f.conv && *body == f.body);
            if !same || !was_sent {
                violation(
                    out,
                    "content",
                    format!(
                        "device {} got conv {} seq {} as {}/{} {:?}; history has {:?}",
                        device.index,
                        f.conv,
                        f.seq,
                        f.sender,
                        f.id,
                        f.body,
                        stored(f.conv, f.seq).map(|m| (&m.sender, &m.client_msg_id, &m.body))
                    ),
                );
            }
        }
        for read in &o.reads {
            let messages: Vec<&MessageView> = match &read.answer {
                ReadAnswer::History(messages) => messages.iter().collect(),
                ReadAnswer::Inbox(entries) => entries
                    .iter()
                    .filter_map(|i| i.last_message.as_ref())
                    .collect(),
                ReadAnswer::Refused(_) => Vec::new(),
            };
            for m in messages {
                if stored(m.conv_id, m.seq) != Some(m) {
                    violation(
                        out,
                        "content",
                        format!(
                            "device {} read conv {} seq {} as {}/{} {:?}; history has {:?}",
                            device.index,
                            m.conv_id,
                            m.seq,
                            m.sender,
                            m.client_msg_id,
                            m.body,
                            stored(m.conv_id, m.seq).map(|s| (
                                &s.sender,
                                &s.client_msg_id,
                                &s.body
                            ))
                        ),
                    );
                }
            }
        }
    }
}

fn recipients(e: &Evidence, out: &mut Vec<Violation>) {
    for (device, o) in e.devices.iter().zip(e.observed) {
        let mine: HashSet<ConvId> = device.convs.iter().copied().collect();
        for f in &o.frames {
            if !mine.contains(&f.conv) {
                violation(
                    out,
                    "recipients",
                    format!(
                        "device {} ({}) got conv {} seq {} it is not a member of",
                        device.index, o.user, f.conv, f.seq
                    ),
                );
            }
        }
        for read in &o.reads {
            match (&read.kind, &read.answer) {
                (ReadKind::History { conv, .. }, ReadAnswer::History(messages))
                    if !mine.contains(conv) =>
                {
                    violation(
                        out,
                        "recipients",
                        format!(
                            "device {} ({}) read {} messages of conv {conv} it is not a member of",
                            device.index,
                            o.user,
                            messages.len()
                        ),
                    );
                }
                (ReadKind::History { conv, .. }, ReadAnswer::Refused(code))
                    if !mine.contains(conv)
                        && *code != ErrorCode::UnknownConversation
                        && !code.is_retryable() =>
                {
                    violation(
                        out,
                        "recipients",
                        format!(
                            "device {} ({}) asked for conv {conv}: refused with {code}, not unknown_conversation",
                            device.index, o.user
                        ),
                    );
                }
                (_, ReadAnswer::Inbox(entries)) => {
                    for entry in entries.iter().filter(|i| !mine.contains(&i.conv_id)) {
                        violation(
                            out,
                            "recipients",
                            format!(
                                "device {} ({})'s inbox lists conv {} it is not a member of",
                                device.index, o.user, entry.conv_id
                            ),
                        );
                    }
                }
                _ => {}
            }
        }
        // Every device of every member ends with every message.
        for conv in &device.convs {
            let last = e.histories.get(conv).map_or(0, |h| h.len() as Seq);
            let got = o.received.get(conv).map_or(0, |r| r.len() as Seq);
            let complete = last == 0
                || o.received
                    .get(conv)
                    .is_some_and(|r| r.iter().copied().eq(1..=last));
            if !complete {
                violation(
                    out,
                    "recipients",
                    format!(
                        "device {} ({}) has {got} of {last} messages of conv {conv}",
                        device.index, o.user
                    ),
                );
            }
        }
    }
}

fn send_order(e: &Evidence, out: &mut Vec<Violation>) {
    for (device, o) in e.devices.iter().zip(e.observed) {
        let mut by_stream: BTreeMap<(usize, ConvId), Vec<(u64, &str, Seq)>> = BTreeMap::new();
        for (id, send) in &o.sends {
            if let (true, Some(&seq)) = (send.clean, send.acks.first()) {
                by_stream
                    .entry((send.conn, send.conv))
                    .or_default()
                    .push((send.order, id, seq));
            }
        }
        for ((conn, conv), mut sends) in by_stream {
            sends.sort_unstable();
            for pair in sends.windows(2) {
                let ((_, a, seq_a), (_, b, seq_b)) = (pair[0], pair[1]);
                if seq_a >= seq_b {
                    violation(
                        out,
                        "send_order",
                        format!(
                            "device {} connection #{conn} conv {conv}: {a} written before {b} but got seq {seq_a} >= {seq_b}",
                            device.index
                        ),
                    );
                }
            }
        }
    }
}

fn read_state(e: &Evidence, out: &mut Vec<Violation>) {
    // A cursor observed by a device (inbox `last_seq - unread`) never moves backwards.
    for (device, o) in e.devices.iter().zip(e.observed) {
        let mut seen: BTreeMap<ConvId, Seq> = BTreeMap::new();
        for read in &o.reads {
            let ReadAnswer::Inbox(entries) = &read.answer else {
                continue;
            };
            for entry in entries {
                if entry.unread > entry.last_seq {
                    violation(
                        out,
                        "read_state",
                        format!(
                            "device {} ({}) conv {}: unread {} of {} messages",
                            device.index, o.user, entry.conv_id, entry.unread, entry.last_seq
                        ),
                    );
                }
                let cursor = entry.last_seq.saturating_sub(entry.unread);
                let before = seen.insert(entry.conv_id, cursor).unwrap_or(0);
                if cursor < before {
                    violation(
                        out,
                        "read_state",
                        format!(
                            "device {} ({}) conv {}: cursor moved back from {before} to {cursor}",
                            device.index, o.user, entry.conv_id
                        ),
                    );
                }
            }
        }
    }
    // Once quiet, unread is exact: the cursor is the newest of the user's own messages and
    // the marks it wrote (those confirmed were applied; an unconfirmed one may or may not
    // have been).
    for (user, inbox) in e.inboxes_before {
        let devices: Vec<&Observed> = e.observed.iter().filter(|o| &o.user == user).collect();
        for entry in &inbox.conversations {
            let conv = entry.conv_id;
            let history = e.histories.get(&conv).map(Vec::as_slice).unwrap_or(&[]);
            let last = history.len() as Seq;
            let own = history
                .iter()
                .filter(|m| &m.sender == user)
                .map(|m| m.seq)
                .max()
                .unwrap_or(0);
            let marks = devices
                .iter()
                .flat_map(|o| o.marks.iter())
                .filter(|m| m.conv == conv);
            let confirmed = marks
                .clone()
                .filter(|m| m.confirmed)
                .map(|m| m.seq.min(last))
                .max()
                .unwrap_or(0);
            let lower = own.max(confirmed);
            let mut cursors: Vec<Seq> = vec![lower];
            cursors.extend(
                marks
                    .filter(|m| !m.confirmed && m.seq.min(last) > lower)
                    .map(|m| m.seq.min(last)),
            );
            if !cursors.iter().any(|c| entry.unread == last - c) {
                violation(
                    out,
                    "read_state",
                    format!(
                        "{user} conv {conv}: unread {} of {last}; the cursor can only be one of {cursors:?} (own newest {own}, confirmed marks up to {confirmed})",
                        entry.unread
                    ),
                );
            }
        }
    }
    for (user, inbox) in e.inboxes_after {
        for entry in &inbox.conversations {
            if entry.unread != 0 {
                violation(
                    out,
                    "read_state",
                    format!(
                        "{user} conv {}: unread {} after reading up to {}",
                        entry.conv_id, entry.unread, entry.last_seq
                    ),
                );
            }
        }
    }
}

fn reads(e: &Evidence, out: &mut Vec<Violation>) {
    // Per conversation, the acks received, by time: a read that starts later includes them.
    let mut acked: HashMap<ConvId, Vec<(u64, Seq)>> = HashMap::new();
    for o in e.observed {
        for send in o.sends.values() {
            if let (Some(at), Some(&seq)) = (send.first_ack_us, send.acks.first()) {
                acked.entry(send.conv).or_default().push((at, seq));
            }
        }
    }
    for list in acked.values_mut() {
        list.sort_unstable();
        // Running maximum, so a binary search finds the newest seq acked before a time.
        let mut max = 0;
        for entry in list.iter_mut() {
            max = max.max(entry.1);
            entry.1 = max;
        }
    }
    let acked_before = |conv: ConvId, at: u64| -> Seq {
        acked
            .get(&conv)
            .map_or(0, |list| match list.partition_point(|(t, _)| *t < at) {
                0 => 0,
                n => list[n - 1].1,
            })
    };
    for (device, o) in e.devices.iter().zip(e.observed) {
        // The newest seq this device has seen each conversation reach, by a read.
        let mut heads: BTreeMap<ConvId, Seq> = BTreeMap::new();
        let mut see = |conv: ConvId, seq: Seq, what: &str, out: &mut Vec<Violation>| {
            let before = heads.insert(conv, seq).unwrap_or(0);
            if seq < before {
                heads.insert(conv, before);
                violation(
                    out,
                    "reads",
                    format!(
                        "device {} ({}): {what} of conv {conv} ends at {seq} after a read that ended at {before}",
                        device.index, o.user
                    ),
                );
            }
        };
        for read in &o.reads {
            match (&read.kind, &read.answer) {
                (
                    ReadKind::History {
                        conv,
                        before,
                        limit,
                    },
                    ReadAnswer::History(messages),
                ) if device.convs.contains(conv) => {
                    let seqs: Vec<Seq> = messages.iter().map(|m| m.seq).collect();
                    let limit = Seq::from(*limit);
                    let expected: Vec<Seq> = match before {
                        // Everything before `before` existed when the read started.
                        Some(b) => (b.saturating_sub(limit).max(1)..*b).collect(),
                        None => {
                            let last = seqs.last().copied().unwrap_or(0);
                            let must = acked_before(*conv, read.started_us);
                            if last < must {
                                violation(
                                    out,
                                    "reads",
                                    format!(
                                        "device {} ({}): history of conv {conv} started after seq {must} was acked, ends at {last}",
                                        device.index, o.user
                                    ),
                                );
                            }
                            see(*conv, last, "history", out);
                            (last.saturating_sub(limit) + 1..=last).collect()
                        }
                    };
                    if seqs != expected {
                        violation(
                            out,
                            "reads",
                            format!(
                                "device {} ({}): history of conv {conv} before {before:?} limit {limit} returned seqs {:?}..{:?} ({} messages), expected {:?}..{:?}",
                                device.index,
                                o.user,
                                seqs.first(),
                                seqs.last(),
                                seqs.len(),
                                expected.first(),
                                expected.last()
                            ),
                        );
                    }
                }
                (ReadKind::Inbox { limit }, ReadAnswer::Inbox(entries)) => {
                    let listed: HashSet<ConvId> = entries.iter().map(|i| i.conv_id).collect();
                    if device.convs.len() <= *limit as usize
                        && device.convs.iter().any(|c| !listed.contains(c))
                    {
                        violation(
                            out,
                            "reads",
                            format!(
                                "device {} ({}): inbox lists {listed:?}, member of {:?}",
                                device.index, o.user, device.convs
                            ),
                        );
                    }
                    for entry in entries {
                        let must = acked_before(entry.conv_id, read.started_us);
                        if entry.last_seq < must {
                            violation(
                                out,
                                "reads",
                                format!(
                                    "device {} ({}): inbox started after conv {} seq {must} was acked, shows last_seq {}",
                                    device.index, o.user, entry.conv_id, entry.last_seq
                                ),
                            );
                        }
                        see(entry.conv_id, entry.last_seq, "inbox", out);
                    }
                }
                _ => {}
            }
        }
    }
}

fn failover(e: &Evidence, out: &mut Vec<Violation>) {
    let us = |d: Duration| d.as_micros() as u64;
    let recovery = us(RECOVERY);
    let bound = us(FAILOVER_ACK_BOUND);
    // App servers down, and everything else that could slow a send down.
    let mut down: Vec<(u64, u64, usize)> = Vec::new();
    let mut noisy: Vec<(u64, u64)> = Vec::new();
    for f in e.faults {
        match f.fault {
            Fault::Kill(Node::App(i))
            | Fault::Isolate(Node::App(i))
            | Fault::Pause(Node::App(i)) => down.push((f.begin_us, f.end_us, i)),
            // Another device dropping its connection slows nobody else down.
            Fault::Disconnect(_) => {}
            _ => noisy.push((f.begin_us, f.end_us.saturating_add(recovery))),
        }
    }
    if let Some((begin, end)) = e.buggify {
        noisy.push((begin, end.saturating_add(recovery + 30_000_000)));
    }
    for &(begin, end, app) in &down {
        let judged_from = begin + us(FAILOVER_DETECTED_AFTER);
        for (device, o) in e.devices.iter().zip(e.observed) {
            for (id, send) in &o.sends {
                let t = send.written_us;
                if t < judged_from || t > end {
                    continue;
                }
                let window = (t.saturating_sub(recovery), t + bound);
                let quiet = noisy.iter().all(|&w| !overlaps(w, window))
                    && down.iter().all(|&(b, e2, other)| {
                        other == app || !overlaps((b, e2.saturating_add(recovery)), window)
                    });
                let connected = o
                    .connections
                    .get(send.conn)
                    .is_some_and(|c| c.closed_us >= t + bound);
                if !quiet || !connected {
                    continue;
                }
                if send.first_ack_us.is_none_or(|at| at > t + bound) {
                    let acked = send.first_ack_us.map_or("never".to_owned(), |at| {
                        format!("{} ms later", (at - t) / 1000)
                    });
                    violation(
                        out,
                        "failover",
                        format!(
                            "device {} ({})'s {id} to conv {}, written {} s after app{app} went down (the other app server healthy), acked {acked}",
                            device.index,
                            o.user,
                            send.conv,
                            (t - begin) / 1_000_000
                        ),
                    );
                }
            }
        }
    }
}
