//! B1 and B2: draining a WAL backlog into the service's durable store, next
//! to `pg_recvlogical` draining an identical slot over the same backlog.
//!
//! Both slots are created before the backlog is written, so both decode the
//! same WAL. Outpost runs first, so the baseline gets the warmer page cache.
//!
//! Outpost's time ends when a separate reader of the store sees a durable
//! position at or past the end of the backlog. The reader keeps one
//! connection open and polls every 2 ms: opening the database on each poll
//! would take CPU from the service on a small machine.

use crate::cpu::CpuReading;
use crate::harness::{Bench, rss_bytes, run_pg_tool, store_position, wait_for_store};
use crate::report::Figure;
use anyhow::bail;
use outpost::lsn::Lsn;
use outpost::store::{ReaderPool, database_path};
use std::path::Path;
use std::time::{Duration, Instant};

/// Waits until the store at `data_dir` (which exists) has an epoch and a
/// durable LSN at or past `target`; returns when it got there.
async fn wait_durable(data_dir: &Path, target: Lsn, limit: Duration) -> anyhow::Result<Instant> {
    let started = Instant::now();
    let pool = ReaderPool::new(&database_path(data_dir), 1);
    loop {
        if let Ok(c) = pool.read(|t| t.checkpoint())
            && !c.epoch.is_empty()
            && c.lsn >= target
        {
            return Ok(Instant::now());
        }
        if started.elapsed() > limit {
            bail!(
                "the service did not reach {target} within {limit:?} (at {:?})",
                store_position(data_dir)
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub enum Backlog {
    /// This many single-row transactions.
    SingleRowTxns(u64),
    /// One transaction of this many rows.
    OneTxn(u64),
}

pub async fn run(id: &str, backlog: Backlog) -> anyhow::Result<Vec<Figure>> {
    let bench = Bench::new("")?;
    let data_dir = bench.dir.path().join("data");
    // First start: creates the slot, the publication and the (empty) store.
    let service = outpost::service::start(bench.config(&data_dir)).await?;
    wait_for_store(&data_dir, Lsn::ZERO, Duration::from_secs(60)).await?;
    service.shutdown().await?;
    bench.pg.psql(
        crate::harness::DB,
        "SELECT pg_create_logical_replication_slot('baseline', 'pgoutput')",
    )?;

    let rows = match backlog {
        Backlog::SingleRowTxns(n) => {
            eprintln!("{id}: writing {n} single-row transactions…");
            bench.pg.psql(
                crate::harness::DB,
                &format!(
                    "{} CALL single_row_txns({n}, 1)",
                    crate::harness::NO_FLUSH_WAIT
                ),
            )?;
            n
        }
        Backlog::OneTxn(n) => {
            eprintln!("{id}: writing one transaction of {n} rows…");
            bench.pg.psql(
                crate::harness::DB,
                &format!(
                    "INSERT INTO items (id, owner, title, n) SELECT g, 'alice', 'item ' || g, g % 1000 FROM generate_series(1, {n}) g"
                ),
            )?;
            n
        }
    };
    let target = bench.current_lsn()?;

    eprintln!("{id}: outpost draining to {target}…");
    let rss_before = rss_bytes();
    let cpu = CpuReading::now();
    let started = Instant::now();
    let service = outpost::service::start(bench.config(&data_dir)).await?;
    // RSS over time: whole-transaction buffering would show as growth in
    // the second half of the drain as much as in the first.
    let samples = std::sync::Arc::new(std::sync::Mutex::new(vec![(0.0f64, rss_before)]));
    let sampler = {
        let samples = samples.clone();
        tokio::spawn(async move {
            loop {
                let at = started.elapsed().as_secs_f64();
                if let Ok(mut s) = samples.lock() {
                    s.push((at, rss_bytes()));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let done = wait_durable(&data_dir, target, Duration::from_secs(1800)).await?;
    let outpost_secs = (done - started).as_secs_f64();
    eprintln!("{}", cpu.report_since(&format!("{id} drain")));
    sampler.abort();
    let samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
    let peak_until = |until: f64| {
        samples
            .iter()
            .filter(|(at, _)| *at <= until)
            .map(|(_, rss)| *rss)
            .max()
            .unwrap_or(rss_before)
    };
    let peak = peak_until(f64::MAX).max(rss_bytes());
    let first_half = peak_until(outpost_secs / 2.0);
    service.shutdown().await?;
    let position = store_position(&data_dir).map(|p| p.1).unwrap_or_default();

    eprintln!("{id}: pg_recvlogical draining the same backlog…");
    let url = bench.pg.url(crate::harness::DB);
    let started = Instant::now();
    run_pg_tool(
        &bench,
        "pg_recvlogical",
        &[
            "-d",
            &url,
            "--slot",
            "baseline",
            "--start",
            "--no-loop",
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=outpost",
            "-E",
            &target.to_string(),
            "-f",
            "/dev/null",
        ],
    )?;
    let baseline_secs = started.elapsed().as_secs_f64();

    let mut figures = vec![Figure::higher_is_better(
        id,
        "rows/s drained to a durable store",
        rows as f64 / outpost_secs,
        rows as f64 / baseline_secs,
        "pg_recvlogical --endpos, pgoutput, to /dev/null",
        0.9,
    )];
    if let Backlog::OneTxn(_) = backlog {
        figures.push(Figure::info(
            &format!("{id}-rss"),
            "service RSS growth while draining, MB",
            peak.saturating_sub(rss_before) as f64 / 1e6,
        ));
        figures.push(Figure::info(
            &format!("{id}-rss2"),
            "of which in the second half of the drain, MB (flat: ~0)",
            peak.saturating_sub(first_half) as f64 / 1e6,
        ));
    }
    eprintln!("{id}: store reached {position}");
    Ok(figures)
}
