//! The chat model: what `ChatStore::append`, `history` and `inbox` must answer, computed
//! with vectors and maps.
//!
//! - Each conversation's log is a `Vec`: `seq` is its index plus one, so gapless from 1.
//! - `(sender, client id)` names at most one message, globally (not per conversation): a
//!   repeat answers the first message with `fresh == false`.
//! - A sender who is not a member (or a conversation that does not exist) is refused.
//! - A batch's `ts` is raised to the conversation's last activity, which only moves when a
//!   batch stores something.
//! - A sender's read cursor moves to the newest message it stored.

use chat_proto::{ConvId, Message, Seq};
use chat_store::{AppendError, Appended, NewMessage};
use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Clone)]
pub struct ConvModel {
    pub conv_id: ConvId,
    pub members: BTreeSet<String>,
    pub log: Vec<Message>,
    /// The conversation's last activity: its creation, then the `ts` of its newest batch.
    pub last_ts: u64,
}

#[derive(Debug, Clone, Default)]
pub struct ChatModel {
    pub convs: Vec<ConvModel>,
    /// `(sender, client_msg_id) -> (conv, seq)`.
    idem: HashMap<(String, String), (ConvId, Seq)>,
    /// `(user, conv) -> seq`; missing means 0.
    cursors: HashMap<(String, ConvId), Seq>,
}

impl ChatModel {
    pub fn add_conv(
        &mut self,
        conv_id: ConvId,
        members: impl IntoIterator<Item = String>,
        created_ts: u64,
    ) {
        self.convs.push(ConvModel {
            conv_id,
            members: members.into_iter().collect(),
            log: Vec::new(),
            last_ts: created_ts,
        });
    }

    pub fn conv(&self, conv_id: ConvId) -> Option<&ConvModel> {
        self.convs.iter().find(|c| c.conv_id == conv_id)
    }

    pub fn cursor(&self, user: &str, conv_id: ConvId) -> Seq {
        self.cursors
            .get(&(user.to_owned(), conv_id))
            .copied()
            .unwrap_or(0)
    }

    fn message(&self, conv_id: ConvId, seq: Seq) -> &Message {
        let conv = self
            .conv(conv_id)
            .expect("the idem map names a known conversation");
        &conv.log[(seq - 1) as usize]
    }

    /// Appends one batch, as one transaction, and returns what `ChatStore::append` must.
    pub fn append(
        &mut self,
        conv_id: ConvId,
        batch: &[NewMessage],
        ts: u64,
    ) -> Vec<Result<Appended, AppendError>> {
        let Some(index) = self.convs.iter().position(|c| c.conv_id == conv_id) else {
            return batch
                .iter()
                .map(|_| Err(AppendError::UnknownConversation))
                .collect();
        };
        let ts = ts.max(self.convs[index].last_ts);
        let mut stored_any = false;
        let mut results = Vec::with_capacity(batch.len());
        let members: std::sync::Arc<[String]> = self.convs[index].members.iter().cloned().collect();
        for item in batch {
            if !self.convs[index].members.contains(&item.sender) {
                results.push(Err(AppendError::UnknownConversation));
                continue;
            }
            let id = (item.sender.clone(), item.client_msg_id.clone());
            if let Some(&(stored_conv, stored_seq)) = self.idem.get(&id) {
                if stored_conv != conv_id {
                    results.push(Err(AppendError::IdConflict { conv: stored_conv }));
                    continue;
                }
                let message = self.message(stored_conv, stored_seq).clone();
                results.push(Ok(Appended {
                    seq: stored_seq,
                    ts: message.ts,
                    message,
                    fresh: false,
                    members: members.clone(),
                }));
                continue;
            }
            let conv = &mut self.convs[index];
            let seq = conv.log.len() as Seq + 1;
            let message = Message {
                conv: conv_id,
                seq,
                sender: item.sender.clone(),
                body: item.body.clone(),
                client_msg_id: item.client_msg_id.clone(),
                ts,
                event: None,
                edited: false,
                deleted: false,
            };
            conv.log.push(message.clone());
            self.idem.insert(id, (conv_id, seq));
            self.cursors.insert((item.sender.clone(), conv_id), seq);
            stored_any = true;
            results.push(Ok(Appended {
                seq,
                ts,
                message,
                fresh: true,
                members: members.clone(),
            }));
        }
        if stored_any {
            self.convs[index].last_ts = ts;
        }
        results
    }

