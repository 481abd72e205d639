//! Ingest against a real catalog: memberships, hops and re-routing, driven
//! by pgoutput messages built here and checked in the store; and when the
//! writer thread commits what it was sent.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use super::RowChanges;
use crate::lsn::Lsn;
use crate::pgcluster::PgCluster;
use crate::replication::{
    Begin, Commit, Delete, Insert, PgOutput, Relation, RelationColumn, Truncate, Tuple, TupleValue,
    Update,
};
use crate::schema::{Catalog, CompiledSchema, SchemaSource, compile};
use crate::store::{ReaderPool, StoreWriter, database_path};

const SQL: &str = "
CREATE TABLE lists (id bigint PRIMARY KEY, owner text NOT NULL, archived bool NOT NULL);
CREATE TABLE list_members (list_id bigint, user_id text, PRIMARY KEY (list_id, user_id));
CREATE TABLE todos (id bigint PRIMARY KEY, list_id bigint, title text);
CREATE TABLE comments (id bigint PRIMARY KEY, todo_id bigint, body text);
";

/// Only comments are sent; lists, list_members and todos are read by the
/// subqueries alone.
const SHAPES: &str = r#"
[shapes.comments]
table = "comments"
where = """todo_id IN (SELECT id FROM todos WHERE list_id IN (SELECT id FROM lists
           WHERE NOT archived AND (owner = auth.sub
              OR id IN (SELECT list_id FROM list_members WHERE user_id = auth.sub))))"""
"#;

const TABLES: [(&str, &[&str]); 4] = [
    ("lists", &["id", "owner", "archived"]),
    ("list_members", &["list_id", "user_id"]),
    ("todos", &["id", "list_id", "title"]),
    ("comments", &["id", "todo_id", "body"]),
];

fn compiled() -> (PgCluster, CompiledSchema) {
    let source = SchemaSource::from_files(vec![(PathBuf::from("a.toml"), SHAPES.to_string())])
        .unwrap_or_else(|e| panic!("{e}"));
    let pg = PgCluster::start().expect("cluster");
    pg.create_database("app").expect("db");
    pg.psql("app", SQL).expect("tables");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let catalog = rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(&pg.url("app"), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        Catalog::load(&client, &source.read_tables())
            .await
            .expect("catalog")
    });
    let schema = compile(&source, &catalog).unwrap_or_else(|e| panic!("{e}"));
    (pg, schema)
}

fn tuple(values: &[Option<&str>]) -> Tuple {
    Tuple(
        values
            .iter()
            .map(|v| match v {
                Some(s) => TupleValue::Text(Bytes::copy_from_slice(s.as_bytes())),
                None => TupleValue::Null,
            })
            .collect(),
    )
}

/// The Relation messages of [`TABLES`] (every column text).
fn relations() -> Vec<PgOutput> {
    TABLES
        .iter()
        .enumerate()
        .map(|(i, (name, columns))| {
            PgOutput::Relation(Relation {
                id: 1000 + i as u32,
                namespace: "public".into(),
                name: (*name).into(),
                replica_identity: b'd',
                columns: columns
                    .iter()
                    .map(|c| RelationColumn {
                        is_key: false,
                        name: (*c).into(),
                        type_oid: 25,
                        type_modifier: -1,
                    })
                    .collect(),
            })
        })
        .collect()
}

struct Harness {
    store: StoreWriter,
    changes: RowChanges,
    readers: ReaderPool,
    lsn: u64,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new(schema: CompiledSchema) -> Harness {
        let dir = tempfile::tempdir().expect("dir");
        let path = database_path(dir.path());
        let mut store = StoreWriter::open(&path).expect("store");
        store
            .reinitialise(&schema.version, "slot", "epoch")
            .expect("init");
        store.commit().expect("commit");
        let mut changes = RowChanges::new(Arc::new(schema));
        for relation in relations() {
            changes.apply(&mut store, relation).expect("relation");
        }
        Harness {
            store,
            changes,
            readers: ReaderPool::new(&path, 2),
            lsn: 0x1000,
            _dir: dir,
        }
    }

