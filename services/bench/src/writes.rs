//! B6: client writes through the service's `Write` call from 8 concurrent
//! clients (one single-op group per call, each client waiting for its
//! answer, as a pgbench client waits for its commit), next to pgbench
//! running the equivalent `INSERT … ON CONFLICT DO UPDATE` with 8 clients;
//! and one client sending a queue of groups kept offline, 500 per call,
//! next to pgbench running the same upserts with one client.

use crate::cpu::CpuReading;
use crate::harness::{Bench, DB, run_pg_tool, wait_until_ready};
use crate::report::Figure;
use outpost_proto::v1::sync_client::SyncClient;
use outpost_proto::v1::{
    ColumnValue, OpGroup, Value, WriteOp, WriteRequest, value::Kind, write_op,
};
use std::time::{Duration, Instant};

const CLIENTS: usize = 8;

fn int(i: i64) -> Value {
    Value {
        kind: Some(Kind::Integer(i)),
    }
}
fn text(s: &str) -> Value {
    Value {
        kind: Some(Kind::Text(s.into())),
    }
}

/// An insert of row `id` (an update when it exists) writing every column.
fn upsert(id: i64, i: u64) -> anyhow::Result<WriteOp> {
    Ok(WriteOp {
        kind: write_op::Kind::Insert as i32,
        table: "items".into(),
        key: vec![int(id)],
        columns: vec![
            ColumnValue {
                name: "id".into(),
                value: Some(int(id)),
            },
            ColumnValue {
                name: "owner".into(),
                value: Some(text("alice")),
            },
            ColumnValue {
                name: "title".into(),
                value: Some(text("written")),
            },
            ColumnValue {
                name: "n".into(),
                value: Some(int(i as i64)),
            },
        ],
        hlc: ((std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as u64)
            << 16)
            | (i & 0xffff),
        before: Vec::new(),
    })
}

/// Groups per request when one client sends the queue it kept offline.
const QUEUE_REQUEST: u64 = 500;

