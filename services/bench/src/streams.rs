//! B5: many concurrent client streams with per-user shapes. With 10 and
//! with 10,000 users connected (idle, after their initial sync), the same
//! burst of single-row transactions spread over the users is drained into
//! the store, live, then five more as backlogs (written while the
//! service process is stopped, so that both runs store them in commits of
//! the same sizes). The two services, each with its own cluster, stay up
//! side by side and drain their backlogs in turns, so that a machine whose
//! speed drifts moves both sides alike. The routing cost per change — CPU
//! time of the service's store threads on a backlog, the median of the
//! five (the writer, which decodes nothing but routes and stores every
//! change, and the copy of its log into the database file) — must not
//! grow with the number of streams (ratio ≤ 1.2), and each idle stream
//! should cost the service little memory (≤ 20 KB). The wall time per change
//! to the store and until every stream has received its rows are reported
//! too: with many users each change goes to a stream of its own, so the
//! delivery work (one read and one message per change instead of one per
//! burst) shares the machine with the store thread. The service runs as its
//! own process so its RSS and CPU time are its own.

use crate::harness::{Bench, DB, NO_FLUSH_WAIT, rss_of, wait_for_store};
use crate::report::Figure;
use anyhow::{Context, bail};
use outpost::lsn::Lsn;
use outpost_proto::v1::sync_client::SyncClient;
use outpost_proto::v1::{SyncRequest, sync_response::Message};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Backlogs drained per run; the median's CPU counts.
const BACKLOGS: usize = 5;

/// Streams multiplexed on one HTTP/2 connection.
const STREAMS_PER_CONNECTION: usize = 100;

const SETUP: &str = "
CREATE PROCEDURE spread_txns(total bigint, first bigint, users int) LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN first .. first + total - 1 LOOP
        INSERT INTO items (id, owner, title, n) VALUES (i, 'u' || (i % users), 'item ' || i, 0);
        COMMIT;
    END LOOP;
END $$;
";

fn outpost_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("no directory for the bench binary")?;
    let bin = dir.join("outpost");
    // Always build: cargo returns at once when the binary is up to date, and
    // a stale binary would be measured otherwise.
    {
        let profile = if dir.ends_with("release") {
            vec!["--release"]
        } else {
            vec![]
        };
        let status =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["build", "-p", "outpost", "--bin", "outpost"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .args(profile)
                .status()?;
        if !status.success() || !bin.is_file() {
            bail!(
                "could not build the outpost binary; run `cargo build --release -p outpost` first"
            );
        }
    }
    Ok(bin)
}

/// CPU time of the service's store threads, in seconds (from the
/// scheduler's nanosecond account, `/proc/<pid>/task/<tid>/schedstat`): the
/// writer, and the thread that copies its log into the database file, read
/// once that one has been idle for 200 ms, so that the copy of what was
/// just written counts with it.
async fn store_thread_cpu(pid: u32) -> anyhow::Result<StoreCpu> {
    let copier = || crate::cpu::thread_seconds(pid, "outpost-walcopy").unwrap_or(0.0);
    let mut last = copier();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = copier();
        if now == last {
            break;
        }
        last = now;
    }
    let writer = crate::cpu::thread_seconds(pid, "outpost-store")
        .context("the service has no `outpost-store` thread")?;
    Ok(StoreCpu {
        writer,
        log_copy: last,
    })
}

/// CPU seconds of the store's two threads.
struct StoreCpu {
    writer: f64,
    log_copy: f64,
}

/// Sends a signal (`STOP`, `CONT`) to the service process.
fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{name} {pid} failed");
    Ok(())
}

