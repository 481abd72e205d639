//! Decoder for the messages of the `pgoutput` logical decoding plugin,
//! protocol version 1.
//!
//! Each XLogData payload of a logical replication stream carries exactly one
//! pgoutput message; [`decode`] turns it into a [`PgOutput`].
//!
//! Invariants:
//! - Decoding never panics, whatever the input: every read is bounds-checked
//!   and a malformed message gives a [`DecodeError`] naming what was wrong and
//!   the byte offset (from the start of the message) where it was found.
//! - Decoding is zero-copy for row data: every [`TupleValue`] holds a
//!   [`Bytes`] slice of the input buffer. Names (relation, column, type,
//!   origin, message prefix) are copied into `String`s; they are rare.
//! - A message is consumed entirely; trailing bytes are an error, so that a
//!   framing mistake is noticed instead of silently dropping data.
//!
//! Strings are decoded as UTF-8: the replication connection asks for
//! `client_encoding=UTF8`, and the walsender converts its output to it.

use bytes::Bytes;

use crate::lsn::Lsn;

/// One decoded pgoutput message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PgOutput {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(TypeMsg),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    Message(LogicalMessage),
}

/// Start of a transaction (`B`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 00:00:00 UTC.
    pub commit_time: i64,
    pub xid: u32,
}

/// End of a transaction (`C`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// Unused by Postgres so far (always 0).
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// LSN just past the commit record: the position to acknowledge once the
    /// transaction is durable.
    pub end_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 00:00:00 UTC.
    pub commit_time: i64,
}

/// The transaction came from another node (`O`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// Commit LSN on the origin server.
    pub commit_lsn: Lsn,
    pub name: String,
}

/// Description of a table, sent before its first row in the session and
/// again whenever it changed (`R`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    /// The table's OID: the key that row messages refer to.
    pub id: u32,
    /// Schema name (empty for `pg_catalog`).
    pub namespace: String,
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn>,
}

/// One column of a [`Relation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationColumn {
    /// The column is part of the replica identity key.
    pub is_key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// Description of a non-builtin data type (`Y`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeMsg {
    pub id: u32,
    /// Schema name (empty for `pg_catalog`).
    pub namespace: String,
    pub name: String,
}

/// A row was inserted (`I`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Insert {
    pub relation_id: u32,
    pub new: Tuple,
}

/// A row was updated (`U`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    pub relation_id: u32,
    /// The whole old row (`O`), under `REPLICA IDENTITY FULL`.
    pub old: Option<Tuple>,
    /// The old key columns (`K`), when the replica identity key changed;
    /// non-key columns are `Null`.
    pub key: Option<Tuple>,
    pub new: Tuple,
}

/// A row was deleted (`D`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delete {
    pub relation_id: u32,
    /// The whole old row (`O`), under `REPLICA IDENTITY FULL`.
    pub old: Option<Tuple>,
    /// The old key columns (`K`); non-key columns are `Null`.
    pub key: Option<Tuple>,
}

/// Tables were truncated (`T`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncate {
    /// Bit set of [`Truncate::CASCADE`] and [`Truncate::RESTART_IDENTITY`].
    pub options: u8,
    pub relation_ids: Vec<u32>,
}

impl Truncate {
    pub const CASCADE: u8 = 1;
    pub const RESTART_IDENTITY: u8 = 2;
}

/// A message written with `pg_logical_emit_message` (`M`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Emitted inside a transaction (delivered between Begin and Commit)
    /// rather than immediately.
    pub transactional: bool,
    pub lsn: Lsn,
    pub prefix: String,
    pub content: Bytes,
}

/// The column values of one row, in the order of the relation's columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuple(pub Vec<TupleValue>);

/// One column value of a [`Tuple`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TupleValue {
    Null,
    /// A TOASTed value that did not change: its value is not sent (`u`).
    UnchangedToast,
    /// The value in the type's text output form (`t`).
    Text(Bytes),
    /// The value in the type's binary form (`b`).
    Binary(Bytes),
}

/// A malformed pgoutput message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed pgoutput message: {kind} at byte {offset}")]
pub struct DecodeError {
    /// Offset from the start of the message where the problem was found.
    pub offset: usize,
    pub kind: DecodeErrorKind,
}

