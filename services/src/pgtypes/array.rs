//! Postgres array literals (`{1,2,NULL}`, `{"a b","c\"d"}`, `{{1,2},{3,4}}`,
//! `[0:1]={1,2}`) → a JSON array of converted elements.
//!
//! Invariants: an unquoted `NULL` (any case) is SQL NULL and becomes `null`,
//! a quoted `"NULL"` is the text; nesting is kept, lower bounds are dropped;
//! nesting deeper than [`MAX_DEPTH`] is refused rather than recursed into.

use super::{ConvertError, TypeKind, parse_bool, parse_bytea, parse_float, to_value};
use outpost_proto::v1::value::Kind;
use serde_json::Value as Json;

/// Postgres allows 6 dimensions; anything far deeper is not an array it printed.
const MAX_DEPTH: usize = 64;

/// Converts the text form of an array of `element` to JSON text.
pub(super) fn array_json(element: &TypeKind, text: &str) -> Result<String, ConvertError> {
    let kind = TypeKind::Array(Box::new(element.clone()));
    let fail = |reason: String| ConvertError::new(&kind, text, reason);
    let mut parser = Parser { text, pos: 0 };
    let tree = parser
        .literal(&|s: &str| element_json(element, s))
        .map_err(fail)?;
    serde_json::to_string(&tree).map_err(|e| fail(e.to_string()))
}

/// One array element (already unquoted) as JSON.
fn element_json(kind: &TypeKind, text: &str) -> Result<Json, String> {
    match kind {
        TypeKind::Bool => parse_bool(text).map(Json::Bool),
        TypeKind::Float => Ok(match parse_float(text)? {
            Some(f) => serde_json::Number::from_f64(f)
                .map(Json::Number)
                .unwrap_or_else(|| Json::String(text.to_string())),
            None => Json::String("NaN".to_string()),
        }),
        TypeKind::Bytea => {
            parse_bytea(text).map(|b| Json::String(format!("\\x{}", hex::encode(b))))
        }
        _ => {
            let value =
                to_value(kind, text).map_err(|e| format!("element {text:?}: {}", e.reason))?;
            Ok(match value.kind {
                Some(Kind::Integer(i)) => Json::from(i),
                Some(Kind::Real(f)) => serde_json::Number::from_f64(f)
                    .map(Json::Number)
                    .unwrap_or_else(|| Json::String(text.to_string())),
                Some(Kind::Text(s)) => Json::String(s),
                Some(Kind::Blob(b)) => Json::String(format!("\\x{}", hex::encode(b))),
                Some(Kind::Null(_)) | None => Json::Null,
            })
        }
    }
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

type Convert<'f> = dyn Fn(&str) -> Result<Json, String> + 'f;

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(is_array_space) {
            self.bump();
        }
    }

    fn expect(&mut self, want: char) -> Result<(), String> {
        match self.bump() {
            Some(c) if c == want => Ok(()),
            Some(c) => Err(format!(
                "expected {want:?} at byte {}, found {c:?}",
                self.pos - c.len_utf8()
            )),
            None => Err(format!("expected {want:?}, found the end")),
        }
    }

    /// The whole literal: optional dimensions, the outer braces, nothing after.
    fn literal(&mut self, convert: &Convert<'_>) -> Result<Json, String> {
        self.skip_space();
        if self.peek() == Some('[') {
            self.dimensions()?;
        }
        self.skip_space();
        self.expect('{')?;
        let tree = self.list(convert, 1)?;
        self.skip_space();
        if self.pos != self.text.len() {
            return Err(format!(
                "unexpected text after the array at byte {}",
                self.pos
            ));
        }
        Ok(tree)
    }

    /// `[lo:hi][lo:hi]…=`; the bounds are checked for form and dropped.
    fn dimensions(&mut self) -> Result<(), String> {
        while self.peek() == Some('[') {
            self.bump();
            let close = self.text[self.pos..]
                .find(']')
                .ok_or("unterminated array dimension")?;
            let spec = &self.text[self.pos..self.pos + close];
            let bound = |s: &str| s.trim().parse::<i64>().is_ok();
            let ok = match spec.split_once(':') {
                Some((lo, hi)) => bound(lo) && bound(hi),
                None => bound(spec),
            };
            if !ok {
                return Err(format!("bad array dimension [{spec}]"));
            }
            self.pos += close + 1;
        }
        self.skip_space();
        self.expect('=')
    }

    /// The items of a `{…}` whose opening brace was consumed.
    fn list(&mut self, convert: &Convert<'_>, depth: usize) -> Result<Json, String> {
        if depth > MAX_DEPTH {
            return Err(format!("arrays nested deeper than {MAX_DEPTH} levels"));
        }
        let mut items = Vec::new();
        self.skip_space();
        if self.peek() == Some('}') {
            self.bump();
            return Ok(Json::Array(items));
        }
        loop {
            self.skip_space();
            let item = match self.peek() {
                Some('{') => {
                    self.bump();
                    self.list(convert, depth + 1)?
                }
                Some('"') => {
                    self.bump();
                    let s = self.quoted()?;
                    convert(&s)?
                }
                Some(_) => match self.unquoted()? {
                    None => Json::Null,
                    Some(s) => convert(&s)?,
                },
                None => return Err("unterminated array".into()),
            };
            items.push(item);
            self.skip_space();
            match self.bump() {
                Some(',') => {}
                Some('}') => return Ok(Json::Array(items)),
                Some(c) => {
                    return Err(format!(
                        "expected ',' or '}}' at byte {}, found {c:?}",
                        self.pos - c.len_utf8()
                    ));
                }
                None => return Err("unterminated array".into()),
            }
        }
    }

    /// A `"…"` element whose opening quote was consumed; `\x` stands for `x`.
    fn quoted(&mut self) -> Result<String, String> {
        let mut out = String::new();
        loop {
            match self.bump() {
                Some('"') => return Ok(out),
                Some('\\') => out.push(self.bump().ok_or("unterminated quoted element")?),
                Some(c) => out.push(c),
                None => return Err("unterminated quoted element".into()),
            }
        }
    }

    /// An unquoted element, `None` for NULL. Trailing unescaped spaces are not part of it.
    fn unquoted(&mut self) -> Result<Option<String>, String> {
        let mut out = String::new();
        let mut escaped = false;
        // Length of `out` up to its last escaped or non-space character.
        let mut keep = 0;
        loop {
            match self.peek() {
                Some(',' | '}') | None => break,
                Some(c @ ('{' | '"')) => {
                    return Err(format!(
                        "unexpected {c:?} in an unquoted element at byte {}",
                        self.pos
                    ));
                }
                Some('\\') => {
                    self.bump();
                    out.push(self.bump().ok_or("unterminated escape")?);
                    escaped = true;
                    keep = out.len();
                }
                Some(c) => {
                    self.bump();
                    out.push(c);
                    if !is_array_space(c) {
                        keep = out.len();
                    }
                }
            }
        }
        out.truncate(keep);
        if out.is_empty() && !escaped {
            return Err(format!("empty unquoted element at byte {}", self.pos));
        }
        if !escaped && out.eq_ignore_ascii_case("NULL") {
            return Ok(None);
        }
        Ok(Some(out))
    }
}

/// The white space Postgres' array parser skips (`array_isspace`).
fn is_array_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{b}' | '\u{c}')
}
