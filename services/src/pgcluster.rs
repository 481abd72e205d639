//! A throwaway PostgreSQL cluster for tests, the local demo and benchmarks.
//!
//! [`PgCluster::start`] runs `initdb` in a fresh temporary directory, configures
//! the server for logical replication with trust authentication on 127.0.0.1 and
//! a free port, and starts it. When the process runs as root, the directory is
//! owned by the `postgres` OS user and the server tools run as that user
//! (Postgres refuses to run as root).
//!
//! Invariants: a cluster only ever listens on 127.0.0.1; its port stays the same
//! across [`PgCluster::restart`] and [`PgCluster::start_again`]; dropping the
//! value stops the server (immediate mode) and removes its whole directory,
//! ignoring errors, so a panicking test leaves nothing behind.

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// How many times a start is retried on a fresh port when another process took
/// the free port between picking it and the server binding it.
const PORT_ATTEMPTS: usize = 5;

/// What can go wrong while creating, driving or querying a cluster.
#[derive(Debug, thiserror::Error)]
pub enum PgClusterError {
    /// No `initdb` anywhere we look.
    #[error(
        "PostgreSQL server binaries not found (no initdb in `pg_config --bindir`, \
         /usr/lib/postgresql/*/bin or PATH): install PostgreSQL: apt-get install postgresql"
    )]
    BinariesNotFound,
    /// A filesystem or process-spawning error.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A server tool exited with an error.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    /// The server did not come up; the log usually says why.
    #[error("the PostgreSQL server did not start: {detail}\n--- server log (tail) ---\n{log}")]
    Start { detail: String, log: String },
    /// A `psql` script failed.
    #[error("psql on database {db:?} failed ({status}): {stderr}")]
    Psql {
        db: String,
        status: String,
        stderr: String,
    },
}

impl PgClusterError {
    fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        PgClusterError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Extra configuration for [`PgCluster::start_with`].
#[derive(Clone, Debug, Default)]
pub struct PgClusterOptions {
    /// `pg_hba.conf` lines placed before the default trust rules (first match wins).
    pub extra_hba: Vec<String>,
    /// `postgresql.conf` settings (name, value); the value is written quoted.
    pub settings: Vec<(String, String)>,
}

/// A running throwaway cluster. See the module documentation.
#[derive(Debug)]
pub struct PgCluster {
    bindir: PathBuf,
    /// The temporary root: holds `data/` (the cluster) and `server.log`.
    root: Option<tempfile::TempDir>,
    root_path: PathBuf,
    port: u16,
    as_postgres: bool,
    running: bool,
}

impl PgCluster {
    /// Creates and starts a cluster with the default settings.
    pub fn start() -> Result<PgCluster, PgClusterError> {
        Self::start_with(PgClusterOptions::default())
    }

