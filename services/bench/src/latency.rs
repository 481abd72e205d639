//! B4: live changes at a fixed rate (pgbench `-R`) while clients are
//! connected; the latency from the row's commit in Postgres to its arrival
//! in a client's SQLite replica, p50 and p99.
//!
//! Each change is an INSERT whose `created_at` is `clock_timestamp()` at the
//! insert (the commit follows at once); a client notes the wall-clock time
//! at which each new row is readable in its replica (after the checkpoint
//! that carries it is committed). Changes go round-robin to `clients` users,
//! one client each, so every change reaches exactly one client while the
//! others hold idle streams.

use crate::harness::{Bench, DB, run_pg_tool, wait_until_ready};
use crate::report::Figure;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub async fn run(clients: usize, rate: u32, seconds: u32) -> anyhow::Result<Vec<Figure>> {
    let id = format!("B4-{clients}");
    let bench = Bench::new("CREATE SEQUENCE item_ids;")?;
    let data_dir = bench.dir.path().join("data");
    let service = outpost::service::start(bench.config(&data_dir)).await?;
    wait_until_ready(&service, Duration::from_secs(120)).await?;
    let server = format!("http://{}", service.addr);

    eprintln!("{id}: connecting {clients} clients…");
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..clients {
        let db = bench.dir.path().join(format!("c{i}.db"));
        let opts =
            outpost_client::SyncOptions::new(server.clone(), bench.token(&format!("u{i}"))?, &db);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let sync = tokio::spawn(outpost_client::sync_with_events(opts, tx));
        let latencies = latencies.clone();
        let watcher = tokio::spawn(async move {
            let mut last_id = 0i64;
            let mut conn: Option<rusqlite::Connection> = None;
            while let Some(event) = rx.recv().await {
                if !matches!(event, outpost_client::SyncEvent::Checkpoint { .. }) {
                    continue;
                }
                let now = SystemTime::now();
                if conn.is_none() {
                    conn = rusqlite::Connection::open_with_flags(
                        &db,
                        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                    )
                    .ok();
                }
                let Some(c) = &conn else { continue };
                let Ok(mut stmt) =
                    c.prepare_cached("SELECT id, created_at FROM items WHERE id > ?1 ORDER BY id")
                else {
                    continue;
                };
                let rows: Vec<(i64, String)> = stmt
                    .query_map([last_id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map(|it| it.filter_map(Result::ok).collect())
                    .unwrap_or_default();
                let mut found = Vec::new();
                for (id, created) in rows {
                    last_id = last_id.max(id);
                    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(&created) {
                        let committed = SystemTime::from(t);
                        if let Ok(d) = now.duration_since(committed) {
                            found.push(d.as_secs_f64() * 1000.0);
                        }
                    }
                }
                if let Ok(mut l) = latencies.lock() {
                    l.extend(found);
                }
            }
        });
        tasks.push((sync, watcher));
    }
    // Let every client finish its initial sync.
    tokio::time::sleep(Duration::from_secs(2 + clients as u64 / 200)).await;
    latencies.lock().map(|mut l| l.clear()).ok();

    let script = bench.dir.path().join("insert.sql");
    std::fs::write(
        &script,
        format!(
            "\\set u random(0, {})\nINSERT INTO items (id, owner, title, n, created_at) VALUES (nextval('item_ids'), 'u' || :u, 'live', 0, clock_timestamp());\n",
            clients - 1
        ),
    )?;
    eprintln!("{id}: pgbench at {rate} changes/s for {seconds} s…");
    let url = bench.pg.url(DB);
    let (rate_s, secs_s, script_s) = (
        rate.to_string(),
        seconds.to_string(),
        script.display().to_string(),
    );
    run_pg_tool(
        &bench,
        "pgbench",
        &[
            "-n", "-c", "4", "-j", "2", "-R", &rate_s, "-T", &secs_s, "-f", &script_s, &url,
        ],
    )?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let total: i64 = bench
        .pg
        .psql(DB, "SELECT count(*) FROM items")?
        .trim()
        .parse()?;
    for (sync, watcher) in tasks {
        sync.abort();
        watcher.abort();
    }
    service.shutdown().await?;

    let mut l = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    l.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        if l.is_empty() {
            f64::NAN
        } else {
            l[((l.len() - 1) as f64 * p) as usize]
        }
    };
    eprintln!("{id}: {} of {total} changes measured", l.len());
    Ok(vec![
        Figure::info(
            &format!("{id}-p50"),
            &format!("commit→replica ms p50, {clients} clients, {rate}/s"),
            pct(0.5),
        ),
        Figure::info(
            &format!("{id}-p99"),
            &format!("commit→replica ms p99 (target < 50), {clients} clients"),
            pct(0.99),
        ),
        Figure::info(
            &format!("{id}-seen"),
            "changes measured / changes made",
            l.len() as f64 / total.max(1) as f64,
        ),
    ])
}
