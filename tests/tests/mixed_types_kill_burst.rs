//! A burst of random changes to a table that mixes types (numeric, floats with
//! NaN and ±Infinity, timestamps written far from UTC, dates, booleans, jsonb,
//! text arrays, bytea, uuids and a TOASTed text most updates leave alone),
//! with rows moving between three synced users and a fourth owner nobody
//! syncs, while the service is killed with SIGKILL twice and restarted on the
//! same data directory and port. Every replica must end equal to its oracle,
//! without a checksum mismatch or a checkpoint applied twice, and a new
//! client syncing from zero must get the same rows.
//!
//! The database's default settings are hostile (`TimeZone`, `DateStyle`,
//! `IntervalStyle`, `extra_float_digits`), so the service must set its own.
//! `OUTPOST_TEST_SEED` replays a run.

use anyhow::{Context, ensure};
use outpost_tests::{
    Advance, BackgroundClient, ServiceProcess, ShapeQuery, TestDb, check_events, free_port,
    test_seed, wait_for_replica,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const SETUP: &str = "
CREATE TABLE things (
  id bigint PRIMARY KEY,
  owner text NOT NULL,
  amount numeric(20,6),
  score double precision,
  at timestamptz,
  day date,
  flag boolean,
  doc jsonb,
  tags text[],
  data bytea,
  ref uuid,
  note text
);
ALTER TABLE things ALTER COLUMN note SET STORAGE EXTERNAL;
ALTER DATABASE app SET TimeZone = 'Pacific/Chatham';
ALTER DATABASE app SET DateStyle = 'SQL, DMY';
ALTER DATABASE app SET IntervalStyle = 'sql_standard';
ALTER DATABASE app SET extra_float_digits = -15;
";

const SCHEMA: &str = r#"
[shapes.my_things]
table = "things"
where = "owner = auth.sub"
"#;

/// The writers' session: a zone 12:45 or 13:45 hours from UTC, with DST.
const SESSION: &str = "SET TimeZone = 'Pacific/Chatham'; SET DateStyle = 'SQL, DMY';";

const COLUMNS: &[&str] = &[
    "id", "owner", "amount", "score", "at", "day", "flag", "doc", "tags", "data", "ref", "note",
];
const USERS: [&str; 3] = ["alice", "bob", "carol"];
/// Owners rows move between; nobody syncs `dave`.
const OWNERS: [&str; 4] = ["alice", "bob", "carol", "dave"];
const INITIAL_ROWS: i64 = 600;
const BURST_OPS: usize = 5000;
/// The burst touches ids in 1..=MAX_ID.
const MAX_ID: i64 = 1200;
/// Ids 1..=HOT_IDS are changed far more often than the others.
const HOT_IDS: i64 = 12;
const WAIT: Duration = Duration::from_secs(60);

fn shape(user: &str) -> ShapeQuery {
    ShapeQuery::new("things", COLUMNS).where_eq("owner", user)
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Short text with the characters that break naive encoders.
fn short_text(rng: &mut StdRng, max: usize) -> String {
    const SPECIAL: &[&str] = &[
        "", "NULL", "null", " ", "a,b", "{x}", "\"q\"", "\\", "日本", "🎉",
    ];
    const CHARS: &[char] = &[
        'a', 'b', 'Z', '0', ' ', ',', '"', '\'', '\\', '{', '}', 'é', '日', '🎉', '\n', '\t',
    ];
    if rng.random_range(0..5) == 0 {
        return SPECIAL[rng.random_range(0..SPECIAL.len())].to_string();
    }
    let n = rng.random_range(0..=max);
    (0..n)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())])
        .collect()
}

/// A text too large to stay inline: Postgres stores it out of line (TOAST).
fn big_text(rng: &mut StdRng) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,";
    let n = rng.random_range(9_000..20_000);
    let mut s: String = (0..n)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect();
    s.push_str("ünïcødé 🎉");
    s
}

