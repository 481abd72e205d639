//! Routing rows to buckets, the membership index and link index entries of
//! a row, and (in [`user`]) the buckets of a user.
//!
//! Both sides name a bucket the same way: `{shape}#{def}{key}`, where `key`
//! is `outpost_proto::key_string` of the key values converted with
//! `pgtypes::to_value` from their canonical text (the form Postgres prints,
//! with equal values printing equally: `1.50` and `1.5` are one numeric key,
//! `character(n)` padding is dropped). A row takes its values from its
//! columns — through hops, from its parents' columns — and a user from its
//! token claims or the membership index.
//!
//! Invariants: a row whose key column is NULL, whose parent is missing or
//! whose parent's hop condition is not TRUE is in no bucket of that
//! definition; a user whose claim is missing, null or not convertible to the
//! column's type gets no bucket for that grant, never an error. A row's
//! buckets depend only on its own values and those of the parents its hops
//! reach, which the ingest re-routes it after (see the link index).

mod user;

use outpost_proto::key_string;
use outpost_proto::v1::Value;

use super::compile::CompiledSchema;
use super::datum::{self, Datum};
use super::eval::RowValues;
use super::types::SqlType;
use crate::pgtypes::{self, TypeKind};
use crate::store::TextRow;

/// A bucket's name from its key elements (see [`key_elem`]).
pub(crate) fn bucket_name(shape: &str, def: usize, elems: &[String]) -> String {
    let def = def.to_string();
    let len = shape.len() + def.len() + 3 + elems.iter().map(|e| e.len() + 1).sum::<usize>();
    let mut name = String::with_capacity(len);
    name.push_str(shape);
    name.push('#');
    name.push_str(&def);
    name.push('[');
    for (i, e) in elems.iter().enumerate() {
        if i > 0 {
            name.push(',');
        }
        name.push_str(e);
    }
    name.push(']');
    name
}

/// How many definitions' last bucket names a [`RouteMemo`] keeps.
const MEMO_SIZE: usize = 16;

/// The last bucket names routing gave, for definitions whose key comes from
/// the row's own columns (no hops): such a name is a function of the
/// definition and the key columns' text alone, and consecutive changes often
/// share it (the same owner, the same list). Belongs to one schema: keep one
/// per [`CompiledSchema`].
#[derive(Debug, Default)]
pub struct RouteMemo {
    entries: Vec<MemoEntry>,
    /// The entry to replace next.
    next: usize,
}

#[derive(Debug)]
struct MemoEntry {
    /// `(table, shape, definition)`.
    def: (usize, usize, usize),
    /// The key columns' text, in parameter order.
    texts: Vec<String>,
    /// The bucket, or None when a key value does not convert.
    name: Option<String>,
}

impl RouteMemo {
    fn find(&self, def: (usize, usize, usize), texts: &[&str]) -> Option<&Option<String>> {
        self.entries
            .iter()
            .find(|e| e.def == def && e.texts.iter().map(String::as_str).eq(texts.iter().copied()))
            .map(|e| &e.name)
    }

    fn remember(&mut self, def: (usize, usize, usize), texts: &[&str], name: Option<String>) {
        let entry = MemoEntry {
            def,
            texts: texts.iter().map(|t| t.to_string()).collect(),
            name,
        };
        if self.entries.len() < MEMO_SIZE {
            self.entries.push(entry);
        } else {
            self.entries[self.next] = entry;
            self.next = (self.next + 1) % MEMO_SIZE;
        }
    }
}

/// One value as it appears inside a key string: `key_string(&[v])` without
/// its brackets, so that `[` + elements joined by `,` + `]` is the key
/// string of the values.
pub(crate) fn key_elem(v: &Value) -> String {
    let s = key_string(std::slice::from_ref(v));
    s.get(1..s.len().saturating_sub(1))
        .unwrap_or_default()
        .to_string()
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

/// A row's entry in the membership index: through membership `membership`,
/// users whose claim gives `user_key` get the key element `key`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberEntry {
    /// Index into [`CompiledSchema::memberships`].
    pub membership: usize,
    pub user_key: String,
    pub key: String,
}

/// A row's entry in the link index: through hop source `source` (index into
/// the compiled hop sources) it reaches the parent row with mirror key
/// `parent`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkEntry {
    pub source: usize,
    pub parent: String,
}

/// Reads a parent row from the mirror: `(table index, mirror key)`.
pub type ParentLookup<'a, E> = dyn FnMut(usize, &str) -> Result<Option<TextRow>, E> + 'a;

impl CompiledSchema {
    /// The index in `tables` of a table, by schema and name.
    pub fn table_index(&self, schema: &str, name: &str) -> Option<usize> {
        self.tables
            .iter()
            .position(|t| t.schema == schema && t.name == name)
    }

