//! A group is applied once, however often it arrives.

use outpost_proto::v1::group_result::Status;

use super::*;

const SQL: &str = "
CREATE TABLE items (
    id bigint PRIMARY KEY,
    owner text NOT NULL,
    title text,
    hits int NOT NULL DEFAULT 0
);
CREATE PUBLICATION outpost FOR TABLE items;
";

const RULES: &str = r#"
[shapes.items]
table = "items"
where = "owner = auth.sub"

[tables.items]
insert = "new.owner = auth.sub"
update = "old.owner = auth.sub AND new.owner = auth.sub"
delete = "old.owner = auth.sub"

[tables.items.merge]
hits = "counter"
"#;

#[test]
fn a_group_is_applied_once() {
    let pg = cluster(SQL, false);
    // Someone added Outpost's ledger to the publication: start-up takes it out.
    pg.psql(
        DB,
        "CREATE SCHEMA outpost; CREATE TABLE outpost.applied_groups (client_id text, seq bigint, \
         status text, reason_code text, message text, op_index int, commit_lsn pg_lsn, \
         applied_at timestamptz DEFAULT now(), PRIMARY KEY (client_id, seq)); \
         ALTER PUBLICATION outpost ADD TABLE outpost.applied_groups;",
    )
    .expect("publish the ledger");
    runtime().block_on(async {
        let applier = applier(&pg, RULES).await;
        let alice = claims("alice");
        let create = group(
            1,
            vec![insert(
                "items",
                1,
                vec![col("owner", text("alice")), col("title", text("a"))],
                hlc(1_000),
            )],
        );
        let bump = group(
            2,
            vec![update("items", 1, vec![col("hits", int(1))], hlc(2_000))],
        );

        // The same group twice in one request, and once more later.
        let first = applier
            .apply("c1", &alice, &[create.clone(), bump.clone(), bump.clone()])
            .await
            .expect("apply");
        assert_eq!(
            outcomes(&first),
            [applied(), applied(), (Status::Duplicate, String::new())]
        );
        assert!(first[1].commit_lsn > 0);
        assert!(
            first[2].commit_lsn >= first[1].commit_lsn,
            "a duplicate carries an upper bound of the original commit LSN"
        );

        // The reply of a committed group was lost: the retry is a duplicate.
        let _lost = applier
            .apply(
                "c1",
                &alice,
                &[group(
                    3,
                    vec![update("items", 1, vec![col("hits", int(10))], hlc(3_000))],
                )],
            )
            .await
            .expect("apply");
        let again = applier
            .apply(
                "c1",
                &alice,
                &[
                    create,
                    group(
                        3,
                        vec![update("items", 1, vec![col("hits", int(10))], hlc(3_000))],
                    ),
                ],
            )
            .await
            .expect("apply");
        assert_eq!(
            outcomes(&again),
            [
                (Status::Duplicate, String::new()),
                (Status::Duplicate, String::new())
            ]
        );
        assert_eq!(query(&pg, "SELECT hits FROM items WHERE id = 1"), "11");

        // Another client's seq 2 is another group.
        let other = applier
            .apply(
                "c2",
                &alice,
                &[group(
                    2,
                    vec![update("items", 1, vec![col("hits", int(100))], hlc(4_000))],
                )],
            )
            .await
            .expect("apply");
        assert_eq!(outcomes(&other), [applied()]);
        assert_eq!(query(&pg, "SELECT hits FROM items WHERE id = 1"), "111");

        // A rejection is recorded too: the retry gets it back as a duplicate.
        let foreign = group(
            4,
            vec![insert(
                "items",
                2,
                vec![col("owner", text("bob"))],
                hlc(5_000),
            )],
        );
        let refused = applier
            .apply("c1", &alice, std::slice::from_ref(&foreign))
            .await
            .expect("apply");
        assert_eq!(outcomes(&refused), [rejected("permission_denied")]);
        assert_eq!(refused[0].commit_lsn, 0);
        let retried = applier
            .apply("c1", &alice, &[foreign])
            .await
            .expect("apply");
        assert_eq!(
            outcomes(&retried),
            [(Status::Duplicate, "permission_denied".to_string())]
        );
        assert_eq!(retried[0].message, refused[0].message);
        assert_eq!(retried[0].op_index, 0);
        assert_eq!(query(&pg, "SELECT count(*) FROM items"), "1");
    });
    assert_eq!(
        query(
            &pg,
            "SELECT client_id, seq, status, coalesce(reason_code, '-'), commit_lsn IS NOT NULL \
             FROM outpost.applied_groups ORDER BY 1, 2"
        ),
        "c1|1|applied|-|f\nc1|2|applied|-|f\nc1|3|applied|-|f\nc1|4|rejected|permission_denied|f\n\
         c2|2|applied|-|f",
        "nothing is written to the ledger after a group's commit"
    );
    assert_eq!(
        query(
            &pg,
            "SELECT count(*) FROM pg_publication_tables WHERE schemaname = 'outpost'"
        ),
        "0",
        "the ledger is not replicated"
    );
}