fn numeric(rng: &mut StdRng) -> String {
    match rng.random_range(0..12) {
        0 => "NULL".into(),
        1 => "'NaN'".into(),
        2 => "0".into(),
        3 => "-0.0000005".into(),
        4 => "9999999999999.9999994".into(),
        _ => {
            let int: i64 = rng.random_range(-9_999_999_999_999..=9_999_999_999_999);
            let frac: u64 = rng.random_range(0..100_000_000);
            let sign = if int < 0 { "-" } else { "" };
            // Eight decimals: Postgres rounds them to the column's six.
            format!("{sign}{}.{frac:08}", int.unsigned_abs())
        }
    }
}

fn float(rng: &mut StdRng) -> String {
    match rng.random_range(0..14) {
        0 => "NULL".into(),
        1 => "'NaN'".into(),
        2 => "'Infinity'".into(),
        3 => "'-Infinity'".into(),
        4 => "'-0'".into(),
        5 => "'5e-324'".into(),
        6 => "'1.7976931348623157e308'".into(),
        7 => "0.1".into(),
        8..=10 => format!("'{:?}'", rng.random_range(-1e6..1e6f64)),
        _ => loop {
            let f = f64::from_bits(rng.random::<u64>());
            if f.is_finite() {
                break format!("'{f:?}'");
            }
        },
    }
}

fn timestamptz(rng: &mut StdRng) -> String {
    let y = rng.random_range(1800..2200);
    let (mo, d) = (rng.random_range(1..=12), rng.random_range(1..=28));
    let (h, mi, s) = (
        rng.random_range(0..24),
        rng.random_range(0..60),
        rng.random_range(0..60),
    );
    let micros = if rng.random_bool(0.5) {
        format!(".{:06}", rng.random_range(0..1_000_000))
    } else {
        String::new()
    };
    let local = format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}{micros}");
    match rng.random_range(0..12) {
        0 => "NULL".into(),
        1 => "'infinity'".into(),
        2 => "'-infinity'".into(),
        3 => format!("'{local} BC'"),
        4 | 5 => {
            const OFFSETS: &[&str] = &["+05:45", "-09:30", "+14", "-12", "+00", "-00:00:01"];
            format!("'{local}{}'", OFFSETS[rng.random_range(0..OFFSETS.len())])
        }
        // Around the zone's DST changes (early April and late September).
        6 => format!(
            "'{y:04}-{} 0{}:{mi:02}:00'",
            if rng.random_bool(0.5) {
                "04-05"
            } else {
                "09-28"
            },
            rng.random_range(1..5)
        ),
        // Local time in the session's zone (LMT offsets with seconds before 1901).
        _ => format!("'{local}'"),
    }
}

fn date(rng: &mut StdRng) -> String {
    match rng.random_range(0..10) {
        0 => "NULL".into(),
        1 => "'infinity'".into(),
        2 => "'-infinity'".into(),
        3 => "'0044-03-15 BC'".into(),
        _ => format!(
            "DATE '2000-01-01' + {}",
            rng.random_range(-800_000..800_000)
        ),
    }
}

fn boolean(rng: &mut StdRng) -> String {
    ["NULL", "TRUE", "FALSE"][rng.random_range(0..3)].into()
}

fn json_value(rng: &mut StdRng, depth: u32) -> serde_json::Value {
    use serde_json::Value as J;
    let kinds = if depth >= 3 { 5 } else { 7 };
    match rng.random_range(0..kinds) {
        0 => J::Null,
        1 => J::Bool(rng.random_bool(0.5)),
        2 => match rng.random_range(0..3) {
            0 => J::from(rng.random::<i64>()),
            1 => J::from(rng.random::<u64>()),
            _ => J::from(rng.random_range(-100..100)),
        },
        3 => J::from(rng.random_range(-1e12..1e12f64) / 7.0),
        4 => J::String(short_text(rng, 12)),
        5 => J::Array(
            (0..rng.random_range(0..4))
                .map(|_| json_value(rng, depth + 1))
                .collect(),
        ),
        _ => J::Object(
            (0..rng.random_range(0..4))
                .map(|_| (short_text(rng, 6), json_value(rng, depth + 1)))
                .collect(),
        ),
    }
}

