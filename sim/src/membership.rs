//! Membership under faults: an owner adds and removes members of a group while it chats in
//! it, and every member that comes and goes records what it was pushed.
//!
//! Its own users and group, apart from the standard workload's (whose checkers assume
//! members never change): the owner `grp_owner`, a plain member `grp_keep`, and churn users
//! `grp_c0`.. who are added, removed, and sometimes leave on their own, all through any
//! gateway with retries like a real app's (a change answered with something that may have
//! been applied is asked again: changes are idempotent). The owner sends a message every
//! second or so, and now and then edits or deletes one of its messages; `grp_keep` now and
//! then tries to remove someone, and churn users to edit the owner's messages, which only an
//! owner (the sender) may.
//!
//! The `membership` checker ([`crate::checkers`]) judges it against the group's final
//! history, whose events say who was a member at each `seq`:
//! - a churn user is pushed nothing of the group at a `seq` where they were not a member
//!   (their own removal event is the last thing they get);
//! - what is pushed is what history holds at that `seq`;
//! - every change in history was made by someone allowed to (an owner, or a member leaving;
//!   an edit or delete by the message's sender), and no forbidden change was answered as done;
//! - an edited message holds the body of its newest edit, a deleted one none, and so does every
//!   edit event of it;
//! - after the faults, each churn user reads exactly the history up to their removal, or all
//!   of it when they are a member.

use crate::accounts::{RETRY_AFTER, client, retried};
use crate::trace::Trace;
use crate::workload::{Controls, Phase};
use chat_client::{Client, ClientError, ClientFrame, ServerFrame, WsEvent};
use chat_proto::rest::MessageView;
use chat_proto::{ConvEvent, ConvId, ErrorCode, Seq};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const OWNER: &str = "grp_owner";
pub const KEEP: &str = "grp_keep";
const CHURN_USERS: usize = 3;
const PASSWORD: &str = "membership password";
/// The setup (accounts, the group) is retried this many times over: the faults may be on
/// from the start, and it must get through once they stop.
const SETUP_ROUNDS_MAX: u32 = 30;
/// The owner's sends still in flight when the faults end land within this.
const SENDS_LAND_WITHIN: Duration = Duration::from_secs(15);
/// A churn user's socket waits this long for a frame before it pings.
const IDLE: Duration = Duration::from_secs(5);

pub fn churn_user(k: usize) -> String {
    format!("grp_c{k}")
}

/// A message of the group pushed live to a churn user.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub user: String,
    pub seq: Seq,
    pub sender: String,
    pub body: String,
    pub event: Option<ConvEvent>,
}

/// Everything the membership actor saw, for the `membership` checker.
#[derive(Debug, Clone, Default)]
pub struct MembershipRun {
    /// The group, once created (None: the faults kept it from being created).
    pub conv: Option<ConvId>,
    pub pushed: Vec<Pushed>,
    /// Forbidden changes that were answered as done.
    pub forbidden_done: Vec<String>,
    /// The owner's edits: client id -> the body it set.
    pub edits: HashMap<String, String>,
    /// After the faults: how long the history was when the owner first read it...
    pub history_first_len: Option<usize>,
    /// ...and the whole of it as the owner read it after everyone else...
    pub history: Option<Vec<MessageView>>,
    /// ...and as each churn user does (None: unreadable).
    pub seen_by: Vec<(String, Option<Vec<MessageView>>)>,
}

/// Registers `user` (taken counts: only this actor uses these names) and logs in.
async fn account(gateways: &[String], rng: &mut StdRng, user: &str) -> Option<String> {
    let anon = client(gateways, rng, None);
    match retried(|| anon.register(user, PASSWORD)).await {
        Ok(_) => {}
        Err(err) if err.code() == Some(ErrorCode::UsernameTaken) => {}
        Err(_) => return None,
    }
    retried(|| anon.login(user, PASSWORD))
        .await
        .ok()
        .map(|s| s.token)
}

