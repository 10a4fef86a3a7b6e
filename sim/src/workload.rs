//! What simulated people do: send (and resend the same id after errors and timeouts), mark
//! read, sync after reconnects and gaps, read history (latest and deep pages) and inbox, poke
//! at conversations they are not in, chat in a hot group, and drop their connection.
//!
//! Each client device runs [`run_client`] on its own node with the real client library,
//! recording everything it observed, with the simulated time, for the checkers
//! ([`crate::checkers`]). Every device draws from its own random stream derived from the
//! seed, so removing a fault episode does not reshuffle what every other device does.
//!
//! Three phases: [`Phase::Chaos`] (faults may be on; new messages are sent),
//! [`Phase::Resolve`] (faults are off; no new messages; every pending send is resent with its
//! id until acked) and [`Phase::Catchup`] (once every device has resolved: each syncs every
//! conversation and finishes when it has every message up to what that final sync reported).

use crate::cluster::Node;
use crate::sockets::Stalls;
use crate::trace::Trace;
use chat_client::{Client, ClientError, ClientFrame, ServerFrame, WsConnection, WsEvent, WsSender};
use chat_proto::frame::FrameOp;
use chat_proto::rest::{InboxEntry, MessageView};
use chat_proto::{ConvId, ErrorCode, Seq};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Receipts (and typing notices) a device records at most (a device in the hot group gets
/// several a second).
const RECEIPTS_RECORDED_MAX: usize = 20_000;

/// Simulated wall-clock time in microseconds since the epoch: the time base shared by every
/// observation and by the server's message timestamps (milliseconds of the same clock).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Where a device opens its WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsTarget {
    pub url: String,
    /// The node the socket goes through first: a gateway (which splices it to a connection
    /// server of its choice), or a connection server reached directly.
    pub via: Node,
}

/// One device of one user.
#[derive(Debug, Clone)]
pub struct Device {
    pub index: usize,
    pub user: String,
    pub token: String,
    /// The user's conversations.
    pub convs: Vec<ConvId>,
    /// Every conversation of the scenario, shared by all devices: those not in `convs` are
    /// probed (every answer must be a refusal). One list for all devices, since a copy of
    /// the others per device is conversations times devices (460 MB at the scale scenario's).
    pub all_convs: Arc<[ConvId]>,
    /// The hot group, if the user is in it: written to often.
    pub hot: Option<ConvId>,
    /// Gateways for REST.
    pub gateways: Vec<String>,
    /// Where the WebSocket goes: the first is preferred, the others after a failure.
    pub ws_targets: Vec<WsTarget>,
    /// Seeds this device's own random stream.
    pub rng_seed: u64,
    /// Which of the user's devices this is (0, 1, ...).
    pub slot: usize,
}

impl Device {
    /// How many conversations of the scenario the user is not in.
    pub fn others_len(&self) -> usize {
        self.all_convs
            .iter()
            .filter(|c| !self.convs.contains(c))
            .count()
    }

    /// The `k`-th conversation the user is not in, in the scenario's order.
    pub fn other(&self, k: usize) -> ConvId {
        let mut others = self.all_convs.iter().filter(|c| !self.convs.contains(c));
        match others.nth(k) {
            Some(conv) => *conv,
            None => panic!("other({k}) of {} others", self.others_len()),
        }
    }
}

/// A send as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRecord {
    pub conv: ConvId,
    pub body: String,
    /// Every `sent` ack received for this id (a resent id is acked again).
    pub acks: Vec<Seq>,
    /// When the send was first written, and when its first ack was received.
    pub written_us: u64,
    pub first_ack_us: Option<u64>,
    /// The connection the send was first written on, and its place among this device's
    /// first writes.
    pub conn: usize,
    pub order: u64,
    /// True when the first answer to the first write was its `sent`, on that connection,
    /// with no resend in between: only such sends are bound by the per-connection order.
    pub clean: bool,
    /// Still possibly clean: no answer yet, no resend, same connection.
    pub undecided: bool,
}

/// Why a device asked for a `sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncReason {
    /// After (re)connecting, for everything missed.
    Reconnect,
    /// A push revealed a gap.
    Gap,
    /// A person scrolling: the answer may repeat what was already here.
    Browse,
    /// The final catch-up.
    Catchup,
}

/// What happened on one connection, in order, with the simulated time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnEvent {
    Message {
        conv: ConvId,
        seq: Seq,
    },
    SyncSent {
        conv: ConvId,
        after: Seq,
        reason: SyncReason,
        at_us: u64,
    },
    Synced {
        conv: ConvId,
        seq: Seq,
        at_us: u64,
    },
    /// The oldest outstanding sync of `conv` was answered with an error.
    SyncFailed {
        conv: ConvId,
        at_us: u64,
    },
}

/// One WebSocket of a device.
#[derive(Debug, Clone)]
pub struct ConnRecord {
    pub via: Node,
    pub opened_us: u64,
    /// When the device stopped using it (`u64::MAX` while open).
    pub closed_us: u64,
    pub events: Vec<ConnEvent>,
}

