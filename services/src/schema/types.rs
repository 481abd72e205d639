//! The types of shape predicates: which Postgres types a predicate can
//! compare, how they group into the categories that decide which pairs are
//! comparable, and the collations that decide how text compares.
//!
//! Invariant: a type is comparable here only when the evaluator reproduces
//! Postgres' comparison exactly; everything else is [`SqlType::Other`], which
//! only `IS [NOT] NULL` accepts.

use std::fmt;
use std::sync::Arc;

/// The width of an integer type, for range checks on input and casts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum IntWidth {
    I2,
    I4,
    I8,
    /// `oid`: unsigned 32-bit.
    Oid,
}

impl IntWidth {
    pub(crate) fn range(self) -> (i64, i64) {
        match self {
            IntWidth::I2 => (i64::from(i16::MIN), i64::from(i16::MAX)),
            IntWidth::I4 => (i64::from(i32::MIN), i64::from(i32::MAX)),
            IntWidth::I8 => (i64::MIN, i64::MAX),
            IntWidth::Oid => (0, i64::from(u32::MAX)),
        }
    }
}

/// The flavours of character types. `character(n)` differs: its trailing
/// spaces do not count in comparisons (but do in `LIKE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum TextKind {
    Text,
    Varchar,
    Bpchar,
    Name,
}

/// An enum type: its labels in sort order (`pg_enum.enumsortorder`).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct EnumType {
    pub oid: u32,
    pub name: String,
    pub labels: Vec<String>,
}

/// How a collation folds case for `ILIKE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum CaseFold {
    /// `C`/`POSIX` character classification: ASCII letters only.
    Ascii,
    /// libc locales: one character at a time (`towlower`).
    Simple,
    /// ICU: full Unicode lower-casing of the string.
    Full,
}

/// What a predicate needs to know about a text collation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Collation {
    /// As the catalog names it (`C`, `en_US.UTF-8`, `und-x-icu`).
    pub name: String,
    /// Sorts by byte value (`C`, `POSIX`, the builtin provider): the only
    /// collations whose ordering the evaluator reproduces.
    pub byte_order: bool,
    /// Equal only when byte-equal. Nondeterministic collations are refused.
    pub deterministic: bool,
    pub fold: CaseFold,
}

impl Collation {
    /// The `C` collation.
    #[cfg(test)]
    pub(crate) fn c() -> Collation {
        Collation {
            name: "C".into(),
            byte_order: true,
            deterministic: true,
            fold: CaseFold::Ascii,
        }
    }
}

/// The type of a predicate operand.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum SqlType {
    Bool,
    Int(IntWidth),
    /// `real` (`true`) or `double precision`.
    Float {
        single: bool,
    },
    Numeric,
    Text(TextKind),
    Uuid,
    Timestamptz,
    Timestamp,
    Date,
    Enum(Arc<EnumType>),
    /// An untyped string literal or NULL, typed by its context as in Postgres.
    Unknown,
    /// Any other type, by name: only `IS [NOT] NULL` applies.
    Other(String),
}

/// Groups of mutually comparable types (Postgres' type categories, narrowed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Category {
    Bool,
    Number,
    Text,
    Uuid,
    DateTime,
    Enum,
    Unknown,
    Other,
}

impl SqlType {
    /// The type of a built-in base type by OID, `Other` when not comparable.
    pub(crate) fn from_oid(oid: u32, name: &str) -> SqlType {
        match oid {
            16 => SqlType::Bool,
            20 => SqlType::Int(IntWidth::I8),
            21 => SqlType::Int(IntWidth::I2),
            23 => SqlType::Int(IntWidth::I4),
            26 => SqlType::Int(IntWidth::Oid),
            700 => SqlType::Float { single: true },
            701 => SqlType::Float { single: false },
            1700 => SqlType::Numeric,
            25 => SqlType::Text(TextKind::Text),
            1043 => SqlType::Text(TextKind::Varchar),
            1042 => SqlType::Text(TextKind::Bpchar),
            19 => SqlType::Text(TextKind::Name),
            2950 => SqlType::Uuid,
            1184 => SqlType::Timestamptz,
            1114 => SqlType::Timestamp,
            1082 => SqlType::Date,
            _ => SqlType::Other(name.to_string()),
        }
    }

    /// The type a cast target names (`int`, `double precision`, `timestamptz`…),
    /// `None` when not a type a predicate can cast to.
    pub(crate) fn from_cast_name(name: &str) -> Option<SqlType> {
        Some(match name {
            "bool" | "boolean" => SqlType::Bool,
            "smallint" | "int2" => SqlType::Int(IntWidth::I2),
            "int" | "integer" | "int4" => SqlType::Int(IntWidth::I4),
            "bigint" | "int8" => SqlType::Int(IntWidth::I8),
            "oid" => SqlType::Int(IntWidth::Oid),
            "real" | "float4" => SqlType::Float { single: true },
            "double precision" | "float8" | "float" => SqlType::Float { single: false },
            "numeric" | "decimal" => SqlType::Numeric,
            "text" => SqlType::Text(TextKind::Text),
            "varchar" | "character varying" => SqlType::Text(TextKind::Varchar),
            "uuid" => SqlType::Uuid,
            "timestamptz" | "timestamp with time zone" => SqlType::Timestamptz,
            "timestamp" | "timestamp without time zone" => SqlType::Timestamp,
            "date" => SqlType::Date,
            _ => return None,
        })
    }

