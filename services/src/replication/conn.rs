//! A replication connection before streaming: startup, authentication,
//! simple queries and the replication commands that manage slots and
//! publications.
//!
//! Invariants:
//! - A [`ReplicationConn`] is always between commands: every method reads the
//!   server's answers up to ReadyForQuery, also when the command fails, so
//!   that the connection stays usable after a server error.
//! - Names put into commands are checked or quoted: slot names must be valid
//!   Postgres slot names, publication and table names are quoted.

use std::collections::HashMap;
use std::time::Duration;

use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::escape::{escape_identifier, escape_literal};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::fallible_iterator::FallibleIterator;

use super::stream::ReplicationStream;
use super::wire::{self, Backend, Wire};
use super::{CreatedSlot, Lsn, ReplicationError, ServerError, SlotInfo, SystemInfo};

/// Session settings that make the walsender print values in the one form
/// the rest of the service parses.
const SESSION_OPTIONS: &str =
    "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=postgres -c extra_float_digits=3";

/// The command syntax of `CREATE_REPLICATION_SLOT` changed in Postgres 15.
const PG15: u32 = 150000;

/// A connection in `replication=database` mode, between commands.
pub struct ReplicationConn {
    /// The framed socket.
    pub(super) wire: Wire,
    /// Run-time parameters reported by the server (`server_version`, ...).
    pub(super) params: HashMap<String, String>,
    /// Server version as `major * 10000 + minor`, to choose command syntax.
    pub(super) server_version: u32,
}

impl std::fmt::Debug for ReplicationConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConn")
            .field("server_version", &self.server_version)
            .finish_non_exhaustive()
    }
}

