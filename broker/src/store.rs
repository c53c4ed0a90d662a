//! The sqlite store (DESIGN §5): one file in WAL mode, numbered append-only migrations, ONE writer
//! thread that owns the only write connection, and a small pool of read-only connections.
//!
//! The writer drains whatever requests are waiting (up to [`MAX_BATCH`]), runs them in one
//! transaction — each inside its own SAVEPOINT, so a failing request is rolled back alone — commits
//! once, and only then answers each request (group commit: 64 concurrent writers pay for one commit).
//! Nothing outside this module opens a write connection to `hive.db`.
//!
//! A mailbox send or take ([`Store::write_then`], [`Store::write_or_give_back`]) made while
//! writes are not contended commits on its caller's thread instead: nothing queued, nobody
//! committing, and for [`CALM_BEFORE_CALLERS_COMMIT`] neither the writer thread has committed nor
//! a write has met another ([`Traffic`]). That saves the
//! two thread hand-offs of a lone write, each a wake-up of a sleeping thread. Under contention
//! everything goes to the writer thread, whose group commit is what many writers need: callers
//! committing one by one on the async workers would take those workers from the other writers
//! and commit each alone. Only under `synchronous = normal`, where a commit is a `write` into the
//! page cache: under `full` each commit waits for an fsync, which must not hold an async worker.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError, mpsc};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use crate::config::Synchronous;
use crate::error::{Error, Result};

pub(crate) mod heap;
pub mod message_counts;

/// The most requests committed in one transaction.
pub const MAX_BATCH: usize = 256;

/// Read connections kept open when idle.
const IDLE_READERS: usize = 2;

/// Page cache of the write connection, in KiB: enough for the inboxes' index pages a send touches
/// (sqlite's default is 2 MiB per connection).
const WRITER_CACHE_KIB: u32 = 2048;
/// Page cache of each read connection and of the checkpointer, in KiB: reads are single rows or a
/// page of a listing.
const READER_CACHE_KIB: u32 = 512;

/// How long after the writer thread committed, or a write met another (queued or committing),
/// callers leave their writes to the writer thread: under a stream of concurrent writers, the
/// next one comes well within this.
const CALM_BEFORE_CALLERS_COMMIT: std::time::Duration = std::time::Duration::from_millis(2);

/// Committed requests after which the writer, once idle for [`IDLE_BEFORE_RELEASE`], gives
/// memory back: its page cache, the idle readers, and the heap (see [`heap`]).
const RELEASE_AFTER: usize = 4096;

/// Schema migrations, applied in order; `PRAGMA user_version` is the number applied. Append only:
/// never edit a migration that has shipped.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_core.sql"),
    include_str!("migrations/0002_questions_reminders_turn_events.sql"),
    include_str!("migrations/0003_approvals_deploys_audit.sql"),
    include_str!("migrations/0004_drop_sender_index.sql"),
    include_str!("migrations/0005_incarnations.sql"),
    include_str!("migrations/0006_message_counts.sql"),
    include_str!("migrations/0007_uid_ranges.sql"),
    include_str!("migrations/0008_deploy_updates.sql"),
    include_str!("migrations/0009_message_counts_by_incarnation.sql"),
    include_str!("migrations/0010_events_sent.sql"),
    include_str!("migrations/0011_turn_stats.sql"),
    include_str!("migrations/0012_deploy_builder.sql"),
    include_str!("migrations/0013_paused.sql"),
    include_str!("migrations/0014_model_calls.sql"),
    include_str!("migrations/0015_approval_checks.sql"),
    include_str!("migrations/0016_receipts.sql"),
    include_str!("migrations/0017_message_counts_by_the_writer.sql"),
    include_str!("migrations/0018_messages_state_check.sql"),
];

/// Milliseconds since the Unix epoch: the one clock of stored timestamps.
pub fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What a write request gives the writer: whether it succeeded (to release or roll back its
/// savepoint), and what to do once the transaction's fate is known.
type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;
type Job = Box<dyn FnOnce(&Connection) -> (bool, Completion) + Send>;

enum Request {
    Write(Job),
    /// A caller's commits made a burst: the writer thread gives memory back once they stop.
    Burst,
    Stop,
}

/// A cheap handle to the store; clones share the writer and the read pool.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// Requests for the writer thread.
    writer: mpsc::Sender<Request>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    /// The write connection, held by whoever commits: the writer thread, or a caller committing
    /// its own request.
    core: Arc<Mutex<Writer>>,
    traffic: Arc<Traffic>,
    /// Whether callers may commit on their own thread (`synchronous = normal`).
    callers_commit: bool,
    /// Idle read connections; the writer empties it after a burst (see [`RELEASE_AFTER`]).
    readers: Arc<Mutex<Vec<Connection>>>,
}

/// How busy writes are: what a caller looks at before it commits on its own thread.
struct Traffic {
    /// Writes sent to the writer thread and not yet committed: a caller commits on its own thread
    /// only when there are none, so writes commit in the order they were made.
    queued: AtomicUsize,
    /// When the writer thread last committed, or a write last found another queued or
    /// committing, as [`Traffic::now`] (0: never).
    busy_at: AtomicU64,
    opened: Instant,
    /// How long after `busy_at` callers leave their writes to the writer thread, in microseconds.
    calm_after: u64,
}

impl Traffic {
    fn new(calm_after: std::time::Duration) -> Self {
        Self {
            queued: AtomicUsize::new(0),
            busy_at: AtomicU64::new(0),
            opened: Instant::now(),
            calm_after: calm_after.as_micros() as u64,
        }
    }

    /// The time in microseconds, counted from `calm_after` before `opened` (so a new store,
    /// `busy_at` 0, is calm).
    fn now(&self) -> u64 {
        self.opened.elapsed().as_micros() as u64 + self.calm_after
    }

    /// Whether writes were busy within the last `calm_after` of `now`.
    fn busy_lately(&self, now: u64) -> bool {
        now.saturating_sub(self.busy_at.load(Ordering::Relaxed)) < self.calm_after
    }

    /// Writes are busy at `now`: callers leave theirs to the writer thread for `calm_after`.
    fn busy(&self, now: u64) {
        self.busy_at.store(now, Ordering::Relaxed);
    }

