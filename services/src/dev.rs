//! `outpost dev`: everything needed to try Outpost on one machine.
//!
//! Creates a throwaway Postgres cluster from the installed binaries, loads
//! the example todo app from `schema/` (its `*.sql` files, then its schema
//! files), starts the service with a random HS256 secret, prints demo tokens
//! and the client commands to try, and — when the `outpost-client` binary
//! sits next to this one — runs a short scripted demo with it: two users'
//! replicas, a change arriving live, then a list shared with bob arriving in
//! his replica and leaving it when the share is revoked. Ctrl-C stops
//! everything and removes the cluster.

use anyhow::{Context, bail};
use outpost::auth::AuthConfig;
use outpost::config::ServiceConfig;
use outpost::pgcluster::PgCluster;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(clap::Args)]
pub struct DevArgs {
    /// The directory with the example app's SQL and schema files.
    #[arg(long, default_value = "schema")]
    schema_dir: PathBuf,
    /// Where the gRPC server listens.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: String,
    /// Skip the scripted client demo.
    #[arg(long)]
    no_demo: bool,
    /// Exit after the scripted demo instead of serving until Ctrl-C.
    #[arg(long)]
    exit_after_demo: bool,
}

const DATABASE: &str = "outpost_demo";

fn sql_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| {
            format!(
                "reading {} (run from the repository root, or pass --schema-dir)",
                dir.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    Ok(files)
}

fn token(secret: &str, sub: &str) -> anyhow::Result<String> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 7 * 24 * 3600;
    Ok(outpost::auth::sign_hs256(
        secret,
        &serde_json::json!({ "sub": sub, "exp": exp }),
    )?)
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    eprintln!("outpost dev: starting a throwaway Postgres cluster…");
    let pg = tokio::task::spawn_blocking(PgCluster::start).await??;
    eprintln!("outpost dev: Postgres is up on port {}", pg.port());
    pg.create_database(DATABASE)?;
    let files = sql_files(&args.schema_dir)?;
    if files.is_empty() {
        bail!(
            "no *.sql files in {}: nothing to load",
            args.schema_dir.display()
        );
    }
    for file in &files {
        let sql =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        pg.psql(DATABASE, &sql)
            .with_context(|| format!("loading {}", file.display()))?;
        eprintln!("outpost dev: loaded {}", file.display());
    }
    let data_dir = tempfile::Builder::new().prefix("outpost-dev-").tempdir()?;
    let secret = format!("{:032x}", rand::random::<u128>());
    let cfg = ServiceConfig {
        database_url: pg.url(DATABASE),
        schema_dir: args.schema_dir.clone(),
        data_dir: data_dir.path().to_path_buf(),
        listen: args
            .listen
            .parse()
            .context("--listen must be an address like 127.0.0.1:7400")?,
        slot: "outpost".into(),
        publication: "outpost".into(),
        create_publication: true,
        keepalive_secs: 15,
        limits: Default::default(),
        auth: AuthConfig {
            hs256_secret: Some(secret.clone()),
            leeway_secs: 30,
            ..AuthConfig::default()
        },
    };
    let service = outpost::service::start(cfg).await?;
    let server = format!("http://{}", service.addr);
    let alice = token(&secret, "alice")?;
    let bob = token(&secret, "bob")?;
    let client = client_binary();
    let client_cmd = client.as_ref().map_or_else(
        || "cargo run -p outpost-client --".to_string(),
        |p| p.display().to_string(),
    );
    println!();
    println!(
        "Outpost is running: gRPC on {server}, Postgres at {}",
        pg.url(DATABASE)
    );
    println!();
    println!("Demo tokens (HS256, valid 7 days):");
    println!("  alice: {alice}");
    println!("  bob:   {bob}");
    println!();
    println!("Sync alice's replica (keeps running, Ctrl-C to stop):");
    println!("  {client_cmd} sync --server {server} --token {alice} --db alice.db");
    println!("Then look at it, or change Postgres and watch the change arrive:");
    println!("  {client_cmd} query --db alice.db \"SELECT * FROM todos\"");
    println!(
        "  psql '{}' -c \"INSERT INTO todos (list_id, owner, title) VALUES (1, 'alice', 'Buy milk')\"",
        pg.url(DATABASE)
    );
    println!("Share a list with bob, or stop sharing it, and watch his replica follow:");
    println!(
        "  psql '{}' -c \"INSERT INTO list_members (list_id, user_id) VALUES (1, 'bob')\"",
        pg.url(DATABASE)
    );
    println!(
        "  psql '{}' -c \"DELETE FROM list_members WHERE list_id = 1 AND user_id = 'bob'\"",
        pg.url(DATABASE)
    );
    println!();

    if !args.no_demo {
        match &client {
            Some(client) => {
                let demo_dir = tempfile::Builder::new().prefix("outpost-demo-").tempdir()?;
                let result = demo(client, &server, &alice, &bob, &pg, demo_dir.path()).await;
                if let Err(e) = result {
                    eprintln!("outpost dev: the scripted demo failed: {e:#}");
                    if args.exit_after_demo {
                        let _ = service.shutdown().await;
                        return Err(e);
                    }
                }
            }
            None => eprintln!(
                "outpost dev: outpost-client not found next to this binary; build it with `cargo build --workspace` for the scripted demo"
            ),
        }
    }
    if args.exit_after_demo {
        service.shutdown().await?;
        return Ok(());
    }
    eprintln!("outpost dev: serving; Ctrl-C stops the service and removes the cluster");
    service.run_until(super::stop_requested()?).await?;
    drop(pg);
    eprintln!("outpost dev: stopped, cluster removed");
    Ok(())
}

