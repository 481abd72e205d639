//! The shape filter language: a small subset of Postgres' SQL expressions,
//! parsed with `sqlparser` and reduced to an AST of only what Outpost can
//! evaluate exactly.
//!
//! Invariant: every node carries its position in the schema file; anything
//! outside the subset is refused here, by name (a function call, a scalar
//! subquery, arithmetic…), so later stages only see supported constructs.
//! The only subquery form accepted is `x IN (SELECT column FROM table
//! [WHERE …])` over one table, without joins, grouping, ordering or limits;
//! what its `WHERE` may hold is decided by the type checker.
//! Unquoted identifiers are folded to lower case, as Postgres does; claim
//! names after `auth.` and parameter names after `param.` are kept as
//! written (token claims and request parameters are case-sensitive).

use std::fmt;

use sqlparser::ast::{self as sql, Spanned as _};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use super::error::Pos;

mod subquery;
mod walk;

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub(crate) fn is_ordering(self) -> bool {
        !matches!(self, CmpOp::Eq | CmpOp::Ne)
    }

    /// Whether an ordering between the operands satisfies the operator.
    pub(crate) fn holds(self, ord: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            CmpOp::Eq => ord == Equal,
            CmpOp::Ne => ord != Equal,
            CmpOp::Lt => ord == Less,
            CmpOp::Le => ord != Greater,
            CmpOp::Gt => ord == Greater,
            CmpOp::Ge => ord != Less,
        }
    }
}

impl fmt::Display for CmpOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "<>",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        })
    }
}

/// A node of a shape filter, with where it is in the schema file.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Expr {
    pub kind: ExprKind,
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ExprKind {
    /// A column of the shape's table, possibly qualified (`todos.owner`).
    Column {
        qualifier: Vec<String>,
        name: String,
    },
    /// `auth.a.b`: the path of a token claim.
    Claim(Vec<String>),
    /// `param.name`: a value the client passes in its shape request.
    ClientParam(String),
    Null,
    Bool(bool),
    /// A numeric literal as written, with its sign.
    Number(String),
    /// A string literal (untyped, like in Postgres).
    Str(String),
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    /// `IS [NOT] DISTINCT FROM`.
    Distinct {
        left: Box<Expr>,
        right: Box<Expr>,
        negated: bool,
    },
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    /// `IS [NOT] TRUE|FALSE|UNKNOWN` (`value: None` is UNKNOWN).
    IsBool {
        expr: Box<Expr>,
        value: Option<bool>,
        negated: bool,
    },
    In {
        expr: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    Between {
        expr: Box<Expr>,
        low: Box<Expr>,
        high: Box<Expr>,
        negated: bool,
    },
    Like {
        expr: Box<Expr>,
        pattern: Box<Expr>,
        escape: Option<Box<Expr>>,
        negated: bool,
        case_insensitive: bool,
    },
    /// `x::type` or `CAST(x AS type)`; the type name is normalised
    /// (`integer`, `double precision`, or an enum's name).
    Cast {
        expr: Box<Expr>,
        to: String,
    },
    /// `expr IN (SELECT column FROM table WHERE …)`.
    InSubquery {
        expr: Box<Expr>,
        query: Box<Subquery>,
    },
}

/// `SELECT column FROM table [alias] [WHERE filter]`, the only subquery
/// form a filter may hold.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Subquery {
    /// The schema, when the table name is qualified.
    pub schema: Option<String>,
    pub table: String,
    pub alias: Option<String>,
    /// Where the table name is written.
    pub table_pos: Pos,
    /// The selected expression (the type checker wants a column).
    pub column: Box<Expr>,
    pub filter: Option<Box<Expr>>,
}

/// Maps a position in the filter text (1-based line and column, as
/// `sqlparser` reports them) to a position in the schema file.
pub(crate) type PosMap<'a> = &'a dyn Fn(u64, u64) -> Pos;

