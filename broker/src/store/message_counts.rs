//! `message_counts` (messages per recipient, incarnation and state: what `hive status` and the inbox
//! quota read instead of counting the history), kept by the writer per transaction.
//!
//! A preupdate hook on the write connection sees every row of `messages` inserted, deleted, or
//! moved to another recipient, incarnation or state, whichever statement did it, and tallies the
//! change in memory. A request's tally joins the transaction's when its savepoint is released and
//! is dropped when it is rolled back; before COMMIT the writer writes the transaction's tally as
//! one upsert per (recipient, incarnation, state) that changed — one statement per inbox per
//! batch, where the triggers of migrations 0006 and 0009 ran one per row.
//!
//! Only the writer's connection is watched: a migration that changes rows of `messages` must put
//! the counts right itself ([`recount`]). A statement that fails part-way is undone by sqlite
//! after the hook saw its rows, so a request must not go on past a failed statement on
//! `messages` (none does: each returns the error, and its savepoint rolls back with its tally).

use std::cell::RefCell;
use std::collections::HashMap;

use rusqlite::Connection;
use rusqlite::hooks::{Action, PreUpdateCase};
use rusqlite::types::ValueRef;

use crate::error::{Error, Result};

/// One counted key: recipient, incarnation (0 for none: the operator's inbox), state.
type Key = (String, i64, String);

#[derive(Default)]
struct Tally {
    /// The running request's changes, not yet kept or dropped: a few keys (the inboxes it
    /// touched), searched in order without allocating.
    request: Vec<(Key, i64)>,
    /// The changes of the transaction's requests that succeeded.
    transaction: HashMap<Key, i64>,
}

impl Tally {
    fn add(&mut self, (recipient, incarnation, state): BorrowedKey<'_>, delta: i64) {
        let found = self
            .request
            .iter_mut()
            .find(|((r, i, s), _)| *i == incarnation && r == recipient && s == state);
        match found {
            Some((_, n)) => *n += delta,
            None => self
                .request
                .push(((recipient.to_owned(), incarnation, state.to_owned()), delta)),
        }
    }
}

/// A counted key read from a row, borrowed from sqlite's values.
type BorrowedKey<'a> = (&'a str, i64, &'a str);

thread_local! {
    /// The writer thread's tally: the hook and the writer run on that one thread.
    static TALLY: RefCell<Tally> = RefCell::new(Tally::default());
}

/// Where `recipient`, `incarnation` and `state` are among the columns of `messages`.
#[derive(Clone, Copy)]
struct Columns {
    recipient: i32,
    incarnation: i32,
    state: i32,
}

/// Watches `messages` on the write connection `conn` (to be moved to the writer thread, where the
/// hook then runs).
pub(super) fn watch(conn: &mut Connection) -> Result<()> {
    let mut columns = Columns {
        recipient: -1,
        incarnation: -1,
        state: -1,
    };
    {
        let mut info = conn.prepare("SELECT cid, name FROM pragma_table_info('messages')")?;
        let mut rows = info.query([])?;
        while let Some(row) = rows.next()? {
            let cid: i32 = row.get(0)?;
            let name: String = row.get(1)?;
            match name.as_str() {
                "recipient" => columns.recipient = cid,
                "incarnation" => columns.incarnation = cid,
                "state" => columns.state = cid,
                _ => {}
            }
        }
    }
    if columns.recipient < 0 || columns.incarnation < 0 || columns.state < 0 {
        return Err(Error::Internal(
            "the messages table lacks recipient, incarnation or state".into(),
        ));
    }
    conn.preupdate_hook(Some(
        move |_: Action, db: &str, table: &str, change: &PreUpdateCase| {
            if db != "main" || table != "messages" {
                return;
            }
            let (old, new) = match change {
                PreUpdateCase::Insert(new) => {
                    (None, key(columns, |i| new.get_new_column_value(i).ok()))
                }
                PreUpdateCase::Delete(old) => {
                    (key(columns, |i| old.get_old_column_value(i).ok()), None)
                }
                PreUpdateCase::Update {
                    old_value_accessor: old,
                    new_value_accessor: new,
                } => (
                    key(columns, |i| old.get_old_column_value(i).ok()),
                    key(columns, |i| new.get_new_column_value(i).ok()),
                ),
                PreUpdateCase::Unknown => return,
            };
            if old == new {
                return;
            }
            TALLY.with_borrow_mut(|tally| {
                for (key, delta) in [(old, -1), (new, 1)] {
                    if let Some(key) = key {
                        tally.add(key, delta);
                    }
                }
            });
        },
    ))?;
    Ok(())
}

/// The counted key of a row, read through `value` (its column values); `None` if a column cannot
/// be read (the row then is not counted).
fn key<'a>(
    columns: Columns,
    value: impl Fn(i32) -> Option<ValueRef<'a>>,
) -> Option<BorrowedKey<'a>> {
    let recipient = value(columns.recipient)?.as_str().ok()?;
    let incarnation = match value(columns.incarnation)? {
        ValueRef::Integer(n) => n,
        _ => 0,
    };
    let state = value(columns.state)?.as_str().ok()?;
    Some((recipient, incarnation, state))
}

/// The running request ended: its changes join the transaction's (`kept`) or are dropped (it was
/// rolled back).
pub(super) fn request_done(kept: bool) {
    TALLY.with_borrow_mut(|tally| {
        let request = std::mem::take(&mut tally.request);
        if kept {
            for (key, delta) in request {
                *tally.transaction.entry(key).or_default() += delta;
            }
        }
    });
}

/// Writes the transaction's tally into `message_counts`, inside the transaction, just before its
/// COMMIT. If this fails the transaction must be rolled back.
pub(super) fn write(conn: &Connection) -> Result<()> {
    let changes = TALLY.with_borrow_mut(|tally| std::mem::take(&mut tally.transaction));
    if changes.is_empty() {
        return Ok(());
    }
    let mut upsert = conn.prepare_cached(
        "INSERT INTO message_counts (recipient, incarnation, state, n) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (recipient, incarnation, state) DO UPDATE SET n = n + excluded.n",
    )?;
    for ((recipient, incarnation, state), delta) in changes {
        if delta != 0 {
            upsert.execute(rusqlite::params![recipient, incarnation, state, delta])?;
        }
    }
    Ok(())
}

/// The transaction ended without [`write`] (rolled back): nothing of it is counted.
pub(super) fn forget() {
    TALLY.with_borrow_mut(|tally| {
        tally.request.clear();
        tally.transaction.clear();
    });
}

/// Counts `messages` again from scratch into `message_counts`: for a migration or a tool that
/// changed rows of `messages` on another connection than the writer's.
pub fn recount(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "DELETE FROM message_counts;
         INSERT INTO message_counts (recipient, incarnation, state, n)
             SELECT recipient, coalesce(incarnation, 0), state, count(*) FROM messages
             GROUP BY recipient, coalesce(incarnation, 0), state;",
    )?;
    Ok(())
}
