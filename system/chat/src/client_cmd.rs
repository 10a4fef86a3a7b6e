//! `chat client`: a line-based terminal client.
//!
//! Lines starting with `/` are commands (`/help` lists them); any other line is sent to the
//! current conversation. Live messages print as `[#<conv> <seq>] <sender>: <body>`. The
//! connection is kept by [`LiveSession`]: gaps are synced, and after a lost connection it
//! reconnects with backoff, syncs the conversations opened here and resends unacked sends.

use anyhow::{Context, bail};
use chat_client::{
    Client, ClientError, ConvChanged, ConvEvent, ConvId, ConversationView, LiveEvent, LiveSession,
    MessageView, Role,
};
use chat_proto::limits::{BODY_BYTES_MAX, HISTORY_LIMIT_MAX};
use chat_proto::rest::InboxCursor;
use std::io::{BufRead, Write};
use std::time::Duration;
use tokio::sync::mpsc;

/// Messages shown when a conversation is opened.
const OPEN_HISTORY_MESSAGES: u32 = 10;
/// Messages shown by `/history` without a count.
const HISTORY_MESSAGES_DEFAULT: u32 = 20;
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(250);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Input lines read ahead of the loop.
const INPUT_LINES_QUEUED_MAX: usize = 64;

const HELP: &str = "\
commands:
  /inbox                       list your conversations with unread counts
  /more                        the next page of the inbox
  /dm <user>                   open the direct conversation with <user>
  /group <title> <user>...     create a group conversation
  /open <conv_id>              make <conv_id> the current conversation
  /history [n]                 show the last n messages of the current conversation
  /read                        mark the current conversation as read
  /members                     the current group's members and owners
  /add <user> [owner]          add <user> to the current group (owners only)
  /owner <user> | /member <user>   set a member's role (owners only)
  /remove <user>               remove <user> from the current group (owners only)
  /leave                       leave the current group
  /title <title> | /title -    set or remove the current group's title (owners only)
  /edit <seq> <text>           replace the text of your message <seq>
  /delete <seq>                delete your message <seq>
  /reads                       how far each member has read the current conversation
  /receipts on|off             whether others see how far you have read
  /help                        this text
  /quit                        leave
anything else is sent to the current conversation";

#[derive(clap::Args, Debug)]
pub struct ClientArgs {
    /// The server's base URL.
    #[arg(long, env = "CHAT_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Your username.
    #[arg(long, env = "CHAT_USER")]
    pub user: String,
    /// Your password; asked on stdin when absent.
    #[arg(long, env = "CHAT_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Create the account first, then log in.
    #[arg(long)]
    pub register: bool,
}

pub async fn run(args: ClientArgs) -> anyhow::Result<()> {
    let mut input = stdin_lines();
    let password = match args.password {
        Some(password) => password,
        None => {
            print!("password for {} (echoed): ", args.user);
            std::io::stdout().flush()?;
            input.recv().await.context("no password on stdin")??
        }
    };
    let anon = Client::new(&args.server)?;
    if args.register {
        anon.register(&args.user, &password)
            .await
            .context("registering")?;
        println!("registered {}", args.user);
    }
    let session = anon
        .login(&args.user, &password)
        .await
        .context("logging in")?;
    let live = LiveSession::connect(anon.clone().with_token(session.token))
        .await
        .context("connecting the WebSocket")?;
    println!(
        "logged in as {} on {}; /help for commands",
        session.username,
        anon.base_url()
    );

    let mut ui = Ui {
        anon,
        user: args.user,
        password,
        live,
        current: None,
        inbox_next: None,
        backoff: RECONNECT_BACKOFF_MIN,
    };
    loop {
        tokio::select! {
            line = input.recv() => {
                let Some(line) = line else { break };
                let line = line.context("reading stdin")?;
                match ui.command(line.trim()).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => println!("! {e:#}"),
                }
            }
            () = ui.pump() => {}
        }
    }
    let _ = ui.live.close().await;
    Ok(())
}

/// Stdin, line by line, from a thread: the runtime alias has no async stdin, and a blocking
/// read must not stall the runtime. The channel closes at end of input.
fn stdin_lines() -> mpsc::Receiver<std::io::Result<String>> {
    let (tx, rx) = mpsc::channel(INPUT_LINES_QUEUED_MAX);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let failed = line.is_err();
            if tx.blocking_send(line).is_err() || failed {
                break;
            }
        }
    });
    rx
}

struct Ui {
    /// A client without token, to log in again when the token expired.
    anon: Client,
    user: String,
    password: String,
    live: LiveSession,
    current: Option<ConvId>,
    /// Where `/more` continues the inbox.
    inbox_next: Option<InboxCursor>,
    backoff: Duration,
}

