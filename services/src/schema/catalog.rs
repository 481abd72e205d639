//! The parts of the live Postgres catalog that shapes are checked against:
//! tables, their columns and types, primary keys, enums and collations.
//!
//! Invariants: columns are listed in `attnum` order without dropped or
//! generated columns (pgoutput does not send generated columns); a domain is
//! resolved to its base type and an array to its element type; a table that
//! does not exist is recorded as missing (with the tables of its schema, for
//! the error message) rather than failing the load: only a failed query is a
//! [`CatalogError`].

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::Client;

use super::error::{CatalogError, did_you_mean};
use super::types::{CaseFold, Collation, EnumType, SqlType};
use crate::pgtypes::TypeKind;

/// `pg_collation` OID of the database default collation.
const DEFAULT_COLLATION_OID: u32 = 100;

/// A column as the catalog describes it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct CatalogColumn {
    pub name: String,
    pub type_oid: u32,
    /// `format_type(atttypid, atttypmod)`.
    pub type_name: String,
    pub not_null: bool,
    /// How the value is synced; `None` when Outpost cannot sync the type.
    pub kind: Option<TypeKind>,
    /// How predicates compare it.
    pub sql_type: SqlType,
    /// The column's collation, for character types.
    pub collation: Option<Arc<Collation>>,
}

/// A table (or partitioned table) of the catalog.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct CatalogTable {
    pub schema: String,
    pub name: String,
    pub columns: Vec<CatalogColumn>,
    /// Indexes into `columns`, in key order; empty without a primary key.
    pub primary_key: Vec<usize>,
}

/// A relation that is not a table, named where a table was expected.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NotATable {
    pub schema: String,
    pub name: String,
    /// What it is instead: "view", "materialized view"…
    pub what: &'static str,
}

/// What the database holds for the tables the schema files name.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub(crate) tables: Vec<CatalogTable>,
    pub(crate) not_tables: Vec<NotATable>,
    /// The tables of each schema that was looked into; `None`: no such schema.
    pub(crate) schemas: HashMap<String, Option<Vec<String>>>,
    /// The database's default collation.
    pub(crate) default_collation: Option<Arc<Collation>>,
}

impl Catalog {
    pub(crate) fn table(&self, schema: &str, name: &str) -> Option<&CatalogTable> {
        self.tables
            .iter()
            .find(|t| t.schema == schema && t.name == name)
    }

    /// Why `schema.name` is not a table of the catalog, with a suggestion.
    pub(crate) fn missing_table(&self, schema: &str, name: &str) -> String {
        if let Some(other) = self
            .not_tables
            .iter()
            .find(|t| t.schema == schema && t.name == name)
        {
            return format!(
                "`{schema}.{name}` is a {}, not a table; only tables can be synced",
                other.what
            );
        }
        match self.schemas.get(schema) {
            Some(None) => format!("schema `{schema}` does not exist"),
            Some(Some(names)) if names.iter().any(|n| n == name) => format!(
                "table `{schema}.{name}` exists but was not read from the catalog; the tables \
                 that subqueries read must be listed with the schema's tables \
                 (`SchemaSource::tables`)"
            ),
            Some(Some(names)) => {
                let hint = did_you_mean(name, names.iter().map(String::as_str));
                let listing = if hint.is_empty() && !names.is_empty() && names.len() <= 12 {
                    format!(" (tables in `{schema}`: {})", names.join(", "))
                } else if names.is_empty() {
                    format!(" (schema `{schema}` has no tables)")
                } else {
                    String::new()
                };
                format!("unknown table `{name}` in schema `{schema}`{hint}{listing}")
            }
            None => format!("unknown table `{schema}.{name}`"),
        }
    }

    /// Reads what the catalog says about `tables` (`(schema, table)` pairs).
    pub async fn load(
        client: &Client,
        tables: &[(String, String)],
    ) -> Result<Catalog, CatalogError> {
        let mut loader = Loader {
            client,
            types: HashMap::new(),
            collations: HashMap::new(),
            default_collation: None,
        };
        let default = loader.database_collation().await?;
        loader.default_collation = Some(default.clone());
        let mut catalog = Catalog {
            default_collation: Some(default),
            ..Catalog::default()
        };
        for (schema, name) in tables {
            if !catalog.schemas.contains_key(schema) {
                let listing = loader.schema_tables(schema).await?;
                catalog.schemas.insert(schema.clone(), listing);
            }
            let row = client
                .query_opt(
                    "SELECT c.oid, c.relkind::text FROM pg_class c \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relname = $2",
                    &[schema, name],
                )
                .await?;
            let Some(row) = row else { continue };
            let oid: u32 = row.try_get(0)?;
            let relkind: String = row.try_get(1)?;
            let what = match relkind.as_str() {
                "r" | "p" => None,
                "v" => Some("view"),
                "m" => Some("materialized view"),
                "f" => Some("foreign table"),
                "S" => Some("sequence"),
                "i" | "I" => Some("index"),
                _ => Some("relation that is not a table"),
            };
            if let Some(what) = what {
                catalog.not_tables.push(NotATable {
                    schema: schema.clone(),
                    name: name.clone(),
                    what,
                });
                continue;
            }
            let table = loader.table(oid, schema, name).await?;
            catalog.tables.push(table);
        }
        Ok(catalog)
    }
}