/// `outpost-client` next to the running binary, if it was built.
fn client_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let candidate = exe.parent()?.join("outpost-client");
    candidate.is_file().then_some(candidate)
}

fn run_client(client: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(client)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .with_context(|| format!("running {}", client.display()))?;
    if !out.status.success() {
        bail!(
            "outpost-client {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Syncs `db` once at a time until `query` on it satisfies `done`; returns
/// the last query result.
async fn sync_until(
    client: &Path,
    server: &str,
    token: &str,
    db: &str,
    query: &str,
    done: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let mut rows = String::new();
    for _ in 0..50 {
        let c = client.to_path_buf();
        let (s, t, d) = (server.to_string(), token.to_string(), db.to_string());
        tokio::task::spawn_blocking(move || {
            run_client(
                &c,
                &["sync", "--server", &s, "--token", &t, "--db", &d, "--once"],
            )
        })
        .await??;
        rows = run_client(client, &["query", "--db", db, query])?;
        if done(&rows) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Ok(rows)
}

async fn demo(
    client: &Path,
    server: &str,
    alice: &str,
    bob: &str,
    pg: &PgCluster,
    dir: &Path,
) -> anyhow::Result<()> {
    let alice_db = dir.join("alice.db").display().to_string();
    let bob_db = dir.join("bob.db").display().to_string();
    let step = |title: &str| println!("── {title}");
    const TODOS: &str = "SELECT id, list_id, title, done FROM todos ORDER BY id";
    step("demo 1: alice and bob sync their replicas (each sees only their own lists)");
    for (name, token, db) in [("alice", alice, &alice_db), ("bob", bob, &bob_db)] {
        let rows = sync_until(client, server, token, db, TODOS, |_| true).await?;
        println!("{name}'s todos:\n{}", indent(&rows));
    }
    step("demo 2: a change in Postgres reaches alice's replica");
    pg.psql(DATABASE, "INSERT INTO todos (list_id, owner, title) VALUES (1, 'alice', 'Written in Postgres just now')")?;
    let rows = sync_until(client, server, alice, &alice_db, TODOS, |r| {
        r.contains("Written in Postgres just now")
    })
    .await?;
    println!("alice's todos now:\n{}", indent(&rows));
    if !rows.contains("Written in Postgres just now") {
        bail!("the new row did not reach alice's replica");
    }
    step("demo 3: alice shares her Groceries list with bob");
    let share = "INSERT INTO list_members (list_id, user_id) VALUES (1, 'bob')";
    println!("   psql: {share}");
    pg.psql(DATABASE, share)?;
    const SHARED: &str = "SELECT l.name AS list, t.title, count(c.id) AS comments \
         FROM lists l JOIN todos t ON t.list_id = l.id LEFT JOIN comments c ON c.todo_id = t.id \
         GROUP BY l.name, t.id, t.title ORDER BY t.id";
    let rows = sync_until(client, server, bob, &bob_db, SHARED, |r| {
        r.contains("Groceries")
    })
    .await?;
    println!("bob's lists, todos and comments now:\n{}", indent(&rows));
    if !rows.contains("Groceries") {
        bail!("the shared list did not reach bob's replica");
    }
    step("demo 4: alice stops sharing it; its rows leave bob's replica");
    let revoke = "DELETE FROM list_members WHERE list_id = 1 AND user_id = 'bob'";
    println!("   psql: {revoke}");
    pg.psql(DATABASE, revoke)?;
    let rows = sync_until(client, server, bob, &bob_db, SHARED, |r| {
        !r.contains("Groceries")
    })
    .await?;
    println!("bob's lists, todos and comments now:\n{}", indent(&rows));
    if rows.contains("Groceries") {
        bail!("the revoked list is still in bob's replica");
    }
    write_demo(client, server, alice, &alice_db, pg).await
}

/// Demos 5 and 6: local writes reach Postgres; a refused write comes back.
async fn write_demo(
    client: &Path,
    server: &str,
    alice: &str,
    alice_db: &str,
    pg: &PgCluster,
) -> anyhow::Result<()> {
    let step = |title: &str| println!("── {title}");
    step("demo 5: alice writes to her replica with plain SQL; the writes reach Postgres");
    let write = "UPDATE todos SET done = 1, likes = likes + 1 WHERE id = 1; \
                 INSERT INTO todos (id, list_id, owner, title) VALUES (1000, 2, 'alice', 'Written in alice''s replica')";
    println!("   outpost-client exec: {write}");
    run_client(client, &["exec", "--db", alice_db, write])?;
    sync_until(client, server, alice, alice_db, "SELECT 1", |_| true).await?;
    let in_pg = pg.psql(
        DATABASE,
        "SELECT id, title, done, likes FROM todos WHERE id IN (1, 1000) ORDER BY id",
    )?;
    println!("in Postgres now:\n{}", indent(&in_pg));
    if !in_pg.contains("Written in alice's replica") {
        bail!("alice's local insert did not reach Postgres");
    }
    step("demo 6: a write the rules refuse is reported back and undone in the replica");
    let refused = "UPDATE todos SET owner = 'bob' WHERE id = 2";
    println!("   outpost-client exec: {refused}   (rule: update needs new.owner = auth.sub)");
    run_client(client, &["exec", "--db", alice_db, refused])?;
    let rows = sync_until(
        client,
        server,
        alice,
        alice_db,
        "SELECT reason_code, message FROM _outpost_rejections ORDER BY id DESC LIMIT 1",
        |r| r.contains("permission_denied"),
    )
    .await?;
    println!("alice's _outpost_rejections:\n{}", indent(&rows));
    let owner = run_client(
        client,
        &[
            "query",
            "--db",
            alice_db,
            "SELECT id, owner FROM todos WHERE id = 2",
        ],
    )?;
    println!(
        "todo 2 in alice's replica, back to the server's value:\n{}",
        indent(&owner)
    );
    if !rows.contains("permission_denied") || !owner.contains("alice") {
        bail!("the refused write was not reported and undone");
    }
    Ok(())
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("   {l}\n")).collect()
}
