//! Capturing local writes: the SQL functions the library registers on the
//! connections it opens, and the triggers on every synced table that record
//! each local change in `_outpost_outbox`.
//!
//! ```text
//! app: UPDATE todos SET done = 1 WHERE id = 7
//!   └─ AFTER UPDATE trigger (WHEN outpost_capture())
//!        ├─ _outpost_shadow: the row's server values, if not kept yet
//!        └─ _outpost_outbox: txid, 'todos', 'UPDATE', key [7],
//!                            columns {"done":1}, before {"done":0}, hlc
//! ```
//!
//! Functions (registered per connection by [`register`]):
//! - `outpost_capture()`: 1 on app connections, 0 on the sync writer's, so the
//!   server data the client applies is never captured;
//! - `outpost_txid()`: one random id per SQLite transaction of the connection
//!   (cleared by the commit hook), so every change of one transaction lands
//!   in one op group;
//! - `outpost_hlc([persisted])`: a hybrid logical clock,
//!   `(unix_ms << 16) | counter`, greater than every value it returned before
//!   and than `persisted` (the high-water mark the outbox keeps in
//!   `_outpost_state`, so the clock never goes back across connections or
//!   restarts);
//! - `outpost_key(v, …)`, `outpost_values(name, v, …)`,
//!   `outpost_changed(which, name, old, new, …)`, `outpost_join(json, …)`:
//!   the encodings of [`super::values`].
//!
//! A connection without these functions cannot write a synced table: the
//! trigger fails with "no such function: outpost_capture".
//!
//! Invariants: a key change is recorded as a DELETE of the old key and an
//! INSERT of the new one; an UPDATE that changes no value records nothing;
//! a row gets a shadow entry (its server values, or NULL when the server
//! has no such row) before its first local change is recorded.

use super::schema::{TableDef, quote_ident};
use super::values::{encode_columns, from_sql, join_columns, sqlite_is};
use outpost_proto::key_string;
use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::{Connection, Error, OptionalExtension};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Arguments per function call in generated triggers, well under SQLite's
/// limit on function arguments.
const MAX_ARGS: usize = 120;

fn user_error(message: &str) -> Error {
    Error::UserFunctionError(message.into())
}

/// The next hybrid logical clock value after `last` and `persisted`.
pub(crate) fn next_hlc(last: u64, persisted: u64) -> u64 {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    (now_ms << 16)
        .max(last.saturating_add(1))
        .max(persisted.saturating_add(1))
}

/// Registers the capture functions and the commit hook on `conn`;
/// `capture` says whether the triggers record changes made through it.
pub(crate) fn register(conn: &mut Connection, capture: bool) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_INNOCUOUS;
    let pure = flags | FunctionFlags::SQLITE_DETERMINISTIC;

    conn.create_scalar_function("outpost_capture", 0, flags, move |_| Ok(i64::from(capture)))?;

    let txid = Arc::new(AtomicI64::new(0));
    let current = txid.clone();
    conn.create_scalar_function("outpost_txid", 0, flags, move |_| {
        let id = current.load(Ordering::Relaxed);
        if id != 0 {
            return Ok(id);
        }
        let id = ((rand::random::<u64>() >> 1) as i64).max(1);
        current.store(id, Ordering::Relaxed);
        Ok(id)
    })?;
    // Only commits clear the id: the rows of a rolled-back transaction are gone
    // with it, so the next transaction may keep its id. (A rollback hook would
    // also run while the connection closes, after rusqlite freed it.)
    conn.commit_hook(Some(move || {
        txid.store(0, Ordering::Relaxed);
        false
    }))?;

    let last = Arc::new(Mutex::new(0u64));
    conn.create_scalar_function("outpost_hlc", -1, flags, move |ctx| {
        let persisted = match ctx.len() {
            0 => 0,
            1 => ctx.get::<Option<i64>>(0)?.unwrap_or(0).max(0) as u64,
            _ => return Err(user_error("outpost_hlc takes at most one argument")),
        };
        let mut last = last
            .lock()
            .map_err(|_| user_error("the clock state is poisoned"))?;
        *last = next_hlc(*last, persisted);
        Ok(*last as i64)
    })?;

    conn.create_scalar_function("outpost_key", -1, pure, |ctx| {
        let values: Vec<_> = (0..ctx.len()).map(|i| from_sql(ctx.get_raw(i))).collect();
        Ok(key_string(&values))
    })?;
    conn.create_scalar_function("outpost_values", -1, pure, |ctx| {
        if !ctx.len().is_multiple_of(2) {
            return Err(user_error("outpost_values takes name, value pairs"));
        }
        let mut pairs = Vec::with_capacity(ctx.len() / 2);
        for i in (0..ctx.len()).step_by(2) {
            pairs.push((ctx.get::<String>(i)?, from_sql(ctx.get_raw(i + 1))));
        }
        Ok(encode_columns(pairs.iter().map(|(n, v)| (n.as_str(), v))))
    })?;
    conn.create_scalar_function("outpost_changed", -1, pure, changed)?;
    conn.create_scalar_function("outpost_join", -1, pure, |ctx| {
        let parts = (0..ctx.len())
            .map(|i| ctx.get::<String>(i))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        join_columns(parts.iter().map(String::as_str))
            .ok_or_else(|| user_error("outpost_join takes JSON objects"))
    })?;
    Ok(())
}

