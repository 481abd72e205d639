//! The SQL of a batch of op groups: one statement per table and step for
//! every op of the batch at once, the ops' values passed as arrays and
//! read back with `unnest`.
//!
//! Parameters, in order: one `text[]` per key column (`$1…$k`), then, for
//! a write, one array per written column (an update first gives a `bool[]`
//! per column telling whether the op writes it, then the values). Columns
//! of the unnested rows are named `"o#…"`, a name no table column can
//! clash with in an unqualified reference.
//!
//! Invariants: the same things are written as the statements of one op
//! (`merge`), by the same merge expressions and casts; the lock takes rows
//! and the insert new keys in key order, so two batches on overlapping rows
//! of a table wait for each other instead of deadlocking; rows are found by index lookups
//! of one key each or by row id (`ctid`, read under the row's lock), never
//! by a join the planner could turn into a scan of a table it believes
//! small (plans are kept per connection while tables grow); a write
//! returns every row it wrote (as text, catalog order), so the caller
//! checks each op's result.

use super::merge;
use super::plan::TablePlan;

/// Claims the ledger rows of the batch's groups (`$1` client ids, `$2`
/// seqs); returns the groups claimed, the others were recorded before.
pub(super) const CLAIM: &str = "INSERT INTO outpost.applied_groups (client_id, seq, status) \
     SELECT g.client_id, g.seq, 'applied' FROM unnest($1::text[], $2::int8[]) AS g(client_id, seq) \
     ON CONFLICT DO NOTHING RETURNING client_id, seq";

/// The recorded versions of rows (`$1` table labels, `$2` version keys):
/// table label, version key, the versions in their JSON form, and the
/// versions' row id (`ctid`) to forget them by.
pub(super) const VERSIONS: &str = "SELECT r.tbl, r.key, v.versions::text, v.ctid::text \
     FROM unnest($1::text[], $2::text[]) AS r(tbl, key) \
     CROSS JOIN LATERAL (SELECT c.versions, c.ctid \
         FROM outpost.row_versions c WHERE c.tbl = r.tbl AND c.key = r.key OFFSET 0) AS v";

/// Forgets the versions with the row ids `$1` (read by [`VERSIONS`] after
/// their rows were locked: rows with no version left) and records those of
/// the other rows written (`$2…$4`: table label, version key, versions in
/// their JSON form, one element per row; no row in both).
pub(super) const WRITE_VERSIONS: &str = "WITH forgotten AS (\
         DELETE FROM outpost.row_versions WHERE ctid = ANY ($1::text[]::tid[])) \
     INSERT INTO outpost.row_versions AS v (tbl, key, versions) \
     SELECT u.tbl, u.key, u.versions::jsonb \
     FROM unnest($2::text[], $3::text[], $4::text[]) AS u(tbl, key, versions) \
     ON CONFLICT (tbl, key) DO UPDATE SET versions = excluded.versions";

/// `unnest($first::T[], …) AS u("o#k0", …)` over `names` (with their
/// array types), and the ordinality as `"o#i"` when asked.
fn unnest(first: usize, names: &[(String, &str)], ordinality: bool) -> String {
    let arrays: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, (_, ty))| format!("${}::{ty}[]", first + i))
        .collect();
    let mut columns: Vec<String> = names.iter().map(|(n, _)| format!("\"{n}\"")).collect();
    if ordinality {
        columns.push("\"o#i\"".into());
    }
    format!(
        "unnest({}){} AS u({})",
        arrays.join(", "),
        if ordinality { " WITH ORDINALITY" } else { "" },
        columns.join(", ")
    )
}

fn key_names(plan: &TablePlan) -> Vec<(String, &'static str)> {
    (0..plan.primary_key.len())
        .map(|i| (format!("o#k{i}"), "text"))
        .collect()
}

/// The key values of the unnested row `u`, cast to the key columns' types.
fn key_values(plan: &TablePlan) -> Vec<String> {
    plan.primary_key
        .iter()
        .enumerate()
        .map(|(i, &c)| format!("u.\"o#k{i}\"::{}", plan.columns[c].cast))
        .collect()
}

