//! Last-writer-wins: per column, the newest clock reading wins, ties go to
//! the larger client id, and changes made directly in Postgres count at
//! their commit time.

use super::*;

const SQL: &str = "
CREATE TABLE notes (
    id bigint PRIMARY KEY,
    title text,
    body text
);
";

const RULES: &str = r#"
[shapes.notes]
table = "notes"

[tables.notes]
insert = "true"
update = "true"
delete = "true"
"#;

fn now_ms() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

async fn write(applier: &Applier, client: &str, seq: u64, op: WriteOp) {
    let results = applier
        .apply(client, &claims(client), &[group(seq, vec![op])])
        .await
        .expect("apply");
    assert_eq!(outcomes(&results), [applied()], "{results:?}");
}

fn set(id: i64, column: &str, value: &str, at: u64) -> WriteOp {
    update("notes", id, vec![col(column, text(value))], at)
}

#[test]
fn the_latest_clock_wins_per_column() {
    let pg = cluster(SQL, false);
    runtime().block_on(async {
        let applier = applier(&pg, RULES).await;
        for id in 1..=4 {
            let row = vec![col("title", text("init")), col("body", text("init"))];
            write(
                &applier,
                "setup",
                id as u64,
                insert("notes", id, row, hlc(1_000)),
            )
            .await;
        }
        // Row 1: the newer write arrives first; row 2: last.
        write(&applier, "a", 1, set(1, "title", "newer", hlc(3_000))).await;
        write(&applier, "b", 1, set(1, "title", "older", hlc(2_000))).await;
        write(&applier, "b", 2, set(2, "title", "older", hlc(2_000))).await;
        write(&applier, "a", 2, set(2, "title", "newer", hlc(3_000))).await;
        // Row 3: different columns both survive, whatever their clocks.
        write(&applier, "a", 3, set(3, "title", "from a", hlc(5_000))).await;
        write(&applier, "b", 3, set(3, "body", "from b", hlc(4_000))).await;
        // Row 4: a tie of clocks goes to the larger client id, in either order.
        write(&applier, "b", 4, set(4, "title", "from b", hlc(6_000) + 7)).await;
        write(&applier, "a", 4, set(4, "title", "from a", hlc(6_000) + 7)).await;
        write(&applier, "a", 5, set(4, "body", "from a", hlc(6_000) + 7)).await;
        write(&applier, "b", 5, set(4, "body", "from b", hlc(6_000) + 7)).await;
        // An insert of an existing key merges like an update.
        let late_insert = insert(
            "notes",
            1,
            vec![col("title", text("late insert"))],
            hlc(2_500),
        );
        write(&applier, "c", 1, late_insert).await;
    });
    assert_eq!(
        query(&pg, "SELECT id, title, body FROM notes ORDER BY id"),
        "1|newer|init\n2|newer|init\n3|from a|from b\n4|from b|from b"
    );
}

#[test]
fn direct_changes_count_at_their_commit_time() {
    let pg = cluster(SQL, true);
    runtime().block_on(async {
        let applier = applier(&pg, RULES).await;
        let now = now_ms();
        let row = vec![col("title", text("client")), col("body", text("client"))];
        write(
            &applier,
            "a",
            1,
            insert("notes", 1, row, hlc(now - 120_000)),
        )
        .await;
        pg.psql(DB, "UPDATE notes SET title = 'direct' WHERE id = 1")
            .expect("direct update");
        // Older than the direct commit: the direct value stays.
        write(
            &applier,
            "b",
            1,
            set(1, "title", "stale", hlc(now - 60_000)),
        )
        .await;
        // The other column still carries Outpost's version.
        write(&applier, "b", 2, set(1, "body", "newer", hlc(now - 60_000))).await;
        assert_eq!(
            query(&pg, "SELECT title, body FROM notes WHERE id = 1"),
            "direct|newer"
        );
        // Newer than the direct commit: the client's value wins.
        write(
            &applier,
            "c",
            1,
            set(1, "title", "fresh", hlc(now + 60_000)),
        )
        .await;
        assert_eq!(query(&pg, "SELECT title FROM notes WHERE id = 1"), "fresh");
        // A row inserted directly has no versions: it counts at its commit.
        pg.psql(DB, "INSERT INTO notes VALUES (2, 'direct', 'direct')")
            .expect("direct insert");
        write(
            &applier,
            "c",
            2,
            set(2, "title", "stale", hlc(now - 60_000)),
        )
        .await;
        write(&applier, "c", 3, set(2, "body", "fresh", hlc(now + 60_000))).await;
        assert_eq!(
            query(&pg, "SELECT title, body FROM notes WHERE id = 2"),
            "direct|fresh"
        );
    });
}

