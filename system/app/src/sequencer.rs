//! Per-conversation send batching.
//!
//! Every send of a conversation goes through that conversation's queue, drained by one task
//! that commits whatever has accumulated (up to `batch_messages_max`) in one transaction. So:
//! - `seq` is assigned by one writer per conversation per app server: concurrent sends to a
//!   hot group chat do not conflict with each other and retry, they share a commit;
//! - sends submitted in order get increasing `seq`s (the queue is FIFO and submission is
//!   synchronous, see [`chat_proto::api::AppApi::call`]);
//! - delivery happens in `seq` order, because the same task routes each batch after its
//!   commit and before it takes the next.
//!
//! A change of members or title (`Request::Change`) goes through the same queue: the task
//! commits the sends before it, then the change on its own, then goes on; so it takes its
//! place in the `seq` stream, and in delivery order, where it was submitted.
//!
//! Several app servers may still write one conversation (each with its own task); the
//! store's optimistic concurrency keeps `seq` gapless then, at the cost of retries.

use crate::AppConfig;
use crate::batch::{self, Admit, Joins, Key};
use crate::errors::store_error;
use crate::routing::Router;
use chat_proto::api::{ConvChange, SendAck, SendRequest};
use chat_proto::deadline::Deadline;
use chat_proto::model::{is_valid_client_msg_id, now_ms};
use chat_proto::rest::{ConvChanged, ConversationView};
use chat_proto::sim::buggify;
use chat_proto::{ApiError, ConvId, ErrorCode};
use chat_store::{AppendError, ChatStore, NewMessage};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How late the buggified "lost" acks come: past every request timeout, as if lost.
const LOST_ACKS_LATE: Duration = Duration::from_secs(30);

type AckResult = Result<SendAck, ApiError>;
type Reply = oneshot::Sender<AckResult>;

struct Pending {
    request: SendRequest,
    reply: Reply,
}

/// A change of members or title waiting its turn.
struct PendingChange {
    caller: String,
    change: ConvChange,
    reply: oneshot::Sender<Result<ConvChanged, ApiError>>,
}

/// What a conversation's queue holds.
enum Work {
    Send(Pending),
    Change(PendingChange),
}

impl Work {
    /// Answers `overloaded`: the queue is full, or too many conversations have one.
    fn refuse(self) {
        let overloaded =
            || ApiError::new(ErrorCode::Overloaded, "too many requests in flight; retry");
        match self {
            Work::Send(pending) => {
                let _ = pending.reply.send(Err(overloaded()));
            }
            Work::Change(pending) => {
                let _ = pending.reply.send(Err(overloaded()));
            }
        }
    }
}

impl Pending {
    fn key(&self) -> Key {
        key(&self.request)
    }
}

fn key(request: &SendRequest) -> Key {
    (
        request.conv,
        request.sender.clone(),
        request.client_msg_id.clone(),
    )
}

/// Everyone waiting for one send's answer.
struct Waiters {
    reply: Reply,
    joined: Vec<Reply>,
}

/// Answers acks held back by the lost-acks fault point, [`LOST_ACKS_LATE`] from now.
async fn answer_late(lost: Vec<(Waiters, AckResult)>) {
    tokio::time::sleep(LOST_ACKS_LATE).await;
    for (waiters, answer) in lost {
        waiters.answer(answer);
    }
}

impl Waiters {
    /// The sender may have gone; the message is durable either way.
    fn answer(self, answer: Result<SendAck, ApiError>) {
        for waiter in self.joined {
            let _ = waiter.send(answer.clone());
        }
        let _ = self.reply.send(answer);
    }
}

pub struct Sequencers {
    shared: Arc<Shared>,
}

struct Shared {
    store: ChatStore,
    router: Arc<Router>,
    config: AppConfig,
    // A std Mutex: held only to look up or insert a queue, never across an await.
    queues: Mutex<HashMap<ConvId, mpsc::Sender<Work>>>,
    /// Every send queued or being written, and who waits for it. Taken after `queues` when
    /// both are held.
    joins: Mutex<Joins<Reply>>,
}

