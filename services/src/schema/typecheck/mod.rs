//! Name resolution and type checking of shape filters against a table, as
//! Postgres does it, producing the evaluator's [`Node`] trees and the
//! AND/OR skeleton ([`Cond`]) in which token claims may appear.
//!
//! Invariants: an untyped string literal takes the type of what it is
//! compared with and is parsed at compile time (so `'abc' = int_col` is an
//! error here, as in Postgres); comparable categories must match; text
//! ordering is accepted only under a byte-order collation; a token claim is
//! accepted only as `column = auth.claim`, a request parameter only as
//! `column = param.name`, and a subquery only as `column IN (SELECT …)`,
//! each directly under AND/OR. A subquery is checked against its own table
//! and must end, through at most `MAX_HOPS` hops, in a membership keyed by
//! a token claim (see [`Chain`]).

mod branches;
mod operators;
mod params;
mod subquery;

pub(crate) use branches::Branch;
pub(crate) use subquery::Chain;

use std::sync::Arc;

use super::catalog::{Catalog, CatalogTable};
use super::datum::{self, Datum};
use super::error::{Pos, did_you_mean};
use super::eval::Node;
use super::expr::{CmpOp, Expr, ExprKind};
use super::types::{Category, Collation, IntWidth, SqlType, TextKind, common_type};

/// The AND/OR structure of a filter around its claim parameters.
#[derive(Clone, Debug)]
pub(crate) enum Cond {
    And(Vec<Cond>),
    Or(Vec<Cond>),
    /// `column = auth.<claim>`.
    Param {
        column: usize,
        claim: Vec<String>,
    },
    /// `column IN (SELECT …)`: one alternative of the subquery, a chain of
    /// hops ending in a membership.
    Member {
        column: usize,
        chain: Chain,
    },
    /// `column = param.<name>`: narrows what the other conditions allow.
    ClientParam {
        column: usize,
        name: String,
    },
    /// A predicate on the row alone.
    Pred(Node),
}

/// A checked operand.
#[derive(Clone, Debug)]
struct Typed {
    node: Node,
    ty: SqlType,
    /// The collation of a text operand (`None`: a literal, which adopts the other side's).
    coll: Option<Arc<Collation>>,
    pos: Pos,
    /// The text of an untyped string literal, typed later by its context.
    literal: Option<String>,
}

pub(crate) struct Checker<'a> {
    pub table: &'a CatalogTable,
    pub default_collation: Option<Arc<Collation>>,
    pub errors: Vec<(Pos, String)>,
    /// Where subquery tables are looked up (`None`: subqueries are refused).
    catalog: Option<&'a Catalog>,
    /// How many subqueries enclose this clause (0: the shape's own filter).
    depth: usize,
    /// The alias of the table in its subquery (`FROM list_members m`).
    alias: Option<String>,
    /// The names of the enclosing queries' tables, to explain a reference
    /// to one of them (a correlated subquery).
    outer: Vec<String>,
}

impl<'a> Checker<'a> {
    /// A checker of clauses on `table` that cannot read other tables.
    pub(crate) fn new(table: &'a CatalogTable, default_collation: Option<Arc<Collation>>) -> Self {
        Checker {
            table,
            default_collation,
            errors: Vec::new(),
            catalog: None,
            depth: 0,
            alias: None,
            outer: Vec::new(),
        }
    }

    /// A checker of a shape's filter on `table`, whose subqueries read the
    /// tables of `catalog`.
    pub(crate) fn with_catalog(table: &'a CatalogTable, catalog: &'a Catalog) -> Self {
        Checker {
            catalog: Some(catalog),
            ..Checker::new(table, catalog.default_collation.clone())
        }
    }

    fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.errors.push((pos, message.into()));
    }

    /// Checks a condition (operand of WHERE, AND, OR, NOT, IS TRUE…).
    fn boolean(&mut self, e: &Expr, context: &str) -> Option<Node> {
        let t = self.check(e)?;
        let t = self.coerce_unknown(t, &SqlType::Bool)?;
        if t.ty != SqlType::Bool {
            self.error(
                e.pos,
                format!(
                    "argument of {context} must be type boolean, not type {}",
                    t.ty
                ),
            );
            return None;
        }
        Some(t.node)
    }

    fn column(&mut self, e: &Expr) -> Option<Typed> {
        let ExprKind::Column { qualifier, name } = &e.kind else {
            return None;
        };
        let table = self.table;
        let qualified_ok = match qualifier.as_slice() {
            [] => true,
            [t] => match &self.alias {
                Some(alias) => t == alias,
                None => *t == table.name,
            },
            [s, t] => self.alias.is_none() && *s == table.schema && *t == table.name,
            _ => false,
        };
        if !qualified_ok {
            let message = if qualifier.last().is_some_and(|q| self.outer.contains(q)) {
                format!(
                    "`{}.{name}` refers to an enclosing query: correlated subqueries are not \
                     supported; a subquery may only use columns of its own table `{}`",
                    qualifier.join("."),
                    table.name
                )
            } else if self.depth > 0 {
                format!(
                    "`{}.{name}` does not name a column of `{}`: a subquery can only use \
                     columns of its own table",
                    qualifier.join("."),
                    table.name
                )
            } else {
                format!(
                    "`{}.{name}` does not name a column of `{}`: a shape filter can only use \
                     columns of its own table",
                    qualifier.join("."),
                    table.name
                )
            };
            self.error(e.pos, message);
            return None;
        }
        let Some(index) = table.columns.iter().position(|c| c.name == *name) else {
            let hint = did_you_mean(name, table.columns.iter().map(|c| c.name.as_str()));
            let correlated = if self.depth > 0 && qualifier.is_empty() {
                " (a subquery may only use columns of its own table: correlated subqueries \
                 are not supported)"
            } else {
                ""
            };
            self.error(
                e.pos,
                format!(
                    "unknown column `{name}` in table `{}`{hint}{correlated}",
                    table.name
                ),
            );
            return None;
        };
        let col = &table.columns[index];
        Some(Typed {
            node: Node::Column(index),
            ty: col.sql_type.clone(),
            coll: col.collation.clone(),
            pos: e.pos,
            literal: None,
        })
    }

    /// A type as the user knows it: a column's declared type (a domain's
    /// name, `character varying(80)`), otherwise the type itself.
    fn type_name(&self, t: &Typed) -> String {
        match t.node {
            Node::Column(i) => self.table.columns[i].type_name.clone(),
            _ => t.ty.to_string(),
        }
    }

    fn typed(node: Node, ty: SqlType, pos: Pos) -> Typed {
        Typed {
            node,
            ty,
            coll: None,
            pos,
            literal: None,
        }
    }

    fn check(&mut self, e: &Expr) -> Option<Typed> {
        let pos = e.pos;
        Some(match &e.kind {
            ExprKind::Column { .. } => return self.column(e),
            ExprKind::Claim(_) | ExprKind::ClientParam(_) | ExprKind::InSubquery { .. } => {
                self.key_misuse(e);
                return None;
            }
            ExprKind::Null => Self::typed(Node::Null, SqlType::Unknown, pos),
            ExprKind::Bool(b) => Self::typed(Node::Const(Datum::Bool(*b)), SqlType::Bool, pos),
            ExprKind::Number(text) => {
                let is_integer = text.bytes().all(|b| b.is_ascii_digit() || b == b'-');
                match text.parse::<i64>() {
                    Ok(i) if is_integer => {
                        let width = if i32::try_from(i).is_ok() {
                            IntWidth::I4
                        } else {
                            IntWidth::I8
                        };
                        Self::typed(Node::Const(Datum::Int(i)), SqlType::Int(width), pos)
                    }
                    _ => match datum::parse_numeric(text) {
                        Ok(n) => Self::typed(Node::Const(Datum::Numeric(n)), SqlType::Numeric, pos),
                        Err(msg) => {
                            self.error(pos, msg);
                            return None;
                        }
                    },
                }
            }
            ExprKind::Str(s) => Typed {
                node: Node::Const(Datum::Text(s.clone())),
                ty: SqlType::Unknown,
                coll: None,
                pos,
                literal: Some(s.clone()),
            },
            ExprKind::Cmp(op, a, b) => {
                let (a, b) = (self.check(a), self.check(b));
                return self.compare(*op, a?, b?, pos);
            }
            ExprKind::Distinct {
                left,
                right,
                negated,
            } => {
                let (a, b) = (self.check(left), self.check(right));
                let cmp = self.compare(CmpOp::Eq, a?, b?, pos)?;
                let Node::Cmp { left, right, .. } = cmp.node else {
                    return None;
                };
                Self::typed(
                    Node::Distinct {
                        left,
                        right,
                        negated: *negated,
                    },
                    SqlType::Bool,
                    pos,
                )
            }
            ExprKind::And(a, b) | ExprKind::Or(a, b) => {
                let and = matches!(e.kind, ExprKind::And(..));
                let context = if and { "AND" } else { "OR" };
                let (a, b) = (self.boolean(a, context), self.boolean(b, context));
                let items = vec![a?, b?];
                let node = if and {
                    Node::And(items)
                } else {
                    Node::Or(items)
                };
                Self::typed(node, SqlType::Bool, pos)
            }
            ExprKind::Not(inner) => {
                let inner = self.boolean(inner, "NOT")?;
                Self::typed(Node::Not(Box::new(inner)), SqlType::Bool, pos)
            }
            ExprKind::IsNull { expr, negated } => {
                let inner = self.check(expr)?;
                Self::typed(
                    Node::IsNull {
                        expr: Box::new(inner.node),
                        negated: *negated,
                    },
                    SqlType::Bool,
                    pos,
                )
            }
            ExprKind::IsBool {
                expr,
                value,
                negated,
            } => {
                let inner = self.boolean(expr, "IS TRUE / IS FALSE")?;
                Self::typed(
                    Node::IsBool {
                        expr: Box::new(inner),
                        value: *value,
                        negated: *negated,
                    },
                    SqlType::Bool,
                    pos,
                )
            }
            ExprKind::In {
                expr,
                list,
                negated,
            } => {
                let left = self.check(expr);
                let items: Vec<Option<Typed>> = list.iter().map(|x| self.check(x)).collect();
                let any = self.in_list(left?, items.into_iter().collect::<Option<_>>()?, pos)?;
                let node = if *negated {
                    Node::Not(Box::new(any))
                } else {
                    any
                };
                Self::typed(node, SqlType::Bool, pos)
            }
            ExprKind::Between {
                expr,
                low,
                high,
                negated,
            } => {
                let (x, lo, hi) = (self.check(expr), self.check(low), self.check(high));
                let (x, lo, hi) = (x?, lo?, hi?);
                let (op_lo, op_hi) = if *negated {
                    (CmpOp::Lt, CmpOp::Gt)
                } else {
                    (CmpOp::Ge, CmpOp::Le)
                };
                let a = self.compare(op_lo, x.clone(), lo, pos);
                let b = self.compare(op_hi, x, hi, pos);
                let items = vec![a?.node, b?.node];
                let node = if *negated {
                    Node::Or(items)
                } else {
                    Node::And(items)
                };
                Self::typed(node, SqlType::Bool, pos)
            }
            ExprKind::Like {
                expr,
                pattern,
                escape,
                negated,
                case_insensitive,
            } => {
                return self.like(
                    expr,
                    pattern,
                    escape.as_deref(),
                    *negated,
                    *case_insensitive,
                    pos,
                );
            }
            ExprKind::Cast { expr, to } => return self.cast(expr, to, pos),
        })
    }

    /// `x IN (a, b, …)` is `x = a OR x = b OR …`, where, as in Postgres,
    /// the items without columns are first converted to the common type of
    /// them and `x` (so `int_col IN (1.5, 'NaN')` compares numerics).
    fn in_list(&mut self, left: Typed, items: Vec<Typed>, pos: Pos) -> Option<Node> {
        let (constants, columns): (Vec<Typed>, Vec<Typed>) =
            items.into_iter().partition(|t| !t.node.reads_columns());
        let common = if constants.is_empty() {
            None
        } else {
            common_type(std::iter::once(&left.ty).chain(constants.iter().map(|t| &t.ty)))
        };
        let mut alternatives = Vec::with_capacity(constants.len() + columns.len());
        for item in constants {
            let item = match &common {
                Some(ty) => self.convert(item, ty)?,
                None => item,
            };
            alternatives.push(self.compare(CmpOp::Eq, left.clone(), item, pos));
        }
        for item in columns {
            alternatives.push(self.compare(CmpOp::Eq, left.clone(), item, pos));
        }
        let alternatives = alternatives
            .into_iter()
            .map(|t| t.map(|t| t.node))
            .collect::<Option<Vec<Node>>>()?;
        Some(Node::Or(alternatives))
    }

    /// Converts a value to `ty` implicitly (the caller checked that Postgres would).
    fn convert(&mut self, t: Typed, ty: &SqlType) -> Option<Typed> {
        if t.ty == SqlType::Unknown {
            return self.coerce_unknown(t, ty);
        }
        if t.ty == *ty {
            return Some(t);
        }
        let node = match t.node {
            Node::Null => Node::Null,
            Node::Const(d) => match datum::cast(&d, &t.ty, ty) {
                Ok(d) => Node::Const(d),
                Err(e) => {
                    self.error(t.pos, e.0);
                    return None;
                }
            },
            node => Node::Cast {
                expr: Box::new(node),
                from: t.ty.clone(),
                to: ty.clone(),
            },
        };
        Some(Typed {
            node,
            ty: ty.clone(),
            coll: t.coll,
            pos: t.pos,
            literal: None,
        })
    }

    /// Gives an untyped literal (or NULL) the type `ty`, parsing it now.
    fn coerce_unknown(&mut self, t: Typed, ty: &SqlType) -> Option<Typed> {
        if t.ty != SqlType::Unknown {
            return Some(t);
        }
        let node = match (&t.literal, &t.node) {
            (Some(text), _) => match datum::parse_input(ty, text) {
                Ok(d) => Node::Const(d),
                Err(msg) => {
                    self.error(t.pos, msg);
                    return None;
                }
            },
            (None, node) => node.clone(),
        };
        Some(Typed {
            node,
            ty: ty.clone(),
            coll: None,
            pos: t.pos,
            literal: None,
        })
    }

    /// `character(n)` compares without its trailing spaces.
    fn trimmed(t: Typed) -> Typed {
        if t.ty != SqlType::Text(TextKind::Bpchar) {
            return t;
        }
        let to = SqlType::Text(TextKind::Text);
        let node = match t.node {
            Node::Const(Datum::Text(s)) => Node::Const(Datum::Text(s.trim_end_matches(' ').into())),
            node => Node::Cast {
                expr: Box::new(node),
                from: t.ty.clone(),
                to: to.clone(),
            },
        };
        Typed { node, ty: to, ..t }
    }

    fn compare(&mut self, op: CmpOp, a: Typed, b: Typed, pos: Pos) -> Option<Typed> {
        for side in [&a, &b] {
            if side.ty.category() == Category::Other {
                let what = match side.node {
                    Node::Column(i) => format!("column `{}`", self.table.columns[i].name),
                    _ => "this value".to_string(),
                };
                self.error(
                    side.pos,
                    format!(
                        "{what} has type {}, which a shape filter cannot compare; \
                         only IS [NOT] NULL applies to it",
                        self.type_name(side)
                    ),
                );
                return None;
            }
        }
        let text = SqlType::Text(TextKind::Text);
        let (a, b) = match (a.ty == SqlType::Unknown, b.ty == SqlType::Unknown) {
            (true, true) => (
                self.coerce_unknown(a, &text)?,
                self.coerce_unknown(b, &text)?,
            ),
            (true, false) => {
                let ty = b.ty.clone();
                (self.coerce_unknown(a, &ty)?, b)
            }
            (false, true) => {
                let ty = a.ty.clone();
                let b = self.coerce_unknown(b, &ty)?;
                (a, b)
            }
            (false, false) => (a, b),
        };
        let same_enum = match (&a.ty, &b.ty) {
            (SqlType::Enum(x), SqlType::Enum(y)) => x.oid == y.oid,
            _ => true,
        };
        if a.ty.category() != b.ty.category() || !same_enum {
            self.error(
                pos,
                format!(
                    "operator does not exist: {} {op} {} (compare values of the same kind, \
                     or cast one side, e.g. `x::{}`)",
                    a.ty, b.ty, a.ty
                ),
            );
            return None;
        }
        if a.ty.is_text() {
            // A literal takes the collation of the column it meets; two
            // literals use the database default.
            let mut colls: Vec<(Pos, Arc<Collation>)> = [&a, &b]
                .iter()
                .filter_map(|side| side.coll.clone().map(|c| (side.pos, c)))
                .collect();
            if colls.is_empty() {
                colls.extend(self.default_collation.clone().map(|c| (a.pos, c)));
            }
            for (at, c) in colls {
                if !c.deterministic {
                    self.error(
                        at,
                        format!(
                            "the collation `{}` is nondeterministic; Outpost cannot reproduce its comparisons",
                            c.name
                        ),
                    );
                    return None;
                }
                if op.is_ordering() && !c.byte_order {
                    self.error(
                        at,
                        format!(
                            "`{op}` on text is not supported here: the collation `{}` does not sort \
                             by byte value, and Outpost orders text only as the C collation does. \
                             Use `=`, `<>`, IN or LIKE, or give the column `COLLATE \"C\"`",
                            c.name
                        ),
                    );
                    return None;
                }
            }
        }
        let (a, b) = (Self::trimmed(a), Self::trimmed(b));
        Some(Self::typed(
            Node::Cmp {
                op,
                left: Box::new(a.node),
                right: Box::new(b.node),
            },
            SqlType::Bool,
            pos,
        ))
    }
}
