//! Questions an agent asks the operator (`ask_operator`). A question is a row in `questions` and a
//! message in the operator's inbox; the answer goes back to the asker as a message from `operator`
//! replying to that message, and a question nobody answered in time goes back as "expired, no
//! answer" from `system` (fired by [`crate::due`]).

use rusqlite::{Connection, OptionalExtension, params};

use crate::due::DueJobs;
use crate::error::{Error, Result};
use crate::mailbox::{Mailbox, Message, insert_messages};
use crate::names::AgentName;
use crate::store::{Store, unix_millis};

pub const DEFAULT_TTL_SECONDS: u64 = 24 * 60 * 60;
pub const MAX_TTL_SECONDS: u64 = 7 * 24 * 60 * 60;
pub const MAX_OPTIONS: usize = 20;
pub const MAX_OPTION_LEN: usize = 200;

pub use proto::question::Question;

/// What the operator answers: free text, or a choice among the options.
#[derive(Debug, Clone)]
pub enum Answer {
    Text(String),
    Choices(Vec<String>),
}

const QUESTION_COLUMNS: &str =
    "id, asker, question, options, multi, message_id, asked_at, expires_at, status, answer";

fn question_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Question> {
    let options: String = r.get(3)?;
    Ok(Question {
        id: r.get(0)?,
        asker: r.get(1)?,
        question: r.get(2)?,
        options: serde_json::from_str(&options).unwrap_or_default(),
        multi: r.get(4)?,
        message_id: r.get(5)?,
        asked_at: r.get(6)?,
        expires_at: r.get(7)?,
        status: r.get(8)?,
        answer: r.get(9)?,
    })
}

/// The questions service: stores questions and answers, announces their messages through the
/// mailbox and wakes the due task, which expires them.
pub struct Questions {
    store: Store,
    mailbox: Mailbox,
    bus: crate::bus::Bus,
    due: DueJobs,
    /// Open questions one agent may have (`mailbox.max_open_questions_per_agent`).
    max_open: u64,
}

impl Questions {
    pub(crate) fn new(
        store: Store,
        mailbox: Mailbox,
        bus: crate::bus::Bus,
        due: DueJobs,
        max_open: u64,
    ) -> Self {
        Self {
            store,
            mailbox,
            bus,
            due,
            max_open,
        }
    }

