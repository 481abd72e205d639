//! Merging written columns with the row in Postgres, by each column's
//! declared kind, as the SQL that writes them.
//!
//! | kind | on a new row | on an existing row |
//! |---|---|---|
//! | `lww` | the value | the value, when the write's version is newer |
//! | `counter` | the delta | `coalesce(col, 0) + delta` |
//! | `max` / `min` | the value | `GREATEST` / `LEAST` (NULL counts as absent) |
//! | `set_union` | the distinct elements | current elements, then new ones not yet there |
//! | `reject_if_stale` | the value | the value (the group was rejected if stale) |
//!
//! Invariants: counter, max, min and set_union are commutative and
//! idempotent on the set of elements (set_union's element order is arrival
//! order), so the same writes in any order give the same state; a value is
//! always a text parameter cast to the column's type.

use super::hlc::{Version, value_hash};
use super::ledger::ColumnVersion;
use super::plan::TablePlan;
use crate::schema::MergeKind;

/// A column an op writes, with its value in Postgres text form (`None` =
/// NULL; for a counter, the delta).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Written {
    /// Index into the table's columns.
    pub column: usize,
    pub text: Option<String>,
}

/// An SQL statement with its text parameters.
pub(crate) struct Sql {
    pub text: String,
    pub params: Vec<Option<String>>,
}

/// The distinct elements of `current` followed by those of `added`, in
/// order of first appearance; `'{}'` rather than NULL.
fn union(current: &str, added: &str) -> String {
    format!(
        "coalesce((SELECT array_agg(u.e ORDER BY u.o) FROM \
         (SELECT DISTINCT ON (x.e) x.e, x.o \
          FROM unnest(coalesce({current}, '{{}}') || {added}) WITH ORDINALITY AS x(e, o) \
          ORDER BY x.e, x.o) u), '{{}}')"
    )
}

/// `INSERT … ON CONFLICT (key) DO NOTHING RETURNING <row>`: returns no row
/// when another transaction inserted the key first.
pub(crate) fn insert(plan: &TablePlan, key: &[String], written: &[Written]) -> Sql {
    let mut names = Vec::with_capacity(key.len() + written.len());
    let mut values = Vec::with_capacity(names.capacity());
    let mut params: Vec<Option<String>> = Vec::with_capacity(names.capacity());
    for (&c, k) in plan.primary_key.iter().zip(key) {
        params.push(Some(k.clone()));
        names.push(plan.columns[c].quoted.clone());
        values.push(plan.param(c, params.len()));
    }
    for w in written {
        params.push(w.text.clone());
        let column = &plan.columns[w.column];
        let value = plan.param(w.column, params.len());
        names.push(column.quoted.clone());
        values.push(inserted(column.merge, &column.cast, &value));
    }
    let key_names: Vec<&str> = plan
        .primary_key
        .iter()
        .map(|&c| plan.columns[c].quoted.as_str())
        .collect();
    Sql {
        text: format!(
            "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) DO NOTHING RETURNING {}",
            plan.qualified,
            names.join(", "),
            values.join(", "),
            key_names.join(", "),
            plan.returning
        ),
        params,
    }
}

/// The value a column of kind `merge` takes in an update: `current` (SQL)
/// merged with the written `value` (SQL).
pub(crate) fn merged(merge: MergeKind, current: &str, value: &str) -> String {
    match merge {
        MergeKind::Lww | MergeKind::RejectIfStale => value.to_string(),
        MergeKind::Counter => format!("coalesce({current}, 0) + {value}"),
        MergeKind::Max => format!("GREATEST({current}, {value})"),
        MergeKind::Min => format!("LEAST({current}, {value})"),
        MergeKind::SetUnion => union(current, value),
    }
}

/// The value a column takes in a new row: the written `value` (SQL), or
/// its distinct elements for a set union.
pub(crate) fn inserted(merge: MergeKind, cast: &str, value: &str) -> String {
    match merge {
        MergeKind::SetUnion => union(&format!("NULL::{cast}"), value),
        _ => value.to_string(),
    }
}

/// `UPDATE … SET <merged columns> WHERE <key> RETURNING <row>`; `None`
/// when nothing is to be written.
pub(crate) fn update(plan: &TablePlan, key: &[String], written: &[Written]) -> Option<Sql> {
    if written.is_empty() {
        return None;
    }
    let mut params: Vec<Option<String>> = key.iter().cloned().map(Some).collect();
    let mut sets = Vec::with_capacity(written.len());
    for w in written {
        params.push(w.text.clone());
        let column = &plan.columns[w.column];
        let col = &column.quoted;
        let value = plan.param(w.column, params.len());
        sets.push(format!("{col} = {}", merged(column.merge, col, &value)));
    }
    Some(Sql {
        text: format!(
            "UPDATE {} SET {} WHERE {} RETURNING {}",
            plan.qualified,
            sets.join(", "),
            plan.key_condition(0),
            plan.returning
        ),
        params,
    })
}

/// Whether a last-writer-wins write with version `write` replaces the
/// current value `current` (Postgres text). The current value's version is
/// the one Outpost recorded when it still holds the value recorded with it;
/// otherwise another program changed it, at the row's last commit
/// (`commit_ms`, 0 when unknown).
pub(crate) fn lww_wins(
    current: Option<&str>,
    recorded: Option<&ColumnVersion>,
    commit_ms: i64,
    write: &Version,
) -> bool {
    match recorded {
        Some(r) if r.value_hash == value_hash(current) => *write > r.version,
        _ => *write > Version::committed_at(commit_ms),
    }
}
