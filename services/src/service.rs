//! The whole service assembled: schema compiled against the live catalog, the
//! store opened, the writer thread, the replication task and the gRPC server,
//! with one shutdown signal for all of them.
//!
//! Shutdown order: stop accepting streams, stop replication (after a last
//! status update), then close the writer, which commits nothing partial.

use crate::auth::{AuthError, Authenticator};
use crate::config::ServiceConfig;
use crate::ingest::{Progress, spawn_writer};
use crate::replicator::{self, ReplicatorConfig, ReplicatorError};
use crate::schema::{self, Catalog, CompiledSchema, ResolveError, SchemaErrors, WriteRules};
use crate::server::{self, Fanout, ServeError, SyncContext};
use crate::store::{self, ReaderPool, StoreError, StoreWriter};
use crate::writes::{Applier, ApplierConfig, WriteError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Schema(#[from] SchemaErrors),
    #[error("database URL: {0}")]
    DatabaseUrl(tokio_postgres::Error),
    #[error("cannot connect to Postgres to read the catalog: {0}")]
    Connect(tokio_postgres::Error),
    #[error("reading the Postgres catalog: {0}")]
    Catalog(String),
    #[error("auth: {0}")]
    Auth(#[from] AuthError),
    #[error("data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("replication: {0}")]
    Replication(#[from] ReplicatorError),
    #[error("the service task failed: {0}")]
    Panicked(String),
    #[error("store writer: {0}")]
    Writer(#[from] crate::ingest::IngestError),
    #[error("writes: {0}")]
    Writes(#[from] WriteError),
}

/// Postgres connections applying client writes at once: each waits on a
/// round trip most of the time, so more than the cores of a small server.
const WRITE_CONNECTIONS: usize = 8;
/// Write batches applied at once (on as many of those connections): few,
/// so that under load the requests waiting share a transaction.
const WRITE_BATCHES: usize = 2;
/// Store reads for streams at once (and reader connections kept open).
const STORE_READERS: usize = 8;
/// How often a stream whose data did not change is told how far the store
/// has read the WAL (the keepalive carries it too); a client that wrote is
/// told at once when the store reaches its write.
const IDLE_LSN_EVERY: Duration = Duration::from_secs(15);

/// Loads the schema files and compiles them against the live catalog: what
/// `outpost check` runs, and the first step of `outpost serve`.
pub async fn compile_schema(cfg: &ServiceConfig) -> Result<CompiledSchema, ServiceError> {
    compile_schema_and_rules(cfg)
        .await
        .map(|(schema, _rules)| schema)
}

/// Shapes and write rules checked together, so that every problem of the
/// schema files is reported at once.
fn combine(
    compiled: Result<CompiledSchema, SchemaErrors>,
    rules: Result<WriteRules, ResolveError>,
) -> Result<(CompiledSchema, WriteRules), ServiceError> {
    match (compiled, rules) {
        (Ok(schema), Ok(rules)) => Ok((schema, rules)),
        (_, Err(ResolveError::Query(e))) => Err(ServiceError::Catalog(e.to_string())),
        (Err(a), Err(ResolveError::Schema(b))) => {
            Err(SchemaErrors::normalized(a.0.into_iter().chain(b.0).collect()).into())
        }
        (Err(a), Ok(_)) => Err(a.into()),
        (Ok(_), Err(ResolveError::Schema(b))) => Err(b.into()),
    }
}

/// [`compile_schema`], plus the write rules of the schema files with their
/// table functions looked up in the database.
pub async fn compile_schema_and_rules(
    cfg: &ServiceConfig,
) -> Result<(CompiledSchema, WriteRules), ServiceError> {
    let source = schema::load_dir(&cfg.schema_dir)?;
    let pg: tokio_postgres::Config = cfg
        .database_url
        .parse()
        .map_err(ServiceError::DatabaseUrl)?;
    let (client, connection) = pg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(ServiceError::Connect)?;
    let task = tokio::spawn(connection);
    let catalog = Catalog::load(&client, &source.read_tables())
        .await
        .map_err(|e| ServiceError::Catalog(e.to_string()));
    let result = match catalog {
        Ok(catalog) => {
            let compiled =
                schema::compile(&source, &catalog).map(|s| s.with_limits(cfg.limits.clone()));
            let rules = match schema::compile_rules(&source, &catalog) {
                Ok(mut rules) => schema::resolve_functions(&mut rules, &client)
                    .await
                    .map(|()| rules),
                Err(e) => Err(ResolveError::Schema(e)),
            };
            combine(compiled, rules)
        }
        Err(e) => Err(e),
    };
    drop(client);
    let _ = task.await;
    result
}

/// A started service.
pub struct RunningService {
    /// The address the gRPC server listens on.
    pub addr: SocketAddr,
    progress: watch::Receiver<Progress>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), ServiceError>>,
}

impl RunningService {
    /// What the store holds, as the service publishes it after each store
    /// commit: ready to serve a snapshot once `epoch` is set.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Stops everything and waits for it.
    pub async fn shutdown(self) -> Result<(), ServiceError> {
        let _ = self.shutdown.send(true);
        self.wait().await
    }

    /// Waits until the service stops by itself (a definite error).
    pub async fn wait(self) -> Result<(), ServiceError> {
        join(self.task).await
    }

    /// Runs until `stop` resolves (then shuts down cleanly) or the service
    /// stops by itself.
    pub async fn run_until(
        self,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), ServiceError> {
        let RunningService {
            shutdown, mut task, ..
        } = self;
        tokio::select! {
            result = &mut task => flatten(result),
            _ = stop => {
                tracing::info!("shutting down");
                let _ = shutdown.send(true);
                join(task).await
            }
        }
    }
}

/// Starts the service: returns once it listens.
pub async fn start(cfg: ServiceConfig) -> Result<RunningService, ServiceError> {
    let (schema, rules) = compile_schema_and_rules(&cfg).await?;
    let schema = Arc::new(schema);
    tracing::info!(tables = schema.tables.len(), shapes = schema.shapes.len(), version = %schema.version, "schema compiled");
    let auth = Arc::new(Authenticator::new(&cfg.auth)?);
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| ServiceError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    })?;
    let db_path = store::database_path(&cfg.data_dir);
    let writer = StoreWriter::open(&db_path)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServiceError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServiceError::Listen {
            addr: cfg.listen,
            source,
        })?;

    let writes = if rules.tables.is_empty() {
        tracing::info!("no write rules: the service accepts no writes");
        None
    } else {
        let applier_cfg = ApplierConfig {
            pg: cfg
                .database_url
                .parse()
                .map_err(ServiceError::DatabaseUrl)?,
            connections: WRITE_CONNECTIONS,
            batches: WRITE_BATCHES,
            publication: Some(cfg.publication.clone()),
        };
        Some(Arc::new(Applier::start(applier_cfg, &schema, rules).await?))
    };

    let handle = spawn_writer(writer, schema.clone());
    let progress = handle.progress.clone();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let fanout = Arc::new(Fanout::new(handle.recent.clone()));
    tokio::spawn(fanout.clone().run(handle.progress.clone()));
    let ctx = Arc::new(SyncContext {
        schema: schema.clone(),
        auth,
        readers: Arc::new(ReaderPool::new(&db_path, STORE_READERS)),
        store_reads: tokio::sync::Semaphore::new(STORE_READERS),
        keepalive: Duration::from_secs(cfg.keepalive_secs.max(1)),
        fanout,
        idle_lsn_every: IDLE_LSN_EVERY,
        batch_ops: 1000,
        writes,
    });
    let rcfg = ReplicatorConfig {
        pg: cfg
            .database_url
            .parse()
            .map_err(ServiceError::DatabaseUrl)?,
        slot: cfg.slot.clone(),
        publication: cfg.publication.clone(),
        create_publication: cfg.create_publication,
        status_interval: Duration::from_secs(1),
    };
    let task = tokio::spawn(async move {
        let mut server_shutdown = shutdown_rx.clone();
        let server = tokio::spawn(server::serve(listener, ctx, async move {
            let _ = server_shutdown.wait_for(|s| *s).await;
        }));
        let replication = replicate_on_own_thread(
            rcfg,
            schema,
            handle.tx.clone(),
            handle.progress.clone(),
            shutdown_rx.clone(),
        )
        .await;
        if let Err(e) = &replication {
            tracing::error!(error = %e, "replication stopped");
        }
        // Replication ended (shutdown or a definite error): stop serving too.
        let WriterAndServer {
            writer_result,
            server_result,
        } = stop(handle, server).await;
        replication?;
        writer_result?;
        server_result?;
        Ok(())
    });
    tracing::info!(%addr, "listening");
    Ok(RunningService {
        addr,
        progress,
        shutdown: shutdown_tx,
        task,
    })
}

/// Runs the replication task on a thread of its own, with a runtime of its
/// own: however busy the streams keep the gRPC runtime, the WAL is read as
/// fast as it comes and Postgres gets its status updates (it drops a
/// replication connection that stays silent for `wal_sender_timeout`).
async fn replicate_on_own_thread(
    cfg: ReplicatorConfig,
    schema: Arc<CompiledSchema>,
    writer: tokio::sync::mpsc::Sender<crate::ingest::WriterMsg>,
    progress: watch::Receiver<crate::ingest::Progress>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ReplicatorError> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("outpost-wal".into())
        .spawn(move || {
            let result = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(replicator::run(cfg, schema, writer, progress, shutdown)),
                Err(e) => Err(ReplicatorError::Thread(e.to_string())),
            };
            let _ = done_tx.send(result);
        })
        .map_err(|e| ReplicatorError::Thread(e.to_string()))?;
    done_rx
        .await
        .unwrap_or_else(|_| Err(ReplicatorError::Thread("the thread panicked".into())))
}

fn flatten(
    result: Result<Result<(), ServiceError>, tokio::task::JoinError>,
) -> Result<(), ServiceError> {
    result.unwrap_or_else(|e| Err(ServiceError::Panicked(e.to_string())))
}

async fn join(task: tokio::task::JoinHandle<Result<(), ServiceError>>) -> Result<(), ServiceError> {
    flatten(task.await)
}

struct WriterAndServer {
    writer_result: Result<(), crate::ingest::IngestError>,
    server_result: Result<(), ServeError>,
}

async fn stop(
    handle: crate::ingest::WriterHandle,
    server: tokio::task::JoinHandle<Result<(), ServeError>>,
) -> WriterAndServer {
    server.abort();
    let server_result = match server.await {
        Ok(r) => r,
        Err(_) => Ok(()),
    };
    let writer_result = tokio::task::spawn_blocking(move || handle.close_and_join())
        .await
        .unwrap_or(Err(crate::ingest::IngestError::WriterPanicked));
    WriterAndServer {
        writer_result,
        server_result,
    }
}
