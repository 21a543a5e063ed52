//! The SQLite backend's one writer thread and its checkpointer.
//!
//! Every write is a job the writer runs inside the transaction of the batch
//! it lands in, each in its own savepoint, so one failing write rolls back
//! alone while the whole batch shares one commit (one fsync).
//!
//! Checkpoints (copying the write-ahead log back into the database file,
//! with an fsync of their own) run on a thread of their own, so that a commit
//! does not wait for one.

use std::sync::{mpsc, Mutex};
use std::time::Duration;

use rusqlite::Connection;

/// Most writes one transaction takes; bounds the latency a big batch adds.
const MAX_BATCH: usize = 512;
/// The least time between two background checkpoints. Short, so that the
/// log stays small: a checkpoint's fsync of the database file holds up the
/// commits' fsyncs of the log while it lasts, and how long it lasts grows
/// with what was written since the last one. Measured with `herald bench`
/// (BENCHMARKS.md), 20 ms kept the p99 of triggers at a quarter load near
/// 4 ms where 100 ms let it reach 5 to 11 ms, and a second let the log grow
/// and made most commits slower.
const CHECKPOINT_PAUSE: Duration = Duration::from_millis(20);
/// WAL pages after which the writer checkpoints on its own, if the
/// checkpointer has fallen that far behind (4 KiB pages: about 40 MiB).
pub(super) const WRITER_CHECKPOINT_PAGES: u32 = 10_000;

pub(super) type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
pub(super) type Job = Box<dyn FnOnce(&Connection) -> (bool, Reply) + Send>;

/// The handle the store keeps; dropping it lets the writer finish what is
/// queued and stop.
pub(super) struct Writer {
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl Writer {
    /// Starts the writer on `conn` and the checkpointer on `checkpointer`,
    /// two connections to the same database.
    pub(super) fn start(conn: Connection, checkpointer: Connection) -> std::io::Result<Writer> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (hint, hints) = mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("herald-sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, hints))?;
        std::thread::Builder::new()
            .name("herald-sqlite-writer".into())
            .spawn(move || write_loop(conn, queue, hint))?;
        Ok(Writer {
            jobs: Mutex::new(jobs),
        })
    }

    /// Queues `job`; false if the writer has stopped.
    pub(super) fn submit(&self, job: Job) -> bool {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .is_ok()
    }
}

fn write_loop(conn: Connection, queue: mpsc::Receiver<Job>, checkpoint: mpsc::SyncSender<()>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        batch.extend(queue.try_iter().take(MAX_BATCH - 1));
        if run_batch(&conn, batch) {
            // Full means a hint is already waiting; either way, go on.
            let _ = checkpoint.try_send(());
        }
    }
}

/// Runs one batch in one transaction and answers each write after the
/// commit; whether it committed.
fn run_batch(conn: &Connection, batch: Vec<Job>) -> bool {
    if let Err(e) = run_cached(conn, "BEGIN IMMEDIATE") {
        tracing::error!(error = %e, "could not begin a write transaction");
        // Run nothing; every waiting write fails (dropping a job drops its
        // reply channel, which its caller sees as an error).
        return false;
    }
    let mut replies = Vec::with_capacity(batch.len());
    for job in batch {
        if let Err(e) = run_cached(conn, "SAVEPOINT w") {
            tracing::error!(error = %e, "could not open a savepoint");
            continue;
        }
        // A panic in one write must not take the writer (and every later
        // write) down with it: its savepoint is rolled back and its caller
        // sees the write dropped.
        let (ok, reply) = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(conn)))
        {
            Ok((ok, reply)) => (ok, Some(reply)),
            Err(_) => {
                tracing::error!("a store write panicked");
                (false, None)
            }
        };
        let end = if ok {
            run_cached(conn, "RELEASE w")
        } else {
            run_cached(conn, "ROLLBACK TO w").and_then(|()| run_cached(conn, "RELEASE w"))
        };
        if let Err(e) = end {
            tracing::error!(error = %e, "could not close a savepoint");
        }
        replies.extend(reply);
    }
    let commit = run_cached(conn, "COMMIT").map_err(|e| e.to_string());
    if commit.is_err() {
        let _ = run_cached(conn, "ROLLBACK");
    }
    let committed = commit.is_ok();
    for reply in replies {
        reply(commit.clone());
    }
    committed
}

/// Runs a statement without parameters from the statement cache.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// After commits, copies the log back into the database file, without
/// blocking the writer (a passive checkpoint takes no lock the writer
/// needs), at most once per [`CHECKPOINT_PAUSE`]. Stops with the writer.
fn checkpoint_loop(conn: Connection, hints: mpsc::Receiver<()>) {
    while hints.recv().is_ok() {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "background checkpoint failed");
        }
        std::thread::sleep(CHECKPOINT_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection to `path` in WAL mode, as the store opens them.
    fn wal_connection(path: &std::path::Path) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn
    }

    #[test]
    fn a_dropped_writer_finishes_its_queue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let open = || wal_connection(&path);
        open().execute_batch("CREATE TABLE t (x)").unwrap();
        let writer = Writer::start(open(), open()).unwrap();
        let (tx, rx) = mpsc::channel();
        for x in 0..100 {
            let tx = tx.clone();
            assert!(writer.submit(Box::new(move |conn| {
                let ok = conn.execute("INSERT INTO t VALUES (?1)", [x]).is_ok();
                (ok, Box::new(move |r| tx.send(r).unwrap()))
            })));
        }
        drop(writer);
        for _ in 0..100 {
            assert_eq!(rx.recv().unwrap(), Ok(()));
        }
        let count: i64 = open()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 100);
    }

    #[test]
    fn the_log_is_copied_back_off_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let open = || wal_connection(&path);
        open()
            .execute_batch("CREATE TABLE t (x BLOB); PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        let writer_conn = open();
        // The writer never checkpoints by itself here.
        writer_conn
            .pragma_update(None, "wal_autocheckpoint", 0)
            .unwrap();
        let writer = Writer::start(writer_conn, open()).unwrap();
        let (tx, rx) = mpsc::channel();
        let tx = tx.clone();
        assert!(writer.submit(Box::new(move |conn| {
            let ok = conn
                .execute("INSERT INTO t VALUES (zeroblob(1000000))", [])
                .is_ok();
            (ok, Box::new(move |r| tx.send(r).unwrap()))
        })));
        assert_eq!(rx.recv().unwrap(), Ok(()));
        // The database file grows only when a checkpoint copies the row in.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&path).unwrap().len() < before + 900_000 {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint copied the log back"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
