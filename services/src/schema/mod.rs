//! Schema files: which rows and columns of which tables each user gets,
//! checked against the live database and compiled into bucket definitions.
//!
//! ```text
//! *.toml ──load_dir──▶ SchemaSource ──compile(+ Catalog::load)──▶ CompiledSchema
//!  (syntax, keys,       (shapes with      (names, types, collations    (tables, shapes → buckets,
//!   WHERE parse)         parsed filters)    checked; filters split       route(), user_buckets(),
//!                                           into bucket definitions)     version)
//! ```
//!
//! # The schema file format
//!
//! The schema directory holds `*.toml` files, read in name order. Each
//! declares shapes: a shape is the part of one table a user gets.
//!
//! ```toml
//! [shapes.my_todos]
//! table = "todos"                            # "table" (schema public) or "schema.table"
//! columns = ["id", "title", "done", "owner"] # optional; default: every column of a
//!                                            # type Outpost syncs. The primary key is
//!                                            # always included.
//! where = "owner = auth.sub AND NOT archived" # optional SQL boolean expression
//! default = true                             # optional (default true): part of the set a
//!                                            # client gets when it names no shapes
//! ```
//!
//! - Shape names match `[a-z_][a-z0-9_]*` and are unique across all files.
//! - Unknown keys are errors; the top-level tables are `shapes` and
//!   `tables` (write rules, see [`compile_rules`]).
//! - All shapes of one table must select the same columns.
//! - The table needs a primary key.
//!
//! # The `where` language
//!
//! A subset of Postgres SQL, with Postgres semantics (three-valued logic: a
//! row is in a shape only when the clause is TRUE):
//!
//! - columns of the shape's table (optionally `table.column`); unquoted names
//!   fold to lower case, `"Quoted"` names do not;
//! - literals: integers, decimals, `'strings'`, `TRUE`, `FALSE`, `NULL`, and
//!   typed literals such as `DATE '2024-01-01'`;
//! - `auth.<claim>`: a claim of the user's token; `auth.app.org` is the
//!   nested claim `{"app": {"org": …}}`; claim names are case-sensitive;
//! - `= <> != < <= > >=`, `[NOT] IN (…)`, `[NOT] BETWEEN … AND …`,
//!   `IS [NOT] NULL`, `IS [NOT] TRUE|FALSE|UNKNOWN`, `IS [NOT] DISTINCT FROM`,
//!   `AND`, `OR`, `NOT`, parentheses;
//! - `[NOT] LIKE` / `ILIKE` with a literal pattern (`%`, `_`, `\` escapes,
//!   `ESCAPE 'c'`);
//! - casts `x::type` and `CAST(x AS type)` to boolean, smallint, integer,
//!   bigint, real, double precision, numeric, text, varchar, uuid,
//!   timestamptz, timestamp, date, or an enum type of the table.
//!
//! Types compare as in Postgres: an untyped string literal takes the type of
//! the other side (`created_at > '2024-01-01'` compares timestamps, and
//! `'abc' = int_col` is an error); integers, numerics and floats compare
//! with each other (floats: `NaN = NaN`, NaN sorts last, `-0 = 0`); text,
//! uuid, dates and timestamps (by instant; literals read in UTC), booleans
//! and enums (by their declared order) compare within their kind. `<`, `>`
//! and BETWEEN on text need a column collation of `C` or `POSIX` (Outpost
//! compares text bytewise); other types accept only `IS [NOT] NULL`.
//! Date/time literals must be ISO 8601 (`2024-01-01`, `2024-01-01 10:00`,
//! `2024-01-01T10:00:00+02`); `now`/`today` are refused.
//!
//! # Token claims and buckets
//!
//! A token claim may only appear as `column = auth.claim` (either way
//! round), joined to the rest of the clause with AND and OR. The clause is
//! distributed into at most 16 branches, each a set of such equalities plus a
//! condition on the row alone. Each branch is a bucket definition: a row is
//! in bucket `{shape}#{branch}[{values}]` when its condition is TRUE, where
//! `values` are its parameter columns (`my_todos#0["alice"]`; without
//! parameters `public_lists#0[]`); a user gets, per branch, the bucket its
//! claims name. A NULL column or a missing claim means no bucket.
//!
//! ```toml
//! [shapes.visible_todos]
//! table = "todos"
//! where = "(owner = auth.sub OR assignee = auth.sub) AND NOT archived"
//! # two buckets: visible_todos#0[owner], visible_todos#1[assignee]
//! ```
//!
//! # Membership subqueries
//!
//! `column IN (SELECT x FROM t WHERE … AND t.y = auth.claim)` is a
//! *membership*: the row's bucket key is its `column` value, and a user's
//! keys are the `x` values of the `t` rows whose `y` is the claim (and whose
//! other conditions are TRUE), kept in an index as `t` changes. A subquery
//! whose WHERE holds `t.z IN (SELECT …)` instead is a *hop* through the
//! parent table `t`: `x` must be `t`'s single-column primary key, and the key
//! continues from the parent row's `z` (at most 4 hops, ending in a
//! membership). So the comments of the todos of the lists shared with a user
//! are bucketed by list, and a user holds one bucket per visible list:
//!
//! ```toml
//! [shapes.shared_comments]
//! table = "comments"
//! where = """todo_id IN (SELECT id FROM todos WHERE list_id IN
//!              (SELECT list_id FROM list_members WHERE user_id = auth.sub))"""
//! ```
//!
//! When a membership row appears or goes, open streams of that user receive
//! the newly visible buckets whole, or a reset of the buckets that left, at
//! one checkpoint. Correlated subqueries, hops through a non-key column,
//! aggregates, `NOT IN (SELECT …)`, `EXISTS`, joins and a chain that never
//! reaches `= auth.claim` are refused at start-up with what to write instead.
//!
//! # Client parameters
//!
//! `column = param.name` lets a client ask for part of what its token allows
//! (`ShapeRequest.params`): allowed only on a column the token also keys in
//! that branch, so a parameter narrows and never widens. Such a shape must be
//! `default = false`.

mod catalog;
mod compile;
pub(crate) mod datetime;
mod datum;
mod error;
mod eval;
mod expr;
mod file;
mod route;
mod rules;
mod typecheck;
mod types;

#[cfg(test)]
mod tests;

pub use catalog::Catalog;
pub use compile::{
    BucketDef, BucketParam, ColumnDef, CompiledSchema, Hop, KeySource, MAX_BRANCHES, MembershipDef,
    ShapeDef, SyncedTable, compile,
};
pub use error::{CatalogError, SchemaError, SchemaErrors, ShapeRequestError};
pub use file::{SchemaSource, load_dir};
pub use route::RouteMemo;
pub use rules::{
    Denied, MergeKind, ResolveError, TableFunction, TableRules, WriteKind, WriteRules,
    compile_rules, resolve_functions,
};