    fn relation(table: &str) -> u32 {
        1000 + TABLES.iter().position(|(n, _)| *n == table).expect("table") as u32
    }

    /// Applies one replicated transaction and commits the store.
    fn txn(&mut self, messages: Vec<PgOutput>) {
        self.lsn += 0x100;
        let lsn = Lsn(self.lsn);
        let mut all = vec![PgOutput::Begin(Begin {
            final_lsn: lsn,
            commit_time: 0,
            xid: 1,
        })];
        all.extend(messages);
        all.push(PgOutput::Commit(Commit {
            flags: 0,
            commit_lsn: lsn,
            end_lsn: Lsn(self.lsn + 8),
            commit_time: 0,
        }));
        for m in all {
            self.changes.apply(&mut self.store, m).expect("apply");
        }
        self.store.commit().expect("commit");
    }

    /// The bucket names holding a comment, and the comments of a bucket.
    fn buckets(&self) -> Vec<(String, u64)> {
        self.readers
            .read(|txn| {
                let mut out = Vec::new();
                for b in [
                    "comments#0[1]",
                    "comments#0[2]",
                    "comments#1[1]",
                    "comments#1[2]",
                ] {
                    let info = txn.bucket(b)?;
                    if info.count > 0 {
                        out.push((b.to_string(), info.count));
                    }
                }
                Ok(out)
            })
            .expect("read")
    }

    fn members(&self, membership: usize, user: &str) -> (Vec<String>, u64) {
        self.readers
            .read(|txn| {
                Ok((
                    txn.member_keys(membership, user)?,
                    txn.member_version(membership, user)?,
                ))
            })
            .expect("read")
    }
}

fn insert(table: &str, values: &[Option<&str>]) -> PgOutput {
    PgOutput::Insert(Insert {
        relation_id: Harness::relation(table),
        new: tuple(values),
    })
}

fn update(table: &str, values: &[Option<&str>]) -> PgOutput {
    PgOutput::Update(Update {
        relation_id: Harness::relation(table),
        old: None,
        key: None,
        new: tuple(values),
    })
}

fn delete(table: &str, key: &[Option<&str>]) -> PgOutput {
    PgOutput::Delete(Delete {
        relation_id: Harness::relation(table),
        old: None,
        key: Some(tuple(key)),
    })
}

fn s(v: &str) -> Option<&str> {
    Some(v)
}

