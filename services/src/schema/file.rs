//! Reading schema files: TOML syntax, the allowed keys, shape names and the
//! syntax of `where` clauses; `[tables.<table>]` write rules are read by
//! `rules`. No database is needed here.
//!
//! Invariants: files are read in name order and shapes in the order they
//! appear, so the same directory always gives the same [`SchemaSource`];
//! every error carries the file, line and column it concerns; shape names
//! are unique across all files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::{Pos, SchemaError, SchemaErrors, did_you_mean};
use super::expr::{Expr, parse_filter};
use super::rules::{TableRulesSource, parse_tables};

/// The keys a shape accepts.
const SHAPE_KEYS: [&str; 4] = ["table", "columns", "where", "default"];

/// A value with the place it was written.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Located<T> {
    pub value: T,
    pub pos: Pos,
}

/// One `[shapes.<name>]` table, syntax-checked.
#[derive(Clone, Debug)]
pub(crate) struct ShapeSource {
    pub name: String,
    /// Index into [`SchemaSource::files`].
    pub file: usize,
    /// Where the shape's name is written.
    pub pos: Pos,
    /// `(schema, table)`.
    pub table: Located<(String, String)>,
    /// `None`: every column of a supported type.
    pub columns: Option<Located<Vec<Located<String>>>>,
    pub filter: Option<Expr>,
    pub default: bool,
}

/// The parsed schema files, before they are checked against a database.
#[derive(Clone, Debug, Default)]
pub struct SchemaSource {
    pub(crate) files: Vec<PathBuf>,
    pub(crate) shapes: Vec<ShapeSource>,
    /// The `[tables.<table>]` write rules, in file order.
    pub(crate) rules: Vec<TableRulesSource>,
}

impl SchemaSource {
    /// The tables the shapes use, `(schema, table)`, in order of first use.
    pub fn tables(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for shape in &self.shapes {
            if !out.contains(&shape.table.value) {
                out.push(shape.table.value.clone());
            }
        }
        out
    }

    /// The files read, in the order they were read.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Parses schema files given as `(path, contents)`, in that order.
    pub fn from_files(files: Vec<(PathBuf, String)>) -> Result<SchemaSource, SchemaErrors> {
        let mut source = SchemaSource::default();
        let mut errors = Vec::new();
        for (index, (path, text)) in files.into_iter().enumerate() {
            parse_file(index, &path, &text, &mut source, &mut errors);
            source.files.push(path);
        }
        check_unique_names(&source, &mut errors);
        if errors.is_empty() {
            Ok(source)
        } else {
            Err(SchemaErrors::normalized(errors))
        }
    }
}

/// Reads and parses every `*.toml` file in `dir`, in name order.
pub fn load_dir(dir: &Path) -> Result<SchemaSource, SchemaErrors> {
    let whole_dir = |message: String| {
        SchemaErrors(vec![SchemaError::at(
            dir.to_path_buf(),
            Pos::default(),
            message,
        )])
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|e| whole_dir(format!("cannot read the schema directory: {e}")))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| whole_dir(format!("cannot read the schema directory: {e}")))?;
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "toml") && path.is_file() {
            paths.push(path);
        }
    }
    if paths.is_empty() {
        return Err(whole_dir(
            "no schema files (`*.toml`) in this directory".into(),
        ));
    }
    paths.sort();
    let mut files = Vec::with_capacity(paths.len());
    let mut errors = Vec::new();
    for path in paths {
        match std::fs::read_to_string(&path) {
            Ok(text) => files.push((path, text)),
            Err(e) => errors.push(SchemaError::at(
                path,
                Pos::default(),
                format!("cannot read: {e}"),
            )),
        }
    }
    if !errors.is_empty() {
        return Err(SchemaErrors::normalized(errors));
    }
    SchemaSource::from_files(files)
}

/// Byte offsets → line and column (in characters), both 1-based.
pub(crate) struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(text: &'a str) -> LineIndex<'a> {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { text, starts }
    }

    pub(crate) fn pos(&self, offset: usize) -> Pos {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset);
        let start = self.starts[line - 1];
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        Pos { line, column }
    }
}

