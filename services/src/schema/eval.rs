//! Evaluation of compiled predicates on one row, with SQL three-valued logic.
//!
//! A predicate is a tree over column indexes whose literals were parsed at
//! compile time. A row arrives as the Postgres text form of each column; a
//! column's text is parsed into a [`Datum`] only when the predicate reads
//! it, and at most once per row ([`RowValues`]).
//!
//! Invariants: NULL propagates as in Postgres (`NULL = x` is NULL, `NULL AND
//! FALSE` is FALSE, `NULL OR TRUE` is TRUE); a row is in a bucket only when
//! the predicate is TRUE. An evaluation error (what would make Postgres fail
//! the query, e.g. an out-of-range cast) makes the predicate not TRUE, unless
//! another operand of an AND (OR) already decides it FALSE (TRUE).

use std::borrow::Cow;
use std::cell::OnceCell;

use super::datum::{self, Datum, EvalError};
use super::expr::CmpOp;
use super::types::{CaseFold, SqlType};

/// One element of a `LIKE` pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum LikeTok {
    Lit(char),
    /// `_`: any one character.
    One,
    /// `%`: any sequence of characters.
    Any,
}

/// A compiled `LIKE` pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct LikePattern(Vec<LikeTok>);

/// Lower-cases one character as `fold` does.
fn fold_char(c: char, fold: CaseFold, out: &mut impl Extend<char>) {
    match fold {
        CaseFold::Ascii => out.extend([c.to_ascii_lowercase()]),
        CaseFold::Simple => out.extend(c.to_lowercase().next()),
        CaseFold::Full => out.extend(c.to_lowercase()),
    }
}

fn fold_text(s: &str, fold: CaseFold) -> String {
    match fold {
        CaseFold::Full => s.to_lowercase(),
        _ => {
            let mut out = String::with_capacity(s.len());
            for c in s.chars() {
                fold_char(c, fold, &mut out);
            }
            out
        }
    }
}

impl LikePattern {
    /// Compiles a pattern; `escape` is the escape character (`None`: none),
    /// `fold` lower-cases literal characters for `ILIKE`.
    pub(crate) fn compile(
        pattern: &str,
        escape: Option<char>,
        fold: Option<CaseFold>,
    ) -> Result<LikePattern, String> {
        let mut toks = Vec::with_capacity(pattern.len());
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            let lit = if Some(c) == escape {
                chars
                    .next()
                    .ok_or("LIKE pattern must not end with escape character")?
            } else if c == '%' {
                // Consecutive `%` are one.
                if toks.last() != Some(&LikeTok::Any) {
                    toks.push(LikeTok::Any);
                }
                continue;
            } else if c == '_' {
                toks.push(LikeTok::One);
                continue;
            } else {
                c
            };
            match fold {
                Some(f) => {
                    let mut folded = Vec::new();
                    fold_char(lit, f, &mut folded);
                    toks.extend(folded.into_iter().map(LikeTok::Lit));
                }
                None => toks.push(LikeTok::Lit(lit)),
            }
        }
        Ok(LikePattern(toks))
    }

    /// Whether `text` matches, character by character (positions in `text`
    /// are byte offsets of character boundaries: nothing is allocated).
    pub(crate) fn matches(&self, text: &str) -> bool {
        let toks = &self.0;
        let next_char = |at: usize| text[at..].chars().next();
        let (mut ti, mut pi) = (0usize, 0usize);
        // The last `%` seen and the text position it is tried from.
        let mut backtrack: Option<(usize, usize)> = None;
        while let Some(c) = next_char(ti) {
            match toks.get(pi) {
                Some(LikeTok::Any) => {
                    backtrack = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                Some(LikeTok::One) => {
                    ti += c.len_utf8();
                    pi += 1;
                    continue;
                }
                Some(LikeTok::Lit(l)) if *l == c => {
                    ti += c.len_utf8();
                    pi += 1;
                    continue;
                }
                _ => {}
            }
            match backtrack {
                Some((p, t)) => {
                    let skip = next_char(t).map_or(1, char::len_utf8);
                    pi = p + 1;
                    ti = t + skip;
                    backtrack = Some((p, t + skip));
                }
                None => return false,
            }
        }
        toks[pi.min(toks.len())..]
            .iter()
            .all(|t| *t == LikeTok::Any)
    }
}

/// A compiled predicate or value expression.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Node {
    /// A column of the table, by index.
    Column(usize),
    Const(Datum),
    Null,
    Cast {
        expr: Box<Node>,
        from: SqlType,
        to: SqlType,
    },
    Cmp {
        op: CmpOp,
        left: Box<Node>,
        right: Box<Node>,
    },
    /// `IS [NOT] DISTINCT FROM`.
    Distinct {
        left: Box<Node>,
        right: Box<Node>,
        negated: bool,
    },
    IsNull {
        expr: Box<Node>,
        negated: bool,
    },
    /// `IS [NOT] TRUE|FALSE|UNKNOWN` (`value: None` is UNKNOWN).
    IsBool {
        expr: Box<Node>,
        value: Option<bool>,
        negated: bool,
    },
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
    Like {
        expr: Box<Node>,
        pattern: LikePattern,
        negated: bool,
        /// `ILIKE`: how the text is lower-cased.
        fold: Option<CaseFold>,
    },
}

impl Node {
    /// Whether the value depends on the row.
    pub(crate) fn reads_columns(&self) -> bool {
        match self {
            Node::Column(_) => true,
            Node::Const(_) | Node::Null => false,
            Node::Cast { expr, .. }
            | Node::IsNull { expr, .. }
            | Node::IsBool { expr, .. }
            | Node::Like { expr, .. } => expr.reads_columns(),
            Node::Not(e) => e.reads_columns(),
            Node::Cmp { left, right, .. } | Node::Distinct { left, right, .. } => {
                left.reads_columns() || right.reads_columns()
            }
            Node::And(items) | Node::Or(items) => items.iter().any(Node::reads_columns),
        }
    }
}

