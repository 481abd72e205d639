//! The service's answers and rows with local changes under incoming server
//! data: rejections, pending groups, checkpoints before and after the commit.

use super::*;

#[test]
fn a_rejection_restores_server_values_and_keeps_later_writes() {
    let (_dir, mut r, db) = setup();
    db.execute("UPDATE todos SET title = 'mine' WHERE id = 1", [])
        .expect("update");
    db.execute("UPDATE todos SET done = 1 WHERE id = 1", [])
        .expect("update");
    db.execute("INSERT INTO todos VALUES (3, 'three', 0, 0)", [])
        .expect("insert");
    let groups = r.outbox_groups(ALL).expect("groups");
    let (a, b, c) = (groups[0].seq, groups[1].seq, groups[2].seq);

    let mut refused = rejected(a, "stale");
    refused.op_index = 0;
    let outcomes = r
        .record_results(&[refused, rejected(c, "permission_denied")])
        .expect("record");
    assert_eq!(outcomes.len(), 2);
    assert_eq!(outcomes[0].status, WriteStatus::Rejected);
    assert_eq!(outcomes[0].reason.as_deref(), Some("stale: refused: stale"));
    // The title is the server's again, the later `done` write stays, the
    // refused insert is gone.
    assert_eq!(
        rows(&db),
        vec![(1, "one".into(), 1, 5), (2, "two".into(), 0, 0)]
    );
    let left = r.outbox_groups(ALL).expect("groups");
    assert_eq!(left.iter().map(|g| g.seq).collect::<Vec<_>>(), vec![b]);

    let rejections = r.rejections().expect("rejections");
    assert_eq!(rejections.len(), 2);
    assert_eq!(rejections[0].seq, a);
    assert_eq!(rejections[0].table, "todos");
    assert_eq!(rejections[0].kind, "UPDATE");
    assert_eq!(rejections[0].key, "[1]");
    assert_eq!(rejections[0].reason_code, "stale");
    assert_eq!(
        rejections[0].attempted.as_deref(),
        Some(r#"{"title":"mine"}"#)
    );
    assert_eq!(rejections[1].kind, "INSERT");
    assert!(rejections[1].at.ends_with('Z'));

    // Once b is applied and checkpointed, the row is plain server data.
    r.record_results(&[result(b, group_result::Status::Applied, 30)])
        .expect("record");
    assert_eq!(r.write_backlog().expect("backlog"), (0, 1));
    server_state(&mut r, 30, &[(1, "one", 1, 5)], &[(1, "one", 1, 5), TWO]);
    assert_eq!(r.write_backlog().expect("backlog"), (0, 0));
    assert_eq!(count(&db, "_outpost_shadow"), 0);
    assert_eq!(
        rows(&db),
        vec![(1, "one".into(), 1, 5), (2, "two".into(), 0, 0)]
    );
    // A retried group the service refused before comes back as a duplicate
    // with its original reason: a rejection.
    db.execute("UPDATE todos SET title = 'again' WHERE id = 2", [])
        .expect("update");
    let seq = r.outbox_groups(ALL).expect("groups")[0].seq;
    let mut again = rejected(seq, "stale");
    again.status = group_result::Status::Duplicate as i32;
    let outcomes = r.record_results(&[again]).expect("record");
    assert_eq!(outcomes[0].status, WriteStatus::Rejected);
    assert_eq!(rows(&db)[1], (2, "two".into(), 0, 0));
    assert_eq!(r.rejections().expect("rejections").len(), 3);
    // Answers for groups no longer in the outbox change nothing.
    assert!(
        r.record_results(&[result(b, group_result::Status::Duplicate, 30)])
            .expect("record")
            .is_empty()
    );
}

#[test]
fn local_values_stay_until_the_checkpoint_passes_the_commit() {
    let (_dir, mut r, db) = setup();
    db.execute(
        "UPDATE todos SET title = 'mine', votes = 8 WHERE id = 1",
        [],
    )
    .expect("update");
    // Someone else's writes arrive before ours is uploaded: the title stays
    // ours, the counter adds both.
    server_state(
        &mut r,
        20,
        &[(1, "theirs", 0, 10)],
        &[(1, "theirs", 0, 10), TWO],
    );
    assert_eq!(rows(&db)[0], (1, "mine".into(), 0, 13));

    let seq = r.outbox_groups(ALL).expect("groups")[0].seq;
    r.record_results(&[result(seq, group_result::Status::Applied, 30)])
        .expect("record");
    let pending = r.pending().expect("pending");
    assert_eq!(pending.len(), 1);
    assert_eq!((pending[0].seq, pending[0].commit_lsn), (seq, Some(30)));
    assert_eq!(pending[0].tables, vec!["todos".to_string()]);
    assert_eq!(rows(&db)[0], (1, "mine".into(), 0, 13));

    // A checkpoint before our commit: still ours on top.
    server_state(
        &mut r,
        25,
        &[(1, "theirs 2", 1, 11)],
        &[(1, "theirs 2", 1, 11), TWO],
    );
    assert_eq!(rows(&db)[0], (1, "mine".into(), 1, 14));
    assert_eq!(r.pending().expect("pending").len(), 1);

    // The checkpoint that includes our write: the server's values, which
    // include it, and nothing pending.
    server_state(
        &mut r,
        30,
        &[(1, "mine", 1, 14)],
        &[(1, "mine", 1, 14), TWO],
    );
    assert_eq!(rows(&db)[0], (1, "mine".into(), 1, 14));
    assert!(r.pending().expect("pending").is_empty());
    assert_eq!(count(&db, "_outpost_shadow"), 0);
}

#[test]
fn an_applied_write_the_server_overrode_shows_the_server_value() {
    let (_dir, mut r, db) = setup();
    db.execute("UPDATE todos SET title = 'mine' WHERE id = 1", [])
        .expect("update");
    let seq = r.outbox_groups(ALL).expect("groups")[0].seq;
    // The service kept a newer value: the checkpoint past the commit brings
    // no data for the row, and the row goes back to what the server holds.
    r.record_results(&[result(seq, group_result::Status::Applied, 30)])
        .expect("record");
    empty_checkpoint(&mut r, 40);
    assert_eq!(rows(&db)[0], (1, "one".into(), 0, 5));
    assert!(r.pending().expect("pending").is_empty());

    // An answer for a commit the replica already holds resolves at once.
    db.execute("UPDATE todos SET done = 1 WHERE id = 2", [])
        .expect("update");
    let seq = r.outbox_groups(ALL).expect("groups")[0].seq;
    r.record_results(&[result(seq, group_result::Status::Duplicate, 35)])
        .expect("record");
    assert_eq!(rows(&db)[1], (2, "two".into(), 0, 0));
    assert_eq!(r.write_backlog().expect("backlog"), (0, 0));
}

#[test]
fn local_rows_survive_removal_and_deletes_survive_puts() {
    let (_dir, mut r, db) = setup();
    db.execute("INSERT INTO todos VALUES (3, 'three', 0, 0)", [])
        .expect("insert");
    db.execute("DELETE FROM todos WHERE id = 2", [])
        .expect("delete");
    // The server changes row 2 and removes nothing of ours.
    server_state(&mut r, 20, &[(2, "two!", 1, 0)], &[ONE, (2, "two!", 1, 0)]);
    assert_eq!(
        rows(&db),
        vec![(1, "one".into(), 0, 5), (3, "three".into(), 0, 0)]
    );
    // The server removes row 1 (it left the user's shapes) while it has a
    // pending local change: the change goes with it.
    db.execute("UPDATE todos SET title = 'x' WHERE id = 1", [])
        .expect("update");
    r.apply_batch(&DataBatch {
        bucket: "all".into(),
        ops: vec![RowOp {
            op_id: 0,
            kind: row_op::Kind::Remove as i32,
            table: "todos".into(),
            key: vec![int(1)],
            values: vec![],
        }],
    })
    .expect("remove");
    let two = (2, "two!", 1, 0);
    let checksum = row_hash("todos", &[int(2)], &values(&two));
    r.apply_checkpoint(&Checkpoint {
        op_id: 21,
        lsn: 21,
        epoch: "e1".into(),
        buckets: vec![BucketChecksum {
            bucket: "all".into(),
            checksum,
            count: 1,
        }],
    })
    .expect("checkpoint");
    assert_eq!(rows(&db), vec![(3, "three".into(), 0, 0)]);
}

#[test]
fn an_answer_recorded_with_its_checkpoint_never_doubles_a_counter() {
    let (_dir, mut r, db) = setup();
    db.execute("UPDATE todos SET votes = 8 WHERE id = 1", [])
        .expect("update");
    let seq = r.outbox_groups(ALL).expect("groups")[0].seq;
    // The checkpoint that holds the group arrives with its answer.
    let done = (1, "one", 0, 8);
    r.apply_batch(&DataBatch {
        bucket: "all".into(),
        ops: vec![put(&done)],
    })
    .expect("data");
    let checksum = [done, TWO].iter().fold(0, |acc, row| {
        bucket_checksum_add(acc, row_hash("todos", &[int(row.0)], &values(row)))
    });
    let (outcome, recorded) = r
        .apply_checkpoint_with(
            &Checkpoint {
                op_id: 30,
                lsn: 30,
                epoch: "e1".into(),
                buckets: vec![BucketChecksum {
                    bucket: "all".into(),
                    checksum,
                    count: 2,
                }],
            },
            &[result(seq, group_result::Status::Applied, 30)],
        )
        .expect("checkpoint");
    assert!(matches!(outcome, CheckpointOutcome::Applied { .. }));
    assert_eq!(recorded.len(), 1);
    assert_eq!(rows(&db)[0], (1, "one".into(), 0, 8));
    assert_eq!(r.write_backlog().expect("backlog"), (0, 0));
    assert_eq!(count(&db, "_outpost_shadow"), 0);
}
