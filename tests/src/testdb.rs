//! [`TestDb`]: one throwaway Postgres cluster with one database set up for a
//! test, the schema directory the service reads, the service's data directory,
//! the HS256 secret tokens are signed with, and a directory for replica files.
//!
//! Invariant: every path and name belongs to this value alone (fresh
//! temporary directories, a fresh cluster), so tests never share state; the
//! directories and the cluster are removed when it drops.

use crate::oracle::Oracle;
use anyhow::Context;
use outpost::auth::AuthConfig;
use outpost::config::ServiceConfig;
use outpost::pgcluster::{PgCluster, PgClusterOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// The database every test uses inside its own cluster.
const DB_NAME: &str = "app";

/// A cluster, a database, a schema directory and a secret. See the module docs.
pub struct TestDb {
    /// The cluster; `restart()` needs `&mut`.
    pub pg: PgCluster,
    /// The database name inside the cluster.
    pub db: String,
    /// The HS256 secret the service verifies tokens with.
    pub secret: String,
    /// The replication slot the service uses.
    pub slot: String,
    /// The publication the service streams.
    pub publication: String,
    schema_dir: TempDir,
    data_dir: TempDir,
    work_dir: TempDir,
}

impl TestDb {
    /// Starts a cluster, creates the database, runs `setup_sql` in it and
    /// writes `schema_toml` as `schema/app.toml`.
    pub async fn start(setup_sql: &str, schema_toml: &str) -> anyhow::Result<TestDb> {
        let setup_sql = setup_sql.to_string();
        let schema_toml = schema_toml.to_string();
        tokio::task::spawn_blocking(move || Self::start_blocking(&setup_sql, &schema_toml))
            .await
            .context("the cluster setup panicked")?
    }

    fn start_blocking(setup_sql: &str, schema_toml: &str) -> anyhow::Result<TestDb> {
        crate::init_tracing();
        let pg = PgCluster::start_with(PgClusterOptions::default())
            .context("starting a throwaway Postgres cluster")?;
        pg.create_database(DB_NAME)?;
        if !setup_sql.trim().is_empty() {
            pg.psql(DB_NAME, setup_sql)
                .context("running the setup SQL")?;
        }
        let schema_dir = tempfile::Builder::new()
            .prefix("outpost-schema-")
            .tempdir()?;
        std::fs::write(schema_dir.path().join("app.toml"), schema_toml)?;
        let data_dir = tempfile::Builder::new().prefix("outpost-data-").tempdir()?;
        let work_dir = tempfile::Builder::new()
            .prefix("outpost-replicas-")
            .tempdir()?;
        Ok(TestDb {
            pg,
            db: DB_NAME.to_string(),
            secret: format!("test-secret-{:016x}", rand::random::<u64>()),
            slot: "outpost_test".to_string(),
            publication: "outpost_test".to_string(),
            schema_dir,
            data_dir,
            work_dir,
        })
    }

    /// The database URL (superuser, trust authentication).
    pub fn url(&self) -> String {
        self.pg.url(&self.db)
    }

    /// The schema directory (holds `app.toml`).
    pub fn schema_dir(&self) -> &Path {
        self.schema_dir.path()
    }

    /// The service's data directory.
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// A directory that lives as long as this value, for test files.
    pub fn work_dir(&self) -> &Path {
        self.work_dir.path()
    }

    /// The path of replica file `name` (not created).
    pub fn replica_path(&self, name: &str) -> PathBuf {
        self.work_dir.path().join(format!("{name}.db"))
    }

    /// The configuration of an in-process service on a free port.
    pub fn service_config(&self) -> ServiceConfig {
        ServiceConfig {
            database_url: self.url(),
            schema_dir: self.schema_dir().to_path_buf(),
            data_dir: self.data_dir().to_path_buf(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            slot: self.slot.clone(),
            publication: self.publication.clone(),
            create_publication: true,
            keepalive_secs: 2,
            limits: Default::default(),
            auth: AuthConfig {
                hs256_secret: Some(self.secret.clone()),
                ..Default::default()
            },
        }
    }

    /// The environment of an `outpost` process listening on `port`.
    pub fn service_env(&self, port: u16) -> Vec<(String, String)> {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        vec![
            ("OUTPOST_DATABASE_URL".into(), self.url()),
            ("OUTPOST_SCHEMA_DIR".into(), path(self.schema_dir())),
            ("OUTPOST_DATA_DIR".into(), path(self.data_dir())),
            ("OUTPOST_LISTEN".into(), format!("127.0.0.1:{port}")),
            ("OUTPOST_SLOT".into(), self.slot.clone()),
            ("OUTPOST_PUBLICATION".into(), self.publication.clone()),
            ("OUTPOST_AUTH_HS256_SECRET".into(), self.secret.clone()),
            ("OUTPOST_KEEPALIVE_SECS".into(), "2".into()),
        ]
    }

    /// A token for user `sub`, valid for an hour, signed with the secret.
    pub fn token(&self, sub: &str) -> anyhow::Result<String> {
        let claims = serde_json::json!({ "sub": sub, "exp": crate::unix_now() + 3600 });
        Ok(outpost::auth::sign_hs256(&self.secret, &claims)?)
    }

    /// A `tokio_postgres` connection to the database (its connection task is
    /// spawned on the current runtime).
    pub async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        connect(&self.url()).await
    }

    /// The oracle of this database.
    pub fn oracle(&self) -> Oracle {
        Oracle::new(self.url())
    }

    /// Restarts Postgres (fast shutdown), blocking this worker thread.
    pub fn restart_postgres(&mut self) -> anyhow::Result<()> {
        let pg = &mut self.pg;
        tokio::task::block_in_place(|| pg.restart()).context("restarting Postgres")
    }
}

/// Connects to `url`, spawning the connection task.
pub(crate) async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "test connection ended");
        }
    });
    Ok(client)
}