fn jsonb(rng: &mut StdRng) -> String {
    if rng.random_range(0..10) == 0 {
        return "NULL".into();
    }
    format!("{}::jsonb", quote(&json_value(rng, 0).to_string()))
}

fn text_array(rng: &mut StdRng) -> String {
    let element = |rng: &mut StdRng| {
        if rng.random_range(0..6) == 0 {
            "NULL".to_string()
        } else {
            quote(&short_text(rng, 8))
        }
    };
    match rng.random_range(0..10) {
        0 => "NULL".into(),
        1 => "'{}'::text[]".into(),
        2 => {
            let a: Vec<String> = (0..2).map(|_| element(rng)).collect();
            let b: Vec<String> = (0..2).map(|_| element(rng)).collect();
            format!(
                "ARRAY[ARRAY[{}], ARRAY[{}]]::text[]",
                a.join(", "),
                b.join(", ")
            )
        }
        _ => {
            let items: Vec<String> = (0..rng.random_range(1..6)).map(|_| element(rng)).collect();
            format!("ARRAY[{}]::text[]", items.join(", "))
        }
    }
}

fn bytea(rng: &mut StdRng) -> String {
    let n = match rng.random_range(0..10) {
        0 => return "NULL".into(),
        1 => 0,
        2 => rng.random_range(3000..6000),
        _ => rng.random_range(1..64),
    };
    let mut hex = String::with_capacity(2 * n);
    for _ in 0..n {
        let _ = write!(hex, "{:02x}", rng.random::<u8>());
    }
    format!("'\\x{hex}'::bytea")
}

fn uuid(rng: &mut StdRng) -> String {
    let v: u128 = rng.random();
    let h = format!("{v:032x}");
    let hyphenated = format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    );
    match rng.random_range(0..6) {
        0 => "NULL".into(),
        1 => format!("'{}'", hyphenated.to_uppercase()),
        2 => format!("'{{{hyphenated}}}'"),
        3 => format!("'{h}'"),
        _ => format!("'{hyphenated}'"),
    }
}

fn note(rng: &mut StdRng) -> String {
    match rng.random_range(0..10) {
        0..=2 => "NULL".into(),
        3..=5 => quote(&big_text(rng)),
        _ => quote(&short_text(rng, 40)),
    }
}

type Generator = fn(&mut StdRng) -> String;

/// The typed columns an update picks from (every column but the key, the
/// owner and the TOASTed note).
const TYPED: &[(&str, Generator)] = &[
    ("amount", numeric),
    ("score", float),
    ("at", timestamptz),
    ("day", date),
    ("flag", boolean),
    ("doc", jsonb),
    ("tags", text_array),
    ("data", bytea),
    ("ref", uuid),
];

