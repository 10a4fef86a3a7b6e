//! The walking-skeleton scenario.
//!
//! One server node runs `chat::serve::run` (gateway, connection server and app server over
//! an in-memory store); three client nodes register, open two direct conversations and a
//! group, then send concurrently with random pauses while receiving pushes. Checks: every
//! send acked once; every other member received every message exactly once, in `seq`
//! order; history holds exactly the acked messages, gapless from 1, with the acked seqs.

use crate::trace::Trace;
use anyhow::{Context, bail, ensure};
use chat_client::{Client, ClientFrame, ServerFrame, WsEvent};
use chat_proto::{ConvId, Seq};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const PORT: u16 = 8080;
const PASSWORD: &str = "simulated password";
const SECRET: &[u8] = b"simulation-token-secret-0123456789abcdef";
pub const USERS: [&str; 3] = ["alice", "bob", "carol"];
/// Messages each member sends to each of its conversations.
pub const SENDS_PER_CONV: usize = 12;

/// Starts the server node: the production wiring, in-memory store, cheap password hashing.
fn start_server() {
    let handle = madsim::runtime::Handle::current();
    handle
        .create_node()
        .name("server")
        .ip(IpAddr::V4(SERVER_IP))
        .init(|| async {
            let listener = tokio::net::TcpListener::bind(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                PORT,
            ))
            .await
            .expect("bind in the simulator");
            let mut options = chat::serve::Options::new(SECRET.to_vec());
            options.app.password_cost = chat_auth::PasswordCost::TESTING;
            let kv = Arc::new(chat_store::MemoryKv::new());
            if let Err(err) = chat::serve::run(listener, kv, options, std::future::pending()).await
            {
                panic!("server failed: {err:#}");
            }
        })
        .build();
}

fn base_url() -> String {
    format!("http://{SERVER_IP}:{PORT}")
}

/// Runs `f` on a fresh client node and waits for it.
async fn on_node<T: Send + 'static>(
    name: &str,
    ip: Ipv4Addr,
    f: impl Future<Output = T> + Send + 'static,
) -> anyhow::Result<T> {
    let node = madsim::runtime::Handle::current()
        .create_node()
        .name(name)
        .ip(IpAddr::V4(ip))
        .build();
    node.spawn(f)
        .await
        .map_err(|e| anyhow::anyhow!("task on {name} failed: {e}"))
}

struct Setup {
    tokens: HashMap<String, String>,
    /// (conversation, members)
    convs: Vec<(ConvId, Vec<String>)>,
}

/// What one client observed.
#[derive(Debug, Default)]
struct Observed {
    /// id -> (conv, seq) from `sent` acks.
    acks: HashMap<String, (ConvId, Seq)>,
    /// Per conversation, pushed (seq, sender, id) in arrival order.
    pushes: BTreeMap<ConvId, Vec<(Seq, String, String)>>,
}

pub async fn scenario(trace: Trace) -> anyhow::Result<()> {
    start_server();
    let setup = on_node("setup", Ipv4Addr::new(10, 0, 2, 1), setup(trace.clone())).await??;
    trace.record(format!("setup convs={:?}", setup.convs));

    let mut tasks = Vec::new();
    for (i, user) in USERS.iter().enumerate() {
        let token = setup.tokens[*user].clone();
        let mine: Vec<(ConvId, Vec<String>)> = setup
            .convs
            .iter()
            .filter(|(_, m)| m.iter().any(|x| x == user))
            .cloned()
            .collect();
        let ip = Ipv4Addr::new(10, 0, 1, i as u8 + 1);
        let trace = trace.clone();
        let user = user.to_string();
        let node = madsim::runtime::Handle::current()
            .create_node()
            .name(user.clone())
            .ip(IpAddr::V4(ip))
            .build();
        tasks.push((
            user.clone(),
            node.spawn(chat_client_run(user, token, mine, trace)),
        ));
    }
    let mut observed = HashMap::new();
    for (user, task) in tasks {
        let result = task
            .await
            .map_err(|e| anyhow::anyhow!("client {user} panicked: {e}"))?;
        observed.insert(
            user.clone(),
            result.with_context(|| format!("client {user}"))?,
        );
    }

    let history = on_node("checker", Ipv4Addr::new(10, 0, 2, 2), {
        let tokens = setup.tokens.clone();
        let convs = setup.convs.clone();
        async move { read_histories(tokens, convs).await }
    })
    .await??;
    check(&setup, &observed, &history)?;
    trace.record("checks passed");
    Ok(())
}