/// What was wrong in a malformed pgoutput message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorKind {
    #[error("empty message")]
    Empty,
    #[error("unknown message type {0:?}")]
    UnknownMessage(char),
    #[error("message ends inside {field} ({needed} bytes needed, {available} left)")]
    Truncated {
        field: &'static str,
        needed: usize,
        available: usize,
    },
    #[error("{field} has no terminating NUL")]
    UnterminatedString { field: &'static str },
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    #[error("{field} has negative length {length}")]
    NegativeLength { field: &'static str, length: i64 },
    #[error("unknown tuple value kind {0:?}")]
    UnknownValueKind(char),
    #[error("expected {expected}, found {found:?}")]
    UnexpectedTupleMarker { expected: &'static str, found: char },
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
}

/// Decodes one pgoutput (protocol version 1) message.
pub fn decode(buf: Bytes) -> Result<PgOutput, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    let tag = r.u8("message type").map_err(|_| DecodeError {
        offset: 0,
        kind: DecodeErrorKind::Empty,
    })?;
    let msg = match tag {
        b'B' => PgOutput::Begin(Begin {
            final_lsn: r.lsn("final LSN")?,
            commit_time: r.i64("commit time")?,
            xid: r.u32("xid")?,
        }),
        b'C' => PgOutput::Commit(Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_time: r.i64("commit time")?,
        }),
        b'O' => PgOutput::Origin(Origin {
            commit_lsn: r.lsn("origin commit LSN")?,
            name: r.string("origin name")?,
        }),
        b'R' => PgOutput::Relation(relation(&mut r)?),
        b'Y' => PgOutput::Type(TypeMsg {
            id: r.u32("type OID")?,
            namespace: r.string("type namespace")?,
            name: r.string("type name")?,
        }),
        b'I' => {
            let relation_id = r.u32("relation id")?;
            r.expect_marker(b'N', "'N' (new tuple)")?;
            PgOutput::Insert(Insert {
                relation_id,
                new: tuple(&mut r)?,
            })
        }
        b'U' => {
            let relation_id = r.u32("relation id")?;
            let (old, key) = old_or_key(&mut r)?;
            r.expect_marker(b'N', "'N' (new tuple)")?;
            PgOutput::Update(Update {
                relation_id,
                old,
                key,
                new: tuple(&mut r)?,
            })
        }
        b'D' => {
            let relation_id = r.u32("relation id")?;
            let (old, key) = old_or_key(&mut r)?;
            if old.is_none() && key.is_none() {
                let found = r.peek_u8("tuple marker")?;
                return Err(r.error(DecodeErrorKind::UnexpectedTupleMarker {
                    expected: "'K' or 'O' (old tuple)",
                    found: found as char,
                }));
            }
            PgOutput::Delete(Delete {
                relation_id,
                old,
                key,
            })
        }
        b'T' => {
            let count = r.i32("relation count")?;
            if count < 0 {
                return Err(r.error_before(
                    4,
                    DecodeErrorKind::NegativeLength {
                        field: "relation count",
                        length: count.into(),
                    },
                ));
            }
            let options = r.u8("truncate options")?;
            let count = count as usize;
            let mut relation_ids = Vec::with_capacity(count.min(r.remaining() / 4));
            for _ in 0..count {
                relation_ids.push(r.u32("truncated relation id")?);
            }
            PgOutput::Truncate(Truncate {
                options,
                relation_ids,
            })
        }
        b'M' => {
            let flags = r.u8("message flags")?;
            let lsn = r.lsn("message LSN")?;
            let prefix = r.string("message prefix")?;
            let len = r.i32("message length")?;
            let content = r.counted(len, "message content")?;
            PgOutput::Message(LogicalMessage {
                transactional: flags & 1 == 1,
                lsn,
                prefix,
                content,
            })
        }
        other => {
            return Err(DecodeError {
                offset: 0,
                kind: DecodeErrorKind::UnknownMessage(other as char),
            });
        }
    };
    if r.remaining() > 0 {
        return Err(r.error(DecodeErrorKind::TrailingBytes(r.remaining())));
    }
    Ok(msg)
}