    /// Creates and starts a cluster with extra `pg_hba.conf` lines and settings.
    pub fn start_with(options: PgClusterOptions) -> Result<PgCluster, PgClusterError> {
        let bindir = find_bindir()?;
        let as_postgres = running_as_root();
        let root = tempfile::Builder::new()
            .prefix("outpost-pg-")
            .tempdir()
            .map_err(|e| PgClusterError::io("cannot create a temporary directory", e))?;
        let root_path = root.path().to_path_buf();
        std::fs::set_permissions(&root_path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| PgClusterError::io(format!("chmod {}", root_path.display()), e))?;
        if as_postgres {
            run_checked(
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&root_path),
            )?;
        }
        let mut cluster = PgCluster {
            bindir,
            root: Some(root),
            root_path,
            port: 0,
            as_postgres,
            running: false,
        };
        cluster.initdb()?;
        cluster.write_hba(&options.extra_hba)?;

        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            cluster.port = free_port()?;
            cluster.write_conf(&options.settings)?;
            match cluster.pg_ctl_start() {
                Ok(()) => {
                    cluster.running = true;
                    tracing::debug!(port = cluster.port, dir = %cluster.root_path.display(), "postgres cluster started");
                    return Ok(cluster);
                }
                Err(e) => {
                    let log = cluster.log_tail();
                    let port_taken =
                        log.contains("could not bind") || log.contains("Address already in use");
                    last_err = Some(e);
                    if !port_taken {
                        break;
                    }
                }
            }
        }
        Err(last_err.unwrap_or_else(|| PgClusterError::Start {
            detail: "no start attempted".into(),
            log: String::new(),
        }))
    }

    /// The TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host the server listens on: always `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// A connection URL for database `db` as the `postgres` superuser.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, db)
    }

    /// The cluster's data directory (`PGDATA`).
    /// The directory of the Postgres binaries the cluster runs (for
    /// companion tools such as `pg_recvlogical` and `pgbench`).
    pub fn bin_dir(&self) -> &Path {
        &self.bindir
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root_path.join("data")
    }

    /// Creates database `name` (quoted as an identifier).
    pub fn create_database(&self, name: &str) -> Result<(), PgClusterError> {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE \"{}\";", name.replace('"', "\"\"")),
        )?;
        Ok(())
    }

    /// Runs an SQL script (one or more statements) on database `db` with
    /// `psql -X -q -At -v ON_ERROR_STOP=1` and returns its standard output:
    /// the rows, one per line, columns separated by `|`.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, PgClusterError> {
        let mut child = self
            .psql_command(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| PgClusterError::io("cannot run psql", e))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A write error means psql exited early; its status and stderr say why.
            let _ = stdin.write_all(sql.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|e| PgClusterError::io("cannot run psql", e))?;
        psql_result(db, out)
    }

    /// Runs the SQL script in file `path` on database `db`, like [`PgCluster::psql`].
    pub fn psql_file(&self, db: &str, path: &Path) -> Result<String, PgClusterError> {
        let out = self
            .psql_command(db)
            .arg("-f")
            .arg(path)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| PgClusterError::io("cannot run psql", e))?;
        psql_result(db, out)
    }

    /// Restarts the server (fast shutdown), keeping its port and data.
    pub fn restart(&mut self) -> Result<(), PgClusterError> {
        let log = self.log_path();
        let data = self.data_dir();
        let mut cmd = self.server_tool("pg_ctl");
        cmd.arg("restart")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-m", "fast", "-w", "-t", "120"]);
        let res = run_checked(&mut cmd);
        self.running = res.is_ok();
        res.map(|_| ()).map_err(|e| self.start_error(e))
    }

    /// Stops the server (fast shutdown); [`PgCluster::start_again`] brings it back.
    pub fn stop(&mut self) -> Result<(), PgClusterError> {
        let data = self.data_dir();
        let mut cmd = self.server_tool("pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(&data)
            .args(["-m", "fast", "-w", "-t", "120"]);
        run_checked(&mut cmd)?;
        self.running = false;
        Ok(())
    }

    /// Starts a server stopped by [`PgCluster::stop`], on the same port.
    pub fn start_again(&mut self) -> Result<(), PgClusterError> {
        self.pg_ctl_start()?;
        self.running = true;
        Ok(())
    }

    /// The last lines of the server log, for error messages.
    pub fn log_tail(&self) -> String {
        match std::fs::read(self.log_path()) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let lines: Vec<&str> = text.lines().collect();
                let from = lines.len().saturating_sub(40);
                lines[from..].join("\n")
            }
            Err(e) => format!("(no server log: {e})"),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.root_path.join("server.log")
    }

    fn initdb(&self) -> Result<(), PgClusterError> {
        let data = self.data_dir();
        let mut cmd = self.server_tool("initdb");
        cmd.arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "-N",
        ]);
        run_checked(&mut cmd)?;
        Ok(())
    }

    fn write_hba(&self, extra: &[String]) -> Result<(), PgClusterError> {
        let mut hba = String::new();
        for line in extra {
            hba.push_str(line);
            hba.push('\n');
        }
        hba.push_str(
            "local all all trust\n\
             host all all 127.0.0.1/32 trust\n\
             local replication all trust\n\
             host replication all 127.0.0.1/32 trust\n",
        );
        let path = self.data_dir().join("pg_hba.conf");
        std::fs::write(&path, hba)
            .map_err(|e| PgClusterError::io(format!("cannot write {}", path.display()), e))
    }

    /// Writes the cluster's settings into `postgresql.outpost.conf`, included
    /// from `postgresql.conf` (rewritten on each attempt with a new port).
    fn write_conf(&self, settings: &[(String, String)]) -> Result<(), PgClusterError> {
        let data = self.data_dir();
        let mut conf = String::new();
        let mut set = |name: &str, value: &str| {
            conf.push_str(&format!("{name} = '{}'\n", value.replace('\'', "''")));
        };
        set("listen_addresses", "127.0.0.1");
        set("port", &self.port.to_string());
        set("unix_socket_directories", &self.root_path.to_string_lossy());
        set("wal_level", "logical");
        set("max_replication_slots", "32");
        set("max_wal_senders", "32");
        set("fsync", "off");
        set("shared_buffers", "64MB");
        set("max_connections", "200");
        for (name, value) in settings {
            set(name, value);
        }
        let path = data.join("postgresql.outpost.conf");
        std::fs::write(&path, conf)
            .map_err(|e| PgClusterError::io(format!("cannot write {}", path.display()), e))?;
        let main = data.join("postgresql.conf");
        let text = std::fs::read_to_string(&main)
            .map_err(|e| PgClusterError::io(format!("cannot read {}", main.display()), e))?;
        let include = "include = 'postgresql.outpost.conf'\n";
        if !text.contains(include) {
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(&main)
                .map_err(|e| PgClusterError::io(format!("cannot open {}", main.display()), e))?;
            file.write_all(format!("\n{include}").as_bytes())
                .map_err(|e| PgClusterError::io(format!("cannot write {}", main.display()), e))?;
        }
        Ok(())
    }

    fn pg_ctl_start(&self) -> Result<(), PgClusterError> {
        let data = self.data_dir();
        let log = self.log_path();
        let mut cmd = self.server_tool("pg_ctl");
        cmd.arg("start")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "120"]);
        run_checked(&mut cmd)
            .map(|_| ())
            .map_err(|e| self.start_error(e))
    }

    fn start_error(&self, e: PgClusterError) -> PgClusterError {
        PgClusterError::Start {
            detail: e.to_string(),
            log: self.log_tail(),
        }
    }

    /// A command running server tool `name`, as `postgres` when we are root.
    fn server_tool(&self, name: &str) -> Command {
        let program = self.bindir.join(name);
        let mut cmd = if self.as_postgres {
            if Path::new("/usr/sbin/runuser").exists() || which("runuser").is_some() {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(&program);
                c
            } else {
                // `su -c` takes one shell string; the arguments follow as $0, $1, …
                let mut c = Command::new("su");
                c.args(["postgres", "-s", "/bin/sh", "-c", "exec \"$0\" \"$@\""])
                    .arg(&program);
                c
            }
        } else {
            Command::new(&program)
        };
        // The tools resolve the current directory; root's home is not readable by postgres.
        cmd.current_dir(&self.root_path);
        cmd.env_remove("PGDATA").env_remove("PGPORT");
        cmd
    }

    fn psql_command(&self, db: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join("psql"));
        cmd.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
        ])
        .arg("-p")
        .arg(self.port.to_string())
        .args(["-U", "postgres", "-d", db])
        .env("PGCONNECT_TIMEOUT", "30")
        .env_remove("PGPASSWORD")
        .env_remove("PGOPTIONS")
        .env_remove("PGSERVICE");
        cmd
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            let data = self.data_dir();
            let mut cmd = self.server_tool("pg_ctl");
            cmd.arg("stop")
                .arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w", "-t", "30"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = cmd.status();
        }
        if let Some(root) = self.root.take() {
            let _ = root.close();
        }
    }
}

