//! Newcomers: people who register, log in and start conversations while the faults go on.
//!
//! Every registration, login and conversation creation of the setup happens before any
//! fault. These happen during the chaos phase, through any gateway, with retries like a real
//! app's: after an answer that may or may not have been applied (a timeout, `unavailable`,
//! a lost connection; the store's `commit_unknown_result` becomes one of them), the same
//! request is sent again. What each newcomer saw is judged by the `accounts` checker
//! ([`crate::checkers`]): a registration that may have been applied either logs in with its
//! password or was never made; a created conversation exists with exactly its members for
//! each of them; nothing appears that nobody created.
//!
//! Newcomers start conversations only among themselves, so the other checkers' model of who
//! is in which conversation stays the setup's.

use crate::scenario::retry_up_to;
use crate::trace::Trace;
use crate::workload::{Controls, Phase};
use chat_client::{Client, ClientError};
use chat_proto::ErrorCode;
use chat_proto::rest::ConversationView;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::Duration;

/// Newcomers at most per run.
const NEWCOMERS_MAX: usize = 40;
/// Attempts of one request before giving up on it (the faults may outlast them).
pub(crate) const ATTEMPTS_MAX: u32 = 20;
pub(crate) const RETRY_AFTER: Duration = Duration::from_millis(500);

/// What one newcomer did and saw.
#[derive(Debug, Clone)]
pub struct Newcomer {
    pub user: String,
    pub password: String,
    pub registration: Registration,
    pub creations: Vec<Creation>,
    /// After the faults: the login's answer (`Ok` or the error's code).
    pub final_login: Result<(), String>,
    /// After the faults: the newcomer's whole inbox (None when it could not be read).
    pub final_inbox: Option<Vec<ConversationView>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// Answered `201`.
    Created,
    /// `username_taken` after an attempt with no answer: ours, applied (or not made at all).
    TakenAfterUnknown,
    /// `username_taken` on the first attempt of a name nobody had used.
    TakenAtFirst,
    /// No answer within the attempts (maybe applied).
    Unanswered,
    /// Refused otherwise (the error's code).
    Refused(String),
}

/// One conversation this newcomer asked for.
#[derive(Debug, Clone)]
pub struct Creation {
    /// Everyone in it, the creator included, sorted.
    pub members: Vec<String>,
    pub title: Option<String>,
    /// Attempts answered with something that may have been applied.
    pub unknown_attempts: u32,
    /// The answer, once there was one.
    pub created: Option<ConversationView>,
    /// Refused (the error's code).
    pub refused: Option<String>,
}

