//! The app server's API: one [`Request`] enum and one [`Response`] enum.
//!
//! This is the whole of what an app server offers, written once (mini-redis's `Command` is
//! the model): the gateway calls it for REST, connection servers for WebSocket frames. The
//! link carries these enums as they are; the app server dispatches them in one `match`; the
//! app pool routes them by [`Request::route_key`]; [`AppApiExt`] gives callers one typed
//! helper per operation.
//!
//! Adding an operation: a variant in [`Request`] and in [`Response`] (and its
//! [`Request::route_key`] arm, which the compiler asks for), a handler arm in the app
//! server's `call`, and a helper in [`AppApiExt`].

use crate::error::ApiError;
use crate::model::{Amend, ConnAddr, ConvId, Message, Role, Seq};
use crate::rest::{
    ConvChanged, ConversationView, CreateConversation, Credentials, HistoryPage, HistoryQuery,
    Inbox, InboxQuery, Reads, Session, Settings, SettingsUpdate, UserCreated,
};
use futures::future::BoxFuture;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A `send` frame, with who sent it and from which connection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SendRequest {
    pub sender: String,
    /// The sending connection: it gets the `sent` ack, and no `message` push of its own message.
    pub origin: ConnAddr,
    pub conv: ConvId,
    pub client_msg_id: String,
    /// Empty for a delete.
    pub body: String,
    /// An edit or delete of the sender's earlier message, instead of a new message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amend: Option<Amend>,
}

/// The answer to a durable send (or to a repeated client id: the first send's `seq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SendAck {
    pub conv: ConvId,
    pub seq: Seq,
    pub ts: u64,
}

/// One page of a `sync`: messages with `seq > after` in ascending order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SyncPage {
    pub messages: Vec<Message>,
    /// The conversation's newest `seq` when the page was read.
    pub last_seq: Seq,
}

/// A change to a group, asked by one of its members.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum ConvChange {
    /// Adds `user` with `role`, or gives the member `user` that role. Owners only.
    SetMember { user: String, role: Role },
    /// Removes `user`: owners only, except that any member may remove themself (leave).
    RemoveMember { user: String },
    /// Sets or (`None`) removes the title. Owners only.
    SetTitle { title: Option<String> },
}

/// Every operation of an app server. `caller` and `user` are authenticated identities: the
/// gateway or connection server checked the token before building the request.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Register {
        credentials: Credentials,
    },
    Login {
        credentials: Credentials,
    },
    CreateConversation {
        caller: String,
        request: CreateConversation,
    },
    History {
        caller: String,
        conv: ConvId,
        query: HistoryQuery,
    },
    Inbox {
        caller: String,
        query: InboxQuery,
    },
    /// Ordered when [`AppApi::call`] is called, not when its future is polled.
    Send {
        request: SendRequest,
    },
    /// Moves the caller's read cursor forward to `seq` (capped at the newest message).
    Read {
        user: String,
        conv: ConvId,
        seq: Seq,
    },
    /// Ordered with the conversation's sends (it takes the next `seq`), like [`Request::Send`].
    Change {
        caller: String,
        conv: ConvId,
        change: ConvChange,
    },
    /// The conversation, for a member (and, after their removal, for a former member).
    Conversation {
        caller: String,
        conv: ConvId,
    },
    /// `user` is typing in `conv` (passed on to the members online, throttled).
    Typing {
        user: String,
        conv: ConvId,
    },
    /// The members' read cursors (those who share them).
    Reads {
        caller: String,
        conv: ConvId,
    },
    /// The caller's settings, after applying `update` (none: just read them).
    Settings {
        caller: String,
        update: Option<SettingsUpdate>,
    },
    /// Reads up to `limit` messages with `seq > after`.
    Sync {
        user: String,
        conv: ConvId,
        after: Seq,
        limit: u32,
    },
}

/// The answer to each [`Request`], variant for variant.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Response {
    UserCreated {
        user: UserCreated,
    },
    Session {
        session: Session,
    },
    /// The conversation, and whether this call created it.
    Conversation {
        conversation: ConversationView,
        created: bool,
    },
    History {
        page: HistoryPage,
    },
    Inbox {
        inbox: Inbox,
    },
    Sent {
        ack: SendAck,
    },
    Done,
    Synced {
        page: SyncPage,
    },
    Changed {
        changed: ConvChanged,
    },
    ConversationView {
        conversation: ConversationView,
    },
    Reads {
        reads: Reads,
    },
    Settings {
        settings: Settings,
    },
}