/// Byte offset of a 1-based (line, column-in-characters) inside `text`.
pub(super) fn offset_in(text: &str, line: u64, column: u64) -> Option<usize> {
    let mut line_start = 0;
    for _ in 1..line {
        line_start += text.get(line_start..)?.find('\n')? + 1;
    }
    let rest = text.get(line_start..)?;
    let col = usize::try_from(column.saturating_sub(1)).ok()?;
    let within = rest.char_indices().nth(col).map_or(rest.len(), |(i, _)| i);
    Some(line_start + within)
}

/// Where the characters of a TOML string value start in the file, when the
/// value is the file text verbatim (no escapes), so that positions inside it
/// map exactly; otherwise positions map to the start of the value.
pub(super) fn string_content(
    text: &str,
    span: &std::ops::Range<usize>,
    value: &str,
) -> Option<usize> {
    let raw = text.get(span.clone())?;
    let delim = ["'''", "\"\"\"", "'", "\""]
        .into_iter()
        .find(|d| raw.starts_with(d))?;
    let mut start = span.start + delim.len();
    if delim.len() == 3 {
        if text[start..].starts_with("\r\n") {
            start += 2;
        } else if text[start..].starts_with('\n') {
            start += 1;
        }
    }
    let end = span.end.checked_sub(delim.len())?;
    (text.get(start..end)? == value).then_some(start)
}

pub(super) struct FileCx<'a> {
    pub(super) file: usize,
    pub(super) path: &'a Path,
    pub(super) lines: LineIndex<'a>,
    pub(super) errors: &'a mut Vec<SchemaError>,
}

impl FileCx<'_> {
    pub(super) fn error(&mut self, offset: usize, message: impl Into<String>) {
        let pos = self.lines.pos(offset);
        self.errors
            .push(SchemaError::at(self.path.to_path_buf(), pos, message));
    }
}

/// Entries of a TOML table in the order they are written.
pub(super) fn in_file_order<'t, 'i>(
    table: &'t DeTable<'i>,
) -> Vec<(
    &'t Spanned<std::borrow::Cow<'i, str>>,
    &'t Spanned<DeValue<'i>>,
)> {
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    entries
}

fn parse_file(
    index: usize,
    path: &Path,
    text: &str,
    source: &mut SchemaSource,
    errors: &mut Vec<SchemaError>,
) {
    let mut cx = FileCx {
        file: index,
        path,
        lines: LineIndex::new(text),
        errors,
    };
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let offset = e.span().map_or(0, |s| s.start);
            cx.error(offset, format!("TOML syntax error: {}", e.message().trim()));
            return;
        }
    };
    for (key, value) in in_file_order(root.get_ref()) {
        if key.get_ref() == "tables" {
            parse_tables(&mut cx, text, value, &mut source.rules);
            continue;
        }
        if key.get_ref() != "shapes" {
            cx.error(
                key.span().start,
                format!(
                    "unknown top-level key `{}`: a schema file declares shapes as `[shapes.<name>]` \
                     tables and write rules as `[tables.<table>]` tables{}",
                    key.get_ref(),
                    did_you_mean(key.get_ref(), ["shapes", "tables"])
                ),
            );
            continue;
        }
        let DeValue::Table(table) = value.get_ref() else {
            cx.error(
                value.span().start,
                "`shapes` must be a table of shapes: `[shapes.<name>]`",
            );
            continue;
        };
        for (name, shape) in in_file_order(table) {
            if let Some(s) = parse_shape(&mut cx, text, name, shape) {
                source.shapes.push(s);
            }
        }
    }
}

fn valid_shape_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

pub(super) fn parse_table_name(name: &str) -> Option<(String, String)> {
    let (schema, table) = match name.split_once('.') {
        Some((s, t)) => (s, t),
        None => ("public", name),
    };
    let ok = |s: &str| !s.is_empty() && !s.contains('.') && s.trim() == s;
    (ok(schema) && ok(table)).then(|| (schema.to_string(), table.to_string()))
}

