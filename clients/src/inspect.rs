//! Read-only views of a replica for people: a status report and a query
//! printer. Nothing here writes to the replica: queries run on a read-only
//! connection and must be read-only statements.

/// Rejections the status report lists (the most recent ones).
const RECENT_REJECTIONS: usize = 5;

/// Pending groups the status report lists (the oldest ones).
const LISTED_GROUPS: usize = 10;

use crate::{ClientError, Replica, format_lsn};
use rusqlite::Connection;
use rusqlite::types::ValueRef;
use std::fmt::Write as _;
use std::io::Write;

/// A human-readable report: the last checkpoint, buckets, tables, local
/// writes not confirmed yet, and the most recent rejections.
pub fn status_report(replica: &Replica) -> Result<String, ClientError> {
    let mut out = String::new();
    let _ = writeln!(out, "replica:        {}", replica.path().display());
    let _ = writeln!(out, "client id:      {}", replica.client_id());
    let version = replica.schema_version()?;
    let _ = writeln!(
        out,
        "schema version: {}",
        version.as_deref().unwrap_or("(none)")
    );
    match replica.checkpoint()? {
        Some(cp) => {
            let _ = writeln!(
                out,
                "checkpoint:     op {} at LSN {} (epoch {})",
                cp.op_id,
                format_lsn(cp.lsn),
                if cp.epoch.is_empty() { "-" } else { &cp.epoch }
            );
        }
        None => {
            let _ = writeln!(out, "checkpoint:     none yet");
        }
    }
    let buckets = replica.buckets()?;
    let _ = writeln!(out, "buckets ({}):", buckets.len());
    let width = buckets.iter().map(|b| b.bucket.len()).max().unwrap_or(0);
    for b in &buckets {
        let _ = writeln!(
            out,
            "  {:<width$}  {:>10} rows  op {}",
            b.bucket, b.count, b.op_id
        );
    }
    let tables = replica.tables()?;
    let _ = writeln!(out, "tables ({}):", tables.len());
    let width = tables.iter().map(|t| t.name.len()).max().unwrap_or(0);
    for t in &tables {
        let _ = writeln!(out, "  {:<width$}  {:>10} rows", t.name, t.rows);
    }
    write_pending(&mut out, replica)?;
    Ok(out)
}

/// The local writes part of [`status_report`].
fn write_pending(out: &mut String, replica: &Replica) -> Result<(), ClientError> {
    let pending = replica.pending()?;
    let (waiting, applied): (Vec<_>, Vec<_>) = pending.iter().partition(|g| g.commit_lsn.is_none());
    let ops = |groups: &[&crate::PendingGroup]| groups.iter().map(|g| g.ops).sum::<u64>();
    let _ = writeln!(
        out,
        "outbox:         {} group(s), {} op(s) to upload",
        waiting.len(),
        ops(&waiting)
    );
    let _ = write!(
        out,
        "awaiting checkpoint: {} group(s), {} op(s)",
        applied.len(),
        ops(&applied)
    );
    match applied.iter().filter_map(|g| g.commit_lsn).max() {
        Some(lsn) => {
            let _ = writeln!(out, " (until LSN {})", format_lsn(lsn));
        }
        None => {
            let _ = writeln!(out);
        }
    }
    for g in pending.iter().take(LISTED_GROUPS) {
        let state = match g.commit_lsn {
            Some(lsn) => format!("applied at LSN {}", format_lsn(lsn)),
            None => "to upload".to_string(),
        };
        let _ = writeln!(
            out,
            "  seq {:<8} {:>6} op(s)  {}  [{}]",
            g.seq,
            g.ops,
            state,
            g.tables.join(", ")
        );
    }
    if pending.len() > LISTED_GROUPS {
        let _ = writeln!(out, "  … and {} more", pending.len() - LISTED_GROUPS);
    }
    let rejections = replica.rejections()?;
    let _ = writeln!(out, "rejections ({}):", rejections.len());
    let skip = rejections.len().saturating_sub(RECENT_REJECTIONS);
    for r in rejections.iter().skip(skip) {
        let _ = writeln!(
            out,
            "  {}  seq {} op {}  {} {} {}  {}: {}",
            r.at, r.seq, r.op, r.kind, r.table, r.key, r.reason_code, r.message
        );
    }
    Ok(())
}

/// Runs one read-only statement and writes its rows tab-separated, after a
/// header line of column names. NULL prints as `NULL`, blobs as `x'…'`; tabs,
/// newlines and backslashes inside values are escaped. Returns the row count.
pub fn write_query(conn: &Connection, sql: &str, out: &mut dyn Write) -> Result<u64, ClientError> {
    let mut stmt = conn.prepare(sql)?;
    if !stmt.readonly() {
        return Err(ClientError::NotReadOnly(sql.to_string()));
    }
    let names: Vec<String> = stmt.column_names().map(String::from).collect();
    writeln!(out, "{}", names.join("\t"))?;
    let mut rows = stmt.query([])?;
    let mut count = 0u64;
    let mut line = String::new();
    while let Some(row) = rows.next()? {
        line.clear();
        for i in 0..names.len() {
            if i > 0 {
                line.push('\t');
            }
            format_value(&mut line, row.get_ref(i)?);
        }
        writeln!(out, "{line}")?;
        count += 1;
    }
    Ok(count)
}

fn format_value(out: &mut String, value: ValueRef<'_>) {
    match value {
        ValueRef::Null => out.push_str("NULL"),
        ValueRef::Integer(i) => {
            let _ = write!(out, "{i}");
        }
        ValueRef::Real(r) => {
            let _ = write!(out, "{r}");
        }
        ValueRef::Text(t) => {
            for c in String::from_utf8_lossy(t).chars() {
                match c {
                    '\t' => out.push_str("\\t"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\\' => out.push_str("\\\\"),
                    c => out.push(c),
                }
            }
        }
        ValueRef::Blob(b) => {
            out.push_str("x'");
            for byte in b {
                let _ = write!(out, "{byte:02x}");
            }
            out.push('\'');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_print_as_tsv_and_writes_are_refused() {
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(
            "CREATE TABLE t (a, b); INSERT INTO t VALUES (1, 'x\ty'), (NULL, x'00ff'), (2.5, 'a\\b');",
        )
        .expect("setup");
        let mut out = Vec::new();
        let n = write_query(&conn, "SELECT a, b FROM t ORDER BY rowid", &mut out).expect("query");
        assert_eq!(n, 3);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "a\tb\n1\tx\\ty\nNULL\tx'00ff'\n2.5\ta\\\\b\n"
        );
        let err = write_query(&conn, "DELETE FROM t", &mut Vec::new()).expect_err("write");
        assert!(matches!(err, ClientError::NotReadOnly(_)));
    }
}
