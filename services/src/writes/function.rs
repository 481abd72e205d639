//! The table function: domain logic in Postgres, called for each op before
//! it is merged and written.
//!
//! It receives one jsonb argument:
//!
//! ```json
//! {"kind": "insert" | "update" | "delete", "table": "todos",
//!  "key": {"id": 7}, "old": {…every column…} | null,
//!  "new": {…the columns the op writes…} | null,
//!  "auth": {…token claims…}, "client_id": "…"}
//! ```
//!
//! `kind` is what the op does to the row as it is now (an insert of an
//! existing key is an update); `new` holds only the written columns, a
//! counter column with its delta. It returns the columns to write in the
//! same form (it may change, add or drop columns; key columns are ignored;
//! for a delete, any object lets it through), or NULL (SQL or JSON) to skip
//! the op; raising an exception rejects the group with
//! `rejected_by_function` and the exception's message.
//!
//! Invariant: the function runs inside the group's transaction, after the
//! row is locked, so what it reads and writes commits or rolls back with
//! the group.

use serde_json::Value as Json;
use tokio_postgres::types::ToSql;

use super::merge::Written;
use super::plan::TablePlan;
use super::pool::Conn;
use super::reject::{GroupError, Stage, classify, reason};
use crate::schema::WriteKind;

/// The op as the function sees it.
pub(crate) struct FunctionCall<'a> {
    pub function: &'a str,
    pub kind: WriteKind,
    /// Key values in Postgres text form, in key order.
    pub key: &'a [String],
    pub written: &'a [Written],
    /// The token claims as JSON text.
    pub auth: &'a str,
    pub client_id: &'a str,
    pub op_index: u32,
}

/// What the function decided.
pub(crate) enum Verdict {
    /// Write these columns instead.
    Write(Vec<Written>),
    /// Leave the row alone.
    Skip,
}

pub(crate) async fn call(
    conn: &mut Conn,
    plan: &TablePlan,
    call: &FunctionCall<'_>,
) -> Result<Verdict, GroupError> {
    let index = call.op_index;
    let fail = |e| classify(e, Stage::Function, index);
    let mut params: Vec<Option<String>> = vec![
        Some(call.kind.to_string()),
        Some(plan.client_name.clone()),
        Some(call.client_id.to_string()),
        Some(call.auth.to_string()),
    ];
    let key_offset = params.len();
    params.extend(call.key.iter().cloned().map(Some));
    let key_fields: Vec<String> = plan
        .primary_key
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            format!(
                "{} AS {}",
                plan.param(c, key_offset + i + 1),
                plan.columns[c].quoted
            )
        })
        .collect();
    let new = if call.kind == WriteKind::Delete {
        "NULL::jsonb".to_string()
    } else if call.written.is_empty() {
        "'{}'::jsonb".to_string()
    } else {
        let mut fields = Vec::with_capacity(call.written.len());
        for w in call.written {
            params.push(w.text.clone());
            fields.push(format!(
                "{} AS {}",
                plan.param(w.column, params.len()),
                plan.columns[w.column].quoted
            ));
        }
        format!("(SELECT to_jsonb(n) FROM (SELECT {}) n)", fields.join(", "))
    };
    // The argument is built first, on its own: a value that does not fit
    // its column fails here, as the op's fault, not the function's.
    let sql = format!(
        "SELECT jsonb_build_object(\
            'kind', $1::text, 'table', $2::text, 'client_id', $3::text, \
            'auth', $4::text::jsonb, \
            'key', (SELECT to_jsonb(k) FROM (SELECT {}) k), \
            'old', (SELECT to_jsonb(t) FROM {} t WHERE {}), \
            'new', {new})::text",
        key_fields.join(", "),
        plan.qualified,
        plan.key_condition(key_offset),
    );
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
    let argument: String = conn
        .query_opt(&sql, &refs)
        .await
        .and_then(|row| row.map_or(Ok(None), |r| r.try_get(0)))
        .map_err(|e| classify(e, Stage::Write, index))?
        .unwrap_or_default();
    let sql = format!("SELECT {}($1::text::jsonb)::text", call.function);
    let row = conn.query_opt(&sql, &[&argument]).await.map_err(fail)?;
    let returned: Option<String> = match row {
        Some(r) => r.try_get(0).map_err(fail)?,
        None => None,
    };
    let Some(returned) = returned.filter(|r| r != "null") else {
        return Ok(Verdict::Skip);
    };
    let refuse =
        |message: String| GroupError::rejected(reason::REJECTED_BY_FUNCTION, message, index);
    let Ok(Json::Object(fields)) = serde_json::from_str::<Json>(&returned) else {
        return Err(refuse(format!(
            "the function {} returned {returned}; it must return a jsonb object of the columns \
             to write, or NULL to skip the op",
            call.function
        )));
    };
    if call.kind == WriteKind::Delete {
        return Ok(Verdict::Write(Vec::new()));
    }
    let mut columns = Vec::with_capacity(fields.len());
    for name in fields.keys() {
        let Some(c) = plan.column(name) else {
            return Err(refuse(format!(
                "the function {} returned the column `{name}`, which table `{}` does not have",
                call.function, plan.client_name
            )));
        };
        if !plan.primary_key.contains(&c) {
            columns.push(c);
        }
    }
    columns.sort_unstable();
    if columns.is_empty() {
        return Ok(Verdict::Write(Vec::new()));
    }
    let select: Vec<String> = columns
        .iter()
        .map(|&c| format!("r.{}::text", plan.columns[c].quoted))
        .collect();
    let sql = format!(
        "SELECT {} FROM jsonb_populate_record(NULL::{}, $1::text::jsonb) r",
        select.join(", "),
        plan.qualified
    );
    let row = conn.query_opt(&sql, &[&returned]).await.map_err(fail)?;
    let Some(row) = row else {
        return Err(refuse("the function's result could not be read".into()));
    };
    let mut written = Vec::with_capacity(columns.len());
    for (i, &c) in columns.iter().enumerate() {
        let text: Option<String> = row.try_get(i).map_err(fail)?;
        written.push(Written { column: c, text });
    }
    Ok(Verdict::Write(written))
}