impl Shared {
    fn joins(&self) -> std::sync::MutexGuard<'_, Joins<Reply>> {
        self.joins.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Everyone waiting for `pending`: its caller and every resend that joined it. Resends
    /// from now on queue anew.
    fn waiters(&self, pending: Pending) -> Waiters {
        let joined = self.joins().take(&pending.key());
        Waiters {
            reply: pending.reply,
            joined,
        }
    }

    /// Answers `pending` and every resend that joined it.
    fn answer(&self, pending: Pending, answer: Result<SendAck, ApiError>) {
        self.waiters(pending).answer(answer);
    }

    /// True (and forgotten) when nobody waits for `pending` any more: its caller and every
    /// resend that joined it timed out. It is then not written; a later resend queues anew.
    fn abandoned(&self, pending: &Pending) -> bool {
        self.joins().abandoned(&pending.key(), &pending.reply)
    }
}

impl Sequencers {
    pub fn new(store: ChatStore, router: Arc<Router>, config: AppConfig) -> Sequencers {
        Sequencers {
            shared: Arc::new(Shared {
                store,
                router,
                config,
                queues: Mutex::new(HashMap::new()),
                joins: Mutex::new(Joins::new()),
            }),
        }
    }

    /// Queues the send now; the returned future resolves once it is durable (or refused).
    pub fn submit(
        &self,
        request: SendRequest,
    ) -> impl Future<Output = Result<SendAck, ApiError>> + Send + 'static {
        let answer = self.enqueue(request);
        async move {
            // The task went away (its server is shutting down): maybe stored, maybe not.
            answer?.await.unwrap_or_else(|_| {
                Err(ApiError::unavailable(
                    "the send was interrupted; resend with the same id",
                ))
            })
        }
    }

    /// Queues `request` now; the receiver gets its answer.
    fn enqueue(&self, request: SendRequest) -> Result<oneshot::Receiver<AckResult>, ApiError> {
        validate(&request)?;
        let (reply, answer) = oneshot::channel();
        let conv = request.conv;
        let key = key(&request);
        // Refused by a full queue, or a closed one, which cannot happen: a task removes its
        // queue from the map (under the lock) before it drops the receiver. Both answer the
        // same way anyway.
        let refused = |err: mpsc::error::TrySendError<Work>| err.into_inner();
        let queued = {
            let mut queues = self.shared.queues.lock().unwrap_or_else(|p| p.into_inner());
            let mut joins = self.shared.joins();
            let convs_active_max = self.shared.config.convs_active_max;
            let queued = match joins.admit(&key, reply, &queues, convs_active_max) {
                // The same id is queued already: its answer is this one's too.
                Admit::Joined => return Ok(answer),
                Admit::Refuse(reply) => Err(Work::Send(Pending { request, reply })),
                Admit::Queue(reply, queue) => queue
                    .try_send(Work::Send(Pending { request, reply }))
                    .map_err(refused),
                Admit::Start(reply) => self
                    .start(&mut queues, conv, Work::Send(Pending { request, reply }))
                    .map_err(refused),
            };
            if queued.is_ok() {
                joins.queued(key);
            }
            queued
        };
        if let Err(work) = queued {
            work.refuse();
        }
        Ok(answer)
    }

    /// Queues a change of `conv` now, behind the sends submitted before it; the future
    /// resolves once it is durable (or refused).
    pub fn submit_change(
        &self,
        caller: String,
        conv: ConvId,
        change: ConvChange,
    ) -> impl Future<Output = Result<ConvChanged, ApiError>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let work = Work::Change(PendingChange {
            caller,
            change,
            reply,
        });
        let queued = {
            let mut queues = self.shared.queues.lock().unwrap_or_else(|p| p.into_inner());
            match queues.get(&conv) {
                Some(queue) => queue.try_send(work).map_err(|e| e.into_inner()),
                None if queues.len() >= self.shared.config.convs_active_max => Err(work),
                None => self
                    .start(&mut queues, conv, work)
                    .map_err(|e| e.into_inner()),
            }
        };
        if let Err(work) = queued {
            work.refuse();
        }
        async move {
            answer.await.unwrap_or_else(|_| {
                Err(ApiError::unavailable(
                    "the change was interrupted; it may have been applied: look, or retry",
                ))
            })
        }
    }

    /// A new queue for `conv`, holding `work`, with a task to drain it.
    // The error hands the work back to be refused at once, never up a call chain: boxing
    // it would cost every send an allocation for the rare refusal.
    #[allow(clippy::result_large_err)]
    fn start(
        &self,
        queues: &mut HashMap<ConvId, mpsc::Sender<Work>>,
        conv: ConvId,
        work: Work,
    ) -> Result<(), mpsc::error::TrySendError<Work>> {
        let (queue, receiver) = mpsc::channel(self.shared.config.conv_queue_len_max);
        let queued = queue.try_send(work);
        queues.insert(conv, queue);
        tokio::spawn(run(self.shared.clone(), conv, receiver));
        queued
    }
}