pub async fn run(ops: u64) -> anyhow::Result<Vec<Figure>> {
    let bench = Bench::new("")?;
    let data_dir = bench.dir.path().join("data");
    let service = outpost::service::start(bench.config(&data_dir)).await?;
    wait_until_ready(&service, Duration::from_secs(120)).await?;
    let server = format!("http://{}", service.addr);
    let token = bench.token("alice")?;
    let per_client = (ops / CLIENTS as u64).max(1);
    let keys = (ops as i64).max(1000);

    eprintln!("B6: {CLIENTS} clients writing {per_client} groups each through Write…");
    let wal_before = bench.current_lsn()?;
    let cpu = CpuReading::now();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (server, token) = (server.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = SyncClient::connect(server).await?;
            for i in 0..per_client {
                let id = ((c as u64 * 7919 + i * 104_729) as i64) % keys + 1;
                let op = upsert(id, i)?;
                let mut request = tonic::Request::new(WriteRequest {
                    client_id: format!("bench-{c}"),
                    groups: vec![OpGroup {
                        seq: i + 1,
                        ops: vec![op],
                    }],
                });
                request
                    .metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse()?);
                let reply = client.write(request).await?.into_inner();
                anyhow::ensure!(
                    reply.results.first().is_some_and(|r| r.status == 1),
                    "a write was not applied: {:?}",
                    reply.results
                );
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let outpost_secs = started.elapsed().as_secs_f64();
    eprintln!("{}", cpu.report_since("B6 writes"));
    let outpost_wal = bench.current_lsn()?.0.saturating_sub(wal_before.0);

    // One client back online with a queue of single-op groups, sent
    // QUEUE_REQUEST groups per request.
    let queued = per_client * CLIENTS as u64;
    eprintln!("B6: one client sending a queue of {queued} groups, {QUEUE_REQUEST} per Write…");
    let mut client = SyncClient::connect(server.clone()).await?;
    let started = Instant::now();
    let mut seq = 0;
    while seq < queued {
        let mut groups = Vec::with_capacity(QUEUE_REQUEST as usize);
        while seq < queued && groups.len() < QUEUE_REQUEST as usize {
            seq += 1;
            let id = ((seq * 104_729) as i64) % keys + 1;
            groups.push(OpGroup {
                seq,
                ops: vec![upsert(id, seq)?],
            });
        }
        let mut request = tonic::Request::new(WriteRequest {
            client_id: "bench-queue".into(),
            groups,
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let reply = client.write(request).await?.into_inner();
        anyhow::ensure!(
            reply.results.iter().all(|r| r.status == 1),
            "a queued write was not applied"
        );
    }
    let queue_secs = started.elapsed().as_secs_f64();
    service.shutdown().await?;

    eprintln!("B6: pgbench with the equivalent upsert…");
    let script = bench.dir.path().join("upsert.sql");
    std::fs::write(
        &script,
        format!(
            "\\set id random(1, {keys})\nINSERT INTO items (id, owner, title, n) VALUES (:id, 'alice', 'written', 0) \
             ON CONFLICT (id) DO UPDATE SET title = excluded.title, n = excluded.n;\n"
        ),
    )?;
    let url = bench.pg.url(DB);
    let tx_s = per_client.to_string();
    let pgbench = |protocol: &str, script: &std::path::Path| -> anyhow::Result<f64> {
        let script = script.display().to_string();
        let clients = CLIENTS.to_string();
        let started = Instant::now();
        run_pg_tool(
            &bench,
            "pgbench",
            &[
                "-n", "-M", protocol, "-c", &clients, "-j", "2", "-t", &tx_s, "-f", &script, &url,
            ],
        )?;
        Ok(started.elapsed().as_secs_f64())
    };
    let wal_before = bench.current_lsn()?;
    let baseline_secs = pgbench("simple", &script)?;
    let baseline_wal = bench.current_lsn()?.0.saturating_sub(wal_before.0);
    // What Postgres writes, and its walsender decodes record by record, per
    // op: the ledger and the row's versions besides the row.
    let total = (per_client * CLIENTS as u64) as f64;
    eprintln!(
        "B6: WAL per op: {:.0} bytes through Write, {:.0} bytes by pgbench's upsert",
        outpost_wal as f64 / total,
        baseline_wal as f64 / total
    );

    // The least Postgres work an idempotent merged write needs, with no
    // service in between: the ledger claim, the row write and its
    // versions in one statement, then the WAL position, in one round trip;
    // next to the same upsert with the same protocol.
    eprintln!("B6: pgbench with the ledger claim, upsert and row versions as one statement…");
    let floor = bench.dir.path().join("floor.sql");
    std::fs::write(
        &floor,
        format!(
            "\\set id random(1, {keys})\n\\set seq random(1, 1000000000000)\n\\startpipeline\n\
             WITH claim AS (INSERT INTO outpost.applied_groups (client_id, seq, status) \
                 VALUES ('floor-' || :client_id, :seq, 'applied') ON CONFLICT DO NOTHING), \
             w AS (INSERT INTO items (id, owner, title, n) VALUES (:id, 'alice', 'written', 0) \
                 ON CONFLICT (id) DO UPDATE SET title = excluded.title, n = excluded.n RETURNING id), \
             v AS (INSERT INTO outpost.row_versions (tbl, key, versions) \
                 VALUES ('public.items', '[\"' || :id || '\"]', jsonb_build_object(\
                 'n', jsonb_build_array(:seq::bigint, 'floor', 0), \
                 'owner', jsonb_build_array(:seq::bigint, 'floor', 0), \
                 'title', jsonb_build_array(:seq::bigint, 'floor', 0))) \
                 ON CONFLICT (tbl, key) DO UPDATE SET versions = excluded.versions) \
             SELECT id FROM w;\nSELECT pg_current_wal_lsn();\n\\endpipeline\n"
        ),
    )?;
    let floor_secs = pgbench("prepared", &floor)?;
    eprintln!("B6: pgbench with the upsert, one client…");
    let one_client_secs = {
        let started = Instant::now();
        let total = (per_client * CLIENTS as u64).to_string();
        let script = script.display().to_string();
        run_pg_tool(
            &bench,
            "pgbench",
            &[
                "-n", "-M", "simple", "-c", "1", "-t", &total, "-f", &script, &url,
            ],
        )?;
        started.elapsed().as_secs_f64()
    };
    let prepared_secs = pgbench("prepared", &script)?;
    Ok(vec![
        Figure::higher_is_better(
            "B6",
            "ops/s through Write, 8 clients",
            total / outpost_secs,
            total / baseline_secs,
            "pgbench -c 8: INSERT … ON CONFLICT DO UPDATE",
            0.5,
        ),
        Figure::higher_is_better(
            "B6-queue",
            "ops/s of one client's queue, 500 groups per Write",
            total / queue_secs,
            total / one_client_secs,
            "pgbench -c 1: the same upsert",
            0.5,
        )
        .without_target(),
        Figure::higher_is_better(
            "B6-floor",
            "ops/s of ledger claim + upsert + versions, one statement",
            total / floor_secs,
            total / prepared_secs,
            "the same upsert, pgbench -M prepared",
            0.5,
        )
        .without_target(),
    ])
}