    pub(crate) fn param_kind(&self, table: usize, column: usize) -> Option<(&TypeKind, &SqlType)> {
        let kind = self.tables.get(table)?.columns.get(column)?.kind.as_ref()?;
        let ty = self.column_types.get(table)?.get(column)?;
        Some((kind, ty))
    }

    /// The canonical key element of a column's value (`None` for NULL).
    fn elem_of(&self, table: usize, column: usize, values: &RowValues<'_>) -> Option<String> {
        let (kind, ty) = self.param_kind(table, column)?;
        let v = values.get(column).and_then(|d| key_value(kind, ty, d))?;
        Some(key_elem(&v))
    }

    /// The mirror key of the `table` row whose single-column primary key
    /// Postgres prints as `text`.
    pub(crate) fn parent_key(&self, table: usize, text: &str) -> Option<String> {
        let t = self.tables.get(table)?;
        let [pk] = t.primary_key.as_slice() else {
            return None;
        };
        let kind = t.columns.get(*pk)?.kind.as_ref()?;
        let v = pgtypes::to_value(kind, text).ok()?;
        Some(key_string(std::slice::from_ref(&v)))
    }

    fn row_ok(&self, table: usize, row: &[Option<&str>]) -> bool {
        let Some(types) = self.column_types.get(table) else {
            return false;
        };
        if row.len() != types.len() {
            tracing::warn!(
                table = %self.tables[table].name,
                expected = types.len(),
                got = row.len(),
                "row has the wrong number of columns; not routed"
            );
            return false;
        }
        true
    }

    /// Appends the buckets a row version belongs to. `row` holds the
    /// Postgres text form of every column of `tables[table].columns`, in
    /// order (`None` = NULL). Definitions that reach their key through a
    /// parent row need [`CompiledSchema::route_with`]; here they route nowhere.
    pub fn route(&self, table: usize, row: &[Option<&str>], out: &mut Vec<String>) {
        let mut none = |_: usize, _: &str| Ok::<_, std::convert::Infallible>(None);
        let Ok(()) = self.route_with(table, row, &mut none, out);
    }

    /// As [`CompiledSchema::route`], reading parent rows with `parent`.
    pub fn route_with<E>(
        &self,
        table: usize,
        row: &[Option<&str>],
        parent: &mut ParentLookup<'_, E>,
        out: &mut Vec<String>,
    ) -> Result<(), E> {
        self.route_memo(table, row, parent, &mut RouteMemo::default(), out)
    }