#[test]
fn without_commit_timestamps_direct_changes_are_oldest() {
    let pg = cluster(SQL, false);
    runtime().block_on(async {
        let applier = applier(&pg, RULES).await;
        pg.psql(DB, "INSERT INTO notes VALUES (1, 'direct', 'direct')")
            .expect("direct insert");
        write(&applier, "a", 1, set(1, "title", "client", hlc(1))).await;
        assert_eq!(query(&pg, "SELECT title FROM notes WHERE id = 1"), "client");
    });
}

/// Versions kept in the per-column layout of earlier versions
/// (`outpost.column_versions`) are folded into `outpost.row_versions` when
/// the service starts — per column, the greater version of the two tables
/// wins — and still decide last-writer-wins.
#[test]
fn versions_of_the_per_column_layout_are_carried_over() {
    let kept = crate::writes::hlc::value_hash(Some("kept"));
    let body = crate::writes::hlc::value_hash(Some("body"));
    let pg = cluster(
        &format!(
            "{SQL}
            INSERT INTO notes VALUES (1, 'kept', 'body');
            CREATE SCHEMA outpost;
            CREATE TABLE outpost.applied_groups (
                client_id text NOT NULL, seq bigint NOT NULL, status text NOT NULL,
                reason_code text, message text, op_index int, commit_lsn pg_lsn,
                applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (client_id, seq));
            CREATE TABLE outpost.column_versions (
                tbl text NOT NULL, key text NOT NULL, col text NOT NULL, hlc bigint NOT NULL,
                client_id text NOT NULL, value_hash bigint NOT NULL, PRIMARY KEY (tbl, key, col));
            INSERT INTO outpost.column_versions VALUES
                ('public.notes', '[\"1\"]', 'title', {}, 'old', {kept}),
                ('public.notes', '[\"1\"]', 'body', {}, 'old', {body});
            CREATE TABLE outpost.row_versions (
                tbl text NOT NULL, key text NOT NULL, versions jsonb NOT NULL,
                PRIMARY KEY (tbl, key));
            INSERT INTO outpost.row_versions VALUES ('public.notes', '[\"1\"]',
                jsonb_build_object('title', jsonb_build_array({}, 'new', {kept}),
                                   'body', jsonb_build_array({}, 'new', {body})));",
            hlc(5_000),
            hlc(1_000),
            hlc(7_000),
            hlc(500)
        ),
        false,
    );
    runtime().block_on(async {
        let applier = applier(&pg, RULES).await;
        assert_eq!(
            query(
                &pg,
                "SELECT to_regclass('outpost.column_versions') IS NULL, \
                 count(*) FROM outpost.row_versions"
            ),
            "t|1"
        );
        // Per column, the greater version of the two tables was kept: the
        // title's from row_versions (7 s), the body's from column_versions
        // (1 s).
        assert_eq!(
            query(
                &pg,
                &format!("SELECT col, hlc >> 16, client_id FROM {COLUMN_VERSIONS} ORDER BY 1")
            ),
            "body|1000|old\ntitle|7000|new"
        );
        // The recorded title beats a write at 6 s; without it, the value
        // would count as a direct change, older than any write.
        write(&applier, "a", 1, set(1, "title", "older", hlc(6_000))).await;
        write(&applier, "a", 2, set(1, "body", "newer", hlc(4_000))).await;
        assert_eq!(query(&pg, "SELECT title, body FROM notes"), "kept|newer");
        write(&applier, "a", 3, set(1, "title", "newest", hlc(8_000))).await;
        assert_eq!(query(&pg, "SELECT title, body FROM notes"), "newest|newer");
        assert_eq!(
            query(
                &pg,
                &format!("SELECT key, col, hlc >> 16, client_id FROM {COLUMN_VERSIONS} ORDER BY 2")
            ),
            "[\"1\"]|body|4000|a\n[\"1\"]|title|8000|a"
        );
    });
}