    fn queued(&self) -> bool {
        self.queued.load(Ordering::Acquire) != 0
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path`, applies pending migrations and starts the
    /// writer thread.
    pub fn open(path: &Path, synchronous: Synchronous) -> Result<Self> {
        Self::open_calm_after(path, synchronous, CALM_BEFORE_CALLERS_COMMIT)
    }

    /// [`Store::open`], with callers committing on their own thread only `calm_after` since the
    /// writes were last busy (tests lengthen it to see what a busy writer does).
    fn open_calm_after(
        path: &Path,
        synchronous: Synchronous,
        calm_after: std::time::Duration,
    ) -> Result<Self> {
        let mut conn = Connection::open(path)?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = {};
             PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 5000;",
            synchronous.pragma()
        ))?;
        migrate(&mut conn)?;
        message_counts::watch(&mut conn)?;
        conn.pragma_update(None, "cache_size", -i64::from(WRITER_CACHE_KIB))?;
        conn.set_prepared_statement_cache_capacity(64);
        // Checkpoints run on their own thread (below), not inside the writer's commits.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpointer = Checkpointer::start(path)?;
        let core = Arc::new(Mutex::new(Writer {
            conn: Some(conn),
            counts: message_counts::Memory::default(),
            checkpointer: Some(checkpointer),
            since_checkpoint: 0,
            since_release: 0,
            last_commit: Instant::now(),
        }));
        let traffic = Arc::new(Traffic::new(calm_after));

        let (tx, rx) = mpsc::channel();
        let readers = Arc::new(Mutex::new(Vec::new()));
        let thread = std::thread::Builder::new()
            .name("hive-store-writer".into())
            .spawn({
                let (core, traffic, readers) = (core.clone(), traffic.clone(), readers.clone());
                move || run_writer(&core, &rx, &traffic, &readers)
            })
            .map_err(|e| Error::io("cannot start the store writer thread", e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: tx,
                writer_thread: Mutex::new(Some(thread)),
                core,
                traffic,
                callers_commit: synchronous == Synchronous::Normal,
                readers,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` inside the next group-commit transaction and returns its value once that transaction
    /// has COMMITTED. If `f` fails, only its own changes are rolled back.
    ///
    /// A request whose caller has gone away (the future was dropped) before the writer reaches it
    /// is skipped: nothing unacknowledged is done on behalf of nobody.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.write_then(f, |_| {}).await
    }

    /// [`Store::write`], and `after_commit` runs on the committing thread as soon as the
    /// transaction has committed, before the caller is answered: for wake-ups that should not wait
    /// for the caller's task to be scheduled. For the mailbox's sends: when nothing is queued, it
    /// commits on the caller's thread (see the module's doc).
    pub async fn write_then<T, F, A>(&self, f: F, after_commit: A) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
        A: FnOnce(&mut T) + Send + 'static,
    {
        self.submit(f, after_commit, drop, true).await
    }

    /// [`Store::write`] for a take, a write whose value only means something to the one who asked
    /// (messages marked delivered, a turn leased). If the caller went away while the transaction
    /// committed, nobody will ever see the value: `unclaimed` gets it on the writer thread to undo
    /// what was done, typically with [`Store::write_detached`], which lands in the next batch.
    /// When nothing is queued, it commits on the caller's thread, where the caller cannot leave.
    pub async fn write_or_give_back<T, F, U>(&self, f: F, unclaimed: U) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
        U: FnOnce(T) + Send + 'static,
    {
        self.submit(f, |_| {}, unclaimed, true).await
    }

