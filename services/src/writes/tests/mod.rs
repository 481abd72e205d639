//! Tests of the write path against real Postgres clusters: the applier is
//! driven in-process, and the state is read back from Postgres.

mod batched;
mod commutative;
mod grpc;
mod idempotency;
mod lww;
mod pipelined;
mod rejections;
mod rules_in_db;
mod types;

use std::path::PathBuf;

use outpost_proto::v1::group_result::Status;
use outpost_proto::v1::value::Kind;
use outpost_proto::v1::{ColumnValue, GroupResult, OpGroup, Value, WriteOp, write_op};

use super::{Applier, ApplierConfig};
use crate::auth::Claims;
use crate::pgcluster::{PgCluster, PgClusterOptions};
use crate::schema::{Catalog, SchemaSource, compile, compile_rules, resolve_functions};

pub(super) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

pub(super) const DB: &str = "app";

/// A cluster with database [`DB`] holding `sql`.
pub(super) fn cluster(sql: &str, commit_timestamps: bool) -> PgCluster {
    let settings = if commit_timestamps {
        vec![("track_commit_timestamp".to_string(), "on".to_string())]
    } else {
        Vec::new()
    };
    let pg = PgCluster::start_with(PgClusterOptions {
        settings,
        ..PgClusterOptions::default()
    })
    .expect("cluster");
    pg.create_database(DB).expect("database");
    pg.psql(DB, sql).expect("setup SQL");
    pg
}

pub(super) async fn connect(pg: &PgCluster) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&pg.url(DB), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// The applier for the schema file `toml`, checked against the database.
pub(super) async fn applier(pg: &PgCluster, toml: &str) -> Applier {
    let source = SchemaSource::from_files(vec![(PathBuf::from("app.toml"), toml.to_string())])
        .unwrap_or_else(|e| panic!("{e}"));
    let client = connect(pg).await;
    let catalog = Catalog::load(&client, &source.tables())
        .await
        .expect("catalog");
    let schema = compile(&source, &catalog).unwrap_or_else(|e| panic!("{e}"));
    let mut rules = compile_rules(&source, &catalog).unwrap_or_else(|e| panic!("{e}"));
    resolve_functions(&mut rules, &client)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let cfg = ApplierConfig {
        pg: pg.url(DB).parse().expect("url"),
        connections: 3,
        batches: 2,
        publication: Some("outpost".into()),
    };
    Applier::start(cfg, &schema, rules).await.expect("applier")
}

pub(super) fn claims(sub: &str) -> Claims {
    match serde_json::json!({ "sub": sub }) {
        serde_json::Value::Object(map) => Claims(map),
        _ => unreachable!(),
    }
}

pub(super) fn int(i: i64) -> Value {
    Value {
        kind: Some(Kind::Integer(i)),
    }
}

pub(super) fn text(s: &str) -> Value {
    Value {
        kind: Some(Kind::Text(s.to_string())),
    }
}

pub(super) fn null() -> Value {
    Value {
        kind: Some(Kind::Null(true)),
    }
}

pub(super) fn col(name: &str, value: Value) -> ColumnValue {
    ColumnValue {
        name: name.to_string(),
        value: Some(value),
    }
}

fn op(kind: write_op::Kind, table: &str, id: i64, columns: Vec<ColumnValue>, hlc: u64) -> WriteOp {
    WriteOp {
        kind: kind as i32,
        table: table.to_string(),
        key: vec![int(id)],
        columns,
        hlc,
        before: Vec::new(),
    }
}

pub(super) fn insert(table: &str, id: i64, columns: Vec<ColumnValue>, hlc: u64) -> WriteOp {
    op(write_op::Kind::Insert, table, id, columns, hlc)
}

pub(super) fn update(table: &str, id: i64, columns: Vec<ColumnValue>, hlc: u64) -> WriteOp {
    op(write_op::Kind::Update, table, id, columns, hlc)
}

pub(super) fn delete(table: &str, id: i64, hlc: u64) -> WriteOp {
    op(write_op::Kind::Delete, table, id, Vec::new(), hlc)
}

pub(super) fn group(seq: u64, ops: Vec<WriteOp>) -> OpGroup {
    OpGroup { seq, ops }
}

/// A clock reading at `ms` milliseconds since the epoch.
pub(super) fn hlc(ms: u64) -> u64 {
    ms << 16
}

/// `(status, reason code)` of each result.
pub(super) fn outcomes(results: &[GroupResult]) -> Vec<(Status, String)> {
    results
        .iter()
        .map(|r| {
            (
                Status::try_from(r.status).unwrap_or(Status::Unspecified),
                r.reason_code.clone(),
            )
        })
        .collect()
}

pub(super) fn applied() -> (Status, String) {
    (Status::Applied, String::new())
}

pub(super) fn rejected(code: &str) -> (Status, String) {
    (Status::Rejected, code.to_string())
}

/// The output of a query, one line per row, `|` between columns.
pub(super) fn query(pg: &PgCluster, sql: &str) -> String {
    pg.psql(DB, sql).expect("query").trim_end().to_string()
}

/// `outpost.row_versions` one row per column, to query as a table `cv`:
/// `tbl`, `key`, `col`, `hlc`, `client_id`, `value_hash`.
pub(super) const COLUMN_VERSIONS: &str = "(SELECT v.tbl, v.key, e.key AS col, \
     (e.value->>0)::bigint AS hlc, e.value->>1 AS client_id, (e.value->>2)::bigint AS value_hash \
     FROM outpost.row_versions v, jsonb_each(v.versions) e) AS cv";