impl Ui {
    /// Shows live events, or, while disconnected, waits and reconnects. Cancel-safe.
    async fn pump(&mut self) {
        if self.live.is_connected() {
            match self.live.next_events().await {
                Ok(events) => events.iter().for_each(show_event),
                Err(ClientError::Decode(e)) => println!("! unreadable frame from the server: {e}"),
                Err(e) => println!("! connection lost: {e}; reconnecting"),
            }
            return;
        }
        // Full jitter, so many clients cut off at once do not come back at once.
        let wait = Duration::from_millis(rand::random_range(0..=self.backoff.as_millis() as u64));
        tokio::time::sleep(wait).await;
        self.backoff = (self.backoff * 2).min(RECONNECT_BACKOFF_MAX);
        let mut result = self.live.reconnect().await;
        if matches!(&result, Err(e) if e.status() == Some(401)) {
            // The token expired: log in again.
            match self.anon.login(&self.user, &self.password).await {
                Ok(session) => {
                    self.live.client_mut().set_token(Some(session.token));
                    result = self.live.reconnect().await;
                }
                Err(e) => result = Err(e),
            }
        }
        match result {
            Ok(()) => {
                println!("reconnected");
                self.backoff = RECONNECT_BACKOFF_MIN;
            }
            Err(e) => println!("! reconnect failed: {e}"),
        }
    }