fn validate(request: &SendRequest) -> Result<(), ApiError> {
    if !is_valid_client_msg_id(&request.client_msg_id) {
        return Err(ApiError::new(
            ErrorCode::BadFrame,
            "`id` must be 1-64 characters of A-Za-z0-9_-",
        ));
    }
    let deleting = matches!(request.amend, Some(chat_proto::Amend::Delete(_)));
    if request.body.is_empty() != deleting {
        return Err(ApiError::new(
            ErrorCode::BadFrame,
            match deleting {
                true => "a delete has no `body`",
                false => "`body` must not be empty",
            },
        ));
    }
    if request.body.len() > chat_proto::limits::BODY_BYTES_MAX {
        return Err(ApiError::new(
            ErrorCode::BodyTooLarge,
            "`body` is too large",
        ));
    }
    Ok(())
}

async fn run(shared: Arc<Shared>, conv: ConvId, mut receiver: mpsc::Receiver<Work>) {
    let batch_max = shared.config.batch_messages_max;
    // A change read while filling a batch: it goes after that batch.
    let mut held: Option<Work> = None;
    // One timer for the whole loop rather than one per batch.
    let mut idle = Deadline::new(tokio::time::Instant::now, tokio::time::sleep_until);
    loop {
        let next = match held.take() {
            Some(work) => work,
            None => match idle
                .within(shared.config.sequencer_idle_timeout, receiver.recv())
                .await
            {
                Ok(Some(work)) => work,
                Ok(None) => return,
                Err(_idle) => {
                    if retire(&shared, conv, &receiver) {
                        return;
                    }
                    continue;
                }
            },
        };
        let first = match next {
            Work::Send(pending) => pending,
            Work::Change(change) => {
                let outcome = apply_change(&shared, conv, change).await;
                if outcome == Outcome::Refused && retire(&shared, conv, &receiver) {
                    return;
                }
                continue;
            }
        };
        // Sends whose caller stopped waiting (it timed out and will resend the same id) are
        // dropped unwritten (see `batch::fill`). A change ends the batch.
        let batch = batch::fill(
            first,
            || match receiver.try_recv() {
                Ok(Work::Send(pending)) => Some(pending),
                Ok(change) => {
                    held = Some(change);
                    None
                }
                Err(_) => None,
            },
            batch_max,
            |pending| shared.abandoned(pending),
        );
        if batch.is_empty() {
            continue;
        }
        let outcome = commit(&shared, conv, batch).await;
        // A conversation that does not exist (or whose sender is no member) keeps no task: a
        // client naming made-up ids must not fill the table of `convs_active_max` sequencers,
        // which would refuse every other conversation's first send as `overloaded`.
        if outcome == Outcome::Refused && held.is_none() && retire(&shared, conv, &receiver) {
            return;
        }
    }
}

