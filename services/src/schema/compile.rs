//! Compiling checked shapes into bucket definitions (design decision 4).
//!
//! A filter is normalised into branches: its AND/OR skeleton around the key
//! conditions (`column = auth.claim`, `column IN (SELECT …)`, `column =
//! param.name`) is distributed into a disjunction, each branch holding its
//! keys and the AND of the rest, a predicate on the row alone. Kleene logic
//! is distributive, so a row makes the filter TRUE for a user exactly when
//! some branch's keys are among the user's and its predicate is TRUE.
//!
//! A branch's *row side* — its key columns, the hops each key takes to reach
//! its value, and its predicate — decides which rows a bucket holds; its
//! *user side* — the claim or membership each key is matched against —
//! decides who gets the bucket. Branches with the same row side share one
//! [`BucketDef`] (with several [`BucketDef::grants`]), so the rows of a list
//! that its owner sees and its members see are stored once. A row goes to
//! bucket `{shape}#{def}{key}` where `key` is its key values, so routing a
//! change costs a lookup per definition (plus one mirror read per hop), not
//! a test per user.
//!
//! Invariants: all shapes of one table select the same columns; a shape has
//! at most [`MAX_BRANCHES`] branches; a grant uses at most one membership;
//! every table a subquery reads is in [`CompiledSchema::tables`] (mirrored
//! and published) whether or not a shape sends it; [`CompiledSchema::version`]
//! changes whenever anything that decides bucket contents or the membership
//! index changes.

mod defs;
mod tables;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;

use super::catalog::{Catalog, CatalogTable};
use super::error::{Pos, SchemaError, SchemaErrors};
use super::eval::Node;
use super::file::{SchemaSource, ShapeSource};
use super::typecheck::{Checker, Cond};
use super::types::SqlType;
use crate::config::Limits;
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

/// A table the service replicates and mirrors: one that a shape syncs, or
/// one that a subquery reads.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncedTable {
    pub schema: String,
    pub name: String,
    /// The table's name on clients (and in the mirror): `name`, or
    /// `schema_name` outside `public`.
    pub client_name: String,
    /// Every live column, in `attnum` order (what a row from Postgres holds).
    pub columns: Vec<ColumnDef>,
    /// The columns sent to clients: indexes into `columns`, in table order.
    /// For a table no shape sends, the primary key.
    pub synced: Vec<usize>,
    /// The primary key: indexes into `columns`, in key order.
    pub primary_key: Vec<usize>,
    /// Whether a shape sends the table to clients (otherwise only subqueries
    /// read it).
    pub sent: bool,
}

/// A step of a key chain: the value so far is the primary key of a row of
/// `table`, whose `filter` must be TRUE; the value continues from its `next`
/// column.
#[derive(Clone, Debug, PartialEq)]
pub struct Hop {
    /// Index into [`CompiledSchema::tables`].
    pub table: usize,
    /// Index into that table's `columns`.
    pub next: usize,
    pub(crate) filter: Option<Node>,
}

/// One key of a bucket definition: the row's column, followed through
/// `hops` (none: the column's own value is the key).
#[derive(Clone, Debug, PartialEq)]
pub struct BucketParam {
    /// Index into the table's `columns`.
    pub column: usize,
    pub hops: Vec<Hop>,
}

/// Where a user's values for one key come from.
#[derive(Clone, Debug, PartialEq)]
pub enum KeySource {
    /// A token claim, by path: `auth.app.org` is `["app", "org"]`.
    Claim(Vec<String>),
    /// The keys a membership gives the user: index into
    /// [`CompiledSchema::memberships`].
    Membership(usize),
}

/// `x IN (SELECT select FROM table WHERE filter AND user_column = auth.claim)`:
/// the user's values are the `select` values of the `table` rows whose
/// `user_column` is the claim and whose `filter` is TRUE. Kept up to date in
/// the store's membership index.
#[derive(Clone, Debug, PartialEq)]
pub struct MembershipDef {
    /// Index into [`CompiledSchema::tables`].
    pub table: usize,
    pub select: usize,
    pub user_column: usize,
    pub claim: Vec<String>,
    pub(crate) filter: Option<Node>,
}

