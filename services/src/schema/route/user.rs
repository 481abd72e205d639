//! The buckets of a user: token claims and request parameters resolve
//! here; memberships resolve against the store's membership index.
//!
//! [`CompiledSchema::user_buckets`] turns the token into *selectors*, one
//! string per grant of each selected definition:
//! - a bucket name, when the grant's keys all come from claims;
//! - a membership selector `@{m}:{h}:{t}:{head}{tail}{user_key}` otherwise,
//!   where `m` is the membership, `head` and `tail` (of `h` and `t` bytes)
//!   surround the key element that membership provides, and `user_key` is
//!   the user's key in the membership index. A bucket name never starts
//!   with `@`.
//!
//! [`CompiledSchema::expand_selectors`] replaces membership selectors by
//! the bucket names the membership index gives (inside one store read, so
//! that the set matches the data it is sent with), and
//! [`CompiledSchema::narrow`] keeps, of shapes requested with parameters,
//! only the buckets whose keys equal them: a parameter can only narrow what
//! the token allows.

use std::collections::{HashMap, HashSet};

use outpost_proto::v1::ShapeRequest;
use serde_json::Map;

use super::{bucket_name, key_elem, key_value};
use crate::schema::compile::{CompiledSchema, KeySource};
use crate::schema::datum::{self, Datum};
use crate::schema::error::ShapeRequestError;
use crate::schema::types::SqlType;

/// A shape request whose parameters do not fit the shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("unknown shape `{name}`; known shapes: {}", known.join(", "))]
    UnknownShape { name: String, known: Vec<String> },
    #[error("shape `{shape}` takes no parameters, but the request passes `{name}`")]
    NoParams { shape: String, name: String },
    #[error("shape `{shape}` has no parameter `{name}`; its parameters: {}", known.join(", "))]
    UnknownParam {
        shape: String,
        name: String,
        known: Vec<String>,
    },
    #[error("shape `{shape}` needs the parameter `{name}` (pass it in the shape request's params)")]
    MissingParam { shape: String, name: String },
    #[error("parameter `{name}` of shape `{shape}`: {value:?} is not a valid {ty}")]
    BadParam {
        shape: String,
        name: String,
        value: String,
        ty: String,
    },
}

/// Converts a token claim to a value of a column's type, like the string
/// form of the claim would be read by the type's input function; numbers and
/// booleans convert to numeric, integer and text columns as their JSON text.
fn claim_datum(ty: &SqlType, claim: &serde_json::Value) -> Option<Datum> {
    use serde_json::Value as J;
    match (claim, ty) {
        (J::String(s), _) => datum::parse_input(ty, s).ok(),
        (J::Number(n), SqlType::Int(w)) => {
            let i = n.as_i64()?;
            let (lo, hi) = w.range();
            (lo..=hi).contains(&i).then_some(Datum::Int(i))
        }
        (J::Number(n), SqlType::Numeric) => datum::parse_numeric(&n.to_string())
            .ok()
            .map(Datum::Numeric),
        (J::Number(n), SqlType::Text(_)) => Some(Datum::Text(n.to_string())),
        (J::Bool(b), SqlType::Bool) => Some(Datum::Bool(*b)),
        (J::Bool(b), SqlType::Text(_)) => Some(Datum::Text(b.to_string())),
        _ => None,
    }
}

fn lookup<'a>(
    claims: &'a Map<String, serde_json::Value>,
    path: &[String],
) -> Option<&'a serde_json::Value> {
    let (first, rest) = path.split_first()?;
    let mut v = claims.get(first)?;
    for part in rest {
        v = v.as_object()?.get(part)?;
    }
    Some(v)
}

/// Reads the membership index: `(membership, user key)` → key elements.
pub type MemberLookup<'a, E> = dyn FnMut(usize, &str) -> Result<Vec<String>, E> + 'a;

/// The `(key position, element)` pairs a narrowed definition's buckets
/// must have.
type Fixed = Vec<(usize, String)>;

/// A parsed membership selector.
struct MemberSelector<'a> {
    membership: usize,
    head: &'a str,
    tail: &'a str,
    user_key: &'a str,
}

fn parse_selector(s: &str) -> Option<MemberSelector<'_>> {
    let rest = s.strip_prefix('@')?;
    let (m, rest) = rest.split_once(':')?;
    let (h, rest) = rest.split_once(':')?;
    let (t, rest) = rest.split_once(':')?;
    let (h, t): (usize, usize) = (h.parse().ok()?, t.parse().ok()?);
    Some(MemberSelector {
        membership: m.parse().ok()?,
        head: rest.get(..h)?,
        tail: rest.get(h..h.checked_add(t)?)?,
        user_key: rest.get(h + t..)?,
    })
}