fn psql_result(db: &str, out: Output) -> Result<String, PgClusterError> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(PgClusterError::Psql {
            db: db.to_string(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn run_checked(cmd: &mut Command) -> Result<Output, PgClusterError> {
    let command = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| PgClusterError::io(format!("cannot run {command}"), e))?;
    if out.status.success() {
        Ok(out)
    } else {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if stderr.is_empty() {
            stderr = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        Err(PgClusterError::Command {
            command,
            status: out.status.to_string(),
            stderr,
        })
    }
}

/// Whether this process runs as uid 0 (asked once, with `id -u`).
fn running_as_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false)
    })
}

/// The directory holding `initdb`, `pg_ctl` and `psql`.
fn find_bindir() -> Result<PathBuf, PgClusterError> {
    static BINDIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    BINDIR
        .get_or_init(|| {
            let has_initdb = |dir: &Path| dir.join("initdb").is_file();
            if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
                && out.status.success()
            {
                let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                if has_initdb(&dir) {
                    return Some(dir);
                }
            }
            let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|entry| {
                    let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
                    let dir = entry.path().join("bin");
                    has_initdb(&dir).then_some((version, dir))
                })
                .collect();
            versioned.sort();
            if let Some((_, dir)) = versioned.pop() {
                return Some(dir);
            }
            which("initdb").and_then(|p| p.parent().map(Path::to_path_buf))
        })
        .clone()
        .ok_or(PgClusterError::BinariesNotFound)
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn free_port() -> Result<u16, PgClusterError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| PgClusterError::io("cannot bind 127.0.0.1:0 to find a free port", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| PgClusterError::io("cannot read the bound port", e))?
        .port();
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_lifecycle() {
        let mut pg = PgCluster::start().expect("start cluster");
        assert_eq!(pg.host(), "127.0.0.1");
        assert!(pg.url("db1").ends_with(&format!(":{}/db1", pg.port())));
        pg.create_database("db1").expect("create database");
        let wal = pg.psql("db1", "SHOW wal_level;").expect("psql");
        assert_eq!(wal.trim(), "logical");
        let out = pg
            .psql(
                "db1",
                "CREATE TABLE t (a int); INSERT INTO t VALUES (1), (2); SELECT a, a * 10 FROM t ORDER BY a;",
            )
            .expect("script");
        assert_eq!(out, "1|10\n2|20\n");
        let err = pg.psql("db1", "SELECT * FROM missing;").unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");

        let port = pg.port();
        pg.restart().expect("restart");
        assert_eq!(pg.port(), port);
        assert_eq!(pg.psql("db1", "SELECT count(*) FROM t;").unwrap(), "2\n");
        pg.stop().expect("stop");
        assert!(pg.psql("db1", "SELECT 1;").is_err());
        pg.start_again().expect("start again");
        assert_eq!(pg.psql("db1", "SELECT 1;").unwrap(), "1\n");
        assert!(pg.log_tail().contains("ready to accept connections"));

        let dir = pg.data_dir();
        assert!(dir.join("PG_VERSION").is_file());
        drop(pg);
        assert!(!dir.exists(), "{} still exists", dir.display());
    }

    #[test]
    fn options_apply() {
        let pg = PgCluster::start_with(PgClusterOptions {
            extra_hba: vec!["host all nobody_here 127.0.0.1/32 reject".into()],
            settings: vec![("wal_sender_timeout".into(), "5s".into())],
        })
        .expect("start cluster");
        assert_eq!(
            pg.psql("postgres", "SHOW wal_sender_timeout;").unwrap(),
            "5s\n"
        );
        let hba = pg
            .psql(
                "postgres",
                "SELECT user_name[1] FROM pg_hba_file_rules ORDER BY line_number LIMIT 1;",
            )
            .unwrap();
        assert_eq!(hba, "nobody_here\n");
    }

    #[test]
    fn psql_file_runs_script() {
        let pg = PgCluster::start().expect("start cluster");
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "CREATE TABLE x (v text);\nINSERT INTO x VALUES ('a|b');\nSELECT v FROM x;"
        )
        .unwrap();
        // psql runs as this user and only reads the file.
        assert_eq!(pg.psql_file("postgres", file.path()).unwrap(), "a|b\n");
    }
}