/// The rows of one row side of a shape's filter: they go to buckets named
/// `{shape}#{index}{key}`.
#[derive(Clone, Debug, PartialEq)]
pub struct BucketDef {
    pub params: Vec<BucketParam>,
    /// The rest of the branch; `None` is TRUE.
    pub(crate) filter: Option<Node>,
    /// The ways a user gets keys: for each grant, one source per param.
    pub grants: Vec<Vec<KeySource>>,
    /// `column = param.name` narrowing: `(index into params, name)`.
    pub client_params: Vec<(usize, String)>,
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

/// A column through which rows reach a parent row: the store keeps a link
/// index of it, so that a changed parent re-routes its children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HopSource {
    /// The child table (index into `tables`) and its column.
    pub table: usize,
    pub column: usize,
    /// The parent table, reached through its single-column primary key.
    pub parent: usize,
}

/// The schema files compiled against the database catalog.
#[derive(Clone, Debug)]
pub struct CompiledSchema {
    pub tables: Vec<SyncedTable>,
    pub shapes: Vec<ShapeDef>,
    pub memberships: Vec<MembershipDef>,
    /// A stable hash of everything that decides bucket contents and the
    /// membership index; when it changes, the store must be rebuilt from a
    /// new snapshot.
    pub version: String,
    /// What one client may ask of the service.
    pub limits: Limits,
    /// How predicates read each table's columns (indexed like `tables`).
    pub(crate) column_types: Vec<Vec<SqlType>>,
    /// For each table, the `(shape, definition)` pairs its rows are routed by.
    pub(crate) routes: Vec<Vec<(usize, usize)>>,
    /// For each table, the memberships its rows give.
    pub(crate) member_routes: Vec<Vec<usize>>,
    /// Every column rows reach a parent through.
    pub(crate) hop_sources: Vec<HopSource>,
    /// For each table, the hops that read its rows as parents (what its
    /// children's keys depend on): `(filter, next column)`, deduplicated.
    pub(crate) hop_targets: Vec<Vec<(Option<Node>, usize)>>,
    /// The longest chain of hops.
    pub(crate) max_hops: usize,
}

impl CompiledSchema {
    /// The same schema, served under `limits`.
    pub fn with_limits(mut self, limits: Limits) -> CompiledSchema {
        self.limits = limits;
        self
    }
}

pub(crate) struct Errors<'a> {
    source: &'a SchemaSource,
    list: Vec<SchemaError>,
}

impl Errors<'_> {
    fn at(&mut self, shape: &ShapeSource, pos: Pos, message: impl Into<String>) {
        let file = self.source.files[shape.file].clone();
        self.list.push(SchemaError::at(file, pos, message));
    }
}

/// The replicated form of a catalog table.
fn synced_table(table: &CatalogTable, synced: Vec<usize>, sent: bool) -> SyncedTable {
    let client_name = if table.schema == "public" {
        table.name.clone()
    } else {
        format!("{}_{}", table.schema, table.name)
    };
    SyncedTable {
        schema: table.schema.clone(),
        name: table.name.clone(),
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
        sent,
    }
}

impl SchemaSource {
    /// Every table the shapes read, `(schema, table)` in order of first use:
    /// the shapes' own tables, then the tables their subqueries read. The
    /// catalog given to [`compile`] must hold all of them.
    pub fn read_tables(&self) -> Vec<(String, String)> {
        let mut out = self.tables();
        for shape in &self.shapes {
            for t in shape.filter.iter().flat_map(|f| f.subquery_tables()) {
                if !out.contains(&t) {
                    out.push(t);
                }
            }
        }
        out
    }
}

/// A shape whose filter is checked, waiting for its definitions.
struct Checked<'s> {
    shape: &'s ShapeSource,
    table: usize,
    cond: Cond,
}