    /// Runs one input line; `Ok(false)` means quit.
    async fn command(&mut self, line: &str) -> anyhow::Result<bool> {
        if line.is_empty() {
            return Ok(true);
        }
        let Some(command) = line.strip_prefix('/') else {
            self.say(line).await?;
            return Ok(true);
        };
        let words: Vec<&str> = command.split_whitespace().collect();
        match words.as_slice() {
            ["quit"] | ["exit"] => return Ok(false),
            ["help"] => println!("{HELP}"),
            ["inbox"] => self.inbox(None).await?,
            ["more"] => match self.inbox_next {
                Some(next) => self.inbox(Some(next)).await?,
                None => bail!("no more conversations: /inbox starts again"),
            },
            ["members"] => {
                let conv = self.live.client().conversation(self.current()?).await?;
                show_members(&conv);
            }
            ["add", user] => self.change_member(user, Some(Role::Member)).await?,
            ["add", user, "owner"] | ["owner", user] => {
                self.change_member(user, Some(Role::Owner)).await?
            }
            ["member", user] => self.change_member(user, Some(Role::Member)).await?,
            ["remove", user] => self.change_member(user, None).await?,
            ["leave"] => {
                let me = self.user.clone();
                self.change_member(&me, None).await?
            }
            ["edit", seq, _, ..] => {
                let seq = seq.parse().context("usage: /edit <seq> <text>")?;
                let text = command["edit".len()..].trim_start()[seq_len(seq)..].trim();
                self.amend(seq, Some(text)).await?;
            }
            ["delete", seq] => {
                let seq = seq.parse().context("usage: /delete <seq>")?;
                self.amend(seq, None).await?;
            }
            ["reads"] => {
                let reads = self.live.client().reads(self.current()?).await?;
                for read in &reads.reads {
                    println!("  {} read up to {}", read.user, read.seq);
                }
            }
            ["receipts", on @ ("on" | "off")] => {
                let update = chat_client::SettingsUpdate {
                    receipts: Some(*on == "on"),
                };
                let settings = self.live.client().update_settings(&update).await?;
                println!(
                    "receipts {}",
                    if settings.receipts {
                        "on: others see how far you read"
                    } else {
                        "off"
                    }
                );
            }
            ["title", "-"] => {
                let changed = self.live.client().set_title(self.current()?, None).await?;
                show_changed(&changed);
            }
            ["title", ..] => {
                let title = command["title".len()..].trim();
                let changed = self
                    .live
                    .client()
                    .set_title(self.current()?, Some(title))
                    .await?;
                show_changed(&changed);
            }
            ["dm", user] => {
                let (conv, created) = self
                    .live
                    .client()
                    .create_conversation([*user], None)
                    .await?;
                println!(
                    "{} direct conversation #{} with {user}",
                    if created { "created" } else { "opened" },
                    conv.conv_id
                );
                self.open(conv.conv_id).await?;
            }
            ["group", title, users @ ..] if !users.is_empty() => {
                let (conv, _) = self
                    .live
                    .client()
                    .create_conversation(users, Some(title))
                    .await?;
                println!(
                    "created group #{} \"{}\" with {}",
                    conv.conv_id,
                    clean(title),
                    conv.members.join(", ")
                );
                self.open(conv.conv_id).await?;
            }
            ["open", conv] => {
                let conv = conv.parse::<ConvId>().context("usage: /open <conv_id>")?;
                self.open(conv).await?;
            }
            ["history"] => self.history(HISTORY_MESSAGES_DEFAULT).await?,
            ["history", n] => {
                let n = n
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=HISTORY_LIMIT_MAX).contains(n));
                self.history(
                    n.with_context(|| format!("usage: /history [1-{HISTORY_LIMIT_MAX}]"))?,
                )
                .await?;
            }
            ["read"] => {
                let conv = self.current()?;
                self.live.mark_read(conv).await?;
                println!("marked #{conv} as read");
            }
            _ => bail!("unknown command `{}`; /help lists them", clean(line)),
        }
        Ok(true)
    }

    /// Gives `user` `role` in the current group, adding them if needed, or (`None`) removes
    /// them.
    async fn change_member(&mut self, user: &str, role: Option<Role>) -> anyhow::Result<()> {
        let conv = self.current()?;
        // Usernames are lowercase; accept them as typed.
        let user = user.to_lowercase();
        let client = self.live.client();
        let changed = match role {
            Some(role) => client.set_member(conv, &user, Some(role)).await?,
            None => client.remove_member(conv, &user).await?,
        };
        show_changed(&changed);
        Ok(())
    }

    /// Edits (`Some(text)`) or deletes your message `seq` of the current conversation; the
    /// answer comes as `sent`, or as an error.
    async fn amend(&mut self, seq: u64, text: Option<&str>) -> anyhow::Result<()> {
        let conv = self.current()?;
        if let Some(text) = text
            && (text.is_empty() || text.len() > BODY_BYTES_MAX)
        {
            bail!("the new text must be 1-{BODY_BYTES_MAX} bytes");
        }
        let id = format!("a{:016x}", rand::random::<u64>());
        let frame = match text {
            Some(text) => chat_client::ClientFrame::Edit {
                id,
                conv,
                seq,
                body: text.to_owned(),
            },
            None => chat_client::ClientFrame::Delete { id, conv, seq },
        };
        self.live.send_frame(frame).await?;
        Ok(())
    }

    fn current(&self) -> anyhow::Result<ConvId> {
        self.current
            .context("no current conversation: /dm, /group or /open one first")
    }

    async fn say(&mut self, body: &str) -> anyhow::Result<()> {
        let conv = self.current()?;
        if body.len() > BODY_BYTES_MAX {
            bail!(
                "message is {} bytes; at most {BODY_BYTES_MAX} are allowed",
                body.len()
            );
        }
        if let Err(e) = self.live.send_message(conv, body).await {
            // The send stays pending and goes again, same id, once reconnected.
            println!("! not sent yet ({e}); it will be sent after reconnecting");
        }
        Ok(())
    }

    /// Shows the last messages of `conv` and makes it current; its gaps are synced from now on.
    async fn open(&mut self, conv: ConvId) -> anyhow::Result<()> {
        let page = self
            .live
            .client()
            .history(conv, None, Some(OPEN_HISTORY_MESSAGES))
            .await?;
        page.messages.iter().for_each(show_message_view);
        let last = page.messages.last().map_or(0, |m| m.seq);
        self.live.follow(conv, last);
        self.current = Some(conv);
        println!("-- #{conv} is now the current conversation");
        Ok(())
    }

    async fn history(&mut self, limit: u32) -> anyhow::Result<()> {
        let conv = self.current()?;
        let page = self.live.client().history(conv, None, Some(limit)).await?;
        if page.messages.is_empty() {
            println!("-- #{conv} has no messages");
        }
        page.messages.iter().for_each(show_message_view);
        Ok(())
    }

    async fn inbox(&mut self, before: Option<InboxCursor>) -> anyhow::Result<()> {
        let inbox = self.live.client().inbox_page(None, before).await?;
        if inbox.conversations.is_empty() && before.is_none() {
            println!("-- no conversations yet: /dm <user> starts one");
        }
        self.inbox_next = inbox.next_before;
        for entry in &inbox.conversations {
            let name = match &entry.title {
                Some(title) => format!("\"{}\"", clean(title)),
                None => entry
                    .members
                    .iter()
                    .filter(|m| **m != self.user)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            let last = entry.last_message.as_ref().map_or(String::new(), |m| {
                format!(" | {}", describe(&m.sender, &m.body, m.event.as_ref()))
            });
            println!(
                "#{} {} {name} | {} unread{last}",
                entry.conv_id,
                entry.kind.as_str(),
                entry.unread
            );
        }
        if self.inbox_next.is_some() {
            println!("-- /more for older conversations");
        }
        Ok(())
    }
}