    /// As [`CompiledSchema::route_with`], remembering recent bucket names in
    /// `memo` (which must only ever be used with this schema).
    pub fn route_memo<E>(
        &self,
        table: usize,
        row: &[Option<&str>],
        parent: &mut ParentLookup<'_, E>,
        memo: &mut RouteMemo,
        out: &mut Vec<String>,
    ) -> Result<(), E> {
        if !self.row_ok(table, row) {
            return Ok(());
        }
        let types = &self.column_types[table];
        let values = RowValues::new(row, types);
        let mut texts: Vec<&str> = Vec::new();
        'def: for &(s, b) in &self.routes[table] {
            let shape = &self.shapes[s];
            let def = &shape.buckets[b];
            if !def.filter.as_ref().is_none_or(|f| f.is_true(&values)) {
                continue;
            }
            // A key read from the row alone: look for it in the memo.
            texts.clear();
            for p in &def.params {
                match row.get(p.column).copied().flatten() {
                    Some(t) if p.hops.is_empty() => texts.push(t),
                    Some(_) => break,
                    None => continue 'def,
                }
            }
            let from_row = texts.len() == def.params.len();
            if from_row && let Some(name) = memo.find((table, s, b), &texts) {
                out.extend(name.iter().cloned());
                continue;
            }
            let name = self.def_bucket(table, row, &values, s, b, parent)?;
            if from_row {
                memo.remember((table, s, b), &texts, name.clone());
            }
            out.extend(name);
        }
        Ok(())
    }

    /// The bucket of definition `b` of shape `s` a row (whose filter is TRUE)
    /// is in, if any.
    fn def_bucket<E>(
        &self,
        table: usize,
        row: &[Option<&str>],
        values: &RowValues<'_>,
        s: usize,
        b: usize,
        parent: &mut ParentLookup<'_, E>,
    ) -> Result<Option<String>, E> {
        let shape = &self.shapes[s];
        let def = &shape.buckets[b];
        let mut key = Vec::with_capacity(def.params.len());
        for p in &def.params {
            if p.hops.is_empty() {
                match self.elem_of(table, p.column, values) {
                    Some(e) => key.push(e),
                    None => return Ok(None),
                }
                continue;
            }
            let (mut from_table, mut text) = match row.get(p.column).copied().flatten() {
                Some(t) => (table, t.to_string()),
                None => return Ok(None),
            };
            let mut last: Option<(usize, usize, TextRow)> = None;
            for hop in &p.hops {
                let Some(key) = self.parent_key(hop.table, &text) else {
                    tracing::debug!(table = from_table, "hop value does not convert");
                    return Ok(None);
                };
                let Some(parent_row) = parent(hop.table, &key)? else {
                    return Ok(None);
                };
                let refs = parent_row.as_refs();
                if !self.row_ok(hop.table, &refs) {
                    return Ok(None);
                }
                let pv = RowValues::new(&refs, &self.column_types[hop.table]);
                if !hop.filter.as_ref().is_none_or(|f| f.is_true(&pv)) {
                    return Ok(None);
                }
                let Some(next) = refs.get(hop.next).copied().flatten() else {
                    return Ok(None);
                };
                text = next.to_string();
                from_table = hop.table;
                last = Some((hop.table, hop.next, parent_row));
            }
            let Some((t, column, parent_row)) = last else {
                return Ok(None);
            };
            let refs = parent_row.as_refs();
            let pv = RowValues::new(&refs, &self.column_types[t]);
            match self.elem_of(t, column, &pv) {
                Some(e) => key.push(e),
                None => return Ok(None),
            }
        }
        Ok(Some(bucket_name(&shape.name, b, &key)))
    }

    /// Whether rows of `table` give membership index entries.
    pub(crate) fn has_memberships(&self, table: usize) -> bool {
        self.member_routes.get(table).is_some_and(|m| !m.is_empty())
    }

    /// The membership index entries of a row version of `table`.
    pub fn member_entries(&self, table: usize, row: &[Option<&str>]) -> Vec<MemberEntry> {
        let mut out = Vec::new();
        if !self.has_memberships(table) || !self.row_ok(table, row) {
            return out;
        }
        let values = RowValues::new(row, &self.column_types[table]);
        for &m in &self.member_routes[table] {
            let def = &self.memberships[m];
            if !def.filter.as_ref().is_none_or(|f| f.is_true(&values)) {
                continue;
            }
            let (Some(user), Some(key)) = (
                self.elem_of(table, def.user_column, &values),
                self.elem_of(table, def.select, &values),
            ) else {
                continue;
            };
            out.push(MemberEntry {
                membership: m,
                user_key: format!("[{user}]"),
                key,
            });
        }
        out.sort();
        out.dedup();
        out
    }

    /// The link index entries of a row version of `table`: the parents its
    /// hop columns reach.
    pub fn link_entries(&self, table: usize, row: &[Option<&str>]) -> Vec<LinkEntry> {
        let mut out = Vec::new();
        if !self.row_ok(table, row) {
            return out;
        }
        for (i, s) in self.hop_sources.iter().enumerate() {
            if s.table != table {
                continue;
            }
            let Some(text) = row.get(s.column).copied().flatten() else {
                continue;
            };
            if let Some(parent) = self.parent_key(s.parent, text) {
                out.push(LinkEntry { source: i, parent });
            }
        }
        out
    }

    /// The hop sources whose parent table is `table`: the indexes to look
    /// up its children with.
    pub fn child_sources(&self, table: usize) -> Vec<usize> {
        (0..self.hop_sources.len())
            .filter(|&i| self.hop_sources[i].parent == table)
            .collect()
    }

    /// The table (index) of a hop source's children.
    pub fn source_table(&self, source: usize) -> Option<usize> {
        self.hop_sources.get(source).map(|s| s.table)
    }

    /// What children's keys read of a row of `table` acting as a parent:
    /// for each hop through it, whether its condition is TRUE and the value
    /// it continues with. Children need re-routing only when this changes.
    pub fn parent_signature(
        &self,
        table: usize,
        row: &[Option<&str>],
    ) -> Vec<(bool, Option<String>)> {
        let Some(targets) = self.hop_targets.get(table) else {
            return Vec::new();
        };
        if targets.is_empty() || !self.row_ok(table, row) {
            return Vec::new();
        }
        let values = RowValues::new(row, &self.column_types[table]);
        targets
            .iter()
            .map(|(filter, next)| {
                let ok = filter.as_ref().is_none_or(|f| f.is_true(&values));
                (ok, row.get(*next).copied().flatten().map(str::to_string))
            })
            .collect()
    }

    /// Whether rows of `table` are parents that some hop reads.
    pub fn is_parent(&self, table: usize) -> bool {
        self.hop_targets.get(table).is_some_and(|t| !t.is_empty())
    }

    /// The longest chain of hops: how far a change can propagate down.
    pub fn max_hops(&self) -> usize {
        self.max_hops
    }
}