/// What a request is routed by, when several app servers share the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKey<'a> {
    /// A user's requests go to one app server while it is up.
    User(&'a str),
    /// A conversation's sends go to one app server while it is up, so its sequencer batches
    /// them and cross-server conflicts on the conversation's head stay rare.
    Conv(ConvId),
}

impl Request {
    pub fn route_key(&self) -> RouteKey<'_> {
        match self {
            Request::Register { credentials } | Request::Login { credentials } => {
                RouteKey::User(&credentials.username)
            }
            Request::CreateConversation { caller, .. }
            | Request::History { caller, .. }
            | Request::Inbox { caller, .. } => RouteKey::User(caller),
            Request::Send { request } => RouteKey::Conv(request.conv),
            Request::Change { conv, .. } => RouteKey::Conv(*conv),
            Request::Conversation { caller, .. }
            | Request::Reads { caller, .. }
            | Request::Settings { caller, .. } => RouteKey::User(caller),
            Request::Read { user, .. }
            | Request::Sync { user, .. }
            | Request::Typing { user, .. } => RouteKey::User(user),
        }
    }

    /// The operation's name, for logs.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Register { .. } => "register",
            Request::Login { .. } => "login",
            Request::CreateConversation { .. } => "create_conversation",
            Request::History { .. } => "history",
            Request::Inbox { .. } => "inbox",
            Request::Send { .. } => "send",
            Request::Read { .. } => "read",
            Request::Sync { .. } => "sync",
            Request::Change { .. } => "change",
            Request::Conversation { .. } => "conversation",
            Request::Reads { .. } => "reads",
            Request::Typing { .. } => "typing",
            Request::Settings { .. } => "settings",
        }
    }
}

/// A request under way: resolves to its answer.
pub type Call = BoxFuture<'static, Result<Response, ApiError>>;

/// An app server, seen from the gateway and the connection servers: in process (`chat
/// serve`), over one link connection, or a pool of them.
pub trait AppApi: Send + Sync + 'static {
    /// Starts `request`. Not `async`: the request is ordered when this is called, before the
    /// future is polled, so sends issued one after another on a connection get increasing
    /// `seq`s even though their acks are awaited concurrently (pipelining).
    fn call(&self, request: Request) -> Call;
}

/// One typed helper per operation, for every [`AppApi`].
pub trait AppApiExt: AppApi {
    fn register(&self, credentials: Credentials) -> Answer<UserCreated> {
        Answer::new(self.call(Request::Register { credentials }), |r| match r {
            Response::UserCreated { user } => Ok(user),
            other => Err(other),
        })
    }

    fn login(&self, credentials: Credentials) -> Answer<Session> {
        Answer::new(self.call(Request::Login { credentials }), |r| match r {
            Response::Session { session } => Ok(session),
            other => Err(other),
        })
    }

    /// The conversation, and whether this call created it.
    fn create_conversation(
        &self,
        caller: &str,
        request: CreateConversation,
    ) -> Answer<(ConversationView, bool)> {
        let caller = caller.to_owned();
        Answer::new(
            self.call(Request::CreateConversation { caller, request }),
            |r| match r {
                Response::Conversation {
                    conversation,
                    created,
                } => Ok((conversation, created)),
                other => Err(other),
            },
        )
    }

    fn history(&self, caller: &str, conv: ConvId, query: HistoryQuery) -> Answer<HistoryPage> {
        let caller = caller.to_owned();
        let call = self.call(Request::History {
            caller,
            conv,
            query,
        });
        Answer::new(call, |r| match r {
            Response::History { page } => Ok(page),
            other => Err(other),
        })
    }

    fn inbox(&self, caller: &str, query: InboxQuery) -> Answer<Inbox> {
        let caller = caller.to_owned();
        Answer::new(self.call(Request::Inbox { caller, query }), |r| match r {
            Response::Inbox { inbox } => Ok(inbox),
            other => Err(other),
        })
    }

    /// Ordered now (see [`AppApi::call`]); only the ack is awaited.
    fn send(&self, request: SendRequest) -> Answer<SendAck> {
        Answer::new(self.call(Request::Send { request }), |r| match r {
            Response::Sent { ack } => Ok(ack),
            other => Err(other),
        })
    }

    fn read(&self, user: &str, conv: ConvId, seq: Seq) -> Answer<()> {
        let user = user.to_owned();
        Answer::new(self.call(Request::Read { user, conv, seq }), |r| match r {
            Response::Done => Ok(()),
            other => Err(other),
        })
    }

