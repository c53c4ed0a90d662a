//! `message_counts` (messages per recipient, incarnation and state: what `hive status` and the inbox
//! quota read instead of counting the history), kept by the writer per transaction.
//!
//! A preupdate hook on the write connection sees every row of `messages` inserted, deleted, or
//! moved to another recipient, incarnation or state, whichever statement did it, and tallies the
//! change in memory (a send's INSERT, whose recipient, incarnation and state the send knows, is
//! tallied by [`insert_queued`] instead, and the hook skips it). A request's tally joins the transaction's when its savepoint is released and
//! is dropped when it is rolled back; before COMMIT the writer writes the transaction's tally as
//! one upsert per (recipient, incarnation, state) that changed — one statement per inbox per
//! batch, where the triggers of migrations 0006 and 0009 ran one per row.
//!
//! Only the writer's connection is watched: a migration that changes rows of `messages` must put
//! the counts right itself ([`recount`]). A statement that fails part-way is undone by sqlite
//! after the hook saw its rows, so a request must not go on past a failed statement on
//! `messages` (none does: each returns the error, and its savepoint rolls back with its tally).
//!
//! The same tally answers what a send asks of its recipient's inbox ([`inbox_now`]: the
//! incarnation to store the message under, and the queued count the quota reads): read from the
//! tables once, then followed through each committed tally, with no statement per send.

use std::cell::RefCell;

use rusqlite::Connection;
use rusqlite::hooks::{Action, PreUpdateCase};
use rusqlite::types::ValueRef;
use rustc_hash::FxHashMap;

use crate::error::{Error, Result};

/// A counted message state: the three a row can hold, or (only in a row some other writer put
/// there) anything else, counted under its own name all the same.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum State {
    Queued,
    Leased,
    Delivered,
    Other(Box<str>),
}

impl State {
    fn of(bytes: &[u8]) -> Self {
        match bytes {
            b"queued" => Self::Queued,
            b"leased" => Self::Leased,
            b"delivered" => Self::Delivered,
            other => Self::Other(String::from_utf8_lossy(other).into()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Self::Queued => "queued",
            Self::Leased => "leased",
            Self::Delivered => "delivered",
            Self::Other(s) => s,
        }
    }
}

/// The changes of one inbox: per incarnation (0 for none: the operator's inbox) and state, a
/// few entries searched in order.
type Changes = Vec<(i64, State, i64)>;

#[derive(Default)]
struct Tally {
    /// The running request's changes by recipient, not yet kept or dropped: the few inboxes it
    /// touched, searched in order.
    request: Vec<(String, Changes)>,
    /// The changes of the transaction's requests that succeeded, by recipient (looked up by
    /// `&str`: a send's quota check allocates nothing).
    transaction: FxHashMap<String, Changes>,
}

/// Adds `delta` to the entry of `incarnation` and `state` in `changes`.
fn add_to(changes: &mut Changes, incarnation: i64, state: State, delta: i64) {
    match changes
        .iter_mut()
        .find(|(i, s, _)| *i == incarnation && *s == state)
    {
        Some((_, _, n)) => *n += delta,
        None => changes.push((incarnation, state, delta)),
    }
}

/// The change to `incarnation` in `state` among `changes`.
fn change_of(changes: &Changes, incarnation: i64, state: &State) -> i64 {
    changes
        .iter()
        .filter(|(i, s, _)| *i == incarnation && s == state)
        .map(|(_, _, n)| n)
        .sum()
}

impl Tally {
    fn add(&mut self, (recipient, incarnation, state): BorrowedKey<'_>, delta: i64) {
        let state = State::of(state);
        match self
            .request
            .iter_mut()
            .find(|(r, _)| r.as_bytes() == recipient)
        {
            Some((_, changes)) => add_to(changes, incarnation, state, delta),
            None => self.request.push((
                String::from_utf8_lossy(recipient).into_owned(),
                vec![(incarnation, state, delta)],
            )),
        }
    }

    /// The open transaction's change to `recipient`'s `incarnation` in `state` so far, the
    /// running request's included.
    fn pending(&self, recipient: &str, incarnation: i64, state: &State) -> i64 {
        let running: i64 = self
            .request
            .iter()
            .filter(|(r, _)| r == recipient)
            .map(|(_, changes)| change_of(changes, incarnation, state))
            .sum();
        let kept = self
            .transaction
            .get(recipient)
            .map_or(0, |changes| change_of(changes, incarnation, state));
        running + kept
    }
}

/// A counted key read from a row, borrowed from sqlite's values: recipient and state as their
/// bytes (compared, and copied only when a request first touches the key).
type BorrowedKey<'a> = (&'a [u8], i64, &'a [u8]);

/// An inbox as the open transaction sees it: the incarnation its messages are stored under and
/// how many of them are queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InboxNow {
    /// The recipient's incarnation (`None` for the operator's inbox and unknown names).
    pub incarnation: Option<i64>,
    /// Its queued messages of that incarnation, this transaction's changes included.
    pub queued: i64,
}