    /// Stores a question from `asker` for the operator and puts it in the operator's inbox.
    pub async fn ask(
        &self,
        asker: &AgentName,
        question: String,
        options: Vec<String>,
        multi: bool,
        ttl_seconds: Option<u64>,
    ) -> Result<Question> {
        let max_body = self.mailbox.max_body_bytes();
        if question.trim().is_empty() {
            return Err(Error::invalid(
                "question",
                "ask something: the question is empty",
            ));
        }
        if question.len() > max_body {
            return Err(Error::BodyTooLarge {
                len: question.len(),
                max: max_body,
            });
        }
        if options.len() > MAX_OPTIONS {
            return Err(Error::invalid(
                "options",
                format!("offer at most {MAX_OPTIONS} options"),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for o in &options {
            if o.trim().is_empty() || o.len() > MAX_OPTION_LEN {
                return Err(Error::invalid(
                    "options",
                    format!("each option must be 1–{MAX_OPTION_LEN} bytes of text"),
                ));
            }
            if !seen.insert(o.as_str()) {
                return Err(Error::invalid("options", format!("'{o}' is offered twice")));
            }
        }
        if multi && options.is_empty() {
            return Err(Error::invalid(
                "multi",
                "multi needs options to choose from",
            ));
        }
        let ttl = ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS);
        if ttl == 0 || ttl > MAX_TTL_SECONDS {
            return Err(Error::invalid(
                "ttl_seconds",
                format!("{ttl} is out of range; use 1 to {MAX_TTL_SECONDS} (7 days)"),
            ));
        }
        let asker_name = asker.to_string();
        let quota = self.max_open;
        let (question, message) = self
            .store
            .write(move |c| {
                let open: i64 = c.query_row(
                    "SELECT count(*) FROM (SELECT 1 FROM questions INDEXED BY questions_open_by_asker
                     WHERE asker = ?1 AND status = 'open'
                       AND incarnation = (SELECT incarnation FROM agents WHERE name = ?1)
                     LIMIT ?2)",
                    params![asker_name, quota as i64],
                    |r| r.get(0),
                )?;
                if open as u64 >= quota {
                    return Err(Error::TooManyQuestions { max: quota });
                }
                let now = unix_millis();
                let expires_at = now + (ttl as i64) * 1000;
                let next_id: i64 =
                    c.query_row("SELECT coalesce(max(id), 0) + 1 FROM questions", [], |r| {
                        r.get(0)
                    })?;
                let body = inbox_text(next_id, &asker_name, &question, &options, multi, expires_at);
                let message =
                    insert_messages(c, &asker_name, &["operator".into()], &body, None)?.remove(0);
                let options_json = serde_json::to_string(&options).expect("strings serialize");
                c.execute(
                    "INSERT INTO questions (id, asker, question, options, multi, message_id,
                                            asked_at, expires_at, incarnation)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8,
                             (SELECT incarnation FROM agents WHERE name = ?2))",
                    params![
                        next_id,
                        asker_name,
                        question,
                        options_json,
                        multi,
                        message.id,
                        now,
                        expires_at
                    ],
                )?;
                let q = get(c, next_id)?.expect("just inserted");
                Ok((q, message))
            })
            .await?;
        self.mailbox.announce(vec![message]);
        self.bus.publish(crate::bus::Event::QuestionAsked {
            id: question.id,
            asker: question.asker.clone(),
            question: question.question.clone(),
        });
        self.due.reschedule();
        Ok(question)
    }

    /// Open questions (all when `all`), newest last.
    pub async fn list(&self, all: bool) -> Result<Vec<Question>> {
        self.store
            .read(move |c| {
                let filter = if all {
                    ""
                } else {
                    "WHERE status = 'open' AND incarnation IN (SELECT incarnation FROM agents)"
                };
                let rows = c
                    .prepare(&format!(
                        "SELECT {QUESTION_COLUMNS} FROM questions {filter} ORDER BY id DESC LIMIT 500"
                    ))?
                    .query_map([], question_from_row)?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows.into_iter().rev().collect())
            })
            .await
    }

    /// The operator answers question `id`; the answer reaches the asker as a message from
    /// `operator` replying to the question.
    pub async fn answer(&self, id: i64, answer: Answer) -> Result<Question> {
        let max_body = self.mailbox.max_body_bytes();
        let (question, message) = self
            .store
            .write(move |c| {
                let q = get(c, id)?.ok_or_else(|| Error::NotFound {
                    what: format!("question {id}"),
                })?;
                if q.status != "open" {
                    return Err(Error::Conflict(format!(
                        "question {id} is {} already; nothing was changed",
                        q.status
                    )));
                }
                let asker_live = c
                    .prepare_cached(
                        "SELECT 1 FROM questions WHERE id = ?1
                         AND incarnation IN (SELECT incarnation FROM agents)",
                    )?
                    .exists([id])?;
                if !asker_live {
                    return Err(Error::Conflict(format!(
                        "question {id} was asked by an agent '{}' that has been destroyed; nothing was sent (restore it to answer)",
                        q.asker
                    )));
                }
                let text = check_answer(&q, answer, max_body)?;
                let body = format!("Answer to your question #{id} (\"{}\"): {text}", q.question);
                let message = insert_messages(
                    c,
                    "operator",
                    std::slice::from_ref(&q.asker),
                    &body,
                    Some(q.message_id),
                )?
                .remove(0);
                resolve(c, id, "answered", Some(&text), message.id)?;
                Ok((get(c, id)?.expect("exists"), message))
            })
            .await?;
        self.mailbox.announce(vec![message]);
        Ok(question)
    }
}

fn get(c: &Connection, id: i64) -> Result<Option<Question>> {
    Ok(c.prepare_cached(&format!(
        "SELECT {QUESTION_COLUMNS} FROM questions WHERE id = ?1"
    ))?
    .query_row([id], question_from_row)
    .optional()?)
}