/// Parses a filter. Errors are `(position, message)` pairs.
pub(crate) fn parse_filter(text: &str, map: PosMap<'_>) -> Result<Expr, Vec<(Pos, String)>> {
    let start = map(1, 1);
    if text.trim().is_empty() {
        return Err(vec![(start, "the `where` clause is empty".into())]);
    }
    let dialect = PostgreSqlDialect {};
    let parsed = Parser::new(&dialect).try_with_sql(text).and_then(|mut p| {
        let e = p.parse_expr()?;
        Ok((e, p.peek_token()))
    });
    let (expr, next) = match parsed {
        Ok(x) => x,
        Err(e) => return Err(vec![parse_error_position(&e.to_string(), map, start)]),
    };
    if next.token != Token::EOF {
        let at = map(next.span.start.line, next.span.start.column);
        return Err(vec![(
            at,
            format!(
                "unexpected `{}` after the end of the expression",
                next.token
            ),
        )]);
    }
    let mut cx = Converter {
        map,
        errors: Vec::new(),
    };
    match cx.convert(&expr, start) {
        Some(e) if cx.errors.is_empty() => Ok(e),
        _ => Err(cx.errors),
    }
}

/// `sqlparser` reports positions inside its messages ("… at Line: 1,
/// Column: 5"); moves them to the schema file.
fn parse_error_position(message: &str, map: PosMap<'_>, start: Pos) -> (Pos, String) {
    let message = message
        .strip_prefix("sql parser error: ")
        .unwrap_or(message);
    if let Some(at) = message.rfind(" at Line: ") {
        let tail = &message[at + " at Line: ".len()..];
        if let Some((line, column)) = tail.split_once(", Column: ")
            && let (Ok(line), Ok(column)) = (line.trim().parse(), column.trim().parse())
        {
            return (
                map(line, column),
                format!("syntax error: {}", &message[..at]),
            );
        }
    }
    (start, format!("syntax error: {message}"))
}

struct Converter<'a> {
    map: PosMap<'a>,
    errors: Vec<(Pos, String)>,
}

