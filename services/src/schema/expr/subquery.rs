//! The one subquery form a filter may hold: `SELECT column FROM table
//! [alias] [WHERE …]`. Everything else a `SELECT` can say (joins, several
//! tables, grouping, ordering, limits, set operations, `WITH`) is refused
//! here with what to write instead.

use sqlparser::ast::{self as sql, Spanned as _};

use super::{Converter, Subquery, fold};
use crate::schema::error::Pos;

const FORM: &str = "write `column IN (SELECT column FROM table WHERE …)`";

impl Converter<'_> {
    fn refuse(&mut self, pos: Pos, what: &str) -> Option<Subquery> {
        self.errors.push((
            pos,
            format!("{what} is not supported in a subquery of a shape filter; {FORM}"),
        ));
        None
    }

    fn span_pos(&self, span: sqlparser::tokenizer::Span, fallback: Pos) -> Pos {
        if span.start.line == 0 {
            fallback
        } else {
            (self.map)(span.start.line, span.start.column)
        }
    }

    /// Converts the query of `x IN (…)`.
    pub(super) fn subquery(&mut self, query: &sql::Query, pos: Pos) -> Option<Subquery> {
        let pos = self.span_pos(query.span(), pos);
        if query.with.is_some() {
            return self.refuse(pos, "WITH");
        }
        if query.order_by.is_some() {
            return self.refuse(pos, "ORDER BY");
        }
        if query.limit_clause.is_some() || query.fetch.is_some() {
            return self.refuse(pos, "LIMIT / FETCH");
        }
        if !query.locks.is_empty() {
            return self.refuse(pos, "FOR UPDATE / FOR SHARE");
        }
        let select = match query.body.as_ref() {
            sql::SetExpr::Select(select) => select,
            sql::SetExpr::Query(inner) => return self.subquery(inner, pos),
            sql::SetExpr::SetOperation { .. } => {
                return self.refuse(
                    pos,
                    "UNION / INTERSECT / EXCEPT (write one `IN (SELECT …)` per table, joined with OR)",
                );
            }
            _ => return self.refuse(pos, "this kind of query"),
        };
        if matches!(select.distinct, Some(sql::Distinct::On(_))) {
            return self.refuse(pos, "DISTINCT ON");
        }
        if select.top.is_some() || select.into.is_some() {
            return self.refuse(pos, "TOP / INTO");
        }
        let grouped = match &select.group_by {
            sql::GroupByExpr::All(_) => true,
            sql::GroupByExpr::Expressions(e, _) => !e.is_empty(),
        };
        if grouped || select.having.is_some() {
            return self.refuse(
                pos,
                "GROUP BY / HAVING (aggregates cannot decide which rows a user gets)",
            );
        }
        if select.qualify.is_some()
            || !select.named_window.is_empty()
            || !select.lateral_views.is_empty()
            || select.prewhere.is_some()
            || !select.connect_by.is_empty()
        {
            return self.refuse(pos, "this clause");
        }
        let [from] = select.from.as_slice() else {
            if select.from.is_empty() {
                self.errors
                    .push((pos, format!("a subquery must read one table: {FORM}")));
                return None;
            }
            return self.refuse(pos, "several tables in FROM");
        };
        if !from.joins.is_empty() {
            return self.refuse(
                pos,
                "JOIN (chain subqueries instead: `a IN (SELECT id FROM t WHERE b IN (SELECT …))`)",
            );
        }
        let sql::TableFactor::Table {
            name, alias, args, ..
        } = &from.relation
        else {
            return self.refuse(pos, "a derived table or table function in FROM");
        };
        if args.is_some() {
            return self.refuse(pos, "a table function in FROM");
        }
        let table_pos = self.span_pos(name.span(), pos);
        let parts: Vec<String> = name
            .0
            .iter()
            .filter_map(|p| p.as_ident().map(fold))
            .collect();
        let (schema, table) = match parts.as_slice() {
            [t] => (None, t.clone()),
            [s, t] => (Some(s.clone()), t.clone()),
            _ => return self.refuse(table_pos, &format!("the table name `{name}`")),
        };
        if alias.as_ref().is_some_and(|a| !a.columns.is_empty()) {
            return self.refuse(table_pos, "column aliases on the table");
        }
        let [item] = select.projection.as_slice() else {
            return self.refuse(pos, "selecting several columns");
        };
        let selected = match item {
            sql::SelectItem::UnnamedExpr(e) | sql::SelectItem::ExprWithAlias { expr: e, .. } => e,
            _ => return self.refuse(pos, "`*`"),
        };
        if let sql::Expr::Function(f) = selected {
            let at = self.span_pos(selected.span(), pos);
            return self.refuse(at, &format!("the function or aggregate `{}(…)`", f.name));
        }
        let column = self.boxed(selected, pos);
        let filter = match &select.selection {
            Some(w) => Some(self.boxed(w, pos)?),
            None => None,
        };
        Some(Subquery {
            schema,
            table,
            alias: alias.as_ref().map(|a| fold(&a.name)),
            table_pos,
            column: column?,
            filter,
        })
    }
}
