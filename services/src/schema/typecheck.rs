//! Name resolution and type checking of shape filters against a table, as
//! Postgres does it, producing the evaluator's [`Node`] trees and the
//! AND/OR skeleton ([`Cond`]) in which token claims may appear.
//!
//! Invariants: an untyped string literal takes the type of what it is
//! compared with and is parsed at compile time (so `'abc' = int_col` is an
//! error here, as in Postgres); comparable categories must match; text
//! ordering is accepted only under a byte-order collation; a token claim is
//! accepted only as `column = auth.claim` directly under AND/OR.

use std::sync::Arc;

use super::catalog::CatalogTable;
use super::datum::{self, Datum};
use super::error::{Pos, did_you_mean};
use super::eval::{LikePattern, Node};
use super::expr::{CmpOp, Expr, ExprKind};
use super::types::{Category, Collation, EnumType, IntWidth, SqlType, TextKind, cast_exists};

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
}

const SUPPORTED_CASTS: &str = "boolean, smallint, integer, bigint, real, double precision, \
    numeric, text, varchar, uuid, timestamptz, timestamp, date, or an enum type of the table";

impl<'a> Checker<'a> {
    pub(crate) fn new(table: &'a CatalogTable, default_collation: Option<Arc<Collation>>) -> Self {
        Checker {
            table,
            default_collation,
            errors: Vec::new(),
        }
    }

    fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.errors.push((pos, message.into()));
    }

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
    fn claim_misuse(&mut self, e: &Expr) {
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
            [t] => *t == table.name,
            [s, t] => *s == table.schema && *t == table.name,
            _ => false,
        };
        if !qualified_ok {
            self.error(
                e.pos,
                format!(
                    "`{}.{name}` does not name a column of `{}`: a shape filter can only use \
                     columns of its own table",
                    qualifier.join("."),
                    table.name
                ),
            );
            return None;
        }
        let Some(index) = table.columns.iter().position(|c| c.name == *name) else {
            let hint = did_you_mean(name, table.columns.iter().map(|c| c.name.as_str()));
            self.error(
                e.pos,
                format!("unknown column `{name}` in table `{}`{hint}", table.name),
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
            ExprKind::Claim(_) => {
                self.claim_misuse(e);
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
                // `x IN (a, b)` is `x = a OR x = b`; NOT IN negates that.
                let left = self.check(expr);
                let items: Vec<Option<Typed>> = list.iter().map(|x| self.check(x)).collect();
                let left = left?;
                let mut alternatives = Vec::with_capacity(items.len());
                for item in items {
                    alternatives.push(self.compare(CmpOp::Eq, left.clone(), item?, pos));
                }
                let alternatives: Vec<Node> = alternatives
                    .into_iter()
                    .map(|t| t.map(|t| t.node))
                    .collect::<Option<_>>()?;
                let any = Node::Or(alternatives);
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

    fn enum_named(&self, name: &str) -> Option<Arc<EnumType>> {
        self.table.columns.iter().find_map(|c| match &c.sql_type {
            SqlType::Enum(e) if e.name == name || c.type_name == name => Some(e.clone()),
            _ => None,
        })
    }

    fn cast(&mut self, expr: &Expr, to: &str, pos: Pos) -> Option<Typed> {
        let inner = self.check(expr);
        let Some(target) =
            SqlType::from_cast_name(to).or_else(|| self.enum_named(to).map(SqlType::Enum))
        else {
            self.error(
                pos,
                format!("casts to `{to}` are not supported; a shape filter can cast to {SUPPORTED_CASTS}"),
            );
            return None;
        };
        let inner = inner?;
        if inner.ty == SqlType::Unknown {
            return self.coerce_unknown(inner, &target);
        }
        if !cast_exists(&inner.ty, &target) {
            self.error(pos, format!("cannot cast type {} to {target}", inner.ty));
            return None;
        }
        let coll = match (&target, inner.ty.is_text()) {
            (SqlType::Text(_), true) => inner.coll.clone(),
            (SqlType::Text(_), false) => self.default_collation.clone(),
            _ => None,
        };
        let node = match inner.node {
            Node::Null => Node::Null,
            Node::Const(d) => match datum::cast(&d, &inner.ty, &target) {
                Ok(d) => Node::Const(d),
                Err(e) => {
                    self.error(pos, e.0);
                    return None;
                }
            },
            node => Node::Cast {
                expr: Box::new(node),
                from: inner.ty.clone(),
                to: target.clone(),
            },
        };
        Some(Typed {
            node,
            ty: target,
            coll,
            pos,
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
                        side.ty
                    ),
                );
                return None;
            }
        }
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

    fn like(
        &mut self,
        expr: &Expr,
        pattern: &Expr,
        escape: Option<&Expr>,
        negated: bool,
        case_insensitive: bool,
        pos: Pos,
    ) -> Option<Typed> {
        let operator = if case_insensitive { "ILIKE" } else { "LIKE" };
        let subject = self.check(expr)?;
        let subject = self.coerce_unknown(subject, &SqlType::Text(TextKind::Text))?;
        if !subject.ty.is_text() {
            self.error(
                pos,
                format!(
                    "operator does not exist: {} {operator} text (cast to text first: `x::text {operator} …`)",
                    subject.ty
                ),
            );
            return None;
        }
        let coll = subject
            .coll
            .clone()
            .or_else(|| self.default_collation.clone());
        if let Some(c) = coll.as_deref().filter(|c| !c.deterministic) {
            self.error(
                subject.pos,
                format!(
                    "{operator} is not supported for the nondeterministic collation `{}`",
                    c.name
                ),
            );
            return None;
        }
        let pattern_text = match &pattern.kind {
            ExprKind::Str(s) => Some(s.clone()),
            ExprKind::Null => None,
            _ => {
                self.error(
                    pattern.pos,
                    format!("the pattern of {operator} must be a string literal"),
                );
                return None;
            }
        };
        let escape_char = match escape.map(|e| &e.kind) {
            None => Some(Some('\\')),
            Some(ExprKind::Null) => None,
            Some(ExprKind::Str(s)) if s.chars().count() <= 1 => Some(s.chars().next()),
            Some(_) => {
                let at = escape.map_or(pos, |e| e.pos);
                self.error(
                    at,
                    "the ESCAPE of LIKE must be a string literal of at most one character",
                );
                return None;
            }
        };
        let (Some(pattern_text), Some(escape_char)) = (pattern_text, escape_char) else {
            // A NULL pattern or escape makes the result NULL.
            return Some(Self::typed(Node::Null, SqlType::Bool, pos));
        };
        let fold = case_insensitive.then(|| {
            coll.as_deref()
                .map_or(super::types::CaseFold::Ascii, |c| c.fold)
        });
        let compiled = match LikePattern::compile(&pattern_text, escape_char, fold) {
            Ok(p) => p,
            Err(msg) => {
                self.error(pattern.pos, msg);
                return None;
            }
        };
        Some(Self::typed(
            Node::Like {
                expr: Box::new(subject.node),
                pattern: compiled,
                negated,
                fold,
            },
            SqlType::Bool,
            pos,
        ))
    }
}