/// A `message` frame as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub conn: usize,
    pub conv: ConvId,
    pub seq: Seq,
    pub sender: String,
    pub id: String,
    pub body: String,
    pub ts: u64,
    pub at_us: u64,
    /// No reconnect, gap or catch-up sync of the conversation was outstanding on the
    /// connection: the frame was pushed live (or answered a person's own browsing sync).
    pub live: bool,
}

/// A REST read and what it answered.
#[derive(Debug, Clone)]
pub enum ReadKind {
    History {
        conv: ConvId,
        before: Option<Seq>,
        limit: u32,
    },
    Inbox {
        limit: u32,
    },
}

#[derive(Debug, Clone)]
pub enum ReadAnswer {
    History(Vec<MessageView>),
    Inbox(Vec<InboxEntry>),
    Refused(ErrorCode),
}

#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub kind: ReadKind,
    pub started_us: u64,
    pub ended_us: u64,
    pub answer: ReadAnswer,
}

/// A `read` frame (mark read) the device wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkRecord {
    pub conv: ConvId,
    pub seq: Seq,
    /// A later request on the same connection was answered and this one drew no error, so
    /// it was applied (frames of a connection are handled in order, and a failed `read` is
    /// answered with an error frame naming it).
    pub confirmed: bool,
}

/// What one device observed.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    pub user: String,
    /// Client id -> the send and its acks.
    pub sends: BTreeMap<String, SendRecord>,
    /// Every connection, numbered from 0.
    pub connections: Vec<ConnRecord>,
    /// Every `message` frame, in arrival order.
    pub frames: Vec<Received>,
    /// Every seq of each conversation this device has received (frames and own acks).
    pub received: BTreeMap<ConvId, BTreeSet<Seq>>,
    /// The newest seq a `synced` reported per conversation.
    pub synced: BTreeMap<ConvId, Seq>,
    pub reads: Vec<ReadRecord>,
    pub marks: Vec<MarkRecord>,
    /// Every `receipt` frame: (conversation, reader, seq), in arrival order.
    pub receipts: Vec<(ConvId, String, Seq)>,
    /// Every `typing` frame: (conversation, typer, when), in arrival order.
    pub typing: Vec<(ConvId, String, u64)>,
    /// Sends refused with a non-retryable error (none are expected: every conversation is
    /// real), and inconsistent answers seen along the way.
    pub refused: Vec<(String, String)>,
    /// Whether the device finished the catch-up phase before its deadline.
    pub settled: bool,
    /// The times this device stopped reading its socket.
    pub stalls: Vec<StallRecord>,
}

/// The schedule's order to stop reading (see [`crate::faults::Fault::Stall`]).
#[derive(Debug, Clone, Copy)]
pub struct StallOrder {
    pub duration: Duration,
    pub window_bytes: usize,
    pub forever: bool,
}

/// One time a device stopped reading its socket.
#[derive(Debug, Clone)]
pub struct StallRecord {
    pub via: Node,
    pub begin_us: u64,
    pub end_us: u64,
    pub forever: bool,
    /// When the device saw that the server had dropped the connection.
    pub dropped_us: Option<u64>,
    /// Requests written on the connection and not answered yet when the device stopped
    /// reading: the server handles a connection's frames in order, each for up to its
    /// request timeout, before it can notice the silence.
    pub open_requests: usize,
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
    /// Set by the fault schedule: stop reading the socket.
    pub stall: Vec<Mutex<Option<StallOrder>>>,
    /// The servers' view of stalled sockets.
    pub stalls: Arc<Stalls>,
    /// Set when the time to settle is up: every device returns what it observed.
    stop: AtomicBool,
}