/// Splits the elements of a key string's inside (`1,"a,b",null`) at the
/// commas outside quoted strings.
fn split_elems(inside: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut in_string, mut escaped) = (0, false, false);
    for (i, c) in inside.char_indices() {
        match (in_string, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => in_string = false,
            (false, _, '"') => in_string = true,
            (false, _, ',') => {
                out.push(&inside[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if !inside.is_empty() {
        out.push(&inside[start..]);
    }
    out
}

/// A bucket name's definition index and key elements.
fn parse_bucket(name: &str, shape: &str) -> Option<(usize, Vec<String>)> {
    let rest = name.strip_prefix(shape)?.strip_prefix('#')?;
    let open = rest.find('[')?;
    let def = rest[..open].parse().ok()?;
    let inside = rest[open + 1..].strip_suffix(']')?;
    Some((
        def,
        split_elems(inside)
            .into_iter()
            .map(str::to_string)
            .collect(),
    ))
}

impl CompiledSchema {
    fn select_shapes(&self, shapes: &[String]) -> Result<Vec<usize>, ShapeRequestError> {
        if shapes.is_empty() {
            return Ok((0..self.shapes.len())
                .filter(|&i| self.shapes[i].default)
                .collect());
        }
        let mut selected = Vec::with_capacity(shapes.len());
        for name in shapes {
            let Some(i) = self.shapes.iter().position(|s| s.name == *name) else {
                return Err(ShapeRequestError::UnknownShape {
                    name: name.clone(),
                    known: self.shapes.iter().map(|s| s.name.clone()).collect(),
                });
            };
            if !selected.contains(&i) {
                selected.push(i);
            }
        }
        Ok(selected)
    }

    /// The key element of a JSON value matched against `column` of `table`.
    fn value_elem(&self, table: usize, column: usize, value: &serde_json::Value) -> Option<String> {
        let (kind, ty) = self.param_kind(table, column)?;
        let v = key_value(kind, ty, &claim_datum(ty, value)?)?;
        Some(key_elem(&v))
    }

    /// The user's key element for a claim matched against `column` of `table`.
    fn claim_elem(
        &self,
        table: usize,
        column: usize,
        claims: &Map<String, serde_json::Value>,
        path: &[String],
    ) -> Option<String> {
        self.value_elem(table, column, lookup(claims, path)?)
    }

    /// The selectors of a user's buckets (see the module docs): of the named
    /// shapes, or of the default ones when `shapes` is empty. Shapes keyed
    /// by claims alone give plain bucket names.
    pub fn user_buckets(
        &self,
        shapes: &[String],
        claims: &Map<String, serde_json::Value>,
    ) -> Result<Vec<String>, ShapeRequestError> {
        let mut out = Vec::new();
        for i in self.select_shapes(shapes)? {
            let shape = &self.shapes[i];
            for (d, def) in shape.buckets.iter().enumerate() {
                'grant: for grant in &def.grants {
                    let mut elems = Vec::with_capacity(def.params.len());
                    let mut member = None;
                    for (p, source) in def.params.iter().zip(grant) {
                        match source {
                            KeySource::Claim(path) => {
                                match self.claim_elem(shape.table, p.column, claims, path) {
                                    Some(e) => elems.push(e),
                                    None => continue 'grant,
                                }
                            }
                            KeySource::Membership(m) => {
                                let def = &self.memberships[*m];
                                let Some(user) =
                                    self.claim_elem(def.table, def.user_column, claims, &def.claim)
                                else {
                                    continue 'grant;
                                };
                                member = Some((*m, elems.len(), format!("[{user}]")));
                            }
                        }
                    }
                    let selector = match member {
                        None => bucket_name(&shape.name, d, &elems),
                        Some((m, at, user_key)) => {
                            let name = bucket_name(&shape.name, d, &elems);
                            // Where the membership's element goes.
                            let mut head = format!("{}#{d}[", shape.name);
                            head.push_str(&elems[..at].join(","));
                            if at > 0 {
                                head.push(',');
                            }
                            let mut tail = String::new();
                            if at < elems.len() {
                                tail.push(',');
                            }
                            tail.push_str(&elems[at..].join(","));
                            tail.push(']');
                            debug_assert!(name.len() + 1 >= head.len() + tail.len());
                            format!("@{m}:{}:{}:{head}{tail}{user_key}", head.len(), tail.len())
                        }
                    };
                    if !out.contains(&selector) {
                        out.push(selector);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The membership index lookups a user's selectors need:
    /// `(membership, user key)`.
    pub fn selector_keys(&self, selectors: &[String]) -> Vec<(usize, String)> {
        let mut out: Vec<(usize, String)> = selectors
            .iter()
            .filter_map(|s| parse_selector(s))
            .map(|m| (m.membership, m.user_key.to_string()))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The bucket names of a user's selectors: `members(m, user_key)` gives
    /// the key elements membership `m` grants that user. Order is kept and
    /// duplicates are dropped.
    pub fn expand_selectors<E>(
        &self,
        selectors: &[String],
        members: &mut MemberLookup<'_, E>,
    ) -> Result<Vec<String>, E> {
        let mut out = Vec::with_capacity(selectors.len());
        let mut seen = HashSet::new();
        for s in selectors {
            match parse_selector(s) {
                None => {
                    if seen.insert(s.clone()) {
                        out.push(s.clone());
                    }
                }
                Some(sel) => {
                    for elem in members(sel.membership, sel.user_key)? {
                        let name = format!("{}{elem}{}", sel.head, sel.tail);
                        if seen.insert(name.clone()) {
                            out.push(name);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Keeps, of the shapes requested with parameters, the buckets whose
    /// keys equal them (a shape requested several times keeps the buckets
    /// of each request). Checks the requests' parameters even when `names`
    /// is empty.
    pub fn narrow(
        &self,
        names: Vec<String>,
        requests: &[ShapeRequest],
    ) -> Result<Vec<String>, RequestError> {
        // Per narrowed shape: for each request, per definition, the
        // `(key position, element)` pairs a bucket must match.
        let mut wanted: HashMap<&str, Vec<Vec<Fixed>>> = HashMap::new();
        for r in requests {
            let Some(shape) = self.shapes.iter().find(|s| s.name == r.name) else {
                return Err(RequestError::UnknownShape {
                    name: r.name.clone(),
                    known: self.shapes.iter().map(|s| s.name.clone()).collect(),
                });
            };
            let mut declared: Vec<&str> = shape
                .buckets
                .iter()
                .flat_map(|d| d.client_params.iter().map(|(_, n)| n.as_str()))
                .collect();
            declared.sort_unstable();
            declared.dedup();
            let mut given: Vec<&String> = r.params.keys().collect();
            given.sort();
            if let Some(name) = given.first()
                && declared.is_empty()
            {
                return Err(RequestError::NoParams {
                    shape: shape.name.clone(),
                    name: (*name).clone(),
                });
            }
            for name in given {
                if !declared.contains(&name.as_str()) {
                    return Err(RequestError::UnknownParam {
                        shape: shape.name.clone(),
                        name: name.clone(),
                        known: declared.iter().map(|s| s.to_string()).collect(),
                    });
                }
            }
            if declared.is_empty() {
                continue;
            }
            let mut per_def = Vec::with_capacity(shape.buckets.len());
            for def in &shape.buckets {
                let mut fixed = Vec::new();
                for (p, name) in &def.client_params {
                    let Some(value) = r.params.get(name) else {
                        return Err(RequestError::MissingParam {
                            shape: shape.name.clone(),
                            name: name.clone(),
                        });
                    };
                    let column = def.params[*p].column;
                    let elem = self.value_elem(
                        shape.table,
                        column,
                        &serde_json::Value::String(value.clone()),
                    );
                    let Some(elem) = elem else {
                        return Err(RequestError::BadParam {
                            shape: shape.name.clone(),
                            name: name.clone(),
                            value: value.clone(),
                            ty: self.tables[shape.table].columns[column].type_name.clone(),
                        });
                    };
                    fixed.push((*p, elem));
                }
                per_def.push(fixed);
            }
            wanted.entry(shape.name.as_str()).or_default().push(per_def);
        }
        if wanted.is_empty() {
            return Ok(names);
        }
        Ok(names
            .into_iter()
            .filter(|name| {
                let shape = name.split('#').next().unwrap_or_default();
                let Some(requests) = wanted.get(shape) else {
                    return true;
                };
                let Some((def, elems)) = parse_bucket(name, shape) else {
                    return false;
                };
                requests.iter().any(|per_def| {
                    per_def.get(def).is_some_and(|fixed| {
                        fixed
                            .iter()
                            .all(|(p, e)| elems.get(*p).is_some_and(|x| x == e))
                    })
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_and_keys_parse() {
        let s = r#"@3:8:3:todos#0[,1]["al:ice"]"#;
        let m = parse_selector(s).expect("selector");
        assert_eq!(
            (m.membership, m.head, m.tail, m.user_key),
            (3, "todos#0[", ",1]", r#"["al:ice"]"#)
        );
        assert!(parse_selector("todos#0[1]").is_none());
        assert!(parse_selector("@1:99:0:x").is_none());
        assert_eq!(
            split_elems(r#"1,"a,\"b",null"#),
            ["1", r#""a,\"b""#, "null"]
        );
        assert!(split_elems("").is_empty());
        assert_eq!(
            parse_bucket(r#"s#12[1,"x"]"#, "s"),
            Some((12, vec!["1".to_string(), r#""x""#.to_string()]))
        );
        assert_eq!(parse_bucket("s#0[]", "s"), Some((0, vec![])));
        assert_eq!(parse_bucket("st#0[]", "s"), None);
    }
}