#[test]
fn a_duplicate_carries_an_upper_bound_of_the_commit_lsn() {
    let pg = cluster(SQL, false);
    runtime().block_on(async {
        let applier = applier(&pg, RULES).await;
        let alice = claims("alice");
        let create = group(
            1,
            vec![insert(
                "items",
                1,
                vec![col("owner", text("alice"))],
                hlc(1_000),
            )],
        );
        let first = applier
            .apply("c1", &alice, std::slice::from_ref(&create))
            .await
            .expect("apply");
        assert_eq!(outcomes(&first), [applied()]);
        let wal_end = |pg: &PgCluster| -> u64 {
            let lsn: crate::lsn::Lsn = query(pg, "SELECT pg_current_wal_lsn()")
                .parse()
                .expect("an LSN");
            lsn.0
        };
        assert!(first[0].commit_lsn > 0);
        assert!(first[0].commit_lsn <= wal_end(&pg));

        // More WAL since: the duplicate's answer is the WAL end when it is
        // answered, at or past the group's commit.
        pg.psql(
            DB,
            "CREATE TABLE other (n int); INSERT INTO other VALUES (1);",
        )
        .expect("more WAL");
        let before_retry = wal_end(&pg);
        let again = applier
            .apply("c1", &alice, std::slice::from_ref(&create))
            .await
            .expect("apply");
        assert_eq!(outcomes(&again), [(Status::Duplicate, String::new())]);
        assert!(again[0].commit_lsn >= before_retry);
        assert!(again[0].commit_lsn >= first[0].commit_lsn);
        assert!(again[0].commit_lsn <= wal_end(&pg));

        // A ledger row that holds its commit LSN is answered with it.
        pg.psql(
            DB,
            "INSERT INTO outpost.applied_groups (client_id, seq, status, commit_lsn) \
             VALUES ('c1', 7, 'applied', '0/10')",
        )
        .expect("a recorded group");
        let recorded = applier
            .apply("c1", &alice, &[group(7, Vec::new())])
            .await
            .expect("apply");
        assert_eq!(outcomes(&recorded), [(Status::Duplicate, String::new())]);
        assert_eq!(recorded[0].commit_lsn, 0x10);
    });
}

#[test]
fn requests_are_checked_before_any_work() {
    let pg = cluster(SQL, false);
    runtime().block_on(async {
        let applier = applier(&pg, RULES).await;
        let alice = claims("alice");
        let err = applier
            .apply("", &alice, &[])
            .await
            .expect_err("no client id");
        assert!(err.to_string().contains("client_id"), "{err}");
        let err = applier
            .apply("c", &alice, &[group(u64::MAX, Vec::new())])
            .await
            .expect_err("seq too large");
        assert!(err.to_string().contains("out of range"), "{err}");
        let many: Vec<OpGroup> = (0..=crate::writes::MAX_GROUPS_PER_REQUEST as u64)
            .map(|s| group(s, Vec::new()))
            .collect();
        let err = applier
            .apply("c", &alice, &many)
            .await
            .expect_err("too many groups");
        assert!(err.to_string().contains("at most"), "{err}");
        // An empty group is applied (and recorded) like any other.
        let results = applier
            .apply("c", &alice, &[group(1, Vec::new())])
            .await
            .expect("apply");
        assert_eq!(outcomes(&results), [applied()]);
    });
}
