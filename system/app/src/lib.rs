//! The app server: stateless business logic.
//!
//! # Layout
//! - [`AppServer`]: implements [`chat_proto::api::AppApi`]: dispatches each
//!   [`chat_proto::api::Request`] in one `match` to its handler, which validates it and
//!   answers from the store; sends go to the sequencers.
//! - [`sequencer`]: one task per active conversation that batches concurrent sends into
//!   one transaction, so `seq` stays gapless without making a hot group chat a conflict point.
//! - [`batch`]: the sequencer's decisions without I/O: which sends join a copy already
//!   queued, queue or are refused, and what goes into each batch.
//! - [`routing`]: after a batch is durable, looks recipients up in the registry and hands
//!   the messages to the connection servers.
//! - [`errors`]: store and auth errors mapped to protocol errors, in one place.
//! - [`receipts`]: read cursors that moved, told to the members' devices, coalesced.
//! - [`throttle`]: per-user limits in memory: failed logins per username (a growing
//!   wait), groups created per hour.
//!
//! The server keeps no state that matters across restarts: everything durable is in the
//! store, everything about connections is in the registry.

pub mod batch;
pub mod errors;
pub mod receipts;
pub mod routing;
pub mod sequencer;
pub mod throttle;

use chat_auth::{Passwords, Tokens};
use chat_proto::api::{AppApi, Call, ConvChange, Request, Response, SyncPage};
use chat_proto::limits::*;
use chat_proto::link::Delivery;
use chat_proto::model::{PageEnd, cut_page, now_ms, validate_password, validate_username};
use chat_proto::rest::*;
use chat_proto::{ApiError, ConvId, Seq};
use chat_registry::Registry;
use chat_store::ChatStore;
use errors::store_error;
use futures::FutureExt;
use std::sync::Arc;
use std::time::Duration;

/// Tunables of an app server. Every queue and batch is bounded.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// Sends waiting per conversation before new ones are refused with `overloaded`.
    pub conv_queue_len_max: usize,
    /// Sends committed in one transaction of one conversation.
    pub batch_messages_max: usize,
    /// Conversations with a live sequencer task; sends to further ones answer `overloaded`.
    pub convs_active_max: usize,
    /// A conversation's sequencer task exits after this long without sends.
    pub sequencer_idle_timeout: Duration,
    /// Registry lookups for delivery give up after this long (the message is durable; clients
    /// sync).
    pub registry_timeout: Duration,
    /// Password hashes (register, login) computed at once; further ones wait their turn.
    /// Each holds the Argon2 memory cost (19 MiB by default) while it runs, so this bounds
    /// that memory however many logins arrive, and more than the cores gains nothing.
    pub password_hashes_in_flight_max: usize,
    /// A password hash waits this long at most for its turn; then the request is answered
    /// `overloaded` (503 with `Retry-After`), so a login flood turns into quick refusals
    /// instead of a queue that makes everyone's logins slow.
    pub password_hash_wait_max: Duration,
    /// Failed logins per username.
    pub login_throttle: throttle::ThrottleConfig,
    /// Group conversations one user may create per hour; beyond, `rate_limited`.
    pub groups_per_hour_max: u32,
    /// A read cursor's moves within this become one receipt (of the newest).
    pub receipt_window: Duration,
    /// Receipts held for coalescing at most; beyond, they go out at once.
    pub receipts_held_max: usize,
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            conv_queue_len_max: 1024,
            batch_messages_max: 128,
            convs_active_max: 100_000,
            sequencer_idle_timeout: Duration::from_secs(30),
            registry_timeout: Duration::from_secs(2),
            password_hashes_in_flight_max: 4,
            password_hash_wait_max: Duration::from_secs(2),
            login_throttle: throttle::ThrottleConfig::default(),
            groups_per_hour_max: 50,
            receipt_window: Duration::from_millis(250),
            receipts_held_max: 100_000,
        }
    }
}

pub struct AppServer {
    handlers: Arc<Handlers>,
    sequencers: sequencer::Sequencers,
}