/// An upsert of row `id` with random values; a conflict leaves the note alone.
fn upsert(rng: &mut StdRng, id: i64, owner: &str) -> String {
    let mut values = vec![id.to_string(), quote(owner)];
    for (_, generate) in TYPED {
        values.push(generate(rng));
    }
    values.push(note(rng));
    let set: Vec<String> = TYPED
        .iter()
        .map(|(c, _)| format!("{c} = excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO things ({}) VALUES ({}) ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, {};",
        COLUMNS.join(", "),
        values.join(", "),
        set.join(", ")
    )
}

/// `SET` clauses for 1–3 random typed columns; the note only now and then.
fn random_set(rng: &mut StdRng) -> Vec<String> {
    let mut set = Vec::new();
    let mut used = Vec::new();
    for _ in 0..rng.random_range(1..=3) {
        let (column, generate) = TYPED[rng.random_range(0..TYPED.len())];
        if !used.contains(&column) {
            used.push(column);
            set.push(format!("{column} = {}", generate(rng)));
        }
    }
    if rng.random_range(0..10) == 0 {
        set.push(format!("note = {}", note(rng)));
    }
    set
}

/// One random row operation (it may touch a few rows).
fn random_op(rng: &mut StdRng) -> String {
    // A quarter of the operations go to a few hot rows, so one transaction
    // often changes the same row several times (a new TOASTed note, then an
    // owner change that leaves it out of the new row, then a delete …).
    let id = if rng.random_range(0..4) == 0 {
        rng.random_range(1..=HOT_IDS)
    } else {
        rng.random_range(1..=MAX_ID)
    };
    let owner = OWNERS[rng.random_range(0..OWNERS.len())];
    match rng.random_range(0..21) {
        0..=5 => upsert(rng, id, owner),
        6..=11 => format!(
            "UPDATE things SET {} WHERE id = {id};",
            random_set(rng).join(", ")
        ),
        12..=13 => format!("DELETE FROM things WHERE id = {id};"),
        14..=15 => format!("UPDATE things SET owner = '{owner}' WHERE id = {id};"),
        16 => format!(
            "UPDATE things SET owner = '{owner}', {} WHERE id = {id};",
            random_set(rng).join(", ")
        ),
        17 => format!("UPDATE things SET flag = flag WHERE id = {id};"),
        // A new primary key: pgoutput sends the old key and leaves the
        // unchanged TOASTed note out of the new row.
        18 => {
            let new_id = rng.random_range(1..=MAX_ID);
            format!(
                "UPDATE things SET id = {new_id} WHERE id = {id} \
                 AND NOT EXISTS (SELECT 1 FROM things WHERE id = {new_id});"
            )
        }
        _ => format!(
            "UPDATE things SET flag = NOT flag, amount = amount + 1 WHERE id BETWEEN {id} AND {};",
            id + 8
        ),
    }
}

/// The burst: random operations in transactions of 1–4, never running past
/// `allowed` operations (so the kills land mid-burst whatever the speed of
/// the machine); `done` counts committed operations.
async fn burst(
    client: tokio_postgres::Client,
    seed: u64,
    done: Arc<AtomicUsize>,
    allowed: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_0b57);
    client.batch_execute(SESSION).await?;
    let mut ops = 0usize;
    while ops < BURST_OPS {
        while ops >= allowed.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut sql = String::from("BEGIN;");
        for _ in 0..rng.random_range(1..=4usize) {
            sql.push_str(&random_op(&mut rng));
            ops += 1;
        }
        sql.push_str("COMMIT;");
        client.batch_execute(&sql).await.with_context(|| {
            let cut: String = sql.chars().take(2000).collect();
            format!("burst transaction (seed {seed}): {cut}")
        })?;
        done.store(ops, Ordering::SeqCst);
        if ops % 40 < 4 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn mixed_types_kill_burst() -> anyhow::Result<()> {
    let seed = test_seed("mixed_types_kill_burst");
    let mut rng = StdRng::seed_from_u64(seed);
    let db = TestDb::start(SETUP, SCHEMA).await?;

    // The initial rows, written far from UTC before the service starts.
    let pg = db.client().await?;
    pg.batch_execute(SESSION).await?;
    let mut sql = String::from("BEGIN;");
    for id in 1..=INITIAL_ROWS {
        let owner = OWNERS[(id % 4) as usize];
        sql.push_str(&upsert(&mut rng, id, owner));
    }
    sql.push_str("COMMIT;");
    pg.batch_execute(&sql).await.context("the initial rows")?;

    let port = free_port()?;
    let mut service = ServiceProcess::start(db.service_env(port), port).await?;
    let server = service.url();
    let oracle = db.oracle();
    let tokens: Vec<String> = USERS
        .iter()
        .map(|u| db.token(u))
        .collect::<Result<_, _>>()?;
    let paths: Vec<_> = USERS.iter().map(|u| db.replica_path(u)).collect();
    let mut clients: Vec<BackgroundClient> = (0..USERS.len())
        .map(|i| BackgroundClient::start(&server, &tokens[i], &paths[i]))
        .collect();
    for (i, user) in USERS.iter().enumerate() {
        wait_for_replica(&oracle, &shape(user), &paths[i], Advance::Background, WAIT)
            .await
            .map_err(|e| e.context(format!("initial sync of {user}: {}", clients[i].describe())))?;
    }

    // Two kills at random points of the burst, the second at least 1000
    // operations after the first.
    let first = rng.random_range(500..2500);
    let kill_points = [first, rng.random_range(first + 1000..4500)];
    let done = Arc::new(AtomicUsize::new(0));
    let allowed = Arc::new(AtomicUsize::new(kill_points[0]));
    let burst = tokio::spawn(burst(pg, seed, done.clone(), allowed.clone()));
    let mut killed_at = Vec::new();
    for (k, &point) in kill_points.iter().enumerate() {
        let started = Instant::now();
        while done.load(Ordering::SeqCst) < point {
            if burst.is_finished() {
                let result = burst.await;
                anyhow::bail!("the burst ended before kill {k} (seed {seed}): {result:?}");
            }
            ensure!(
                started.elapsed() < WAIT,
                "the burst made no progress (seed {seed})"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        service.kill()?;
        killed_at.push(done.load(Ordering::SeqCst));
        // The burst goes on while the service is down.
        allowed.store(
            kill_points.get(k + 1).copied().unwrap_or(usize::MAX),
            Ordering::SeqCst,
        );
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..800))).await;
        service.restart().await?;
        tracing::info!(
            kill = k,
            killed_at = killed_at[k],
            restarted_at = done.load(Ordering::SeqCst),
            "service killed and restarted"
        );
    }
    burst
        .await?
        .with_context(|| format!("the burst failed (seed {seed})"))?;

    let dave: i64 = db
        .client()
        .await?
        .query_one(
            "SELECT (SELECT count(*) FROM things WHERE owner = 'dave') \
                  * (SELECT count(*) FROM things WHERE octet_length(note) > 8192)",
            &[],
        )
        .await?
        .get(0);
    ensure!(
        dave > 0,
        "the burst left no rows of dave or no TOASTed notes (seed {seed}); nothing was tested"
    );

    for (i, user) in USERS.iter().enumerate() {
        let result =
            wait_for_replica(&oracle, &shape(user), &paths[i], Advance::Background, WAIT).await;
        if let Err(e) = result {
            service.check_running()?;
            return Err(e.context(format!(
                "{user}'s replica after the kills (seed {seed}, killed after {killed_at:?} ops): {}\n--- service log ---\n{}",
                clients[i].describe(),
                service.log_tail()
            )));
        }
        clients[i].check_running().await?;
        let counts = check_events(clients[i].events()).with_context(|| {
            format!("{user}'s session (seed {seed}, killed after {killed_at:?} ops)")
        })?;
        tracing::info!(user, ?counts, "events");
        ensure!(
            counts.disconnected >= 2,
            "{user}'s client saw {} disconnections, expected one per kill: {counts:?}",
            counts.disconnected
        );
    }

    // A new client syncing from zero gets exactly the oracle too.
    for (i, user) in USERS.iter().enumerate() {
        let path = db.replica_path(&format!("{user}-fresh"));
        let once = Advance::Once {
            server: &server,
            token: &tokens[i],
        };
        wait_for_replica(&oracle, &shape(user), &path, once, WAIT)
            .await
            .map_err(|e| {
                e.context(format!(
                    "a fresh replica of {user} (seed {seed}, killed after {killed_at:?} ops)"
                ))
            })?;
    }

    service.check_running()?;
    drop(clients);
    drop(service);
    Ok(())
}
