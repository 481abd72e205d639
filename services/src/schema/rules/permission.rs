//! Write permissions: predicates of the shape language over the row before
//! a write (`old.<column>`), the row after it (`new.<column>`) and the
//! writer's token (`auth.<claim>`).
//!
//! The two rows are checked and evaluated as one virtual row of 2×N
//! columns, `old.c` at index `i` and `new.c` at `N + i`, so the shape
//! language's type checker and evaluator apply unchanged. A permission is
//! evaluated per write, not compiled into buckets, so a claim may be used
//! anywhere a value may: before evaluation each `auth.<claim>` becomes an
//! untyped literal holding the claim's text, which takes the type of what it
//! meets, as a string literal does in Postgres.
//!
//! Invariants: a write is allowed only when the predicate is TRUE (NULL and
//! evaluation errors deny it); a claim that is missing, null, an array or an
//! object reads as NULL; a claim whose text does not fit the compared type
//! denies the write.

use std::sync::Arc;

use super::parse::RuleSource;
use super::{TableRules, WriteKind};
use crate::auth::Claims;
use crate::schema::catalog::{CatalogColumn, CatalogTable};
use crate::schema::error::Pos;
use crate::schema::eval::RowValues;
use crate::schema::expr::{Expr, ExprKind};
use crate::schema::typecheck::{Checker, Cond};
use crate::schema::types::{Collation, SqlType};

/// A write the rules refuse, with the reason for people.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// A checked permission.
#[derive(Clone, Debug)]
pub(super) struct Permission {
    kind: WriteKind,
    /// Column references renamed to the virtual row's `old.c`/`new.c`;
    /// claims still in place.
    expr: Expr,
    /// As written, for messages.
    text: String,
}

/// The virtual row of a table: its columns as `old.c`, then as `new.c`.
pub(super) fn virtual_row(table: &CatalogTable) -> (CatalogTable, Vec<SqlType>) {
    let columns: Vec<CatalogColumn> = ["old", "new"]
        .iter()
        .flat_map(|prefix| {
            table.columns.iter().map(move |c| CatalogColumn {
                name: format!("{prefix}.{}", c.name),
                ..c.clone()
            })
        })
        .collect();
    let types = columns.iter().map(|c| c.sql_type.clone()).collect();
    let row = CatalogTable {
        schema: table.schema.clone(),
        name: table.name.clone(),
        columns,
        primary_key: Vec::new(),
    };
    (row, types)
}

/// The shape checker's wording, adapted to write rules.
fn reword(message: String) -> String {
    message
        .replace("a shape filter", "a write rule")
        .replace("in a shape filter", "in a write rule")
}

/// Replaces every claim by `value(path)`.
fn substitute_claims(expr: &mut Expr, value: &dyn Fn(&[String]) -> ExprKind) {
    expr.visit_mut(&mut |e| {
        if let ExprKind::Claim(path) = &e.kind {
            e.kind = value(path);
        }
    });
}

fn claim_literal(claims: &Claims, path: &[String]) -> ExprKind {
    use serde_json::Value as J;
    match claims.get(&path.join(".")) {
        Some(J::String(s)) => ExprKind::Str(s.clone()),
        Some(J::Number(n)) => ExprKind::Str(n.to_string()),
        Some(J::Bool(b)) => ExprKind::Str(b.to_string()),
        _ => ExprKind::Null,
    }
}