/// The handlers of every operation but `send` (the sequencers'), shared by the requests
/// under way.
struct Handlers {
    store: ChatStore,
    /// For telling members' devices of a new conversation.
    router: Arc<routing::Router>,
    receipts: Arc<receipts::Receipts>,
    typing: throttle::TypingGate,
    passwords: Passwords,
    tokens: Tokens,
    /// Permits for password hashing: see [`AppConfig::password_hashes_in_flight_max`].
    hash_permits: Arc<tokio::sync::Semaphore>,
    hash_wait_max: Duration,
    throttle: throttle::LoginThrottle,
    group_cap: throttle::GroupCap,
}

impl AppServer {
    pub fn new(
        store: ChatStore,
        registry: Arc<dyn Registry>,
        delivery: Arc<dyn Delivery>,
        passwords: Passwords,
        tokens: Tokens,
        config: AppConfig,
    ) -> Arc<AppServer> {
        let router = Arc::new(routing::Router::new(
            registry,
            delivery,
            config.registry_timeout,
        ));
        let hash_permits = Arc::new(tokio::sync::Semaphore::new(
            config.password_hashes_in_flight_max.max(1),
        ));
        let handlers = Arc::new(Handlers {
            hash_permits,
            hash_wait_max: config.password_hash_wait_max,
            throttle: throttle::LoginThrottle::new(config.login_throttle),
            group_cap: throttle::GroupCap::new(
                config.groups_per_hour_max,
                throttle::GroupCap::USERS_MAX,
            ),
            store: store.clone(),
            typing: throttle::TypingGate::new(
                Duration::from_millis(TYPING_INTERVAL_MS),
                throttle::TypingGate::KEYS_MAX,
            ),
            receipts: receipts::Receipts::new(
                router.clone(),
                config.receipt_window,
                config.receipts_held_max,
            ),
            router: router.clone(),
            passwords,
            tokens,
        });
        Arc::new(AppServer {
            sequencers: sequencer::Sequencers::new(store, router, config),
            handlers,
        })
    }
}

impl AppApi for AppServer {
    /// One arm per operation. A send is submitted to its conversation's sequencer before
    /// this returns, so sends keep the order in which they were called.
    fn call(&self, request: Request) -> Call {
        let h = self.handlers.clone();
        match request {
            Request::Register { credentials } => async move {
                let user = h.register(credentials).await?;
                Ok(Response::UserCreated { user })
            }
            .boxed(),
            Request::Login { credentials } => async move {
                let session = h.login(credentials).await?;
                Ok(Response::Session { session })
            }
            .boxed(),
            Request::CreateConversation { caller, request } => async move {
                let (conversation, created) = h.create_conversation(&caller, request).await?;
                Ok(Response::Conversation {
                    conversation,
                    created,
                })
            }
            .boxed(),
            Request::History {
                caller,
                conv,
                query,
            } => async move {
                let page = h.history(&caller, conv, query).await?;
                Ok(Response::History { page })
            }
            .boxed(),
            Request::Inbox { caller, query } => async move {
                let inbox = h.inbox(&caller, query).await?;
                Ok(Response::Inbox { inbox })
            }
            .boxed(),
            Request::Send { request } => {
                let ack = self.sequencers.submit(request);
                async move { Ok(Response::Sent { ack: ack.await? }) }.boxed()
            }
            Request::Change {
                caller,
                conv,
                change,
            } => {
                if let Err(err) = validate_change(&change) {
                    return futures::future::ready(Err(err)).boxed();
                }
                let changed = self.sequencers.submit_change(caller, conv, change);
                async move {
                    Ok(Response::Changed {
                        changed: changed.await?,
                    })
                }
                .boxed()
            }
            Request::Conversation { caller, conv } => async move {
                let conv = h
                    .store
                    .conversation_for(&caller, conv)
                    .await
                    .map_err(store_error)?;
                Ok(Response::ConversationView {
                    conversation: ConversationView::from(&conv),
                })
            }
            .boxed(),
            Request::Typing { user, conv } => async move {
                h.typing(&user, conv).await?;
                Ok(Response::Done)
            }
            .boxed(),
            Request::Reads { caller, conv } => async move {
                let reads = h.store.reads(&caller, conv).await.map_err(store_error)?;
                Ok(Response::Reads {
                    reads: Reads { reads },
                })
            }
            .boxed(),
            Request::Settings { caller, update } => async move {
                let settings = h
                    .store
                    .settings(&caller, update.as_ref())
                    .await
                    .map_err(store_error)?;
                Ok(Response::Settings { settings })
            }
            .boxed(),
            Request::Read { user, conv, seq } => async move {
                h.read(&user, conv, seq).await?;
                Ok(Response::Done)
            }
            .boxed(),
            Request::Sync {
                user,
                conv,
                after,
                limit,
            } => async move {
                let page = h.sync(&user, conv, after, limit).await?;
                Ok(Response::Synced { page })
            }
            .boxed(),
        }
    }
}