fn parse_shape(
    cx: &mut FileCx<'_>,
    text: &str,
    name: &Spanned<std::borrow::Cow<'_, str>>,
    shape: &Spanned<DeValue<'_>>,
) -> Option<ShapeSource> {
    let name_offset = name.span().start;
    let shape_name = name.get_ref().to_string();
    if !valid_shape_name(&shape_name) {
        cx.error(
            name_offset,
            format!(
                "invalid shape name `{shape_name}`: use lower-case letters, digits and `_`, \
                 starting with a letter or `_`"
            ),
        );
    }
    let DeValue::Table(fields) = shape.get_ref() else {
        cx.error(
            shape.span().start,
            format!("shape `{shape_name}` must be a table: `[shapes.{shape_name}]`"),
        );
        return None;
    };
    let mut table = None;
    let mut columns = None;
    let mut filter = None;
    let mut default = true;
    let mut ok = valid_shape_name(&shape_name);
    for (key, value) in in_file_order(fields) {
        let start = value.span().start;
        match key.get_ref().as_ref() {
            "table" => match value.get_ref().as_str().map(parse_table_name) {
                Some(Some(t)) => {
                    table = Some(Located {
                        value: t,
                        pos: cx.lines.pos(start),
                    })
                }
                Some(None) => {
                    ok = false;
                    cx.error(start, "`table` must be `\"table\"` or `\"schema.table\"`");
                }
                None => {
                    ok = false;
                    cx.error(start, "`table` must be a string: `table = \"todos\"`");
                }
            },
            "columns" => {
                let Some(items) = value.get_ref().as_array() else {
                    ok = false;
                    cx.error(start, "`columns` must be an array of column names");
                    continue;
                };
                let mut names = Vec::new();
                for item in items.iter() {
                    match item.get_ref().as_str() {
                        Some(s) => names.push(Located {
                            value: s.to_string(),
                            pos: cx.lines.pos(item.span().start),
                        }),
                        None => {
                            ok = false;
                            cx.error(item.span().start, "a column name must be a string");
                        }
                    }
                }
                columns = Some(Located {
                    value: names,
                    pos: cx.lines.pos(start),
                });
            }
            "where" => {
                let Some(clause) = value.get_ref().as_str() else {
                    ok = false;
                    cx.error(
                        start,
                        "`where` must be a string holding an SQL boolean expression",
                    );
                    continue;
                };
                let span = value.span();
                let content = string_content(text, &span, clause);
                let lines = &cx.lines;
                let map = |line: u64, column: u64| match content
                    .and_then(|c| offset_in(clause, line, column).map(|o| c + o))
                {
                    Some(offset) => lines.pos(offset),
                    None => lines.pos(span.start),
                };
                match parse_filter(clause, &map) {
                    Ok(e) => filter = Some(e),
                    Err(errs) => {
                        ok = false;
                        for (pos, message) in errs {
                            cx.errors
                                .push(SchemaError::at(cx.path.to_path_buf(), pos, message));
                        }
                    }
                }
            }
            "default" => match value.get_ref().as_bool() {
                Some(b) => default = b,
                None => {
                    ok = false;
                    cx.error(start, "`default` must be `true` or `false`");
                }
            },
            other => {
                ok = false;
                cx.error(
                    key.span().start,
                    format!(
                        "unknown key `{other}` in shape `{shape_name}`{} (a shape has: {})",
                        did_you_mean(other, SHAPE_KEYS),
                        SHAPE_KEYS.join(", ")
                    ),
                );
            }
        }
    }
    let Some(table) = table else {
        if ok {
            cx.error(
                name_offset,
                format!("shape `{shape_name}` has no `table`: add `table = \"<table>\"`"),
            );
        }
        return None;
    };
    ok.then(|| ShapeSource {
        name: shape_name,
        file: cx.file,
        pos: cx.lines.pos(name_offset),
        table,
        columns,
        filter,
        default,
    })
}

fn check_unique_names(source: &SchemaSource, errors: &mut Vec<SchemaError>) {
    let mut seen: HashMap<&str, &ShapeSource> = HashMap::new();
    for shape in &source.shapes {
        if let Some(first) = seen.get(shape.name.as_str()) {
            errors.push(SchemaError::at(
                source.files[shape.file].clone(),
                shape.pos,
                format!(
                    "shape `{}` is declared twice: first at {}:{}:{}",
                    shape.name,
                    source.files[first.file].display(),
                    first.pos.line,
                    first.pos.column
                ),
            ));
        } else {
            seen.insert(&shape.name, shape);
        }
    }
}