/// Runs newcomers through the chaos phase; after it, checks back on each (login, inbox).
pub async fn run_newcomers(
    gateways: Vec<String>,
    controls: Arc<Controls>,
    trace: Trace,
    rng_seed: u64,
) -> Vec<Newcomer> {
    let mut rng = StdRng::seed_from_u64(rng_seed);
    let mut newcomers: Vec<Newcomer> = Vec::new();
    tokio::time::sleep(Duration::from_secs(rng.random_range(2..10))).await;
    while controls.phase() == Phase::Chaos && newcomers.len() < NEWCOMERS_MAX {
        let k = newcomers.len();
        let user = format!("new{k:02}");
        let password = format!("pw-{user}-{}", rng.random::<u32>());
        let client = client(&gateways, &mut rng, None);
        let registration = register(&client, &user, &password).await;
        trace.record(format_args!(
            "newcomer {user} registration {registration:?}"
        ));
        let mut me = Newcomer {
            user: user.clone(),
            password: password.clone(),
            registration,
            creations: Vec::new(),
            final_login: Err("not tried".into()),
            final_inbox: None,
        };
        if matches!(
            me.registration,
            Registration::Created | Registration::TakenAfterUnknown
        ) {
            if let Some(token) = login(&client, &user, &password).await {
                // A direct conversation with the newcomer before, and a group with the two
                // before (only those known to be registered).
                let known: Vec<&Newcomer> = newcomers
                    .iter()
                    .rev()
                    .filter(|n| n.registration == Registration::Created)
                    .take(2)
                    .collect();
                let mut asks: Vec<(Vec<String>, Option<String>)> = Vec::new();
                if let Some(first) = known.first() {
                    asks.push((vec![first.user.clone()], None));
                }
                if known.len() == 2 {
                    asks.push((
                        known.iter().map(|n| n.user.clone()).collect(),
                        Some(format!("{user}'s group")),
                    ));
                }
                for (others, title) in asks {
                    let client = self::client(&gateways, &mut rng, Some(&token));
                    let creation = create(&client, &user, others, title).await;
                    trace.record(format_args!(
                        "newcomer {user} created {:?} ({} unknown attempts, refused {:?})",
                        creation.created.as_ref().map(|c| c.conv_id),
                        creation.unknown_attempts,
                        creation.refused
                    ));
                    me.creations.push(creation);
                }
            }
        }
        newcomers.push(me);
        tokio::time::sleep(Duration::from_secs(rng.random_range(3..12))).await;
    }
    // The faults are over: every newcomer logs in and reads its whole inbox.
    while controls.phase() == Phase::Chaos {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for me in &mut newcomers {
        let client = client(&gateways, &mut rng, None);
        me.final_login = match retried(|| client.login(&me.user, &me.password)).await {
            Ok(session) => {
                let client = client.with_token(session.token);
                me.final_inbox = retried(|| client.inbox(Some(100))).await.ok().map(|inbox| {
                    inbox
                        .conversations
                        .into_iter()
                        .map(|e| ConversationView {
                            conv_id: e.conv_id,
                            kind: e.kind,
                            members: e.members,
                            owners: e.owners,
                            title: e.title,
                        })
                        .collect()
                });
                Ok(())
            }
            Err(err) => Err(code_of(&err)),
        };
        trace.record(format_args!(
            "newcomer {} final login {:?}, inbox {:?}",
            me.user,
            me.final_login,
            me.final_inbox
                .as_ref()
                .map(|i| i.iter().map(|c| c.conv_id).collect::<Vec<_>>())
        ));
    }
    newcomers
}

/// A client of a gateway drawn from `rng`, with a 5 s timeout.
pub(crate) fn client(gateways: &[String], rng: &mut StdRng, token: Option<&str>) -> Client {
    let url = &gateways[rng.random_range(0..gateways.len())];
    let client = Client::new(url)
        .unwrap_or_else(|err| panic!("gateway url {url}: {err}"))
        .with_timeout(Duration::from_secs(5));
    match token {
        Some(token) => client.with_token(token.to_owned()),
        None => client,
    }
}

fn code_of(err: &ClientError) -> String {
    err.code()
        .map(|c| c.as_str().to_owned())
        .unwrap_or_else(|| err.to_string())
}

async fn register(client: &Client, user: &str, password: &str) -> Registration {
    let mut unknown = false;
    for _ in 0..ATTEMPTS_MAX {
        match client.register(user, password).await {
            Ok(_) => return Registration::Created,
            Err(err) if err.code() == Some(ErrorCode::UsernameTaken) => {
                return if unknown {
                    Registration::TakenAfterUnknown
                } else {
                    Registration::TakenAtFirst
                };
            }
            Err(err) if err.is_retryable() => {
                unknown = true;
                tokio::time::sleep(RETRY_AFTER).await;
            }
            Err(err) => return Registration::Refused(code_of(&err)),
        }
    }
    Registration::Unanswered
}

async fn login(client: &Client, user: &str, password: &str) -> Option<String> {
    retried(|| client.login(user, password))
        .await
        .ok()
        .map(|s| s.token)
}

async fn create(
    client: &Client,
    user: &str,
    others: Vec<String>,
    title: Option<String>,
) -> Creation {
    let mut members: Vec<String> = others.iter().cloned().chain([user.to_owned()]).collect();
    members.sort();
    let mut creation = Creation {
        members,
        title: title.clone(),
        unknown_attempts: 0,
        created: None,
        refused: None,
    };
    for _ in 0..ATTEMPTS_MAX {
        match client.create_conversation(&others, title.as_deref()).await {
            Ok((view, _)) => {
                creation.created = Some(view);
                return creation;
            }
            Err(err) if err.is_retryable() => {
                creation.unknown_attempts += 1;
                tokio::time::sleep(RETRY_AFTER).await;
            }
            Err(err) => {
                creation.refused = Some(code_of(&err));
                return creation;
            }
        }
    }
    creation
}

/// Retries while the answer is retryable, up to [`ATTEMPTS_MAX`] attempts.
pub(crate) async fn retried<T, F, Fut>(call: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    retry_up_to(ATTEMPTS_MAX - 1, RETRY_AFTER, call).await
}
