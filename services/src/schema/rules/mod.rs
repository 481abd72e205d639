//! Write rules: which local writes the service accepts for each table and how
//! they merge with what others wrote, declared in the schema files next to
//! the shapes (design decision 8).
//!
//! ```text
//! [tables.<table>] ──parse──▶ TableRulesSource ──compile_rules(+ Catalog)──▶ WriteRules
//!  (keys, rule syntax,          (per file)          (columns, types, merge kinds and
//!   merge kind names)                                 permissions checked; functions
//!                                                     resolved by resolve_functions)
//! ```
//!
//! ```toml
//! [tables.todos]
//! insert = "new.owner = auth.sub"
//! update = "old.owner = auth.sub AND new.owner = auth.sub"
//! delete = "old.owner = auth.sub"
//! function = "app.check_todo"      # optional: fn(op jsonb) RETURNS jsonb
//! [tables.todos.merge]             # per column; default "lww"
//! likes = "counter"
//! ```
//!
//! Invariants: a table is writable only through a `[tables.<table>]`
//! section, and an operation only when its rule is declared; a permission
//! is a predicate in the shape language over `old.<column>`, `new.<column>`
//! and `auth.<claim>`, type-checked at load time against the live catalog;
//! every merge kind fits its column's type; every problem is reported with
//! its file, line and column.

mod parse;
mod permission;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

pub(crate) use parse::TableRulesSource;
pub(in crate::schema) use parse::parse_tables;
pub use permission::Denied;

use super::catalog::{Catalog, CatalogColumn, CatalogTable};
use super::error::{Pos, SchemaError, SchemaErrors, did_you_mean};
use super::file::SchemaSource;
use super::types::{Collation, SqlType};
use crate::pgtypes::TypeKind;
use permission::Permission;

/// How a written column merges with the value already in Postgres.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MergeKind {
    /// Last writer wins, by hybrid logical clock, ties broken by client id.
    #[default]
    Lww,
    /// The op carries a delta: `col = col + delta`.
    Counter,
    /// The greater of the current and the written value.
    Max,
    /// The lesser of the current and the written value.
    Min,
    /// Arrays: the current elements, then the written ones not yet there.
    SetUnion,
    /// The group is rejected when the current value is not the one the
    /// client saw (`before`).
    RejectIfStale,
}

impl MergeKind {
    /// Every kind's name, as written in schema files and sent to clients.
    pub const NAMES: [&'static str; 6] = [
        "lww",
        "counter",
        "max",
        "min",
        "set_union",
        "reject_if_stale",
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MergeKind::Lww => "lww",
            MergeKind::Counter => "counter",
            MergeKind::Max => "max",
            MergeKind::Min => "min",
            MergeKind::SetUnion => "set_union",
            MergeKind::RejectIfStale => "reject_if_stale",
        }
    }

    pub fn parse(name: &str) -> Option<MergeKind> {
        Some(match name {
            "lww" => MergeKind::Lww,
            "counter" => MergeKind::Counter,
            "max" => MergeKind::Max,
            "min" => MergeKind::Min,
            "set_union" => MergeKind::SetUnion,
            "reject_if_stale" => MergeKind::RejectIfStale,
            _ => return None,
        })
    }
}

/// The three kinds of writes, each with its own permission.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WriteKind {
    Insert,
    Update,
    Delete,
}

impl fmt::Display for WriteKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WriteKind::Insert => "insert",
            WriteKind::Update => "update",
            WriteKind::Delete => "delete",
        })
    }
}

/// The domain function of a table: `fn(op jsonb) RETURNS jsonb`.
#[derive(Clone, Debug)]
pub struct TableFunction {
    /// As written in the schema file.
    pub name: String,
    /// The function as SQL can call it (`"app"."check_todo"`), once
    /// [`resolve_functions`] found it.
    pub sql_name: Option<String>,
    file: PathBuf,
    pos: Pos,
}

/// The write rules of one table.
#[derive(Clone, Debug)]
pub struct TableRules {
    pub schema: String,
    pub name: String,
    /// Indexed like the catalog's (and the compiled schema's) columns.
    pub merge: Vec<MergeKind>,
    pub function: Option<TableFunction>,
    insert: Option<Permission>,
    update: Option<Permission>,
    delete: Option<Permission>,
    /// The row a permission reads: the table's columns as `old.<c>`, then
    /// as `new.<c>`.
    row: Arc<CatalogTable>,
    /// The predicate type of each column of `row`.
    row_types: Vec<SqlType>,
    default_collation: Option<Arc<Collation>>,
}

impl TableRules {
    /// Whether writes of this kind are accepted at all.
    pub fn allows(&self, kind: WriteKind) -> bool {
        self.permission(kind).is_some()
    }

