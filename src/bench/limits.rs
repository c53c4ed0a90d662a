//! Row 1: the physical limits the hive chases, measured in this run — a bare sqlite WAL commit of
//! one 200-byte row (and of 8 and 64 rows), the same into the hive's own `messages` schema, a bare
//! 200-byte unix-socket round trip, and a thread wake-up round trip.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use anyhow::Context;
use rusqlite::Connection;

use crate::stats::Samples;

/// The body every benchmark writes.
pub const BODY_BYTES: usize = 200;

/// Bare sqlite figures for one `synchronous` setting.
#[derive(Debug, Clone)]
pub struct SqliteLimit {
    /// One row per commit, one thread.
    pub commit: Samples,
    /// Commits per second from one thread (one row each).
    pub commits_per_s: f64,
    /// Rows per second with 8 rows per commit.
    pub rows8_per_s: f64,
    /// Rows per second with 64 rows per commit.
    pub rows64_per_s: f64,
}

/// The table a bare commit writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// `t(id INTEGER PRIMARY KEY, body TEXT)`: nothing but the row.
    Bare,
    /// The hive's own `messages` table (with its indexes), created by the broker's migrations:
    /// what a send must write, without the broker around it.
    Hive,
}

/// A fresh temp database for bare commits, outside the broker.
pub struct BareDb {
    conn: Connection,
    insert_sql: &'static str,
    body: String,
    senders: Vec<String>,
    _dir: tempfile::TempDir,
}

impl BareDb {
    /// Creates the database with `synchronous = pragma` (`NORMAL` or `FULL`).
    pub fn open(schema: Schema, pragma: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("cannot create a temp dir")?;
        let path = dir.path().join("bare.db");
        let insert_sql = match schema {
            Schema::Bare => {
                let conn = Connection::open(&path)?;
                conn.execute_batch(
                    "PRAGMA journal_mode = WAL;
                     CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT NOT NULL);",
                )?;
                // ?1 (the sender) is bound and unused.
                "INSERT INTO t (body) VALUES (?2)"
            }
            Schema::Hive => {
                let store = broker::store::Store::open(&path, broker::config::Synchronous::Normal)?;
                store.close();
                "INSERT INTO messages (sender, recipient, body, in_reply_to, sent_at)
                 VALUES (?1, 'manager', ?2, NULL, 0)"
            }
        };
        let conn = Connection::open(&path)?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {pragma};"
        ))?;
        Ok(Self {
            conn,
            insert_sql,
            body: "x".repeat(BODY_BYTES),
            // Row k of a commit comes from sender k, as in row 4 (one sender per concurrent agent).
            senders: (0..64).map(|i| format!("sender-{i}")).collect(),
            _dir: dir,
        })
    }

    /// One transaction of `rows` rows, committed.
    pub fn commit(&self, rows: usize) -> anyhow::Result<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        {
            let mut insert = self.conn.prepare_cached(self.insert_sql)?;
            for k in 0..rows {
                insert.execute([&self.senders[k % self.senders.len()], &self.body])?;
            }
        }
        self.conn.execute_batch("COMMIT")?;
        Ok(())
    }

    /// Rows per second committing `rows` rows per transaction, back to back, for `run`.
    pub fn rate(&self, rows: usize, run: Duration) -> anyhow::Result<f64> {
        for _ in 0..10 {
            self.commit(rows)?;
        }
        let start = Instant::now();
        let mut done = 0;
        while start.elapsed() < run {
            self.commit(rows)?;
            done += rows;
        }
        Ok(done as f64 / start.elapsed().as_secs_f64())
    }
}

/// Measures single-row commits, then 8- and 64-row commits, from one thread in a fresh temp db
/// with `synchronous = pragma` (`NORMAL` or `FULL`).
pub fn sqlite(schema: Schema, pragma: &str, commits: usize) -> anyhow::Result<SqliteLimit> {
    let db = BareDb::open(schema, pragma)?;
    for _ in 0..(commits / 10).max(20) {
        db.commit(1)?;
    }
    let mut samples = Vec::with_capacity(commits);
    let start = Instant::now();
    for _ in 0..commits {
        let t0 = Instant::now();
        db.commit(1)?;
        samples.push(t0.elapsed());
    }
    let commits_per_s = commits as f64 / start.elapsed().as_secs_f64();
    let batched = |rows: usize| -> anyhow::Result<f64> {
        let n = (commits / 4).max(50);
        let start = Instant::now();
        for _ in 0..n {
            db.commit(rows)?;
        }
        Ok((n * rows) as f64 / start.elapsed().as_secs_f64())
    };
    let rows8_per_s = batched(8)?;
    let rows64_per_s = batched(64)?;
    Ok(SqliteLimit {
        commit: Samples::new(samples),
        commits_per_s,
        rows8_per_s,
        rows64_per_s,
    })
}

