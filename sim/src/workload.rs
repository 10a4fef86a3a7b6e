//! What simulated people do: send (and resend the same id after errors and timeouts), read,
//! sync after reconnects and gaps, read history and inbox, and drop their connection.
//!
//! Each client device runs [`run_client`] on its own node with the real client library,
//! recording what it observed for the checkers ([`crate::checkers`]). Three phases:
//! [`Phase::Chaos`] (faults may be on; new messages are sent), [`Phase::Resolve`] (faults are
//! off; no new messages; every pending send is resent with its id until acked) and
//! [`Phase::Catchup`] (once every device has resolved: each syncs every conversation and
//! finishes when it has every message up to what that final sync reported).

use crate::trace::Trace;
use chat_client::{Client, ClientFrame, ServerFrame, WsConnection, WsEvent};
use chat_proto::{ConvId, Seq};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

/// One device of one user.
#[derive(Debug, Clone)]
pub struct Device {
    pub index: usize,
    pub user: String,
    pub token: String,
    /// The user's conversations.
    pub convs: Vec<ConvId>,
    pub gateways: Vec<String>,
}

/// A send as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRecord {
    pub conv: ConvId,
    pub body: String,
    /// Every `sent` ack received for this id (a resent id is acked again).
    pub acks: Vec<Seq>,
}

/// What happened on one connection, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnEvent {
    Message { conv: ConvId, seq: Seq },
    SyncSent { conv: ConvId, after: Seq },
    Synced { conv: ConvId, seq: Seq },
}

/// What one device observed.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    pub user: String,
    /// Client id -> the send and its acks.
    pub sends: BTreeMap<String, SendRecord>,
    /// Per connection (numbered from 0), in order: `message` frames received, `sync`
    /// requests sent and `synced` answers, for the order checker.
    pub pushes: Vec<Vec<ConnEvent>>,
    /// Every seq of each conversation this device has received (pushes and syncs).
    pub received: BTreeMap<ConvId, BTreeSet<Seq>>,
    /// The newest seq a `synced` reported per conversation.
    pub synced: BTreeMap<ConvId, Seq>,
    /// Sends refused with a non-retryable error (none are expected: every conversation is
    /// real), and inconsistent answers seen along the way.
    pub refused: Vec<(String, String)>,
    /// Whether the device finished the catch-up phase before its deadline.
    pub settled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Chaos = 0,
    Resolve = 1,
    Catchup = 2,
}

/// Controls shared with the scenario.
#[derive(Default)]
pub struct Controls {
    /// Set by the fault schedule: drop the connection now.
    pub disconnect: Vec<AtomicBool>,
    phase: AtomicU8,
    /// Devices with no pending send left in the resolve phase.
    pub resolved: AtomicUsize,
}

impl Controls {
    pub fn new(devices: usize) -> Arc<Controls> {
        Arc::new(Controls { disconnect: (0..devices).map(|_| AtomicBool::new(false)).collect(), phase: AtomicU8::new(0), resolved: AtomicUsize::new(0) })
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Chaos,
            1 => Phase::Resolve,
            _ => Phase::Catchup,
        }
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }
}

/// The longest a device waits without looking at its controls (phase, disconnects).
const RECV_SLICE_MAX: Duration = Duration::from_millis(500);
const SILENCE_PING_AFTER: Duration = Duration::from_secs(3);
const PONG_WAIT: Duration = Duration::from_secs(5);
const PENDING_RESEND_AFTER: Duration = Duration::from_secs(4);
/// A person does not write more while this many messages are unconfirmed.
const PENDING_MAX: usize = 8;
/// A gap asks for a sync unless one for the conversation was asked this recently.
const GAP_SYNC_INTERVAL: Duration = Duration::from_secs(3);

struct State {
    device: Device,
    observed: Observed,
    /// Unacked sends: id -> last time it was (re)sent.
    pending: BTreeMap<String, std::time::Instant>,
    next_msg: u64,
    connection: usize,
    trace: Trace,
    resolved: bool,
    catchup_started: bool,
    /// Syncs sent and answered per conversation on the current connection (answers come
    /// in request order), and how many had been sent when catch-up last asked.
    syncs_sent: BTreeMap<ConvId, u64>,
    syncs_answered: BTreeMap<ConvId, u64>,
    catchup_mark: BTreeMap<ConvId, u64>,
    /// When a sync was last asked per conversation (gap syncs are not repeated meanwhile).
    last_sync: BTreeMap<ConvId, std::time::Instant>,
}

impl State {
    fn contiguous(&self, conv: ConvId) -> Seq {
        let Some(seen) = self.observed.received.get(&conv) else { return 0 };
        let mut last = 0;
        for seq in seen {
            if *seq == last + 1 {
                last = *seq;
            } else {
                break;
            }
        }
        last
    }

