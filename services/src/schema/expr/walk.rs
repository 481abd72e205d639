//! Walking a filter: what it mentions, and a visitor.

use super::{Expr, ExprKind};

impl Expr {
    /// Whether the clause depends on more than the row: a token claim, a
    /// request parameter or a subquery occurs below.
    pub(crate) fn is_keyed(&self) -> bool {
        let mut found = false;
        self.visit(&mut |e| {
            found |= matches!(
                e.kind,
                ExprKind::Claim(_) | ExprKind::ClientParam(_) | ExprKind::InSubquery { .. }
            )
        });
        found
    }

    /// The tables that subqueries below read, `(schema, table)`, in order of
    /// first mention; an unqualified name is in `public`.
    pub(crate) fn subquery_tables(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        self.visit_all(&mut |e| {
            if let ExprKind::InSubquery { query, .. } = &e.kind {
                let name = (
                    query.schema.clone().unwrap_or_else(|| "public".into()),
                    query.table.clone(),
                );
                if !out.contains(&name) {
                    out.push(name);
                }
            }
        });
        out
    }

    /// Calls `f` on this node and every node below it, subqueries included.
    pub(crate) fn visit_all(&self, f: &mut dyn FnMut(&Expr)) {
        self.visit(&mut |e| {
            f(e);
            if let ExprKind::InSubquery { query, .. } = &e.kind {
                query.column.visit_all(f);
                if let Some(filter) = &query.filter {
                    filter.visit_all(f);
                }
            }
        });
    }

    /// Calls `f` on this node and every node below it, not descending into
    /// subqueries (their clauses are about another table).
    pub(crate) fn visit(&self, f: &mut dyn FnMut(&Expr)) {
        f(self);
        match &self.kind {
            ExprKind::Column { .. }
            | ExprKind::Claim(_)
            | ExprKind::ClientParam(_)
            | ExprKind::Null
            | ExprKind::Bool(_)
            | ExprKind::Number(_)
            | ExprKind::Str(_) => {}
            ExprKind::Cmp(_, a, b)
            | ExprKind::And(a, b)
            | ExprKind::Or(a, b)
            | ExprKind::Distinct {
                left: a, right: b, ..
            } => {
                a.visit(f);
                b.visit(f);
            }
            ExprKind::Not(e)
            | ExprKind::IsNull { expr: e, .. }
            | ExprKind::IsBool { expr: e, .. }
            | ExprKind::Cast { expr: e, .. }
            | ExprKind::InSubquery { expr: e, .. } => e.visit(f),
            ExprKind::In { expr, list, .. } => {
                expr.visit(f);
                list.iter().for_each(|e| e.visit(f));
            }
            ExprKind::Between {
                expr, low, high, ..
            } => {
                expr.visit(f);
                low.visit(f);
                high.visit(f);
            }
            ExprKind::Like {
                expr,
                pattern,
                escape,
                ..
            } => {
                expr.visit(f);
                pattern.visit(f);
                if let Some(e) = escape {
                    e.visit(f);
                }
            }
        }
    }

    /// Calls `f` on this node, then on every node below what `f` left in
    /// its place (so `f` may replace a node by another), not descending
    /// into subqueries.
    pub(crate) fn visit_mut(&mut self, f: &mut dyn FnMut(&mut Expr)) {
        f(self);
        match &mut self.kind {
            ExprKind::Column { .. }
            | ExprKind::Claim(_)
            | ExprKind::ClientParam(_)
            | ExprKind::Null
            | ExprKind::Bool(_)
            | ExprKind::Number(_)
            | ExprKind::Str(_) => {}
            ExprKind::Cmp(_, a, b)
            | ExprKind::And(a, b)
            | ExprKind::Or(a, b)
            | ExprKind::Distinct {
                left: a, right: b, ..
            } => {
                a.visit_mut(f);
                b.visit_mut(f);
            }
            ExprKind::Not(e)
            | ExprKind::IsNull { expr: e, .. }
            | ExprKind::IsBool { expr: e, .. }
            | ExprKind::Cast { expr: e, .. }
            | ExprKind::InSubquery { expr: e, .. } => e.visit_mut(f),
            ExprKind::In { expr, list, .. } => {
                expr.visit_mut(f);
                list.iter_mut().for_each(|e| e.visit_mut(f));
            }
            ExprKind::Between {
                expr, low, high, ..
            } => {
                expr.visit_mut(f);
                low.visit_mut(f);
                high.visit_mut(f);
            }
            ExprKind::Like {
                expr,
                pattern,
                escape,
                ..
            } => {
                expr.visit_mut(f);
                pattern.visit_mut(f);
                if let Some(e) = escape {
                    e.visit_mut(f);
                }
            }
        }
    }
}