/// A message as one line: `sender: body`, or what an event did.
fn describe(sender: &str, body: &str, event: Option<&ConvEvent>) -> String {
    match event {
        None => format!("{sender}: {}", clean(body)),
        Some(ConvEvent::MemberAdded { user, role }) => {
            format!("* {sender} added {user} ({})", role.as_str())
        }
        Some(ConvEvent::MemberRemoved { user }) if user == sender => format!("* {user} left"),
        Some(ConvEvent::MemberRemoved { user }) => format!("* {sender} removed {user}"),
        Some(ConvEvent::RoleChanged { user, role }) => {
            format!("* {sender} made {user} {}", role.as_str())
        }
        Some(ConvEvent::TitleChanged { title: Some(title) }) => {
            format!("* {sender} set the title to \"{}\"", clean(title))
        }
        Some(ConvEvent::TitleChanged { title: None }) => format!("* {sender} removed the title"),
        Some(ConvEvent::Edited { seq }) => format!("* {sender} edited {seq}: {}", clean(body)),
        Some(ConvEvent::Deleted { seq }) => format!("* {sender} deleted {seq}"),
    }
}

/// How many characters `seq` takes written out.
fn seq_len(seq: u64) -> usize {
    seq.to_string().len()
}

fn show_members(conv: &ConversationView) {
    let members: Vec<String> = conv
        .members
        .iter()
        .map(|m| match conv.owners.contains(m) {
            true => format!("{m} (owner)"),
            false => m.clone(),
        })
        .collect();
    println!("#{} members: {}", conv.conv_id, members.join(", "));
}

fn show_changed(changed: &ConvChanged) {
    match changed.seq {
        Some(seq) => println!("  (changed #{} at {seq})", changed.conversation.conv_id),
        None => println!("  (nothing to change)"),
    }
    show_members(&changed.conversation);
}

fn show_event(event: &LiveEvent) {
    match event {
        LiveEvent::Message(m) => println!(
            "[#{} {}] {}",
            m.conv,
            m.seq,
            describe(&m.sender, &m.body, m.event.as_ref())
        ),
        LiveEvent::Typing { conv, user, .. } => println!("  ({user} is typing in #{conv})"),
        LiveEvent::Receipt { conv, user, seq } => println!("  ({user} read #{conv} up to {seq})"),
        LiveEvent::Conversation(conv) => {
            let title = conv.title.as_deref().map(clean).unwrap_or_default();
            println!("-- #{} {} {title}", conv.conv_id, conv.kind.as_str());
            show_members(conv);
        }
        LiveEvent::Acked { conv, seq, .. } => println!("  (sent #{conv} {seq})"),
        LiveEvent::SendFailed { error, conv, .. } if error.code.is_retryable() => {
            println!(
                "! #{conv}: not sent yet ({}); it will be sent after reconnecting",
                error.code
            )
        }
        LiveEvent::SendFailed { error, conv, .. } => println!(
            "! #{conv}: not sent: {}: {}",
            error.code,
            clean(&error.message)
        ),
        LiveEvent::Error(error) => println!("! server: {}: {}", error.code, clean(&error.message)),
        LiveEvent::Synced { .. } | LiveEvent::Pong => {}
    }
}

fn show_message_view(m: &MessageView) {
    let line = match (m.deleted, m.edited) {
        (true, _) => format!("{}: (deleted)", m.sender),
        (false, true) => format!("{} (edited)", describe(&m.sender, &m.body, None)),
        (false, false) => describe(&m.sender, &m.body, m.event.as_ref()),
    };
    println!("[#{} {}] {line}", m.conv_id, m.seq);
}

/// Escapes control characters so a message cannot drive the terminal.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(clean("hi é 👋"), "hi é 👋");
        assert_eq!(clean("a\x1b[2Jb\nc"), "a\\u{1b}[2Jb\\nc");
    }

    #[test]
    fn events_read_as_sentences() {
        let added = ConvEvent::MemberAdded {
            user: "cy".into(),
            role: Role::Member,
        };
        assert_eq!(describe("ann", "", Some(&added)), "* ann added cy (member)");
        let left = ConvEvent::MemberRemoved { user: "cy".into() };
        assert_eq!(describe("cy", "", Some(&left)), "* cy left");
        assert_eq!(describe("ann", "", Some(&left)), "* ann removed cy");
        let title = ConvEvent::TitleChanged {
            title: Some("a\x1bb".into()),
        };
        assert_eq!(
            describe("ann", "", Some(&title)),
            "* ann set the title to \"a\\u{1b}b\""
        );
        assert_eq!(describe("ann", "hi", None), "ann: hi");
    }
}