/// A resolved type: how it syncs and how it compares.
#[derive(Clone, Debug)]
struct ResolvedType {
    kind: Option<TypeKind>,
    sql_type: SqlType,
}

struct Loader<'a> {
    client: &'a Client,
    types: HashMap<u32, ResolvedType>,
    collations: HashMap<u32, Option<Arc<Collation>>>,
    default_collation: Option<Arc<Collation>>,
}

/// Whether a libc locale name sorts and folds like `C`.
fn is_c_locale(name: &str) -> bool {
    matches!(name, "C" | "POSIX")
}

fn collation_of(
    name: String,
    provider: &str,
    collate: &str,
    ctype: &str,
    deterministic: bool,
) -> Collation {
    let (byte_order, fold) = match provider {
        // The builtin provider (Postgres 17+) sorts by code point, which is
        // UTF-8 byte order; its `C` locale folds ASCII only.
        "b" => (
            true,
            if is_c_locale(ctype) || is_c_locale(collate) {
                CaseFold::Ascii
            } else {
                CaseFold::Simple
            },
        ),
        "i" => (false, CaseFold::Full),
        _ => (
            is_c_locale(collate),
            if is_c_locale(ctype) {
                CaseFold::Ascii
            } else {
                CaseFold::Simple
            },
        ),
    };
    Collation {
        name,
        byte_order,
        deterministic,
        fold,
    }
}