fn resolve(c: &Connection, id: i64, status: &str, answer: Option<&str>, reply: i64) -> Result<()> {
    c.prepare_cached(
        "UPDATE questions SET status = ?1, answer = ?2, resolved_at = ?3, reply_message_id = ?4
         WHERE id = ?5 AND status = 'open'",
    )?
    .execute(params![status, answer, unix_millis(), reply, id])?;
    Ok(())
}

/// Expires every open question whose time has come, inside the caller's transaction; returns the
/// "expired" messages to announce after the commit. Questions of a destroyed incarnation wait
/// with it for a restore.
pub(crate) fn expire_due(c: &Connection, now: i64) -> Result<Vec<Message>> {
    let due: Vec<Question> = c
        .prepare_cached(&format!(
            "SELECT {QUESTION_COLUMNS} FROM questions
             WHERE status = 'open' AND expires_at <= ?1
               AND incarnation IN (SELECT incarnation FROM agents) ORDER BY id LIMIT 256"
        ))?
        .query_map([now], question_from_row)?
        .collect::<Result<_, _>>()?;
    let mut sent = Vec::with_capacity(due.len());
    for q in due {
        let body = format!(
            "Your question #{} (\"{}\") expired, no answer.",
            q.id, q.question
        );
        let message = insert_messages(
            c,
            "system",
            std::slice::from_ref(&q.asker),
            &body,
            Some(q.message_id),
        )?
        .remove(0);
        resolve(c, q.id, "expired", None, message.id)?;
        sent.push(message);
    }
    Ok(sent)
}

/// When the next open question expires.
pub(crate) fn next_expiry(c: &Connection) -> Result<Option<i64>> {
    Ok(c.query_row(
        "SELECT min(expires_at) FROM questions WHERE status = 'open'
         AND incarnation IN (SELECT incarnation FROM agents)",
        [],
        |r| r.get(0),
    )?)
}

fn check_answer(q: &Question, answer: Answer, max_body: usize) -> Result<String> {
    let text = match answer {
        // A text that names an option is that choice.
        Answer::Text(text) if !q.options.is_empty() => {
            return check_answer(q, Answer::Choices(vec![text]), max_body);
        }
        Answer::Text(text) => text,
        Answer::Choices(choices) => {
            if q.options.is_empty() {
                return Err(Error::invalid(
                    "answer",
                    "this question takes a free-text answer",
                ));
            }
            if choices.is_empty() {
                return Err(Error::invalid("answer", "choose at least one option"));
            }
            if !q.multi && choices.len() > 1 {
                return Err(Error::invalid("answer", "choose exactly one option"));
            }
            for c in &choices {
                if !q.options.contains(c) {
                    return Err(Error::invalid(
                        "answer",
                        format!(
                            "'{c}' is not an option; choose from: {}",
                            q.options.join(", ")
                        ),
                    ));
                }
            }
            let mut unique = choices.clone();
            unique.sort();
            unique.dedup();
            if unique.len() != choices.len() {
                return Err(Error::invalid("answer", "an option is chosen twice"));
            }
            choices.join(", ")
        }
    };
    if text.trim().is_empty() {
        return Err(Error::invalid("answer", "the answer is empty"));
    }
    if text.len() > max_body {
        return Err(Error::BodyTooLarge {
            len: text.len(),
            max: max_body,
        });
    }
    Ok(text)
}

fn inbox_text(
    id: i64,
    asker: &str,
    question: &str,
    options: &[String],
    multi: bool,
    expires_at: i64,
) -> String {
    let mut text = format!("Question #{id} from {asker}: {question}\n");
    if !options.is_empty() {
        let how = if multi { "one or more" } else { "one" };
        text.push_str(&format!("Options ({how}): {}\n", options.join(" | ")));
    }
    let expires = jiff::Timestamp::from_millisecond(expires_at)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default();
    text.push_str(&format!(
        "Answer with `hive answer {id} …` before {expires}."
    ));
    text
}
