//! Routing cost per change, with few and with many users holding shapes.
//!
//! ```sh
//! cargo run --release -p outpost --example route_bench            # 10 and 100000 users
//! cargo run --release -p outpost --example route_bench -- 10 1000  # other sizes
//! ```
//!
//! For each number of users N it builds a store for the example app's
//! sharing shapes (lists owned or shared through `list_members`, their
//! todos, and comments reached through two hops) over the same data: 100 000
//! lists, each with a todo and a comment, owned by and shared with the N
//! users in turn. Then it applies the same changes through the ingest, one
//! replicated transaction each, and times them: updating a todo, adding a
//! comment, moving a todo to another list (its comments are routed again),
//! and granting a membership. Routing reads a bucket definition per shape
//! branch and a parent row per hop; it never looks at users, so the time per
//! change should not grow with N.
//!
//! The catalog comes from a throwaway Postgres cluster (the tables only);
//! the rows and changes are generated here and fed to the ingest directly.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use outpost::ingest::RowChanges;
use outpost::lsn::Lsn;
use outpost::pgcluster::PgCluster;
use outpost::replication::{
    Begin, Commit, Insert, PgOutput, Relation, RelationColumn, Tuple, TupleValue, Update,
};
use outpost::schema::{Catalog, CompiledSchema, SchemaSource, compile};
use outpost::store::{StoreWriter, TextRow, database_path};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SQL: &str = "
CREATE TABLE lists (id bigint PRIMARY KEY, owner text NOT NULL, name text NOT NULL,
                    archived boolean NOT NULL DEFAULT false);
CREATE TABLE list_members (list_id bigint NOT NULL, user_id text NOT NULL,
                           PRIMARY KEY (list_id, user_id));
CREATE TABLE todos (id bigint PRIMARY KEY, list_id bigint NOT NULL, owner text NOT NULL,
                    title text NOT NULL, done boolean NOT NULL DEFAULT false);
CREATE TABLE comments (id bigint PRIMARY KEY, todo_id bigint NOT NULL, author text NOT NULL,
                       body text NOT NULL);
";

const VISIBLE: &str = "SELECT id FROM lists WHERE NOT archived AND (owner = auth.sub \
     OR id IN (SELECT list_id FROM list_members WHERE user_id = auth.sub))";

fn shapes() -> String {
    format!(
        r#"
[shapes.lists]
table = "lists"
where = "NOT archived AND (owner = auth.sub OR id IN (SELECT list_id FROM list_members WHERE user_id = auth.sub))"

[shapes.list_members]
table = "list_members"
where = "list_id IN ({VISIBLE})"

[shapes.todos]
table = "todos"
where = "list_id IN ({VISIBLE})"

[shapes.comments]
table = "comments"
where = "todo_id IN (SELECT id FROM todos WHERE list_id IN ({VISIBLE}))"
"#
    )
}

/// Changes timed per number of users.
const CHANGES: usize = 4_000;
/// Lists (each with a todo and a comment) in every store.
const LISTS: usize = 100_000;
/// Store commits every this many replicated transactions (group commit).
const COMMIT_EVERY: usize = 50;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    UpdateTodo,
    AddComment,
    MoveTodo,
    Grant,
}

impl Change {
    const ALL: [Change; 4] = [
        Change::UpdateTodo,
        Change::AddComment,
        Change::MoveTodo,
        Change::Grant,
    ];

    fn name(self) -> &'static str {
        match self {
            Change::UpdateTodo => "update a todo",
            Change::AddComment => "add a comment",
            Change::MoveTodo => "move a todo (+ its comments)",
            Change::Grant => "grant a membership",
        }
    }
}