/// What the writer knows of an inbox: its incarnation and its queued count as stored in
/// `message_counts` (which only the writer changes, at each COMMIT).
#[derive(Clone, Copy)]
struct Looked {
    incarnation: Option<i64>,
    stored_queued: i64,
}

/// The inboxes the writer looked up, so a send reads its recipient's incarnation and count from
/// memory instead of two statements per send. Kept across transactions: each COMMIT adds its
/// queued changes to the stored counts here as it writes them to the table. Forgotten when a
/// transaction or one of its requests is rolled back (sqlite undoes rows without telling the
/// hook) and when a row of `agents` changes (an incarnation may have moved, a name come or gone).
#[derive(Default)]
struct Inboxes {
    /// Whether the writer's transaction is open: outside it (and on any other thread) nothing
    /// is remembered.
    open: bool,
    looked: FxHashMap<String, Looked>,
}

/// The writer's memory of the counts: the open transaction's tally and the inboxes looked up.
/// It belongs to the write connection and travels with it: whichever thread commits (the
/// writer thread, or a caller committing its own request) holds it in its thread-locals while it
/// holds the connection ([`Memory::enter`]), where the hook and the mailbox reach it.
#[derive(Default)]
pub(super) struct Memory {
    tally: Tally,
    inboxes: Inboxes,
}

impl Memory {
    /// Puts this memory where the hook and the mailbox find it, on this thread, until
    /// [`Memory::leave`]; the thread's own (empty) memory comes here meanwhile.
    pub(super) fn enter(&mut self) {
        TALLY.with_borrow_mut(|tally| std::mem::swap(tally, &mut self.tally));
        INBOXES.with_borrow_mut(|inboxes| std::mem::swap(inboxes, &mut self.inboxes));
    }

    /// Takes the memory back from this thread (the swap of [`Memory::enter`], undone).
    pub(super) fn leave(&mut self) {
        self.enter();
    }
}

thread_local! {
    /// The tally of the connection this thread commits on (see [`Memory`]): the hook runs on
    /// the thread that runs the statement.
    static TALLY: RefCell<Tally> = RefCell::new(Tally::default());
    /// The inboxes looked up, of the connection this thread commits on.
    static INBOXES: RefCell<Inboxes> = RefCell::new(Inboxes::default());
    /// Set while [`insert_queued`] runs its insert: the hook leaves that row to it.
    static INSERTING_TALLIED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `insert`, a statement that inserts exactly one queued message for `recipient`'s
/// `incarnation` (the one [`inbox_now`] gave), and tallies that row itself: the hook skips it,
/// so the writer does not unpack the new row to read back what the caller already knows.
/// Nothing is tallied if `insert` fails (no row was stored).
pub fn insert_queued<T>(
    recipient: &str,
    incarnation: Option<i64>,
    insert: impl FnOnce() -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    INSERTING_TALLIED.set(true);
    let inserted = insert();
    INSERTING_TALLIED.set(false);
    let inserted = inserted?;
    // Only the writer's transaction is tallied (the hook watches its connection alone).
    if INBOXES.with_borrow(|inboxes| inboxes.open) {
        TALLY.with_borrow_mut(|tally| {
            tally.add(
                (recipient.as_bytes(), incarnation.unwrap_or(0), b"queued"),
                1,
            )
        });
    }
    Ok(inserted)
}

/// Forgets every inbox looked up.
fn forget_inboxes() {
    INBOXES.with_borrow_mut(|inboxes| inboxes.looked.clear());
}

/// The writer began a transaction.
pub(super) fn begin() {
    INBOXES.with_borrow_mut(|inboxes| inboxes.open = true);
}

/// `recipient`'s inbox as the open transaction on `conn` sees it: on the writer, read once (from
/// `agents` and `message_counts`) and then followed through each transaction's own changes, so
/// it is exact however many sends a batch holds; on any other connection, read each time.
pub fn inbox_now(conn: &Connection, recipient: &str) -> Result<InboxNow> {
    let remembered = INBOXES.with_borrow(|inboxes| inboxes.looked.get(recipient).copied());
    let looked = match remembered {
        Some(looked) => looked,
        None => {
            let looked = conn
                .prepare_cached(
                    "SELECT live, coalesce((SELECT n FROM message_counts
                         WHERE recipient = ?1 AND incarnation = coalesce(live, 0)
                         AND state = 'queued'), 0)
                     FROM (SELECT (SELECT incarnation FROM agents WHERE name = ?1) AS live)",
                )?
                .query_row([recipient], |r| {
                    Ok(Looked {
                        incarnation: r.get(0)?,
                        stored_queued: r.get(1)?,
                    })
                })?;
            INBOXES.with_borrow_mut(|inboxes| {
                if inboxes.open {
                    inboxes.looked.insert(recipient.to_owned(), looked);
                }
            });
            looked
        }
    };
    let pending = TALLY.with_borrow(|tally| {
        tally.pending(recipient, looked.incarnation.unwrap_or(0), &State::Queued)
    });
    Ok(InboxNow {
        incarnation: looked.incarnation,
        queued: looked.stored_queued + pending,
    })
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
            if db != "main" {
                return;
            }
            if table == "agents" {
                forget_inboxes();
                return;
            }
            if table != "messages" {
                return;
            }
            let (old, new) = match change {
                PreUpdateCase::Insert(_) if INSERTING_TALLIED.get() => return,
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
    let recipient = value(columns.recipient)?.as_bytes().ok()?;
    let incarnation = match value(columns.incarnation)? {
        ValueRef::Integer(n) => n,
        _ => 0,
    };
    let state = value(columns.state)?.as_bytes().ok()?;
    Some((recipient, incarnation, state))
}

