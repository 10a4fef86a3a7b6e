//! Crash safety of `chat serve`: SIGKILL in the middle of a burst of sends loses no
//! acknowledged message, and the restarted server neither duplicates nor reorders anything.

use chat_client::{Client, ClientFrame, ServerFrame, WsEvent};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PASSWORD: &str = "correct horse battery";

struct ServerProcess {
    child: Child,
    base: String,
}

impl ServerProcess {
    fn start(data: &std::path::Path) -> ServerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chat"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            // The burst is the point: thousands of sends in flight when the server dies,
            // far over one user's frame limit (which has tests of its own in abuse.rs).
            .args(["--frame-rate-per-sec", "0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start chat serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let base = line
            .trim()
            .strip_prefix("chat: listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        ServerProcess { child, base }
    }

    fn sigkill(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill");
        self.child.wait().expect("reap");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_sigkill_mid_burst() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let anon = Client::new(&server.base).unwrap();
    anon.register("alice", PASSWORD).await.unwrap();
    anon.register("bob", PASSWORD).await.unwrap();
    let alice = anon
        .clone()
        .with_token(anon.login("alice", PASSWORD).await.unwrap().token);
    let (conv, _) = alice.create_conversation(["bob"], None).await.unwrap();
    let conv = conv.conv_id;

    // A burst of sends, acks read concurrently; the server dies once enough were acked.
    let burst = 4000usize;
    let kill_after_acks = 600usize;
    let ws = alice.connect_ws().await.unwrap();
    let (mut tx, mut rx) = ws.split();
    let sender = tokio::spawn(async move {
        for i in 0..burst {
            let frame = ClientFrame::Send {
                id: format!("k{i}"),
                conv,
                body: format!("burst {i}"),
            };
            if tx.send(&frame).await.is_err() {
                return i;
            }
        }
        burst
    });
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut server = Some(server);
    loop {
        match rx.recv_timeout(Duration::from_secs(30)).await {
            Ok(WsEvent::Frame(ServerFrame::Sent { id, seq, .. })) => {
                assert!(acked.insert(id, seq).is_none(), "one ack per id");
                if acked.len() == kill_after_acks
                    && let Some(server) = server.take()
                {
                    server.sigkill();
                }
            }
            Ok(WsEvent::Frame(other)) => panic!("unexpected frame {other:?}"),
            Ok(WsEvent::Pong(_)) => {}
            Ok(WsEvent::Closed { .. }) | Err(_) => break,
        }
    }
    assert!(
        server.is_none(),
        "the burst finished before the kill; make it longer"
    );
    let attempted = sender.await.unwrap();
    assert!(acked.len() >= kill_after_acks);
    assert!(acked.len() < burst, "the kill landed mid-burst");
    eprintln!(
        "sent {attempted} frames, {} acked before SIGKILL",
        acked.len()
    );

    // Restart on the same data directory; the old token still works (the secret persisted).
    let server = ServerProcess::start(dir.path());
    let alice = Client::new(&server.base)
        .unwrap()
        .with_token(alice.token().unwrap().to_owned());
    let history = all_history(&alice, conv).await;
    let seqs: Vec<u64> = history.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        (1..=history.len() as u64).collect::<Vec<_>>(),
        "gapless from 1"
    );
    let ids: HashSet<&String> = history.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), history.len(), "no duplicate client ids");
    let stored: HashMap<&String, u64> = history.iter().map(|(seq, id)| (id, *seq)).collect();
    for (id, seq) in &acked {
        assert_eq!(stored.get(id), Some(seq), "acked {id} kept its seq");
    }
    // Durable order is send order.
    let mut by_seq: Vec<usize> = history
        .iter()
        .map(|(_, id)| id[1..].parse().unwrap())
        .collect();
    let sorted = {
        let mut s = by_seq.clone();
        s.sort();
        s
    };
    assert_eq!(by_seq, sorted, "seq order is send order");

    // Resending everything is idempotent: stored ids answer their seq, the rest append after.
    let mut ws = alice.connect_ws().await.unwrap();
    // One past the last written frame: a write that failed may still have reached the server.
    let resend = (attempted + 1).min(burst);
    for i in 0..resend {
        ws.send(&ClientFrame::Send {
            id: format!("k{i}"),
            conv,
            body: format!("burst {i}"),
        })
        .await
        .unwrap();
    }
    let mut answers = HashMap::new();
    while answers.len() < resend {
        match ws.recv_timeout(Duration::from_secs(30)).await.unwrap() {
            WsEvent::Frame(ServerFrame::Sent { id, seq, .. }) => {
                answers.insert(id, seq);
            }
            WsEvent::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    for (id, seq) in &stored {
        assert_eq!(
            answers.get(*id),
            Some(seq),
            "resent {id} answered its stored seq"
        );
    }
    let after = all_history(&alice, conv).await;
    assert_eq!(
        after.len(),
        resend,
        "every attempted send stored exactly once"
    );
    by_seq = after
        .iter()
        .map(|(_, id)| id[1..].parse().unwrap())
        .collect();
    assert_eq!(by_seq, (0..resend).collect::<Vec<_>>());
}

async fn all_history(client: &Client, conv: u64) -> Vec<(u64, String)> {
    let mut all = Vec::new();
    let mut before = None;
    loop {
        let page = client.history(conv, before, Some(200)).await.unwrap();
        all.splice(
            0..0,
            page.messages.into_iter().map(|m| (m.seq, m.client_msg_id)),
        );
        match page.next_before {
            Some(next) => before = Some(next),
            None => return all,
        }
    }
}
