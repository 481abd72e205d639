//! Typed tables: from the service's `Schema` message to SQLite DDL.
//!
//! Each synced table becomes a real SQLite table with the columns, types and
//! primary key the service announces. Invariants:
//! - a table's definition is validated before any SQL is built from it: names
//!   are non-empty and unique, the primary key is non-empty and points at
//!   columns, the type is one of the four SQLite storage classes, and no name
//!   can collide with the replica's own `_outpost_` or SQLite's `sqlite_` tables;
//! - every identifier is quoted, so names are taken literally;
//! - a schema change may add columns (`ALTER TABLE … ADD COLUMN`); a change of
//!   primary key is refused, because the rows already held could not be matched;
//! - definitions are stored in `_outpost_tables`, so a table whose shape is no
//!   longer requested can still have its rows removed;
//! - every synced table carries the capture triggers of [`super::capture`]
//!   for its current columns.

use super::capture;
use crate::ClientError;
use outpost_proto::v1::TableSchema;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// One column of a synced table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ColumnDef {
    pub(crate) name: String,
    /// The Postgres type, kept for documentation and future conversions.
    pub(crate) pg_type: String,
    /// INTEGER, REAL, TEXT or BLOB.
    pub(crate) sqlite_type: String,
    pub(crate) nullable: bool,
    /// How the service merges local writes to the column (`lww`, `counter`, …).
    #[serde(default)]
    pub(crate) merge: String,
}

impl ColumnDef {
    /// Whether local writes travel as deltas.
    pub(crate) fn is_counter(&self) -> bool {
        self.merge.eq_ignore_ascii_case("counter")
    }
}

/// What `_outpost_tables.definition` holds, as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StoredDefinition {
    columns: Vec<ColumnDef>,
    primary_key: Vec<usize>,
}

/// A validated table definition and the statements that write it.
#[derive(Debug, Clone)]
pub(crate) struct TableDef {
    pub(crate) name: String,
    pub(crate) columns: Vec<ColumnDef>,
    /// Indexes into `columns`, in key order.
    pub(crate) primary_key: Vec<usize>,
    /// `INSERT … ON CONFLICT (pk) DO UPDATE`, parameters are the columns in order.
    pub(crate) upsert_sql: String,
    /// `DELETE … WHERE pk = …`, parameters are the key values in key order.
    pub(crate) delete_sql: String,
    /// Rows written at once by `upsert_many_sql` and `refs_many_sql`.
    pub(crate) bulk_rows: usize,
    /// The upsert of `bulk_rows` rows: parameters are their columns, row by row.
    pub(crate) upsert_many_sql: String,
    /// The insert of the references of `bulk_rows` rows (see
    /// [`super::refs::insert_many_sql`]).
    pub(crate) refs_many_sql: String,
}

/// Rows per multi-row statement; fewer for very wide tables, so that a
/// statement stays under SQLite's default limit of 32766 parameters.
const BULK_ROWS: usize = 32;

/// Quotes an SQLite identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn reserved(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("_outpost_") || lower.starts_with("sqlite_")
}

impl TableDef {
    /// Validates a table announced by the service.
    pub(crate) fn from_proto(table: &TableSchema) -> Result<Self, ClientError> {
        let columns = table
            .columns
            .iter()
            .map(|c| ColumnDef {
                name: c.name.clone(),
                pg_type: c.pg_type.clone(),
                sqlite_type: c.sqlite_type.to_ascii_uppercase(),
                nullable: c.nullable,
                merge: c.merge.clone(),
            })
            .collect();
        let primary_key = table.primary_key.iter().map(|&i| i as usize).collect();
        Self::new(table.name.clone(), columns, primary_key)
    }