/// `outpost_changed(which, name, old, new, …)`: the columns whose value
/// changed, with their new values (`which` = 1) or old values (`which` = 0).
fn changed(ctx: &Context<'_>) -> rusqlite::Result<String> {
    if ctx.is_empty() || !(ctx.len() - 1).is_multiple_of(3) {
        return Err(user_error(
            "outpost_changed takes which, then name, old, new triples",
        ));
    }
    let new = ctx.get::<i64>(0)? != 0;
    let mut pairs = Vec::new();
    for i in (1..ctx.len()).step_by(3) {
        let (old_value, new_value) = (ctx.get_raw(i + 1), ctx.get_raw(i + 2));
        if !sqlite_is(old_value, new_value) {
            let value = if new { new_value } else { old_value };
            pairs.push((ctx.get::<String>(i)?, from_sql(value)));
        }
    }
    Ok(encode_columns(pairs.iter().map(|(n, v)| (n.as_str(), v))))
}

/// An SQL string literal.
pub(crate) fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `f(chunk…)` per chunk of arguments, joined with `outpost_join` when there
/// is more than one chunk.
fn chunked_call(function: &str, leading: &str, args: &[String], per_item: usize) -> String {
    let per_call = ((MAX_ARGS - 1) / per_item).max(1);
    let calls: Vec<String> = args
        .chunks(per_call)
        .map(|chunk| format!("{function}({leading}{})", chunk.join(", ")))
        .collect();
    match calls.len() {
        0 => format!("{function}({})", leading.trim_end_matches(", ")),
        1 => calls.into_iter().next().unwrap_or_default(),
        _ => format!("outpost_join({})", calls.join(", ")),
    }
}

/// The SQL expressions the triggers of one table are made of.
struct Parts {
    table: String,
    tbl_literal: String,
    key_new: String,
    key_old: String,
    values_new: String,
    values_old: String,
    changed_new: String,
    changed_old: String,
    any_changed: String,
    key_changed: String,
}

/// `a OR b OR …` as a balanced tree, so that wide tables stay within
/// SQLite's expression depth limit.
fn any_of(terms: &[String]) -> String {
    match terms.len() {
        0 => "0".into(),
        1 => terms[0].clone(),
        n => format!(
            "({} OR {})",
            any_of(&terms[..n / 2]),
            any_of(&terms[n / 2..])
        ),
    }
}

fn parts(def: &TableDef) -> Parts {
    let col = |row: &str, name: &str| format!("{row}.{}", quote_ident(name));
    let pk: Vec<&str> = def
        .primary_key
        .iter()
        .map(|&i| def.columns[i].name.as_str())
        .collect();
    let key = |row: &str| {
        let args: Vec<String> = pk.iter().map(|n| col(row, n)).collect();
        format!("outpost_key({})", args.join(", "))
    };
    let values = |row: &str| {
        let args: Vec<String> = def
            .columns
            .iter()
            .map(|c| format!("{}, {}", sql_string(&c.name), col(row, &c.name)))
            .collect();
        chunked_call("outpost_values", "", &args, 2)
    };
    let triples: Vec<String> = def
        .columns
        .iter()
        .map(|c| {
            format!(
                "{}, {}, {}",
                sql_string(&c.name),
                col("OLD", &c.name),
                col("NEW", &c.name)
            )
        })
        .collect();
    let differs = |name: &str| format!("{} IS NOT {}", col("OLD", name), col("NEW", name));
    let all: Vec<String> = def.columns.iter().map(|c| differs(&c.name)).collect();
    let keys: Vec<String> = pk.iter().map(|n| differs(n)).collect();
    Parts {
        table: quote_ident(&def.name),
        tbl_literal: sql_string(&def.name),
        key_new: key("NEW"),
        key_old: key("OLD"),
        values_new: values("NEW"),
        values_old: values("OLD"),
        changed_new: chunked_call("outpost_changed", "1, ", &triples, 3),
        changed_old: chunked_call("outpost_changed", "0, ", &triples, 3),
        any_changed: any_of(&all),
        key_changed: any_of(&keys),
    }
}

