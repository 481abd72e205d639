//! A replication connection before streaming: startup and simple queries.
//! Authentication is in [`super::auth`], replication commands in
//! [`super::commands`].
//!
//! Invariant: a [`ReplicationConn`] is always between commands: every method
//! reads the server's answers up to ReadyForQuery, also when the command
//! fails, so that the connection stays usable after a server error.

use std::collections::HashMap;
use std::time::Duration;

use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::fallible_iterator::FallibleIterator;

use super::auth::authenticate;
use super::wire::{self, Backend, Wire};
use super::{ReplicationError, ServerError};

/// Session settings that make the walsender print values in the one form
/// the rest of the service parses.
const SESSION_OPTIONS: &str =
    "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=postgres -c extra_float_digits=3";

/// A connection in `replication=database` mode, between commands.
pub struct ReplicationConn {
    /// The framed socket.
    pub(super) wire: Wire,
    /// Run-time parameters reported by the server (`server_version`, ...).
    pub(super) params: HashMap<String, String>,
    /// Server version as `major * 10000 + minor`, to choose command syntax.
    pub(super) server_version: u32,
    /// START_REPLICATION already ran on this connection: a logical walsender
    /// ends a second one at once, so it is refused here.
    pub(super) streamed: bool,
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
            streamed: false,
        })
    }

    /// A run-time parameter reported by the server, e.g. `server_version`.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
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

    /// Ends the session politely.
    pub async fn close(mut self) -> Result<(), ReplicationError> {
        frontend::terminate(self.wire.wbuf());
        self.wire.flush().await?;
        self.wire.shutdown().await;
        Ok(())
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