    fn permission(&self, kind: WriteKind) -> Option<&Permission> {
        match kind {
            WriteKind::Insert => self.insert.as_ref(),
            WriteKind::Update => self.update.as_ref(),
            WriteKind::Delete => self.delete.as_ref(),
        }
    }
}

/// The write rules of every table, checked against the catalog.
#[derive(Clone, Debug, Default)]
pub struct WriteRules {
    pub tables: Vec<TableRules>,
}

impl WriteRules {
    /// The rules of a table, by schema and name.
    pub fn table(&self, schema: &str, name: &str) -> Option<&TableRules> {
        self.tables
            .iter()
            .find(|t| t.schema == schema && t.name == name)
    }

    /// How a column merges (`lww` for tables without rules).
    pub fn merge_kind(&self, schema: &str, table: &str, column: usize) -> MergeKind {
        self.table(schema, table)
            .and_then(|t| t.merge.get(column).copied())
            .unwrap_or_default()
    }
}

/// Errors of one section, at positions in its file.
struct SectionErrors<'a> {
    file: &'a PathBuf,
    list: &'a mut Vec<SchemaError>,
}

impl SectionErrors<'_> {
    fn at(&mut self, pos: Pos, message: impl Into<String>) {
        self.list
            .push(SchemaError::at(self.file.clone(), pos, message));
    }
}

/// Checks the write rules of the schema files against the catalog.
/// Functions are checked separately, against the live database, by
/// [`resolve_functions`].
pub fn compile_rules(source: &SchemaSource, catalog: &Catalog) -> Result<WriteRules, SchemaErrors> {
    let mut errors = Vec::new();
    let mut tables = Vec::new();
    let mut seen: HashMap<&(String, String), &TableRulesSource> = HashMap::new();
    for section in &source.rules {
        let file = &source.files[section.file];
        let mut cx = SectionErrors {
            file,
            list: &mut errors,
        };
        let (schema, name) = &section.table;
        let label = if schema == "public" {
            name.clone()
        } else {
            format!("{schema}.{name}")
        };
        if let Some(first) = seen.get(&section.table) {
            cx.at(
                section.pos,
                format!(
                    "the write rules of `{label}` are declared twice: first at {}:{}:{}",
                    source.files[first.file].display(),
                    first.pos.line,
                    first.pos.column
                ),
            );
            continue;
        }
        seen.insert(&section.table, section);
        if !source.shapes.iter().any(|s| s.table.value == section.table) {
            cx.at(
                section.pos,
                format!(
                    "no shape syncs `{label}`: clients write only the tables they hold; \
                     add a `[shapes.<name>]` with `table = \"{label}\"`"
                ),
            );
            continue;
        }
        // A missing table, or one without a primary key, is reported at its
        // shapes.
        let Some(table) = catalog.table(schema, name) else {
            continue;
        };
        if table.primary_key.is_empty() {
            continue;
        }
        if let Some(rules) = compile_section(section, table, catalog, &mut cx) {
            tables.push(rules);
        }
    }
    if errors.is_empty() {
        Ok(WriteRules { tables })
    } else {
        Err(SchemaErrors::normalized(errors))
    }
}

fn compile_section(
    section: &TableRulesSource,
    table: &CatalogTable,
    catalog: &Catalog,
    cx: &mut SectionErrors<'_>,
) -> Option<TableRules> {
    let mut ok = true;
    let mut merge = vec![MergeKind::Lww; table.columns.len()];
    for (column, kind) in &section.merge {
        let Some(i) = table.columns.iter().position(|c| c.name == column.value) else {
            let hint = did_you_mean(&column.value, table.columns.iter().map(|c| c.name.as_str()));
            cx.at(
                column.pos,
                format!(
                    "unknown column `{}` in table `{}`{hint}",
                    column.value, table.name
                ),
            );
            ok = false;
            continue;
        };
        if table.primary_key.contains(&i) {
            cx.at(
                column.pos,
                format!(
                    "`{}` is part of the primary key, which identifies the row and never merges",
                    column.value
                ),
            );
            ok = false;
            continue;
        }
        if let Err(message) = check_merge(&table.columns[i], kind.value) {
            cx.at(kind.pos, message);
            ok = false;
            continue;
        }
        merge[i] = kind.value;
    }
    let (row, row_types) = permission::virtual_row(table);
    let row = Arc::new(row);
    let mut permissions: [Option<Permission>; 3] = [None, None, None];
    for rule in &section.rules {
        match Permission::compile(rule, &row, catalog.default_collation.clone()) {
            Ok(p) => {
                let slot = match rule.kind {
                    WriteKind::Insert => 0,
                    WriteKind::Update => 1,
                    WriteKind::Delete => 2,
                };
                permissions[slot] = Some(p);
            }
            Err(list) => {
                ok = false;
                for (pos, message) in list {
                    cx.at(pos, message);
                }
            }
        }
    }
    let [insert, update, delete] = permissions;
    ok.then(|| TableRules {
        schema: table.schema.clone(),
        name: table.name.clone(),
        merge,
        function: section.function.as_ref().map(|f| TableFunction {
            name: f.value.clone(),
            sql_name: None,
            file: cx.file.clone(),
            pos: f.pos,
        }),
        insert,
        update,
        delete,
        row,
        row_types,
        default_collation: catalog.default_collation.clone(),
    })
}