fn relation(r: &mut Reader) -> Result<Relation, DecodeError> {
    let id = r.u32("relation id")?;
    let namespace = r.string("relation namespace")?;
    let name = r.string("relation name")?;
    let replica_identity = r.u8("replica identity")?;
    let ncols = r.i16("column count")?;
    if ncols < 0 {
        return Err(r.error_before(
            2,
            DecodeErrorKind::NegativeLength {
                field: "column count",
                length: ncols.into(),
            },
        ));
    }
    // Each column takes at least 10 bytes: never trust the count for the
    // allocation size alone.
    let ncols = ncols as usize;
    let mut columns = Vec::with_capacity(ncols.min(r.remaining() / 10));
    for _ in 0..ncols {
        columns.push(RelationColumn {
            is_key: r.u8("column flags")? & 1 == 1,
            name: r.string("column name")?,
            type_oid: r.u32("column type OID")?,
            type_modifier: r.i32("column type modifier")?,
        });
    }
    Ok(Relation {
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

/// Reads the optional old row image that precedes an Update's new tuple or
/// forms a Delete: `'O'` (full old row, REPLICA IDENTITY FULL) or `'K'` (key
/// columns only). Any other marker is left unread and yields `(None, None)`.
fn old_or_key(r: &mut Reader) -> Result<(Option<Tuple>, Option<Tuple>), DecodeError> {
    match r.peek_u8("tuple marker")? {
        b'O' => {
            r.pos += 1;
            Ok((Some(tuple(r)?), None))
        }
        b'K' => {
            r.pos += 1;
            Ok((None, Some(tuple(r)?)))
        }
        _ => Ok((None, None)),
    }
}

fn tuple(r: &mut Reader) -> Result<Tuple, DecodeError> {
    let ncols = r.i16("tuple column count")?;
    if ncols < 0 {
        return Err(r.error_before(
            2,
            DecodeErrorKind::NegativeLength {
                field: "tuple column count",
                length: ncols.into(),
            },
        ));
    }
    let ncols = ncols as usize;
    let mut values = Vec::with_capacity(ncols.min(r.remaining()));
    for _ in 0..ncols {
        let value = match r.u8("tuple value kind")? {
            b'n' => TupleValue::Null,
            b'u' => TupleValue::UnchangedToast,
            b't' => {
                let len = r.i32("text value length")?;
                TupleValue::Text(r.counted(len, "text value")?)
            }
            b'b' => {
                let len = r.i32("binary value length")?;
                TupleValue::Binary(r.counted(len, "binary value")?)
            }
            other => {
                return Err(r.error_before(1, DecodeErrorKind::UnknownValueKind(other as char)));
            }
        };
        values.push(value);
    }
    Ok(Tuple(values))
}

/// A bounds-checked cursor over one message.
struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn error(&self, kind: DecodeErrorKind) -> DecodeError {
        DecodeError {
            offset: self.pos,
            kind,
        }
    }

    /// An error about the field that ended `back` bytes ago.
    fn error_before(&self, back: usize, kind: DecodeErrorKind) -> DecodeError {
        DecodeError {
            offset: self.pos.saturating_sub(back),
            kind,
        }
    }

    fn take<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes = self
            .buf
            .get(self.pos..self.pos + N)
            .and_then(|s| <[u8; N]>::try_from(s).ok())
            .ok_or_else(|| {
                self.error(DecodeErrorKind::Truncated {
                    field,
                    needed: N,
                    available: self.remaining(),
                })
            })?;
        self.pos += N;
        Ok(bytes)
    }

    fn peek_u8(&self, field: &'static str) -> Result<u8, DecodeError> {
        self.buf.get(self.pos).copied().ok_or_else(|| {
            self.error(DecodeErrorKind::Truncated {
                field,
                needed: 1,
                available: 0,
            })
        })
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take::<1>(field)?[0])
    }

    fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.take(field)?))
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.take(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take(field)?))
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.take(field)?))
    }

    fn lsn(&mut self, field: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.take(field)?)))
    }

    fn expect_marker(&mut self, marker: u8, expected: &'static str) -> Result<(), DecodeError> {
        let found = self.peek_u8(expected)?;
        if found != marker {
            return Err(self.error(DecodeErrorKind::UnexpectedTupleMarker {
                expected,
                found: found as char,
            }));
        }
        self.pos += 1;
        Ok(())
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let rest = &self.buf[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.error(DecodeErrorKind::UnterminatedString { field }))?;
        let s = std::str::from_utf8(&rest[..end])
            .map_err(|_| self.error(DecodeErrorKind::InvalidUtf8 { field }))?
            .to_owned();
        self.pos += end + 1;
        Ok(s)
    }

    /// `len` bytes, as a slice of the message.
    fn counted(&mut self, len: i32, field: &'static str) -> Result<Bytes, DecodeError> {
        let len = usize::try_from(len).map_err(|_| {
            self.error_before(
                4,
                DecodeErrorKind::NegativeLength {
                    field,
                    length: len.into(),
                },
            )
        })?;
        if len > self.remaining() {
            return Err(self.error(DecodeErrorKind::Truncated {
                field,
                needed: len,
                available: self.remaining(),
            }));
        }
        let value = self.buf.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(value)
    }
}