impl Permission {
    /// Renames `old.c`/`new.c` to the virtual row's columns and type-checks
    /// the predicate (claims as untyped NULLs).
    pub(super) fn compile(
        rule: &RuleSource,
        row: &CatalogTable,
        default_collation: Option<Arc<Collation>>,
    ) -> Result<Permission, Vec<(Pos, String)>> {
        let mut errors = Vec::new();
        rule.expr.visit_all(&mut |e| match &e.kind {
            ExprKind::ClientParam(name) => errors.push((
                e.pos,
                format!(
                    "`param.{name}` is not supported in a write rule: request parameters \
                     belong to shapes; use `old.<column>`, `new.<column>` and `auth.<claim>`"
                ),
            )),
            ExprKind::InSubquery { .. } => errors.push((
                e.pos,
                "a subquery is not supported in a write rule: it is evaluated on the written \
                 row alone; check membership in the table's function instead"
                    .to_string(),
            )),
            _ => {}
        });
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut expr = rule.expr.clone();
        let kind = rule.kind;
        expr.visit_mut(&mut |e| {
            let ExprKind::Column { qualifier, name } = &e.kind else {
                return;
            };
            let written = if qualifier.is_empty() {
                name.clone()
            } else {
                format!("{}.{name}", qualifier.join("."))
            };
            match qualifier.as_slice() {
                [q] if q == "old" && kind == WriteKind::Insert => errors.push((
                    e.pos,
                    format!(
                        "an insert has no old row: `{written}` is always NULL here; \
                         use `new.{name}`"
                    ),
                )),
                [q] if q == "new" && kind == WriteKind::Delete => errors.push((
                    e.pos,
                    format!(
                        "a delete has no new row: `{written}` is always NULL here; \
                         use `old.{name}`"
                    ),
                )),
                [q] if q == "old" || q == "new" => {
                    e.kind = ExprKind::Column {
                        qualifier: Vec::new(),
                        name: format!("{q}.{name}"),
                    };
                }
                _ => errors.push((
                    e.pos,
                    format!(
                        "`{written}`: a write rule names columns as `old.{name}` (the row \
                         before the write) or `new.{name}` (the row after it)"
                    ),
                )),
            }
        });
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut probe = expr.clone();
        substitute_claims(&mut probe, &|_| ExprKind::Null);
        let mut checker = Checker::new(row, default_collation);
        let cond = checker.filter(&probe);
        let errors: Vec<(Pos, String)> = std::mem::take(&mut checker.errors)
            .into_iter()
            .map(|(pos, message)| (pos, reword(message)))
            .collect();
        match cond {
            Some(Cond::Pred(_)) if errors.is_empty() => Ok(Permission {
                kind,
                expr,
                text: rule.text.clone(),
            }),
            _ if !errors.is_empty() => Err(errors),
            _ => Err(vec![(
                rule.pos,
                "this write rule cannot be evaluated on a row".to_string(),
            )]),
        }
    }
}

impl TableRules {
    /// Whether the writer may make this write: `old` is the row before it
    /// (`None` for an insert), `new` the row after it (`None` for a
    /// delete), each the Postgres text form of every column in catalog
    /// order (`None` = NULL).
    pub fn check_permission(
        &self,
        kind: WriteKind,
        old: Option<&[Option<String>]>,
        new: Option<&[Option<String>]>,
        claims: &Claims,
    ) -> Result<(), Denied> {
        let Some(permission) = self.permission(kind) else {
            return Err(Denied(format!(
                "table `{}` accepts no {kind}s (its write rules declare no `{kind}` rule)",
                self.name
            )));
        };
        debug_assert_eq!(permission.kind, kind);
        let mut expr = permission.expr.clone();
        substitute_claims(&mut expr, &|path| claim_literal(claims, path));
        let mut checker = Checker::new(&self.row, self.default_collation.clone());
        let cond = checker.filter(&expr);
        let refused = |why: String| {
            Denied(format!(
                "the {kind} rule of `{}` (`{}`) {why}",
                self.name, permission.text
            ))
        };
        let node = match cond {
            Some(Cond::Pred(node)) if checker.errors.is_empty() => node,
            _ => {
                let why = checker
                    .errors
                    .into_iter()
                    .map(|(_, m)| reword(m))
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(refused(format!(
                    "does not apply to this token's claims: {why}"
                )));
            }
        };
        let width = self.row_types.len() / 2;
        let mut text: Vec<Option<&str>> = Vec::with_capacity(width * 2);
        for side in [old, new] {
            for i in 0..width {
                text.push(side.and_then(|r| r.get(i)).and_then(|v| v.as_deref()));
            }
        }
        let values = RowValues::new(&text, &self.row_types);
        match node.truth(&values) {
            Ok(Some(true)) => Ok(()),
            Ok(Some(false)) => Err(refused("is false for this row".into())),
            Ok(None) => Err(refused("is NULL (not true) for this row".into())),
            Err(e) => Err(refused(format!("cannot be evaluated for this row: {e}"))),
        }
    }
}
