//! What the applier knows about each writable table, prepared once at
//! start-up: its columns with their merge kinds and the SQL type each value
//! is cast to, its primary key, and the statements that lock and read a
//! row and delete it.
//!
//! Invariants: values are always passed as text and cast to the column's
//! type *without* its modifiers (`varchar`, not `varchar(80)`), so that a
//! value too long is refused by the assignment, as any INSERT would refuse
//! it, instead of being silently cut by an explicit cast; rows are read as
//! the text form of every column in catalog order, the form the shape
//! predicates and the replication path use.

use std::collections::HashMap;

use crate::pgtypes::TypeKind;
use crate::schema::{MergeKind, SyncedTable, TableRules};

pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Whether the table's ops cannot be applied in batches (`$1` the qualified
/// table): writes to other rows change its rows behind an op's back (a
/// trigger of its own, a foreign key with a referential action other than
/// NO ACTION / RESTRICT), or a constraint ties its rows to one another in
/// a way the order of a batch's statements could change (a foreign key to
/// itself, a unique or exclusion constraint beside the primary key, a
/// deferrable constraint, checked at the commit of the whole batch).
pub(crate) const UNBATCHABLE: &str = "SELECT EXISTS (\
         SELECT 1 FROM pg_trigger WHERE tgrelid = $1::text::regclass AND NOT tgisinternal) \
     OR EXISTS (\
         SELECT 1 FROM pg_constraint WHERE conrelid = $1::text::regclass AND contype = 'f' \
         AND (confdeltype NOT IN ('a', 'r') OR confupdtype NOT IN ('a', 'r') \
              OR confrelid = conrelid)) \
     OR EXISTS (\
         SELECT 1 FROM pg_constraint WHERE conrelid = $1::text::regclass AND condeferrable) \
     OR EXISTS (\
         SELECT 1 FROM pg_index WHERE indrelid = $1::text::regclass AND NOT indisprimary \
         AND (indisunique OR indisexclusion))";

/// The tables a foreign key ties to the table `$1` (qualified), either
/// way, as `schema.table`.
pub(crate) const RELATED: &str = "SELECT DISTINCT n.nspname || '.' || c.relname \
     FROM pg_constraint k \
     JOIN pg_class c ON c.oid = CASE WHEN k.conrelid = $1::text::regclass \
                                     THEN k.confrelid ELSE k.conrelid END \
     JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE k.contype = 'f' \
       AND (k.conrelid = $1::text::regclass OR k.confrelid = $1::text::regclass)";

/// A column of a writable table.
#[derive(Clone, Debug)]
pub(crate) struct ColumnPlan {
    pub name: String,
    /// The name as an SQL identifier.
    pub quoted: String,
    /// The type values are cast to: `format_type(atttypid, -1)`, the type
    /// without modifiers (`bpchar`, not `character`, which means `char(1)`).
    pub cast: String,
    /// How values travel; `None` for a type Outpost does not sync.
    pub kind: Option<TypeKind>,
    pub merge: MergeKind,
    /// Clients hold the column (and so may write it).
    pub synced: bool,
}

/// A writable table.
#[derive(Clone, Debug)]
pub(crate) struct TablePlan {
    /// The table as clients name it.
    pub client_name: String,
    /// `schema.table`, as `outpost.row_versions` names it.
    pub label: String,
    /// `"schema"."table"`.
    pub qualified: String,
    /// Every column, in catalog order.
    pub columns: Vec<ColumnPlan>,
    /// Indexes into `columns`, in key order.
    pub primary_key: Vec<usize>,
    pub rules: TableRules,
    /// The table function as SQL calls it.
    pub function: Option<String>,
    /// Locks the row with the key `$1…$k` and reads every column as text,
    /// then the commit time (ms) of its last change (0 when unknown).
    pub lock_sql: String,
    /// Deletes the row with the key `$1…$k`.
    pub delete_sql: String,
    /// `"c1"::text, "c2"::text, …`: every column as text.
    pub returning: String,
    /// The commit time (ms) of the row's last change, 0 when unknown.
    pub commit_ms: &'static str,
    /// Its ops may be applied in batches (see [`UNBATCHABLE`]).
    pub batchable: bool,
    /// The tables a foreign key ties it to (`schema.table`): a batch keeps
    /// their ops in the order of the ops of this one.
    pub related: Vec<String>,
}

impl TablePlan {
    /// Builds the plan; `casts` maps column names to their unmodified type
    /// names; `commit_times`: whether `track_commit_timestamp` is on.
    pub(crate) fn new(
        table: &SyncedTable,
        rules: &TableRules,
        casts: &HashMap<String, String>,
        commit_times: bool,
    ) -> Result<TablePlan, String> {
        let mut columns = Vec::with_capacity(table.columns.len());
        for (i, c) in table.columns.iter().enumerate() {
            let cast = casts.get(&c.name).ok_or_else(|| {
                format!(
                    "column `{}` of `{}.{}` is gone from the database",
                    c.name, table.schema, table.name
                )
            })?;
            columns.push(ColumnPlan {
                name: c.name.clone(),
                quoted: quote_ident(&c.name),
                cast: cast.clone(),
                kind: c.kind.clone(),
                merge: rules.merge.get(i).copied().unwrap_or_default(),
                synced: table.synced.contains(&i),
            });
        }
        let qualified = format!(
            "{}.{}",
            quote_ident(&table.schema),
            quote_ident(&table.name)
        );
        let returning = columns
            .iter()
            .map(|c| format!("{}::text", c.quoted))
            .collect::<Vec<_>>()
            .join(", ");
        let commit_ms = if commit_times {
            "coalesce((extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000)::int8, 0)"
        } else {
            "0::int8"
        };
        let mut plan = TablePlan {
            client_name: table.client_name.clone(),
            label: format!("{}.{}", table.schema, table.name),
            qualified,
            columns,
            primary_key: table.primary_key.clone(),
            rules: rules.clone(),
            function: rules.function.as_ref().and_then(|f| f.sql_name.clone()),
            lock_sql: String::new(),
            delete_sql: String::new(),
            returning,
            commit_ms,
            batchable: false,
            related: Vec::new(),
        };
        plan.lock_sql = format!(
            "SELECT {}, {} FROM {} WHERE {} FOR UPDATE",
            plan.returning,
            plan.commit_ms,
            plan.qualified,
            plan.key_condition(0)
        );
        plan.delete_sql = format!(
            "DELETE FROM {} WHERE {}",
            plan.qualified,
            plan.key_condition(0)
        );
        Ok(plan)
    }

    /// `$n::text::type`.
    pub(crate) fn param(&self, column: usize, n: usize) -> String {
        format!("${n}::text::{}", self.columns[column].cast)
    }

    /// `"k1" = $(offset+1)::text::t1 AND …`.
    pub(crate) fn key_condition(&self, offset: usize) -> String {
        self.primary_key
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                format!(
                    "{} = {}",
                    self.columns[c].quoted,
                    self.param(c, offset + i + 1)
                )
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// The key columns, quoted, comma-separated.
    pub(crate) fn key_columns(&self) -> String {
        self.primary_key
            .iter()
            .map(|&c| self.columns[c].quoted.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The column named `name`.
    pub(crate) fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}
