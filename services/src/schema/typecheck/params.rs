//! The AND/OR skeleton of a filter around its token claims: `column =
//! auth.claim` equalities become parameters; every other use of a claim is
//! refused with the reason and a rewrite.

use super::{Checker, Cond};
use crate::schema::eval::Node;
use crate::schema::expr::{CmpOp, Expr, ExprKind};

impl Checker<'_> {
    /// Checks a whole filter.
    pub(crate) fn filter(&mut self, e: &Expr) -> Option<Cond> {
        if !e.mentions_claim() {
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
            ExprKind::Cmp(CmpOp::Eq, a, b) => match (&a.kind, &b.kind) {
                (ExprKind::Claim(path), ExprKind::Column { .. })
                | (ExprKind::Column { .. }, ExprKind::Claim(path)) => {
                    let column = if matches!(a.kind, ExprKind::Column { .. }) {
                        a
                    } else {
                        b
                    };
                    self.param(column, path)
                }
                _ => {
                    self.claim_misuse(e);
                    None
                }
            },
            _ => {
                self.claim_misuse(e);
                None
            }
        }
    }

    fn param(&mut self, column: &Expr, claim: &[String]) -> Option<Cond> {
        let col = self.column(column)?;
        let Node::Column(index) = col.node else {
            return None;
        };
        let name = &self.table.columns[index].name;
        if !col.ty.can_be_parameter() || self.table.columns[index].kind.is_none() {
            let message = format!(
                "column `{name}` has type {}, which cannot be matched against a token claim \
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
        Some(Cond::Param {
            column: index,
            claim: claim.to_vec(),
        })
    }

    /// Reports each claim below `e`, saying why it cannot be used there.
    pub(super) fn claim_misuse(&mut self, e: &Expr) {
        let (reason, suggestion) = match &e.kind {
            ExprKind::Not(_) => ("is under NOT".to_string(), String::new()),
            ExprKind::Cmp(op, a, b) if *op != CmpOp::Eq => {
                (format!("is compared with `{op}`"), String::new())
            }
            ExprKind::Cmp(_, a, b) => {
                let other = if matches!(a.kind, ExprKind::Claim(_)) {
                    b
                } else {
                    a
                };
                let what = match &other.kind {
                    ExprKind::Claim(_) => "another token claim",
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
        let mut claims = Vec::new();
        e.visit(&mut |x| {
            if let ExprKind::Claim(path) = &x.kind {
                claims.push((x.pos, path.join(".")));
            }
        });
        for (pos, path) in claims {
            self.error(
                pos,
                format!(
                    "`auth.{path}` {reason}: a token claim may only appear as \
                     `column = auth.{path}` (or `auth.{path} = column`), joined to the rest \
                     of the clause with AND or OR{suggestion}"
                ),
            );
        }
    }
}