/// Whether a merge kind fits a column's type.
fn check_merge(column: &CatalogColumn, kind: MergeKind) -> Result<(), String> {
    let name = &column.name;
    let ty = &column.type_name;
    match (kind, column.kind.as_ref()) {
        (MergeKind::Lww | MergeKind::RejectIfStale, _) => Ok(()),
        (MergeKind::Counter, Some(TypeKind::Int | TypeKind::Float | TypeKind::Numeric)) => Ok(()),
        (MergeKind::Counter, _) => Err(format!(
            "`{name}` has type {ty}: a counter needs a number column (integer, numeric, real, \
             double precision)"
        )),
        (MergeKind::SetUnion, Some(TypeKind::Array(element)))
            if !matches!(**element, TypeKind::Json | TypeKind::Array(_)) =>
        {
            Ok(())
        }
        (MergeKind::SetUnion, Some(TypeKind::Array(_))) => Err(format!(
            "`{name}` has type {ty}: set_union needs an array of values with an equality \
             (not json)"
        )),
        (MergeKind::SetUnion, _) => Err(format!(
            "`{name}` has type {ty}: set_union needs an array column (e.g. text[])"
        )),
        (
            MergeKind::Max | MergeKind::Min,
            Some(
                TypeKind::Bool
                | TypeKind::Int
                | TypeKind::Float
                | TypeKind::Numeric
                | TypeKind::Text
                | TypeKind::Uuid
                | TypeKind::Bytea
                | TypeKind::Timestamptz
                | TypeKind::Timestamp
                | TypeKind::Date
                | TypeKind::Time
                | TypeKind::Timetz
                | TypeKind::Interval
                | TypeKind::Network,
            ),
        ) => Ok(()),
        (MergeKind::Max | MergeKind::Min, _) => Err(format!(
            "`{name}` has type {ty}, which has no order: {} needs a number, text, date, time, \
             uuid, boolean or enum column",
            kind.as_str()
        )),
    }
}

/// A function named in the schema files that is not `fn(jsonb) RETURNS jsonb`.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{0}")]
    Schema(#[from] SchemaErrors),
    #[error("looking up write rule functions: {0}")]
    Query(#[from] tokio_postgres::Error),
}

/// Finds every table function in the live database (`to_regprocedure`) and
/// records how SQL calls it.
pub async fn resolve_functions(
    rules: &mut WriteRules,
    client: &tokio_postgres::Client,
) -> Result<(), ResolveError> {
    let mut errors = Vec::new();
    for table in &mut rules.tables {
        let Some(function) = table.function.as_mut() else {
            continue;
        };
        let signature = format!("{}(jsonb)", function.name);
        let row = client
            .query_opt(
                "SELECT quote_ident(n.nspname) || '.' || quote_ident(p.proname), \
                        p.prorettype = 'jsonb'::regtype, p.prokind = 'f' \
                 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
                 WHERE p.oid = to_regprocedure($1)",
                &[&signature],
            )
            .await?;
        let at = |message: String| SchemaError::at(function.file.clone(), function.pos, message);
        match row {
            None => errors.push(at(format!(
                "function `{signature}` does not exist (to_regprocedure finds nothing): \
                 create it as `CREATE FUNCTION {}(op jsonb) RETURNS jsonb …`",
                function.name
            ))),
            Some(row) => {
                let sql_name: String = row.try_get(0)?;
                let returns_jsonb: bool = row.try_get(1)?;
                let is_function: bool = row.try_get(2)?;
                if !is_function {
                    errors.push(at(format!(
                        "`{signature}` is a procedure or an aggregate; a write rule needs a \
                         function returning jsonb"
                    )));
                } else if !returns_jsonb {
                    errors.push(at(format!(
                        "function `{signature}` must return jsonb (the row to write, or NULL \
                         to skip the op)"
                    )));
                } else {
                    function.sql_name = Some(sql_name);
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(SchemaErrors::normalized(errors).into())
    }
}