/// Locks the rows with the keys given, in key order, and reads them: the
/// position of the key among those given (from 1), every column as text,
/// the commit time of the row's last change, and the row's id (`ctid`),
/// which stays the row's while the lock is held.
pub(super) fn lock(plan: &TablePlan) -> String {
    let keys = key_values(plan);
    let mut given: Vec<String> = (0..keys.len())
        .map(|i| format!("{} AS \"o#k{i}\"", keys[i]))
        .collect();
    given.push("u.\"o#i\"".into());
    let join: Vec<String> = plan
        .primary_key
        .iter()
        .enumerate()
        .map(|(i, &c)| format!("{} = k.\"o#k{i}\"", plan.columns[c].quoted))
        .collect();
    // Each key looked up on its own (OFFSET 0 keeps the subquery apart): an
    // index lookup whatever the planner believes of the table's size.
    format!(
        "SELECT k.\"o#i\", r.* FROM (SELECT {} FROM {} ORDER BY {}) AS k \
         CROSS JOIN LATERAL (SELECT {}, {}, ctid::text FROM {} WHERE {} OFFSET 0 FOR UPDATE) AS r",
        given.join(", "),
        unnest(1, &key_names(plan), true),
        (1..=keys.len())
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        plan.returning,
        plan.commit_ms,
        plan.qualified,
        join.join(" AND ")
    )
}

/// Inserts new rows writing `columns` (indexes into the plan's columns),
/// in key order; a key inserted meanwhile by another transaction is
/// left alone and its row is missing from what is returned.
pub(super) fn insert(plan: &TablePlan, columns: &[usize]) -> String {
    let mut names = key_names(plan);
    names.extend((0..columns.len()).map(|j| (format!("o#v{j}"), "text")));
    let mut targets: Vec<&str> = plan
        .primary_key
        .iter()
        .map(|&c| plan.columns[c].quoted.as_str())
        .collect();
    let mut values = key_values(plan);
    for (j, &c) in columns.iter().enumerate() {
        let column = &plan.columns[c];
        targets.push(&column.quoted);
        let value = format!("u.\"o#v{j}\"::{}", column.cast);
        values.push(merge::inserted(column.merge, &column.cast, &value));
    }
    format!(
        "INSERT INTO {} ({}) SELECT {} FROM {} ORDER BY {} \
         ON CONFLICT ({}) DO NOTHING RETURNING {}",
        plan.qualified,
        targets.join(", "),
        values.join(", "),
        unnest(1, &names, false),
        (1..=plan.primary_key.len())
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        plan.key_columns(),
        plan.returning
    )
}

/// Updates locked rows, by their ids (`$1`, `text[]`): each column of
/// `columns` is merged with the op's value where the op's flag for it is
/// set, and kept otherwise.
pub(super) fn update(plan: &TablePlan, columns: &[usize]) -> String {
    let mut names = vec![("o#t".to_string(), "text")];
    names.extend((0..columns.len()).map(|j| (format!("o#w{j}"), "bool")));
    names.extend((0..columns.len()).map(|j| (format!("o#v{j}"), "text")));
    let sets: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(j, &c)| {
            let column = &plan.columns[c];
            let current = format!("t.{}", column.quoted);
            let value = format!("u.\"o#v{j}\"::{}", column.cast);
            format!(
                "{} = CASE WHEN u.\"o#w{j}\" THEN {} ELSE {current} END",
                column.quoted,
                merge::merged(column.merge, &current, &value)
            )
        })
        .collect();
    format!(
        "UPDATE {} AS t SET {} FROM {} \
         WHERE t.ctid = ANY ($1::text[]::tid[]) AND t.ctid = u.\"o#t\"::tid RETURNING {}",
        plan.qualified,
        sets.join(", "),
        unnest(1, &names, false),
        plan.returning
    )
}

/// Deletes locked rows, by their ids (`$1`, `text[]`); one row returned per
/// row deleted.
pub(super) fn delete(plan: &TablePlan) -> String {
    format!(
        "DELETE FROM {} WHERE ctid = ANY ($1::text[]::tid[]) RETURNING 1",
        plan.qualified
    )
}
