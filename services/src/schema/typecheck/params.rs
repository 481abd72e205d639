//! The AND/OR skeleton of a filter around what keys it: `column =
//! auth.claim` equalities become parameters, `column = param.name`
//! equalities request parameters, `column IN (SELECT …)` membership chains;
//! every other use of a claim, a request parameter or a subquery is refused
//! with the reason and a rewrite.

use super::{Checker, Cond};
use crate::schema::error::Pos;
use crate::schema::eval::Node;
use crate::schema::expr::{CmpOp, Expr, ExprKind};

impl Checker<'_> {
    /// Checks a whole filter.
    pub(crate) fn filter(&mut self, e: &Expr) -> Option<Cond> {
        if !e.is_keyed() {
            return self.boolean(e, "WHERE").map(Cond::Pred);
        }
        match &e.kind {
            ExprKind::And(a, b) => {
                let (a, b) = (self.filter(a), self.filter(b));
                Some(Cond::And(vec![a?, b?]))
            }
            ExprKind::Or(a, b) => {
                let (a, b) = (self.filter(a), self.filter(b));
                Some(Cond::Or(vec![a?, b?]))
            }
            ExprKind::InSubquery { expr, query } => self.subquery(expr, query, e.pos),
            ExprKind::Cmp(CmpOp::Eq, a, b) => match (&a.kind, &b.kind) {
                (ExprKind::Claim(path), ExprKind::Column { .. })
                | (ExprKind::Column { .. }, ExprKind::Claim(path)) => {
                    let column = if matches!(a.kind, ExprKind::Column { .. }) {
                        a
                    } else {
                        b
                    };
                    let index = self.key_column(column, "a token claim")?;
                    Some(Cond::Param {
                        column: index,
                        claim: path.clone(),
                    })
                }
                (ExprKind::ClientParam(name), ExprKind::Column { .. })
                | (ExprKind::Column { .. }, ExprKind::ClientParam(name)) => {
                    let column = if matches!(a.kind, ExprKind::Column { .. }) {
                        a
                    } else {
                        b
                    };
                    self.client_param(column, name, e.pos)
                }
                _ => {
                    self.key_misuse(e);
                    None
                }
            },
            _ => {
                self.key_misuse(e);
                None
            }
        }
    }

    fn client_param(&mut self, column: &Expr, name: &str, pos: Pos) -> Option<Cond> {
        if self.depth > 0 {
            self.error(
                pos,
                format!(
                    "`param.{name}` is inside a subquery: a request parameter may only narrow \
                     the shape's own table, as `column = param.{name}`"
                ),
            );
            return None;
        }
        let index = self.key_column(column, "a request parameter")?;
        Some(Cond::ClientParam {
            column: index,
            name: name.to_string(),
        })
    }

    /// Checks that `column` can be matched against a key value (a claim, a
    /// request parameter, a subquery's column): exact equality that agrees
    /// with equality of the canonical text form.
    pub(super) fn key_column(&mut self, column: &Expr, against: &str) -> Option<usize> {
        let col = self.column(column)?;
        let Node::Column(index) = col.node else {
            return None;
        };
        let name = &self.table.columns[index].name;
        if !col.ty.can_be_parameter() || self.table.columns[index].kind.is_none() {
            let message = format!(
                "column `{name}` has type {}, which cannot be matched against {against} \
                 (parameters must be of a type with exact equality: integer, text, uuid, \
                 boolean, numeric, date, timestamp or enum)",
                self.table.columns[index].type_name
            );
            self.error(column.pos, message);
            return None;
        }
        if let Some(c) = &col.coll
            && !c.deterministic
        {
            let message = format!(
                "column `{name}` uses the nondeterministic collation `{}`, whose equality \
                 Outpost cannot reproduce",
                c.name
            );
            self.error(column.pos, message);
            return None;
        }
        Some(index)
    }

    /// Reports each claim, request parameter and subquery below `e`, saying
    /// why it cannot be used there.
    pub(super) fn key_misuse(&mut self, e: &Expr) {
        let (reason, suggestion) = match &e.kind {
            ExprKind::Not(_) => ("is under NOT".to_string(), String::new()),
            ExprKind::Cmp(op, _, _) if *op != CmpOp::Eq => {
                (format!("is compared with `{op}`"), String::new())
            }
            ExprKind::Cmp(_, a, b) => {
                let other = if matches!(a.kind, ExprKind::Claim(_) | ExprKind::ClientParam(_)) {
                    b
                } else {
                    a
                };
                let what = match &other.kind {
                    ExprKind::Claim(_) => "another token claim",
                    ExprKind::ClientParam(_) => "a request parameter",
                    ExprKind::Str(_) | ExprKind::Number(_) | ExprKind::Bool(_) | ExprKind::Null => {
                        "a constant"
                    }
                    _ => "an expression",
                };
                (
                    format!("is compared with {what}, not with a plain column"),
                    String::new(),
                )
            }
            ExprKind::In { expr, list, .. } => {
                let hint = match (
                    &expr.kind,
                    list.iter().all(|x| matches!(x.kind, ExprKind::Claim(_))),
                ) {
                    (ExprKind::Column { name, .. }, true) => {
                        let alternatives: Vec<String> = list
                            .iter()
                            .filter_map(|x| match &x.kind {
                                ExprKind::Claim(p) => {
                                    Some(format!("{name} = auth.{}", p.join(".")))
                                }
                                _ => None,
                            })
                            .collect();
                        format!("; write `({})` instead", alternatives.join(" OR "))
                    }
                    _ => String::new(),
                };
                ("is in an IN list".to_string(), hint)
            }
            ExprKind::IsNull { .. } | ExprKind::IsBool { .. } => {
                ("is tested with IS".to_string(), String::new())
            }
            ExprKind::Between { .. } => ("is in BETWEEN".to_string(), String::new()),
            ExprKind::Like { .. } => ("is in LIKE".to_string(), String::new()),
            ExprKind::Cast { .. } => ("is cast to another type".to_string(), String::new()),
            ExprKind::Distinct { .. } => ("is in IS DISTINCT FROM".to_string(), String::new()),
            _ => ("is used as a condition".to_string(), String::new()),
        };
        let mut found = Vec::new();
        e.visit(&mut |x| match &x.kind {
            ExprKind::Claim(path) => found.push((
                x.pos,
                format!(
                    "`auth.{p}` {reason}: a token claim may only appear as \
                     `column = auth.{p}` (or `auth.{p} = column`), joined to the rest \
                     of the clause with AND or OR{suggestion}",
                    p = path.join(".")
                ),
            )),
            ExprKind::ClientParam(name) => found.push((
                x.pos,
                format!(
                    "`param.{name}` {reason}: a request parameter may only appear as \
                     `column = param.{name}`, joined with AND to a claim or subquery on the \
                     same column"
                ),
            )),
            ExprKind::InSubquery { .. } => found.push((
                x.pos,
                format!(
                    "this subquery {reason}: a subquery may only appear as `column IN (SELECT \
                     …)`, joined to the rest of the clause with AND or OR"
                ),
            )),
            _ => {}
        });
        for (pos, message) in found {
            self.error(pos, message);
        }
    }
}
