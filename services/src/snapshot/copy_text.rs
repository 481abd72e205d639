//! A parser for the text format of `COPY … TO STDOUT`: rows end with `\n`,
//! columns are separated by tabs, `\N` is NULL, and backslash escapes stand
//! for special bytes. Input arrives in chunks that split rows anywhere.

/// A COPY row that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("COPY row {row}: {reason}")]
pub struct CopyParseError {
    row: u64,
    reason: String,
}

/// Accumulates chunks and yields complete rows.
#[derive(Default)]
pub(crate) struct CopyTextParser {
    pending: Vec<u8>,
    rows: u64,
}

impl CopyTextParser {
    /// Feeds a chunk; calls `f` with every row completed by it.
    pub(crate) fn feed(
        &mut self,
        chunk: &[u8],
        mut f: impl FnMut(Vec<Option<String>>) -> Result<(), CopyParseError>,
    ) -> Result<(), CopyParseError> {
        self.pending.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(nl) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + nl;
            self.rows += 1;
            let row = parse_row(&self.pending[start..end], self.rows)?;
            f(row)?;
            start = end + 1;
        }
        self.pending.drain(..start);
        Ok(())
    }

    /// Checks that no partial row is left over.
    pub(crate) fn finish(&self) -> Result<(), CopyParseError> {
        if self.pending.is_empty() {
            Ok(())
        } else {
            Err(CopyParseError {
                row: self.rows + 1,
                reason: "stream ended inside a row".into(),
            })
        }
    }
}

fn parse_row(line: &[u8], row: u64) -> Result<Vec<Option<String>>, CopyParseError> {
    let mut out = Vec::new();
    for field in line.split(|&b| b == b'\t') {
        if field == b"\\N" {
            out.push(None);
            continue;
        }
        let mut bytes = Vec::with_capacity(field.len());
        let mut i = 0;
        while i < field.len() {
            let b = field[i];
            if b != b'\\' {
                bytes.push(b);
                i += 1;
                continue;
            }
            let Some(&e) = field.get(i + 1) else {
                return Err(CopyParseError {
                    row,
                    reason: "trailing backslash".into(),
                });
            };
            i += 2;
            match e {
                b'b' => bytes.push(8),
                b'f' => bytes.push(12),
                b'n' => bytes.push(b'\n'),
                b'r' => bytes.push(b'\r'),
                b't' => bytes.push(b'\t'),
                b'v' => bytes.push(11),
                b'0'..=b'7' => {
                    let mut v: u32 = (e - b'0') as u32;
                    let mut n = 1;
                    while n < 3 && i < field.len() && (b'0'..=b'7').contains(&field[i]) {
                        v = v * 8 + (field[i] - b'0') as u32;
                        i += 1;
                        n += 1;
                    }
                    bytes.push(v as u8);
                }
                b'x' => {
                    let mut v: u32 = 0;
                    let mut n = 0;
                    while n < 2 && i < field.len() && field[i].is_ascii_hexdigit() {
                        v = v * 16 + (field[i] as char).to_digit(16).unwrap_or(0);
                        i += 1;
                        n += 1;
                    }
                    if n == 0 {
                        bytes.push(b'x');
                    } else {
                        bytes.push(v as u8);
                    }
                }
                other => bytes.push(other),
            }
        }
        let s = String::from_utf8(bytes).map_err(|_| CopyParseError {
            row,
            reason: "value is not valid UTF-8".into(),
        })?;
        out.push(Some(s));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rows_split_across_chunks() {
        let mut p = CopyTextParser::default();
        let mut rows = Vec::new();
        let input = b"1\ta\\tb\t\\N\n2\tline\\nbreak\\\\\tx\n";
        for chunk in input.chunks(3) {
            p.feed(chunk, |r| {
                rows.push(r);
                Ok(())
            })
            .unwrap();
        }
        p.finish().unwrap();
        assert_eq!(rows[0], vec![Some("1".into()), Some("a\tb".into()), None]);
        assert_eq!(
            rows[1],
            vec![
                Some("2".into()),
                Some("line\nbreak\\".into()),
                Some("x".into())
            ]
        );
    }

    #[test]
    fn partial_row_is_an_error() {
        let mut p = CopyTextParser::default();
        p.feed(b"1\t2", |_| Ok(())).unwrap();
        assert!(p.finish().is_err());
    }
}
