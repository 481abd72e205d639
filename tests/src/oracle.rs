//! The oracle: a shape's rows as Postgres itself computes them, converted to
//! the wire values a replica must hold.
//!
//! Rows are fetched in text form with the simple query protocol in a session
//! with `DateStyle=ISO, TimeZone=UTC, IntervalStyle=postgres,
//! extra_float_digits=3` (the same output functions pgoutput and `COPY` use,
//! so `boolean` prints `t`, not `true` as a `::text` cast would), and each
//! value goes through `outpost::pgtypes::to_value` with the column's
//! [`TypeKind`] (enums, domains and their arrays are resolved from `pg_type`).
//!
//! Invariant: [`Rows`] are keyed by the shape's primary key, so two row sets
//! compare row for row whatever order they were read in.

use anyhow::{Context, bail};
use outpost::pgtypes::{TypeKind, to_value};
use outpost_proto::v1::Value;
use outpost_proto::v1::value::Kind;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One part of a row key, ordered so that integer keys sort numerically.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyPart {
    Null,
    Int(i64),
    Text(String),
    Other(String),
}

impl KeyPart {
    fn of(value: &Value) -> KeyPart {
        match &value.kind {
            None | Some(Kind::Null(_)) => KeyPart::Null,
            Some(Kind::Integer(i)) => KeyPart::Int(*i),
            Some(Kind::Text(t)) => KeyPart::Text(t.clone()),
            Some(_) => KeyPart::Other(show_value(value)),
        }
    }
}

/// A shape as a query: the table, the synced columns, the key and the filter
/// for one user.
#[derive(Clone, Debug)]
pub struct ShapeQuery {
    /// The Postgres table, which is also the replica's table name.
    pub table: String,
    /// The synced columns, in the order rows are compared.
    pub columns: Vec<String>,
    /// The primary-key columns (a subset of `columns`).
    pub key: Vec<String>,
    /// The shape's `WHERE` for this user, in Postgres SQL (`None`: every row).
    pub filter: Option<String>,
}

impl ShapeQuery {
    /// A shape over `table` with `columns`, keyed by `id`, without filter.
    pub fn new(table: &str, columns: &[&str]) -> ShapeQuery {
        ShapeQuery {
            table: table.to_string(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            key: vec!["id".to_string()],
            filter: None,
        }
    }

    /// The same shape restricted by `filter` (Postgres SQL).
    pub fn filtered(mut self, filter: impl Into<String>) -> ShapeQuery {
        self.filter = Some(filter.into());
        self
    }

    /// The same shape for the rows whose `column` equals `value` (a text literal).
    pub fn where_eq(self, column: &str, value: &str) -> ShapeQuery {
        let filter = format!("{} = '{}'", quote_ident(column), value.replace('\'', "''"));
        self.filtered(filter)
    }

    /// The column list, quoted, for SQL.
    pub(crate) fn select_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn key_indexes(&self) -> anyhow::Result<Vec<usize>> {
        self.key
            .iter()
            .map(|k| {
                self.columns
                    .iter()
                    .position(|c| c == k)
                    .with_context(|| format!("key column {k} is not among the columns"))
            })
            .collect()
    }

    /// Builds [`Rows`] from rows of values in column order.
    pub fn rows_from(&self, rows: Vec<Vec<Value>>) -> anyhow::Result<Rows> {
        let keys = self.key_indexes()?;
        let mut map = BTreeMap::new();
        for row in rows {
            let key: Vec<KeyPart> = keys.iter().map(|&i| KeyPart::of(&row[i])).collect();
            if let Some(old) = map.insert(key.clone(), row) {
                bail!(
                    "two rows of {} have the key {key:?}: {}",
                    self.table,
                    show_row(&old)
                );
            }
        }
        Ok(Rows {
            columns: self.columns.clone(),
            rows: map,
        })
    }
}

/// A set of rows keyed by primary key.
#[derive(Clone, Debug, PartialEq)]
pub struct Rows {
    /// The column names, in the order of each row's values.
    pub columns: Vec<String>,
    /// Key → the row's values.
    pub rows: BTreeMap<Vec<KeyPart>, Vec<Value>>,
}

impl Rows {
    /// The number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The row with integer key `id` (single-column integer keys).
    pub fn by_id(&self, id: i64) -> Option<&[Value]> {
        self.rows.get(&vec![KeyPart::Int(id)]).map(Vec::as_slice)
    }

