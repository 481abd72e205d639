//! Replication commands and catalog queries on a [`ReplicationConn`]:
//! system identification, slots, publications and the start of streaming.
//!
//! Invariants:
//! - Names put into commands are checked or quoted: slot names must be valid
//!   Postgres slot names, publication and table names are quoted.
//! - An existing publication is never altered: what it lacks is reported.

use std::collections::HashMap;

use postgres_protocol::escape::{escape_identifier, escape_literal};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::conn::{ReplicationConn, log_notice, server_error};
use super::stream::ReplicationStream;
use super::wire::{self, Backend};
use super::{CreatedSlot, Lsn, ReplicationError, SlotInfo, SystemInfo};

/// The command syntax of `CREATE_REPLICATION_SLOT` changed in Postgres 15.
const PG15: u32 = 150000;

impl ReplicationConn {
    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemInfo, ReplicationError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = single_row(&rows, 4, "IDENTIFY_SYSTEM")?;
        Ok(SystemInfo {
            systemid: required(row, 0, "systemid")?.to_string(),
            timeline: parse_field(row, 1, "timeline")?,
            xlogpos: parse_field(row, 2, "xlogpos")?,
            dbname: row[3].clone(),
        })
    }

    /// Creates a logical slot for pgoutput and exports its snapshot.
    ///
    /// The snapshot stays usable (`SET TRANSACTION SNAPSHOT`) until this
    /// connection runs its next command or closes.
    pub async fn create_slot(
        &mut self,
        name: &str,
        temporary: bool,
    ) -> Result<CreatedSlot, ReplicationError> {
        check_slot_name(name)?;
        let temp = if temporary { " TEMPORARY" } else { "" };
        let sql = if self.server_version >= PG15 {
            format!("CREATE_REPLICATION_SLOT {name}{temp} LOGICAL pgoutput (SNAPSHOT 'export')")
        } else {
            format!("CREATE_REPLICATION_SLOT {name}{temp} LOGICAL pgoutput EXPORT_SNAPSHOT")
        };
        let rows = self.simple_query(&sql).await?;
        let row = single_row(&rows, 3, "CREATE_REPLICATION_SLOT")?;
        Ok(CreatedSlot {
            consistent_point: parse_field(row, 1, "consistent_point")?,
            snapshot_name: required(row, 2, "snapshot_name")?.to_string(),
        })
    }

    /// The slot's row in `pg_replication_slots`, if it exists.
    pub async fn slot_info(&mut self, name: &str) -> Result<Option<SlotInfo>, ReplicationError> {
        let sql = format!(
            "SELECT plugin, database, active, active_pid, temporary, confirmed_flush_lsn, restart_lsn \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
            escape_literal(name)
        );
        let rows = self.simple_query(&sql).await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        if row.len() != 7 {
            return Err(ReplicationError::Protocol(format!(
                "pg_replication_slots query returned {} columns",
                row.len()
            )));
        }
        Ok(Some(SlotInfo {
            plugin: row[0].clone(),
            database: row[1].clone(),
            active: row[2].as_deref() == Some("t"),
            active_pid: optional_field(row, 3, "active_pid")?,
            temporary: row[4].as_deref() == Some("t"),
            confirmed_flush_lsn: optional_field(row, 5, "confirmed_flush_lsn")?,
            restart_lsn: optional_field(row, 6, "restart_lsn")?,
        }))
    }

    /// `DROP_REPLICATION_SLOT name WAIT`: waits for an active session on
    /// the slot to end instead of failing.
    pub async fn drop_slot(&mut self, name: &str) -> Result<(), ReplicationError> {
        check_slot_name(name)?;
        self.simple_query(&format!("DROP_REPLICATION_SLOT {name} WAIT"))
            .await?;
        Ok(())
    }

    /// Makes sure the publication exists and publishes inserts, updates,
    /// deletes and truncates of every given `(schema, table)`, without row
    /// filters. Creates it when missing and `create_if_missing`; never
    /// alters an existing one: what it lacks is reported in the error.
    pub async fn ensure_publication(
        &mut self,
        name: &str,
        tables: &[(String, String)],
        create_if_missing: bool,
    ) -> Result<(), ReplicationError> {
        check_publication_name(name)?;
        let rows = self
            .simple_query(&format!(
                "SELECT puballtables, pubinsert, pubupdate, pubdelete, pubtruncate \
                 FROM pg_catalog.pg_publication WHERE pubname = {}",
                escape_literal(name)
            ))
            .await?;
        let Some(row) = rows.first() else {
            if !create_if_missing {
                return Err(ReplicationError::PublicationMissing(name.to_string()));
            }
            let mut sql = format!("CREATE PUBLICATION {}", escape_identifier(name));
            for (i, (schema, table)) in tables.iter().enumerate() {
                sql.push_str(if i == 0 { " FOR TABLE " } else { ", " });
                sql.push_str(&qualified(schema, table));
            }
            self.simple_query(&sql).await?;
            tracing::info!(
                publication = name,
                tables = tables.len(),
                "created publication"
            );
            return Ok(());
        };
        let flag = |i: usize| row.get(i).and_then(|v| v.as_deref()) == Some("t");
        let mut problems = Vec::new();
        for (i, op) in [(1, "insert"), (2, "update"), (3, "delete"), (4, "truncate")] {
            if !flag(i) {
                problems.push(format!("it does not publish {op}s"));
            }
        }
        let mut missing_tables = Vec::new();
        if !flag(0) {
            let filter = if self.server_version >= PG15 {
                "rowfilter IS NOT NULL"
            } else {
                "false"
            };
            let published = self
                .simple_query(&format!(
                    "SELECT schemaname, tablename, {filter} FROM pg_catalog.pg_publication_tables \
                     WHERE pubname = {}",
                    escape_literal(name)
                ))
                .await?;
            let mut present: HashMap<(&str, &str), bool> = HashMap::new();
            for row in &published {
                if let [Some(s), Some(t), filtered] = row.as_slice() {
                    present.insert((s, t), filtered.as_deref() == Some("t"));
                }
            }
            for (schema, table) in tables {
                match present.get(&(schema.as_str(), table.as_str())) {
                    None => missing_tables.push(qualified(schema, table)),
                    Some(true) => problems.push(format!(
                        "table {} has a row filter",
                        qualified(schema, table)
                    )),
                    Some(false) => {}
                }
            }
        }
        if !missing_tables.is_empty() {
            problems.insert(0, format!("missing tables {}", missing_tables.join(", ")));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ReplicationError::PublicationIncomplete {
                publication: name.to_string(),
                missing_tables,
                problems,
            })
        }
    }

    /// `START_REPLICATION SLOT slot LOGICAL start (proto_version '1',
    /// publication_names 'publication', messages 'true')`: switches the
    /// connection to streaming. `start` = [`Lsn::ZERO`] streams from the
    /// slot's `confirmed_flush_lsn`. Streams once per connection.
    pub async fn start_replication(
        mut self,
        slot: &str,
        start: Lsn,
        publication: &str,
    ) -> Result<ReplicationStream, ReplicationError> {
        if self.streamed {
            return Err(ReplicationError::Protocol(
                "this connection already streamed: Postgres streams once per connection, connect again"
                    .into(),
            ));
        }
        self.streamed = true;
        check_slot_name(slot)?;
        check_publication_name(publication)?;
        // The option value is a replication-grammar string literal holding a
        // list of identifiers: quote the identifier, then the literal.
        let publications = escape_identifier(publication).replace('\'', "''");
        let sql = format!(
            "START_REPLICATION SLOT {slot} LOGICAL {start} \
             (proto_version '1', publication_names '{publications}', messages 'true')"
        );
        frontend::query(&sql, self.wire.wbuf())?;
        self.wire.flush().await?;
        let mut error = None;
        loop {
            match self.wire.read_message("starting replication").await? {
                Backend::CopyBothResponse => break,
                Backend::Message(Message::NoticeResponse(n)) => log_notice(n.fields()),
                Backend::Message(Message::ParameterStatus(_)) => {}
                Backend::Message(Message::ErrorResponse(e)) => {
                    error = Some(server_error(wire::server_error(e.fields())));
                }
                Backend::Message(Message::ReadyForQuery(_)) => {
                    return Err(error.unwrap_or_else(|| {
                        ReplicationError::Protocol(
                            "START_REPLICATION ended without starting a stream".into(),
                        )
                    }));
                }
                other => {
                    return Err(ReplicationError::Protocol(format!(
                        "unexpected {} in answer to START_REPLICATION",
                        wire::describe(&other)
                    )));
                }
            }
        }
        tracing::debug!(slot, %start, publication, "replication stream started");
        Ok(ReplicationStream::new(self))
    }
}

