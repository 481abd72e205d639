//! Checks over a client's [`SyncEvent`]s: what a session that never applies
//! anything twice and never diverges from the service looks like.
//!
//! Invariant: [`check_events`] decides only on the order and content of the
//! events, never on their timing.

use outpost_client::SyncEvent;

/// What a run of events contained.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventCounts {
    /// Streams opened.
    pub connected: usize,
    /// Streams lost (each followed by a reconnect).
    pub disconnected: usize,
    /// Checkpoints applied.
    pub checkpoints: usize,
    /// Checkpoints that applied at least one row.
    pub checkpoints_with_rows: usize,
    /// Row operations applied, summed over the checkpoints.
    pub rows_applied: u64,
    /// Buckets the service reset.
    pub resets: usize,
    /// Bucket checksum mismatches.
    pub mismatches: usize,
}

/// Checks that the checkpoints' op ids and LSNs never go back, that every
/// checkpoint that applied rows moved the op id forward (rows at or below an
/// op id already applied are never applied again), and that no bucket
/// checksum mismatched. A bucket reset starts the comparison afresh (the
/// service may have been rebuilt under a new epoch). Returns the counts.
pub fn check_events(events: &[SyncEvent]) -> anyhow::Result<EventCounts> {
    let mut counts = EventCounts::default();
    let mut last: Option<(u64, u64)> = None;
    let mut problems = Vec::new();
    for (i, event) in events.iter().enumerate() {
        match event {
            SyncEvent::Connected => counts.connected += 1,
            SyncEvent::Disconnected { .. } => counts.disconnected += 1,
            SyncEvent::BucketReset { .. } => {
                counts.resets += 1;
                last = None;
            }
            SyncEvent::ChecksumMismatch { bucket } => {
                counts.mismatches += 1;
                problems.push(format!("event {i}: checksum mismatch in bucket {bucket}"));
            }
            SyncEvent::Checkpoint {
                op_id,
                lsn,
                rows_applied,
            } => {
                counts.checkpoints += 1;
                counts.rows_applied += rows_applied;
                if *rows_applied > 0 {
                    counts.checkpoints_with_rows += 1;
                }
                if let Some((last_op, last_lsn)) = last {
                    if *op_id < last_op || *lsn < last_lsn {
                        problems.push(format!(
                            "event {i}: checkpoint op {op_id} LSN {} after op {last_op} LSN {}",
                            outpost_client::format_lsn(*lsn),
                            outpost_client::format_lsn(last_lsn)
                        ));
                    } else if *rows_applied > 0 && *op_id == last_op {
                        problems.push(format!(
                            "event {i}: checkpoint op {op_id} applied {rows_applied} rows again \
                             (the previous checkpoint already had op {last_op})"
                        ));
                    }
                }
                last = Some((*op_id, *lsn));
            }
            _ => {}
        }
    }
    if !problems.is_empty() {
        let shown: Vec<&String> = problems.iter().take(20).collect();
        anyhow::bail!(
            "{} problems in the client's events ({counts:?}):\n  {}",
            problems.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }
    Ok(counts)
}