/// Checks the schema files against the catalog and compiles every shape.
pub fn compile(source: &SchemaSource, catalog: &Catalog) -> Result<CompiledSchema, SchemaErrors> {
    let mut errors = Errors {
        source,
        list: Vec::new(),
    };
    let mut tables = Vec::new();
    let mut column_types = Vec::new();
    let mut checked = Vec::new();
    for (schema, name) in source.tables() {
        let users: Vec<&ShapeSource> = source
            .shapes
            .iter()
            .filter(|s| s.table.value.0 == schema && s.table.value.1 == name)
            .collect();
        if users.is_empty() {
            continue;
        }
        let Some(table) = catalog.table(&schema, &name) else {
            for shape in &users {
                let message = catalog.missing_table(&schema, &name);
                errors.at(shape, shape.table.pos, message);
            }
            continue;
        };
        let Some(synced) = tables::check_table(table, &users, &mut errors) else {
            continue;
        };
        let index = tables.len();
        for shape in users {
            let mut checker = Checker::with_catalog(table, catalog);
            let cond = match &shape.filter {
                Some(e) => checker.filter(e),
                None => Some(Cond::And(Vec::new())),
            };
            for (pos, message) in std::mem::take(&mut checker.errors) {
                errors.at(shape, pos, message);
            }
            let Some(cond) = cond else { continue };
            let count = cond.branch_count();
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
            checked.push(Checked {
                shape,
                table: index,
                cond,
            });
        }
        tables.push(synced_table(table, synced, true));
        column_types.push(table.columns.iter().map(|c| c.sql_type.clone()).collect());
    }
    let mut builder = defs::Builder::new(catalog, tables, column_types);
    let mut shapes = Vec::new();
    for c in checked {
        if let Some(buckets) = builder.shape(c.shape, c.table, c.cond, &mut errors) {
            shapes.push(ShapeDef {
                name: c.shape.name.clone(),
                default: c.shape.default,
                table: c.table,
                buckets,
            });
        }
    }
    let defs::Built {
        tables,
        column_types,
        memberships,
        hop_sources,
    } = builder.finish();
    tables::check_client_names(&tables, source, &mut errors);
    if !errors.list.is_empty() {
        return Err(SchemaErrors::normalized(errors.list));
    }
    // Shapes keep the order of the files.
    let order: Vec<&str> = source.shapes.iter().map(|s| s.name.as_str()).collect();
    shapes.sort_by_key(|s| order.iter().position(|n| *n == s.name));
    let mut routes = vec![Vec::new(); tables.len()];
    let mut hop_targets: Vec<Vec<(Option<Node>, usize)>> = vec![Vec::new(); tables.len()];
    let mut max_hops = 0;
    for (s, shape) in shapes.iter().enumerate() {
        for (b, def) in shape.buckets.iter().enumerate() {
            routes[shape.table].push((s, b));
            for p in &def.params {
                max_hops = max_hops.max(p.hops.len());
                for hop in &p.hops {
                    let target = (hop.filter.clone(), hop.next);
                    if !hop_targets[hop.table].contains(&target) {
                        hop_targets[hop.table].push(target);
                    }
                }
            }
        }
    }
    let mut member_routes = vec![Vec::new(); tables.len()];
    for (m, def) in memberships.iter().enumerate() {
        member_routes[def.table].push(m);
    }
    let version = version(&tables, &shapes, &memberships, &column_types);
    Ok(CompiledSchema {
        tables,
        shapes,
        memberships,
        version,
        limits: Limits::default(),
        column_types,
        routes,
        member_routes,
        hop_sources,
        hop_targets,
        max_hops,
    })
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
fn version(
    tables: &[SyncedTable],
    shapes: &[ShapeDef],
    memberships: &[MembershipDef],
    column_types: &[Vec<SqlType>],
) -> String {
    let mut d = String::from("outpost-schema 2\n");
    for (t, types) in tables.iter().zip(column_types) {
        let _ = writeln!(d, "table {}.{} as {}", t.schema, t.name, t.client_name);
        for (c, ty) in t.columns.iter().zip(types) {
            let _ = writeln!(
                d,
                "  column {} {} {:?} {:?} {:?} {}",
                c.name, c.type_oid, c.type_name, c.kind, ty, c.nullable
            );
        }
        let _ = writeln!(
            d,
            "  synced {:?} key {:?} sent {}",
            t.synced, t.primary_key, t.sent
        );
    }
    for m in memberships {
        let _ = writeln!(d, "membership {m:?}");
    }
    for s in shapes {
        let _ = writeln!(d, "shape {} table {}", s.name, s.table);
        for b in &s.buckets {
            let _ = writeln!(
                d,
                "  bucket {:?} {:?} {:?} {:?}",
                b.params, b.filter, b.grants, b.client_params
            );
        }
    }
    format!("{:016x}", fnv1a(d.as_bytes()))
}