    async fn submit<T, F, A, U>(
        &self,
        f: F,
        after_commit: A,
        unclaimed: U,
        here_if_free: bool,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
        A: FnOnce(&mut T) + Send + 'static,
        U: FnOnce(T) + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T>>();
        let job: Job = Box::new(move |conn| {
            if tx.is_closed() {
                return (false, Box::new(|_| {}));
            }
            let result = f(conn);
            let ok = result.is_ok();
            let done: Completion = Box::new(move |commit| {
                let answer = match commit {
                    Ok(()) => {
                        let mut result = result;
                        if let Ok(value) = &mut result {
                            after_commit(value);
                        }
                        result
                    }
                    Err(e) => Err(Error::Internal(format!("commit failed: {e}"))),
                };
                // The caller left between the start of its job and this answer: what committed
                // for it is handed back instead of being lost.
                if let Err(Ok(value)) = tx.send(answer) {
                    unclaimed(value);
                }
            });
            (ok, done)
        });
        let job = if here_if_free {
            self.commit_here(job)
        } else {
            Some(job)
        };
        if let Some(job) = job {
            self.queue(job)?;
        }
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Commits `job` on this thread if writes are not contended (see the module's doc); gives
    /// it back otherwise.
    fn commit_here(&self, job: Job) -> Option<Job> {
        let inner = &self.inner;
        if !inner.callers_commit {
            return Some(job);
        }
        let traffic = &inner.traffic;
        let now = traffic.now();
        // Within the window nothing else is looked at: under contention every writer comes
        // here, and the window is read, not written (the writer thread renews it).
        if traffic.busy_lately(now) {
            return Some(job);
        }
        let contended = |job| {
            traffic.busy(now);
            Some(job)
        };
        if traffic.queued() {
            return contended(job);
        }
        let mut writer = match inner.core.try_lock() {
            Ok(writer) => writer,
            Err(TryLockError::WouldBlock) => return contended(job),
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
        };
        // Checked again with the connection held: the writer thread takes its batch under it.
        if traffic.queued() {
            drop(writer);
            return contended(job);
        }
        if writer.conn.is_none() {
            return Some(job);
        }
        if writer.commit(vec![job]) {
            // The writer thread may be asleep: it gives memory back once the burst is over.
            let _ = inner.writer.send(Request::Burst);
        }
        None
    }

    /// Hands `job` to the writer thread.
    fn queue(&self, job: Job) -> Result<()> {
        let queued = &self.inner.traffic.queued;
        queued.fetch_add(1, Ordering::AcqRel);
        if self.inner.writer.send(Request::Write(job)).is_err() {
            queued.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::ShuttingDown);
        }
        Ok(())
    }

    /// Queues `f` for the next group commit without waiting for it; its failure is logged. For
    /// repairs the writer itself decides on (e.g. putting back a message nobody took); `after_commit`
    /// runs on the writer thread once it committed.
    pub fn write_detached<F, A>(&self, what: &'static str, f: F, after_commit: A)
    where
        F: FnOnce(&Connection) -> Result<()> + Send + 'static,
        A: FnOnce() + Send + 'static,
    {
        let job: Job = Box::new(move |conn| {
            let result = f(conn);
            let ok = result.is_ok();
            if let Err(e) = result {
                tracing::error!(error = %e, "{what} failed");
            }
            let done: Completion = Box::new(move |commit| match commit {
                Ok(()) if ok => after_commit(),
                Ok(()) => {}
                Err(e) => tracing::error!(error = %e, "{what}: commit failed"),
            });
            (ok, done)
        });
        if self.queue(job).is_err() {
            tracing::error!("{what}: the store is closed");
        }
    }

    /// Runs `f` on a read-only connection on the blocking pool.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.read_blocking(f))
            .await
            .map_err(|_| Error::ShuttingDown)?
    }

    /// Runs `f` on a read-only connection on this thread.
    pub fn read_blocking<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let pooled = self.inner.readers.lock().expect("reader pool").pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = Connection::open_with_flags(
                    &self.inner.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                conn.busy_timeout(std::time::Duration::from_secs(5))?;
                conn.pragma_update(None, "cache_size", -i64::from(READER_CACHE_KIB))?;
                conn
            }
        };
        let result = f(&conn);
        let mut idle = self.inner.readers.lock().expect("reader pool");
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
        result
    }

    /// Finishes every write already queued, commits, and stops the writer. Later writes fail with
    /// [`Error::ShuttingDown`].
    pub fn close(&self) {
        let _ = self.inner.writer.send(Request::Stop);
        if let Some(thread) = self
            .inner
            .writer_thread
            .lock()
            .expect("writer handle")
            .take()
        {
            let _ = thread.join();
        }
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let applied = conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    if applied > MIGRATIONS.len() {
        return Err(Error::SchemaTooNew {
            found: applied,
            known: MIGRATIONS.len(),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        if applied > 0 {
            // An upgrade: a migration may rebuild a table, seconds with a long history.
            tracing::info!(version = i + 1, "applying store migration");
        }
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "applied store migration");
    }
    if applied > 0 && applied < MIGRATIONS.len() {
        // A migration that rebuilt a table wrote it all to the WAL: fold it in and give the file
        // back now, not at the next checkpoint (which would reuse it at its size).
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
    }
    Ok(())
}

/// How long the writer polls for the next request before it sleeps: waking a sleeping thread
/// costs tens of microseconds on a virtual machine, more than a commit, and a busy writer's
/// next request usually comes within this window.
const SPIN_BEFORE_SLEEP: std::time::Duration = std::time::Duration::from_micros(150);

/// How long the writer must have had nothing to do before it gives memory back: a pause between
/// two batches of a busy hive is not the end of its burst (giving the page cache back there made
/// every next commit read its pages again).
const IDLE_BEFORE_RELEASE: std::time::Duration = std::time::Duration::from_millis(200);

/// The next request: polled for a moment, then waited for. With `release` given, the writer
/// runs it each time it has waited [`IDLE_BEFORE_RELEASE`] in vain, until it says it is done
/// (the store was idle that long), then waits on. `None` when every sender is gone.
fn next_request(
    rx: &mpsc::Receiver<Request>,
    release: Option<impl FnMut() -> bool>,
) -> Option<Request> {
    let spin_until = std::time::Instant::now() + SPIN_BEFORE_SLEEP;
    while std::time::Instant::now() < spin_until {
        match rx.try_recv() {
            Ok(request) => return Some(request),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) => std::hint::spin_loop(),
        }
    }
    if let Some(mut release) = release {
        loop {
            match rx.recv_timeout(IDLE_BEFORE_RELEASE) {
                Ok(request) => return Some(request),
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                Err(mpsc::RecvTimeoutError::Timeout) if release() => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }
    rx.recv().ok()
}

/// After a burst, once the writer has nothing to do: frees the write connection's page cache,
/// closes the idle readers (each holds its own cache) and trims the heap, so the daemon's memory
/// comes back down instead of staying at the burst's peak.
fn release_memory(conn: &Connection, readers: &Mutex<Vec<Connection>>) {
    if let Err(e) = conn.release_memory() {
        tracing::debug!(error = %e, "sqlite could not release memory");
    }
    let idle = std::mem::take(&mut *readers.lock().expect("reader pool"));
    drop(idle);
    heap::trim();
}

/// Copies the WAL back into the database on its own connection and thread, asked by the writer
/// after every [`CHECKPOINT_EVERY`] committed requests, so a commit never waits for a checkpoint
/// (SQLite's automatic checkpoint would run it inside the commit that crosses the threshold).
///
/// SQLite starts the WAL over from its beginning only at a write that finds every frame copied
/// back; under a steady stream of commits the checkpoint never catches up with the newest, so
/// the WAL would grow for as long as the stream lasts (hundreds of MB in a benchmark's seconds),
/// each commit extending the file. So when a pass is done the writer copies the few frames
/// committed during it itself, before its next transaction ([`Checkpointer::catch_up`]), and that
/// transaction writes from the start of the WAL again.
struct Checkpointer {
    poke: mpsc::SyncSender<()>,
    thread: JoinHandle<()>,
    /// Set when a pass is done, cleared when the writer has caught up with it; no pass runs
    /// while it is set.
    passed: Arc<AtomicBool>,
}

/// Committed requests between two checkpoints (about as often as SQLite's default of 1000 pages).
const CHECKPOINT_EVERY: usize = 2000;

impl Checkpointer {
    fn start(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "cache_size", -i64::from(READER_CACHE_KIB))?;
        let (poke, asked) = mpsc::sync_channel::<()>(1);
        let passed = Arc::new(AtomicBool::new(false));
        let pass_done = passed.clone();
        let thread = std::thread::Builder::new()
            .name("hive-store-checkpoint".into())
            .spawn(move || {
                while asked.recv().is_ok() {
                    // Not before the writer has caught up with the last pass: two checkpoints
                    // at once would keep each other from finishing.
                    if !pass_done.load(Ordering::Acquire) && checkpoint(&conn) {
                        pass_done.store(true, Ordering::Release);
                    }
                }
                // The writer stopped: fold the whole WAL back in before the process goes.
                let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
            })
            .map_err(|e| Error::io("cannot start the checkpoint thread", e))?;
        Ok(Self {
            poke,
            thread,
            passed,
        })
    }

    fn ask(&self) {
        // Full means one is already asked for: nothing to add.
        let _ = self.poke.try_send(());
    }

    /// Run by the writer between two transactions: after a pass, copies back what was committed
    /// during it (a few commits' frames; nothing when the pass caught up), so the next
    /// transaction starts the WAL over. The next pass waits for it.
    fn catch_up(&self, conn: &Connection) {
        if self.passed.load(Ordering::Acquire) && checkpoint(conn) {
            self.passed.store(false, Ordering::Release);
        }
    }

    fn stop(self) {
        drop(self.poke);
        let _ = self.thread.join();
    }
}

/// One PASSIVE checkpoint on `conn`; true when it ran. It does not run while the other side (the
/// checkpoint thread or the writer's catch-up) is checkpointing: nothing is lost, the next pass
/// goes on from where that one ends.
fn checkpoint(conn: &Connection) -> bool {
    // (busy, frames in the WAL, frames copied back); busy is 1 when another checkpoint ran.
    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0)) {
        Ok(busy) => busy == 0,
        Err(e) => {
            tracing::warn!(error = %e, "WAL checkpoint failed; the next one retries");
            false
        }
    }
}

