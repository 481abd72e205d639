//! Reading `[tables.<table>]` sections: the allowed keys, the syntax of the
//! permission expressions, merge kind names and function names. No database
//! is needed here.
//!
//! Invariant: every error carries the file, line and column it concerns;
//! a section with any error is dropped (so later stages see only sections
//! that parsed completely).

use std::borrow::Cow;

use toml::Spanned;
use toml::de::DeValue;

use super::{MergeKind, WriteKind};
use crate::schema::error::{Pos, SchemaError, did_you_mean};
use crate::schema::expr::{Expr, parse_filter};
use crate::schema::file::{
    FileCx, Located, in_file_order, offset_in, parse_table_name, string_content,
};

/// The keys a `[tables.<table>]` section accepts.
const TABLE_KEYS: [&str; 5] = ["insert", "update", "delete", "function", "merge"];

/// A permission expression as written.
#[derive(Clone, Debug)]
pub(crate) struct RuleSource {
    pub kind: WriteKind,
    pub expr: Expr,
    /// The expression's text, for messages.
    pub text: String,
    /// Where the value is written.
    pub pos: Pos,
}

/// One `[tables.<table>]` section, syntax-checked.
#[derive(Clone, Debug)]
pub(crate) struct TableRulesSource {
    /// Index into `SchemaSource::files`.
    pub file: usize,
    /// Where the table's name is written.
    pub pos: Pos,
    /// `(schema, table)`.
    pub table: (String, String),
    pub rules: Vec<RuleSource>,
    /// The function's name as written (`app.check_todo`).
    pub function: Option<Located<String>>,
    /// `column = kind` pairs, in file order.
    pub merge: Vec<(Located<String>, Located<MergeKind>)>,
}

/// Parses the value of the top-level `tables` key into `out`.
pub(in crate::schema) fn parse_tables(
    cx: &mut FileCx<'_>,
    text: &str,
    value: &Spanned<DeValue<'_>>,
    out: &mut Vec<TableRulesSource>,
) {
    let DeValue::Table(tables) = value.get_ref() else {
        cx.error(
            value.span().start,
            "`tables` must be a table of write rules: `[tables.<table>]`",
        );
        return;
    };
    for (name, section) in in_file_order(tables) {
        if let Some(t) = parse_section(cx, text, name, section) {
            out.push(t);
        }
    }
}

fn parse_section(
    cx: &mut FileCx<'_>,
    text: &str,
    name: &Spanned<Cow<'_, str>>,
    section: &Spanned<DeValue<'_>>,
) -> Option<TableRulesSource> {
    let name_offset = name.span().start;
    let Some(table) = parse_table_name(name.get_ref()) else {
        cx.error(
            name_offset,
            format!(
                "`[tables.{}]` must name a table as `table` or `\"schema.table\"`",
                name.get_ref()
            ),
        );
        return None;
    };
    let label = name.get_ref().to_string();
    let DeValue::Table(fields) = section.get_ref() else {
        cx.error(
            section.span().start,
            format!("the write rules of `{label}` must be a table: `[tables.{label}]`"),
        );
        return None;
    };
    let mut out = TableRulesSource {
        file: cx.file,
        pos: cx.lines.pos(name_offset),
        table,
        rules: Vec::new(),
        function: None,
        merge: Vec::new(),
    };
    let mut ok = true;
    for (key, value) in in_file_order(fields) {
        let start = value.span().start;
        match key.get_ref().as_ref() {
            k @ ("insert" | "update" | "delete") => {
                let kind = match k {
                    "insert" => WriteKind::Insert,
                    "update" => WriteKind::Update,
                    _ => WriteKind::Delete,
                };
                match parse_rule(cx, text, kind, value) {
                    Some(rule) => out.rules.push(rule),
                    None => ok = false,
                }
            }
            "function" => match value.get_ref().as_str() {
                Some(f) if valid_function_name(f) => {
                    out.function = Some(Located {
                        value: f.to_string(),
                        pos: cx.lines.pos(start),
                    })
                }
                Some(f) => {
                    ok = false;
                    cx.error(
                        start,
                        format!(
                            "`{f}` is not a function name: write `function = \"name\"` or \
                             `function = \"schema.name\"`"
                        ),
                    );
                }
                None => {
                    ok = false;
                    cx.error(
                        start,
                        "`function` must be a string: `function = \"app.check_todo\"`",
                    );
                }
            },
            "merge" => ok &= parse_merge(cx, &label, value, &mut out.merge),
            other => {
                ok = false;
                let hint = if matches!(value.get_ref(), DeValue::Table(_)) && !label.contains('.') {
                    format!(
                        "; a table outside schema `public` is written `[tables.\"{label}.{other}\"]`"
                    )
                } else {
                    did_you_mean(other, TABLE_KEYS)
                };
                cx.error(
                    key.span().start,
                    format!(
                        "unknown key `{other}` in `[tables.{label}]`{hint} (write rules have: {})",
                        TABLE_KEYS.join(", ")
                    ),
                );
            }
        }
    }
    ok.then_some(out)
}

