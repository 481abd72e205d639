//! Routing rows to buckets, and the buckets of a user.
//!
//! Both sides name a bucket the same way: `{shape}#{branch}{key}`, where
//! `key` is `outpost_proto::key_string` of the parameter values converted
//! with `pgtypes::to_value` from their canonical text (the form Postgres
//! prints, with equal values printing equally: `1.50` and `1.5` are one
//! numeric key, `character(n)` padding is dropped). A row takes its values
//! from its columns, a user from its token claims.
//!
//! Invariants: a row whose parameter column is NULL is in no bucket of that
//! branch; a user whose claim is missing, null or not convertible to the
//! column's type gets no bucket for that branch, never an error.

use outpost_proto::v1::Value;
use serde_json::Map;

use super::compile::{BucketDef, CompiledSchema};
use super::datum::{self, Datum};
use super::error::ShapeRequestError;
use super::eval::RowValues;
use super::types::SqlType;
use crate::pgtypes::{self, TypeKind};

/// A bucket's name.
pub(crate) fn bucket_name(shape: &str, branch: usize, key: &[Value]) -> String {
    format!("{shape}#{branch}{}", outpost_proto::key_string(key))
}

/// The key value of one parameter.
fn key_value(kind: &TypeKind, ty: &SqlType, d: &Datum) -> Option<Value> {
    let text = datum::key_text(ty, d)?;
    match pgtypes::to_value(kind, &text) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(error = %e, "bucket key value does not convert");
            None
        }
    }
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

impl CompiledSchema {
    /// The index in `tables` of a table, by schema and name.
    pub fn table_index(&self, schema: &str, name: &str) -> Option<usize> {
        self.tables
            .iter()
            .position(|t| t.schema == schema && t.name == name)
    }

    fn param_kind(&self, table: usize, column: usize) -> Option<(&TypeKind, &SqlType)> {
        let kind = self.tables.get(table)?.columns.get(column)?.kind.as_ref()?;
        let ty = self.column_types.get(table)?.get(column)?;
        Some((kind, ty))
    }

    /// Appends the buckets a row version belongs to. `row` holds the
    /// Postgres text form of every column of `tables[table].columns`, in
    /// order (`None` = NULL).
    pub fn route(&self, table: usize, row: &[Option<&str>], out: &mut Vec<String>) {
        let (Some(routes), Some(types)) = (self.routes.get(table), self.column_types.get(table))
        else {
            return;
        };
        if row.len() != types.len() {
            tracing::warn!(
                table = %self.tables[table].name,
                expected = types.len(),
                got = row.len(),
                "row has the wrong number of columns; not routed"
            );
            return;
        }
        let values = RowValues::new(row, types);
        'branch: for &(s, b) in routes {
            let shape = &self.shapes[s];
            let def: &BucketDef = &shape.buckets[b];
            let mut key = Vec::with_capacity(def.params.len());
            for p in &def.params {
                let Some((kind, ty)) = self.param_kind(table, p.column) else {
                    continue 'branch;
                };
                let Some(v) = values.get(p.column).and_then(|d| key_value(kind, ty, d)) else {
                    continue 'branch;
                };
                key.push(v);
            }
            if def.filter.as_ref().is_none_or(|f| f.is_true(&values)) {
                out.push(bucket_name(&shape.name, b, &key));
            }
        }
    }

    /// The buckets of a user: of the named shapes, or of the default ones
    /// when `shapes` is empty.
    pub fn user_buckets(
        &self,
        shapes: &[String],
        claims: &Map<String, serde_json::Value>,
    ) -> Result<Vec<String>, ShapeRequestError> {
        let selected: Vec<usize> = if shapes.is_empty() {
            (0..self.shapes.len())
                .filter(|&i| self.shapes[i].default)
                .collect()
        } else {
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
            selected
        };
        let mut out = Vec::new();
        for i in selected {
            let shape = &self.shapes[i];
            'branch: for (b, def) in shape.buckets.iter().enumerate() {
                let mut key = Vec::with_capacity(def.params.len());
                for p in &def.params {
                    let Some((kind, ty)) = self.param_kind(shape.table, p.column) else {
                        continue 'branch;
                    };
                    let Some(v) = lookup(claims, &p.claim)
                        .and_then(|c| claim_datum(ty, c))
                        .and_then(|d| key_value(kind, ty, &d))
                    else {
                        continue 'branch;
                    };
                    key.push(v);
                }
                let name = bucket_name(&shape.name, b, &key);
                if !out.contains(&name) {
                    out.push(name);
                }
            }
        }
        Ok(out)
    }
}