/// Checks a change's own fields; the store checks it against the conversation.
fn validate_change(change: &ConvChange) -> Result<(), ApiError> {
    match change {
        ConvChange::SetMember { user, .. } | ConvChange::RemoveMember { user } => {
            validate_username(user)
                .map_err(|_| ApiError::bad_request(format!("`{user}` is not a valid username")))
        }
        ConvChange::SetTitle { title: Some(title) }
            if title.is_empty() || title.len() > TITLE_BYTES_MAX =>
        {
            Err(ApiError::bad_request(format!(
                "`title` must be 1-{TITLE_BYTES_MAX} bytes"
            )))
        }
        ConvChange::SetTitle { .. } => Ok(()),
    }
}

impl Handlers {
    /// Runs a password hash or verification: off the async worker threads (Argon2 takes
    /// tens of milliseconds of CPU), and at most `password_hashes_in_flight_max` at once.
    /// (madsim deprecates `spawn_blocking` but runs it as an ordinary task, which is right there.)
    #[allow(deprecated)]
    async fn hashing<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = match tokio::time::timeout(
            self.hash_wait_max,
            self.hash_permits.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(ApiError::unavailable("the server is shutting down")),
            Err(_) => {
                return Err(ApiError::new(
                    chat_proto::ErrorCode::Overloaded,
                    "too many logins and registrations at once; retry later",
                )
                .retry_after(Duration::from_secs(1)));
            }
        };
        tokio::task::spawn_blocking(move || {
            let result = f();
            drop(permit);
            result
        })
        .await
        .map_err(|e| ApiError::internal(format!("worker failed: {e}")))
    }

    async fn register(&self, credentials: Credentials) -> Result<UserCreated, ApiError> {
        validate_username(&credentials.username)?;
        validate_password(&credentials.password)?;
        let passwords = self.passwords.clone();
        let password = credentials.password;
        let hash = self
            .hashing(move || passwords.hash(&password))
            .await?
            .map_err(|e| ApiError::internal(e.to_string()))?;
        self.store
            .create_user(&credentials.username, &hash, now_ms())
            .await
            .map_err(store_error)?;
        tracing::info!(user = %credentials.username, "registered");
        Ok(UserCreated {
            username: credentials.username,
        })
    }

    async fn login(&self, credentials: Credentials) -> Result<Session, ApiError> {
        let invalid = || {
            ApiError::new(
                chat_proto::ErrorCode::InvalidCredentials,
                "wrong username or password",
            )
        };
        let valid = validate_username(&credentials.username).is_ok();
        if valid {
            let now = tokio::time::Instant::now();
            if let Err(wait) = self.throttle.check(&credentials.username, now) {
                return Err(ApiError::new(
                    chat_proto::ErrorCode::RateLimited,
                    "too many failed logins for this username; retry later",
                )
                .retry_after(wait));
            }
        }
        // Malformed usernames cannot exist; answer them like unknown ones, without a store read.
        let stored = if valid {
            self.store
                .get_user(&credentials.username)
                .await
                .map_err(store_error)?
                .map(|u| u.password_hash)
        } else {
            None
        };
        let passwords = self.passwords.clone();
        let password = credentials.password;
        let ok = self
            .hashing(move || passwords.verify(&password, stored.as_deref()))
            .await?;
        if valid {
            let now = tokio::time::Instant::now();
            match ok {
                true => self.throttle.succeeded(&credentials.username),
                false => self.throttle.failed(&credentials.username, now),
            }
        }
        if !ok {
            return Err(invalid());
        }
        let issued = self
            .tokens
            .issue(&credentials.username)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(Session {
            token: issued.token,
            username: credentials.username,
            expires_at: issued.expires_at,
        })
    }

    async fn create_conversation(
        &self,
        caller: &str,
        request: CreateConversation,
    ) -> Result<(ConversationView, bool), ApiError> {
        if request.members.is_empty() {
            return Err(ApiError::bad_request(
                "`members` must name at least one other user",
            ));
        }
        // The caller is added by the store; count distinct others plus the caller.
        let mut others: Vec<String> = request
            .members
            .into_iter()
            .filter(|m| m != caller)
            .collect();
        others.sort();
        others.dedup();
        for member in &others {
            validate_username(member).map_err(|_| {
                ApiError::bad_request(format!("`{member}` is not a valid username"))
            })?;
        }
        if others.is_empty() {
            return Err(ApiError::bad_request(
                "`members` must name at least one other user",
            ));
        }
        if others.len() + 1 > CONV_MEMBERS_MAX {
            return Err(ApiError::bad_request(format!(
                "a conversation has at most {CONV_MEMBERS_MAX} members"
            )));
        }
        if let Some(title) = &request.title
            && (title.is_empty() || title.len() > TITLE_BYTES_MAX)
        {
            return Err(ApiError::bad_request(format!(
                "`title` must be 1-{TITLE_BYTES_MAX} bytes"
            )));
        }
        // A group (more than one other member, or a title) is new every time; a direct
        // conversation is found again, so only groups count against the cap.
        if (others.len() > 1 || request.title.is_some())
            && let Err(wait) = self.group_cap.take(caller, tokio::time::Instant::now())
        {
            return Err(ApiError::new(
                chat_proto::ErrorCode::RateLimited,
                "too many new groups this hour; retry later",
            )
            .retry_after(wait));
        }
        let (conv, created) = self
            .store
            .create_conversation(caller, others, request.title, now_ms())
            .await
            .map_err(store_error)?;
        let view = ConversationView::from(&conv);
        if created {
            tracing::info!(
                conv = conv.conv_id,
                kind = conv.kind.as_str(),
                members = conv.members.len(),
                "conversation created"
            );
            // Every member's devices learn of it now, not at their next inbox refresh. Before
            // the answer: a device that connects after it gets the conversation from its
            // inbox, not from a push it might race (the registry lookup is bounded).
            let targets = self.router.targets(&conv.members).await;
            self.router.announce(&targets, view.clone());
        }
        Ok((view, created))
    }

    async fn history(
        &self,
        caller: &str,
        conv: ConvId,
        query: HistoryQuery,
    ) -> Result<HistoryPage, ApiError> {
        let limit = query.limit.unwrap_or(HISTORY_LIMIT_DEFAULT);
        if !(1..=HISTORY_LIMIT_MAX).contains(&limit) {
            return Err(ApiError::bad_request(format!(
                "`limit` must be 1-{HISTORY_LIMIT_MAX}"
            )));
        }
        let (mut messages, mut next_before) = self
            .store
            .history(caller, conv, query.before, limit)
            .await
            .map_err(store_error)?;
        let count = messages.len();
        cut_page(&mut messages, PageEnd::Newest);
        if messages.len() < count {
            // Cut in bytes: the page continues before its oldest message, which is not 1.
            next_before = messages.first().map(|m| m.seq);
        }
        Ok(HistoryPage {
            messages: messages.iter().map(MessageView::from).collect(),
            next_before,
        })
    }

    async fn inbox(&self, caller: &str, query: InboxQuery) -> Result<Inbox, ApiError> {
        let limit = query.limit.unwrap_or(INBOX_LIMIT_DEFAULT);
        if !(1..=INBOX_LIMIT_MAX).contains(&limit) {
            return Err(ApiError::bad_request(format!(
                "`limit` must be 1-{INBOX_LIMIT_MAX}"
            )));
        }
        let (items, next_before) = self
            .store
            .inbox(caller, limit, query.before)
            .await
            .map_err(store_error)?;
        let conversations = items
            .into_iter()
            .map(|item| InboxEntry {
                conv_id: item.conv.conv_id,
                kind: item.conv.kind,
                members: item.conv.members,
                owners: item.conv.owners,
                title: item.conv.title,
                last_seq: item.last_seq,
                last_message: item.last_message.as_ref().map(MessageView::from),
                unread: item.unread,
            })
            .collect();
        Ok(Inbox {
            conversations,
            next_before,
        })
    }

    /// Passes `user`'s typing in `conv` on to the other members online, at most once per
    /// interval; a non-member is refused (when the notice passes the gate).
    async fn typing(&self, user: &str, conv: ConvId) -> Result<(), ApiError> {
        if !self.typing.pass(user, conv, tokio::time::Instant::now()) {
            return Ok(());
        }
        let conversation = self.store.conversation(conv).await.map_err(store_error)?;
        let Some(conversation) = conversation.filter(|c| c.is_member(user)) else {
            return Err(ApiError::unknown_conversation());
        };
        let others: Vec<String> = conversation
            .members
            .into_iter()
            .filter(|m| m != user)
            .collect();
        let targets = self.router.targets(&others).await;
        self.router.typing(&targets, conv, user);
        Ok(())
    }

    async fn read(&self, user: &str, conv: ConvId, seq: Seq) -> Result<(), ApiError> {
        let moved = self
            .store
            .mark_read(user, conv, seq)
            .await
            .map_err(store_error)?;
        if let Some(moved) = moved {
            self.receipts.moved(conv, user, moved);
        }
        Ok(())
    }

    async fn sync(
        &self,
        user: &str,
        conv: ConvId,
        after: Seq,
        limit: u32,
    ) -> Result<SyncPage, ApiError> {
        let limit = limit.clamp(1, SYNC_PAGE_MESSAGES_MAX);
        let (mut messages, last_seq) = self
            .store
            .messages_after(user, conv, after, limit)
            .await
            .map_err(store_error)?;
        // The connection server asks again after the newest message it got.
        cut_page(&mut messages, PageEnd::Oldest);
        Ok(SyncPage { messages, last_seq })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_proto::Message;
    use chat_proto::link::Target;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Nowhere;

    impl Delivery for Nowhere {
        fn deliver(&self, _targets: &[Target], _message: Arc<Message>) {}
        fn announce(&self, _targets: &[Target], _conversation: Arc<ConversationView>) {}
        fn receipt(&self, _targets: &[Target], _receipt: chat_proto::link::Receipt) {}
        fn typing(&self, _targets: &[Target], _conv: ConvId, _user: &str) {}
    }

    fn server(password_hashes_in_flight_max: usize) -> Arc<AppServer> {
        let store = ChatStore::new(Arc::new(chat_store::MemoryKv::new()));
        let passwords = Passwords::new(chat_auth::PasswordCost::TESTING).expect("passwords");
        let tokens = Tokens::new(
            b"a test secret of at least 32 bytes!!",
            Duration::from_secs(60),
        );
        let config = AppConfig {
            password_hashes_in_flight_max,
            ..AppConfig::default()
        };
        AppServer::new(
            store,
            Arc::new(chat_registry::LocalRegistry::new()),
            Arc::new(Nowhere),
            passwords,
            tokens,
            config,
        )
    }

    /// Each hash holds megabytes while it runs: however many logins arrive, at most
    /// `password_hashes_in_flight_max` run at once (and that many do).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn password_hashes_run_at_most_the_bound_at_once() {
        let server = server(2);
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let hashes = (0..12).map(|_| {
            let (server, running, most) = (server.clone(), running.clone(), most.clone());
            tokio::spawn(async move {
                server
                    .handlers
                    .hashing(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
            })
        });
        for hash in futures::future::join_all(hashes).await {
            hash.expect("task").expect("hashed");
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }
}