fn compiled() -> anyhow::Result<(PgCluster, CompiledSchema)> {
    let source = SchemaSource::from_files(vec![(PathBuf::from("bench.toml"), shapes())])
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let pg =
        PgCluster::start().context("starting a throwaway Postgres (initdb must be installed)")?;
    pg.create_database("bench")?;
    pg.psql("bench", SQL)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let catalog = rt.block_on(async {
        let (client, connection) =
            tokio_postgres::connect(&pg.url("bench"), tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        anyhow::Ok(Catalog::load(&client, &source.read_tables()).await?)
    })?;
    let schema = compile(&source, &catalog).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((pg, schema))
}

fn tuple(values: &[String]) -> Tuple {
    Tuple(
        values
            .iter()
            .map(|v| TupleValue::Text(Bytes::copy_from_slice(v.as_bytes())))
            .collect(),
    )
}

struct Bench {
    schema: Arc<CompiledSchema>,
    store: StoreWriter,
    changes: RowChanges,
    lsn: u64,
    /// The list each todo is in now.
    todo_list: Vec<usize>,
    _dir: tempfile::TempDir,
}

impl Bench {
    fn table(&self, name: &str) -> usize {
        self.schema
            .table_index("public", name)
            .unwrap_or_else(|| panic!("table {name}"))
    }

    fn relation(&self, name: &str) -> u32 {
        1000 + self.table(name) as u32
    }

    /// A store holding [`LISTS`] lists with a todo and a comment each, owned
    /// by and shared with `users` users in turn.
    fn new(schema: Arc<CompiledSchema>, users: usize) -> anyhow::Result<Bench> {
        let dir = tempfile::tempdir()?;
        let mut store = StoreWriter::open(&database_path(dir.path()))?;
        store.reinitialise(&schema.version, "bench", "bench")?;
        let mut bench = Bench {
            schema: schema.clone(),
            store,
            changes: RowChanges::new(schema.clone()),
            lsn: 0x1000,
            todo_list: (0..LISTS).collect(),
            _dir: dir,
        };
        let (lists, members, todos, comments) = (
            bench.table("lists"),
            bench.table("list_members"),
            bench.table("todos"),
            bench.table("comments"),
        );
        let row = |v: &[&str]| TextRow(v.iter().map(|s| Some(s.to_string())).collect());
        let mut load = RowChanges::new(schema.clone());
        for l in 0..LISTS {
            let id = l.to_string();
            let owner = format!("user{}", l % users);
            let member = format!("user{}", (l + 1) % users);
            let store = &mut bench.store;
            load.snapshot_row(store, lists, row(&[&id, &owner, "list", "f"]))?;
            load.snapshot_row(store, members, row(&[&id, &member]))?;
            load.snapshot_row(store, todos, row(&[&id, &id, &owner, "todo", "f"]))?;
            load.snapshot_row(store, comments, row(&[&id, &id, &owner, "hi"]))?;
        }
        bench.store.mark_commit(Lsn(0xfff), Lsn(0x1000));
        bench.store.commit()?;
        for name in ["lists", "list_members", "todos", "comments"] {
            let t = bench.table(name);
            let relation = Relation {
                id: bench.relation(name),
                namespace: "public".into(),
                name: name.into(),
                replica_identity: b'd',
                columns: schema.tables[t]
                    .columns
                    .iter()
                    .map(|c| RelationColumn {
                        is_key: false,
                        name: c.name.clone(),
                        type_oid: c.type_oid,
                        type_modifier: -1,
                    })
                    .collect(),
            };
            bench
                .changes
                .apply(&mut bench.store, PgOutput::Relation(relation))?;
        }
        Ok(bench)
    }

    /// Applies one replicated transaction holding `message`.
    fn txn(&mut self, message: PgOutput) -> anyhow::Result<()> {
        self.lsn += 0x100;
        let lsn = Lsn(self.lsn);
        let begin = PgOutput::Begin(Begin {
            final_lsn: lsn,
            commit_time: 0,
            xid: 1,
        });
        let commit = PgOutput::Commit(Commit {
            flags: 0,
            commit_lsn: lsn,
            end_lsn: Lsn(self.lsn + 8),
            commit_time: 0,
        });
        for m in [begin, message, commit] {
            self.changes.apply(&mut self.store, m)?;
        }
        Ok(())
    }

    /// Times [`CHANGES`] changes (the same ones whatever the number of
    /// users, apart from which user a grant names); returns the time spent
    /// routing and storing each kind and how many there were, then the time
    /// spent committing the store. `round` keeps runs apart.
    fn run(&mut self, users: usize, round: usize) -> anyhow::Result<Timings> {
        let mut rng = StdRng::seed_from_u64(7 + round as u64);
        // One entry per kind, then the store commits (spread over all changes).
        let mut spent = vec![(Duration::ZERO, 0usize); Change::ALL.len() + 1];
        let mut next_comment = LISTS * (round + 1);
        for i in 0..CHANGES {
            let kind = i % Change::ALL.len();
            let list = rng.random_range(0..LISTS);
            let t = rng.random_range(0..LISTS);
            let user = format!("user{}", rng.random_range(0..users));
            let todo = |list: usize, title: &str| {
                tuple(&[
                    t.to_string(),
                    list.to_string(),
                    "owner".into(),
                    title.into(),
                    "f".into(),
                ])
            };
            let message = match Change::ALL[kind] {
                Change::UpdateTodo => PgOutput::Update(Update {
                    relation_id: self.relation("todos"),
                    old: None,
                    key: None,
                    new: todo(self.todo_list[t], &format!("todo {i}")),
                }),
                Change::AddComment => {
                    next_comment += 1;
                    PgOutput::Insert(Insert {
                        relation_id: self.relation("comments"),
                        new: tuple(&[
                            next_comment.to_string(),
                            t.to_string(),
                            user,
                            format!("c {i}"),
                        ]),
                    })
                }
                Change::MoveTodo => {
                    self.todo_list[t] = list;
                    PgOutput::Update(Update {
                        relation_id: self.relation("todos"),
                        old: None,
                        key: None,
                        new: todo(list, "moved"),
                    })
                }
                Change::Grant => PgOutput::Insert(Insert {
                    relation_id: self.relation("list_members"),
                    new: tuple(&[list.to_string(), user]),
                }),
            };
            let started = Instant::now();
            self.txn(message)?;
            spent[kind].0 += started.elapsed();
            spent[kind].1 += 1;
            if (i + 1) % COMMIT_EVERY == 0 {
                let started = Instant::now();
                self.store.commit()?;
                spent[Change::ALL.len()].0 += started.elapsed();
            }
        }
        self.store.commit()?;
        spent[Change::ALL.len()].1 = CHANGES;
        Ok(spent)
    }
}

/// Per kind of change, then for the commits: time spent and count.
type Timings = Vec<(Duration, usize)>;

fn micros((d, n): (Duration, usize)) -> f64 {
    d.as_secs_f64() * 1e6 / n.max(1) as f64
}

fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().context("arguments are numbers of users"))
        .collect::<anyhow::Result<_>>()?;
    let sizes = if sizes.is_empty() {
        vec![10, 100_000]
    } else {
        sizes
    };
    let (_pg, schema) = compiled()?;
    let schema = Arc::new(schema);
    let mut results: Vec<Timings> = Vec::new();
    for &users in &sizes {
        let users = users.max(2);
        let started = Instant::now();
        let mut bench = Bench::new(schema.clone(), users)?;
        eprintln!(
            "{users} users: store of {} rows built in {:.1} s",
            LISTS * 4,
            started.elapsed().as_secs_f64()
        );
        // Warm the caches once, then measure.
        bench.run(users, 0)?;
        results.push(bench.run(users, 1)?);
    }
    let ratio = |row: &dyn Fn(&Timings) -> f64| match (results.first(), results.last()) {
        (Some(a), Some(b)) if results.len() >= 2 => format!("{:>10.2}", row(b) / row(a)),
        _ => String::new(),
    };
    println!();
    print!("{:<32}", "µs per change");
    for users in &sizes {
        print!("{:>14}", format!("{users} users"));
    }
    println!(
        "{}",
        if sizes.len() >= 2 {
            format!("{:>10}", "ratio")
        } else {
            String::new()
        }
    );
    for (k, change) in Change::ALL.iter().enumerate() {
        print!("{:<32}", change.name());
        for r in &results {
            print!("{:>14.1}", micros(r[k]));
        }
        println!("{}", ratio(&|r| micros(r[k])));
    }
    print!("{:<32}", "store commits, per change");
    for r in &results {
        print!("{:>14.1}", micros(r[Change::ALL.len()]));
    }
    println!("{}", ratio(&|r| micros(r[Change::ALL.len()])));
    let total = |r: &Timings| micros((r.iter().map(|e| e.0).sum(), CHANGES));
    print!("{:<32}", "all changes, with commits");
    for r in &results {
        print!("{:>14.1}", total(r));
    }
    println!("{}", ratio(&total));
    println!(
        "\nratio: time per change with {} users / with {} users (1.0: independent of the number of users)",
        sizes.last().copied().unwrap_or(0),
        sizes.first().copied().unwrap_or(0)
    );
    Ok(())
}
