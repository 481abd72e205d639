//! `column IN (SELECT x FROM t WHERE …)`: checks a subquery against its own
//! table and turns each alternative of its `WHERE` into a [`Chain`].
//!
//! An alternative must hold exactly one key condition:
//! - `t.y = auth.claim` — a *membership*: the user's keys are the `x` of the
//!   `t` rows whose `y` is the claim and whose other conditions are TRUE;
//! - `t.z IN (SELECT …)` — a *hop*: `x` must be `t`'s single-column primary
//!   key, so a row reaches exactly one `t` row, whose other conditions must be
//!   TRUE and whose `z` continues the chain.
//!
//! Invariants: a chain has at most [`MAX_HOPS`] hops and always ends in a
//! membership; the two sides of every `IN` compare keys of one class, so that
//! equal values have equal key text (and, for hops, equal primary-key text
//! in the mirror).

use super::{Branch, Checker, Cond};
use crate::schema::MAX_BRANCHES;
use crate::schema::catalog::CatalogTable;
use crate::schema::error::Pos;
use crate::schema::eval::Node;
use crate::schema::expr::{Expr, ExprKind, Subquery};
use crate::schema::types::{SqlType, TextKind};

/// The most hops a chain may take before its membership.
pub(crate) const MAX_HOPS: usize = 4;

/// A hop: the row's column holds the primary key of a row of `table`, whose
/// `filter` must be TRUE; the chain continues from that row's `next` column.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HopSpec {
    /// `(schema, table)`.
    pub table: (String, String),
    /// Where the table is named.
    pub pos: Pos,
    pub next: usize,
    pub filter: Option<Node>,
}

/// A membership: the user's keys are the `select` values of the `table` rows
/// whose `user_column` equals the claim and whose `filter` is TRUE.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct MemberSpec {
    /// `(schema, table)`.
    pub table: (String, String),
    /// Where the table is named.
    pub pos: Pos,
    pub select: usize,
    pub user_column: usize,
    pub claim: Vec<String>,
    pub filter: Option<Node>,
}

/// One alternative of `column IN (SELECT …)`: hops from the row to the
/// membership whose selected column the last value is matched against.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Chain {
    pub hops: Vec<HopSpec>,
    pub member: MemberSpec,
}

/// Types whose equal values have equal canonical key text.
#[derive(Clone, Debug, PartialEq, Eq)]
enum KeyClass {
    Int,
    Numeric,
    Text,
    Uuid,
    Bool,
    Date,
    Timestamp,
    Timestamptz,
    Enum(u32),
}

fn key_class(ty: &SqlType) -> Option<KeyClass> {
    Some(match ty {
        SqlType::Int(_) => KeyClass::Int,
        SqlType::Numeric => KeyClass::Numeric,
        SqlType::Text(_) => KeyClass::Text,
        SqlType::Uuid => KeyClass::Uuid,
        SqlType::Bool => KeyClass::Bool,
        SqlType::Date => KeyClass::Date,
        SqlType::Timestamp => KeyClass::Timestamp,
        SqlType::Timestamptz => KeyClass::Timestamptz,
        SqlType::Enum(e) => KeyClass::Enum(e.oid),
        _ => return None,
    })
}

/// Whether Postgres prints equal values of these types as the same text (a
/// hop looks the parent up by that text): not so for numerics (`1.50` and
/// `1.5`) nor for `character(n)` (padding).
fn prints_canonically(ty: &SqlType) -> bool {
    !matches!(ty, SqlType::Numeric | SqlType::Text(TextKind::Bpchar))
}

impl<'a> Checker<'a> {
    fn outer_names(&self) -> Vec<String> {
        let mut names = self.outer.clone();
        names.push(
            self.alias
                .clone()
                .unwrap_or_else(|| self.table.name.clone()),
        );
        names
    }

    /// Checks `outer IN (query)` and returns its alternatives, OR-ed.
    pub(super) fn subquery(&mut self, outer: &Expr, query: &Subquery, pos: Pos) -> Option<Cond> {
        if !matches!(outer.kind, ExprKind::Column { .. }) {
            self.error(
                outer.pos,
                format!(
                    "the left side of `IN (SELECT …)` must be a column of `{}`",
                    self.table.name
                ),
            );
            return None;
        }
        let column = self.key_column(outer, "a subquery's column");
        if self.depth > MAX_HOPS {
            self.error(
                pos,
                format!(
                    "subqueries nest too deep: a chain may take at most {MAX_HOPS} hops before \
                     its membership (`… = auth.<claim>`)"
                ),
            );
            return None;
        }
        let Some(catalog) = self.catalog else {
            self.error(pos, "a subquery is not supported here");
            return None;
        };
        let schema = query.schema.clone().unwrap_or_else(|| "public".into());
        let Some(inner) = catalog.table(&schema, &query.table) else {
            let message = catalog.missing_table(&schema, &query.table);
            self.error(query.table_pos, message);
            return None;
        };
        let mut sub = Checker {
            table: inner,
            default_collation: self.default_collation.clone(),
            errors: Vec::new(),
            catalog: Some(catalog),
            depth: self.depth + 1,
            alias: query.alias.clone(),
            outer: self.outer_names(),
        };
        let selected = sub.selected(&query.column);
        let cond = match &query.filter {
            Some(w) => sub.filter(w),
            None => Some(Cond::And(Vec::new())),
        };
        self.errors.append(&mut sub.errors);
        let (column, selected, cond) = (column?, selected?, cond?);
        let count = cond.branch_count();
        if count > MAX_BRANCHES {
            self.error(
                pos,
                format!(
                    "this subquery's WHERE distributes into {count} alternatives; at most \
                     {MAX_BRANCHES} are allowed"
                ),
            );
            return None;
        }
        let mut alternatives = Vec::with_capacity(count);
        for branch in cond.into_branches() {
            let chain = self.alternative(column, inner, selected, branch, query, pos)?;
            alternatives.push(Cond::Member { column, chain });
        }
        Some(Cond::Or(alternatives))
    }