    pub(crate) fn category(&self) -> Category {
        match self {
            SqlType::Bool => Category::Bool,
            SqlType::Int(_) | SqlType::Float { .. } | SqlType::Numeric => Category::Number,
            SqlType::Text(_) => Category::Text,
            SqlType::Uuid => Category::Uuid,
            SqlType::Timestamptz | SqlType::Timestamp | SqlType::Date => Category::DateTime,
            SqlType::Enum(_) => Category::Enum,
            SqlType::Unknown => Category::Unknown,
            SqlType::Other(_) => Category::Other,
        }
    }

    /// Whether `=`, `<`… are defined on this type.
    pub(crate) fn is_comparable(&self) -> bool {
        !matches!(self, SqlType::Other(_))
    }

    /// Whether a column of this type can be matched against a token claim:
    /// equality must coincide with equality of the canonical text form.
    pub(crate) fn can_be_parameter(&self) -> bool {
        !matches!(
            self,
            SqlType::Float { .. } | SqlType::Other(_) | SqlType::Unknown
        )
    }

    pub(crate) fn is_text(&self) -> bool {
        matches!(self, SqlType::Text(_))
    }
}

impl fmt::Display for SqlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SqlType::Bool => "boolean",
            SqlType::Int(IntWidth::I2) => "smallint",
            SqlType::Int(IntWidth::I4) => "integer",
            SqlType::Int(IntWidth::I8) => "bigint",
            SqlType::Int(IntWidth::Oid) => "oid",
            SqlType::Float { single: true } => "real",
            SqlType::Float { single: false } => "double precision",
            SqlType::Numeric => "numeric",
            SqlType::Text(TextKind::Text) => "text",
            SqlType::Text(TextKind::Varchar) => "character varying",
            SqlType::Text(TextKind::Bpchar) => "character",
            SqlType::Text(TextKind::Name) => "name",
            SqlType::Uuid => "uuid",
            SqlType::Timestamptz => "timestamp with time zone",
            SqlType::Timestamp => "timestamp without time zone",
            SqlType::Date => "date",
            SqlType::Enum(e) => &e.name,
            SqlType::Unknown => "unknown",
            SqlType::Other(name) => name,
        })
    }
}

/// Whether an explicit cast `from::to` exists (built-in casts, and the I/O
/// conversions to and from text whose output does not depend on session
/// settings).
pub(crate) fn cast_exists(from: &SqlType, to: &SqlType) -> bool {
    use SqlType as T;
    if from == to {
        return true;
    }
    match (from, to) {
        (T::Unknown, _) => true,
        // Text input functions accept any type's text form.
        (T::Text(_), _) => to.is_comparable(),
        (
            T::Bool | T::Int(_) | T::Numeric | T::Uuid | T::Enum(_),
            T::Text(TextKind::Text | TextKind::Varchar),
        ) => true,
        (T::Int(IntWidth::I4), T::Bool) | (T::Bool, T::Int(IntWidth::I4)) => true,
        (T::Int(_) | T::Float { .. } | T::Numeric, T::Int(_) | T::Float { .. } | T::Numeric) => {
            true
        }
        (T::Date | T::Timestamp | T::Timestamptz, T::Date | T::Timestamp | T::Timestamptz) => true,
        _ => false,
    }
}

/// Whether Postgres converts `from` to `to` implicitly (`pg_cast` context
/// `i`), within the types a predicate compares.
pub(crate) fn implicit_cast(from: &SqlType, to: &SqlType) -> bool {
    use SqlType as T;
    if from == to || *from == T::Unknown {
        return true;
    }
    match (from, to) {
        (T::Int(a), T::Int(b)) => {
            let rank = |w: &IntWidth| match w {
                IntWidth::I2 => 0,
                IntWidth::I4 | IntWidth::Oid => 1,
                IntWidth::I8 => 2,
            };
            rank(a) < rank(b)
        }
        (T::Int(_), T::Float { .. } | T::Numeric) => true,
        (T::Numeric, T::Float { .. }) => true,
        (T::Float { single: true }, T::Float { single: false }) => true,
        (T::Text(_), T::Text(_)) => true,
        (T::Date, T::Timestamp | T::Timestamptz) | (T::Timestamp, T::Timestamptz) => true,
        _ => false,
    }
}

/// The preferred type of its category (`typispreferred`).
fn is_preferred(ty: &SqlType) -> bool {
    matches!(
        ty,
        SqlType::Bool
            | SqlType::Float { single: false }
            | SqlType::Text(TextKind::Text)
            | SqlType::Timestamptz
    )
}

/// Postgres' `select_common_type` followed by `verify_common_type`: the type
/// a list of values (an IN list with its left side) is compared in, or
/// `None` when they have none. Untyped literals adopt it; all untyped gives
/// `text`.
pub(crate) fn common_type<'t>(types: impl IntoIterator<Item = &'t SqlType>) -> Option<SqlType> {
    let types: Vec<&SqlType> = types.into_iter().collect();
    let mut known = types.iter().copied().filter(|t| **t != SqlType::Unknown);
    let Some(mut chosen) = known.next() else {
        return Some(SqlType::Text(TextKind::Text));
    };
    for next in known {
        if next.category() != chosen.category() {
            return None;
        }
        if next != chosen
            && !is_preferred(chosen)
            && implicit_cast(chosen, next)
            && !implicit_cast(next, chosen)
        {
            chosen = next;
        }
    }
    types
        .iter()
        .all(|t| implicit_cast(t, chosen))
        .then(|| chosen.clone())
}