fn fold(ident: &sql::Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

/// The normalised name of a cast target, or why it cannot be one.
fn type_name(ty: &sql::DataType) -> Result<String, String> {
    if let sql::DataType::Custom(name, modifiers) = ty {
        if !modifiers.is_empty() {
            return Err(format!("type modifiers in `{ty}` are not supported"));
        }
        let parts: Vec<String> = name
            .0
            .iter()
            .filter_map(|p| p.as_ident().map(fold))
            .collect();
        return Ok(parts.join("."));
    }
    let text = ty.to_string().to_lowercase();
    if text.contains('(') {
        return Err(format!(
            "type modifiers in `{ty}` are not supported; cast to the plain type"
        ));
    }
    Ok(text)
}

/// What to call a construct outside the subset.
fn construct_name(e: &sql::Expr) -> String {
    use sql::Expr as E;
    let name = match e {
        E::Function(f) => return format!("the function call `{}(…)`", f.name),
        E::Subquery(_) | E::Exists { .. } | E::InSubquery { .. } => "a subquery",
        E::Case { .. } => "CASE",
        E::AnyOp { .. } | E::AllOp { .. } => "ANY/ALL",
        E::Collate { .. } => "COLLATE",
        E::AtTimeZone { .. } => "AT TIME ZONE",
        E::Extract { .. } => "EXTRACT",
        E::JsonAccess { .. } | E::CompoundFieldAccess { .. } => "JSON or field access",
        E::Array(_) => "an array constructor",
        E::Interval(_) => "an interval literal",
        E::Tuple(_) => "a row constructor",
        E::SimilarTo { .. } => "SIMILAR TO",
        E::RLike { .. } => "a regular expression match",
        E::InUnnest { .. } => "IN UNNEST",
        E::Substring { .. } | E::Trim { .. } | E::Position { .. } | E::Overlay { .. } => {
            "a string function"
        }
        _ => return format!("`{e}`"),
    };
    name.to_string()
}

impl Converter<'_> {
    fn pos_of(&self, e: &sql::Expr, fallback: Pos) -> Pos {
        let span = e.span();
        if span.start.line == 0 {
            fallback
        } else {
            (self.map)(span.start.line, span.start.column)
        }
    }

    fn unsupported(&mut self, pos: Pos, what: String) -> Option<Expr> {
        self.errors
            .push((pos, format!("{what} is not supported in a shape filter")));
        None
    }

    fn boxed(&mut self, e: &sql::Expr, fallback: Pos) -> Option<Box<Expr>> {
        self.convert(e, fallback).map(Box::new)
    }

    fn pair(&mut self, a: &sql::Expr, b: &sql::Expr, pos: Pos) -> Option<(Box<Expr>, Box<Expr>)> {
        let a = self.boxed(a, pos);
        let b = self.boxed(b, pos);
        Some((a?, b?))
    }

    fn convert(&mut self, e: &sql::Expr, fallback: Pos) -> Option<Expr> {
        use sql::Expr as E;
        let pos = self.pos_of(e, fallback);
        let kind = match e {
            E::Nested(inner) => return self.convert(inner, pos),
            E::Identifier(ident) => ExprKind::Column {
                qualifier: Vec::new(),
                name: fold(ident),
            },
            E::CompoundIdentifier(parts) => match parts.split_first() {
                Some((first, rest))
                    if first.quote_style.is_none() && first.value.eq_ignore_ascii_case("auth") =>
                {
                    ExprKind::Claim(rest.iter().map(|p| p.value.clone()).collect())
                }
                Some((first, [name]))
                    if first.quote_style.is_none() && first.value.eq_ignore_ascii_case("param") =>
                {
                    ExprKind::ClientParam(name.value.clone())
                }
                _ => {
                    let mut names: Vec<String> = parts.iter().map(fold).collect();
                    let name = names.pop().unwrap_or_default();
                    ExprKind::Column {
                        qualifier: names,
                        name,
                    }
                }
            },
            E::Value(v) => match &v.value {
                sql::Value::Number(n, _) => ExprKind::Number(n.clone()),
                sql::Value::SingleQuotedString(s)
                | sql::Value::EscapedStringLiteral(s)
                | sql::Value::UnicodeStringLiteral(s)
                | sql::Value::NationalStringLiteral(s) => ExprKind::Str(s.clone()),
                sql::Value::DollarQuotedString(d) => ExprKind::Str(d.value.clone()),
                sql::Value::Boolean(b) => ExprKind::Bool(*b),
                sql::Value::Null => ExprKind::Null,
                sql::Value::Placeholder(p) => {
                    return self.unsupported(
                        pos,
                        format!("the parameter `{p}` (use `auth.<claim>` for token values)"),
                    );
                }
                other => return self.unsupported(pos, format!("the literal `{other}`")),
            },
            E::BinaryOp { left, op, right } => {
                let cmp = match op {
                    sql::BinaryOperator::Eq => Some(CmpOp::Eq),
                    sql::BinaryOperator::NotEq => Some(CmpOp::Ne),
                    sql::BinaryOperator::Lt => Some(CmpOp::Lt),
                    sql::BinaryOperator::LtEq => Some(CmpOp::Le),
                    sql::BinaryOperator::Gt => Some(CmpOp::Gt),
                    sql::BinaryOperator::GtEq => Some(CmpOp::Ge),
                    _ => None,
                };
                match (cmp, op) {
                    (Some(cmp), _) => {
                        let (a, b) = self.pair(left, right, pos)?;
                        ExprKind::Cmp(cmp, a, b)
                    }
                    (None, sql::BinaryOperator::And) => {
                        let (a, b) = self.pair(left, right, pos)?;
                        ExprKind::And(a, b)
                    }
                    (None, sql::BinaryOperator::Or) => {
                        let (a, b) = self.pair(left, right, pos)?;
                        ExprKind::Or(a, b)
                    }
                    (None, other) => {
                        // Report problems inside the operands too.
                        let _ = self.pair(left, right, pos);
                        return self.unsupported(pos, format!("the operator `{other}`"));
                    }
                }
            }
            E::UnaryOp { op, expr } => match (op, expr.as_ref()) {
                (sql::UnaryOperator::Not, inner) => ExprKind::Not(self.boxed(inner, pos)?),
                (sql::UnaryOperator::Minus | sql::UnaryOperator::Plus, E::Value(v))
                    if matches!(v.value, sql::Value::Number(..)) =>
                {
                    let sql::Value::Number(n, _) = &v.value else {
                        return None;
                    };
                    let sign = if *op == sql::UnaryOperator::Minus {
                        "-"
                    } else {
                        ""
                    };
                    ExprKind::Number(format!("{sign}{n}"))
                }
                (other, _) => {
                    return self.unsupported(pos, format!("the operator `{other}`"));
                }
            },
            E::IsNull(x) | E::IsNotNull(x) => ExprKind::IsNull {
                expr: self.boxed(x, pos)?,
                negated: matches!(e, E::IsNotNull(_)),
            },
            E::IsTrue(x) | E::IsNotTrue(x) => ExprKind::IsBool {
                expr: self.boxed(x, pos)?,
                value: Some(true),
                negated: matches!(e, E::IsNotTrue(_)),
            },
            E::IsFalse(x) | E::IsNotFalse(x) => ExprKind::IsBool {
                expr: self.boxed(x, pos)?,
                value: Some(false),
                negated: matches!(e, E::IsNotFalse(_)),
            },
            E::IsUnknown(x) | E::IsNotUnknown(x) => ExprKind::IsBool {
                expr: self.boxed(x, pos)?,
                value: None,
                negated: matches!(e, E::IsNotUnknown(_)),
            },
            E::IsDistinctFrom(a, b) | E::IsNotDistinctFrom(a, b) => {
                let (left, right) = self.pair(a, b, pos)?;
                ExprKind::Distinct {
                    left,
                    right,
                    negated: matches!(e, E::IsNotDistinctFrom(..)),
                }
            }
            E::InList {
                expr,
                list,
                negated,
            } => {
                let expr = self.boxed(expr, pos);
                let list: Vec<Option<Expr>> = list.iter().map(|x| self.convert(x, pos)).collect();
                ExprKind::In {
                    expr: expr?,
                    list: list.into_iter().collect::<Option<Vec<_>>>()?,
                    negated: *negated,
                }
            }
            E::Between {
                expr,
                negated,
                low,
                high,
            } => {
                let expr = self.boxed(expr, pos);
                let (low, high) = self.pair(low, high, pos)?;
                ExprKind::Between {
                    expr: expr?,
                    low,
                    high,
                    negated: *negated,
                }
            }
            E::Like {
                negated,
                any,
                expr,
                pattern,
                escape_char,
            }
            | E::ILike {
                negated,
                any,
                expr,
                pattern,
                escape_char,
            } => {
                if *any {
                    return self.unsupported(pos, "LIKE ANY".into());
                }
                let (expr, pattern) = self.pair(expr, pattern, pos)?;
                let escape = match escape_char {
                    Some(x) => Some(self.boxed(x, pos)?),
                    None => None,
                };
                ExprKind::Like {
                    expr,
                    pattern,
                    escape,
                    negated: *negated,
                    case_insensitive: matches!(e, E::ILike { .. }),
                }
            }
            E::Cast {
                kind,
                expr,
                data_type,
                format,
            } => {
                if !matches!(kind, sql::CastKind::Cast | sql::CastKind::DoubleColon)
                    || format.is_some()
                {
                    return self.unsupported(pos, format!("`{e}`"));
                }
                let inner = self.boxed(expr, pos);
                let to = match type_name(data_type) {
                    Ok(t) => t,
                    Err(msg) => {
                        self.errors.push((pos, msg));
                        return None;
                    }
                };
                ExprKind::Cast { expr: inner?, to }
            }
            E::TypedString(t) => {
                let text = match &t.value.value {
                    sql::Value::SingleQuotedString(s) | sql::Value::EscapedStringLiteral(s) => {
                        s.clone()
                    }
                    other => return self.unsupported(pos, format!("the literal `{other}`")),
                };
                let to = match type_name(&t.data_type) {
                    Ok(t) => t,
                    Err(msg) => {
                        self.errors.push((pos, msg));
                        return None;
                    }
                };
                ExprKind::Cast {
                    expr: Box::new(Expr {
                        kind: ExprKind::Str(text),
                        pos,
                    }),
                    to,
                }
            }
            E::InSubquery {
                expr,
                subquery,
                negated,
            } => {
                if *negated {
                    self.errors.push((
                        pos,
                        "NOT IN (SELECT …) is not supported in a shape filter: a row's buckets \
                         cannot depend on rows that do not exist. Keep the exclusion in the \
                         membership table instead (e.g. `x IN (SELECT … WHERE NOT hidden AND \
                         user_id = auth.sub)`)"
                            .to_string(),
                    ));
                    return None;
                }
                let expr = self.boxed(expr, pos);
                let query = self.subquery(subquery, pos);
                ExprKind::InSubquery {
                    expr: expr?,
                    query: Box::new(query?),
                }
            }
            E::Exists { .. } => {
                return self.unsupported(
                    pos,
                    "EXISTS (…) (write `column IN (SELECT column FROM table WHERE …)`)".into(),
                );
            }
            E::Subquery(_) => {
                return self.unsupported(
                    pos,
                    "a scalar subquery (write `column IN (SELECT column FROM table WHERE …)`)"
                        .into(),
                );
            }
            other => return self.unsupported(pos, construct_name(other)),
        };
        Some(Expr { kind, pos })
    }
}
