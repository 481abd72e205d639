//! Compiling checked shapes into bucket definitions (design decision 4).
//!
//! A filter is normalised into branches: its AND/OR skeleton around the
//! `column = auth.claim` equalities is distributed into a disjunction, each
//! branch holding its parameter equalities and the AND of the rest, a
//! predicate on the row alone. Kleene logic is distributive, so a row makes
//! the filter TRUE for a user exactly when some branch's parameters equal the
//! user's claims and its predicate is TRUE. Each branch is one bucket
//! definition; a row goes to bucket `{shape}#{branch}{key}` where `key` is
//! its parameter values, so routing a change costs a lookup per branch, not a
//! test per user.
//!
//! Invariants: all shapes of one table select the same columns; a shape has
//! at most [`MAX_BRANCHES`] branches; [`CompiledSchema::version`] changes
//! whenever anything that decides bucket contents changes.

use std::fmt::Write as _;

use super::catalog::{Catalog, CatalogTable};
use super::error::{Pos, SchemaError, SchemaErrors, did_you_mean};
use super::eval::Node;
use super::file::{SchemaSource, ShapeSource};
use super::typecheck::{Checker, Cond};
use super::types::SqlType;
use crate::pgtypes::TypeKind;

/// The most bucket definitions one shape may compile to.
pub const MAX_BRANCHES: usize = 16;

/// A column of a synced table.
#[derive(Clone, Debug, PartialEq)]
pub struct ColumnDef {
    pub name: String,
    pub type_oid: u32,
    /// As Postgres names it (`format_type`), e.g. `character varying(80)`.
    pub type_name: String,
    /// How values are synced; `None` when the type is not synced (such a
    /// column is never in `SyncedTable::synced`).
    pub kind: Option<TypeKind>,
    pub nullable: bool,
}

/// A table that at least one shape syncs.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncedTable {
    pub schema: String,
    pub name: String,
    /// The table's name on clients: `name`, or `schema_name` outside `public`.
    pub client_name: String,
    /// Every live column, in `attnum` order (what a row from Postgres holds).
    pub columns: Vec<ColumnDef>,
    /// The columns sent to clients: indexes into `columns`, in table order.
    pub synced: Vec<usize>,
    /// The primary key: indexes into `columns`, in key order.
    pub primary_key: Vec<usize>,
}

/// An equality between a column and a token claim.
#[derive(Clone, Debug, PartialEq)]
pub struct BucketParam {
    /// Index into the table's `columns`.
    pub column: usize,
    /// The claim's path: `auth.app.org` is `["app", "org"]`.
    pub claim: Vec<String>,
}

/// One branch of a shape's filter: its rows go to buckets named
/// `{shape}#{index}{key}`.
#[derive(Clone, Debug, PartialEq)]
pub struct BucketDef {
    pub params: Vec<BucketParam>,
    /// The rest of the branch; `None` is TRUE.
    pub(crate) filter: Option<Node>,
}

/// A compiled shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ShapeDef {
    pub name: String,
    /// Part of the set a client gets when it names no shapes.
    pub default: bool,
    /// Index into [`CompiledSchema::tables`].
    pub table: usize,
    pub buckets: Vec<BucketDef>,
}

/// The schema files compiled against the database catalog.
#[derive(Clone, Debug)]
pub struct CompiledSchema {
    pub tables: Vec<SyncedTable>,
    pub shapes: Vec<ShapeDef>,
    /// A stable hash of everything that decides bucket contents; when it
    /// changes, the buckets must be rebuilt from a new snapshot.
    pub version: String,
    /// How predicates read each table's columns (indexed like `tables`).
    pub(crate) column_types: Vec<Vec<SqlType>>,
    /// For each table, the `(shape, branch)` pairs its rows are routed by.
    pub(crate) routes: Vec<Vec<(usize, usize)>>,
}

struct Errors<'a> {
    source: &'a SchemaSource,
    list: Vec<SchemaError>,
}

impl Errors<'_> {
    fn at(&mut self, shape: &ShapeSource, pos: Pos, message: impl Into<String>) {
        let file = self.source.files[shape.file].clone();
        self.list.push(SchemaError::at(file, pos, message));
    }
}