fn parse_rule(
    cx: &mut FileCx<'_>,
    text: &str,
    kind: WriteKind,
    value: &Spanned<DeValue<'_>>,
) -> Option<RuleSource> {
    let span = value.span();
    let Some(clause) = value.get_ref().as_str() else {
        cx.error(
            span.start,
            format!(
                "`{kind}` must be a string holding an SQL boolean expression over `old.<column>`, \
                 `new.<column>` and `auth.<claim>`"
            ),
        );
        return None;
    };
    if clause.trim().is_empty() {
        cx.error(
            span.start,
            format!("the `{kind}` rule is empty: write `{kind} = \"true\"` to allow every {kind}"),
        );
        return None;
    }
    let content = string_content(text, &span, clause);
    let lines = &cx.lines;
    let map = |line: u64, column: u64| match content
        .and_then(|c| offset_in(clause, line, column).map(|o| c + o))
    {
        Some(offset) => lines.pos(offset),
        None => lines.pos(span.start),
    };
    match parse_filter(clause, &map) {
        Ok(expr) => Some(RuleSource {
            kind,
            pos: expr.pos,
            expr,
            text: clause.trim().to_string(),
        }),
        Err(errs) => {
            for (pos, message) in errs {
                let message = message.replace("in a shape filter", "in a write rule");
                cx.errors
                    .push(SchemaError::at(cx.path.to_path_buf(), pos, message));
            }
            None
        }
    }
}

fn parse_merge(
    cx: &mut FileCx<'_>,
    label: &str,
    value: &Spanned<DeValue<'_>>,
    out: &mut Vec<(Located<String>, Located<MergeKind>)>,
) -> bool {
    let DeValue::Table(columns) = value.get_ref() else {
        cx.error(
            value.span().start,
            format!(
                "`merge` must be a table of column = kind: `[tables.{label}.merge]` with \
                 lines like `likes = \"counter\"`"
            ),
        );
        return false;
    };
    let mut ok = true;
    for (column, kind) in in_file_order(columns) {
        let start = kind.span().start;
        let Some(name) = kind.get_ref().as_str() else {
            ok = false;
            cx.error(
                start,
                format!(
                    "the merge kind of `{}` must be a string, one of: {}",
                    column.get_ref(),
                    MergeKind::NAMES.join(", ")
                ),
            );
            continue;
        };
        let Some(merge) = MergeKind::parse(name) else {
            ok = false;
            cx.error(
                start,
                format!(
                    "unknown merge kind `{name}`{} (one of: {})",
                    did_you_mean(name, MergeKind::NAMES),
                    MergeKind::NAMES.join(", ")
                ),
            );
            continue;
        };
        out.push((
            Located {
                value: column.get_ref().to_string(),
                pos: cx.lines.pos(column.span().start),
            },
            Located {
                value: merge,
                pos: cx.lines.pos(start),
            },
        ));
    }
    ok
}

/// `name`, `schema.name`, either part possibly `"quoted"`: what Postgres
/// reads as a function name, and nothing that could end the name early.
fn valid_function_name(name: &str) -> bool {
    fn part(s: &str) -> Option<&str> {
        if let Some(rest) = s.strip_prefix('"') {
            // A quoted identifier: up to the closing quote, `""` escapes one.
            let mut chars = rest.char_indices().peekable();
            while let Some((i, c)) = chars.next() {
                if c == '"' {
                    if chars.peek().is_some_and(|(_, n)| *n == '"') {
                        chars.next();
                        continue;
                    }
                    return (i > 0).then(|| &rest[i + 1..]);
                }
            }
            return None;
        }
        let end = s
            .char_indices()
            .find(|&(i, c)| {
                !(c.is_alphanumeric() || c == '_' || (i > 0 && c == '$'))
                    || (i == 0 && c.is_ascii_digit())
            })
            .map_or(s.len(), |(i, _)| i);
        (end > 0).then(|| &s[end..])
    }
    let Some(rest) = part(name) else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    match rest.strip_prefix('.').and_then(part) {
        Some(tail) => tail.is_empty(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::valid_function_name;

    #[test]
    fn function_names() {
        for ok in ["f", "app.check_todo", "\"My Fn\"", "app.\"x\"\"y\"", "_a$1"] {
            assert!(valid_function_name(ok), "{ok}");
        }
        for bad in [
            "",
            "1f",
            "a.b.c",
            "f()",
            "a;drop",
            "\"unterminated",
            "a .b",
            "\"\"",
        ] {
            assert!(!valid_function_name(bad), "{bad}");
        }
    }
}