impl Controls {
    pub fn new(devices: usize, stalls: Arc<Stalls>) -> Arc<Controls> {
        Arc::new(Controls {
            disconnect: (0..devices).map(|_| AtomicBool::new(false)).collect(),
            phase: AtomicU8::new(0),
            resolved: AtomicUsize::new(0),
            stall: (0..devices).map(|_| Mutex::new(None)).collect(),
            stalls,
            stop: AtomicBool::new(false),
        })
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The stall ordered for `device`, if any, taken.
    fn take_stall(&self, device: usize) -> Option<StallOrder> {
        self.stall
            .get(device)?
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
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
/// Mean time between two messages of one device into the hot group.
const HOT_INTERVAL_MS: std::ops::Range<u64> = 500..2500;

struct State {
    device: Device,
    rng: StdRng,
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
    /// Per conversation, the highest seq up to which every seq was received (kept up to
    /// date by [`State::receive`], so it is not recounted from 1 on every frame).
    contiguous: BTreeMap<ConvId, Seq>,
    /// Requests written on the current connection, numbered; the syncs and pings not yet
    /// answered; marks not yet confirmed (index in `observed.marks`, request number).
    requests: u64,
    open_syncs: BTreeMap<ConvId, VecDeque<(u64, SyncReason)>>,
    open_pings: VecDeque<u64>,
    open_marks: Vec<(usize, u64)>,
    /// First writes of sends, numbered.
    sends_written: u64,
}

impl State {
    /// The highest seq of `conv` up to which every seq was received (0 for none).
    fn contiguous(&self, conv: ConvId) -> Seq {
        self.contiguous.get(&conv).copied().unwrap_or(0)
    }

    /// Records that `seq` of `conv` was received.
    fn receive(&mut self, conv: ConvId, seq: Seq) {
        let seen = self.observed.received.entry(conv).or_default();
        seen.insert(seq);
        let last = self.contiguous.entry(conv).or_insert(0);
        while seen.contains(&(*last + 1)) {
            *last += 1;
        }
    }

    /// Done: nothing pending, and every conversation received up to what the catch-up
    /// sync reported for it.
    fn settled(&self) -> bool {
        self.catchup_started
            && self.pending.is_empty()
            && self.device.convs.iter().all(|c| self.caught_up(*c))
    }

    /// A sync sent during catch-up was answered, and everything up to its seq is here.
    fn caught_up(&self, conv: ConvId) -> bool {
        let answered = self.syncs_answered.get(&conv).copied().unwrap_or(0);
        let mark = self.catchup_mark.get(&conv).copied().unwrap_or(u64::MAX);
        answered >= mark
            && self
                .observed
                .synced
                .get(&conv)
                .is_some_and(|last| self.contiguous(conv) >= *last)
    }

    fn event(&mut self, event: ConnEvent) {
        if let Some(conn) = self.observed.connections.last_mut() {
            conn.events.push(event);
        }
    }

    /// Every mark written before request `answered` on this connection was handled.
    fn confirm_marks(&mut self, answered: u64) {
        let marks = &mut self.observed.marks;
        self.open_marks.retain(|&(index, request)| {
            if request < answered {
                marks[index].confirmed = true;
                false
            } else {
                true
            }
        });
    }

    /// A reconnect, gap or catch-up sync of `conv` is waiting for its answer.
    fn syncing(&self, conv: ConvId) -> bool {
        self.open_syncs
            .get(&conv)
            .is_some_and(|q| q.iter().any(|(_, reason)| *reason != SyncReason::Browse))
    }

    /// A send's first write is no longer bound by the order promise.
    fn unclean(&mut self, id: &str) {
        if let Some(record) = self.observed.sends.get_mut(id) {
            record.undecided = false;
        }
    }
}

/// Runs one device until the scenario's settle phase is complete (or `deadline`).
pub async fn run_client(
    device: Device,
    controls: Arc<Controls>,
    trace: Trace,
    deadline: Duration,
) -> Observed {
    let start = std::time::Instant::now();
    let mut state = State {
        rng: StdRng::seed_from_u64(device.rng_seed),
        observed: Observed {
            user: device.user.clone(),
            ..Observed::default()
        },
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
        contiguous: BTreeMap::new(),
        requests: 0,
        open_syncs: BTreeMap::new(),
        open_pings: VecDeque::new(),
        open_marks: Vec::new(),
        sends_written: 0,
    };
    let mut backoff = Duration::from_millis(100);
    let mut failures = 0usize;
    while start.elapsed() < deadline && !controls.stopped() {
        // The preferred target first; after a failure, any of them.
        let targets = &state.device.ws_targets;
        let target = if failures == 0 {
            targets[0].clone()
        } else {
            targets[state.rng.random_range(0..targets.len())].clone()
        };
        let rest = &state.device.gateways[state.rng.random_range(0..state.device.gateways.len())];
        let (client, ws_client) = match (Client::new(rest), Client::new(&target.url)) {
            (Ok(c), Ok(w)) => {
                let token = state.device.token.clone();
                (
                    c.with_token(token.clone())
                        .with_timeout(Duration::from_secs(5)),
                    w.with_token(token).with_timeout(Duration::from_secs(5)),
                )
            }
            _ => return state.observed,
        };
        match ws_client.connect_ws().await {
            Ok(ws) => {
                backoff = Duration::from_millis(100);
                failures = 0;
                let settled = session(
                    &mut state, &client, ws, target.via, &controls, start, deadline,
                )
                .await;
                if let Some(conn) = state.observed.connections.last_mut() {
                    conn.closed_us = now_us();
                }
                // Sends first written on the closed connection are no longer bound by its order.
                let conn_no = state.connection - 1;
                for record in state.observed.sends.values_mut() {
                    if record.conn == conn_no {
                        record.undecided = false;
                    }
                }
                if settled {
                    state.observed.settled = true;
                    break;
                }
            }
            Err(err) => {
                failures += 1;
                state.trace.record(format_args!(
                    "c{} connect failed: {}",
                    state.device.index,
                    err.code().map(|c| c.as_str()).unwrap_or("io")
                ));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    state.observed
}

/// One connection: returns true once settled.
async fn session(
    state: &mut State,
    client: &Client,
    ws: WsConnection,
    via: Node,
    controls: &Controls,
    start: std::time::Instant,
    deadline: Duration,
) -> bool {
    // The socket is read by a task of its own, which notes when each frame arrived: the
    // device's own work (a REST call that waits for a slow gateway) must not be mistaken
    // for a late push. (It was, for a paused gateway: seed 8.)
    let local_addr = ws.local_addr();
    let (mut ws, receiver) = ws.split();
    let (arrivals, mut events) = tokio::sync::mpsc::unbounded_channel();
    let not_reading = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(read_socket(receiver, arrivals, not_reading.clone()));
    let socket = Socket {
        ws: &mut ws,
        events: &mut events,
        local_addr,
        not_reading,
    };
    let settled = session_loop(state, client, socket, via, controls, start, deadline).await;
    reader.abort();
    settled
}

/// Forwards every event of the socket with its arrival time, until it closes. While
/// `not_reading` is set it does not touch the socket (so pings go unanswered, as they do
/// for a frozen app).
async fn read_socket(
    mut receiver: chat_client::WsReceiver,
    arrivals: tokio::sync::mpsc::UnboundedSender<(u64, Result<WsEvent, ClientError>)>,
    not_reading: Arc<AtomicBool>,
) {
    loop {
        if not_reading.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        match receiver.recv_timeout(RECV_SLICE_MAX).await {
            // Nothing yet: look at `not_reading` again.
            Err(ClientError::Timeout { .. }) => {}
            event => {
                // A close or an error is the socket's last event.
                let last = !matches!(event, Ok(WsEvent::Frame(_) | WsEvent::Pong(_)));
                if arrivals.send((now_us(), event)).is_err() || last {
                    return;
                }
            }
        }
    }
}

type Arrivals = tokio::sync::mpsc::UnboundedReceiver<(u64, Result<WsEvent, ClientError>)>;

/// One connection as the session loop uses it.
struct Socket<'a> {
    ws: &'a mut WsSender,
    events: &'a mut Arrivals,
    local_addr: Option<std::net::SocketAddr>,
    /// Set while the device does not read its socket.
    not_reading: Arc<AtomicBool>,
}

async fn session_loop(
    state: &mut State,
    client: &Client,
    socket: Socket<'_>,
    via: Node,
    controls: &Controls,
    start: std::time::Instant,
    deadline: Duration,
) -> bool {
    let Socket {
        ws,
        events,
        local_addr,
        not_reading,
    } = socket;
    let index = state.device.index;
    let conn_no = state.connection;
    state.connection += 1;
    state.observed.connections.push(ConnRecord {
        via,
        opened_us: now_us(),
        closed_us: u64::MAX,
        events: Vec::new(),
    });
    state
        .trace
        .record(format_args!("c{index} connected #{conn_no} via {via}"));
    // A new connection: sync counts start over. Catch-up is always done on a connection
    // opened after the catch-up phase began, so every answer counted is to a sync asked
    // once all messages were durable (answers to earlier syncs may be stale).
    state.syncs_sent.clear();
    state.syncs_answered.clear();
    state.catchup_mark.clear();
    state.open_syncs.clear();
    state.open_pings.clear();
    state.open_marks.clear();
    state.catchup_started = controls.phase() == Phase::Catchup;
    if state.catchup_started {
        if catch_up(state, ws, false).await.is_err() {
            return false;
        }
    } else {
        // Catch up on everything after a reconnect.
        for conv in state.device.convs.clone() {
            let after = state.contiguous(conv);
            if sync(state, ws, conv, after, SyncReason::Reconnect)
                .await
                .is_err()
            {
                return false;
            }
        }
    }
    let pending: Vec<String> = state.pending.keys().cloned().collect();
    for id in pending {
        if resend(state, ws, &id).await.is_err() {
            return false;
        }
    }
    let mut next_action = std::time::Instant::now() + think_time(&mut state.rng);
    let mut next_hot =
        std::time::Instant::now() + Duration::from_millis(state.rng.random_range(HOT_INTERVAL_MS));
    let mut last_frame = std::time::Instant::now();
    let mut ping_sent: Option<std::time::Instant> = None;
    loop {
        if start.elapsed() >= deadline || controls.stopped() {
            state.trace.record(format_args!("c{index} stops unsettled"));
            return false;
        }
        if controls
            .disconnect
            .get(index)
            .is_some_and(|d| d.swap(false, Ordering::Relaxed))
        {
            state.trace.record(format_args!("c{index} disconnects"));
            return false;
        }
        if let Some(order) = controls
            .take_stall(index)
            .filter(|_| controls.phase() == Phase::Chaos)
        {
            not_reading.store(true, Ordering::Relaxed);
            let connected = stall(state, local_addr, via, controls, order).await;
            not_reading.store(false, Ordering::Relaxed);
            if !connected {
                return false;
            }
            // Whatever piled up meanwhile is read now; the device's own timers (pings,
            // resends) carry on as if it had been frozen.
        }
        let phase = controls.phase();
        if phase >= Phase::Resolve && !state.resolved && state.pending.is_empty() {
            state.resolved = true;
            controls.resolved.fetch_add(1, Ordering::Relaxed);
            state.trace.record(format_args!("c{index} resolved"));
        }
        if phase == Phase::Catchup && !state.catchup_started {
            state
                .trace
                .record(format_args!("c{index} reconnects for catch-up"));
            return false;
        }
        if state.settled() {
            state.trace.record(format_args!("c{index} settled"));
            let _ = ws.close().await;
            return true;
        }
        // Sleep until the next thing this device must do (not a fixed tick): fewer timers
        // and wake-ups make the simulation faster, and a frame wakes it anyway.
        let now = std::time::Instant::now();
        let mut wait = RECV_SLICE_MAX;
        // The next action is not taken while sends resolve: waking for it then would spin
        // every few milliseconds (10,000 devices did, in the scale scenario).
        if phase != Phase::Resolve {
            wait = wait.min(next_action.saturating_duration_since(now));
        }
        if state.device.hot.is_some() && phase == Phase::Chaos {
            wait = wait.min(next_hot.saturating_duration_since(now));
        }
        wait = wait.min(match ping_sent {
            Some(sent) => PONG_WAIT.saturating_sub(now.saturating_duration_since(sent)),
            None => SILENCE_PING_AFTER.saturating_sub(now.saturating_duration_since(last_frame)),
        });
        if let Some(oldest) = state.pending.values().min() {
            wait = wait
                .min(PENDING_RESEND_AFTER.saturating_sub(now.saturating_duration_since(*oldest)));
        }
        match tokio::time::timeout(wait.max(Duration::from_millis(5)), events.recv()).await {
            Ok(Some((at_us, Ok(WsEvent::Frame(frame))))) => {
                last_frame = std::time::Instant::now();
                ping_sent = None;
                if on_frame(state, ws, frame, conn_no, at_us).await.is_err() {
                    return false;
                }
            }
            Ok(Some((_, Ok(WsEvent::Pong(_))))) => {}
            Ok(Some((_, Ok(WsEvent::Closed { code, .. })))) => {
                state
                    .trace
                    .record(format_args!("c{index} closed by server {code:?}"));
                return false;
            }
            Ok(Some((_, Err(_)))) | Ok(None) => return false,
            Err(_) => {}
        }
        // Liveness of the connection: a partition shows up only as silence.
        if let Some(sent) = ping_sent {
            if sent.elapsed() > PONG_WAIT {
                state
                    .trace
                    .record(format_args!("c{index} connection silent; reconnecting"));
                return false;
            }
        } else if last_frame.elapsed() > SILENCE_PING_AFTER {
            if ping(state, ws).await.is_err() {
                return false;
            }
            ping_sent = Some(std::time::Instant::now());
        }
        // Resend sends that got no answer (same id: the server answers the same seq).
        let now = std::time::Instant::now();
        let stale: Vec<String> = state
            .pending
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(**at) > PENDING_RESEND_AFTER)
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if resend(state, ws, &id).await.is_err() {
                return false;
            }
        }
        if phase == Phase::Catchup {
            // Ask again for anything not yet confirmed up to date.
            if std::time::Instant::now() >= next_action {
                next_action = std::time::Instant::now() + Duration::from_secs(2);
                if catch_up(state, ws, true).await.is_err() {
                    return false;
                }
            }
            continue;
        }
        if phase == Phase::Resolve {
            continue;
        }
        if let Some(hot) = state.device.hot {
            if std::time::Instant::now() >= next_hot {
                next_hot = std::time::Instant::now()
                    + Duration::from_millis(state.rng.random_range(HOT_INTERVAL_MS));
                if state.pending.len() < PENDING_MAX && send_new(state, ws, hot).await.is_err() {
                    return false;
                }
            }
        }
        if std::time::Instant::now() >= next_action {
            next_action = std::time::Instant::now() + think_time(&mut state.rng);
            if act(state, client, ws).await.is_err() {
                return false;
            }
        }
    }
}

/// Stops reading `ws` as `order` says; false when the connection is gone (the server gave up
/// on it, as it must on one that never reads again).
async fn stall(
    state: &mut State,
    local_addr: Option<std::net::SocketAddr>,
    via: Node,
    controls: &Controls,
    order: StallOrder,
) -> bool {
    let index = state.device.index;
    let Some(addr) = local_addr else { return true };
    controls.stalls.stop_reading(addr, order.window_bytes);
    let begin_us = now_us();
    let began = std::time::Instant::now();
    let open_requests = state.open_syncs.values().map(VecDeque::len).sum::<usize>()
        + state.open_pings.len()
        + state.open_marks.len();
    state.trace.record(format_args!(
        "c{index} stops reading (window {} bytes{})",
        order.window_bytes,
        if order.forever { ", for good" } else { "" }
    ));
    let mut dropped_us = None;
    if order.forever {
        // Until the server gives up, or the cap, or the chaos phase ends (no verdict then).
        while began.elapsed() < order.duration
            && controls.phase() == Phase::Chaos
            && !controls.stopped()
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if controls.stalls.dropped(addr) {
                dropped_us = Some(now_us());
                break;
            }
        }
    } else {
        tokio::time::sleep(order.duration).await;
        if controls.stalls.dropped(addr) {
            dropped_us = Some(now_us());
        }
    }
    let blocked = controls
        .stalls
        .blocked_at(addr)
        .map(|at| at.saturating_duration_since(began).as_millis());
    controls.stalls.resume(addr);
    match dropped_us {
        Some(at) => state.trace.record(format_args!("c{index} reads again; the server dropped the connection after {} ms (its writes waited from {blocked:?} ms)", (at - begin_us) / 1000)),
        None => state.trace.record(format_args!("c{index} reads again (the server's writes waited from {blocked:?} ms)")),
    }
    state.observed.stalls.push(StallRecord {
        via,
        begin_us,
        end_us: now_us(),
        forever: order.forever,
        dropped_us,
        open_requests,
    });
    // One that stopped for good comes back with a new connection, as an app woken up would.
    !order.forever
}

fn think_time(rng: &mut StdRng) -> Duration {
    Duration::from_millis(rng.random_range(500..3000))
}

/// Writes a new message to `conv`.
async fn send_new(
    state: &mut State,
    ws: &mut WsSender,
    conv: ConvId,
) -> Result<(), chat_client::ClientError> {
    // Fresh per sender (the slot tells a user's devices apart), and the same ids come up
    // for different users, as they may: idempotency is per (sender, id).
    let id = format!("m{}-s{}", state.next_msg, state.device.slot);
    state.next_msg += 1;
    let body = format!("{} says {} in {conv}", state.device.user, state.next_msg);
    let order = state.sends_written;
    state.sends_written += 1;
    let record = SendRecord {
        conv,
        body: body.clone(),
        acks: Vec::new(),
        written_us: now_us(),
        first_ack_us: None,
        conn: state.connection - 1,
        order,
        clean: false,
        undecided: true,
    };
    state.observed.sends.insert(id.clone(), record);
    state.pending.insert(id.clone(), std::time::Instant::now());
    ws.send(&ClientFrame::Send { id, conv, body }).await
}

/// One thing a person does.
async fn act(
    state: &mut State,
    client: &Client,
    ws: &mut WsSender,
) -> Result<(), chat_client::ClientError> {
    if state.device.convs.is_empty() {
        return Ok(());
    }
    let conv = state.device.convs[state.rng.random_range(0..state.device.convs.len())];
    let roll = state.rng.random_range(0..100u32);
    match roll {
        0..55 if state.pending.len() < PENDING_MAX => {
            // Typing first, as a person does (faster than the server passes it on).
            if state.rng.random_bool(0.3) {
                for _ in 0..3 {
                    ws.send(&ClientFrame::Typing { conv }).await?;
                }
            }
            send_new(state, ws, conv).await
        }
        55..62 => {
            // Resend an id that was already acked: idempotency must answer the same seq.
            let acked: Vec<String> = state
                .observed
                .sends
                .iter()
                .filter(|(_, s)| !s.acks.is_empty())
                .map(|(id, _)| id.clone())
                .collect();
            if acked.is_empty() {
                return Ok(());
            }
            let id = acked[state.rng.random_range(0..acked.len())].clone();
            let record = &state.observed.sends[&id];
            ws.send(&ClientFrame::Send {
                id: id.clone(),
                conv: record.conv,
                body: record.body.clone(),
            })
            .await
        }
        62..71 => {
            // Mark read up to what is here; now and then a little less (scrolled back up),
            // which must never move the cursor backwards.
            let seq = state
                .contiguous(conv)
                .saturating_sub(if state.rng.random_bool(0.2) {
                    state.rng.random_range(1..4)
                } else {
                    0
                });
            // One open mark per conversation: an error names the conversation, not the seq, and
            // a mark that succeeds is silent, so with two open the error could not be told
            // apart (attributing it to the oldest once confirmed a mark that had failed: seed 58).
            let open = state
                .open_marks
                .iter()
                .any(|&(i, _)| state.observed.marks[i].conv == conv);
            if seq == 0 || open {
                return Ok(());
            }
            state.trace.record(format_args!(
                "c{} marks conv={conv} seq={seq} (request {})",
                state.device.index, state.requests
            ));
            state.observed.marks.push(MarkRecord {
                conv,
                seq,
                confirmed: false,
            });
            state
                .open_marks
                .push((state.observed.marks.len() - 1, state.requests));
            state.requests += 1;
            ws.send(&ClientFrame::Read { conv, seq }).await
        }
        71..76 => {
            let back = state.rng.random_range(0..5);
            let after = state.contiguous(conv).saturating_sub(back);
            sync(state, ws, conv, after, SyncReason::Browse).await
        }
        76..86 => {
            // The latest page, or a deep page (before a seq this device already has).
            let have = state.contiguous(conv);
            let (before, limit) = if have > 0 && state.rng.random_bool(0.5) {
                (
                    Some(state.rng.random_range(1..=have + 1)),
                    state.rng.random_range(3..30),
                )
            } else {
                (None, 20)
            };
            history(state, client, conv, before, limit).await;
            Ok(())
        }
        86..93 => {
            let started_us = now_us();
            let answer = match client.inbox(Some(20)).await {
                Ok(inbox) => ReadAnswer::Inbox(inbox.conversations),
                Err(err) => match err.code() {
                    Some(code) => ReadAnswer::Refused(code),
                    None => return Ok(()),
                },
            };
            let record = ReadRecord {
                kind: ReadKind::Inbox { limit: 20 },
                started_us,
                ended_us: now_us(),
                answer,
            };
            state.observed.reads.push(record);
            Ok(())
        }
        93..97 if state.device.others_len() > 0 => {
            // A conversation this user is not in: every answer must be a refusal.
            let other = state
                .device
                .other(state.rng.random_range(0..state.device.others_len()));
            match state.rng.random_range(0..3) {
                0 => {
                    history(state, client, other, None, 20).await;
                    Ok(())
                }
                1 => sync(state, ws, other, 0, SyncReason::Browse).await,
                // Refused: nobody there may see this user typing.
                _ => ws.send(&ClientFrame::Typing { conv: other }).await,
            }
        }
        _ => ping(state, ws).await,
    }
}

async fn history(
    state: &mut State,
    client: &Client,
    conv: ConvId,
    before: Option<Seq>,
    limit: u32,
) {
    let started_us = now_us();
    let answer = match client.history(conv, before, Some(limit)).await {
        Ok(page) => ReadAnswer::History(page.messages),
        Err(err) => match err.code() {
            Some(code) => ReadAnswer::Refused(code),
            // Transport failures say nothing about the data.
            None => return,
        },
    };
    if let ReadAnswer::History(messages) = &answer {
        state.trace.record(format_args!(
            "c{} history conv={conv} before={before:?} -> {:?}",
            state.device.index,
            messages.last().map(|m| m.seq)
        ));
    }
    state.observed.reads.push(ReadRecord {
        kind: ReadKind::History {
            conv,
            before,
            limit,
        },
        started_us,
        ended_us: now_us(),
        answer,
    });
}

async fn ping(state: &mut State, ws: &mut WsSender) -> Result<(), chat_client::ClientError> {
    state.open_pings.push_back(state.requests);
    state.requests += 1;
    ws.send(&ClientFrame::Ping).await
}

async fn sync(
    state: &mut State,
    ws: &mut WsSender,
    conv: ConvId,
    after: Seq,
    reason: SyncReason,
) -> Result<(), chat_client::ClientError> {
    *state.syncs_sent.entry(conv).or_insert(0) += 1;
    state
        .open_syncs
        .entry(conv)
        .or_default()
        .push_back((state.requests, reason));
    state.requests += 1;
    state.event(ConnEvent::SyncSent {
        conv,
        after,
        reason,
        at_us: now_us(),
    });
    ws.send(&ClientFrame::Sync { conv, after }).await
}

/// Syncs the conversations not yet caught up (all of them the first time), marking the
/// syncs whose answers count for catch-up.
async fn catch_up(
    state: &mut State,
    ws: &mut WsSender,
    only_behind: bool,
) -> Result<(), chat_client::ClientError> {
    for conv in state.device.convs.clone() {
        if only_behind && state.caught_up(conv) {
            continue;
        }
        // One sync at a time per conversation (the client recipe, see `on_frame`): asking
        // again every 2 s while the last one is still out piled up syncs faster than 10,000
        // devices' app servers answered them (the scale scenario's memory grew 1 GB a minute).
        if only_behind && state.open_syncs.get(&conv).is_some_and(|q| !q.is_empty()) {
            continue;
        }
        let after = state.contiguous(conv);
        sync(state, ws, conv, after, SyncReason::Catchup).await?;
        let sent = state.syncs_sent.get(&conv).copied().unwrap_or(0);
        state.catchup_mark.insert(conv, sent);
    }
    Ok(())
}

async fn resend(
    state: &mut State,
    ws: &mut WsSender,
    id: &str,
) -> Result<(), chat_client::ClientError> {
    let Some(record) = state.observed.sends.get(id) else {
        return Ok(());
    };
    let frame = ClientFrame::Send {
        id: id.to_owned(),
        conv: record.conv,
        body: record.body.clone(),
    };
    state.unclean(id);
    state
        .pending
        .insert(id.to_owned(), std::time::Instant::now());
    ws.send(&frame).await
}

/// Handles one frame that arrived at `at_us` (the device may look at it later).
async fn on_frame(
    state: &mut State,
    ws: &mut WsSender,
    frame: ServerFrame,
    conn_no: usize,
    at_us: u64,
) -> Result<(), chat_client::ClientError> {
    let index = state.device.index;
    match frame {
        ServerFrame::Sent { id, conv, seq, .. } => {
            state
                .trace
                .record(format_args!("c{index} sent {id} conv={conv} seq={seq}"));
            state.pending.remove(&id);
            if let Some(record) = state.observed.sends.get_mut(&id) {
                if record.acks.is_empty() {
                    record.first_ack_us = Some(at_us);
                    record.clean = record.undecided && record.conn == conn_no;
                }
                record.undecided = false;
                record.acks.push(seq);
            }
            // Our own message counts as received.
            state.receive(conv, seq);
        }
        ServerFrame::Message {
            conv,
            seq,
            sender,
            id,
            body,
            ts,
            ..
        } => {
            state.trace.record(format_args!(
                "c{index} got conv={conv} seq={seq} {sender}/{id}"
            ));
            let before = state.contiguous(conv);
            let live = !state.syncing(conv);
            state.event(ConnEvent::Message { conv, seq });
            state.observed.frames.push(Received {
                conn: conn_no,
                conv,
                seq,
                sender,
                id,
                body,
                ts,
                at_us,
                live,
            });
            state.receive(conv, seq);
            // The client recipe: one sync at a time per conversation. Asking again while one
            // streams (it was once asked again after 3 s) re-reads the same hundreds of
            // messages, holds the connection's later frames behind them, and the gaps that
            // opens ask for more: a device fell a minute behind that way (seed 43).
            let syncing = state.open_syncs.get(&conv).is_some_and(|q| !q.is_empty());
            if seq > before + 1 && !syncing && state.device.convs.contains(&conv) {
                // A gap: ask for what is missing (once; the answer fills it).
                sync(state, ws, conv, before, SyncReason::Gap).await?;
            }
        }
        ServerFrame::Synced { conv, seq } => {
            state
                .trace
                .record(format_args!("c{index} synced conv={conv} seq={seq}"));
            let known = state.observed.synced.entry(conv).or_insert(0);
            *known = (*known).max(seq);
            *state.syncs_answered.entry(conv).or_insert(0) += 1;
            if let Some((request, _)) = state
                .open_syncs
                .get_mut(&conv)
                .and_then(VecDeque::pop_front)
            {
                state.confirm_marks(request);
            }
            state.event(ConnEvent::Synced { conv, seq, at_us });
        }
        ServerFrame::Error {
            code,
            message,
            id,
            op,
            conv,
            ..
        } => {
            state.trace.record(format_args!(
                "c{index} error {code} {} {op:?} {conv:?} ({message})",
                id.as_deref().unwrap_or("-")
            ));
            match (op, conv) {
                (Some(FrameOp::Sync), Some(conv)) => {
                    state
                        .open_syncs
                        .get_mut(&conv)
                        .and_then(VecDeque::pop_front);
                    state.event(ConnEvent::SyncFailed { conv, at_us });
                    if state.catchup_started && state.device.convs.contains(&conv) {
                        // A failed sync during catch-up: its answer will never come; start over.
                        return Err(chat_client::ClientError::Closed {
                            code: None,
                            reason: "sync failed during catch-up".into(),
                        });
                    }
                }
                (Some(FrameOp::Read), Some(conv)) => {
                    // At most one mark of `conv` is open (see `act`): that one failed.
                    let marks = &state.observed.marks;
                    if let Some(at) = state
                        .open_marks
                        .iter()
                        .position(|&(i, _)| marks[i].conv == conv)
                    {
                        state.open_marks.remove(at);
                    }
                }
                _ => {}
            }
            if let Some(id) = id {
                state.unclean(&id);
                if code.is_retryable() {
                    // Resent by the pending timer, with the same id.
                } else {
                    state.pending.remove(&id);
                    state
                        .observed
                        .refused
                        .push((id, format!("{code}: {message}")));
                }
            }
        }
        // Conversations created or changed: the standard workload's never change after setup.
        ServerFrame::Conversation { .. } => {}
        ServerFrame::Typing { conv, user, .. } => {
            if state.observed.typing.len() < RECEIPTS_RECORDED_MAX {
                state.observed.typing.push((conv, user, at_us));
            }
        }
        ServerFrame::Receipt { conv, user, seq } => {
            if state.observed.receipts.len() < RECEIPTS_RECORDED_MAX {
                state.observed.receipts.push((conv, user, seq));
            }
        }
        ServerFrame::Pong => {
            if let Some(request) = state.open_pings.pop_front() {
                state.confirm_marks(request);
            }
        }
    }
    Ok(())
}