/// Checks the schema files against the catalog and compiles every shape.
pub fn compile(source: &SchemaSource, catalog: &Catalog) -> Result<CompiledSchema, SchemaErrors> {
    let mut errors = Errors {
        source,
        list: Vec::new(),
    };
    let mut tables = Vec::new();
    let mut column_types = Vec::new();
    let mut shapes = Vec::new();
    for (schema, name) in source.tables() {
        let users: Vec<&ShapeSource> = source
            .shapes
            .iter()
            .filter(|s| s.table.value.0 == schema && s.table.value.1 == name)
            .collect();
        let Some(table) = catalog.table(&schema, &name) else {
            for shape in &users {
                let message = missing_table(catalog, &schema, &name);
                errors.at(shape, shape.table.pos, message);
            }
            continue;
        };
        let Some(synced) = check_table(table, &users, &mut errors) else {
            continue;
        };
        let index = tables.len();
        for shape in users {
            let mut checker = Checker::new(table, catalog.default_collation.clone());
            let cond = match &shape.filter {
                Some(e) => checker.filter(e),
                None => Some(Cond::And(Vec::new())),
            };
            for (pos, message) in std::mem::take(&mut checker.errors) {
                errors.at(shape, pos, message);
            }
            let Some(cond) = cond else { continue };
            let count = branch_count(&cond);
            if count > MAX_BRANCHES {
                let pos = shape.filter.as_ref().map_or(shape.pos, |f| f.pos);
                errors.at(
                    shape,
                    pos,
                    format!(
                        "shape `{}` needs {count} bucket definitions (one per alternative of its \
                         OR-ed token claims); at most {MAX_BRANCHES} are allowed: split the shape",
                        shape.name
                    ),
                );
                continue;
            }
            shapes.push(ShapeDef {
                name: shape.name.clone(),
                default: shape.default,
                table: index,
                buckets: branches(cond),
            });
        }
        let client_name = if schema == "public" {
            name.clone()
        } else {
            format!("{schema}_{name}")
        };
        tables.push(SyncedTable {
            schema: schema.clone(),
            name: name.clone(),
            client_name,
            columns: table
                .columns
                .iter()
                .map(|c| ColumnDef {
                    name: c.name.clone(),
                    type_oid: c.type_oid,
                    type_name: c.type_name.clone(),
                    kind: c.kind.clone(),
                    nullable: !c.not_null,
                })
                .collect(),
            synced,
            primary_key: table.primary_key.clone(),
        });
        column_types.push(table.columns.iter().map(|c| c.sql_type.clone()).collect());
    }
    check_client_names(&tables, source, &mut errors);
    if !errors.list.is_empty() {
        return Err(SchemaErrors::normalized(errors.list));
    }
    // Shapes keep the order of the files.
    let order: Vec<&str> = source.shapes.iter().map(|s| s.name.as_str()).collect();
    shapes.sort_by_key(|s| order.iter().position(|n| *n == s.name));
    let mut routes = vec![Vec::new(); tables.len()];
    for (s, shape) in shapes.iter().enumerate() {
        for b in 0..shape.buckets.len() {
            routes[shape.table].push((s, b));
        }
    }
    let version = version(&tables, &shapes, &column_types);
    Ok(CompiledSchema {
        tables,
        shapes,
        version,
        column_types,
        routes,
    })
}

fn missing_table(catalog: &Catalog, schema: &str, name: &str) -> String {
    if let Some(other) = catalog
        .not_tables
        .iter()
        .find(|t| t.schema == schema && t.name == name)
    {
        return format!(
            "`{schema}.{name}` is a {}, not a table; only tables can be synced",
            other.what
        );
    }
    match catalog.schemas.get(schema) {
        Some(None) => format!("schema `{schema}` does not exist"),
        Some(Some(names)) => {
            let hint = did_you_mean(name, names.iter().map(String::as_str));
            let listing = if hint.is_empty() && !names.is_empty() && names.len() <= 12 {
                format!(" (tables in `{schema}`: {})", names.join(", "))
            } else if names.is_empty() {
                format!(" (schema `{schema}` has no tables)")
            } else {
                String::new()
            };
            format!("unknown table `{name}` in schema `{schema}`{hint}{listing}")
        }
        None => format!("unknown table `{schema}.{name}`"),
    }
}