    fn sync(&self, user: &str, conv: ConvId, after: Seq, limit: u32) -> Answer<SyncPage> {
        let user = user.to_owned();
        let call = self.call(Request::Sync {
            user,
            conv,
            after,
            limit,
        });
        Answer::new(call, |r| match r {
            Response::Synced { page } => Ok(page),
            other => Err(other),
        })
    }

    /// Ordered with the conversation's sends (see [`AppApi::call`]).
    fn change(&self, caller: &str, conv: ConvId, change: ConvChange) -> Answer<ConvChanged> {
        let caller = caller.to_owned();
        let call = self.call(Request::Change {
            caller,
            conv,
            change,
        });
        Answer::new(call, |r| match r {
            Response::Changed { changed } => Ok(changed),
            other => Err(other),
        })
    }

    fn typing(&self, user: &str, conv: ConvId) -> Answer<()> {
        let user = user.to_owned();
        Answer::new(self.call(Request::Typing { user, conv }), |r| match r {
            Response::Done => Ok(()),
            other => Err(other),
        })
    }

    fn reads(&self, caller: &str, conv: ConvId) -> Answer<Reads> {
        let caller = caller.to_owned();
        Answer::new(self.call(Request::Reads { caller, conv }), |r| match r {
            Response::Reads { reads } => Ok(reads),
            other => Err(other),
        })
    }

    fn settings(&self, caller: &str, update: Option<SettingsUpdate>) -> Answer<Settings> {
        let caller = caller.to_owned();
        Answer::new(
            self.call(Request::Settings { caller, update }),
            |r| match r {
                Response::Settings { settings } => Ok(settings),
                other => Err(other),
            },
        )
    }

    fn conversation(&self, caller: &str, conv: ConvId) -> Answer<ConversationView> {
        let caller = caller.to_owned();
        Answer::new(
            self.call(Request::Conversation { caller, conv }),
            |r| match r {
                Response::ConversationView { conversation } => Ok(conversation),
                other => Err(other),
            },
        )
    }
}

impl<A: AppApi + ?Sized> AppApiExt for A {}

/// A [`Call`] whose answer is of one kind, `T`. A response of another kind (a bug on the
/// other side of a link) becomes an internal error, not a panic.
#[must_use = "a call's answer does nothing unless awaited"]
pub struct Answer<T> {
    call: Call,
    pick: fn(Response) -> Result<T, Response>,
}

impl<T> Answer<T> {
    fn new(call: Call, pick: fn(Response) -> Result<T, Response>) -> Answer<T> {
        Answer { call, pick }
    }
}

impl<T> Future for Answer<T> {
    type Output = Result<T, ApiError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let pick = self.pick;
        self.call.as_mut().poll(cx).map(|answer| {
            (pick)(answer?).map_err(|other| {
                tracing::error!(response = ?other, "an app server answered with the wrong kind");
                ApiError::internal("unexpected answer from the app server")
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    /// Answers every request with `Done`.
    struct AlwaysDone;

    impl AppApi for AlwaysDone {
        fn call(&self, _request: Request) -> Call {
            futures::future::ready(Ok(Response::Done)).boxed()
        }
    }

    #[test]
    fn an_answer_of_the_wrong_kind_is_an_internal_error_not_a_panic() {
        let app = AlwaysDone;
        assert_eq!(app.read("ann", 1, 2).now_or_never(), Some(Ok(())));
        let wrong = app.sync("ann", 1, 0, 10).now_or_never().expect("ready");
        assert_eq!(
            wrong.expect_err("a Done is no sync page").code,
            crate::ErrorCode::Internal
        );
    }

    #[test]
    fn sends_route_by_conversation_and_everything_else_by_user() {
        let send = Request::Send {
            request: SendRequest {
                sender: "ann".into(),
                origin: ConnAddr { server: 1, conn: 2 },
                conv: 7,
                client_msg_id: "m1".into(),
                body: "hi".into(),
                amend: None,
            },
        };
        assert_eq!(send.route_key(), RouteKey::Conv(7));
        let sync = Request::Sync {
            user: "bob".into(),
            conv: 7,
            after: 0,
            limit: 1,
        };
        assert_eq!(sync.route_key(), RouteKey::User("bob"));
        let login = Request::Login {
            credentials: Credentials {
                username: "cy".into(),
                password: "pw".into(),
            },
        };
        assert_eq!(login.route_key(), RouteKey::User("cy"));
    }
}
