//! What every benchmark needs: a throwaway cluster with a database, the
//! service's configuration, tokens, and readings of the service's store and
//! of this process's memory.
//!
//! The cluster is durable, as a deployed one is (`fsync = on`; the test
//! clusters turn it off): a commit waits for its WAL to reach the disk, in
//! the baselines as in the service's runs. `OUTPOST_BENCH_FSYNC=off` runs
//! every workload on a cluster that does not wait.

use anyhow::{Context, bail};
use outpost::auth::AuthConfig;
use outpost::config::ServiceConfig;
use outpost::lsn::Lsn;
use outpost::pgcluster::{PgCluster, PgClusterOptions};
use outpost::service::RunningService;
use outpost::store::{ReaderPool, database_path};
use std::path::Path;
use std::time::{Duration, Instant};

pub const DB: &str = "bench";

/// The table every benchmark uses and its per-user shape.
pub const TABLE_SQL: &str = "
CREATE TABLE items (
    id bigint PRIMARY KEY,
    owner text NOT NULL,
    title text NOT NULL,
    n integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE PROCEDURE single_row_txns(total bigint, first bigint) LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN first .. first + total - 1 LOOP
        INSERT INTO items (id, owner, title, n) VALUES (i, 'alice', 'item ' || i, i % 1000);
        COMMIT;
    END LOOP;
END $$;
";

pub const SHAPES: &str = r#"
[shapes.my_items]
table = "items"
where = "owner = auth.sub"

[tables.items]
insert = "new.owner = auth.sub"
update = "old.owner = auth.sub AND new.owner = auth.sub"
"#;

/// Set before transactions that only build a backlog or a burst for the
/// service to read: they commit without waiting for their WAL flush, so
/// the same transactions and WAL are written at the service's pace rather
/// than the disk's (the WAL writer flushes at least every megabyte, and
/// the walsender sends what is flushed).
pub const NO_FLUSH_WAIT: &str = "SET synchronous_commit = off;";

/// The cluster's `fsync`: `on` unless `OUTPOST_BENCH_FSYNC` says `off`.
pub fn fsync() -> String {
    match std::env::var("OUTPOST_BENCH_FSYNC").as_deref() {
        Ok("off") => "off".into(),
        _ => "on".into(),
    }
}

pub struct Bench {
    pub pg: PgCluster,
    pub dir: tempfile::TempDir,
    secret: String,
}

impl Bench {
    pub fn new(setup: &str) -> anyhow::Result<Bench> {
        let pg = PgCluster::start_with(PgClusterOptions {
            extra_hba: Vec::new(),
            settings: vec![
                ("fsync".into(), fsync()),
                ("max_wal_size".into(), "4GB".into()),
                ("checkpoint_timeout".into(), "30min".into()),
                ("shared_buffers".into(), "256MB".into()),
                // B5 stops the service while it writes a backlog.
                ("wal_sender_timeout".into(), "0".into()),
            ],
        })?;
        pg.create_database(DB)?;
        pg.psql(DB, TABLE_SQL)?;
        if !setup.is_empty() {
            pg.psql(DB, setup)?;
        }
        let dir = tempfile::Builder::new()
            .prefix("outpost-bench-")
            .tempdir()?;
        std::fs::create_dir_all(dir.path().join("schema"))?;
        std::fs::write(dir.path().join("schema/items.toml"), SHAPES)?;
        Ok(Bench {
            pg,
            dir,
            secret: "bench-secret".into(),
        })
    }

    pub fn config(&self, data_dir: &Path) -> ServiceConfig {
        ServiceConfig {
            database_url: self.pg.url(DB),
            schema_dir: self.dir.path().join("schema"),
            data_dir: data_dir.to_path_buf(),
            listen: "127.0.0.1:0".parse().expect("address"),
            slot: "outpost".into(),
            publication: "outpost".into(),
            create_publication: true,
            keepalive_secs: 15,
            auth: AuthConfig {
                hs256_secret: Some(self.secret.clone()),
                leeway_secs: 30,
                ..AuthConfig::default()
            },
            limits: Default::default(),
        }
    }

    pub fn token(&self, sub: &str) -> anyhow::Result<String> {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            + 3600;
        Ok(outpost::auth::sign_hs256(
            &self.secret,
            &serde_json::json!({"sub": sub, "exp": exp}),
        )?)
    }

    pub fn current_lsn(&self) -> anyhow::Result<Lsn> {
        Ok(self
            .pg
            .psql(DB, "SELECT pg_current_wal_lsn()")?
            .trim()
            .parse()?)
    }
}

/// The store's checkpoint: (epoch, durable LSN), or None before it exists.
pub fn store_position(data_dir: &Path) -> Option<(String, Lsn)> {
    let path = database_path(data_dir);
    if !path.exists() {
        return None;
    }
    let pool = ReaderPool::new(&path, 1);
    pool.read(|t| t.checkpoint()).ok().map(|c| (c.epoch, c.lsn))
}

/// Waits until the service published its first snapshot (so it serves
/// streams and nothing of the snapshot load still runs beside them).
pub async fn wait_until_ready(service: &RunningService, limit: Duration) -> anyhow::Result<()> {
    let mut progress = service.progress();
    tokio::time::timeout(limit, progress.wait_for(|p| !p.epoch.is_empty()))
        .await
        .with_context(|| format!("the service did not load its snapshot within {limit:?}"))?
        .context("the service stopped before loading its snapshot")?;
    Ok(())
}

/// Waits until the store at `data_dir` has an epoch and its durable LSN is at
/// or past `target`; returns when it got there.
pub async fn wait_for_store(
    data_dir: &Path,
    target: Lsn,
    limit: Duration,
) -> anyhow::Result<Instant> {
    let started = Instant::now();
    loop {
        if let Some((epoch, lsn)) = store_position(data_dir)
            && !epoch.is_empty()
            && lsn >= target
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

/// This process's resident memory, in bytes.
pub fn rss_bytes() -> u64 {
    vm_rss("/proc/self/status")
}

/// The resident memory of process `pid`, in bytes (0 when it cannot be read).
pub fn rss_of(pid: u32) -> u64 {
    vm_rss(&format!("/proc/{pid}/status"))
}

/// The `VmRSS` line of a `/proc/<pid>/status` file, in bytes; 0 when the file
/// or the line cannot be read.
fn vm_rss(status_path: &str) -> u64 {
    let status = std::fs::read_to_string(status_path).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Runs a Postgres client program from the cluster's installation.
pub fn run_pg_tool(
    bench: &Bench,
    tool: &str,
    args: &[&str],
) -> anyhow::Result<std::process::Output> {
    let program = bench.pg.bin_dir().join(tool);
    let out = std::process::Command::new(&program)
        .args(args)
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    if !out.status.success() {
        bail!("{tool} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out)
}