/// Checks a table and the column lists of the shapes on it; returns the
/// synced columns.
fn check_table(
    table: &CatalogTable,
    users: &[&ShapeSource],
    errors: &mut Errors<'_>,
) -> Option<Vec<usize>> {
    let first = users.first()?;
    let mut ok = true;
    if table.primary_key.is_empty() {
        errors.at(
            first,
            first.table.pos,
            format!(
                "table `{}` has no primary key; Outpost identifies rows by their primary key",
                table.name
            ),
        );
        ok = false;
    }
    for &k in &table.primary_key {
        let col = &table.columns[k];
        if col.kind.is_none() {
            errors.at(
                first,
                first.table.pos,
                format!(
                    "primary key column `{}` of `{}` has type {}, which Outpost cannot sync",
                    col.name, table.name, col.type_name
                ),
            );
            ok = false;
        }
    }
    let mut selections = Vec::with_capacity(users.len());
    for shape in users {
        let mut picked: Vec<usize> = match &shape.columns {
            None => (0..table.columns.len())
                .filter(|&i| table.columns[i].kind.is_some())
                .collect(),
            Some(list) => {
                let mut picked = Vec::new();
                for name in &list.value {
                    let Some(i) = table.columns.iter().position(|c| c.name == name.value) else {
                        let hint = did_you_mean(
                            &name.value,
                            table.columns.iter().map(|c| c.name.as_str()),
                        );
                        errors.at(
                            shape,
                            name.pos,
                            format!(
                                "unknown column `{}` in table `{}`{hint}",
                                name.value, table.name
                            ),
                        );
                        ok = false;
                        continue;
                    };
                    let col = &table.columns[i];
                    if col.kind.is_none() {
                        errors.at(
                            shape,
                            name.pos,
                            format!(
                                "column `{}` has type {}, which Outpost cannot sync; leave it out \
                                 of `columns = [...]`",
                                col.name, col.type_name
                            ),
                        );
                        ok = false;
                    } else if picked.contains(&i) {
                        errors.at(
                            shape,
                            name.pos,
                            format!("column `{}` is listed twice", col.name),
                        );
                        ok = false;
                    } else {
                        picked.push(i);
                    }
                }
                picked
            }
        };
        for &k in &table.primary_key {
            if !picked.contains(&k) {
                picked.push(k);
            }
        }
        picked.sort_unstable();
        selections.push(picked);
    }
    let names = |cols: &[usize]| {
        cols.iter()
            .map(|&i| table.columns[i].name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (shape, picked) in users.iter().zip(&selections).skip(1) {
        if *picked != selections[0] {
            let pos = shape.columns.as_ref().map_or(shape.pos, |c| c.pos);
            errors.at(
                shape,
                pos,
                format!(
                    "shapes `{}` and `{}` both sync table `{}` but select different columns \
                     (`{}`: {}; `{}`: {}); all shapes of one table must select the same columns",
                    first.name,
                    shape.name,
                    table.name,
                    first.name,
                    names(&selections[0]),
                    shape.name,
                    names(picked)
                ),
            );
            ok = false;
        }
    }
    ok.then(|| selections.swap_remove(0))
}

/// Two tables must not meet under one client name (`a.b_c` and `a_b.c`).
fn check_client_names(tables: &[SyncedTable], source: &SchemaSource, errors: &mut Errors<'_>) {
    for (i, t) in tables.iter().enumerate() {
        if let Some(other) = tables[..i].iter().find(|o| o.client_name == t.client_name)
            && let Some(shape) = source
                .shapes
                .iter()
                .find(|s| s.table.value == (t.schema.clone(), t.name.clone()))
        {
            errors.at(
                shape,
                shape.table.pos,
                format!(
                    "tables `{}.{}` and `{}.{}` would both be `{}` on clients",
                    other.schema, other.name, t.schema, t.name, t.client_name
                ),
            );
        }
    }
}

/// The number of branches `cond` distributes into (saturating).
fn branch_count(cond: &Cond) -> usize {
    match cond {
        Cond::And(items) => items
            .iter()
            .fold(1usize, |n, c| n.saturating_mul(branch_count(c))),
        Cond::Or(items) => items
            .iter()
            .fold(0usize, |n, c| n.saturating_add(branch_count(c))),
        Cond::Param { .. } | Cond::Pred(_) => 1,
    }
}

/// One branch under construction.
#[derive(Clone, Default)]
struct Branch {
    params: Vec<BucketParam>,
    preds: Vec<Node>,
}

fn distribute(cond: Cond) -> Vec<Branch> {
    match cond {
        Cond::Param { column, claim } => vec![Branch {
            params: vec![BucketParam { column, claim }],
            preds: Vec::new(),
        }],
        Cond::Pred(node) => vec![Branch {
            params: Vec::new(),
            preds: vec![node],
        }],
        Cond::Or(items) => items.into_iter().flat_map(distribute).collect(),
        Cond::And(items) => {
            let mut acc = vec![Branch::default()];
            for item in items {
                let alternatives = distribute(item);
                let mut next = Vec::with_capacity(acc.len() * alternatives.len());
                for left in &acc {
                    for right in &alternatives {
                        let mut b = left.clone();
                        b.params.extend(right.params.iter().cloned());
                        b.preds.extend(right.preds.iter().cloned());
                        next.push(b);
                    }
                }
                acc = next;
            }
            acc
        }
    }
}

fn branches(cond: Cond) -> Vec<BucketDef> {
    distribute(cond)
        .into_iter()
        .map(|mut b| BucketDef {
            params: b.params,
            filter: match b.preds.len() {
                0 => None,
                1 => b.preds.pop(),
                _ => Some(Node::And(b.preds)),
            },
        })
        .collect()
}

/// FNV-1a, 64 bits: stable across builds and platforms.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Hashes a canonical description of what decides bucket contents: the
/// tables' columns and types, the synced columns, and every compiled bucket
/// definition (not the files' text, so comments and layout do not count).
fn version(tables: &[SyncedTable], shapes: &[ShapeDef], column_types: &[Vec<SqlType>]) -> String {
    let mut d = String::from("outpost-schema 1\n");
    for (t, types) in tables.iter().zip(column_types) {
        let _ = writeln!(d, "table {}.{} as {}", t.schema, t.name, t.client_name);
        for (c, ty) in t.columns.iter().zip(types) {
            let _ = writeln!(
                d,
                "  column {} {} {:?} {:?} {:?} {}",
                c.name, c.type_oid, c.type_name, c.kind, ty, c.nullable
            );
        }
        let _ = writeln!(d, "  synced {:?} key {:?}", t.synced, t.primary_key);
    }
    for s in shapes {
        let _ = writeln!(d, "shape {} table {}", s.name, s.table);
        for b in &s.buckets {
            let _ = writeln!(d, "  bucket {:?} {:?}", b.params, b.filter);
        }
    }
    format!("{:016x}", fnv1a(d.as_bytes()))
}
