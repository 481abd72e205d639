//! A small pool of Postgres connections for applying writes, each with its
//! prepared statements cached.
//!
//! Invariants: at most `size` connections are in use at once; a connection
//! goes back to the pool only outside a transaction and while open, so a
//! caller that stops half-way through a group (an error, a cancelled task)
//! never hands the next caller a connection with a transaction open: that
//! connection is closed instead, and Postgres rolls its transaction back.
//! Every connection runs with [`SESSION_SETTINGS`], so values read as text
//! have the same form as on the replication path.
//!
//! Pipelining: requests made through [`Conn::client`] and the `&self`
//! methods go out in the order their futures are first polled, without
//! waiting for earlier answers, so statements polled together (joined, in
//! order) share one round trip; only statements already prepared
//! ([`Conn::prepare`]) are pipelined, since preparing waits for its answer.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, SimpleQueryMessage, Statement};

use super::ledger;
use crate::lsn::Lsn;
use crate::snapshot::SESSION_SETTINGS;

/// Prepared statements kept per connection; the cache is emptied when full.
const MAX_STATEMENTS: usize = 512;

/// Parameters of a query.
pub(crate) type Params<'a> = [&'a (dyn ToSql + Sync)];

/// One connection and its statement cache.
pub(crate) struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
    /// A transaction is open (BEGIN sent, no COMMIT/ROLLBACK finished).
    in_transaction: AtomicBool,
}

impl Conn {
    /// The statement for `sql`, prepared on this connection once.
    pub(crate) async fn prepare(&mut self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let statement = self.client.prepare(sql).await?;
        if self.statements.len() >= MAX_STATEMENTS {
            self.statements.clear();
        }
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    /// Forgets every prepared statement (after the tables they read changed).
    pub(crate) fn forget_statements(&mut self) {
        self.statements.clear();
    }

    pub(crate) async fn query(
        &mut self,
        sql: &str,
        params: &Params<'_>,
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let statement = self.prepare(sql).await?;
        self.client.query(&statement, params).await
    }

    pub(crate) async fn query_opt(
        &mut self,
        sql: &str,
        params: &Params<'_>,
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        let statement = self.prepare(sql).await?;
        self.client.query_opt(&statement, params).await
    }

    pub(crate) async fn execute(
        &mut self,
        sql: &str,
        params: &Params<'_>,
    ) -> Result<u64, tokio_postgres::Error> {
        let statement = self.prepare(sql).await?;
        self.client.execute(&statement, params).await
    }

    /// Runs statements without parameters (simple query protocol).
    pub(crate) async fn batch(&mut self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.client.batch_execute(sql).await
    }

    /// The client, to run prepared statements in a pipeline.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Opens a transaction: from the first poll on, the connection counts
    /// as inside one until a COMMIT or ROLLBACK is answered.
    pub(crate) async fn begin(&self) -> Result<(), tokio_postgres::Error> {
        self.open("BEGIN").await
    }

    /// Opens a transaction whose prepared statements run with generic
    /// plans (`plan_cache_mode`, for this transaction only): for statements
    /// whose plan does not depend on their parameters' values, such as a
    /// batch's, which look every row up by its key or row id whatever the
    /// arrays hold, it spares planning them at every run, which Postgres
    /// otherwise keeps doing for array parameters.
    pub(crate) async fn begin_generic(&self) -> Result<(), tokio_postgres::Error> {
        self.open("BEGIN; SET LOCAL plan_cache_mode = force_generic_plan")
            .await
    }

    /// Sends `begin`, which opens a transaction.
    async fn open(&self, begin: &str) -> Result<(), tokio_postgres::Error> {
        self.in_transaction.store(true, Ordering::Relaxed);
        self.client.batch_execute(begin).await
    }

    /// Ends the transaction. An answer without error does not mean the
    /// changes committed: after a failed statement, Postgres answers COMMIT
    /// with a rollback, so the answers of every statement of the
    /// transaction must be read as well.
    pub(crate) async fn commit(&self) -> Result<(), tokio_postgres::Error> {
        self.client.batch_execute("COMMIT").await?;
        self.in_transaction.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Commits, and reads the WAL end right after, in one message
    /// ([`ledger::COMMIT_READING_WAL_LSN`]): an upper bound of the commit's
    /// LSN. As with [`Conn::commit`], after a failed statement the COMMIT
    /// is a rollback: read every answer. An error does not tell whether
    /// the COMMIT or the read failed.
    pub(crate) async fn commit_reading_lsn(&self) -> Result<Lsn, tokio_postgres::Error> {
        let answers = self
            .client
            .simple_query(ledger::COMMIT_READING_WAL_LSN)
            .await?;
        self.in_transaction.store(false, Ordering::Relaxed);
        let lsn = answers.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(ledger::lsn_text),
            _ => None,
        });
        Ok(lsn.unwrap_or_default())
    }

    pub(crate) async fn rollback(&self) -> Result<(), tokio_postgres::Error> {
        self.client.batch_execute("ROLLBACK").await?;
        self.in_transaction.store(false, Ordering::Relaxed);
        Ok(())
    }
}

/// A fixed-size pool of connections, opened on demand.
pub(crate) struct Pool {
    config: tokio_postgres::Config,
    idle: Mutex<Vec<Conn>>,
    permits: Arc<Semaphore>,
}

impl Pool {
    pub(crate) fn new(config: tokio_postgres::Config, size: usize) -> Arc<Pool> {
        Arc::new(Pool {
            config,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size.max(1))),
        })
    }

    /// A connection: an idle one, or a new one.
    pub(crate) async fn get(self: &Arc<Self>) -> Result<PooledConn, tokio_postgres::Error> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .unwrap_or_else(|_| unreachable!("the pool's semaphore is never closed"));
        let idle = self.idle.lock().map(|mut idle| idle.pop()).unwrap_or(None);
        let conn = match idle {
            Some(conn) if !conn.client.is_closed() => conn,
            _ => self.connect().await?,
        };
        Ok(PooledConn {
            conn: Some(conn),
            pool: self.clone(),
            _permit: permit,
        })
    }

    async fn connect(&self) -> Result<Conn, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "write connection closed");
            }
        });
        client.batch_execute(SESSION_SETTINGS).await?;
        Ok(Conn {
            client,
            statements: HashMap::new(),
            in_transaction: AtomicBool::new(false),
        })
    }
}

/// A connection lent by the pool; it goes back when dropped.
pub(crate) struct PooledConn {
    conn: Option<Conn>,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

impl Deref for PooledConn {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        self.conn
            .as_ref()
            .unwrap_or_else(|| unreachable!("a pooled connection is present until dropped"))
    }
}

impl DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .unwrap_or_else(|| unreachable!("a pooled connection is present until dropped"))
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if conn.in_transaction.load(Ordering::Relaxed) || conn.client.is_closed() {
            // Dropping the client closes the connection; Postgres rolls
            // back whatever was open.
            return;
        }
        if let Ok(mut idle) = self.pool.idle.lock() {
            idle.push(conn);
        }
    }
}