/// Commits one change on its own, answers it, and tells whom it concerns: its event in
/// the `seq` stream, and the conversation as it is now.
async fn apply_change(shared: &Shared, conv: ConvId, pending: PendingChange) -> Outcome {
    let changed = shared
        .store
        .change(conv, &pending.caller, &pending.change, now_ms())
        .await;
    let changed = match changed {
        Ok(changed) => changed,
        Err(err) => {
            let outcome = match err {
                chat_store::StoreError::UnknownConversation => Outcome::Refused,
                _ => Outcome::Done,
            };
            let _ = pending.reply.send(Err(store_error(err)));
            return outcome;
        }
    };
    let view = ConversationView::from(&changed.conv);
    let _ = pending.reply.send(Ok(ConvChanged {
        conversation: view.clone(),
        seq: changed.event.as_ref().map(|m| m.seq),
    }));
    if let Some(event) = changed.event {
        tracing::info!(conv, seq = event.seq, caller = %pending.caller, "conversation changed");
        let targets = shared.router.targets(&changed.notify).await;
        shared.router.deliver(&targets, &[(Arc::new(event), None)]);
        shared.router.announce(&targets, view);
    }
    Outcome::Done
}

/// Removes this task's queue if nothing waits in it; true when the task must end then.
fn retire(shared: &Shared, conv: ConvId, receiver: &mpsc::Receiver<Work>) -> bool {
    let mut queues = shared.queues.lock().unwrap_or_else(|p| p.into_inner());
    // Submitters send under this lock, so an empty queue stays empty once removed.
    if receiver.is_empty() {
        queues.remove(&conv);
        return true;
    }
    false
}

/// What a batch's commit came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Something was stored, or answered from the store, or the store failed.
    Done,
    /// Every send (or the change) was refused as to an unknown conversation.
    Refused,
}

async fn commit(shared: &Arc<Shared>, conv: ConvId, batch: Vec<Pending>) -> Outcome {
    let items = batch
        .iter()
        .map(|p| NewMessage {
            sender: p.request.sender.clone(),
            client_msg_id: p.request.client_msg_id.clone(),
            body: p.request.body.clone(),
            amend: p.request.amend,
        })
        .collect();
    let results = match shared.store.append(conv, items, now_ms()).await {
        Ok(results) => results,
        Err(err) => {
            let err = store_error(err);
            for pending in batch {
                shared.answer(pending, Err(err.clone()));
            }
            return Outcome::Done;
        }
    };
    let outcome = if results
        .iter()
        .all(|r| matches!(r, Err(AppendError::UnknownConversation)))
    {
        Outcome::Refused
    } else {
        Outcome::Done
    };
    // Fault point: the commit is durable, the acks are late or lost. Clients time out and
    // resend the same ids, which must answer the same seqs.
    if let Some(delay) = chat_proto::sim::buggify_delay(0.03, Duration::from_secs(3)) {
        tokio::time::sleep(delay).await;
    }
    // Fault point: acks held past the connection server's timeout, as if lost.
    let mut lost_acks = buggify(0.02).then(Vec::new);
    let mut fresh = Vec::new();
    // The members at the commit, read in its transaction: never a removed member.
    let mut members: Option<Arc<[String]>> = None;
    for (pending, result) in batch.into_iter().zip(results) {
        let answer = match result {
            Ok(appended) => {
                let ack = SendAck {
                    conv: appended.message.conv,
                    seq: appended.seq,
                    ts: appended.ts,
                };
                if appended.fresh {
                    members = Some(appended.members);
                    fresh.push((Arc::new(appended.message), Some(pending.request.origin)));
                }
                Ok(ack)
            }
            Err(AppendError::UnknownConversation) => Err(ApiError::unknown_conversation()),
            Err(AppendError::NoSuchMessage) => Err(ApiError::new(
                ErrorCode::NotFound,
                "no such message: it does not exist, was deleted, or is an event",
            )),
            Err(AppendError::NotTheSender) => Err(ApiError::new(
                ErrorCode::Forbidden,
                "only its sender may edit or delete a message",
            )),
            Err(AppendError::IdConflict { .. }) => Err(ApiError::new(
                ErrorCode::IdConflict,
                "this id was used in another conversation; send with a new id",
            )),
        };
        match lost_acks.as_mut() {
            // Lost: resends from now on queue anew (and are answered from the store).
            Some(lost) => lost.push((shared.waiters(pending), answer)),
            None => shared.answer(pending, answer),
        }
    }
    if let Some(lost) = lost_acks {
        tokio::spawn(answer_late(lost));
    }
    if let Some(members) = members {
        shared.router.route(&members, &fresh).await;
    }
    outcome
}