/// A wake-up round trip between two threads (std channels both ways: two wake-ups), each after
/// `idle` of doing nothing — how long this machine takes to wake a thread that sleeps. The hive's
/// send → waiting recv path crosses threads twice in process (the sending task → the writer → the
/// waiting task), more over a socket.
pub fn thread_wake(round_trips: usize, idle: Duration) -> anyhow::Result<Samples> {
    let (ping_tx, ping_rx) = std::sync::mpsc::channel::<()>();
    let (pong_tx, pong_rx) = std::sync::mpsc::channel::<()>();
    let partner = std::thread::spawn(move || {
        while ping_rx.recv().is_ok() {
            if pong_tx.send(()).is_err() {
                return;
            }
        }
    });
    let mut samples = Vec::with_capacity(round_trips);
    for i in 0..round_trips + round_trips / 10 {
        if !idle.is_zero() {
            std::thread::sleep(idle);
        }
        let t0 = Instant::now();
        ping_tx.send(())?;
        pong_rx.recv()?;
        if i >= round_trips / 10 {
            samples.push(t0.elapsed());
        }
    }
    drop(ping_tx);
    partner
        .join()
        .map_err(|_| anyhow::anyhow!("the partner thread panicked"))?;
    Ok(Samples::new(samples))
}

/// A 200-byte round trip over a unix socket pair to an echo thread.
pub fn unix_socket(round_trips: usize) -> anyhow::Result<Samples> {
    let (mut client, mut server) = UnixStream::pair()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = [0u8; BODY_BYTES];
        loop {
            match server.read_exact(&mut buf) {
                Ok(()) => server.write_all(&buf)?,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    });
    let out = [b'x'; BODY_BYTES];
    let mut back = [0u8; BODY_BYTES];
    let mut samples = Vec::with_capacity(round_trips);
    for i in 0..round_trips + round_trips / 10 {
        let t0 = Instant::now();
        client.write_all(&out)?;
        client.read_exact(&mut back)?;
        if i >= round_trips / 10 {
            samples.push(t0.elapsed());
        }
    }
    drop(client);
    echo.join()
        .map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
    Ok(Samples::new(samples))
}

/// All of row 1.
#[derive(Debug, Clone)]
pub struct Limits {
    pub normal: SqliteLimit,
    pub full: SqliteLimit,
    /// The hive's `messages` schema, bare (no broker).
    pub schema_normal: SqliteLimit,
    pub schema_full: SqliteLimit,
    pub uds: Samples,
    /// Thread wake-up round trips, back to back and after 0.5 ms idle.
    pub wake_hot: Samples,
    pub wake_idle: Samples,
}

/// The idle gap before each cold wake-up sample (the latency rows pause as long between samples).
pub const IDLE: Duration = Duration::from_micros(500);

impl Limits {
    pub fn measure(quick: bool) -> anyhow::Result<Self> {
        let (normal_n, full_n, uds_n, wake_n) = if quick {
            (1000, 200, 2000, 300)
        } else {
            (4000, 800, 10_000, 2000)
        };
        Ok(Self {
            normal: sqlite(Schema::Bare, "NORMAL", normal_n)?,
            full: sqlite(Schema::Bare, "FULL", full_n)?,
            schema_normal: sqlite(Schema::Hive, "NORMAL", normal_n)?,
            schema_full: sqlite(Schema::Hive, "FULL", full_n)?,
            uds: unix_socket(uds_n)?,
            wake_hot: thread_wake(uds_n, Duration::ZERO)?,
            wake_idle: thread_wake(wake_n, IDLE)?,
        })
    }

    /// The bare commit p50 for a `synchronous` setting.
    pub fn commit_p50(&self, full: bool) -> Duration {
        if full {
            self.full.commit.p50()
        } else {
            self.normal.commit.p50()
        }
    }
}