/// Runs the owner, the plain member and the churn users through the chaos phase; after it,
/// reads the group's history as each of them.
pub async fn run_membership(
    gateways: Vec<String>,
    controls: Arc<Controls>,
    trace: Trace,
    rng_seed: u64,
) -> MembershipRun {
    let mut rng = StdRng::seed_from_u64(rng_seed);
    let mut run = MembershipRun::default();
    let users: Vec<String> = [OWNER.to_owned(), KEEP.to_owned()]
        .into_iter()
        .chain((0..CHURN_USERS).map(churn_user))
        .collect();
    let mut tokens = Vec::new();
    for user in &users {
        let mut token = None;
        for _ in 0..SETUP_ROUNDS_MAX {
            token = account(&gateways, &mut rng, user).await;
            if token.is_some() {
                break;
            }
        }
        match token {
            Some(token) => tokens.push(token),
            None => {
                trace.record(format_args!("membership: no account for {user}"));
                return run;
            }
        }
    }
    let owner = client(&gateways, &mut rng, Some(&tokens[0]));
    let mut created = None;
    for _ in 0..SETUP_ROUNDS_MAX {
        if let Ok((group, _)) = retried(|| owner.create_conversation([KEEP], Some("churn"))).await {
            created = Some(group);
            break;
        }
    }
    let Some(group) = created else {
        trace.record("membership: the group was not created");
        return run;
    };
    let conv = group.conv_id;
    run.conv = Some(conv);
    trace.record(format_args!("membership: group {conv}"));

    // Each churn user's device records what it is pushed, until the faults are over.
    let pushed = Arc::new(Mutex::new(Vec::new()));
    let hijacked = Arc::new(Mutex::new(Vec::new()));
    let mut listeners = Vec::new();
    for (k, token) in tokens.iter().enumerate().skip(2) {
        let client = client(&gateways, &mut rng, Some(token));
        listeners.push(tokio::spawn(listen(
            client,
            users[k].clone(),
            conv,
            controls.clone(),
            pushed.clone(),
            hijacked.clone(),
        )));
    }

    let keep = client(&gateways, &mut rng, Some(&tokens[1]));
    let mut ws: Option<chat_client::WsSender> = None;
    // The seqs of the owner's messages, from their acks: what it may edit.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut n = 0u64;
    while controls.phase() == Phase::Chaos {
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..1500))).await;
        n += 1;
        // A message from the owner, without waiting for its ack: history says what landed.
        if ws.is_none()
            && let Ok(socket) = owner.connect_ws().await
        {
            let (sender, receiver) = socket.split();
            tokio::spawn(read_acks(receiver, acked.clone()));
            ws = Some(sender);
        }
        let mine: Vec<Seq> = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut frames = vec![ClientFrame::Send {
            id: format!("o{n}"),
            conv,
            body: format!("message {n}"),
        }];
        if !mine.is_empty() && rng.random_range(0..4) == 0 {
            let seq = mine[rng.random_range(0..mine.len())];
            frames.push(match rng.random_range(0..3) {
                0 => ClientFrame::Delete {
                    id: format!("d{n}"),
                    conv,
                    seq,
                },
                _ => {
                    let body = format!("edit {n} of {seq}");
                    run.edits.insert(format!("e{n}"), body.clone());
                    ClientFrame::Edit {
                        id: format!("e{n}"),
                        conv,
                        seq,
                        body,
                    }
                }
            });
        }
        if let Some(socket) = ws.as_mut() {
            for frame in &frames {
                if socket.send(frame).await.is_err() {
                    ws = None;
                    break;
                }
            }
        }
        let roll = rng.random_range(0..10);
        let k = rng.random_range(0..CHURN_USERS);
        let user = churn_user(k);
        let outcome = match roll {
            0..=3 => retried(|| owner.set_member(conv, &user, None)).await,
            4..=6 => retried(|| owner.remove_member(conv, &user)).await,
            7 => {
                let me = client(&gateways, &mut rng, Some(&tokens[2 + k]));
                retried(|| me.remove_member(conv, &user)).await
            }
            8 => {
                // Only an owner may remove someone else.
                match retried(|| keep.remove_member(conv, &user)).await {
                    Ok(done) => {
                        run.forbidden_done
                            .push(format!("{KEEP} removed {user}: {done:?}"));
                        Ok(done)
                    }
                    Err(err) => Err(err),
                }
            }
            _ => continue,
        };
        trace.record(format_args!(
            "membership: roll {roll} {user}: {:?}",
            outcome.as_ref().map(|c| c.seq).map_err(|e| e.code())
        ));
    }
    for listener in listeners {
        let _ = listener.await;
    }
    run.pushed = std::mem::take(&mut *pushed.lock().unwrap_or_else(|p| p.into_inner()));
    run.forbidden_done.extend(std::mem::take(
        &mut *hijacked.lock().unwrap_or_else(|p| p.into_inner()),
    ));

    // The faults are over. The owner's last sends were not waited for: they land (or not)
    // within this, before the final reads.
    if let Some(mut socket) = ws.take() {
        let _ = socket.close().await;
    }
    tokio::time::sleep(SENDS_LAND_WITHIN).await;
    // The whole history as the owner sees it, then as each churn user, then as the owner
    // again: a member's read must lie between the two.
    run.history_first_len = read_all(&owner, conv).await.map(|h| h.len());
    for (k, token) in tokens.iter().enumerate().skip(2) {
        let me = client(&gateways, &mut rng, Some(token));
        run.seen_by
            .push((users[k].clone(), read_all(&me, conv).await));
    }
    run.history = read_all(&owner, conv).await;
    trace.record(format_args!(
        "membership: {} pushed, history {:?}",
        run.pushed.len(),
        run.history.as_ref().map(Vec::len)
    ));
    run
}