/// The running request ended: its changes join the transaction's (`kept`) or are dropped (it was
/// rolled back).
pub(super) fn request_done(kept: bool) {
    TALLY.with_borrow_mut(|tally| {
        let request = std::mem::take(&mut tally.request);
        if kept {
            for (recipient, changes) in request {
                match tally.transaction.get_mut(recipient.as_str()) {
                    Some(kept) => {
                        for (incarnation, state, delta) in changes {
                            add_to(kept, incarnation, state, delta);
                        }
                    }
                    None => {
                        tally.transaction.insert(recipient, changes);
                    }
                }
            }
        } else {
            // Its rows are undone, an `agents` row it moved too: what it looked up may be stale.
            forget_inboxes();
        }
    });
}

/// Writes the transaction's tally into `message_counts`, inside the transaction, just before its
/// COMMIT. If this fails the transaction must be rolled back.
pub(super) fn write(conn: &Connection) -> Result<()> {
    INBOXES.with_borrow_mut(|inboxes| inboxes.open = false);
    let changes = TALLY.with_borrow_mut(|tally| std::mem::take(&mut tally.transaction));
    if changes.is_empty() {
        return Ok(());
    }
    let mut upsert = conn.prepare_cached(
        "INSERT INTO message_counts (recipient, incarnation, state, n) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (recipient, incarnation, state) DO UPDATE SET n = n + excluded.n",
    )?;
    for (recipient, inbox) in changes {
        for (incarnation, state, delta) in inbox {
            if delta == 0 {
                continue;
            }
            upsert.execute(rusqlite::params![
                recipient,
                incarnation,
                state.as_str(),
                delta
            ])?;
            if state == State::Queued {
                INBOXES.with_borrow_mut(|inboxes| {
                    if let Some(looked) = inboxes.looked.get_mut(&recipient)
                        && looked.incarnation.unwrap_or(0) == incarnation
                    {
                        looked.stored_queued += delta;
                    }
                });
            }
        }
    }
    Ok(())
}

/// The transaction ended without [`write`] (rolled back): nothing of it is counted.
pub(super) fn forget() {
    INBOXES.with_borrow_mut(|inboxes| {
        inboxes.open = false;
        inboxes.looked.clear();
    });
    TALLY.with_borrow_mut(|tally| {
        tally.request.clear();
        tally.transaction.clear();
    });
}

/// Counts `messages` again from scratch into `message_counts`: for a migration or a tool that
/// changed rows of `messages` on another connection than the writer's, while no hive has the
/// file open (a running writer keeps the queued counts it read in memory and is not told).
pub fn recount(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "DELETE FROM message_counts;
         INSERT INTO message_counts (recipient, incarnation, state, n)
             SELECT recipient, coalesce(incarnation, 0), state, count(*) FROM messages
             GROUP BY recipient, coalesce(incarnation, 0), state;",
    )?;
    Ok(())
}
