//! Ingest: turns replicated row changes into store changes — the mirror row
//! and the bucket ops of every bucket the row enters, stays in or leaves.
//!
//! ```text
//! pgoutput Insert/Update/Delete/Truncate ──▶ RowChanges ──▶ mirror + ops
//!                                  (route old and new versions by shape)
//! store commit ──▶ RecentCommits (what it wrote, in memory) ──▶ Progress
//! ```
//!
//! Invariants:
//! - The old version of a row always comes from the mirror (pgoutput sends
//!   only the key under `REPLICA IDENTITY DEFAULT`), and unchanged TOAST
//!   values (`'u'`) are filled from it, so routing sees whole rows.
//! - A row leaves exactly the buckets its old version was in and its new
//!   version is not; it is put into every bucket its new version is in, unless
//!   its synced values did not change and it was already there.
//! - A replicated transaction whose commit LSN is at or below the store's
//!   last commit LSN is a replay and changes nothing.
//! - A row routed through parents (hops) reads them from the mirror; when a
//!   parent changes in a way its children's keys read, the children are
//!   routed again, recursively, in the same store transaction. A row of a
//!   membership table updates the membership index in the same transaction
//!   as its mirror row.

mod recent;
mod rows;
#[cfg(test)]
mod tests;
mod writer_thread;

pub use recent::{Commit, RecentCommits, Since};
pub use rows::{IngestError, RowChanges};
pub use writer_thread::{Progress, WriterHandle, WriterMsg, spawn_writer};
