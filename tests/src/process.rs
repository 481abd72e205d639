//! The `outpost` binary as a child process.
//!
//! The binary is looked up next to the running test executable
//! (`target/<profile>/deps/<test>` → `target/<profile>/outpost`). Cargo does
//! not build another package's binaries for this package's tests, so the first
//! use in a test process runs `cargo build -p outpost --bin outpost` for the
//! same target directory and profile, which also keeps the binary in step with
//! the library the tests link.
//!
//! Invariant: a [`ServiceProcess`] owns its child; dropping it kills the child
//! (SIGKILL) and reaps it, so no service outlives its test.

use anyhow::{Context, bail};
use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Picks a free TCP port on 127.0.0.1 (bind port 0, then release it).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The path of the `outpost` binary, built on first use. See the module docs.
pub fn outpost_binary() -> anyhow::Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| build_binary().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

fn build_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let deps = exe
        .parent()
        .context("the test executable has no directory")?;
    let profile_dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().context("no profile directory")?
    } else {
        deps
    };
    let binary = profile_dir.join("outpost");
    let target_dir = profile_dir
        .parent()
        .context("no target directory")?
        .to_path_buf();
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(other) => other.to_string(),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("no workspace directory")?
        .join("Cargo.toml");
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "outpost",
            "--bin",
            "outpost",
            "--profile",
        ])
        .arg(&profile)
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) if binary.exists() => {
            tracing::warn!(status = %s, "building the outpost binary failed; using the existing one");
        }
        Ok(s) => bail!("`cargo build -p outpost --bin outpost` failed: {s}"),
        Err(e) if binary.exists() => {
            tracing::warn!(error = %e, "cannot run cargo; using the existing outpost binary");
        }
        Err(e) => bail!("cannot run cargo to build the outpost binary: {e}"),
    }
    if !binary.exists() {
        bail!("no outpost binary at {}", binary.display());
    }
    Ok(binary)
}

/// `outpost serve` as a child process on a fixed port.
pub struct ServiceProcess {
    child: Option<Child>,
    env: Vec<(String, String)>,
    /// The gRPC port (fixed across restarts).
    pub port: u16,
    log_path: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl ServiceProcess {
    /// Starts `outpost serve` with `env` (which must set `OUTPOST_LISTEN` to
    /// `127.0.0.1:<port>`) and waits until the port accepts connections.
    pub async fn start(env: Vec<(String, String)>, port: u16) -> anyhow::Result<ServiceProcess> {
        let log_dir = tempfile::Builder::new().prefix("outpost-log-").tempdir()?;
        let mut service = ServiceProcess {
            child: None,
            env,
            port,
            log_path: log_dir.path().join("service.log"),
            _log_dir: log_dir,
        };
        service.spawn().await?;
        Ok(service)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let binary = tokio::task::spawn_blocking(outpost_binary).await??;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let child = Command::new(binary)
            .arg("serve")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning outpost serve")?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(60)).await
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "outpost serve exited ({status}) before listening\n--- log ---\n{}",
                    self.log_tail()
                );
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "outpost serve did not listen on port {} within {timeout:?}\n--- log ---\n{}",
                    self.port,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The server address for clients.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the process again with the same environment (port, data dir).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill()?;
        self.spawn().await
    }

    /// Fails when the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.as_mut() {
            None => bail!("outpost serve is not running"),
            Some(child) => match child.try_wait()? {
                None => Ok(()),
                Some(status) => bail!(
                    "outpost serve exited ({status})\n--- log ---\n{}",
                    self.log_tail()
                ),
            },
        }
    }

    /// The last lines of the service's log (all runs).
    pub fn log_tail(&self) -> String {
        match std::fs::read(&self.log_path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(60)..].join("\n")
            }
            Err(e) => format!("(no log: {e})"),
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