/// The columns of one row, parsed on first use.
pub(crate) struct RowValues<'a> {
    text: &'a [Option<&'a str>],
    types: &'a [SqlType],
    parsed: Vec<OnceCell<Option<Datum>>>,
}

impl<'a> RowValues<'a> {
    /// `text` and `types` are indexed by column.
    pub(crate) fn new(text: &'a [Option<&'a str>], types: &'a [SqlType]) -> RowValues<'a> {
        RowValues {
            text,
            types,
            parsed: (0..text.len()).map(|_| OnceCell::new()).collect(),
        }
    }

    /// The value of a column; `None` for NULL (and for text that does not
    /// parse as the column's type, which Postgres never sends).
    pub(crate) fn get(&self, column: usize) -> Option<&Datum> {
        self.parsed
            .get(column)?
            .get_or_init(|| {
                let text = (*self.text.get(column)?)?;
                let ty = self.types.get(column)?;
                match datum::parse_input(ty, text) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        tracing::warn!(column, error = %e, "column value does not parse; treated as NULL");
                        None
                    }
                }
            })
            .as_ref()
    }
}

type Val<'a> = Option<Cow<'a, Datum>>;

fn truth_of(v: Val<'_>) -> Result<Option<bool>, EvalError> {
    match v.as_deref() {
        None => Ok(None),
        Some(Datum::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(EvalError(format!("{other:?} is not a boolean"))),
    }
}

fn boolean<'a>(b: Option<bool>) -> Val<'a> {
    b.map(|b| Cow::Owned(Datum::Bool(b)))
}

impl Node {
    /// Whether the predicate is TRUE for the row.
    pub(crate) fn is_true(&self, row: &RowValues<'_>) -> bool {
        matches!(self.truth(row), Ok(Some(true)))
    }

    /// The predicate's truth value (`None`: NULL).
    pub(crate) fn truth(&self, row: &RowValues<'_>) -> Result<Option<bool>, EvalError> {
        truth_of(self.eval(row)?)
    }

    pub(crate) fn eval<'a>(&'a self, row: &'a RowValues<'a>) -> Result<Val<'a>, EvalError> {
        Ok(match self {
            Node::Column(i) => row.get(*i).map(Cow::Borrowed),
            Node::Const(d) => Some(Cow::Borrowed(d)),
            Node::Null => None,
            Node::Cast { expr, from, to } => match expr.eval(row)? {
                None => None,
                Some(d) => Some(Cow::Owned(datum::cast(&d, from, to)?)),
            },
            Node::Cmp { op, left, right } => {
                // Comparisons are strict: a NULL operand makes the result
                // NULL whatever the other one would do (Postgres folds
                // `x = NULL` away before evaluating `x`).
                let l = left.eval(row);
                if matches!(l, Ok(None)) {
                    return Ok(None);
                }
                match (l, right.eval(row)) {
                    (Ok(None), _) | (_, Ok(None)) => None,
                    (Err(e), _) | (_, Err(e)) => return Err(e),
                    (Ok(Some(l)), Ok(Some(r))) => boolean(Some(op.holds(datum::compare(&l, &r)?))),
                }
            }
            Node::Distinct {
                left,
                right,
                negated,
            } => {
                let distinct = match (left.eval(row)?, right.eval(row)?) {
                    (None, None) => false,
                    (Some(l), Some(r)) => datum::compare(&l, &r)?.is_ne(),
                    _ => true,
                };
                boolean(Some(distinct != *negated))
            }
            Node::IsNull { expr, negated } => boolean(Some(expr.eval(row)?.is_none() != *negated)),
            Node::IsBool {
                expr,
                value,
                negated,
            } => {
                let t = expr.truth(row)?;
                let is = match value {
                    Some(v) => t == Some(*v),
                    None => t.is_none(),
                };
                boolean(Some(is != *negated))
            }
            Node::And(items) => boolean(Self::combine(items, row, false)?),
            Node::Or(items) => boolean(Self::combine(items, row, true)?),
            Node::Not(inner) => boolean(inner.truth(row)?.map(|b| !b)),
            Node::Like {
                expr,
                pattern,
                negated,
                fold,
            } => match expr.eval(row)?.as_deref() {
                None => None,
                Some(Datum::Text(s)) => {
                    let hit = match fold {
                        Some(f) => pattern.matches(&fold_text(s, *f)),
                        None => pattern.matches(s),
                    };
                    boolean(Some(hit != *negated))
                }
                Some(other) => return Err(EvalError(format!("LIKE on {other:?}"))),
            },
        })
    }

    /// AND (`decisive = false`) or OR (`decisive = true`) with Kleene logic:
    /// the decisive value wins over NULL and over errors of other operands.
    fn combine(
        items: &[Node],
        row: &RowValues<'_>,
        decisive: bool,
    ) -> Result<Option<bool>, EvalError> {
        let mut saw_null = false;
        let mut error = None;
        for item in items {
            match item.truth(row) {
                Ok(Some(b)) if b == decisive => return Ok(Some(decisive)),
                Ok(Some(_)) => {}
                Ok(None) => saw_null = true,
                Err(e) => error = error.or(Some(e)),
            }
        }
        match error {
            Some(e) => Err(e),
            None if saw_null => Ok(None),
            None => Ok(Some(!decisive)),
        }
    }
}
