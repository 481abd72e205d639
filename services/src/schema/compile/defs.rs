//! From distributed branches to bucket definitions: resolves the tables that
//! chains read (adding those no shape sends), deduplicates memberships, and
//! merges branches that share a row side.

use super::{
    BucketDef, BucketParam, Errors, Hop, HopSource, KeySource, MembershipDef, SyncedTable,
    synced_table,
};
use crate::schema::catalog::Catalog;
use crate::schema::error::Pos;
use crate::schema::file::ShapeSource;
use crate::schema::typecheck::{Branch, Chain, Cond};
use crate::schema::types::SqlType;

/// What the builder produced besides the shapes' definitions.
pub(super) struct Built {
    pub tables: Vec<SyncedTable>,
    pub column_types: Vec<Vec<SqlType>>,
    pub memberships: Vec<MembershipDef>,
    pub hop_sources: Vec<HopSource>,
}

pub(super) struct Builder<'c> {
    catalog: &'c Catalog,
    tables: Vec<SyncedTable>,
    column_types: Vec<Vec<SqlType>>,
    memberships: Vec<MembershipDef>,
    hop_sources: Vec<HopSource>,
}

impl<'c> Builder<'c> {
    pub(super) fn new(
        catalog: &'c Catalog,
        tables: Vec<SyncedTable>,
        column_types: Vec<Vec<SqlType>>,
    ) -> Self {
        Builder {
            catalog,
            tables,
            column_types,
            memberships: Vec::new(),
            hop_sources: Vec::new(),
        }
    }

    pub(super) fn finish(self) -> Built {
        Built {
            tables: self.tables,
            column_types: self.column_types,
            memberships: self.memberships,
            hop_sources: self.hop_sources,
        }
    }

    /// The index of a table a chain reads, adding it (mirrored, not sent)
    /// when no shape syncs it.
    fn table(
        &mut self,
        name: &(String, String),
        shape: &ShapeSource,
        pos: Pos,
        errors: &mut Errors<'_>,
    ) -> Option<usize> {
        if let Some(i) = self
            .tables
            .iter()
            .position(|t| t.schema == name.0 && t.name == name.1)
        {
            return Some(i);
        }
        let table = self.catalog.table(&name.0, &name.1)?;
        if table.primary_key.is_empty() {
            errors.at(
                shape,
                pos,
                format!(
                    "table `{}` has no primary key; Outpost mirrors the tables that subqueries \
                     read and identifies their rows by their primary key",
                    table.name
                ),
            );
            return None;
        }
        if let Some(&k) = table
            .primary_key
            .iter()
            .find(|&&k| table.columns[k].kind.is_none())
        {
            let col = &table.columns[k];
            errors.at(
                shape,
                pos,
                format!(
                    "primary key column `{}` of `{}` has type {}, which Outpost cannot mirror",
                    col.name, table.name, col.type_name
                ),
            );
            return None;
        }
        let mut key = table.primary_key.clone();
        key.sort_unstable();
        self.tables.push(synced_table(table, key, false));
        self.column_types
            .push(table.columns.iter().map(|c| c.sql_type.clone()).collect());
        Some(self.tables.len() - 1)
    }

    fn membership(&mut self, def: MembershipDef) -> usize {
        if let Some(i) = self.memberships.iter().position(|m| *m == def) {
            return i;
        }
        self.memberships.push(def);
        self.memberships.len() - 1
    }

    fn hop_source(&mut self, source: HopSource) {
        if !self.hop_sources.contains(&source) {
            self.hop_sources.push(source);
        }
    }

    /// Resolves a chain from `column` of `table`: its hops and membership.
    fn chain(
        &mut self,
        table: usize,
        column: usize,
        chain: Chain,
        shape: &ShapeSource,
        errors: &mut Errors<'_>,
    ) -> Option<(Vec<Hop>, usize)> {
        let mut hops = Vec::with_capacity(chain.hops.len());
        let (mut from_table, mut from_column) = (table, column);
        for hop in chain.hops {
            let parent = self.table(&hop.table, shape, hop.pos, errors)?;
            self.hop_source(HopSource {
                table: from_table,
                column: from_column,
                parent,
            });
            (from_table, from_column) = (parent, hop.next);
            hops.push(Hop {
                table: parent,
                next: hop.next,
                filter: hop.filter,
            });
        }
        let m = chain.member;
        let member_table = self.table(&m.table, shape, m.pos, errors)?;
        let index = self.membership(MembershipDef {
            table: member_table,
            select: m.select,
            user_column: m.user_column,
            claim: m.claim,
            filter: m.filter,
        });
        Some((hops, index))
    }

