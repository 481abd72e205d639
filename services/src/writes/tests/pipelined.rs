//! Statements that share a round trip: what an op writes without reading
//! the answer is seen by the next op and checked before the COMMIT, and the
//! claim decides before any op's verdict.

use outpost_proto::v1::group_result::Status;

use super::*;

const SQL: &str = "
CREATE TABLE lists (
    id bigint PRIMARY KEY,
    owner text NOT NULL,
    name text
);
CREATE TABLE todos (
    id bigint PRIMARY KEY,
    list_id bigint NOT NULL REFERENCES lists (id),
    owner text NOT NULL,
    title text
);
CREATE TABLE notes (
    id uuid PRIMARY KEY,
    owner text NOT NULL,
    body text
);
CREATE PUBLICATION outpost FOR TABLE lists, todos, notes;
";

const RULES: &str = r#"
[shapes.lists]
table = "lists"
where = "owner = auth.sub"

[shapes.todos]
table = "todos"
where = "owner = auth.sub"

[shapes.notes]
table = "notes"
where = "owner = auth.sub"

[tables.lists]
insert = "new.owner = auth.sub"
update = "old.owner = auth.sub AND new.owner = auth.sub"
delete = "old.owner = auth.sub"

[tables.todos]
insert = "new.owner = auth.sub"
update = "old.owner = auth.sub AND new.owner = auth.sub"
delete = "old.owner = auth.sub"

[tables.notes]
insert = "new.owner = auth.sub"
update = "old.owner = auth.sub AND new.owner = auth.sub"
"#;

fn list(id: i64, name: &str, at: u64) -> WriteOp {
    insert(
        "lists",
        id,
        vec![col("owner", text("alice")), col("name", text(name))],
        hlc(at),
    )
}

fn note(id: &str, body: &str, at: u64) -> WriteOp {
    WriteOp {
        kind: write_op::Kind::Insert as i32,
        table: "notes".into(),
        key: vec![text(id)],
        columns: vec![col("owner", text("alice")), col("body", text(body))],
        hlc: hlc(at),
        before: Vec::new(),
    }
}

#[test]
fn later_ops_see_what_earlier_ops_of_their_group_wrote() {
    let pg = cluster(SQL, false);
    runtime().block_on(async {
        let applier = applier(&pg, RULES).await;
        let alice = claims("alice");
        let results = applier
            .apply(
                "c",
                &alice,
                &[
                    // The second write of the row is older: the version the
                    // first recorded, in the same transaction, wins.
                    group(1, vec![list(1, "new", 3_000), list(1, "old", 2_000)]),
                    // Deleted, then inserted anew in the same group.
                    group(2, vec![delete("lists", 1, 4_000), list(1, "again", 1_000)]),
                    group(3, vec![list(2, "b", 1_000), delete("lists", 2, 1_000)]),
                ],
            )
            .await
            .expect("apply");
        assert_eq!(outcomes(&results), [applied(), applied(), applied()]);
        // The row inserted anew has only the versions of its new values.
        let late = applier
            .apply(
                "c",
                &alice,
                &[group(
                    4,
                    vec![update(
                        "lists",
                        1,
                        vec![col("name", text("later"))],
                        hlc(1_500),
                    )],
                )],
            )
            .await
            .expect("apply");
        assert_eq!(outcomes(&late), [applied()]);
    });
    assert_eq!(query(&pg, "SELECT id, name FROM lists"), "1|later");
    assert_eq!(
        query(
            &pg,
            &format!("SELECT key, col, hlc >> 16 FROM {COLUMN_VERSIONS} ORDER BY 1, 2")
        ),
        "[\"1\"]|name|1500\n[\"1\"]|owner|1000"
    );
}

#[test]
fn a_deferred_failure_is_the_group_s_and_its_op_s() {
    let pg = cluster(SQL, false);
    runtime().block_on(async {
        let applier = applier(&pg, RULES).await;
        let alice = claims("alice");
        let todo = insert(
            "todos",
            1,
            vec![
                col("list_id", int(1)),
                col("owner", text("alice")),
                col("title", text("eggs")),
            ],
            hlc(1_000),
        );
        let setup = applier
            .apply("c", &alice, &[group(1, vec![list(1, "a", 1_000), todo])])
            .await
            .expect("apply");
        assert_eq!(outcomes(&setup), [applied()]);
        // The delete goes out with the next op's statements; its failure is
        // reported for it, not for the op after it, and undoes the group.
        let results = applier
            .apply(
                "c",
                &alice,
                &[
                    group(
                        2,
                        vec![
                            list(2, "b", 2_000),
                            delete("lists", 1, 2_000),
                            list(3, "c", 2_000),
                        ],
                    ),
                    group(3, vec![delete("lists", 1, 2_000)]),
                ],
            )
            .await
            .expect("apply");
        assert_eq!(
            outcomes(&results),
            [
                rejected("foreign_key_violation"),
                rejected("foreign_key_violation")
            ]
        );
        assert_eq!(results[0].op_index, 1);
        assert_eq!(results[1].op_index, 0);
    });
    assert_eq!(query(&pg, "SELECT id, name FROM lists"), "1|a");
}

#[test]
fn a_recorded_group_is_a_duplicate_whatever_its_ops() {
    let pg = cluster(SQL, false);
    runtime().block_on(async {
        let applier = applier(&pg, RULES).await;
        let alice = claims("alice");
        let first = applier
            .apply("c", &alice, &[group(1, vec![list(1, "a", 1_000)])])
            .await
            .expect("apply");
        assert_eq!(outcomes(&first), [applied()]);
        // The same seq again, with an op refused before any statement.
        let again = applier
            .apply(
                "c",
                &alice,
                &[group(1, vec![update("nope", 1, Vec::new(), hlc(1_000))])],
            )
            .await
            .expect("apply");
        assert_eq!(outcomes(&again), [(Status::Duplicate, String::new())]);
    });
}

#[test]
fn versions_are_found_under_the_key_postgres_prints() {
    let pg = cluster(SQL, false);
    runtime().block_on(async {
        let applier = applier(&pg, RULES).await;
        let alice = claims("alice");
        let lower = "6f1c2e0a-54b4-4c3e-9a57-2f0f8a4b9c11";
        let results = applier
            .apply(
                "c",
                &alice,
                &[
                    group(1, vec![note(lower, "new", 3_000)]),
                    // The same key in capitals: an older write loses against
                    // the version recorded under the key as Postgres prints it.
                    group(2, vec![note(&lower.to_uppercase(), "old", 2_000)]),
                ],
            )
            .await
            .expect("apply");
        assert_eq!(outcomes(&results), [applied(), applied()]);
    });
    assert_eq!(query(&pg, "SELECT body FROM notes"), "new");
}