/// The write connection and its bookkeeping (see [`Inner::core`]).
struct Writer {
    /// `None` once the store is closed.
    conn: Option<Connection>,
    /// The message counts' memory of this connection, entered by the committing thread.
    counts: message_counts::Memory,
    checkpointer: Option<Checkpointer>,
    since_checkpoint: usize,
    since_release: usize,
    last_commit: Instant,
}

/// [`message_counts::Memory::enter`] until dropped, also when a request's completion panics.
struct Entered<'a>(&'a mut message_counts::Memory);

impl<'a> Entered<'a> {
    fn new(memory: &'a mut message_counts::Memory) -> Self {
        memory.enter();
        Self(memory)
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

impl Writer {
    /// Commits `batch` in one transaction on this thread (a closed store drops it: each caller
    /// gets [`Error::ShuttingDown`]). True when this commit made a burst the writer should give
    /// memory back after.
    fn commit(&mut self, batch: Vec<Job>) -> bool {
        let Some(conn) = &self.conn else {
            return false;
        };
        let requests = batch.len();
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.catch_up(conn);
        }
        {
            let _entered = Entered::new(&mut self.counts);
            commit_batch(conn, batch);
        }
        self.last_commit = Instant::now();
        self.since_checkpoint += requests;
        if self.since_checkpoint >= CHECKPOINT_EVERY {
            if let Some(checkpointer) = &self.checkpointer {
                checkpointer.ask();
            }
            self.since_checkpoint = 0;
        }
        let burst_before = self.since_release >= RELEASE_AFTER;
        self.since_release += requests;
        !burst_before && self.since_release >= RELEASE_AFTER
    }

    /// Gives memory back after a burst once nothing has committed for [`IDLE_BEFORE_RELEASE`]
    /// (see [`release_memory`]). False while commits still come.
    fn release_if_idle(&mut self, readers: &Mutex<Vec<Connection>>) -> bool {
        if self.since_release < RELEASE_AFTER {
            return true;
        }
        if self.last_commit.elapsed() < IDLE_BEFORE_RELEASE {
            return false;
        }
        if let Some(conn) = &self.conn {
            release_memory(conn, readers);
        }
        self.since_release = 0;
        true
    }

    /// Closes the write connection, then folds the WAL back in.
    fn close(&mut self) {
        drop(self.conn.take());
        if let Some(checkpointer) = self.checkpointer.take() {
            checkpointer.stop();
        }
    }
}

/// The write connection, held: a panic elsewhere while it was held left it whole (each request
/// runs under `catch_unwind`, each transaction ends before the lock is given back).
fn hold(core: &Mutex<Writer>) -> MutexGuard<'_, Writer> {
    core.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The writer thread: takes what is queued, up to [`MAX_BATCH`] at once, and commits it.
fn run_writer(
    core: &Mutex<Writer>,
    rx: &mpsc::Receiver<Request>,
    traffic: &Traffic,
    readers: &Mutex<Vec<Connection>>,
) {
    let mut stopping = false;
    while !stopping {
        let burst = hold(core).since_release >= RELEASE_AFTER;
        let release = burst.then_some(|| hold(core).release_if_idle(readers));
        let Some(first) = next_request(rx, release) else {
            break;
        };
        let mut batch = Vec::with_capacity(16);
        match first {
            Request::Write(job) => batch.push(job),
            Request::Burst => continue,
            Request::Stop => break,
        }
        let mut writer = hold(core);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Request::Write(job)) => batch.push(job),
                Ok(Request::Burst) => {}
                Ok(Request::Stop) => {
                    stopping = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let requests = batch.len();
        writer.commit(batch);
        // While the writer thread has work, callers leave theirs to it: a caller committing
        // alone would hold the connection from the batch and commit one write where the writer
        // thread commits many.
        traffic.busy(traffic.now());
        traffic.queued.fetch_sub(requests, Ordering::AcqRel);
    }
    hold(core).close();
    tracing::debug!("store writer stopped");
}

/// Runs one request; a panic in it counts as a failure (its changes are rolled back) and never
/// takes the writer down.
fn run_job(conn: &Connection, job: Job) -> (bool, Completion) {
    catch_unwind(AssertUnwindSafe(|| job(conn))).unwrap_or_else(|_| {
        tracing::error!("a store request panicked; its changes are rolled back");
        (false, Box::new(|_| {}))
    })
}

/// Writes the transaction's message counts and commits; if either fails, rolls the whole
/// transaction back.
fn commit(conn: &Connection) -> std::result::Result<(), String> {
    let outcome = message_counts::write(conn)
        .map_err(|e| e.to_string())
        .and_then(|()| run(conn, "COMMIT").map_err(|e| e.to_string()));
    if let Err(e) = &outcome {
        tracing::error!(error = %e, "commit failed; the transaction is rolled back");
        rollback(conn);
    }
    outcome
}

/// Rolls the open transaction back, its message counts with it.
fn rollback(conn: &Connection) {
    message_counts::forget();
    if let Err(e) = conn.execute_batch("ROLLBACK") {
        tracing::error!(error = %e, "ROLLBACK failed");
    }
}

/// Runs one statement of the writer's own (BEGIN, SAVEPOINT, RELEASE, COMMIT) from the statement
/// cache: parsed once, not at each of the thousands of requests a second it frames.
fn run(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.raw_execute().map(|_| ())
}

fn commit_batch(conn: &Connection, batch: Vec<Job>) {
    let mut completions: Vec<Completion> = Vec::with_capacity(batch.len());
    if let Err(e) = run(conn, "BEGIN IMMEDIATE") {
        // Dropping the jobs drops their answer channels: each caller gets an error, none has run.
        tracing::error!(error = %e, requests = batch.len(), "cannot begin a transaction");
        return;
    }
    message_counts::begin();
    // One request needs no savepoint: if it fails, the whole transaction is its own.
    let alone = batch.len() == 1;
    for job in batch {
        if alone {
            let (ok, done) = run_job(conn, job);
            message_counts::request_done(ok);
            let outcome = if ok {
                commit(conn)
            } else {
                rollback(conn);
                Ok(())
            };
            crate::audit::after_transaction(conn);
            done(outcome);
            return;
        }
        if let Err(e) = run(conn, "SAVEPOINT job") {
            tracing::error!(error = %e, "cannot open a savepoint");
        }
        let (ok, done) = run_job(conn, job);
        message_counts::request_done(ok);
        let end = if ok {
            run(conn, "RELEASE job")
        } else {
            conn.execute_batch("ROLLBACK TO job; RELEASE job")
        };
        if let Err(e) = end {
            tracing::error!(error = %e, "cannot close a savepoint");
        }
        completions.push(done);
    }
    let commit = commit(conn);
    crate::audit::after_transaction(conn);
    for done in completions {
        done(commit.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db"), Synchronous::Normal).unwrap();
        (dir, store)
    }

    /// Column `i` of what `sql` returns, as text.
    fn texts(c: &Connection, sql: &str, i: usize) -> Vec<String> {
        c.prepare(sql)
            .unwrap()
            .query_map([], |r| r.get(i))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// A database at the schema just before the migration that contains `marker`: its
    /// directory, its path, and a connection to fill it with what an older hive left.
    fn database_before(marker: &str) -> (tempfile::TempDir, PathBuf, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let at = MIGRATIONS.iter().position(|m| m.contains(marker)).unwrap();
        let c = Connection::open(&path).unwrap();
        for sql in &MIGRATIONS[..at] {
            c.execute_batch(sql).unwrap();
        }
        c.pragma_update(None, "user_version", at as i64).unwrap();
        (dir, path, c)
    }

    /// `message_counts` as stored, and as counted from `messages`, without zero rows.
    async fn counts_stored_and_counted(
        store: &Store,
    ) -> (
        Vec<(String, i64, String, i64)>,
        Vec<(String, i64, String, i64)>,
    ) {
        store
            .read(|c| {
                let rows = |sql: &str| -> Result<Vec<(String, i64, String, i64)>> {
                    let mut s = c.prepare(sql)?;
                    let rows =
                        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
                    Ok(rows.collect::<Result<_, _>>()?)
                };
                Ok((
                    rows(
                        "SELECT recipient, incarnation, state, n FROM message_counts
                          WHERE n != 0 ORDER BY 1, 2, 3",
                    )?,
                    rows(
                        "SELECT recipient, coalesce(incarnation, 0), state, count(*) FROM messages
                          GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
                    )?,
                ))
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_message_counts_keep_what_committed_and_drop_what_rolled_back() {
        let (_dir, store) = open();
        let insert = |to: &'static str, fail: bool| {
            store.write(move |c| {
                c.execute(
                    "INSERT INTO messages (sender, recipient, body, sent_at) VALUES ('operator', ?1, 'x', 0)",
                    [to],
                )?;
                if fail {
                    return Err(Error::invalid("x", "refused"));
                }
                Ok(())
            })
        };
        // Together (one batch, a savepoint each) and alone (a transaction of its own).
        let (a, b, c, d) = tokio::join!(
            insert("bob", false),
            insert("bob", true),
            insert("carol", false),
            insert("bob", false)
        );
        for ok in [a, c, d] {
            ok.unwrap();
        }
        assert!(b.is_err());
        assert!(insert("carol", true).await.is_err());
        // A state change, a move to another inbox, a delete, and a change of neither.
        store
            .write(|c| {
                c.execute_batch(
                    "UPDATE messages SET state = 'delivered' WHERE id = (SELECT min(id) FROM messages);
                     UPDATE messages SET recipient = 'dave', incarnation = 7
                         WHERE id = (SELECT max(id) FROM messages);
                     DELETE FROM messages WHERE recipient = 'carol';
                     UPDATE messages SET redelivered = 1;",
                )?;
                Ok(())
            })
            .await
            .unwrap();
        let (stored, counted) = counts_stored_and_counted(&store).await;
        assert_eq!(stored, counted);
        assert_eq!(
            counted,
            vec![
                ("bob".to_owned(), 0, "delivered".to_owned(), 1),
                ("dave".to_owned(), 7, "queued".to_owned(), 1)
            ]
        );
    }

    /// A request for [`in_one_batch`].
    type TestJob<T> = Box<dyn FnOnce(&Connection) -> Result<T> + Send>;

    /// Holds the writer thread in a job until the returned sender is used; the job then runs
    /// `then` on its connection. Returns once the writer is held.
    fn hold_the_writer(
        store: &Store,
        then: impl FnOnce(&Connection) -> Result<()> + Send + 'static,
    ) -> mpsc::Sender<()> {
        let (entered_tx, entered) = mpsc::channel();
        let (go, go_rx) = mpsc::channel::<()>();
        store.write_detached(
            "hold the writer",
            move |c| {
                entered_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                then(c)
            },
            || {},
        );
        entered
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        go
    }

    /// Queues `jobs` behind a job that holds the writer, so they commit in one batch (one
    /// transaction, a savepoint each), and returns their answers in order.
    async fn in_one_batch<T: Send + 'static>(
        store: &Store,
        jobs: Vec<TestJob<T>>,
    ) -> Vec<Result<T>> {
        let go = hold_the_writer(store, |_| Ok(()));
        let mut queued: Vec<_> = jobs.into_iter().map(|f| Box::pin(store.write(f))).collect();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for job in &mut queued {
            // One poll hands the job to the writer, behind the held one.
            assert!(job.as_mut().poll(&mut cx).is_pending());
        }
        go.send(()).unwrap();
        futures_util::future::join_all(queued).await
    }

    /// What a send reads of its recipient's inbox (`message_counts::inbox_now`) is read once per
    /// transaction, and still follows the batch: its own queued messages, an incarnation moved
    /// by an earlier request, and a request rolled back.
    #[tokio::test]
    async fn an_inbox_read_in_a_batch_follows_the_batchs_changes_and_rollbacks() {
        use message_counts::{InboxNow, inbox_now};
        let (_dir, store) = open();
        store
            .write(|c| {
                c.execute_batch(
                    "INSERT INTO agents (name, kind, created_at, incarnation)
                         VALUES ('bob', 'agent', 0, 5);
                     INSERT INTO messages (sender, recipient, body, sent_at, incarnation)
                         VALUES ('operator', 'bob', 'x', 0, 5);",
                )?;
                Ok(())
            })
            .await
            .unwrap();
        let first = 5;
        let queue_one = |c: &Connection| -> Result<InboxNow> {
            let now = inbox_now(c, "bob")?;
            c.execute(
                "INSERT INTO messages (sender, recipient, body, sent_at, incarnation)
                 VALUES ('operator', 'bob', 'x', 0, ?1)",
                [now.incarnation],
            )?;
            inbox_now(c, "bob")
        };
        let jobs: Vec<TestJob<InboxNow>> = vec![
            Box::new(queue_one),
            Box::new(queue_one),
            // Moves bob to a new incarnation, reads it, then fails: all of it is undone.
            Box::new(move |c: &Connection| {
                c.execute(
                    "UPDATE agents SET incarnation = ?1 WHERE name = 'bob'",
                    [first + 1],
                )?;
                assert_eq!(
                    inbox_now(c, "bob")?,
                    InboxNow {
                        incarnation: Some(first + 1),
                        queued: 0
                    }
                );
                Err(Error::invalid("x", "refused"))
            }),
            Box::new(queue_one),
            // Moves bob for good: what is queued now is the new incarnation's.
            Box::new(move |c: &Connection| {
                c.execute(
                    "UPDATE agents SET incarnation = ?1 WHERE name = 'bob'",
                    [first + 2],
                )?;
                queue_one(c)
            }),
            Box::new(|c: &Connection| inbox_now(c, "nobody")),
        ];
        let got: Vec<_> = in_one_batch(&store, jobs)
            .await
            .into_iter()
            .map(|r| r.ok())
            .collect();
        let old = |queued| {
            Some(InboxNow {
                incarnation: Some(first),
                queued,
            })
        };
        assert_eq!(
            got,
            [
                old(2),
                old(3),
                None,
                old(4),
                Some(InboxNow {
                    incarnation: Some(first + 2),
                    queued: 1
                }),
                Some(InboxNow {
                    incarnation: None,
                    queued: 0
                }),
            ]
        );
        // The next transactions read what the earlier ones committed (kept in memory between
        // them): not what a transaction rolled back, and what a delete took away.
        let bob_now = || async { store.write(|c| inbox_now(c, "bob")).await.unwrap() };
        let moved = |queued| InboxNow {
            incarnation: Some(first + 2),
            queued,
        };
        assert_eq!(bob_now().await, moved(1));
        let rolled_back = store.write(move |c| {
            queue_one(c)?;
            Err::<(), _>(Error::invalid("x", "refused"))
        });
        assert!(rolled_back.await.is_err());
        assert_eq!(bob_now().await, moved(1));
        let deleted = store.write(move |c| {
            c.execute("DELETE FROM messages WHERE incarnation = ?1", [first + 2])?;
            inbox_now(c, "bob")
        });
        assert_eq!(deleted.await.unwrap().queued, 0);
        assert_eq!(bob_now().await, moved(0));
        let (stored, counted) = counts_stored_and_counted(&store).await;
        assert_eq!(stored, counted);
    }

    /// The name of the thread a mailbox write (`write_then`) committed on.
    async fn committed_on(store: &Store) -> String {
        let (on, _) = store
            .write_then(
                |_| Ok((String::new(), ())),
                |(on, ())| *on = std::thread::current().name().unwrap_or("?").to_owned(),
            )
            .await
            .unwrap();
        on
    }

    /// This thread's name.
    fn this_thread() -> String {
        std::thread::current().name().unwrap_or("?").to_owned()
    }

    /// Waits until a mailbox write commits on this thread again: writes have been calm for
    /// [`CALM_BEFORE_CALLERS_COMMIT`].
    async fn until_callers_commit(store: &Store) {
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while committed_on(store).await != this_thread() {
            assert!(Instant::now() < deadline, "writes never got calm");
            tokio::task::yield_now().await;
        }
    }

    /// While the writer thread has work, a caller leaves its write to it, even at a moment when
    /// nothing is queued and the connection is free: committing alone, it would hold the
    /// connection from the writer's next batch and commit one write where the writer commits
    /// many (under many senders, callers then committed thousands of writes a second alone).
    #[tokio::test]
    async fn a_caller_leaves_its_write_to_a_busy_writer_thread() {
        let dir = tempfile::tempdir().unwrap();
        let hour = std::time::Duration::from_secs(3600);
        let store =
            Store::open_calm_after(&dir.path().join("t.db"), Synchronous::Normal, hour).unwrap();
        assert_eq!(
            committed_on(&store).await,
            this_thread(),
            "a new store is calm"
        );

        let (done, committed) = tokio::sync::oneshot::channel();
        store.write_detached(
            "a write of the writer thread",
            |_| Ok(()),
            move || {
                let _ = done.send(());
            },
        );
        committed.await.unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while store.inner.traffic.queued() || store.inner.core.try_lock().is_err() {
            assert!(
                Instant::now() < deadline,
                "the writer thread never finished"
            );
            tokio::task::yield_now().await;
        }
        assert_eq!(committed_on(&store).await, "hive-store-writer");
        assert_eq!(committed_on(&store).await, "hive-store-writer");
    }

    /// Under `synchronous = normal` a lone send commits on its caller's thread; under `full` (a
    /// commit waits for an fsync) and while anything is queued for the writer thread, it goes to
    /// the writer thread, behind what is queued.
    #[tokio::test]
    async fn a_lone_send_commits_on_its_callers_thread_when_commits_are_cheap() {
        let (_dir, normal) = open();
        assert_eq!(committed_on(&normal).await, this_thread());
        let dir = tempfile::tempdir().unwrap();
        let full = Store::open(&dir.path().join("t.db"), Synchronous::Full).unwrap();
        assert_eq!(committed_on(&full).await, "hive-store-writer");

        // A write held on the writer thread: a send made meanwhile waits behind it.
        let go = hold_the_writer(&normal, |c| {
            Ok(c.execute_batch("CREATE TABLE held_first (x)")?)
        });
        let mut behind = Box::pin(normal.write_then(
            |c| {
                let after_held: bool = c
                    .query_row(
                        "SELECT count(*) FROM sqlite_schema WHERE name = 'held_first'",
                        [],
                        |r| r.get(0),
                    )
                    .unwrap();
                Ok((after_held, this_thread()))
            },
            |_| {},
        ));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(behind.as_mut().poll(&mut cx).is_pending());
        go.send(()).unwrap();
        let (after_held, on) = behind.await.unwrap();
        assert!(after_held, "the send overtook the write queued before it");
        assert_eq!(on, "hive-store-writer");
        // Once writes are calm again, the caller commits its own.
        until_callers_commit(&normal).await;
    }

    /// Sends committed on their caller's thread and sends batched by the writer thread keep one
    /// memory of the inbox (it travels with the connection): the quota is met exactly and the
    /// stored counts equal a recount.
    #[tokio::test]
    async fn sends_committed_by_callers_and_by_the_writer_meet_the_quota_exactly() {
        use message_counts::{inbox_now, insert_queued};
        const QUOTA: i64 = 300;
        let (_dir, store) = open();
        fn send(c: &Connection) -> Result<String> {
            let now = inbox_now(c, "bob")?;
            if now.queued >= QUOTA {
                return Err(Error::invalid("to", "inbox full"));
            }
            insert_queued("bob", now.incarnation, || {
                c.execute(
                    "INSERT INTO messages (sender, recipient, body, sent_at)
                     VALUES ('operator', 'bob', 'x', 0)",
                    [],
                )
            })?;
            Ok(this_thread())
        }
        let here = this_thread();
        let mut stored = 0;
        // 100 on this thread, 160 in one batch on the writer thread, then 100 more tried here:
        // 40 of them fit.
        for _ in 0..100 {
            assert_eq!(store.write_then(send, |_| {}).await.unwrap(), here);
            stored += 1;
        }
        let jobs: Vec<TestJob<String>> = (0..160).map(|_| Box::new(send) as _).collect();
        for on in in_one_batch(&store, jobs).await {
            assert_eq!(on.unwrap(), "hive-store-writer");
            stored += 1;
        }
        until_callers_commit(&store).await;
        for _ in 0..100 {
            match store.write_then(send, |_| {}).await {
                Ok(on) => {
                    assert_eq!(on, here);
                    stored += 1;
                }
                Err(e) => assert!(e.to_string().contains("inbox full"), "{e}"),
            }
        }
        assert_eq!(stored, QUOTA);
        let (counted_stored, counted) = counts_stored_and_counted(&store).await;
        assert_eq!(counted_stored, counted);
        assert_eq!(counted, vec![("bob".into(), 0, "queued".into(), QUOTA)]);
    }

    #[tokio::test]
    async fn a_failing_request_rolls_back_alone() {
        let (_dir, store) = open();
        let ok = store.write(|c| {
            c.execute(
                "INSERT INTO agents(name, kind, created_at) VALUES ('a', 'agent', 0)",
                [],
            )?;
            Ok(())
        });
        let bad = store.write(|c| {
            c.execute(
                "INSERT INTO agents(name, kind, created_at) VALUES ('b', 'agent', 0)",
                [],
            )?;
            Err::<(), _>(Error::invalid("x", "refused"))
        });
        let (ok, bad) = tokio::join!(ok, bad);
        ok.unwrap();
        assert_eq!(bad.unwrap_err().code(), "invalid_argument");
        let names: Vec<String> = store
            .read(|c| {
                let mut s = c.prepare("SELECT name FROM agents ORDER BY name")?;
                let rows = s.query_map([], |r| r.get(0))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
            .unwrap();
        assert_eq!(names, ["a"]);
    }

    #[tokio::test]
    async fn writes_after_close_fail_cleanly() {
        let (_dir, store) = open();
        store.close();
        let err = store.write(|_| Ok(())).await.unwrap_err();
        assert_eq!(err.code(), "shutting_down");
    }

    #[test]
    fn migrating_an_existing_database_gives_held_incarnations_uid_ranges() {
        let (_dir, path, c) = database_before("ADD COLUMN uid_base");
        for (name, state) in [
            ("a", "live"),
            ("b", "purged"),
            ("c", "tombstoned"),
            ("d", "live"),
        ] {
            c.execute(
                "INSERT INTO incarnations (name, kind, created_at, state) VALUES (?1, 'agent', 0, ?2)",
                [name, state],
            )
            .unwrap();
        }
        drop(c);
        let store = Store::open(&path, Synchronous::Normal).unwrap();
        store.close();
        let c = Connection::open(&path).unwrap();
        let ranges: Vec<(String, Option<i64>)> = c
            .prepare("SELECT name, uid_base FROM incarnations ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let r = |n: i64| Some(0x4000_0000 + n * 65536);
        assert_eq!(
            ranges,
            [
                ("a".to_owned(), r(0)),
                ("b".to_owned(), None),
                ("c".to_owned(), r(1)),
                ("d".to_owned(), r(2)),
            ]
        );
    }

    #[test]
    fn migrating_an_existing_database_fills_the_message_counts() {
        // A database from before the counts, with a history in it.
        let (_dir, path, c) = database_before("CREATE TABLE message_counts");
        {
            let mut insert = c
                .prepare(
                    "INSERT INTO messages (sender, recipient, body, sent_at, state)
                     VALUES ('operator', ?1, 'x', 0, ?2)",
                )
                .unwrap();
            for (to, state, n) in [
                ("bob", "queued", 3),
                ("bob", "delivered", 5),
                ("carol", "leased", 1),
                ("operator", "delivered", 2),
            ] {
                for _ in 0..n {
                    insert.execute([to, state]).unwrap();
                }
            }
        }
        drop(c);
        let store = Store::open(&path, Synchronous::Normal).unwrap();
        store.close();
        let c = Connection::open(&path).unwrap();
        let rows = |sql: &str| -> Vec<(String, String, i64)> {
            c.prepare(sql)
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let stored = rows("SELECT recipient, state, n FROM message_counts ORDER BY 1, 2");
        let counted =
            rows("SELECT recipient, state, count(*) FROM messages GROUP BY 1, 2 ORDER BY 1, 2");
        assert_eq!(stored, counted);
        assert_eq!(stored.len(), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_a_burst_the_idle_writer_closes_the_idle_readers() {
        let (_dir, store) = open();
        let idle_readers_closed = || async {
            // The writer gives memory back once it is idle: wait for that, observably.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !store.inner.readers.lock().unwrap().is_empty() {
                assert!(std::time::Instant::now() < deadline, "readers still open");
                tokio::task::yield_now().await;
            }
        };
        store.read(|_| Ok(())).await.unwrap();
        assert_eq!(store.inner.readers.lock().unwrap().len(), 1);
        // A burst the writer thread commits.
        let burst: Vec<_> = (0..RELEASE_AFTER)
            .map(|_| store.write(|c| Ok(c.execute_batch("SELECT 1")?)))
            .collect();
        for w in burst {
            w.await.unwrap();
        }
        idle_readers_closed().await;
        // A burst of sends committed one by one on this thread, the writer thread asleep.
        store.read(|_| Ok(())).await.unwrap();
        assert_eq!(store.inner.readers.lock().unwrap().len(), 1);
        for _ in 0..RELEASE_AFTER {
            store.write_then(|_| Ok(()), |_| {}).await.unwrap();
        }
        idle_readers_closed().await;
    }

    /// Storing a message and moving it between states builds no temporary b-tree: a CHECK with
    /// an IN list of more than two constants made SQLite build one per row (migration 0018).
    #[test]
    fn a_message_is_stored_and_moved_without_a_temporary_btree() {
        let (dir, store) = open();
        store.close();
        let c = Connection::open(dir.path().join("t.db")).unwrap();
        for sql in [
            "INSERT INTO messages (sender, recipient, body, in_reply_to, sent_at, incarnation)
             VALUES ('operator', 'bob', 'x', NULL, 0, 1)",
            "UPDATE messages SET state = 'delivered', delivered_at = 1 WHERE id = 1",
            "UPDATE messages SET state = 'leased', lease_turn = 1, leased_at = 1 WHERE id = 1",
            "UPDATE messages SET state = 'queued', lease_turn = NULL, redelivered = 1 WHERE id = 1",
        ] {
            let ops = texts(&c, &format!("EXPLAIN {sql}"), 1);
            assert!(
                !ops.iter().any(|op| op == "OpenEphemeral"),
                "{sql}: {ops:?}"
            );
        }
        // The rule still holds.
        let err = c
            .execute(
                "INSERT INTO messages (sender, recipient, body, sent_at, state)
                 VALUES ('operator', 'bob', 'x', 0, 'lost')",
                [],
            )
            .unwrap_err();
        assert!(err.to_string().contains("CHECK constraint failed"), "{err}");
        assert_eq!(
            c.query_row("SELECT count(*) FROM messages", [], |r| r.get::<_, i64>(0))
                .unwrap(),
            0
        );
    }

    /// Migration 0018 rebuilds `messages`: every row and count comes through as it was, and the
    /// WAL it wrote is given back.
    #[test]
    fn rebuilding_the_messages_table_keeps_every_row() {
        let (dir, path, c) = database_before("CREATE TABLE messages_new");
        let all_rows = "SELECT id, sender, recipient, body, in_reply_to, sent_at, state,
                               delivered_at, lease_turn, redelivered, incarnation, broadcast,
                               leased_at
                        FROM messages ORDER BY id";
        let dump = |c: &Connection, sql: &str| -> Vec<Vec<rusqlite::types::Value>> {
            let mut stmt = c.prepare(sql).unwrap();
            let n = stmt.column_count();
            stmt.query_map([], |r| (0..n).map(|i| r.get(i)).collect())
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let (rows_before, counts_before) = {
            // A history in every state.
            c.execute_batch(
                "INSERT INTO messages (sender, recipient, body, in_reply_to, sent_at, state,
                                       delivered_at, lease_turn, redelivered, incarnation,
                                       broadcast, leased_at)
                 VALUES ('operator', 'bob', 'a', NULL, 1, 'queued', NULL, NULL, 0, 3, 0, NULL),
                        ('carol', 'bob', 'b', 1, 2, 'leased', NULL, 7, 1, 3, 0, 5),
                        ('bob', 'operator', 'c', NULL, 3, 'delivered', 4, NULL, 0, NULL, 1, NULL);
                 DELETE FROM messages WHERE id = 1;
                 INSERT INTO messages (sender, recipient, body, sent_at) VALUES ('x', 'y', 'd', 9);",
            )
            .unwrap();
            // What agents write is hostile: a NUL byte and terminal escapes, a huge body, and a
            // name reused by a later agent (its earlier incarnation's messages stay its own).
            let mut insert = c
                .prepare(
                    "INSERT INTO messages (sender, recipient, body, sent_at, state, incarnation)
                     VALUES ('bob', ?1, ?2, 10, ?3, ?4)",
                )
                .unwrap();
            for (to, body, state, incarnation) in [
                (
                    "carol",
                    "nul\0byte \x1b]0;owned\x07\x1b[2J".to_owned(),
                    "queued",
                    4,
                ),
                ("carol", "x".repeat(2 << 20), "delivered", 4),
                ("bob", "from bob's first life".to_owned(), "queued", 1),
            ] {
                insert
                    .execute(rusqlite::params![to, body, state, incarnation])
                    .unwrap();
            }
            drop(insert);
            c.execute_batch(
                "DELETE FROM message_counts;
                 INSERT INTO message_counts (recipient, incarnation, state, n)
                     SELECT recipient, coalesce(incarnation, 0), state, count(*) FROM messages
                     GROUP BY 1, 2, 3;",
            )
            .unwrap();
            (
                dump(&c, all_rows),
                dump(&c, "SELECT * FROM message_counts ORDER BY 1, 2, 3"),
            )
        };
        assert_eq!(rows_before.len(), 6);
        drop(c);
        let store = Store::open(&path, Synchronous::Normal).unwrap();
        // Given back at once, not at the store's close.
        let wal = std::fs::metadata(dir.path().join("t.db-wal"))
            .unwrap()
            .len();
        assert_eq!(wal, 0, "the migration's WAL is folded in and truncated");
        store.close();
        let c = Connection::open(&path).unwrap();
        assert_eq!(dump(&c, all_rows), rows_before);
        // The NUL byte came through, and what follows it.
        let hostile: String = c
            .query_row(
                "SELECT body FROM messages WHERE recipient = 'carol' AND state = 'queued'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(hostile, "nul\0byte \x1b]0;owned\x07\x1b[2J");
        assert_eq!(
            dump(&c, "SELECT * FROM message_counts ORDER BY 1, 2, 3"),
            counts_before
        );
        // The next id is not one a deleted row had (no AUTOINCREMENT: the highest id + 1).
        c.execute(
            "INSERT INTO messages (sender, recipient, body, sent_at) VALUES ('x', 'y', 'e', 10)",
            [],
        )
        .unwrap();
        assert_eq!(c.last_insert_rowid(), 8);
        let indexes = texts(
            &c,
            "SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'messages'
             ORDER BY name",
            0,
        );
        assert_eq!(
            indexes,
            [
                "messages_by_recipient",
                "messages_delivered",
                "messages_leased",
                "messages_queued"
            ]
        );
    }

    /// Under a steady stream of commits the WAL starts over after each checkpoint pass instead of
    /// growing for as long as the stream lasts (SQLite restarts it only at a write that finds
    /// every frame copied back, which a checkpoint running beside the commits never leaves).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_steady_stream_of_commits_starts_the_wal_over() {
        let (dir, store) = open();
        const WRITES: usize = 20 * CHECKPOINT_EVERY;
        let body = "x".repeat(500);
        let next = Arc::new(AtomicUsize::new(0));
        let writers: Vec<_> = (0..16)
            .map(|_| {
                let (store, next, body) = (store.clone(), next.clone(), body.clone());
                tokio::spawn(async move {
                    while next.fetch_add(1, Ordering::Relaxed) < WRITES {
                        let body = body.clone();
                        store
                            .write(move |c| {
                                c.execute(
                                    "INSERT INTO messages (sender, recipient, body, sent_at)
                                     VALUES ('operator', 'bob', ?1, 0)",
                                    [body],
                                )?;
                                Ok(())
                            })
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        let wal = std::fs::metadata(dir.path().join("t.db-wal"))
            .unwrap()
            .len();
        // Never started over, the WAL ends at ~150 MB here (every commit's pages, appended);
        // started over after each pass, it holds what a few passes' commits wrote (~10 MB, ~20 MB
        // with the machine's cores busy with other work).
        assert!(wal < 64 << 20, "the WAL grew to {wal} bytes");
        store.close();
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 999)
            .unwrap();
        let err = Store::open(&path, Synchronous::Normal).err().unwrap();
        assert!(err.to_string().contains("newer"), "{err}");
    }
}
