//! `outpost-client`: sync a replica from an Outpost service, and look inside it.
//!
//! ```text
//! outpost-client sync   --server URL --token TOKEN --db FILE [--shape NAME]... [--once]
//! outpost-client status --db FILE
//! outpost-client query  --db FILE "SQL"
//! outpost-client exec   --db FILE "SQL"
//! ```
//!
//! Progress goes to stderr (at most a few lines per second during a large
//! download); query results go to stdout. Logs follow `RUST_LOG` (default `info`).

use anyhow::Context;
use clap::{Parser, Subcommand};
use outpost_client::{LocalDb, Replica, SyncEvent, SyncOptions, WriteStatus, format_lsn, inspect};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "outpost-client",
    version,
    about = "Keep a SQLite replica in sync with an Outpost service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download the user's shapes into the replica, upload its local writes,
    /// and keep both up to date.
    Sync {
        /// The service address, e.g. http://localhost:4000.
        #[arg(long)]
        server: String,
        /// The user's token.
        #[arg(long, env = "OUTPOST_TOKEN", hide_env_values = true)]
        token: String,
        /// The replica file (created if missing).
        #[arg(long)]
        db: PathBuf,
        /// A shape to sync (repeatable); none means the schema's default set.
        /// Narrow a shape with its declared parameters: `NAME:PARAM=VALUE,…`.
        #[arg(long = "shape", value_name = "NAME[:PARAM=VALUE,…]")]
        shapes: Vec<String>,
        /// Stop once the replica has caught up with the service and every
        /// local write has been answered and, if applied, synced back.
        #[arg(long)]
        once: bool,
    },
    /// Show the last checkpoint, buckets, tables, pending writes and recent
    /// rejections of a replica.
    Status {
        /// The replica file.
        #[arg(long)]
        db: PathBuf,
    },
    /// Run a read-only SQL query on a replica; prints tab-separated rows.
    Query {
        /// The replica file.
        #[arg(long)]
        db: PathBuf,
        /// The query.
        sql: String,
    },
    /// Write to a replica's tables with SQL, in one transaction (one op group
    /// the next sync uploads); prints how many rows changed.
    Exec {
        /// The replica file (synced at least once).
        #[arg(long)]
        db: PathBuf,
        /// INSERT, UPDATE and DELETE statements, separated by `;`.
        sql: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Sync {
            server,
            token,
            db,
            shapes,
            once,
        } => {
            let opts = SyncOptions {
                shapes,
                once,
                ..SyncOptions::new(server, token, db)
            };
            run_sync(opts).await
        }
        Command::Status { db } => {
            let replica = Replica::open_read_only(&db)?;
            print!("{}", inspect::status_report(&replica)?);
            Ok(())
        }
        Command::Query { db, sql } => {
            let replica = Replica::open_read_only(&db)?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            inspect::write_query(replica.connection(), &sql, &mut out)?;
            std::io::Write::flush(&mut out).context("writing the query output")?;
            Ok(())
        }
        Command::Exec { db, sql } => {
            // Refuses files that hold no replica before opening for writing.
            drop(Replica::open_read_only(&db)?);
            let mut local = LocalDb::open(&db)?;
            let changed = local
                .execute_group(&sql)
                .with_context(|| format!("writing to {}", db.display()))?;
            println!("{changed} row(s) changed");
            Ok(())
        }
    }
}

async fn run_sync(opts: SyncOptions) -> anyhow::Result<()> {
    let db = opts.db.clone();
    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let progress = tokio::spawn(show_progress(events_rx));
    let result = tokio::select! {
        result = outpost_client::sync_with_events(opts, events_tx) => Some(result),
        _ = tokio::signal::ctrl_c() => None,
    };
    // The sync future (and its event sender) is gone: the printer drains and stops.
    let _ = progress.await;
    match result {
        Some(Ok(summary)) => {
            if summary.groups_uploaded > 0 || summary.groups_rejected > 0 {
                eprintln!(
                    "uploaded {} local write group(s), {} rejected",
                    summary.groups_uploaded + summary.groups_rejected,
                    summary.groups_rejected
                );
            }
            match &summary.last {
                Some(cp) => eprintln!(
                    "synced {}: {} checkpoint(s), {} rows received; at op {} LSN {}",
                    db.display(),
                    summary.checkpoints,
                    summary.rows_received,
                    cp.op_id,
                    format_lsn(cp.lsn)
                ),
                None => eprintln!("synced {}: no checkpoint received", db.display()),
            }
            Ok(())
        }
        Some(Err(e)) => Err(e).with_context(|| format!("syncing {}", db.display())),
        None => {
            eprintln!("interrupted; the replica keeps its last complete checkpoint");
            Ok(())
        }
    }
}

/// Prints checkpoints as they are applied, and a running row count during
/// long downloads, at most twice a second.
async fn show_progress(mut events: tokio::sync::mpsc::UnboundedReceiver<SyncEvent>) {
    const EVERY: Duration = Duration::from_millis(500);
    let mut last_line = Instant::now();
    let mut received_total = 0u64;
    let mut pending_printed = false;
    let mut first = true;
    while let Some(event) = events.recv().await {
        match event {
            SyncEvent::Progress { rows_pending } if last_line.elapsed() >= EVERY => {
                eprintln!("downloading: {rows_pending} rows received");
                last_line = Instant::now();
                pending_printed = true;
            }
            SyncEvent::Checkpoint {
                op_id,
                lsn,
                rows_applied,
            } => {
                received_total += rows_applied;
                if rows_applied > 0 || pending_printed || first {
                    eprintln!(
                        "checkpoint op {op_id} at LSN {}: {rows_applied} rows applied ({received_total} this run)",
                        format_lsn(lsn)
                    );
                    last_line = Instant::now();
                }
                pending_printed = false;
                first = false;
            }
            SyncEvent::Disconnected { .. } => pending_printed = false,
            SyncEvent::WriteResult {
                seq,
                status: WriteStatus::Rejected,
                reason,
            } => {
                eprintln!(
                    "local write {seq} rejected: {}; its rows are back to the server's values",
                    reason.as_deref().unwrap_or("no reason given")
                );
            }
            SyncEvent::WriteFailed { error } => {
                eprintln!("uploading local writes failed ({error}); retrying");
            }
            _ => {}
        }
    }
}