/// Every message `client` may read of `conv`, ascending; `Some(empty)` when it may read
/// none (a user never in the group), None when the reads failed.
async fn read_all(client: &Client, conv: ConvId) -> Option<Vec<MessageView>> {
    let mut all = Vec::new();
    let mut before = None;
    loop {
        match retried(|| client.history(conv, before, Some(200))).await {
            Ok(page) => {
                let mut page_messages = page.messages;
                page_messages.append(&mut all);
                all = page_messages;
                match page.next_before {
                    Some(next) => before = Some(next),
                    None => return Some(all),
                }
            }
            Err(err) if err.code() == Some(ErrorCode::UnknownConversation) => {
                return Some(Vec::new());
            }
            Err(_) => return None,
        }
    }
}

/// The owner's acks: the seqs of its messages (not of its edits and deletes).
async fn read_acks(mut receiver: chat_client::WsReceiver, acked: Arc<Mutex<Vec<Seq>>>) {
    loop {
        match receiver.recv_timeout(IDLE * 4).await {
            Ok(WsEvent::Frame(ServerFrame::Sent { id, seq, .. })) if id.starts_with('o') => {
                acked.lock().unwrap_or_else(|p| p.into_inner()).push(seq);
            }
            Ok(_) | Err(ClientError::Timeout { .. }) => {}
            Err(_) => return,
        }
    }
}

/// A churn user's device: connected whenever it can be, recording the group's pushes, and
/// now and then trying to edit one of the owner's messages (it must be refused).
async fn listen(
    client: Client,
    user: String,
    conv: ConvId,
    controls: Arc<Controls>,
    pushed: Arc<Mutex<Vec<Pushed>>>,
    hijacked: Arc<Mutex<Vec<String>>>,
) {
    let mut tries = 0u64;
    while controls.phase() == Phase::Chaos {
        let Ok(mut ws) = client.connect_ws().await else {
            tokio::time::sleep(RETRY_AFTER).await;
            continue;
        };
        while controls.phase() == Phase::Chaos {
            match ws.recv_timeout(IDLE).await {
                Ok(WsEvent::Frame(ServerFrame::Message {
                    conv: c,
                    seq,
                    sender,
                    body,
                    event,
                    ..
                })) if c == conv => {
                    let theirs = event.is_none() && sender == OWNER;
                    pushed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Pushed {
                            user: user.clone(),
                            seq,
                            sender,
                            body,
                            event,
                        });
                    // Deterministic: every seventh of the owner's messages.
                    if theirs && seq % 7 == 0 {
                        tries += 1;
                        let edit = ClientFrame::Edit {
                            id: format!("x{tries}"),
                            conv,
                            seq,
                            body: "not mine to change".into(),
                        };
                        if ws.send(&edit).await.is_err() {
                            break;
                        }
                    }
                }
                Ok(WsEvent::Frame(ServerFrame::Sent { id, seq, .. })) if id.starts_with('x') => {
                    hijacked
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(format!("{user} edited the owner's message as {seq}"));
                }
                Ok(_) => {}
                Err(ClientError::Timeout { .. }) => {
                    if ws.send(&ClientFrame::Ping).await.is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    }
}