/// Postgres slot names: 1 to 63 of `a-z`, `0-9`, `_`.
fn check_slot_name(name: &str) -> Result<(), ReplicationError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ReplicationError::InvalidName {
            name: name.to_string(),
            reason: "slot names are 1 to 63 characters of a-z, 0-9 and _",
        })
    }
}

fn check_publication_name(name: &str) -> Result<(), ReplicationError> {
    if name.is_empty() || name.len() > 63 || name.contains('\0') {
        return Err(ReplicationError::InvalidName {
            name: name.to_string(),
            reason: "publication names are 1 to 63 bytes without NUL",
        });
    }
    Ok(())
}

fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", escape_identifier(schema), escape_identifier(table))
}

fn single_row<'a>(
    rows: &'a [Vec<Option<String>>],
    columns: usize,
    command: &str,
) -> Result<&'a [Option<String>], ReplicationError> {
    match rows {
        [row] if row.len() >= columns => Ok(row),
        _ => Err(ReplicationError::Protocol(format!(
            "{command} returned {} rows, expected one with {columns} columns",
            rows.len()
        ))),
    }
}

fn required<'a>(
    row: &'a [Option<String>],
    i: usize,
    name: &str,
) -> Result<&'a str, ReplicationError> {
    row.get(i)
        .and_then(|v| v.as_deref())
        .ok_or_else(|| ReplicationError::Protocol(format!("{name} is missing")))
}

fn parse_field<T: std::str::FromStr>(
    row: &[Option<String>],
    i: usize,
    name: &str,
) -> Result<T, ReplicationError> {
    let text = required(row, i, name)?;
    text.parse()
        .map_err(|_| ReplicationError::Protocol(format!("invalid {name} {text:?}")))
}

fn optional_field<T: std::str::FromStr>(
    row: &[Option<String>],
    i: usize,
    name: &str,
) -> Result<Option<T>, ReplicationError> {
    match row.get(i).and_then(|v| v.as_deref()) {
        None => Ok(None),
        Some(_) => parse_field(row, i, name).map(Some),
    }
}