    /// The value of `column` in the row with integer key `id`.
    pub fn value(&self, id: i64, column: &str) -> Option<&Value> {
        let i = self.columns.iter().position(|c| c == column)?;
        self.by_id(id)?.get(i)
    }

    /// The integer keys (single-column integer keys).
    pub fn ids(&self) -> Vec<i64> {
        self.rows
            .keys()
            .filter_map(|k| match k.as_slice() {
                [KeyPart::Int(i)] => Some(*i),
                _ => None,
            })
            .collect()
    }
}

/// A readable form of a value: `NULL`, `42`, `1.5`, `"text"`, `x'00ff'`;
/// long values are cut, with their length.
pub fn show_value(value: &Value) -> String {
    const MAX: usize = 60;
    match &value.kind {
        None => "<unset>".to_string(),
        Some(Kind::Null(_)) => "NULL".to_string(),
        Some(Kind::Integer(i)) => i.to_string(),
        Some(Kind::Real(f)) => format!("{f:?}"),
        Some(Kind::Text(t)) => {
            if t.chars().count() > MAX {
                let cut: String = t.chars().take(MAX).collect();
                format!("{cut:?}…({} chars)", t.chars().count())
            } else {
                format!("{t:?}")
            }
        }
        Some(Kind::Blob(b)) => {
            let hex: String = b.iter().take(MAX / 2).map(|x| format!("{x:02x}")).collect();
            if b.len() > MAX / 2 {
                format!("x'{hex}…'({} bytes)", b.len())
            } else {
                format!("x'{hex}'")
            }
        }
    }
}

fn show_row(row: &[Value]) -> String {
    let parts: Vec<String> = row.iter().map(show_value).collect();
    format!("({})", parts.join(", "))
}

/// The differences between the expected (`oracle`) and the actual (`replica`)
/// rows, one line each; empty when they are equal.
pub fn diff_rows(oracle: &Rows, replica: &Rows) -> String {
    let mut out = String::new();
    let mut shown = 0usize;
    const MAX_LINES: usize = 40;
    let mut line = |out: &mut String, text: String| {
        shown += 1;
        if shown <= MAX_LINES {
            out.push_str(&text);
            out.push('\n');
        }
    };
    for (key, row) in &oracle.rows {
        match replica.rows.get(key) {
            None => line(
                &mut out,
                format!("  missing from replica: {}", show_row(row)),
            ),
            Some(other) if other != row => {
                let mut cols = String::new();
                for (i, name) in oracle.columns.iter().enumerate() {
                    let (a, b) = (row.get(i), other.get(i));
                    if a != b {
                        let show = |v: Option<&Value>| v.map(show_value).unwrap_or_default();
                        let _ =
                            write!(cols, " {name}: postgres {} ≠ replica {};", show(a), show(b));
                    }
                }
                line(&mut out, format!("  differs at key {key:?}:{cols}"));
            }
            Some(_) => {}
        }
    }
    for (key, row) in &replica.rows {
        if !oracle.rows.contains_key(key) {
            line(
                &mut out,
                format!("  not in Postgres but in replica: {}", show_row(row)),
            );
        }
    }
    if shown > MAX_LINES {
        let _ = writeln!(out, "  … and {} more differences", shown - MAX_LINES);
    }
    if !out.is_empty() {
        out.insert_str(
            0,
            &format!(
                "{} rows in Postgres, {} in the replica; columns {:?}\n",
                oracle.len(),
                replica.len(),
                oracle.columns
            ),
        );
    }
    out
}

/// Quotes an SQL identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Evaluates shapes in Postgres. Connects anew for every query, so it keeps
/// working across Postgres restarts.
#[derive(Clone, Debug)]
pub struct Oracle {
    url: String,
}

impl Oracle {
    /// An oracle of the database at `url`.
    pub fn new(url: String) -> Oracle {
        Oracle { url }
    }

    async fn session(&self) -> anyhow::Result<tokio_postgres::Client> {
        let client = crate::testdb::connect(&self.url).await?;
        client
            .batch_execute(
                "SET DateStyle = ISO; SET TimeZone = 'UTC'; SET IntervalStyle = postgres; \
                 SET extra_float_digits = 3;",
            )
            .await?;
        Ok(client)
    }

