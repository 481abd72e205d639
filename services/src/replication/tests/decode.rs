//! The pgoutput decoder and stream framing on hand-built frames.

use bytes::Bytes;
use proptest::prelude::*;

use super::super::stream::parse_copy_data;
use super::super::*;

/// A column for [`Frame::tuple`]: `None` = null, `Some(None)` = unchanged
/// TOAST, `Some(Some((kind, bytes)))` = a text or binary value.
type Column<'a> = Option<Option<(u8, &'a [u8])>>;

/// Builds a message the way pgoutput writes it.
#[derive(Default)]
struct Frame(Vec<u8>);

impl Frame {
    fn new(tag: u8) -> Self {
        Frame(vec![tag])
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn i16(mut self, v: i16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn cstr(mut self, s: &str) -> Self {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self
    }
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    /// TupleData.
    fn tuple(mut self, values: &[Column<'_>]) -> Self {
        self = self.i16(values.len() as i16);
        for v in values {
            self = match v {
                None => self.u8(b'n'),
                Some(None) => self.u8(b'u'),
                Some(Some((kind, bytes))) => self.u8(*kind).i32(bytes.len() as i32).raw(bytes),
            };
        }
        self
    }
    fn bytes(self) -> Bytes {
        Bytes::from(self.0)
    }
}

fn text(s: &str) -> TupleValue {
    TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn err_kind(buf: Bytes) -> (usize, DecodeErrorKind) {
    let e = decode(buf).expect_err("decoding should fail");
    (e.offset, e.kind)
}

#[test]
fn begin_and_commit() {
    let b = Frame::new(b'B')
        .u64(0x16_B374_D848)
        .u64(700_000_000)
        .u32(4242);
    assert_eq!(
        decode(b.bytes()).unwrap(),
        PgOutput::Begin(Begin {
            final_lsn: Lsn(0x16_B374_D848),
            commit_time: 700_000_000,
            xid: 4242
        })
    );
    let c = Frame::new(b'C').u8(0).u64(10).u64(20).u64(30);
    assert_eq!(
        decode(c.bytes()).unwrap(),
        PgOutput::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(10),
            end_lsn: Lsn(20),
            commit_time: 30
        })
    );
}

#[test]
fn origin_and_type() {
    let o = Frame::new(b'O').u64(99).cstr("node_a");
    assert_eq!(
        decode(o.bytes()).unwrap(),
        PgOutput::Origin(Origin {
            commit_lsn: Lsn(99),
            name: "node_a".into()
        })
    );
    let y = Frame::new(b'Y').u32(16_400).cstr("public").cstr("mood");
    assert_eq!(
        decode(y.bytes()).unwrap(),
        PgOutput::Type(TypeMsg {
            id: 16_400,
            namespace: "public".into(),
            name: "mood".into()
        })
    );
}

#[test]
fn relation() {
    let r = Frame::new(b'R')
        .u32(16_385)
        .cstr("public")
        .cstr("tödös")
        .u8(b'd')
        .i16(2)
        .u8(1)
        .cstr("id")
        .u32(20)
        .i32(-1)
        .u8(0)
        .cstr("title")
        .u32(1043)
        .i32(104);
    assert_eq!(
        decode(r.bytes()).unwrap(),
        PgOutput::Relation(Relation {
            id: 16_385,
            namespace: "public".into(),
            name: "tödös".into(),
            replica_identity: b'd',
            columns: vec![
                RelationColumn {
                    is_key: true,
                    name: "id".into(),
                    type_oid: 20,
                    type_modifier: -1
                },
                RelationColumn {
                    is_key: false,
                    name: "title".into(),
                    type_oid: 1043,
                    type_modifier: 104
                },
            ],
        })
    );
}

#[test]
fn insert_with_every_value_kind() {
    let i = Frame::new(b'I').u32(7).u8(b'N').tuple(&[
        Some(Some((b't', b"42"))),
        None,
        Some(None),
        Some(Some((b'b', &[0, 1, 2]))),
        Some(Some((b't', b""))),
    ]);
    assert_eq!(
        decode(i.bytes()).unwrap(),
        PgOutput::Insert(Insert {
            relation_id: 7,
            new: Tuple(vec![
                text("42"),
                TupleValue::Null,
                TupleValue::UnchangedToast,
                TupleValue::Binary(Bytes::from_static(&[0, 1, 2])),
                text(""),
            ]),
        })
    );
}

#[test]
fn values_are_slices_of_the_input() {
    let buf = Frame::new(b'I')
        .u32(7)
        .u8(b'N')
        .tuple(&[Some(Some((b't', b"hello")))])
        .bytes();
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let PgOutput::Insert(insert) = decode(buf.clone()).unwrap() else {
        panic!("not an insert");
    };
    let TupleValue::Text(v) = &insert.new.0[0] else {
        panic!("not text");
    };
    assert!(range.contains(&(v.as_ptr() as usize)));
}

#[test]
fn update_variants() {
    let new = [Some(Some((b't', &b"1"[..]))), Some(Some((b't', &b"b"[..])))];
    let plain = Frame::new(b'U').u32(7).u8(b'N').tuple(&new);
    let PgOutput::Update(u) = decode(plain.bytes()).unwrap() else {
        panic!()
    };
    assert_eq!((u.old, u.key), (None, None));
    assert_eq!(u.new, Tuple(vec![text("1"), text("b")]));

    let with_key = Frame::new(b'U')
        .u32(7)
        .u8(b'K')
        .tuple(&[Some(Some((b't', b"0"))), None])
        .u8(b'N')
        .tuple(&new);
    let PgOutput::Update(u) = decode(with_key.bytes()).unwrap() else {
        panic!()
    };
    assert_eq!(u.key, Some(Tuple(vec![text("0"), TupleValue::Null])));
    assert_eq!(u.old, None);

    let with_old = Frame::new(b'U')
        .u32(7)
        .u8(b'O')
        .tuple(&[Some(Some((b't', b"1"))), Some(Some((b't', b"a")))])
        .u8(b'N')
        .tuple(&new);
    let PgOutput::Update(u) = decode(with_old.bytes()).unwrap() else {
        panic!()
    };
    assert_eq!(u.old, Some(Tuple(vec![text("1"), text("a")])));
    assert_eq!(u.key, None);

    let bad = Frame::new(b'U').u32(7).u8(b'X').tuple(&new);
    assert_eq!(
        err_kind(bad.bytes()),
        (
            5,
            DecodeErrorKind::UnexpectedTupleMarker {
                expected: "'N' (new tuple)",
                found: 'X'
            }
        )
    );
}

#[test]
fn delete_variants() {
    let key = Frame::new(b'D')
        .u32(7)
        .u8(b'K')
        .tuple(&[Some(Some((b't', b"1")))]);
    assert_eq!(
        decode(key.bytes()).unwrap(),
        PgOutput::Delete(Delete {
            relation_id: 7,
            old: None,
            key: Some(Tuple(vec![text("1")]))
        })
    );
    let old = Frame::new(b'D')
        .u32(7)
        .u8(b'O')
        .tuple(&[Some(Some((b't', b"1")))]);
    let PgOutput::Delete(d) = decode(old.bytes()).unwrap() else {
        panic!()
    };
    assert_eq!(d.old, Some(Tuple(vec![text("1")])));
    let none = Frame::new(b'D').u32(7).u8(b'N').tuple(&[]);
    assert!(matches!(
        err_kind(none.bytes()),
        (5, DecodeErrorKind::UnexpectedTupleMarker { found: 'N', .. })
    ));
}

#[test]
fn truncate_and_message() {
    let t = Frame::new(b'T').i32(2).u8(3).u32(10).u32(11);
    assert_eq!(
        decode(t.bytes()).unwrap(),
        PgOutput::Truncate(Truncate {
            options: Truncate::CASCADE | Truncate::RESTART_IDENTITY,
            relation_ids: vec![10, 11]
        })
    );
    let m = Frame::new(b'M').u8(1).u64(77).cstr("p").i32(3).raw(b"x\0y");
    assert_eq!(
        decode(m.bytes()).unwrap(),
        PgOutput::Message(LogicalMessage {
            transactional: true,
            lsn: Lsn(77),
            prefix: "p".into(),
            content: Bytes::from_static(b"x\0y")
        })
    );
    let m = Frame::new(b'M').u8(0).u64(77).cstr("").i32(0);
    let PgOutput::Message(m) = decode(m.bytes()).unwrap() else {
        panic!()
    };
    assert!(!m.transactional);
    assert!(m.content.is_empty());
}

#[test]
fn malformed_messages_are_errors_with_offsets() {
    assert_eq!(err_kind(Bytes::new()), (0, DecodeErrorKind::Empty));
    assert_eq!(
        err_kind(Frame::new(b'Z').bytes()),
        (0, DecodeErrorKind::UnknownMessage('Z'))
    );
    assert_eq!(
        err_kind(Frame::new(b'B').u64(1).u32(2).bytes()),
        (
            9,
            DecodeErrorKind::Truncated {
                field: "commit time",
                needed: 8,
                available: 4
            }
        )
    );
    assert_eq!(
        err_kind(Frame::new(b'O').u64(1).raw(b"abc").bytes()),
        (
            9,
            DecodeErrorKind::UnterminatedString {
                field: "origin name"
            }
        )
    );
    assert_eq!(
        err_kind(Frame::new(b'O').u64(1).raw(b"\xff\0").bytes()),
        (
            9,
            DecodeErrorKind::InvalidUtf8 {
                field: "origin name"
            }
        )
    );
    assert_eq!(
        err_kind(Frame::new(b'I').u32(1).u8(b'N').i16(1).u8(b'q').bytes()),
        (8, DecodeErrorKind::UnknownValueKind('q'))
    );
    assert_eq!(
        err_kind(
            Frame::new(b'I')
                .u32(1)
                .u8(b'N')
                .i16(1)
                .u8(b't')
                .i32(-5)
                .bytes()
        ),
        (
            9,
            DecodeErrorKind::NegativeLength {
                field: "text value",
                length: -5
            }
        )
    );
    assert_eq!(
        err_kind(
            Frame::new(b'I')
                .u32(1)
                .u8(b'N')
                .i16(1)
                .u8(b't')
                .i32(10)
                .raw(b"abc")
                .bytes()
        ),
        (
            13,
            DecodeErrorKind::Truncated {
                field: "text value",
                needed: 10,
                available: 3
            }
        )
    );
    assert_eq!(
        err_kind(Frame::new(b'I').u32(1).u8(b'N').i16(-1).bytes()),
        (
            6,
            DecodeErrorKind::NegativeLength {
                field: "tuple column count",
                length: -1
            }
        )
    );
    assert_eq!(
        err_kind(Frame::new(b'T').i32(-1).u8(0).bytes()),
        (
            1,
            DecodeErrorKind::NegativeLength {
                field: "relation count",
                length: -1
            }
        )
    );
    assert_eq!(
        err_kind(Frame::new(b'C').u8(0).u64(1).u64(2).u64(3).u8(9).bytes()),
        (26, DecodeErrorKind::TrailingBytes(1))
    );
    // A huge declared count with no data is an error, not an allocation.
    assert!(matches!(
        err_kind(Frame::new(b'T').i32(i32::MAX).u8(0).bytes()).1,
        DecodeErrorKind::Truncated { .. }
    ));
    let e = decode(Frame::new(b'B').bytes()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "malformed pgoutput message: message ends inside final LSN (8 bytes needed, 0 left) at byte 1"
    );
}

#[test]
fn xlogdata_and_keepalive_framing() {
    let payload = Frame::new(b'B').u64(5).u64(6).u32(7).0;
    let xlog = Frame::new(b'w')
        .u64(100)
        .u64(200)
        .u64(0)
        .raw(&payload)
        .bytes();
    assert_eq!(
        parse_copy_data(xlog).unwrap(),
        ReplicationEvent::Message {
            wal_start: Lsn(100),
            wal_end: Lsn(200),
            message: PgOutput::Begin(Begin {
                final_lsn: Lsn(5),
                commit_time: 6,
                xid: 7
            })
        }
    );
    let keepalive = Frame::new(b'k').u64(300).u64(0).u8(1).bytes();
    assert_eq!(
        parse_copy_data(keepalive).unwrap(),
        ReplicationEvent::Keepalive {
            wal_end: Lsn(300),
            reply_requested: true
        }
    );
    assert!(matches!(
        parse_copy_data(Frame::new(b'w').u64(1).bytes()),
        Err(ReplicationError::Protocol(_))
    ));
    assert!(matches!(
        parse_copy_data(Frame::new(b'k').u64(1).bytes()),
        Err(ReplicationError::Protocol(_))
    ));
    assert!(matches!(
        parse_copy_data(Frame::new(b'w').u64(1).u64(2).u64(3).u8(b'?').bytes()),
        Err(ReplicationError::Decode(_))
    ));
    assert!(parse_copy_data(Bytes::new()).is_err());
    assert!(parse_copy_data(Frame::new(b'x').bytes()).is_err());
}

/// Valid messages of every kind, for truncation and mutation tests.
fn valid_messages() -> Vec<Vec<u8>> {
    let tuple = [
        Some(Some((b't', &b"42"[..]))),
        None,
        Some(None),
        Some(Some((b'b', &b"\x01"[..]))),
    ];
    vec![
        Frame::new(b'B').u64(1).u64(2).u32(3).0,
        Frame::new(b'C').u8(0).u64(1).u64(2).u64(3).0,
        Frame::new(b'O').u64(1).cstr("o").0,
        Frame::new(b'R')
            .u32(1)
            .cstr("s")
            .cstr("t")
            .u8(b'f')
            .i16(1)
            .u8(1)
            .cstr("id")
            .u32(23)
            .i32(-1)
            .0,
        Frame::new(b'Y').u32(1).cstr("s").cstr("t").0,
        Frame::new(b'I').u32(1).u8(b'N').tuple(&tuple).0,
        Frame::new(b'U')
            .u32(1)
            .u8(b'O')
            .tuple(&tuple)
            .u8(b'N')
            .tuple(&tuple)
            .0,
        Frame::new(b'D').u32(1).u8(b'K').tuple(&tuple).0,
        Frame::new(b'T').i32(2).u8(1).u32(1).u32(2).0,
        Frame::new(b'M').u8(1).u64(1).cstr("p").i32(1).raw(b"x").0,
    ]
}

#[test]
fn every_truncation_of_a_valid_message_is_an_error() {
    for msg in valid_messages() {
        assert!(decode(Bytes::from(msg.clone())).is_ok());
        for len in 0..msg.len() {
            assert!(
                decode(Bytes::copy_from_slice(&msg[..len])).is_err(),
                "prefix {len} of {msg:?} decoded"
            );
        }
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(Bytes::from(bytes));
    }

    #[test]
    fn arbitrary_bodies_of_known_messages_never_panic(
        tag in prop::sample::select(b"BCORYIUDTM".to_vec()),
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut msg = vec![tag];
        msg.extend(body);
        let _ = decode(Bytes::from(msg));
    }

    #[test]
    fn mutated_valid_messages_never_panic(
        which in 0usize..10,
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut msg = valid_messages().swap_remove(which);
        let i = at.index(msg.len());
        msg[i] = byte;
        let _ = decode(Bytes::from(msg));
    }

    #[test]
    fn arbitrary_copy_data_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = parse_copy_data(Bytes::from(bytes));
    }
}
