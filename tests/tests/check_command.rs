//! `outpost check` validates schema files against the live catalog: exit 0
//! on a good schema; non-zero on an unknown column, naming the file, line,
//! column and the unknown column.

use anyhow::{Context, ensure};
use outpost_tests::{TestDb, free_port, outpost_binary};
use std::process::Command;

const SETUP: &str = "CREATE TABLE items (id bigint PRIMARY KEY, owner text NOT NULL, title text);";

const GOOD: &str = r#"[shapes.my_items]
table = "items"
columns = ["id", "owner", "title"]
where = "owner = auth.sub"
"#;

const BAD: &str = r#"# An unknown column.
[shapes.broken]
table = "items"
columns = ["id", "no_such_column", "title"]
"#;

/// `outpost check` with the service's environment and schema directory `schema_dir`.
fn check(db: &TestDb, schema_dir: &std::path::Path) -> anyhow::Result<std::process::Output> {
    let mut env = db.service_env(free_port()?);
    env.retain(|(k, _)| k != "OUTPOST_SCHEMA_DIR");
    Command::new(outpost_binary()?)
        .arg("check")
        .envs(env)
        .env("OUTPOST_SCHEMA_DIR", schema_dir)
        .current_dir(db.work_dir())
        .output()
        .context("running outpost check")
}

#[tokio::test(flavor = "multi_thread")]
async fn check_command() -> anyhow::Result<()> {
    let db = TestDb::start(SETUP, GOOD).await?;

    let out = tokio::task::block_in_place(|| check(&db, db.schema_dir()))?;
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "outpost check failed on the good schema ({}):\n{printed}",
        out.status
    );

    let bad_dir = db.work_dir().join("bad-schema");
    std::fs::create_dir_all(&bad_dir)?;
    std::fs::write(bad_dir.join("good.toml"), GOOD)?;
    std::fs::write(bad_dir.join("bad.toml"), BAD)?;
    let out = tokio::task::block_in_place(|| check(&db, &bad_dir))?;
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        !out.status.success(),
        "outpost check accepted an unknown column:\n{printed}"
    );
    ensure!(
        printed.contains("no_such_column"),
        "the output does not name the column:\n{printed}"
    );
    // The column's name sits on line 4, at column 18 (its quote) or 19.
    let located = ["bad.toml:4:18", "bad.toml:4:19"]
        .iter()
        .any(|at| printed.contains(at));
    ensure!(
        located,
        "the output does not locate the error as bad.toml:4:<column of no_such_column>:\n{printed}"
    );
    Ok(())
}
