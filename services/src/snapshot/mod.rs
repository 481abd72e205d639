//! The initial load: copies every synced table from the snapshot that was
//! exported when the replication slot was created, into the store writer.
//!
//! Invariant: the snapshot and the slot meet at one point. Every row the
//! snapshot holds was committed before the slot's consistent point, and the
//! slot streams exactly the transactions that commit after it, so loading the
//! snapshot and then streaming from the consistent point misses nothing and
//! repeats nothing. The exported snapshot lives only while the replication
//! connection that created it stays idle, so the load runs before
//! `START_REPLICATION` is sent on it.
//!
//! Values are read in the text form with the same session settings as the
//! replication connection, so a value converts identically by either path.

mod copy_text;

pub use copy_text::CopyParseError;

use crate::ingest::WriterMsg;
use crate::schema::CompiledSchema;
use crate::store::TextRow;
use copy_text::CopyTextParser;
use futures::StreamExt;
use tokio::sync::mpsc;

/// Rows are handed to the writer in batches of this many.
const BATCH_ROWS: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("snapshot of {table}: {source}")]
    Parse {
        table: String,
        #[source]
        source: CopyParseError,
    },
    #[error("snapshot of {table}: a row has {got} columns, expected {expected}")]
    Columns {
        table: String,
        got: usize,
        expected: usize,
    },
    #[error("the store writer stopped during the snapshot")]
    WriterGone,
}

/// Session settings shared with the replication connection.
pub const SESSION_SETTINGS: &str = "SET DateStyle = ISO; SET TimeZone = 'UTC'; SET IntervalStyle = postgres; SET extra_float_digits = 3; SET client_encoding = 'UTF8';";

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Copies every table of `schema` at `snapshot_name` into the writer.
/// Returns the number of rows loaded.
pub async fn load(
    client: &tokio_postgres::Client,
    snapshot_name: &str,
    schema: &CompiledSchema,
    writer: &mpsc::Sender<WriterMsg>,
) -> Result<u64, SnapshotError> {
    client.batch_execute(SESSION_SETTINGS).await?;
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    client
        .batch_execute(&format!(
            "SET TRANSACTION SNAPSHOT '{}'",
            snapshot_name.replace('\'', "''")
        ))
        .await?;
    let mut total = 0;
    for (index, table) in schema.tables.iter().enumerate() {
        let columns: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.name)).collect();
        let sql = format!(
            "COPY (SELECT {} FROM {}.{}) TO STDOUT",
            columns.join(", "),
            quote_ident(&table.schema),
            quote_ident(&table.name)
        );
        let started = std::time::Instant::now();
        let stream = client.copy_out(&sql).await?;
        futures::pin_mut!(stream);
        let mut parser = CopyTextParser::default();
        let mut batch = Vec::with_capacity(BATCH_ROWS);
        let mut rows = 0u64;
        let expected = table.columns.len();
        let parse_err = |source| SnapshotError::Parse {
            table: table.name.clone(),
            source,
        };
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            let mut bad_width = None;
            parser
                .feed(&chunk, |row| {
                    if row.len() != expected {
                        bad_width = Some(row.len());
                    }
                    batch.push(TextRow(row));
                    Ok(())
                })
                .map_err(parse_err)?;
            if let Some(got) = bad_width {
                return Err(SnapshotError::Columns {
                    table: table.name.clone(),
                    got,
                    expected,
                });
            }
            if batch.len() >= BATCH_ROWS {
                rows += batch.len() as u64;
                let rows = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ROWS));
                writer
                    .send(WriterMsg::SnapshotRows { table: index, rows })
                    .await
                    .map_err(|_| SnapshotError::WriterGone)?;
            }
        }
        parser.finish().map_err(parse_err)?;
        rows += batch.len() as u64;
        if !batch.is_empty() {
            writer
                .send(WriterMsg::SnapshotRows {
                    table: index,
                    rows: batch,
                })
                .await
                .map_err(|_| SnapshotError::WriterGone)?;
        }
        tracing::info!(table = %table.name, rows, elapsed_ms = started.elapsed().as_millis() as u64, "snapshot copied");
        total += rows;
    }
    client.batch_execute("COMMIT").await?;
    Ok(total)
}