    /// Done: nothing pending, and every conversation received up to what the catch-up
    /// sync reported for it.
    fn settled(&self) -> bool {
        self.catchup_started && self.pending.is_empty() && self.device.convs.iter().all(|c| self.caught_up(*c))
    }

    /// A sync sent during catch-up was answered, and everything up to its seq is here.
    fn caught_up(&self, conv: ConvId) -> bool {
        let answered = self.syncs_answered.get(&conv).copied().unwrap_or(0);
        let mark = self.catchup_mark.get(&conv).copied().unwrap_or(u64::MAX);
        answered >= mark && self.observed.synced.get(&conv).is_some_and(|last| self.contiguous(conv) >= *last)
    }
}

/// Runs one device until the scenario's settle phase is complete (or `deadline`).
pub async fn run_client(device: Device, controls: Arc<Controls>, trace: Trace, deadline: Duration) -> Observed {
    let start = std::time::Instant::now();
    let mut state = State {
        observed: Observed { user: device.user.clone(), ..Observed::default() },
        device,
        pending: BTreeMap::new(),
        next_msg: 0,
        connection: 0,
        trace,
        resolved: false,
        catchup_started: false,
        syncs_sent: BTreeMap::new(),
        syncs_answered: BTreeMap::new(),
        catchup_mark: BTreeMap::new(),
        last_sync: BTreeMap::new(),
    };
    let mut backoff = Duration::from_millis(100);
    while start.elapsed() < deadline {
        let url = &state.device.gateways[rand::random_range(0..state.device.gateways.len())];
        let client = match Client::new(url) {
            Ok(c) => c.with_token(state.device.token.clone()).with_timeout(Duration::from_secs(5)),
            Err(_) => return state.observed,
        };
        match client.connect_ws().await {
            Ok(ws) => {
                backoff = Duration::from_millis(100);
                if session(&mut state, &client, ws, &controls, start, deadline).await {
                    state.observed.settled = true;
                    break;
                }
            }
            Err(err) => {
                state.trace.record(format!("c{} connect failed: {}", state.device.index, err.code().map(|c| c.as_str()).unwrap_or("io")));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    state.observed
}

/// One connection: returns true once settled.
async fn session(state: &mut State, client: &Client, mut ws: WsConnection, controls: &Controls, start: std::time::Instant, deadline: Duration) -> bool {
    let index = state.device.index;
    let conn_no = state.connection;
    state.connection += 1;
    state.observed.pushes.push(Vec::new());
    state.trace.record(format!("c{index} connected #{conn_no}"));
    // A new connection: sync counts start over. Catch-up is always done on a connection
    // opened after the catch-up phase began, so every answer counted is to a sync asked
    // once all messages were durable (answers to earlier syncs may be stale).
    state.syncs_sent.clear();
    state.syncs_answered.clear();
    state.catchup_mark.clear();
    state.catchup_started = controls.phase() == Phase::Catchup;
    if state.catchup_started {
        if catch_up(state, &mut ws, false).await.is_err() {
            return false;
        }
    } else {
        // Catch up on everything after a reconnect.
        for conv in state.device.convs.clone() {
            let after = state.contiguous(conv);
            if sync(state, &mut ws, conv, after).await.is_err() {
                return false;
            }
        }
    }
    let pending: Vec<String> = state.pending.keys().cloned().collect();
    for id in pending {
        if resend(state, &mut ws, &id).await.is_err() {
            return false;
        }
    }
    let mut next_action = std::time::Instant::now() + think_time();
    let mut last_frame = std::time::Instant::now();
    let mut ping_sent: Option<std::time::Instant> = None;
    loop {
        if start.elapsed() >= deadline {
            return false;
        }
        if controls.disconnect.get(index).is_some_and(|d| d.swap(false, Ordering::Relaxed)) {
            state.trace.record(format!("c{index} disconnects"));
            return false;
        }
        let phase = controls.phase();
        if phase >= Phase::Resolve && !state.resolved && state.pending.is_empty() {
            state.resolved = true;
            controls.resolved.fetch_add(1, Ordering::Relaxed);
            state.trace.record(format!("c{index} resolved"));
        }
        if phase == Phase::Catchup && !state.catchup_started {
            state.trace.record(format!("c{index} reconnects for catch-up"));
            return false;
        }
        if state.settled() {
            state.trace.record(format!("c{index} settled"));
            let _ = ws.close().await;
            return true;
        }
        // Sleep until the next thing this device must do (not a fixed tick): fewer timers
        // and wake-ups make the simulation faster, and a frame wakes it anyway.
        let now = std::time::Instant::now();
        let mut wait = RECV_SLICE_MAX.min(next_action.saturating_duration_since(now));
        wait = wait.min(match ping_sent {
            Some(sent) => PONG_WAIT.saturating_sub(sent.elapsed()),
            None => SILENCE_PING_AFTER.saturating_sub(last_frame.elapsed()),
        });
        if let Some(oldest) = state.pending.values().min() {
            wait = wait.min(PENDING_RESEND_AFTER.saturating_sub(oldest.elapsed()));
        }
        match ws.recv_timeout(wait.max(Duration::from_millis(5))).await {
            Ok(WsEvent::Frame(frame)) => {
                last_frame = std::time::Instant::now();
                ping_sent = None;
                if on_frame(state, &mut ws, frame, conn_no).await.is_err() {
                    return false;
                }
            }
            Ok(WsEvent::Pong(_)) => {}
            Ok(WsEvent::Closed { code, .. }) => {
                state.trace.record(format!("c{index} closed by server {code:?}"));
                return false;
            }
            Err(chat_client::ClientError::Timeout { .. }) => {}
            Err(_) => return false,
        }
        // Liveness of the connection: a partition shows up only as silence.
        if let Some(sent) = ping_sent {
            if sent.elapsed() > PONG_WAIT {
                state.trace.record(format!("c{index} connection silent; reconnecting"));
                return false;
            }
        } else if last_frame.elapsed() > SILENCE_PING_AFTER {
            if ws.send(&ClientFrame::Ping).await.is_err() {
                return false;
            }
            ping_sent = Some(std::time::Instant::now());
        }
        // Resend sends that got no answer (same id: the server answers the same seq).
        let stale: Vec<String> = state.pending.iter().filter(|(_, at)| at.elapsed() > PENDING_RESEND_AFTER).map(|(id, _)| id.clone()).collect();
        for id in stale {
            if resend(state, &mut ws, &id).await.is_err() {
                return false;
            }
        }
        if phase == Phase::Catchup {
            // Ask again for anything not yet confirmed up to date.
            if std::time::Instant::now() >= next_action {
                next_action = std::time::Instant::now() + Duration::from_secs(2);
                if catch_up(state, &mut ws, true).await.is_err() {
                    return false;
                }
            }
            continue;
        }
        if phase == Phase::Resolve {
            continue;
        }
        if std::time::Instant::now() >= next_action {
            next_action = std::time::Instant::now() + think_time();
            if act(state, client, &mut ws).await.is_err() {
                return false;
            }
        }
    }
}

fn think_time() -> Duration {
    Duration::from_millis(500 + rand::random::<u64>() % 2500)
}

/// One thing a person does.
async fn act(state: &mut State, client: &Client, ws: &mut WsConnection) -> Result<(), chat_client::ClientError> {
    let convs = &state.device.convs;
    if convs.is_empty() {
        return Ok(());
    }
    let conv = convs[rand::random_range(0..convs.len())];
    let roll = rand::random::<u32>() % 100;
    match roll {
        0..70 if state.pending.len() < PENDING_MAX => {
            let id = format!("d{}-m{}", state.device.index, state.next_msg);
            state.next_msg += 1;
            let body = format!("{} says {}", state.device.user, state.next_msg);
            state.observed.sends.insert(id.clone(), SendRecord { conv, body: body.clone(), acks: Vec::new() });
            state.pending.insert(id.clone(), std::time::Instant::now());
            ws.send(&ClientFrame::Send { id, conv, body }).await
        }
        70..78 => {
            // Resend an id that was already acked: idempotency must answer the same seq.
            let acked: Vec<String> = state.observed.sends.iter().filter(|(_, s)| !s.acks.is_empty()).map(|(id, _)| id.clone()).collect();
            match acked.get(rand::random_range(0..acked.len().max(1))) {
                Some(id) => {
                    let record = &state.observed.sends[id];
                    ws.send(&ClientFrame::Send { id: id.clone(), conv: record.conv, body: record.body.clone() }).await
                }
                None => Ok(()),
            }
        }
        78..86 => {
            let seq = state.contiguous(conv);
            if seq == 0 {
                return Ok(());
            }
            ws.send(&ClientFrame::Read { conv, seq }).await
        }
        86..92 => {
            let after = state.contiguous(conv).saturating_sub(rand::random::<u64>() % 5);
            sync(state, ws, conv, after).await
        }
        92..96 => {
            // History reads during chaos may fail; what they return must be consistent.
            if let Ok(page) = client.history(conv, None, Some(20)).await {
                let seqs: Vec<Seq> = page.messages.iter().map(|m| m.seq).collect();
                state.trace.record(format!("c{} history conv={conv} {:?}", state.device.index, seqs.last()));
                if !seqs.windows(2).all(|w| w[0] + 1 == w[1]) {
                    state.observed.refused.push(("history".into(), format!("conv {conv} page not contiguous: {seqs:?}")));
                }
            }
            Ok(())
        }
        _ => {
            if let Ok(inbox) = client.inbox(Some(20)).await {
                state.trace.record(format!("c{} inbox {}", state.device.index, inbox.conversations.len()));
            }
            Ok(())
        }
    }
}

async fn sync(state: &mut State, ws: &mut WsConnection, conv: ConvId, after: Seq) -> Result<(), chat_client::ClientError> {
    *state.syncs_sent.entry(conv).or_insert(0) += 1;
    state.last_sync.insert(conv, std::time::Instant::now());
    if let Some(events) = state.observed.pushes.last_mut() {
        events.push(ConnEvent::SyncSent { conv, after });
    }
    ws.send(&ClientFrame::Sync { conv, after }).await
}

/// Syncs the conversations not yet caught up (all of them the first time), marking the
/// syncs whose answers count for catch-up.
async fn catch_up(state: &mut State, ws: &mut WsConnection, only_behind: bool) -> Result<(), chat_client::ClientError> {
    for conv in state.device.convs.clone() {
        if only_behind && state.caught_up(conv) {
            continue;
        }
        let after = state.contiguous(conv);
        sync(state, ws, conv, after).await?;
        let sent = state.syncs_sent.get(&conv).copied().unwrap_or(0);
        state.catchup_mark.insert(conv, sent);
    }
    Ok(())
}

async fn resend(state: &mut State, ws: &mut WsConnection, id: &str) -> Result<(), chat_client::ClientError> {
    let Some(record) = state.observed.sends.get(id) else { return Ok(()) };
    state.pending.insert(id.to_owned(), std::time::Instant::now());
    ws.send(&ClientFrame::Send { id: id.to_owned(), conv: record.conv, body: record.body.clone() }).await
}

async fn on_frame(state: &mut State, ws: &mut WsConnection, frame: ServerFrame, conn_no: usize) -> Result<(), chat_client::ClientError> {
    let index = state.device.index;
    match frame {
        ServerFrame::Sent { id, conv, seq, .. } => {
            state.trace.record(format!("c{index} sent {id} conv={conv} seq={seq}"));
            state.pending.remove(&id);
            if let Some(record) = state.observed.sends.get_mut(&id) {
                record.acks.push(seq);
            }
            // Our own message counts as received.
            state.observed.received.entry(conv).or_default().insert(seq);
        }
        ServerFrame::Message { conv, seq, sender, id, .. } => {
            state.trace.record(format!("c{index} got conv={conv} seq={seq} {sender}/{id}"));
            let before = state.contiguous(conv);
            let _ = (sender, id);
            if let Some(events) = state.observed.pushes.get_mut(conn_no) {
                events.push(ConnEvent::Message { conv, seq });
            }
            state.observed.received.entry(conv).or_default().insert(seq);
            let asked_recently = state.last_sync.get(&conv).is_some_and(|at| at.elapsed() < GAP_SYNC_INTERVAL);
            if seq > before + 1 && !asked_recently {
                // A gap: ask for what is missing (once; the answer fills it).
                sync(state, ws, conv, before).await?;
            }
        }
        ServerFrame::Synced { conv, seq } => {
            state.trace.record(format!("c{index} synced conv={conv} seq={seq}"));
            let known = state.observed.synced.entry(conv).or_insert(0);
            *known = (*known).max(seq);
            *state.syncs_answered.entry(conv).or_insert(0) += 1;
            if let Some(events) = state.observed.pushes.get_mut(conn_no) {
                events.push(ConnEvent::Synced { conv, seq });
            }
        }
        ServerFrame::Error { code, message, id } => {
            state.trace.record(format!("c{index} error {code} {} ({message})", id.as_deref().unwrap_or("-")));
            if id.is_none() && state.catchup_started {
                // A failed sync during catch-up: its answer will never come; start over.
                return Err(chat_client::ClientError::Closed { code: None, reason: "sync failed during catch-up".into() });
            }
            if let Some(id) = id {
                if code.is_retryable() {
                    // Resent by the pending timer, with the same id.
                } else {
                    state.pending.remove(&id);
                    state.observed.refused.push((id, format!("{code}: {message}")));
                }
            }
        }
        ServerFrame::Pong => {}
    }
    Ok(())
}

/// Used by checkers: the devices' observations by user.
pub fn by_user(observed: &[Observed]) -> HashMap<String, Vec<&Observed>> {
    let mut map: HashMap<String, Vec<&Observed>> = HashMap::new();
    for o in observed {
        map.entry(o.user.clone()).or_default().push(o);
    }
    map
}
