//! The Postgres → SQLite type mapping: which Postgres types Outpost syncs, the
//! SQLite column type each becomes, and the conversion of a value from its
//! Postgres text form (as pgoutput and `COPY … TO STDOUT` print it, in a
//! session with `DateStyle=ISO, TimeZone=UTC, IntervalStyle=postgres,
//! extra_float_digits=3`) to the value the client stores.
//!
//! Invariant: the conversion is lossless and deterministic: the same Postgres
//! value always gives the same wire value, whichever path (snapshot or stream)
//! it came by. The README's type table documents every row of [`TypeKind`].

use outpost_proto::v1::Value;

/// A Postgres type Outpost can sync, reduced to how it is stored.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TypeKind {
    /// `boolean` → INTEGER 0/1.
    Bool,
    /// `smallint`, `integer`, `bigint`, `oid` → INTEGER.
    Int,
    /// `real`, `double precision` → REAL (NaN → TEXT 'NaN': SQLite has no NaN).
    Float,
    /// `numeric` → TEXT, exact, as Postgres prints it (`NaN`, `Infinity` kept).
    Numeric,
    /// `text`, `varchar`, `char(n)`, `name`, `citext`, enums → TEXT.
    Text,
    /// `uuid` → TEXT (lower-case, hyphenated).
    Uuid,
    /// `bytea` → BLOB.
    Bytea,
    /// `timestamp with time zone` → TEXT, ISO-8601 in UTC: `2024-05-01T12:00:00.123456Z`.
    Timestamptz,
    /// `timestamp without time zone` → TEXT, ISO-8601 without zone: `2024-05-01T12:00:00`.
    Timestamp,
    /// `date` → TEXT `YYYY-MM-DD`.
    Date,
    /// `time` → TEXT `HH:MM:SS[.ffffff]`.
    Time,
    /// `time with time zone` → TEXT as Postgres prints it.
    Timetz,
    /// `interval` → TEXT as Postgres prints it (`1 day 02:00:00`).
    Interval,
    /// `json`, `jsonb` → TEXT.
    Json,
    /// `inet`, `cidr`, `macaddr`, `macaddr8` → TEXT.
    Network,
    /// One-dimensional or nested arrays of a supported type → TEXT (JSON array).
    Array(Box<TypeKind>),
}

impl TypeKind {
    /// The kind of a built-in scalar or array type by its OID, or `None` when
    /// Outpost does not sync it (enums, domains and arrays of those are
    /// resolved by the catalog, which knows their OIDs).
    pub fn from_builtin_oid(oid: u32) -> Option<TypeKind> {
        let _ = oid;
        todo!("pgtypes: built-in OIDs")
    }

    /// The SQLite column type: `INTEGER`, `REAL`, `TEXT` or `BLOB`.
    pub fn sqlite_type(&self) -> &'static str {
        match self {
            TypeKind::Bool | TypeKind::Int => "INTEGER",
            TypeKind::Float => "REAL",
            TypeKind::Bytea => "BLOB",
            _ => "TEXT",
        }
    }
}

/// A value whose text form does not parse as its type.
#[derive(Debug, thiserror::Error)]
#[error("cannot convert {text:?} as {kind:?}: {reason}")]
pub struct ConvertError {
    pub kind: TypeKind,
    pub text: String,
    pub reason: String,
}

/// Converts a non-NULL value from its Postgres text form to its wire value.
pub fn to_value(kind: &TypeKind, text: &str) -> Result<Value, ConvertError> {
    let _ = (kind, text);
    todo!("pgtypes: conversion")
}

/// The wire value of SQL NULL.
pub fn null_value() -> Value {
    Value {
        kind: Some(outpost_proto::v1::value::Kind::Null(true)),
    }
}
