//! Versions of column values for last-writer-wins: a hybrid logical clock
//! reading and the writer's client id, and the hash that tells whether a
//! column still holds the value Outpost last wrote.
//!
//! Invariants: versions order by `(hlc, client_id)`, so two writes never
//! tie unless they are the same write; a change made in Postgres by another
//! program has the version of its commit time (`ms << 16`) with the empty
//! client id, below every client's write of the same millisecond.

/// The version of a column value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Version {
    /// `(milliseconds since the Unix epoch << 16) | logical counter`.
    pub hlc: i64,
    pub client_id: String,
}

impl Version {
    /// The version of a value committed at `commit_ms` (milliseconds since
    /// the Unix epoch) by a program other than Outpost.
    pub(crate) fn committed_at(commit_ms: i64) -> Version {
        Version {
            hlc: commit_ms.max(0).saturating_mul(1 << 16),
            client_id: String::new(),
        }
    }
}

/// The physical part of a hybrid logical clock reading: milliseconds since
/// the Unix epoch.
pub fn physical_ms(hlc: u64) -> u64 {
    hlc >> 16
}

/// A 64-bit hash of a column's Postgres text form (`None` = NULL): FNV-1a,
/// stable across builds, with NULL distinct from every text.
pub(crate) fn value_hash(text: Option<&str>) -> i64 {
    let Some(text) = text else {
        return 0;
    };
    let hash = std::iter::once(1u8)
        .chain(text.bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    // Stored in a bigint column: the same 64 bits, read as signed.
    i64::from_ne_bytes(hash.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_by_clock_then_client() {
        let v = |hlc, c: &str| Version {
            hlc,
            client_id: c.into(),
        };
        assert!(v(2, "a") > v(1, "z"));
        assert!(v(1, "b") > v(1, "a"));
        let direct = Version::committed_at(1_700_000_000_000);
        assert_eq!(physical_ms(direct.hlc as u64), 1_700_000_000_000);
        assert!(v(direct.hlc, "a") > direct);
        assert!(v(direct.hlc - 1, "z") < direct);
    }

    #[test]
    fn hashes_tell_null_from_empty_text() {
        assert_ne!(value_hash(None), value_hash(Some("")));
        assert_ne!(value_hash(Some("a")), value_hash(Some("b")));
        assert_eq!(value_hash(Some("abc")), value_hash(Some("abc")));
    }
}
