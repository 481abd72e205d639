//! The `outpost` binary.
//!
//! - `outpost serve --config FILE`: run the service (settings also from
//!   `OUTPOST_…` environment variables).
//! - `outpost check --config FILE`: validate the schema files against the
//!   live catalog and exit.
//! - `outpost dev`: a throwaway Postgres with the example app, the service and
//!   demo tokens, for trying Outpost locally.

use anyhow::Context;
use clap::{Parser, Subcommand};
use outpost::config::ServiceConfig;
use std::path::PathBuf;
use tracing_subscriber::EnvFilter;

mod dev;

#[derive(Parser)]
#[command(
    name = "outpost",
    version,
    about = "Sync slices of Postgres to SQLite replicas on users' devices"
)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "OUTPOST_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sync service.
    Serve {
        /// Config file (TOML); every setting can also come from OUTPOST_* variables.
        #[arg(long, env = "OUTPOST_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate the schema files against the live database, then exit.
    Check {
        #[arg(long, env = "OUTPOST_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Local demo: throwaway Postgres, the example todo app, the service, demo tokens.
    Dev(dev::DevArgs),
}

fn init_logging(json: bool, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo prints its own story; its logs only say what went wrong.
    let default_level = if matches!(cli.command, Command::Dev(_)) {
        "warn"
    } else {
        "info"
    };
    init_logging(cli.log_json, default_level);
    match cli.command {
        Command::Serve { config } => {
            let cfg = ServiceConfig::load(config.as_deref())?;
            let service = outpost::service::start(cfg).await?;
            let wait = service_wait(service);
            wait.await
        }
        Command::Check { config } => {
            let cfg = ServiceConfig::load(config.as_deref())?;
            match outpost::service::compile_schema(&cfg).await {
                Ok(schema) => {
                    println!(
                        "ok: {} shape(s) over {} table(s) in {}",
                        schema.shapes.len(),
                        schema.tables.len(),
                        cfg.schema_dir.display()
                    );
                    Ok(())
                }
                Err(outpost::service::ServiceError::Schema(errors)) => {
                    eprintln!("{errors}");
                    std::process::exit(1);
                }
                Err(e) => Err(e).context("checking the schema"),
            }
        }
        Command::Dev(args) => dev::run(args).await,
    }
}

/// Resolves on Ctrl-C or SIGTERM, whichever comes first.
fn stop_requested() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    })
}

/// Runs until Ctrl-C or SIGTERM (then shuts down cleanly) or a definite error.
async fn service_wait(service: outpost::service::RunningService) -> anyhow::Result<()> {
    let stop = stop_requested()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        stop.await;
        let _ = stop_tx.send(());
    });
    let outcome = service.run_until(async {
        let _ = stop_rx.await;
    });
    outcome.await.context("the service stopped")
}