/// Waits until the streams together received `changes` rows.
async fn wait_for_delivery(received: &AtomicU64, changes: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while received.load(Ordering::Relaxed) < changes {
        if Instant::now() > deadline {
            bail!(
                "the streams received {} of {changes} changes",
                received.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// What one service measured.
struct Run {
    per_change_us: f64,
    /// The median of its backlogs'.
    store_cpu_us: f64,
    delivered_us: f64,
    rss_per_stream: f64,
}

/// One service process with its own cluster and `users` idle streams, and
/// what it measured so far.
struct Service {
    bench: Bench,
    data_dir: PathBuf,
    child: tokio::process::Child,
    pid: u32,
    users: usize,
    changes: u64,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    received: Arc<AtomicU64>,
    per_change_us: f64,
    delivered_us: f64,
    rss_per_stream: f64,
    store_cpu_us: Vec<f64>,
}

impl Service {
    /// Starts the service, opens its streams and drains the live burst.
    async fn start(users: usize, changes: u64) -> anyhow::Result<Service> {
        let bench = Bench::new(SETUP)?;
        let data_dir = bench.dir.path().join("data");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let cfg = bench.config(&data_dir);
        let child = tokio::process::Command::new(outpost_binary()?)
            .arg("serve")
            .env("OUTPOST_DATABASE_URL", &cfg.database_url)
            .env("OUTPOST_SCHEMA_DIR", &cfg.schema_dir)
            .env("OUTPOST_DATA_DIR", &cfg.data_dir)
            .env("OUTPOST_LISTEN", format!("127.0.0.1:{port}"))
            .env("OUTPOST_AUTH_HS256_SECRET", "bench-secret")
            .env("OUTPOST_MAX_BUCKETS_PER_USER", "100000")
            .env(
                "RUST_LOG",
                std::env::var("B5_SERVICE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().context("the service exited at once")?;
        wait_for_store(&data_dir, Lsn(1), Duration::from_secs(60)).await?;
        let server = format!("http://127.0.0.1:{port}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rss_before = rss_of(pid);
        if rss_before == 0 {
            bail!("cannot read the service's memory from /proc/{pid}/status");
        }

        eprintln!("B5: opening {users} streams…");
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
        let received = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        let mut channel = None;
        for u in 0..users {
            if u % STREAMS_PER_CONNECTION == 0 {
                channel = Some(
                    tonic::transport::Endpoint::from_shared(server.clone())?
                        .connect()
                        .await?,
                );
            }
            let mut client = SyncClient::new(channel.clone().context("no channel")?);
            let token = bench.token(&format!("u{u}"))?;
            let ready = ready_tx.clone();
            let received = received.clone();
            tasks.push(tokio::spawn(async move {
                let mut request = tonic::Request::new(SyncRequest {
                    client_id: format!("bench-{u}"),
                    ..SyncRequest::default()
                });
                request
                    .metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse()?);
                let mut stream = client.sync(request).await?.into_inner();
                let mut first = true;
                while let Some(m) = stream.message().await? {
                    match m.message {
                        Some(Message::Checkpoint(_)) if first => {
                            first = false;
                            let _ = ready.send(());
                        }
                        Some(Message::Data(batch)) => {
                            received.fetch_add(batch.ops.len() as u64, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
                anyhow::Ok(())
            }));
        }
        for _ in 0..users {
            tokio::time::timeout(Duration::from_secs(300), ready_rx.recv())
                .await
                .context("streams did not all reach their first checkpoint")?;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_after = rss_of(pid);

        eprintln!("B5: {changes} changes over {users} users…");
        received.store(0, Ordering::Relaxed);
        let started = Instant::now();
        bench.pg.psql(
            DB,
            &format!("{NO_FLUSH_WAIT} CALL spread_txns({changes}, 1, {users})"),
        )?;
        let target = bench.current_lsn()?;
        let done = wait_for_store(&data_dir, target, Duration::from_secs(600)).await?;
        let elapsed = (done - started).as_secs_f64();
        wait_for_delivery(&received, changes).await?;
        let delivered = started.elapsed().as_secs_f64();

        Ok(Service {
            bench,
            data_dir,
            child,
            pid,
            users,
            changes,
            tasks,
            received,
            per_change_us: elapsed * 1e6 / changes as f64,
            delivered_us: delivered * 1e6 / changes as f64,
            rss_per_stream: rss_after.saturating_sub(rss_before) as f64 / users as f64,
            store_cpu_us: Vec::with_capacity(BACKLOGS),
        })
    }

    /// The routing cost, on a backlog: how many transactions share a store
    /// commit depends on how the store keeps up with a live burst, and that
    /// would weigh more than routing. The service is stopped while the same
    /// number of changes is written, then drains them.
    async fn backlog(&mut self) -> anyhow::Result<()> {
        let (users, changes, pid) = (self.users, self.changes, self.pid);
        let backlog = self.store_cpu_us.len() as u64 + 1;
        eprintln!(
            "B5: {changes} more changes over {users} users, as a backlog ({backlog} of {BACKLOGS})…"
        );
        self.received.store(0, Ordering::Relaxed);
        let cpu_before = store_thread_cpu(pid).await?;
        signal(pid, "STOP")?;
        let first = changes * backlog + 1;
        let written = self.bench.pg.psql(
            DB,
            &format!("{NO_FLUSH_WAIT} CALL spread_txns({changes}, {first}, {users})"),
        );
        signal(pid, "CONT")?;
        written?;
        let target = self.bench.current_lsn()?;
        wait_for_store(&self.data_dir, target, Duration::from_secs(600)).await?;
        let cpu_after = store_thread_cpu(pid).await?;
        let log_copy = cpu_after.log_copy - cpu_before.log_copy;
        let cpu = cpu_after.writer - cpu_before.writer + log_copy;
        eprintln!(
            "B5: {users} streams: store threads {:.1} µs per change, of which the log copy {:.1}",
            cpu * 1e6 / changes as f64,
            log_copy * 1e6 / changes as f64
        );
        self.store_cpu_us.push(cpu * 1e6 / changes as f64);
        wait_for_delivery(&self.received, changes).await
    }

    /// Stops the service; what it measured.
    async fn stop(mut self) -> Run {
        for t in &self.tasks {
            t.abort();
        }
        self.child.kill().await.ok();
        self.store_cpu_us.sort_by(f64::total_cmp);
        Run {
            per_change_us: self.per_change_us,
            store_cpu_us: self.store_cpu_us[self.store_cpu_us.len() / 2],
            delivered_us: self.delivered_us,
            rss_per_stream: self.rss_per_stream,
        }
    }
}

pub async fn run(users: usize, changes: u64) -> anyhow::Result<Vec<Figure>> {
    let mut small = Service::start(10, changes).await?;
    let mut large = Service::start(users, changes).await?;
    // Both services stay up and drain their backlogs in turns, each pair
    // in the other order than the one before: a machine whose speed
    // drifts moves both sides alike (one run after the other moved the
    // ratio by half).
    for b in 0..BACKLOGS {
        if b % 2 == 0 {
            small.backlog().await?;
            large.backlog().await?;
        } else {
            large.backlog().await?;
            small.backlog().await?;
        }
    }
    let small = small.stop().await;
    let large = large.stop().await;
    Ok(vec![
        Figure::lower_is_better(
            "B5",
            &format!(
                "routing: store threads' CPU µs per change, {users} streams (median of {BACKLOGS})"
            ),
            large.store_cpu_us,
            small.store_cpu_us,
            "the same burst with 10 streams",
            1.2,
        ),
        Figure::lower_is_better(
            "B5-store",
            &format!("wall µs per change, commit → store, {users} streams"),
            large.per_change_us,
            small.per_change_us,
            "the same burst with 10 streams",
            0.0,
        )
        .without_target(),
        Figure::lower_is_better(
            "B5-delivered",
            &format!("wall µs per change, commit → every stream, {users} streams"),
            large.delivered_us,
            small.delivered_us,
            "the same burst with 10 streams",
            0.0,
        )
        .without_target(),
        Figure::info(
            "B5-rss",
            &format!("service RSS per idle stream, KB ({users} streams; target ≤ 20)"),
            large.rss_per_stream / 1024.0,
        ),
    ])
}
