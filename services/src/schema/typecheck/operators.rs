//! Casts and pattern matching: `x::type`, `CAST(x AS type)`, `LIKE` and
//! `ILIKE`.

use std::sync::Arc;

use super::{Checker, Typed};
use crate::schema::datum;
use crate::schema::error::Pos;
use crate::schema::eval::{LikePattern, Node};
use crate::schema::expr::{Expr, ExprKind};
use crate::schema::types::{CaseFold, EnumType, SqlType, TextKind, cast_exists};

const SUPPORTED_CASTS: &str = "boolean, smallint, integer, bigint, real, double precision, \
    numeric, text, varchar, uuid, timestamptz, timestamp, date, or an enum type of the table";

impl Checker<'_> {
    fn enum_named(&self, name: &str) -> Option<Arc<EnumType>> {
        self.table.columns.iter().find_map(|c| match &c.sql_type {
            SqlType::Enum(e) if e.name == name || c.type_name == name => Some(e.clone()),
            _ => None,
        })
    }

    pub(super) fn cast(&mut self, expr: &Expr, to: &str, pos: Pos) -> Option<Typed> {
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

    pub(super) fn like(
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
        let fold = case_insensitive.then(|| coll.as_deref().map_or(CaseFold::Ascii, |c| c.fold));
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