    /// The user's conversations as the inbox must list them: most recent activity first,
    /// ties by higher conversation id first (the recency index is `(ts, conv)`, read
    /// backwards). Each with `(conv_id, last_seq, last message, unread)`.
    pub fn inbox(&self, user: &str) -> Vec<(ConvId, Seq, Option<Message>, u64)> {
        let mut convs: Vec<&ConvModel> = self
            .convs
            .iter()
            .filter(|c| c.members.contains(user))
            .collect();
        convs.sort_by_key(|c| std::cmp::Reverse((c.last_ts, c.conv_id)));
        convs
            .into_iter()
            .map(|c| {
                let last_seq = c.log.len() as Seq;
                (
                    c.conv_id,
                    last_seq,
                    c.log.last().cloned(),
                    last_seq - self.cursor(user, c.conv_id),
                )
            })
            .collect()
    }
}

/// Every ordering of `0..n` (n is at most a handful: a round of concurrent batches).
pub fn permutations(n: usize) -> Vec<Vec<usize>> {
    fn extend(prefix: &mut Vec<usize>, n: usize, out: &mut Vec<Vec<usize>>) {
        if prefix.len() == n {
            out.push(prefix.clone());
            return;
        }
        for i in 0..n {
            if !prefix.contains(&i) {
                prefix.push(i);
                extend(prefix, n, out);
                prefix.pop();
            }
        }
    }
    assert!(n <= 6, "permutations of {n} items: too many to try");
    let mut out = Vec::new();
    extend(&mut Vec::with_capacity(n), n, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(sender: &str, id: &str) -> NewMessage {
        NewMessage {
            sender: sender.into(),
            client_msg_id: id.into(),
            body: format!("{sender}:{id}"),
            amend: None,
        }
    }

    #[test]
    fn model_numbers_dedups_and_refuses() {
        let mut m = ChatModel::default();
        m.add_conv(1, ["a".to_string(), "b".to_string()], 100);
        m.add_conv(2, ["a".to_string()], 100);
        let r = m.append(
            1,
            &[msg("a", "x"), msg("c", "y"), msg("a", "x"), msg("b", "x")],
            90,
        );
        assert_eq!(
            r[0].as_ref().map(|a| (a.seq, a.ts, a.fresh)),
            Ok((1, 100, true))
        );
        assert_eq!(r[1], Err(AppendError::UnknownConversation));
        assert_eq!(r[2].as_ref().map(|a| (a.seq, a.fresh)), Ok((1, false)));
        assert_eq!(r[3].as_ref().map(|a| (a.seq, a.fresh)), Ok((2, true)));
        // The id is global per sender: reused in conversation 2 it is a conflict that names
        // the conversation that has it (not that conversation's `sent`: issue 10).
        let r = m.append(2, &[msg("a", "x")], 200);
        assert_eq!(r[0], Err(AppendError::IdConflict { conv: 1 }));
        assert_eq!(
            m.conv(2).map(|c| c.last_ts),
            Some(100),
            "nothing stored: activity unchanged"
        );
        assert_eq!(
            m.append(9, &[msg("a", "z")], 1),
            vec![Err(AppendError::UnknownConversation)]
        );
        assert_eq!(m.cursor("a", 1), 1);
        assert_eq!(
            m.inbox("b")[0],
            (1, 2, m.conv(1).and_then(|c| c.log.last().cloned()), 0)
        );
    }

    #[test]
    fn permutations_are_all_orders() {
        assert_eq!(permutations(1), vec![vec![0]]);
        assert_eq!(permutations(3).len(), 6);
        assert_eq!(permutations(0), vec![Vec::<usize>::new()]);
    }
}