    /// The bucket definitions of one shape.
    pub(super) fn shape(
        &mut self,
        shape: &ShapeSource,
        table: usize,
        cond: Cond,
        errors: &mut Errors<'_>,
    ) -> Option<Vec<BucketDef>> {
        let pos = shape.filter.as_ref().map_or(shape.pos, |f| f.pos);
        let mut defs: Vec<BucketDef> = Vec::new();
        let mut ok = true;
        for branch in cond.into_branches() {
            match self.branch(shape, table, branch, pos, errors) {
                Some(def) => merge(&mut defs, def),
                None => ok = false,
            }
        }
        if ok
            && shape.default
            && let Some((_, name)) = defs.iter().find_map(|d| d.client_params.first())
        {
            errors.at(
                shape,
                pos,
                format!(
                    "shape `{}` needs `param.{name}` from the client's request, so it cannot be \
                     part of the default set: add `default = false`",
                    shape.name
                ),
            );
            ok = false;
        }
        ok.then_some(defs)
    }

    fn branch(
        &mut self,
        shape: &ShapeSource,
        table: usize,
        mut branch: Branch,
        pos: Pos,
        errors: &mut Errors<'_>,
    ) -> Option<BucketDef> {
        if branch.members.len() > 1 {
            errors.at(
                shape,
                pos,
                format!(
                    "an alternative of shape `{}` ANDs {} subqueries; each alternative may key \
                     its rows by at most one `IN (SELECT …)` (join the others with OR, or move \
                     the condition into the subquery's own WHERE)",
                    shape.name,
                    branch.members.len()
                ),
            );
            return None;
        }
        let mut params = Vec::new();
        let mut grant = Vec::new();
        for (column, claim) in std::mem::take(&mut branch.claims) {
            params.push(BucketParam {
                column,
                hops: Vec::new(),
            });
            grant.push(KeySource::Claim(claim));
        }
        for (column, chain) in std::mem::take(&mut branch.members) {
            let (hops, m) = self.chain(table, column, chain, shape, errors)?;
            params.push(BucketParam { column, hops });
            grant.push(KeySource::Membership(m));
        }
        let mut client_params = Vec::new();
        for (column, name) in std::mem::take(&mut branch.client) {
            // The key is the column's own value when every hop continues
            // from the primary key it reached.
            let tables = &self.tables;
            let own_value = |p: &BucketParam| {
                p.hops
                    .iter()
                    .all(|h| tables[h.table].primary_key == [h.next])
            };
            let Some(p) = params
                .iter()
                .position(|p| p.column == column && own_value(p))
            else {
                let col = &self.tables[table].columns[column].name;
                errors.at(
                    shape,
                    pos,
                    format!(
                        "`param.{name}` narrows `{col}`, which an alternative of shape `{}` does \
                         not key by a token claim or a subquery: a request parameter may only \
                         narrow what the token allows; AND it with `{col} = auth.<claim>` or \
                         `{col} IN (SELECT …)` in every alternative",
                        shape.name
                    ),
                );
                return None;
            };
            if !client_params.iter().any(|(_, n)| *n == name) {
                client_params.push((p, name));
            }
        }
        Some(BucketDef {
            params,
            filter: branch.filter(),
            grants: vec![grant],
            client_params,
        })
    }
}

/// Adds a definition, sharing an existing one with the same row side.
fn merge(defs: &mut Vec<BucketDef>, def: BucketDef) {
    let same = defs.iter_mut().find(|d| {
        d.params == def.params && d.filter == def.filter && d.client_params == def.client_params
    });
    match same {
        Some(existing) => {
            for grant in def.grants {
                if !existing.grants.contains(&grant) {
                    existing.grants.push(grant);
                }
            }
        }
        None => defs.push(def),
    }
}