    fn new(
        name: String,
        columns: Vec<ColumnDef>,
        primary_key: Vec<usize>,
    ) -> Result<Self, ClientError> {
        let bad = |reason: String| ClientError::Protocol(format!("table {name:?}: {reason}"));
        if name.is_empty() {
            return Err(ClientError::Protocol("a table has an empty name".into()));
        }
        if reserved(&name) {
            return Err(bad(
                "the name is reserved for the replica's own tables".into()
            ));
        }
        if columns.is_empty() {
            return Err(bad("no columns".into()));
        }
        let mut seen = HashSet::new();
        for c in &columns {
            if c.name.is_empty() {
                return Err(bad("a column has an empty name".into()));
            }
            if !seen.insert(c.name.to_ascii_lowercase()) {
                return Err(bad(format!("column {:?} appears twice", c.name)));
            }
            if !matches!(c.sqlite_type.as_str(), "INTEGER" | "REAL" | "TEXT" | "BLOB") {
                return Err(bad(format!(
                    "column {:?} has SQLite type {:?}; expected INTEGER, REAL, TEXT or BLOB",
                    c.name, c.sqlite_type
                )));
            }
        }
        if primary_key.is_empty() {
            return Err(bad("no primary key".into()));
        }
        let mut pk_seen = HashSet::new();
        for &i in &primary_key {
            if i >= columns.len() || !pk_seen.insert(i) {
                return Err(bad(format!("invalid primary key column index {i}")));
            }
        }
        let bulk_rows = BULK_ROWS.min(32_000 / columns.len()).max(1);
        let (upsert_sql, delete_sql) = statements(&name, &columns, &primary_key, 1);
        let (upsert_many_sql, _) = statements(&name, &columns, &primary_key, bulk_rows);
        Ok(TableDef {
            name,
            columns,
            primary_key,
            upsert_sql,
            delete_sql,
            bulk_rows,
            upsert_many_sql,
            refs_many_sql: super::refs::insert_many_sql(bulk_rows),
        })
    }

    fn primary_key_names(&self) -> Vec<&str> {
        self.primary_key
            .iter()
            .map(|&i| self.columns[i].name.as_str())
            .collect()
    }

    fn create_sql(&self) -> String {
        let cols: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("{} {}", quote_ident(&c.name), c.sqlite_type))
            .collect();
        let pk: Vec<String> = self
            .primary_key_names()
            .into_iter()
            .map(quote_ident)
            .collect();
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))",
            quote_ident(&self.name),
            cols.join(", "),
            pk.join(", ")
        )
    }

    /// The column with this name.
    pub(crate) fn column(&self, name: &str) -> Option<(usize, &ColumnDef)> {
        self.columns
            .iter()
            .enumerate()
            .find(|(_, c)| c.name == name)
    }

    /// Creates the table, or brings an existing one up to this definition by
    /// adding the columns it lacks, and (re)creates its capture triggers.
    /// Runs inside the caller's transaction.
    pub(crate) fn ensure(&self, conn: &Connection) -> Result<(), ClientError> {
        let existing = existing_columns(conn, &self.name)?;
        if existing.is_empty() {
            conn.execute_batch(&self.create_sql())?;
        } else {
            let existing_pk: Vec<String> = {
                let mut pk: Vec<&(String, i64)> =
                    existing.iter().filter(|(_, pk)| *pk > 0).collect();
                pk.sort_by_key(|(_, pk)| *pk);
                pk.into_iter()
                    .map(|(n, _)| n.to_ascii_lowercase())
                    .collect()
            };
            let wanted_pk: Vec<String> = self
                .primary_key_names()
                .into_iter()
                .map(str::to_ascii_lowercase)
                .collect();
            if existing_pk != wanted_pk {
                return Err(ClientError::Protocol(format!(
                    "the primary key of table {:?} changed from {existing_pk:?} to {wanted_pk:?}; \
                     delete the replica and sync again",
                    self.name
                )));
            }
            let have: HashSet<String> = existing
                .iter()
                .map(|(n, _)| n.to_ascii_lowercase())
                .collect();
            for c in &self.columns {
                if !have.contains(&c.name.to_ascii_lowercase()) {
                    tracing::info!(table = %self.name, column = %c.name, "adding column to replica table");
                    conn.execute_batch(&format!(
                        "ALTER TABLE {} ADD COLUMN {} {}",
                        quote_ident(&self.name),
                        quote_ident(&c.name),
                        c.sqlite_type
                    ))?;
                }
            }
        }
        capture::install_triggers(conn, self)?;
        let stored = StoredDefinition {
            columns: self.columns.clone(),
            primary_key: self.primary_key.clone(),
        };
        let json = serde_json::to_string(&stored)
            .map_err(|e| ClientError::CorruptReplica(format!("table definition: {e}")))?;
        conn.execute(
            "INSERT INTO _outpost_tables (name, definition) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET definition = excluded.definition",
            (&self.name, &json),
        )?;
        Ok(())
    }
}

