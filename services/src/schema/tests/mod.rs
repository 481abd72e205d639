//! Tests of schema files, compilation, routing and predicate semantics.
//!
//! Catalog-dependent tests use either a hand-built [`Catalog`] (for error
//! messages, no database needed) or a real throwaway cluster; the predicate
//! oracle compares the evaluator with Postgres itself.

mod catalog_pg;
mod compile_errors;
mod datum;
mod files;
mod oracle;
mod routing;

use std::path::Path;
use std::sync::Arc;

use super::catalog::{Catalog, CatalogColumn, CatalogTable};
use super::types::{Collation, SqlType};
use super::{CompiledSchema, SchemaErrors, SchemaSource, compile, load_dir};
use crate::pgtypes::TypeKind;

/// Writes `files` into a fresh directory.
pub(super) fn write_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write schema file");
    }
    dir
}

/// Errors as `name.toml:line:col: message`, without the directory.
pub(super) fn lines(errors: &SchemaErrors, dir: &Path) -> Vec<String> {
    errors
        .0
        .iter()
        .map(|e| {
            let prefix = format!("{}/", dir.display());
            e.to_string().replace(&prefix, "")
        })
        .collect()
}

/// Loads files, expecting errors.
pub(super) fn load_errors(files: &[(&str, &str)]) -> Vec<String> {
    let dir = write_dir(files);
    match load_dir(dir.path()) {
        Ok(_) => panic!("expected errors"),
        Err(e) => lines(&e, dir.path()),
    }
}

/// A column of a hand-built catalog, by SQL type name.
pub(super) fn col(name: &str, ty: &str) -> CatalogColumn {
    let oid = match ty {
        "bool" => 16,
        "int2" => 21,
        "int4" => 23,
        "int8" => 20,
        "float4" => 700,
        "float8" => 701,
        "numeric" => 1700,
        "text" => 25,
        "varchar" => 1043,
        "bpchar" => 1042,
        "uuid" => 2950,
        "timestamptz" => 1184,
        "timestamp" => 1114,
        "date" => 1082,
        "jsonb" => 3802,
        "tsvector" => 3614,
        other => panic!("no test type {other}"),
    };
    let sql_type = SqlType::from_oid(oid, ty);
    let collation = sql_type.is_text().then(|| Arc::new(Collation::c()));
    CatalogColumn {
        name: name.into(),
        type_oid: oid,
        type_name: ty.into(),
        not_null: false,
        kind: TypeKind::from_builtin_oid(oid),
        sql_type,
        collation,
    }
}

/// A table of a hand-built catalog.
pub(super) fn table(name: &str, columns: Vec<CatalogColumn>, key: &[&str]) -> CatalogTable {
    let primary_key = key
        .iter()
        .map(|k| {
            columns
                .iter()
                .position(|c| c.name == *k)
                .expect("key column")
        })
        .collect();
    let (schema, name) = name.split_once('.').unwrap_or(("public", name));
    CatalogTable {
        schema: schema.into(),
        name: name.into(),
        columns,
        primary_key,
    }
}

/// A hand-built catalog whose default collation is `C`.
pub(super) fn catalog(tables: Vec<CatalogTable>) -> Catalog {
    let mut c = Catalog {
        default_collation: Some(Arc::new(Collation::c())),
        ..Catalog::default()
    };
    for t in &tables {
        c.schemas
            .entry(t.schema.clone())
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(t.name.clone());
    }
    c.tables = tables;
    c
}

/// The `todos` and `lists` tables used by several tests.
pub(super) fn todo_catalog() -> Catalog {
    catalog(vec![
        table(
            "todos",
            vec![
                col("id", "int8"),
                col("list_id", "int8"),
                col("title", "text"),
                col("done", "bool"),
                col("owner", "text"),
                col("assignee", "uuid"),
                col("archived", "bool"),
                col("created_at", "timestamptz"),
                col("score", "float8"),
                col("search", "tsvector"),
                col("meta", "jsonb"),
            ],
            &["id"],
        ),
        table(
            "lists",
            vec![
                col("id", "int8"),
                col("name", "text"),
                col("public", "bool"),
            ],
            &["id"],
        ),
        table("nokey", vec![col("a", "int4")], &[]),
    ])
}

/// Parses files given as text and compiles them against `catalog`.
pub(super) fn compile_files(
    files: &[(&str, &str)],
    catalog: &Catalog,
) -> Result<CompiledSchema, Vec<String>> {
    let dir = write_dir(files);
    let source: SchemaSource = load_dir(dir.path()).map_err(|e| lines(&e, dir.path()))?;
    compile(&source, catalog).map_err(|e| lines(&e, dir.path()))
}

/// Compiles one shape on `todos` with the given `where`.
pub(super) fn compile_where(clause: &str) -> Result<CompiledSchema, Vec<String>> {
    let text = format!("[shapes.s]\ntable = \"todos\"\nwhere = '''{clause}'''\n");
    compile_files(&[("a.toml", &text)], &todo_catalog())
}