    /// The column a subquery selects.
    fn selected(&mut self, e: &Expr) -> Option<usize> {
        if !matches!(e.kind, ExprKind::Column { .. }) {
            self.error(
                e.pos,
                format!(
                    "a subquery must select one column of `{}`, as it is (no expressions)",
                    self.table.name
                ),
            );
            return None;
        }
        self.key_column(e, "the outer column")
    }

    /// Turns one alternative of a subquery's `WHERE` into a chain.
    fn alternative(
        &mut self,
        column: usize,
        inner: &CatalogTable,
        selected: usize,
        mut branch: Branch,
        query: &Subquery,
        pos: Pos,
    ) -> Option<Chain> {
        let table = (inner.schema.clone(), inner.name.clone());
        let outer_col = &self.table.columns[column];
        let inner_col = &inner.columns[selected];
        let filter = branch.filter();
        match (branch.claims.as_slice(), branch.members.as_slice()) {
            ([(user_column, claim)], []) => {
                if key_class(&outer_col.sql_type) != key_class(&inner_col.sql_type) {
                    self.error(
                        pos,
                        format!(
                            "`{}` ({}) cannot be matched against `{}.{}` ({}): a subquery's \
                             column must have a type of the same kind as the column it is \
                             compared with",
                            outer_col.name,
                            outer_col.type_name,
                            inner.name,
                            inner_col.name,
                            inner_col.type_name
                        ),
                    );
                    return None;
                }
                Some(Chain {
                    hops: Vec::new(),
                    member: MemberSpec {
                        table,
                        pos: query.table_pos,
                        select: selected,
                        user_column: *user_column,
                        claim: claim.clone(),
                        filter,
                    },
                })
            }
            ([], [(next, chain)]) => {
                if inner.primary_key != [selected] {
                    let key = match inner.primary_key.as_slice() {
                        [k] => format!("its primary key `{}`", inner.columns[*k].name),
                        [] => "a primary key, which it lacks".to_string(),
                        _ => "a single-column primary key".to_string(),
                    };
                    self.error(
                        pos,
                        format!(
                            "this subquery selects `{}` from `{}` and continues through another \
                             subquery, so it must select {key}: a row reaches one `{}` row \
                             through it (chain the subqueries through primary keys, or end this \
                             one with `… = auth.<claim>`)",
                            inner_col.name, inner.name, inner.name
                        ),
                    );
                    return None;
                }
                let same = key_class(&outer_col.sql_type) == key_class(&inner_col.sql_type);
                if !same
                    || !prints_canonically(&outer_col.sql_type)
                    || !prints_canonically(&inner_col.sql_type)
                {
                    self.error(
                        pos,
                        format!(
                            "`{}` ({}) cannot reach `{}.{}` ({}): a column that leads to a \
                             primary key must have the same kind of type, one of integer, \
                             text, uuid, boolean, date, timestamp or enum",
                            outer_col.name,
                            outer_col.type_name,
                            inner.name,
                            inner_col.name,
                            inner_col.type_name
                        ),
                    );
                    return None;
                }
                let mut hops = vec![HopSpec {
                    table,
                    pos: query.table_pos,
                    next: *next,
                    filter,
                }];
                hops.extend(chain.hops.iter().cloned());
                Some(Chain {
                    hops,
                    member: chain.member.clone(),
                })
            }
            ([], []) => {
                self.error(
                    pos,
                    format!(
                        "this subquery on `{}` names no user: it must end in `… = auth.<claim>` \
                         (e.g. `user_id = auth.sub`), directly or through further subqueries; \
                         a condition that holds for everyone belongs in the row's own clause",
                        query.table
                    ),
                );
                None
            }
            _ => {
                self.error(
                    pos,
                    format!(
                        "each alternative of this subquery on `{}` must hold exactly one of \
                         `column = auth.<claim>` or `column IN (SELECT …)`; split it into \
                         alternatives joined with OR",
                        query.table
                    ),
                );
                None
            }
        }
    }
}