impl ReplicationConn {
    /// Connects and authenticates, trying each configured host in turn.
    ///
    /// The session runs with `replication=database`, `client_encoding=UTF8`
    /// and `options=-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=postgres
    /// -c extra_float_digits=3` (after any `options` of `cfg`, so these win).
    /// Authentication: trust, cleartext password, md5, SCRAM-SHA-256. No TLS.
    pub async fn connect(cfg: &tokio_postgres::Config) -> Result<Self, ReplicationError> {
        if cfg.get_ssl_mode() == SslMode::Require {
            return Err(ReplicationError::Config(
                "sslmode=require is not supported: the replication connection has no TLS; \
                 use sslmode=disable or prefer on a trusted network"
                    .into(),
            ));
        }
        let user = cfg
            .get_user()
            .ok_or_else(|| ReplicationError::Config("no user given".into()))?;
        let hosts = cfg.get_hosts();
        if hosts.is_empty() {
            return Err(ReplicationError::Config("no host given".into()));
        }
        let ports = cfg.get_ports();
        let mut last_err = None;
        for (i, host) in hosts.iter().enumerate() {
            let port = match ports {
                [] => 5432,
                [port] => *port,
                _ => ports.get(i).copied().unwrap_or(5432),
            };
            let addr = match host {
                Host::Tcp(h) => format!("{h}:{port}"),
                #[cfg(unix)]
                Host::Unix(dir) => format!("{}/.s.PGSQL.{port}", dir.display()),
            };
            let attempt = async {
                let socket = match host {
                    Host::Tcp(h) => wire::connect_tcp(h, port).await,
                    #[cfg(unix)]
                    Host::Unix(dir) => wire::connect_unix(dir, port).await,
                }
                .map_err(|source| ReplicationError::Connect {
                    addr: addr.clone(),
                    source,
                })?;
                Self::startup(Wire::new(socket), cfg, user).await
            };
            let result = match cfg.get_connect_timeout() {
                Some(t) => with_timeout(*t, &addr, attempt).await,
                None => attempt.await,
            };
            match result {
                Ok(conn) => return Ok(conn),
                Err(e @ ReplicationError::Connect { .. }) => {
                    tracing::debug!(error = %e, "replication connection attempt failed");
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| ReplicationError::Config("no host given".into())))
    }

    /// Sends the startup message, authenticates and waits for ReadyForQuery.
    async fn startup(
        mut wire: Wire,
        cfg: &tokio_postgres::Config,
        user: &str,
    ) -> Result<Self, ReplicationError> {
        let options = match cfg.get_options() {
            Some(o) if !o.trim().is_empty() => format!("{o} {SESSION_OPTIONS}"),
            _ => SESSION_OPTIONS.to_string(),
        };
        let mut params = vec![
            ("user", user),
            ("database", cfg.get_dbname().unwrap_or(user)),
            ("replication", "database"),
            ("client_encoding", "UTF8"),
            ("options", options.as_str()),
        ];
        if let Some(app) = cfg.get_application_name() {
            params.push(("application_name", app));
        }
        frontend::startup_message(params, wire.wbuf())?;
        wire.flush().await?;
        authenticate(&mut wire, user, cfg.get_password()).await?;

        let mut params = HashMap::new();
        loop {
            match wire.read_message("starting the session").await? {
                Backend::Message(Message::ParameterStatus(p)) => {
                    if let (Ok(name), Ok(value)) = (p.name(), p.value()) {
                        params.insert(name.to_string(), value.to_string());
                    }
                }
                Backend::Message(Message::BackendKeyData(_)) => {}
                Backend::Message(Message::NoticeResponse(n)) => log_notice(n.fields()),
                Backend::Message(Message::ReadyForQuery(_)) => break,
                Backend::Message(Message::ErrorResponse(e)) => {
                    return Err(server_error(wire::server_error(e.fields())));
                }
                other => {
                    return Err(ReplicationError::Protocol(format!(
                        "unexpected {} during startup",
                        wire::describe(&other)
                    )));
                }
            }
        }
        let server_version = params
            .get("server_version")
            .map(|v| parse_server_version(v))
            .unwrap_or(0);
        Ok(ReplicationConn {
            wire,
            params,
            server_version,
        })
    }

    /// A run-time parameter reported by the server, e.g. `server_version`.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

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

    /// Runs a simple query (a replication command, or plain SQL since the
    /// session is `replication=database`). Returns the rows of all
    /// statements, every value as text.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ReplicationError> {
        frontend::query(sql, self.wire.wbuf())?;
        self.wire.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.wire.read_message("running a query").await? {
                Backend::Message(Message::DataRow(row)) => {
                    let buf = row.buffer();
                    let mut values = Vec::new();
                    let mut ranges = row.ranges();
                    while let Some(range) = ranges.next().map_err(|e| {
                        ReplicationError::Protocol(format!("malformed DataRow: {e}"))
                    })? {
                        values.push(match range {
                            None => None,
                            Some(r) => Some(
                                buf.get(r)
                                    .and_then(|v| std::str::from_utf8(v).ok())
                                    .ok_or_else(|| {
                                        ReplicationError::Protocol("malformed DataRow value".into())
                                    })?
                                    .to_string(),
                            ),
                        });
                    }
                    rows.push(values);
                }
                Backend::Message(
                    Message::RowDescription(_)
                    | Message::CommandComplete(_)
                    | Message::EmptyQueryResponse
                    | Message::NotificationResponse(_),
                ) => {}
                Backend::Message(Message::ParameterStatus(p)) => {
                    if let (Ok(name), Ok(value)) = (p.name(), p.value()) {
                        self.params.insert(name.to_string(), value.to_string());
                    }
                }
                Backend::Message(Message::NoticeResponse(n)) => log_notice(n.fields()),
                Backend::Message(Message::ErrorResponse(e)) => {
                    error = Some(server_error(wire::server_error(e.fields())));
                }
                Backend::Message(Message::ReadyForQuery(_)) => break,
                other => {
                    return Err(ReplicationError::Protocol(format!(
                        "unexpected {} in answer to a simple query",
                        wire::describe(&other)
                    )));
                }
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
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
    /// slot's `confirmed_flush_lsn`.
    pub async fn start_replication(
        mut self,
        slot: &str,
        start: Lsn,
        publication: &str,
    ) -> Result<ReplicationStream, ReplicationError> {
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

    /// Ends the session politely.
    pub async fn close(mut self) -> Result<(), ReplicationError> {
        frontend::terminate(self.wire.wbuf());
        self.wire.flush().await?;
        self.wire.shutdown().await;
        Ok(())
    }
}

/// Runs the authentication exchange, up to AuthenticationOk.
async fn authenticate(
    wire: &mut Wire,
    user: &str,
    password: Option<&[u8]>,
) -> Result<(), ReplicationError> {
    let need_password = || {
        password.ok_or_else(|| {
            ReplicationError::Auth("the server asks for a password and none is configured".into())
        })
    };
    loop {
        match read_auth(wire).await? {
            Message::AuthenticationOk => return Ok(()),
            Message::AuthenticationCleartextPassword => {
                frontend::password_message(need_password()?, wire.wbuf())?;
                wire.flush().await?;
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = md5_hash(user.as_bytes(), need_password()?, body.salt());
                frontend::password_message(hash.as_bytes(), wire.wbuf())?;
                wire.flush().await?;
            }
            Message::AuthenticationSasl(body) => {
                let mut mechanisms = body.mechanisms();
                let mut scram = false;
                while let Some(m) = mechanisms.next().map_err(|e| {
                    ReplicationError::Protocol(format!("malformed SASL mechanism list: {e}"))
                })? {
                    scram |= m == sasl::SCRAM_SHA_256;
                }
                if !scram {
                    return Err(ReplicationError::Auth(
                        "the server offers no SASL mechanism this client supports \
                         (SCRAM-SHA-256 without channel binding)"
                            .into(),
                    ));
                }
                scram_exchange(wire, need_password()?).await?;
            }
            other => {
                return Err(ReplicationError::Auth(format!(
                    "unsupported authentication method requested by the server ({})",
                    wire::describe(&Backend::Message(other))
                )));
            }
        }
    }
}

/// SCRAM-SHA-256 without channel binding (there is no TLS).
async fn scram_exchange(wire: &mut Wire, password: &[u8]) -> Result<(), ReplicationError> {
    let auth_err = |e: std::io::Error| ReplicationError::Auth(format!("SCRAM exchange: {e}"));
    let mut scram = ScramSha256::new(password, ChannelBinding::unsupported());
    frontend::sasl_initial_response(sasl::SCRAM_SHA_256, scram.message(), wire.wbuf())?;
    wire.flush().await?;
    let Message::AuthenticationSaslContinue(body) = read_auth(wire).await? else {
        return Err(ReplicationError::Protocol(
            "expected AuthenticationSASLContinue".into(),
        ));
    };
    scram.update(body.data()).map_err(auth_err)?;
    frontend::sasl_response(scram.message(), wire.wbuf())?;
    wire.flush().await?;
    let Message::AuthenticationSaslFinal(body) = read_auth(wire).await? else {
        return Err(ReplicationError::Protocol(
            "expected AuthenticationSASLFinal".into(),
        ));
    };
    scram.finish(body.data()).map_err(auth_err)
}

/// Reads the next authentication message; an ErrorResponse becomes an error.
async fn read_auth(wire: &mut Wire) -> Result<Message, ReplicationError> {
    loop {
        match wire.read_message("authenticating").await? {
            Backend::Message(Message::NoticeResponse(n)) => log_notice(n.fields()),
            Backend::Message(Message::ErrorResponse(e)) => {
                let err = wire::server_error(e.fields());
                // Class 28: invalid authorization specification.
                return Err(if err.code.starts_with("28") {
                    ReplicationError::Auth(err.to_string())
                } else {
                    server_error(err)
                });
            }
            Backend::Message(m) => return Ok(m),
            Backend::CopyBothResponse => {
                return Err(ReplicationError::Protocol(
                    "unexpected CopyBothResponse while authenticating".into(),
                ));
            }
        }
    }
}

async fn with_timeout<T>(
    timeout: Duration,
    addr: &str,
    fut: impl Future<Output = Result<T, ReplicationError>>,
) -> Result<T, ReplicationError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(ReplicationError::Connect {
            addr: addr.to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            ),
        }),
    }
}

pub(super) fn server_error(e: ServerError) -> ReplicationError {
    ReplicationError::Server(Box::new(e))
}

pub(super) fn log_notice(fields: postgres_protocol::message::backend::ErrorFields<'_>) {
    let notice = wire::server_error(fields);
    tracing::debug!(%notice, "notice from Postgres");
}

/// `"15.8 (Debian 15.8-1)"` → 150008; `"16devel"` → 160000.
fn parse_server_version(v: &str) -> u32 {
    let mut parts = v
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    let major = parts.next().flatten().unwrap_or(0);
    let minor = parts.next().flatten().unwrap_or(0);
    major.saturating_mul(10000).saturating_add(minor.min(9999))
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