    /// The current WAL write position (`pg_current_wal_lsn()`).
    pub async fn current_lsn(&self) -> anyhow::Result<u64> {
        let client = self.session().await?;
        let row = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?;
        crate::parse_lsn(row.get::<_, &str>(0))
    }

    /// The shape's rows as Postgres computes them, as wire values.
    pub async fn rows(&self, shape: &ShapeQuery) -> anyhow::Result<Rows> {
        let client = self.session().await?;
        rows_in(&client, shape).await
    }

    /// Several shapes' rows, read in one session from one snapshot
    /// (`REPEATABLE READ`), so they describe the same database state.
    pub async fn rows_many(&self, shapes: &[ShapeQuery]) -> anyhow::Result<Vec<Rows>> {
        let client = self.session().await?;
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let mut out = Vec::with_capacity(shapes.len());
        for shape in shapes {
            out.push(rows_in(&client, shape).await?);
        }
        client.batch_execute("COMMIT").await?;
        Ok(out)
    }

    /// The number of rows in `table`.
    pub async fn count(&self, table: &str) -> anyhow::Result<i64> {
        let client = self.session().await?;
        let row = client
            .query_one(&format!("SELECT count(*) FROM {}", quote_ident(table)), &[])
            .await?;
        Ok(row.get(0))
    }
}

/// The [`TypeKind`] of a type OID: built-in, or an enum, domain or array
/// resolved through `pg_type`.
async fn kind_of(client: &tokio_postgres::Client, oid: u32) -> anyhow::Result<TypeKind> {
    let mut oid = oid;
    let mut arrays = 0usize;
    for _ in 0..16 {
        if let Some(kind) = TypeKind::from_builtin_oid(oid) {
            return Ok(wrap_arrays(kind, arrays));
        }
        let row = client
            .query_one(
                "SELECT typtype::text, typbasetype, typelem, typcategory::text \
                 FROM pg_type WHERE oid = $1",
                &[&oid],
            )
            .await
            .with_context(|| format!("type oid {oid} not in pg_type"))?;
        let typtype: String = row.get(0);
        let base: u32 = row.get(1);
        let elem: u32 = row.get(2);
        let category: String = row.get(3);
        match (typtype.as_str(), category.as_str()) {
            ("e", _) => return Ok(wrap_arrays(TypeKind::Text, arrays)),
            ("d", _) => oid = base,
            (_, "A") if elem != 0 => {
                arrays += 1;
                oid = elem;
            }
            _ => bail!("type oid {oid} (typtype {typtype}) is not synced by Outpost"),
        }
    }
    bail!("type oid {oid} nests too deeply")
}

fn wrap_arrays(mut kind: TypeKind, arrays: usize) -> TypeKind {
    for _ in 0..arrays {
        kind = TypeKind::Array(Box::new(kind));
    }
    kind
}

/// A shape's rows read on `client`, as wire values.
async fn rows_in(client: &tokio_postgres::Client, shape: &ShapeQuery) -> anyhow::Result<Rows> {
    let mut sql = format!(
        "SELECT {} FROM {}",
        shape.select_list(),
        quote_ident(&shape.table)
    );
    if let Some(filter) = &shape.filter {
        let _ = write!(sql, " WHERE {filter}");
    }
    let statement = client
        .prepare(&sql)
        .await
        .with_context(|| format!("preparing the oracle query {sql}"))?;
    let mut kinds = Vec::new();
    for column in statement.columns() {
        let kind = kind_of(client, column.type_().oid())
            .await
            .with_context(|| format!("the type of column {}", column.name()))?;
        kinds.push(kind);
    }
    let mut rows = Vec::new();
    for message in client.simple_query(&sql).await? {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
            let mut values = Vec::with_capacity(kinds.len());
            for (i, kind) in kinds.iter().enumerate() {
                let value = match row.try_get(i)? {
                    None => outpost::pgtypes::null_value(),
                    Some(text) => to_value(kind, text).with_context(|| {
                        format!("converting column {} of {}", shape.columns[i], shape.table)
                    })?,
                };
                values.push(value);
            }
            rows.push(values);
        }
    }
    shape.rows_from(rows)
}