impl Loader<'_> {
    async fn database_collation(&self) -> Result<Arc<Collation>, CatalogError> {
        let version: i32 = self
            .client
            .query_one("SELECT current_setting('server_version_num')::int4", &[])
            .await?
            .try_get(0)?;
        let provider_column = if version >= 150_000 {
            "datlocprovider::text"
        } else {
            "'c'::text"
        };
        let locale_column = match version {
            v if v >= 170_000 => "coalesce(datlocale, '')",
            v if v >= 150_000 => "coalesce(daticulocale, '')",
            _ => "''::text",
        };
        let row = self
            .client
            .query_one(
                &format!(
                    "SELECT datcollate::text, datctype::text, {provider_column}, {locale_column} \
                     FROM pg_database WHERE datname = current_database()"
                ),
                &[],
            )
            .await?;
        let collate: String = row.try_get(0)?;
        let ctype: String = row.try_get(1)?;
        let provider: String = row.try_get(2)?;
        let locale: String = row.try_get(3)?;
        let (collate, ctype, name) = match provider.as_str() {
            "c" => (collate.clone(), ctype, collate),
            _ => (locale.clone(), locale.clone(), locale),
        };
        Ok(Arc::new(collation_of(
            name, &provider, &collate, &ctype, true,
        )))
    }

    async fn schema_tables(&self, schema: &str) -> Result<Option<Vec<String>>, CatalogError> {
        let exists = self
            .client
            .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
            .await?;
        if exists.is_none() {
            return Ok(None);
        }
        let rows = self
            .client
            .query(
                "SELECT c.relname::text FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY 1",
                &[&schema],
            )
            .await?;
        let names = rows
            .iter()
            .map(|r| r.try_get::<_, String>(0))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(names))
    }

    async fn table(
        &mut self,
        oid: u32,
        schema: &str,
        name: &str,
    ) -> Result<CatalogTable, CatalogError> {
        let rows = self
            .client
            .query(
                "SELECT a.attname::text, a.atttypid, format_type(a.atttypid, a.atttypmod), \
                        a.attnotnull, a.attcollation, a.attnum::int4 \
                 FROM pg_attribute a \
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
                   AND a.attgenerated = '' \
                 ORDER BY a.attnum",
                &[&oid],
            )
            .await?;
        let mut columns = Vec::with_capacity(rows.len());
        let mut attnums = Vec::with_capacity(rows.len());
        for row in &rows {
            let type_oid: u32 = row.try_get(1)?;
            let collation_oid: u32 = row.try_get(4)?;
            let resolved = self.resolve_type(type_oid).await?;
            let collation = match resolved.sql_type {
                SqlType::Text(_) => self.collation(collation_oid).await?,
                _ => None,
            };
            columns.push(CatalogColumn {
                name: row.try_get(0)?,
                type_oid,
                type_name: row.try_get(2)?,
                not_null: row.try_get(3)?,
                kind: resolved.kind,
                sql_type: resolved.sql_type,
                collation,
            });
            attnums.push(row.try_get::<_, i32>(5)?);
        }
        let key_rows = self
            .client
            .query(
                "SELECT k.attnum::int4 FROM pg_index i \
                 CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                 WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
                &[&oid],
            )
            .await?;
        let mut primary_key = Vec::with_capacity(key_rows.len());
        for row in &key_rows {
            let attnum: i32 = row.try_get(0)?;
            let at = attnums.iter().position(|a| *a == attnum).ok_or_else(|| {
                CatalogError::Unexpected(format!(
                    "primary key of {schema}.{name} uses attribute {attnum}, which is not a column"
                ))
            })?;
            primary_key.push(at);
        }
        Ok(CatalogTable {
            schema: schema.to_string(),
            name: name.to_string(),
            columns,
            primary_key,
        })
    }

    async fn collation(&mut self, oid: u32) -> Result<Option<Arc<Collation>>, CatalogError> {
        if oid == 0 || oid == DEFAULT_COLLATION_OID {
            return Ok(self.default_collation.clone());
        }
        if let Some(c) = self.collations.get(&oid) {
            return Ok(c.clone());
        }
        let row = self
            .client
            .query_opt(
                "SELECT collname::text, collprovider::text, coalesce(collcollate, ''), \
                        coalesce(collctype, ''), collisdeterministic \
                 FROM pg_collation WHERE oid = $1",
                &[&oid],
            )
            .await?;
        let collation = match row {
            None => None,
            Some(row) => Some(Arc::new(collation_of(
                row.try_get(0)?,
                &row.try_get::<_, String>(1)?,
                &row.try_get::<_, String>(2)?,
                &row.try_get::<_, String>(3)?,
                row.try_get(4)?,
            ))),
        };
        self.collations.insert(oid, collation.clone());
        Ok(collation)
    }

    /// Resolves domains to their base type and arrays to their element.
    async fn resolve_type(&mut self, oid: u32) -> Result<ResolvedType, CatalogError> {
        if let Some(t) = self.types.get(&oid) {
            return Ok(t.clone());
        }
        let mut current = oid;
        // Domains over domains end at a base type; the depth bound guards
        // against a corrupt catalog.
        for _ in 0..32 {
            let row = self
                .client
                .query_opt(
                    "SELECT typname::text, typtype::text, typbasetype, typelem, typcategory::text \
                     FROM pg_type WHERE oid = $1",
                    &[&current],
                )
                .await?
                .ok_or_else(|| {
                    CatalogError::Unexpected(format!("no pg_type row for OID {current}"))
                })?;
            let name: String = row.try_get(0)?;
            let typtype: String = row.try_get(1)?;
            let base: u32 = row.try_get(2)?;
            let elem: u32 = row.try_get(3)?;
            let category: String = row.try_get(4)?;
            let resolved = match typtype.as_str() {
                "d" => {
                    current = base;
                    continue;
                }
                "e" => {
                    let labels = self
                        .client
                        .query(
                            "SELECT enumlabel::text FROM pg_enum WHERE enumtypid = $1 \
                             ORDER BY enumsortorder",
                            &[&current],
                        )
                        .await?
                        .iter()
                        .map(|r| r.try_get::<_, String>(0))
                        .collect::<Result<Vec<_>, _>>()?;
                    ResolvedType {
                        kind: Some(TypeKind::Text),
                        sql_type: SqlType::Enum(Arc::new(EnumType {
                            oid: current,
                            name,
                            labels,
                        })),
                    }
                }
                "b" if category == "A" && elem != 0 => {
                    let element = Box::pin(self.resolve_type(elem)).await?;
                    ResolvedType {
                        kind: element.kind.map(|k| TypeKind::Array(Box::new(k))),
                        sql_type: SqlType::Other(name),
                    }
                }
                "b" => {
                    let kind = TypeKind::from_builtin_oid(current)
                        .or_else(|| (name == "citext").then_some(TypeKind::Text));
                    ResolvedType {
                        kind,
                        sql_type: SqlType::from_oid(current, &name),
                    }
                }
                _ => ResolvedType {
                    kind: None,
                    sql_type: SqlType::Other(name),
                },
            };
            self.types.insert(oid, resolved.clone());
            return Ok(resolved);
        }
        Err(CatalogError::Unexpected(format!(
            "type OID {oid} is a chain of more than 32 domains"
        )))
    }
}
