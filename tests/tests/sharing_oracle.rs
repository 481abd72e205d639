//! Shapes over membership tables against the oracle: random users, lists,
//! memberships, todos and comments, and random transactions — grants,
//! revocations, owner changes, archiving, todos moving between lists, cascade
//! deletes, truncation — while every user's client syncs live.
//!
//! Every transaction also sets `clock.step`, a row every user's shapes send.
//! Right after each transaction the test evaluates every user's shapes in
//! Postgres (nothing else writes, so that is the state the transaction left).
//! A poller reads each replica in one read transaction, many times a second:
//! whatever checkpoint it finds, the replica must equal, row for row, the
//! oracle of the step its clock shows — so a replica never holds, at any
//! checkpoint, a row Postgres did not let that user see then. Every few steps
//! the test waits until every replica reached the step and checks that too.
//! Clients are stopped and restarted along the way, so resuming with cursors
//! across membership changes is covered.

use anyhow::{Context, bail, ensure};
use outpost_tests::{
    BackgroundClient, Oracle, ReplicaState, Rows, ShapeQuery, TestDb, check_events, diff_rows,
    test_seed,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SETUP: &str = "
CREATE TABLE clock (id int PRIMARY KEY, step int NOT NULL);
INSERT INTO clock VALUES (1, 0);
CREATE TABLE lists (
    id bigint PRIMARY KEY, owner text NOT NULL, name text NOT NULL,
    archived boolean NOT NULL DEFAULT false);
CREATE TABLE list_members (
    list_id bigint NOT NULL REFERENCES lists (id) ON DELETE CASCADE,
    user_id text NOT NULL,
    PRIMARY KEY (list_id, user_id));
CREATE TABLE todos (
    id bigint PRIMARY KEY,
    list_id bigint NOT NULL REFERENCES lists (id) ON DELETE CASCADE,
    owner text NOT NULL, title text NOT NULL, done boolean NOT NULL DEFAULT false);
CREATE TABLE comments (
    id bigint PRIMARY KEY,
    todo_id bigint NOT NULL REFERENCES todos (id) ON DELETE CASCADE,
    author text NOT NULL, body text NOT NULL);
";

/// The lists a user may see, as a subquery.
const VISIBLE: &str = "SELECT id FROM lists WHERE NOT archived AND (owner = auth.sub \
     OR id IN (SELECT list_id FROM list_members WHERE user_id = auth.sub))";

/// The shapes' `where` clauses, by table (`None`: every row).
fn clauses() -> Vec<(&'static str, Option<String>)> {
    vec![
        ("clock", None),
        (
            "lists",
            Some(
                "NOT archived AND (owner = auth.sub OR id IN \
                 (SELECT list_id FROM list_members WHERE user_id = auth.sub))"
                    .into(),
            ),
        ),
        ("list_members", Some(format!("list_id IN ({VISIBLE})"))),
        ("todos", Some(format!("list_id IN ({VISIBLE})"))),
        (
            "comments",
            Some(format!(
                "todo_id IN (SELECT id FROM todos WHERE NOT done AND list_id IN ({VISIBLE}))"
            )),
        ),
    ]
}

fn schema_toml() -> String {
    let mut out = String::new();
    for (table, clause) in clauses() {
        out.push_str(&format!("[shapes.{table}]\ntable = \"{table}\"\n"));
        if let Some(c) = clause {
            out.push_str(&format!("where = '''{c}'''\n"));
        }
        out.push('\n');
    }
    out
}

/// Every shape of `user`, as Postgres evaluates it.
fn shapes(user: &str) -> Vec<ShapeQuery> {
    let columns: HashMap<&str, &[&str]> = [
        ("clock", &["id", "step"][..]),
        ("lists", &["id", "owner", "name", "archived"][..]),
        ("list_members", &["list_id", "user_id"][..]),
        ("todos", &["id", "list_id", "owner", "title", "done"][..]),
        ("comments", &["id", "todo_id", "author", "body"][..]),
    ]
    .into();
    clauses()
        .into_iter()
        .map(|(table, clause)| {
            let mut q = ShapeQuery::new(table, columns[table]);
            if table == "list_members" {
                q.key = vec!["list_id".into(), "user_id".into()];
            }
            match clause {
                Some(c) => q.filtered(c.replace("auth.sub", &format!("'{user}'"))),
                None => q,
            }
        })
        .collect()
}

/// Users with a client; `zed` owns and joins lists but never syncs.
const USERS: [&str; 5] = ["ann", "bob", "cat", "dan", "eve"];
const ALL_USERS: [&str; 6] = ["ann", "bob", "cat", "dan", "eve", "zed"];
const STEPS: u32 = 140;
const WAIT: Duration = Duration::from_secs(60);

/// What the oracle said after each step: step → per user, per shape.
type Expected = HashMap<i64, Vec<Vec<Rows>>>;

/// The clock step a replica state shows.
fn step_of(rows: &[Rows]) -> Option<i64> {
    let clock = rows.first()?;
    match &clock.value(1, "step")?.kind {
        Some(outpost_proto::v1::value::Kind::Integer(i)) => Some(*i),
        _ => None,
    }
}

fn compare(user: &str, shapes: &[ShapeQuery], want: &[Rows], got: &[Rows]) -> Option<String> {
    let mut out = String::new();
    for ((shape, w), g) in shapes.iter().zip(want).zip(got) {
        if w != g {
            out.push_str(&format!("{user}.{}:\n{}\n", shape.table, diff_rows(w, g)));
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The ids of a table's rows.
async fn ids(pg: &tokio_postgres::Client, sql: &str) -> anyhow::Result<Vec<i64>> {
    Ok(pg.query(sql, &[]).await?.iter().map(|r| r.get(0)).collect())
}

/// Picks one of `items`.
fn pick<T: Clone>(rng: &mut StdRng, items: &[T]) -> Option<T> {
    (!items.is_empty()).then(|| items[rng.random_range(0..items.len())].clone())
}

struct Ids {
    list: i64,
    todo: i64,
    comment: i64,
}

/// One random statement, given the rows that exist now.
async fn statement(
    rng: &mut StdRng,
    pg: &tokio_postgres::Client,
    next: &mut Ids,
) -> anyhow::Result<String> {
    let lists = ids(pg, "SELECT id FROM lists ORDER BY id").await?;
    let todos = ids(pg, "SELECT id FROM todos ORDER BY id").await?;
    let comments = ids(pg, "SELECT id FROM comments ORDER BY id").await?;
    let members: Vec<(i64, String)> = pg
        .query(
            "SELECT list_id, user_id FROM list_members ORDER BY 1, 2",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let user = pick(rng, &ALL_USERS).unwrap_or("ann");
    let sql = match rng.random_range(0..100) {
        0..8 => {
            next.list += 1;
            format!(
                "INSERT INTO lists (id, owner, name) VALUES ({}, '{user}', 'list {}')",
                next.list, next.list
            )
        }
        8..24 => match pick(rng, &lists) {
            Some(l) => {
                format!("INSERT INTO list_members VALUES ({l}, '{user}') ON CONFLICT DO NOTHING")
            }
            None => String::new(),
        },
        24..36 => match pick(rng, &members) {
            Some((l, u)) => {
                format!("DELETE FROM list_members WHERE list_id = {l} AND user_id = '{u}'")
            }
            None => String::new(),
        },
        36..42 => match pick(rng, &lists) {
            Some(l) => format!("UPDATE lists SET owner = '{user}' WHERE id = {l}"),
            None => String::new(),
        },
        42..47 => match pick(rng, &lists) {
            Some(l) => format!("UPDATE lists SET archived = NOT archived WHERE id = {l}"),
            None => String::new(),
        },
        47..60 => match pick(rng, &lists) {
            Some(l) => {
                next.todo += 1;
                format!(
                    "INSERT INTO todos (id, list_id, owner, title) VALUES ({}, {l}, '{user}', 'todo {}')",
                    next.todo, next.todo
                )
            }
            None => String::new(),
        },
        60..70 => match (pick(rng, &todos), pick(rng, &lists)) {
            (Some(t), Some(l)) => format!("UPDATE todos SET list_id = {l} WHERE id = {t}"),
            _ => String::new(),
        },
        70..75 => match pick(rng, &todos) {
            Some(t) => format!("UPDATE todos SET done = NOT done WHERE id = {t}"),
            None => String::new(),
        },
        75..78 => match pick(rng, &todos) {
            Some(t) => format!("UPDATE todos SET title = title || '!' WHERE id = {t}"),
            None => String::new(),
        },
        78..90 => match pick(rng, &todos) {
            Some(t) => {
                next.comment += 1;
                format!(
                    "INSERT INTO comments VALUES ({}, {t}, '{user}', 'comment {}')",
                    next.comment, next.comment
                )
            }
            None => String::new(),
        },
        90..92 => match pick(rng, &comments) {
            Some(c) => {
                next.comment += 1;
                format!("UPDATE comments SET id = {} WHERE id = {c}", next.comment)
            }
            None => String::new(),
        },
        92..94 => match pick(rng, &comments) {
            Some(c) => format!("DELETE FROM comments WHERE id = {c}"),
            None => String::new(),
        },
        94..96 => match pick(rng, &todos) {
            Some(t) => format!("DELETE FROM todos WHERE id = {t}"),
            None => String::new(),
        },
        96..99 => match pick(rng, &lists) {
            Some(l) => format!("DELETE FROM lists WHERE id = {l}"),
            None => String::new(),
        },
        _ => "TRUNCATE list_members".to_string(),
    };
    Ok(sql)
}

/// Polls every replica and checks each state it finds against the oracle of
/// the step its clock shows. Returns (states checked, mismatches).
fn poll_once(
    users: &[(&'static str, std::path::PathBuf, Vec<ShapeQuery>)],
    expected: &Mutex<Expected>,
    pending: &mut Vec<(usize, i64, Vec<Rows>)>,
    checked: &mut u64,
    problems: &mut Vec<String>,
) -> anyhow::Result<()> {
    for (u, (_, path, shapes)) in users.iter().enumerate() {
        let (_, rows) = ReplicaState::read_tables(path, shapes)?;
        let Some(step) = step_of(&rows) else { continue };
        pending.push((u, step, rows));
    }
    let expected = expected.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    pending.retain(|(u, step, rows)| {
        let Some(want) = expected.get(step) else {
            return true;
        };
        *checked += 1;
        let (user, _, shapes) = &users[*u];
        if let Some(diff) = compare(user, shapes, &want[*u], rows)
            && problems.len() < 5
        {
            problems.push(format!("at step {step}, {diff}"));
        }
        false
    });
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_shapes_match_the_oracle_at_every_checkpoint() -> anyhow::Result<()> {
    let seed = test_seed("membership_shapes_match_the_oracle_at_every_checkpoint");
    let mut rng = StdRng::seed_from_u64(seed);
    let db = TestDb::start(SETUP, &schema_toml()).await?;
    let pg = db.client().await?;
    // Initial rows, loaded by the service's snapshot.
    let mut next = Ids {
        list: 0,
        todo: 0,
        comment: 0,
    };
    for _ in 0..40 {
        let sql = statement(&mut rng, &pg, &mut next).await?;
        if !sql.is_empty() {
            pg.batch_execute(&sql).await?;
        }
    }
    let oracle: Oracle = db.oracle();
    let service = outpost::service::start(db.service_config()).await?;
    let server = format!("http://{}", service.addr);

    let users: Vec<(&'static str, std::path::PathBuf, Vec<ShapeQuery>)> = USERS
        .iter()
        .map(|u| (*u, db.replica_path(u), shapes(u)))
        .collect();
    let tokens: Vec<String> = USERS
        .iter()
        .map(|u| db.token(u))
        .collect::<Result<_, _>>()?;
    let mut clients: Vec<Option<BackgroundClient>> = users
        .iter()
        .zip(&tokens)
        .map(|((_, path, _), token)| Some(BackgroundClient::start(&server, token, path)))
        .collect();
    let mut events = Vec::new();

    let expected: Arc<Mutex<Expected>> = Arc::new(Mutex::new(HashMap::new()));
    let oracle_now = |step: i64| {
        let oracle = oracle.clone();
        let users = users.clone();
        let expected = expected.clone();
        async move {
            let mut per_user = Vec::with_capacity(users.len());
            for (_, _, shapes) in &users {
                per_user.push(oracle.rows_many(shapes).await?);
            }
            expected
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .insert(step, per_user);
            anyhow::Ok(())
        }
    };
    oracle_now(0).await?;

    // The poller checks every replica state it can see while steps run; it
    // stops when the test ends, however it ends.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _stop_poller = StopOnDrop(stop.clone());
    let poller = {
        let (users, expected, stop) = (users.clone(), expected.clone(), stop.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, Vec<String>)> {
            let (mut pending, mut checked, mut problems) = (Vec::new(), 0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                poll_once(&users, &expected, &mut pending, &mut checked, &mut problems)?;
                std::thread::sleep(Duration::from_millis(5));
            }
            poll_once(&users, &expected, &mut pending, &mut checked, &mut problems)?;
            Ok((checked, problems))
        })
    };

    let quiescent = |step: i64| {
        let (users, expected) = (users.clone(), expected.clone());
        async move {
            let deadline = Instant::now() + WAIT;
            loop {
                let mut behind = Vec::new();
                for (u, (user, path, shapes)) in users.iter().enumerate() {
                    let (_, rows) = ReplicaState::read_tables(path, shapes)?;
                    let want =
                        expected.lock().map_err(|_| anyhow::anyhow!("poisoned"))?[&step][u].clone();
                    if step_of(&rows) != Some(step) {
                        behind.push(format!("{user} is at step {:?}", step_of(&rows)));
                    } else if let Some(diff) = compare(user, shapes, &want, &rows) {
                        bail!("at step {step} (quiescent), {diff}");
                    }
                }
                if behind.is_empty() {
                    return anyhow::Ok(());
                }
                if Instant::now() >= deadline {
                    bail!("replicas did not reach step {step}: {}", behind.join(", "));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    let mut log = Vec::new();
    for step in 1..=STEPS as i64 {
        let count = if rng.random_range(0..5) == 0 {
            rng.random_range(2..5)
        } else {
            1
        };
        let mut sql = String::from("BEGIN;\n");
        for _ in 0..count {
            let s = statement(&mut rng, &pg, &mut next).await?;
            if !s.is_empty() {
                sql.push_str(&s);
                sql.push_str(";\n");
            }
        }
        sql.push_str(&format!("UPDATE clock SET step = {step};\nCOMMIT;"));
        log.push(format!("step {step}: {}", sql.replace('\n', " ")));
        if let Err(e) = pg.batch_execute(&sql).await {
            // The random statements may contradict each other within a step
            // (e.g. a todo moved to a list the same step deleted): Postgres
            // refuses the step, which then only advances the clock.
            let integrity = e.code().is_some_and(|c| c.code().starts_with("23"));
            if !integrity {
                return Err(e).with_context(|| format!("step {step}: {sql}"));
            }
            pg.batch_execute("ROLLBACK").await.ok();
            pg.batch_execute(&format!("UPDATE clock SET step = {step}"))
                .await
                .with_context(|| format!("step {step}: advancing the clock"))?;
            log.push(format!(
                "step {step}: refused by Postgres ({e}); clock only"
            ));
        }
        oracle_now(step).await?;
        // Now and then a client goes offline for a while, then resumes from
        // its cursors.
        if rng.random_range(0..12) == 0 {
            let u = rng.random_range(0..clients.len());
            match clients[u].take() {
                Some(c) => events.push(c_events(c).await),
                None => {
                    let (_, path, _) = &users[u];
                    clients[u] = Some(BackgroundClient::start(&server, &tokens[u], path));
                }
            }
        }
        if step % 20 == 0 || step == STEPS as i64 {
            for (u, c) in clients.iter_mut().enumerate() {
                if c.is_none() {
                    let (_, path, _) = &users[u];
                    *c = Some(BackgroundClient::start(&server, &tokens[u], path));
                }
            }
            if let Err(e) = quiescent(step).await {
                let mut described = String::new();
                for c in clients.iter_mut().flatten() {
                    described.push_str(&c.describe());
                    described.push('\n');
                }
                bail!(
                    "{e:#}\nseed {seed}\n{described}\nlast steps:\n{}",
                    log[log.len().saturating_sub(8)..].join("\n")
                );
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (checked, problems) = poller.await??;
    if !problems.is_empty() {
        bail!(
            "replica states differed from the oracle (seed {seed}):\n{}\nsteps:\n{}",
            problems.join("\n"),
            log.join("\n")
        );
    }
    ensure!(
        checked > STEPS as u64,
        "only {checked} replica states were checked"
    );
    for c in clients.into_iter().flatten() {
        events.push(c_events(c).await);
    }
    for client_events in &events {
        let counts = check_events(client_events)?;
        tracing::info!(checked, ?counts, "client events");
    }
    service.shutdown().await?;
    Ok(())
}

/// Sets the flag when dropped.
struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Stops a client and returns its events.
async fn c_events(mut c: BackgroundClient) -> Vec<outpost_client::SyncEvent> {
    let events = c.events().to_vec();
    c.stop().await;
    events
}