#[test]
fn memberships_and_hops_follow_every_change() {
    let (_pg, schema) = compiled();
    let names: Vec<(&str, bool)> = schema
        .tables
        .iter()
        .map(|t| (t.name.as_str(), t.sent))
        .collect();
    assert_eq!(
        names,
        [
            ("comments", true),
            ("todos", false),
            ("lists", false),
            ("list_members", false)
        ]
    );
    // Membership 0: list owners; membership 1: list_members.
    assert_eq!(schema.memberships.len(), 2);
    let mut h = Harness::new(schema);
    // A comment arrives before its todo and list: it waits for them.
    h.txn(vec![insert("comments", &[s("100"), s("10"), s("hi")])]);
    assert!(h.buckets().is_empty());
    h.txn(vec![
        insert("todos", &[s("10"), s("1"), s("t")]),
        insert("lists", &[s("1"), s("ann"), s("f")]),
        insert("lists", &[s("2"), s("cat"), s("f")]),
    ]);
    let both = |list: u8| {
        vec![
            (format!("comments#0[{list}]"), 1),
            (format!("comments#1[{list}]"), 1),
        ]
    };
    assert_eq!(h.buckets(), both(1));
    assert_eq!(h.members(0, r#"["ann"]"#).0, ["1"]);
    // Sharing list 1 with bob: the membership index changes; the buckets do
    // not (their content does not depend on who may read them).
    let (_, before) = h.members(1, r#"["bob"]"#);
    h.txn(vec![insert("list_members", &[s("1"), s("bob")])]);
    let (keys, version) = h.members(1, r#"["bob"]"#);
    assert_eq!(keys, ["1"]);
    assert!(version > before);
    assert_eq!(h.buckets(), both(1));
    // The todo moves to list 2: its comment follows, in both definitions.
    h.txn(vec![update("todos", &[s("10"), s("2"), s("t")])]);
    assert_eq!(h.buckets(), both(2));
    // Archiving list 2 takes the comment out of the members' bucket (two
    // hops up) and takes list 2 out of its owner's keys: the owners' bucket
    // keeps it, but nobody is given that bucket any more.
    h.txn(vec![update("lists", &[s("2"), s("cat"), s("t")])]);
    assert_eq!(h.buckets(), [("comments#0[2]".to_string(), 1)]);
    assert!(h.members(0, r#"["cat"]"#).0.is_empty());
    h.txn(vec![update("lists", &[s("2"), s("cat"), s("f")])]);
    assert_eq!(h.buckets(), both(2));
    // A parent's change its children do not read re-routes nothing.
    h.txn(vec![update("todos", &[s("10"), s("2"), s("renamed")])]);
    assert_eq!(h.buckets(), both(2));
    // Deleting the list (as a cascade would, parent first) empties them.
    h.txn(vec![
        delete("lists", &[s("2"), None, None]),
        delete("todos", &[s("10"), None, None]),
    ]);
    assert!(h.buckets().is_empty());
    // Revoking bob's membership.
    h.txn(vec![delete("list_members", &[s("1"), s("bob")])]);
    let (keys, after) = h.members(1, r#"["bob"]"#);
    assert!(keys.is_empty());
    assert!(after > version);
    // Truncating the membership table clears its index entries too.
    h.txn(vec![
        insert("list_members", &[s("1"), s("dan")]),
        insert("list_members", &[s("1"), s("eve")]),
    ]);
    assert_eq!(h.members(1, r#"["dan"]"#).0, ["1"]);
    h.txn(vec![PgOutput::Truncate(Truncate {
        options: 0,
        relation_ids: vec![Harness::relation("list_members")],
    })]);
    assert!(h.members(1, r#"["dan"]"#).0.is_empty());
    assert!(h.members(1, r#"["eve"]"#).0.is_empty());
}

#[test]
fn a_complete_transaction_commits_before_one_its_batch_leaves_unfinished() {
    let (_pg, schema) = compiled();
    let dir = tempfile::tempdir().expect("dir");
    let mut store = StoreWriter::open(&database_path(dir.path())).expect("store");
    store
        .reinitialise(&schema.version, "slot", "epoch")
        .expect("init");
    store.commit().expect("commit");
    let mut handle = super::spawn_writer(store, Arc::new(schema));
    let begin = |lsn: u64| {
        PgOutput::Begin(Begin {
            final_lsn: Lsn(lsn),
            commit_time: 0,
            xid: 1,
        })
    };
    // One batch: a whole transaction, then the start of the next one.
    let mut batch = relations();
    batch.extend([
        begin(0x2000),
        insert("comments", &[s("1"), s("1"), s("a")]),
        PgOutput::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(0x2000),
            end_lsn: Lsn(0x2008),
            commit_time: 0,
        }),
        begin(0x3000),
        insert("comments", &[s("2"), s("1"), s("b")]),
    ]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let stored = rt.block_on(async {
        handle
            .tx
            .send(super::WriterMsg::Replicated(batch))
            .await
            .expect("send");
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            handle.progress.wait_for(|p| p.durable_lsn >= Lsn(0x2008)),
        )
        .await
        .is_ok()
    });
    assert!(stored, "the complete transaction waited for the next one");
    handle.close_and_join().expect("writer");
}
