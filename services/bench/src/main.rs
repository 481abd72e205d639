//! `outpost-bench`: runs Outpost's workloads on a throwaway Postgres cluster
//! and prints each figure next to a baseline measured in the same run, on
//! the same machine and data, as a ratio (machines here are shared and noisy:
//! only ratios mean anything).
//!
//! ```text
//! cargo run --release -p outpost-bench -- all            # every workload
//! cargo run --release -p outpost-bench -- b1 --json out.json
//! ```

mod cpu;
mod drain;
mod harness;
mod initial_sync;
mod latency;
mod report;
mod streams;
mod writes;

use clap::{Parser, ValueEnum};
use std::path::PathBuf;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// Every workload.
    All,
    /// WAL backlog of single-row transactions → durable store, vs pg_recvlogical.
    B1,
    /// One large transaction → durable store, vs pg_recvlogical; RSS growth.
    B2,
    /// Initial sync into a fresh client replica, vs rusqlite bulk insert.
    B3,
    /// Commit → replica latency at a fixed change rate, 1 and 1,000 clients.
    B4,
    /// Many concurrent streams: time per change with 10 vs many streams, RSS per idle stream.
    B5,
    /// Writes through the service from 8 clients, vs pgbench upserts.
    B6,
}

#[derive(Parser)]
#[command(
    name = "outpost-bench",
    about = "Outpost benchmarks, each as a ratio against a baseline from the same run"
)]
struct Cli {
    #[arg(value_enum)]
    workload: Workload,
    /// Scale every row count by this factor (e.g. 0.1 for a quick run).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Write the figures to this JSON file.
    #[arg(long, default_value = "bench-results.json")]
    json: PathBuf,
}

/// Writes every dirty page to disk before a workload starts: what the one
/// before left for the kernel to write back (gigabytes after B2 and B3)
/// would otherwise hold up the next one's syncs (B4's p99 read 0.9 s after
/// B3 and 16 ms alone).
fn settle() {
    if let Err(e) = std::process::Command::new("sync").status() {
        tracing::warn!(error = %e, "could not run `sync` before a workload");
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let n = |base: u64| ((base as f64 * cli.scale) as u64).max(1);
    let mut figures = Vec::new();
    let all = cli.workload == Workload::All;
    if all || cli.workload == Workload::B1 {
        settle();
        figures.extend(drain::run("B1", drain::Backlog::SingleRowTxns(n(100_000))).await?);
    }
    if all || cli.workload == Workload::B2 {
        settle();
        figures.extend(drain::run("B2", drain::Backlog::OneTxn(n(1_000_000))).await?);
    }
    if all || cli.workload == Workload::B3 {
        settle();
        figures.extend(initial_sync::run(n(1_000_000)).await?);
    }
    if all || cli.workload == Workload::B4 {
        settle();
        let seconds = ((10.0 * cli.scale).ceil() as u32).max(2);
        figures.extend(latency::run(1, 1000, seconds).await?);
        figures.extend(latency::run(n(1000) as usize, 1000, seconds).await?);
    }
    if all || cli.workload == Workload::B5 {
        settle();
        figures.extend(streams::run(n(10_000) as usize, n(60_000)).await?);
    }
    if all || cli.workload == Workload::B6 {
        settle();
        figures.extend(writes::run(n(20_000)).await?);
    }
    println!(
        "\nPostgres clusters with fsync = {} (OUTPOST_BENCH_FSYNC=off|on)\n",
        harness::fsync()
    );
    report::print_table(&figures);
    std::fs::write(&cli.json, serde_json::to_string_pretty(&figures)?)?;
    println!("\nfigures written to {}", cli.json.display());
    Ok(())
}