async fn setup(trace: Trace) -> anyhow::Result<Setup> {
    let anon = Client::new(&base_url())?;
    // The server node may still be starting: retry the first call.
    let mut attempt = 0;
    loop {
        match anon.register(USERS[0], PASSWORD).await {
            Ok(_) => break,
            Err(err) if attempt < 50 => {
                attempt += 1;
                tracing::debug!(%err, "server not up yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => bail!("server never came up: {err}"),
        }
    }
    for user in &USERS[1..] {
        anon.register(user, PASSWORD).await?;
    }
    let mut tokens = HashMap::new();
    for user in USERS {
        tokens.insert(user.to_owned(), anon.login(user, PASSWORD).await?.token);
    }
    let as_user = |u: &str| anon.clone().with_token(tokens[u].clone());
    let ab = as_user("alice").create_conversation(["bob"], None).await?.0;
    let bc = as_user("bob").create_conversation(["carol"], None).await?.0;
    let group = as_user("carol")
        .create_conversation(["alice", "bob"], Some("all of us"))
        .await?
        .0;
    trace.record(format!(
        "created {} {} {}",
        ab.conv_id, bc.conv_id, group.conv_id
    ));
    Ok(Setup {
        tokens,
        convs: vec![
            (ab.conv_id, ab.members),
            (bc.conv_id, bc.members),
            (group.conv_id, group.members),
        ],
    })
}

/// One client: sends `SENDS_PER_CONV` messages to each of its conversations with random
/// pauses, while receiving, until its sends are acked and it has every message of the others.
async fn chat_client_run(
    user: String,
    token: String,
    convs: Vec<(ConvId, Vec<String>)>,
    trace: Trace,
) -> anyhow::Result<Observed> {
    let client = Client::new(&base_url())?.with_token(token);
    let ws = client.connect_ws().await?;
    let (mut tx, mut rx) = ws.split();
    let expected_pushes: usize = convs
        .iter()
        .map(|(_, m)| (m.len() - 1) * SENDS_PER_CONV)
        .sum();
    let expected_acks = convs.len() * SENDS_PER_CONV;
    let sender = {
        let convs: Vec<ConvId> = convs.iter().map(|(c, _)| *c).collect();
        let user = user.clone();
        tokio::spawn(async move {
            for i in 0..SENDS_PER_CONV {
                for conv in &convs {
                    let pause = Duration::from_millis(rand::random::<u64>() % 40);
                    tokio::time::sleep(pause).await;
                    let frame = ClientFrame::Send {
                        id: format!("{user}-{conv}-{i}"),
                        conv: *conv,
                        body: format!("{user} says {i}"),
                    };
                    tx.send(&frame).await?;
                }
            }
            anyhow::Ok(tx)
        })
    };
    let mut observed = Observed::default();
    let mut pushes = 0;
    while observed.acks.len() < expected_acks || pushes < expected_pushes {
        let event = rx.recv_timeout(Duration::from_secs(30)).await.with_context(|| {
            format!("{user} waiting: {} of {expected_acks} acks, {pushes} of {expected_pushes} pushes", observed.acks.len())
        })?;
        match event {
            WsEvent::Frame(ServerFrame::Sent { id, conv, seq, .. }) => {
                trace.record(format!("{user} sent {id} conv={conv} seq={seq}"));
                ensure!(
                    observed.acks.insert(id.clone(), (conv, seq)).is_none(),
                    "{user}: second ack for {id}"
                );
            }
            WsEvent::Frame(ServerFrame::Message {
                conv,
                seq,
                sender,
                id,
                ..
            }) => {
                trace.record(format!(
                    "{user} got conv={conv} seq={seq} from {sender} id={id}"
                ));
                observed
                    .pushes
                    .entry(conv)
                    .or_default()
                    .push((seq, sender, id));
                pushes += 1;
            }
            WsEvent::Frame(other) => bail!("{user}: unexpected frame {other:?}"),
            WsEvent::Pong(_) => {}
            WsEvent::Closed { code, reason } => bail!("{user}: closed {code:?} {reason}"),
        }
    }
    let _tx = sender
        .await
        .map_err(|e| anyhow::anyhow!("sender task: {e}"))??;
    // Nothing more may arrive: a duplicate push would show up here.
    match rx.recv_timeout(Duration::from_secs(2)).await {
        Err(chat_client::ClientError::Timeout { .. }) | Ok(WsEvent::Pong(_)) => {}
        Ok(other) => bail!("{user}: unexpected extra event {other:?}"),
        Err(err) => bail!("{user}: {err}"),
    }
    Ok(observed)
}

type Histories = HashMap<ConvId, Vec<(Seq, String, String)>>;

async fn read_histories(
    tokens: HashMap<String, String>,
    convs: Vec<(ConvId, Vec<String>)>,
) -> anyhow::Result<Histories> {
    let mut out = HashMap::new();
    for (conv, members) in convs {
        let client = Client::new(&base_url())?.with_token(tokens[&members[0]].clone());
        let mut all = Vec::new();
        let mut before = None;
        loop {
            let page = client.history(conv, before, Some(200)).await?;
            all.splice(
                0..0,
                page.messages
                    .into_iter()
                    .map(|m| (m.seq, m.sender, m.client_msg_id)),
            );
            match page.next_before {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        out.insert(conv, all);
    }
    Ok(out)
}

fn check(
    setup: &Setup,
    observed: &HashMap<String, Observed>,
    history: &Histories,
) -> anyhow::Result<()> {
    for (conv, members) in &setup.convs {
        let stored = &history[conv];
        // Gapless from 1, one message per (sender, id).
        let seqs: Vec<Seq> = stored.iter().map(|(s, _, _)| *s).collect();
        ensure!(
            seqs == (1..=stored.len() as Seq).collect::<Vec<_>>(),
            "conv {conv}: seqs not gapless from 1: {seqs:?}"
        );
        ensure!(
            stored.len() == members.len() * SENDS_PER_CONV,
            "conv {conv}: {} stored, expected {}",
            stored.len(),
            members.len() * SENDS_PER_CONV
        );
        let by_id: HashMap<&String, Seq> = stored.iter().map(|(s, _, id)| (id, *s)).collect();
        ensure!(
            by_id.len() == stored.len(),
            "conv {conv}: duplicate ids in history"
        );
        for member in members {
            let seen = observed.get(member).context("missing client")?;
            // Durability: every ack is in history with its seq.
            for (id, (c, seq)) in &seen.acks {
                if c == conv {
                    ensure!(
                        by_id.get(id) == Some(seq),
                        "conv {conv}: {member}'s ack {id}={seq} not in history"
                    );
                }
            }
            // Delivery: every message of the others, once, in increasing seq.
            let pushed = seen.pushes.get(conv).cloned().unwrap_or_default();
            ensure!(
                pushed.windows(2).all(|w| w[0].0 < w[1].0),
                "conv {conv}: {member} saw pushes out of order"
            );
            let expected: Vec<(Seq, String, String)> = stored
                .iter()
                .filter(|(_, sender, _)| sender != member)
                .cloned()
                .collect();
            ensure!(
                pushed == expected,
                "conv {conv}: {member} received {} pushes, expected {}",
                pushed.len(),
                expected.len()
            );
        }
    }
    Ok(())
}