/// Builds the upsert (of `rows` rows) and delete statements of a table.
fn statements(
    name: &str,
    columns: &[ColumnDef],
    primary_key: &[usize],
    rows: usize,
) -> (String, String) {
    let table = quote_ident(name);
    let names: Vec<String> = columns.iter().map(|c| quote_ident(&c.name)).collect();
    let values: Vec<String> = (0..rows)
        .map(|r| {
            let params: Vec<String> = (1..=columns.len())
                .map(|i| format!("?{}", r * columns.len() + i))
                .collect();
            format!("({})", params.join(", "))
        })
        .collect();
    let pk: Vec<String> = primary_key.iter().map(|&i| names[i].clone()).collect();
    let updates: Vec<String> = names
        .iter()
        .enumerate()
        .filter(|(i, _)| !primary_key.contains(i))
        .map(|(_, n)| format!("{n} = excluded.{n}"))
        .collect();
    let conflict = if updates.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!("DO UPDATE SET {}", updates.join(", "))
    };
    let upsert = format!(
        "INSERT INTO {table} ({}) VALUES {} ON CONFLICT ({}) {conflict}",
        names.join(", "),
        values.join(", "),
        pk.join(", ")
    );
    let conditions: Vec<String> = pk
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{n} = ?{}", i + 1))
        .collect();
    let delete = format!("DELETE FROM {table} WHERE {}", conditions.join(" AND "));
    (upsert, delete)
}

/// The columns of an existing table with their 1-based primary key position
/// (0 when not in the key); empty when the table does not exist.
fn existing_columns(conn: &Connection, table: &str) -> Result<Vec<(String, i64)>, ClientError> {
    let mut stmt = conn.prepare("SELECT name, pk FROM pragma_table_info(?1)")?;
    let rows = stmt.query_map([table], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Loads every table definition stored in the replica.
pub(crate) fn load_tables(conn: &Connection) -> Result<Vec<TableDef>, ClientError> {
    let mut stmt = conn.prepare("SELECT name, definition FROM _outpost_tables ORDER BY name")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut tables = Vec::new();
    for row in rows {
        let (name, json) = row?;
        let stored: StoredDefinition = serde_json::from_str(&json).map_err(|e| {
            ClientError::CorruptReplica(format!("definition of table {name:?}: {e}"))
        })?;
        let def = TableDef::new(name, stored.columns, stored.primary_key)
            .map_err(|e| ClientError::CorruptReplica(e.to_string()))?;
        tables.push(def);
    }
    Ok(tables)
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_proto::v1::ColumnSchema;

    fn table(name: &str, cols: &[(&str, &str)], pk: &[u32]) -> TableSchema {
        TableSchema {
            name: name.into(),
            columns: cols
                .iter()
                .map(|(n, t)| ColumnSchema {
                    name: (*n).into(),
                    pg_type: String::new(),
                    sqlite_type: (*t).into(),
                    nullable: true,
                    merge: "lww".into(),
                })
                .collect(),
            primary_key: pk.to_vec(),
        }
    }

    #[test]
    fn identifiers_are_quoted() {
        let def = TableDef::from_proto(&table(
            "we\"ird",
            &[("id", "integer"), ("a b", "TEXT")],
            &[0],
        ))
        .expect("valid");
        assert_eq!(
            def.upsert_sql,
            "INSERT INTO \"we\"\"ird\" (\"id\", \"a b\") VALUES (?1, ?2) ON CONFLICT (\"id\") \
             DO UPDATE SET \"a b\" = excluded.\"a b\""
        );
        assert_eq!(
            def.delete_sql,
            "DELETE FROM \"we\"\"ird\" WHERE \"id\" = ?1"
        );
    }

    #[test]
    fn invalid_definitions_are_refused() {
        for bad in [
            table("_outpost_rows", &[("id", "INTEGER")], &[0]),
            table("t", &[("id", "INTEGER")], &[]),
            table("t", &[("id", "INTEGER")], &[1]),
            table("t", &[("id", "INTEGER"), ("ID", "TEXT")], &[0]),
            table("t", &[("id", "VARCHAR); DROP TABLE x; --")], &[0]),
        ] {
            assert!(TableDef::from_proto(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn key_only_tables_do_nothing_on_conflict() {
        let def = TableDef::from_proto(&table("m", &[("a", "TEXT"), ("b", "TEXT")], &[0, 1]))
            .expect("valid");
        assert!(
            def.upsert_sql
                .ends_with("ON CONFLICT (\"a\", \"b\") DO NOTHING")
        );
    }
}
