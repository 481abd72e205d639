//! B3: initial sync of a large shape into a fresh client SQLite file, next to
//! rusqlite inserting the same rows into a fresh file in one transaction with
//! a cached prepared statement (the fastest a replica could be written).

use crate::cpu::CpuReading;
use crate::harness::{Bench, DB, wait_until_ready};
use crate::report::Figure;
use anyhow::ensure;
use std::time::{Duration, Instant};

pub async fn run(rows: u64) -> anyhow::Result<Vec<Figure>> {
    let bench = Bench::new("")?;
    eprintln!("B3: loading {rows} rows into Postgres…");
    bench.pg.psql(
        DB,
        &format!("INSERT INTO items (id, owner, title, n) SELECT g, 'alice', 'item ' || g, g % 1000 FROM generate_series(1, {rows}) g"),
    )?;
    let data_dir = bench.dir.path().join("data");
    let service = outpost::service::start(bench.config(&data_dir)).await?;
    eprintln!("B3: waiting for the service's snapshot…");
    wait_until_ready(&service, Duration::from_secs(1800)).await?;

    // Each side runs RUNS times, interleaved so that a slow spell of the
    // machine falls on both; each figure is the median run.
    let mut outpost_secs = Vec::with_capacity(RUNS);
    let mut baseline_secs = Vec::with_capacity(RUNS);
    for run in 1..=RUNS {
        eprintln!("B3: client initial sync ({run} of {RUNS})…");
        let db = bench.dir.path().join(format!("replica-{run}.db"));
        let opts = outpost_client::SyncOptions {
            once: true,
            ..outpost_client::SyncOptions::new(
                format!("http://{}", service.addr),
                bench.token("alice")?,
                &db,
            )
        };
        let cpu = CpuReading::now();
        let started = Instant::now();
        // When the checkpoint holding the last row committed: from then on
        // the app reads them all; the CPU figures cover the same span.
        let (events, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let committed = tokio::spawn(async move {
            let mut applied = 0;
            while let Some(event) = seen.recv().await {
                if let outpost_client::SyncEvent::Checkpoint { rows_applied, .. } = event {
                    applied += rows_applied;
                    if applied >= rows {
                        let secs = started.elapsed().as_secs_f64();
                        return Some((secs, cpu.report_since("B3 sync, to the commit")));
                    }
                }
            }
            None
        });
        let summary = outpost_client::sync_with_events(opts, events).await?;
        let returned = started.elapsed().as_secs_f64();
        let (committed, cpu) = committed
            .await?
            .ok_or_else(|| anyhow::anyhow!("no checkpoint committed the {rows} rows"))?;
        outpost_secs.push(committed);
        eprintln!("{cpu}; sync returned (replica closed) at {returned:.2} s");
        ensure!(
            summary.rows_received == rows,
            "the client received {} rows, expected {rows}",
            summary.rows_received
        );
        remove_database(&db);
        eprintln!("B3: rusqlite baseline ({run} of {RUNS})…");
        baseline_secs.push(tokio::task::spawn_blocking(move || baseline(rows)).await??);
    }
    service.shutdown().await?;
    Ok(vec![Figure::higher_is_better(
        "B3",
        "rows/s, service → fresh client replica, to the commit (median of 3)",
        rows as f64 / median(&mut outpost_secs),
        rows as f64 / median(&mut baseline_secs),
        "rusqlite: one transaction, cached prepared insert",
        0.5,
    )])
}

/// Runs of each side.
const RUNS: usize = 3;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Removes a SQLite file and its companions (best effort: only disk space).
fn remove_database(db: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}

fn baseline(rows: u64) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    let mut conn = rusqlite::Connection::open(dir.path().join("baseline.db"))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // The replica's durability: a commit is not synced to disk at once.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(
        "CREATE TABLE items (id INTEGER, owner TEXT, title TEXT, n INTEGER, created_at TEXT, PRIMARY KEY (id))",
    )?;
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO items (id, owner, title, n, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for id in 1..=rows as i64 {
            stmt.execute(rusqlite::params![
                id,
                "alice",
                format!("item {id}"),
                id % 1000,
                "2026-01-01T00:00:00.123456Z"
            ])?;
        }
    }
    tx.commit()?;
    Ok(started.elapsed().as_secs_f64())
}
