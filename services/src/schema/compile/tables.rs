//! Checks of the tables themselves: primary keys, the columns shapes
//! select, and the names tables take on clients.

use super::{Errors, SyncedTable};
use crate::schema::catalog::CatalogTable;
use crate::schema::error::did_you_mean;
use crate::schema::file::{SchemaSource, ShapeSource};

/// Checks a table and the column lists of the shapes on it; returns the
/// synced columns.
pub(super) fn check_table(
    table: &CatalogTable,
    users: &[&ShapeSource],
    errors: &mut Errors<'_>,
) -> Option<Vec<usize>> {
    let first = users.first()?;
    let mut ok = true;
    if table.primary_key.is_empty() {
        errors.at(
            first,
            first.table.pos,
            format!(
                "table `{}` has no primary key; Outpost identifies rows by their primary key",
                table.name
            ),
        );
        ok = false;
    }
    for &k in &table.primary_key {
        let col = &table.columns[k];
        if col.kind.is_none() {
            errors.at(
                first,
                first.table.pos,
                format!(
                    "primary key column `{}` of `{}` has type {}, which Outpost cannot sync",
                    col.name, table.name, col.type_name
                ),
            );
            ok = false;
        }
    }
    let mut selections = Vec::with_capacity(users.len());
    for shape in users {
        let mut picked: Vec<usize> = match &shape.columns {
            None => (0..table.columns.len())
                .filter(|&i| table.columns[i].kind.is_some())
                .collect(),
            Some(list) => {
                let mut picked = Vec::new();
                for name in &list.value {
                    let Some(i) = table.columns.iter().position(|c| c.name == name.value) else {
                        let hint = did_you_mean(
                            &name.value,
                            table.columns.iter().map(|c| c.name.as_str()),
                        );
                        errors.at(
                            shape,
                            name.pos,
                            format!(
                                "unknown column `{}` in table `{}`{hint}",
                                name.value, table.name
                            ),
                        );
                        ok = false;
                        continue;
                    };
                    let col = &table.columns[i];
                    if col.kind.is_none() {
                        errors.at(
                            shape,
                            name.pos,
                            format!(
                                "column `{}` has type {}, which Outpost cannot sync; leave it out \
                                 of `columns = [...]`",
                                col.name, col.type_name
                            ),
                        );
                        ok = false;
                    } else if picked.contains(&i) {
                        errors.at(
                            shape,
                            name.pos,
                            format!("column `{}` is listed twice", col.name),
                        );
                        ok = false;
                    } else {
                        picked.push(i);
                    }
                }
                picked
            }
        };
        for &k in &table.primary_key {
            if !picked.contains(&k) {
                picked.push(k);
            }
        }
        picked.sort_unstable();
        selections.push(picked);
    }
    let names = |cols: &[usize]| {
        cols.iter()
            .map(|&i| table.columns[i].name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (shape, picked) in users.iter().zip(&selections).skip(1) {
        if *picked != selections[0] {
            let pos = shape.columns.as_ref().map_or(shape.pos, |c| c.pos);
            errors.at(
                shape,
                pos,
                format!(
                    "shapes `{}` and `{}` both sync table `{}` but select different columns \
                     (`{}`: {}; `{}`: {}); all shapes of one table must select the same columns",
                    first.name,
                    shape.name,
                    table.name,
                    first.name,
                    names(&selections[0]),
                    shape.name,
                    names(picked)
                ),
            );
            ok = false;
        }
    }
    ok.then(|| selections.swap_remove(0))
}

/// Two tables must not meet under one client name (`a.b_c` and `a_b.c`).
pub(super) fn check_client_names(
    tables: &[SyncedTable],
    source: &SchemaSource,
    errors: &mut Errors<'_>,
) {
    let shape_of = |t: &SyncedTable| {
        source
            .shapes
            .iter()
            .find(|s| s.table.value == (t.schema.clone(), t.name.clone()))
    };
    for (i, t) in tables.iter().enumerate() {
        if let Some(other) = tables[..i].iter().find(|o| o.client_name == t.client_name)
            && let Some(shape) = shape_of(t)
                .or_else(|| shape_of(other))
                .or(source.shapes.first())
        {
            errors.at(
                shape,
                shape.table.pos,
                format!(
                    "tables `{}.{}` and `{}.{}` would both be `{}` on clients",
                    other.schema, other.name, t.schema, t.name, t.client_name
                ),
            );
        }
    }
}