/// The name of a capture trigger of a table.
fn trigger_name(kind: &str, table: &str) -> String {
    quote_ident(&format!("_outpost_{kind}_{table}"))
}

/// Creates the capture triggers of a table, replacing those that differ
/// (after a migration they must name the new columns). Runs inside the
/// caller's transaction.
pub(crate) fn install_triggers(conn: &Connection, def: &TableDef) -> rusqlite::Result<()> {
    let p = parts(def);
    let (table, tbl) = (&p.table, &p.tbl_literal);
    let (key_new, key_old) = (&p.key_new, &p.key_old);
    let (values_new, values_old) = (&p.values_new, &p.values_old);
    let (changed_new, changed_old) = (&p.changed_new, &p.changed_old);
    let (any_changed, key_changed) = (&p.any_changed, &p.key_changed);
    let hlc = "outpost_hlc((SELECT value FROM _outpost_state WHERE key = 'hlc'))";
    let outbox = "INSERT INTO _outpost_outbox (txid, tbl, kind, key, columns, before, hlc)";
    // Upserts, not `INSERT OR IGNORE`: SQLite lets the outer statement's
    // conflict clause (`INSERT OR REPLACE`, `UPDATE OR ABORT`, …) override a
    // trigger's `OR` clause, but never an `ON CONFLICT` upsert.
    let shadow = "INSERT INTO _outpost_shadow (tbl, key, data)";
    let keep = "ON CONFLICT DO NOTHING";
    let insert = trigger_name("insert", &def.name);
    let update = trigger_name("update", &def.name);
    let delete = trigger_name("delete", &def.name);
    let triggers = [
        (
            format!("_outpost_insert_{}", def.name),
            format!(
                "CREATE TRIGGER {insert} AFTER INSERT ON {table} WHEN outpost_capture() BEGIN
  {shadow} VALUES ({tbl}, {key_new}, NULL) {keep};
  {outbox} VALUES (outpost_txid(), {tbl}, 'INSERT', {key_new}, {values_new}, NULL, {hlc});
END"
            ),
        ),
        (
            format!("_outpost_update_{}", def.name),
            format!(
                "CREATE TRIGGER {update} AFTER UPDATE ON {table}
WHEN outpost_capture() AND ({any_changed}) BEGIN
  {shadow} VALUES ({tbl}, {key_old}, {values_old}) {keep};
  {outbox} SELECT outpost_txid(), {tbl}, 'UPDATE', {key_new}, {changed_new}, {changed_old}, {hlc}
    WHERE NOT ({key_changed});
  {outbox} SELECT outpost_txid(), {tbl}, 'DELETE', {key_old}, NULL, {values_old}, {hlc}
    WHERE ({key_changed});
  {shadow} SELECT {tbl}, {key_new}, NULL WHERE ({key_changed}) {keep};
  {outbox} SELECT outpost_txid(), {tbl}, 'INSERT', {key_new}, {values_new}, NULL, {hlc}
    WHERE ({key_changed});
END"
            ),
        ),
        (
            format!("_outpost_delete_{}", def.name),
            format!(
                "CREATE TRIGGER {delete} AFTER DELETE ON {table} WHEN outpost_capture() BEGIN
  {shadow} VALUES ({tbl}, {key_old}, {values_old}) {keep};
  {outbox} VALUES (outpost_txid(), {tbl}, 'DELETE', {key_old}, NULL, {values_old}, {hlc});
END"
            ),
        ),
    ];
    let mut existing =
        conn.prepare("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?1")?;
    for (name, create) in triggers {
        let current: Option<String> = existing.query_row([&name], |r| r.get(0)).optional()?;
        if current.as_deref() != Some(create.as_str()) {
            conn.execute_batch(&format!(
                "DROP TRIGGER IF EXISTS {}; {create};",
                quote_ident(&name)
            ))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_calls_are_chunked_and_joined() {
        let args: Vec<String> = (0..100).map(|i| format!("'c{i}', NEW.c{i}")).collect();
        let sql = chunked_call("outpost_values", "", &args, 2);
        assert!(sql.starts_with("outpost_join(outpost_values('c0'"), "{sql}");
        assert_eq!(sql.matches("outpost_values(").count(), 2);
        let one = chunked_call("outpost_values", "", &args[..3], 2);
        assert!(one.starts_with("outpost_values('c0'"), "{one}");
        assert_eq!(
            any_of(&["a".into(), "b".into(), "c".into()]),
            "(a OR (b OR c))"
        );
    }

    #[test]
    fn the_clock_never_goes_back() {
        let far = (u64::MAX >> 20) << 16;
        assert_eq!(next_hlc(far, 0), far + 1);
        assert_eq!(next_hlc(0, far), far + 1);
        let now = next_hlc(0, 0);
        assert!(now > 1 << 40 && now & 0xffff == 0);
    }
}
