//! What a row change does beyond its own buckets: the membership index
//! entries it gives, the link index entries of its hop columns, and the
//! re-routing of the rows that reach it as a parent.
//!
//! Invariants:
//! - After a change is applied, every row whose buckets depend on the changed
//!   row (its children, through hop columns, down to the longest chain of
//!   hops) has been routed again against the mirror as it now is, so the
//!   store's ops describe every row as routing the final state would.
//! - Children are re-routed only when what their keys read of the parent
//!   changed: its presence, its key, a hop condition's truth or a hop's next
//!   value ([`CompiledSchema::parent_signature`]).

use std::collections::HashSet;

use super::{IngestError, RowChanges};
use crate::store::{Placed, StoreWriter, TextRow};
use outpost_proto::v1::row_op::Kind;

/// A row version and its mirror key.
type Keyed<'a> = (&'a str, &'a TextRow);

impl RowChanges {
    /// Routes a row version, reading its parents from the mirror. `out` is
    /// left sorted and deduplicated.
    pub(super) fn route(
        &mut self,
        store: &mut StoreWriter,
        table: usize,
        row: &TextRow,
        out: &mut Vec<String>,
    ) -> Result<(), IngestError> {
        let schema = &self.schema;
        let mut parent = |t: usize, key: &str| -> Result<Option<TextRow>, IngestError> {
            let name = &schema.tables[t].client_name;
            Ok(store.mirror_get(name, key)?.map(|m| m.row))
        };
        schema.route_memo(
            table,
            &row.as_refs(),
            &mut parent,
            &mut self.route_memo,
            out,
        )?;
        out.sort();
        out.dedup();
        Ok(())
    }

    /// Updates the membership and link indexes for a change from `old` to
    /// `new` (either absent for an insert or a delete), after the mirror
    /// holds `new`, and re-routes the children whose keys it changes.
    pub(super) fn index_row(
        &mut self,
        store: &mut StoreWriter,
        table: usize,
        old: Option<Keyed<'_>>,
        new: Option<Keyed<'_>>,
    ) -> Result<(), IngestError> {
        let schema = self.schema.clone();
        if schema.has_memberships(table) {
            let entries = |v: Option<Keyed<'_>>| match v {
                Some((key, row)) => schema
                    .member_entries(table, &row.as_refs())
                    .into_iter()
                    .map(|e| (e, key.to_string()))
                    .collect(),
                None => Vec::new(),
            };
            let (before, after): (Vec<_>, Vec<_>) = (entries(old), entries(new));
            for (e, src) in before.iter().filter(|x| !after.contains(x)) {
                store.member_remove(e.membership, &e.user_key, &e.key, src)?;
            }
            for (e, src) in after.iter().filter(|x| !before.contains(x)) {
                store.member_add(e.membership, &e.user_key, &e.key, src)?;
            }
        }
        let links = |v: Option<Keyed<'_>>| match v {
            Some((key, row)) => schema
                .link_entries(table, &row.as_refs())
                .into_iter()
                .map(|l| (l, key.to_string()))
                .collect(),
            None => Vec::new(),
        };
        let (before, after): (Vec<_>, Vec<_>) = (links(old), links(new));
        for (l, child) in before.iter().filter(|x| !after.contains(x)) {
            store.link_remove(l.source, &l.parent, child)?;
        }
        for (l, child) in after.iter().filter(|x| !before.contains(x)) {
            store.link_add(l.source, &l.parent, child)?;
        }
        if !schema.is_parent(table) {
            return Ok(());
        }
        let signature = |v: Option<Keyed<'_>>| {
            v.map(|(key, row)| {
                (
                    key.to_string(),
                    schema.parent_signature(table, &row.as_refs()),
                )
            })
        };
        let (before, after) = (signature(old), signature(new));
        if before == after {
            return Ok(());
        }
        let mut parents: Vec<String> = Vec::with_capacity(2);
        parents.extend(before.map(|(k, _)| k));
        if let Some((k, _)) = after
            && !parents.contains(&k)
        {
            parents.push(k);
        }
        let mut visited = HashSet::new();
        self.reroute_children(store, table, &parents, schema.max_hops(), &mut visited)
    }

    /// Routes again every row that reaches one of `parents` (rows of
    /// `table`), and theirs in turn, `depth` levels down.
    fn reroute_children(
        &mut self,
        store: &mut StoreWriter,
        table: usize,
        parents: &[String],
        depth: usize,
        visited: &mut HashSet<(usize, String)>,
    ) -> Result<(), IngestError> {
        if depth == 0 {
            return Ok(());
        }
        let schema = self.schema.clone();
        for source in schema.child_sources(table) {
            let Some(child_table) = schema.source_table(source) else {
                continue;
            };
            for parent in parents {
                for child in store.link_children(source, parent)? {
                    if !visited.insert((child_table, child.clone())) {
                        continue;
                    }
                    self.reroute(store, child_table, &child)?;
                    if schema.is_parent(child_table) {
                        self.reroute_children(
                            store,
                            child_table,
                            std::slice::from_ref(&child),
                            depth - 1,
                            visited,
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Routes a mirrored row again (its parents changed), writing ops for
    /// the buckets it enters and leaves.
    fn reroute(
        &mut self,
        store: &mut StoreWriter,
        table: usize,
        key: &str,
    ) -> Result<(), IngestError> {
        let tbl = self.schema.tables[table].client_name.clone();
        let Some(old) = store.mirror_get(&tbl, key)? else {
            return Ok(());
        };
        let mut route = std::mem::take(&mut self.route_buf);
        route.clear();
        self.route(store, table, &old.row, &mut route)?;
        let left: Vec<&Placed> = old
            .placed
            .iter()
            .filter(|p| route.binary_search(&p.bucket).is_err())
            .collect();
        let entered = route.iter().any(|b| old.placed_in(b).is_none());
        if !left.is_empty() || entered {
            let mut wire = self.wire_row(table, &old.row)?;
            let remove = self.op(table, Kind::Remove, &mut wire.key, &mut Vec::new());
            for p in left {
                store.bucket_remove(&p.bucket, &tbl, key, &remove, (p.op_id, old.hash))?;
                self.ops_written += 1;
            }
            let put = self.op(table, Kind::Put, &mut wire.key, &mut wire.values);
            let mut placed = Vec::with_capacity(route.len());
            for b in &route {
                let op_id = match old.placed_in(b) {
                    Some((op_id, _)) => op_id,
                    None => {
                        self.ops_written += 1;
                        store.bucket_put(b, &tbl, key, &put, wire.hash, None)?
                    }
                };
                placed.push(Placed {
                    bucket: b.clone(),
                    op_id,
                });
            }
            store.mirror_put(&tbl, key, &old.row, &placed, wire.hash)?;
        }
        self.route_buf = route;
        Ok(())
    }
}
