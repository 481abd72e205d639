//! Errors of the schema files, of the catalog, and of shape requests.
//!
//! Invariant: every problem in a schema file is reported with the file, the
//! 1-based line and column where it is, and a message that says what to
//! change; all problems are collected, not only the first.

use std::fmt;
use std::path::PathBuf;

/// A position in a schema file: 1-based line and column (in characters).
/// `line == 0` means the problem concerns the file as a whole.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

/// One problem in the schema files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl SchemaError {
    pub(crate) fn at(file: PathBuf, pos: Pos, message: impl Into<String>) -> SchemaError {
        SchemaError {
            file,
            line: pos.line,
            column: pos.column,
            message: message.into(),
        }
    }
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

impl std::error::Error for SchemaError {}

/// Every problem found in the schema files, in file and position order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaErrors(pub Vec<SchemaError>);

impl SchemaErrors {
    /// Sorts by file and position and drops exact duplicates (a clause
    /// shared by several bucket definitions is checked once per definition).
    pub(crate) fn normalized(mut errors: Vec<SchemaError>) -> SchemaErrors {
        errors.sort_by(|a, b| {
            (&a.file, a.line, a.column, &a.message).cmp(&(&b.file, b.line, b.column, &b.message))
        });
        errors.dedup();
        SchemaErrors(errors)
    }
}

impl fmt::Display for SchemaErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SchemaErrors {}

/// A client asked for shapes the schema does not declare.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeRequestError {
    #[error("unknown shape `{name}`; known shapes: {}", known.join(", "))]
    UnknownShape { name: String, known: Vec<String> },
}

/// The catalog could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("reading the Postgres catalog: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("unexpected Postgres catalog contents: {0}")]
    Unexpected(String),
}

/// Edit distance between two short names, counting a swap of neighbours
/// as one edit (optimal string alignment), ignoring ASCII case.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().map(|c| c.to_ascii_lowercase()).collect();
    let b: Vec<char> = b.chars().map(|c| c.to_ascii_lowercase()).collect();
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for i in 0..=a.len() {
        for j in 0..=b.len() {
            d[i * width + j] = if i == 0 || j == 0 {
                i + j
            } else {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                let mut best = (d[(i - 1) * width + j] + 1)
                    .min(d[i * width + j - 1] + 1)
                    .min(d[(i - 1) * width + j - 1] + cost);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    best = best.min(d[(i - 2) * width + j - 2] + 1);
                }
                best
            };
        }
    }
    d[a.len() * width + b.len()]
}

/// The candidate closest to a misspelt name, if one is close enough.
pub(crate) fn suggest<'a, I>(name: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (distance(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `"; did you mean `x`?"` or nothing.
pub(crate) fn did_you_mean<'a, I>(name: &str, candidates: I) -> String
where
    I: IntoIterator<Item = &'a str>,
{
    match suggest(name, candidates) {
        Some(c) => format!("; did you mean `{c}`?"),
        None => String::new(),
    }
}
