//! Service configuration: a TOML file, with every setting also settable by an
//! `OUTPOST_…` environment variable (the variable wins).
//!
//! ```toml
//! database_url = "postgres://outpost:secret@db:5432/app"   # OUTPOST_DATABASE_URL
//! schema_dir = "schema"                                     # OUTPOST_SCHEMA_DIR
//! data_dir = "/var/lib/outpost"                             # OUTPOST_DATA_DIR
//! listen = "0.0.0.0:7400"                                   # OUTPOST_LISTEN
//! slot = "outpost"                                          # OUTPOST_SLOT
//! publication = "outpost"                                   # OUTPOST_PUBLICATION
//! create_publication = true                                 # OUTPOST_CREATE_PUBLICATION
//! keepalive_secs = 15                                       # OUTPOST_KEEPALIVE_SECS
//! max_buckets_per_user = 10000                              # OUTPOST_MAX_BUCKETS_PER_USER
//! max_shapes_per_request = 50                               # OUTPOST_MAX_SHAPES_PER_REQUEST
//!
//! [auth]
//! hs256_secret = "…"                                        # OUTPOST_AUTH_HS256_SECRET
//! rs256_public_keys = ["keys/rs256.pem"]                    # OUTPOST_AUTH_RS256_PUBLIC_KEYS (comma-separated)
//! eddsa_public_keys = []                                    # OUTPOST_AUTH_EDDSA_PUBLIC_KEYS (comma-separated)
//! audience = "my-app"                                       # OUTPOST_AUTH_AUDIENCE
//! issuer = "https://auth.example.com/"                      # OUTPOST_AUTH_ISSUER
//! insecure_allow_unsigned = false                           # OUTPOST_AUTH_INSECURE_ALLOW_UNSIGNED
//! leeway_secs = 30                                          # OUTPOST_AUTH_LEEWAY_SECS
//! ```
//!
//! Relative paths in the file are relative to the file's directory.

use crate::auth::AuthConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{name}: {message}")]
    Env { name: String, message: String },
    #[error("missing setting `{setting}`: set it in the config file or with {env}")]
    Missing {
        setting: &'static str,
        env: &'static str,
    },
}

/// The settings as written in a file (all optional there).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    database_url: Option<String>,
    schema_dir: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    slot: Option<String>,
    publication: Option<String>,
    create_publication: Option<bool>,
    keepalive_secs: Option<u64>,
    max_buckets_per_user: Option<usize>,
    max_shapes_per_request: Option<usize>,
    #[serde(default)]
    auth: FileAuth,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    hs256_secret: Option<String>,
    #[serde(default)]
    rs256_public_keys: Vec<PathBuf>,
    #[serde(default)]
    eddsa_public_keys: Vec<PathBuf>,
    audience: Option<String>,
    issuer: Option<String>,
    insecure_allow_unsigned: Option<bool>,
    leeway_secs: Option<u64>,
}

/// Everything the service needs to run.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub database_url: String,
    pub schema_dir: PathBuf,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub slot: String,
    pub publication: String,
    pub create_publication: bool,
    pub keepalive_secs: u64,
    pub auth: AuthConfig,
    /// What one client may ask for.
    pub limits: Limits,
}

/// What one client may ask of the service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most buckets one stream may hold (its shapes' buckets after
    /// memberships and request parameters are applied).
    pub max_buckets_per_user: usize,
    /// The most shapes one request may name.
    pub max_shapes_per_request: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_buckets_per_user: 10_000,
            max_shapes_per_request: 50,
        }
    }
}

type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn env_parse<T: std::str::FromStr>(env: Env<'_>, name: &str) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match env(name) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|e: T::Err| ConfigError::Env {
                name: name.to_string(),
                message: format!("{v:?}: {e}"),
            }),
    }
}

fn env_list(env: Env<'_>, name: &str) -> Option<Vec<PathBuf>> {
    env(name).map(|v| {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect()
    })
}

impl ServiceConfig {
    /// Reads the optional file, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with(file, &|name| std::env::var(name).ok())
    }

    /// As [`ServiceConfig::load`], with the environment given as a function.
    pub fn load_with(file: Option<&Path>, env: Env<'_>) -> Result<Self, ConfigError> {
        let (fc, base) = match file {
            None => (FileConfig::default(), PathBuf::from(".")),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                let fc: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
                (fc, path.parent().map(Path::to_path_buf).unwrap_or_default())
            }
        };
        let rel = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let database_url =
            env("OUTPOST_DATABASE_URL")
                .or(fc.database_url)
                .ok_or(ConfigError::Missing {
                    setting: "database_url",
                    env: "OUTPOST_DATABASE_URL",
                })?;
        let listen_text = env("OUTPOST_LISTEN")
            .or(fc.listen)
            .unwrap_or_else(|| "127.0.0.1:7400".into());
        let listen = listen_text.parse().map_err(|e| ConfigError::Env {
            name: "listen".into(),
            message: format!("{listen_text:?} is not an address like 0.0.0.0:7400: {e}"),
        })?;
        let auth = AuthConfig {
            hs256_secret: env("OUTPOST_AUTH_HS256_SECRET").or(fc.auth.hs256_secret),
            rs256_public_keys: env_list(env, "OUTPOST_AUTH_RS256_PUBLIC_KEYS")
                .unwrap_or_else(|| fc.auth.rs256_public_keys.into_iter().map(rel).collect()),
            eddsa_public_keys: env_list(env, "OUTPOST_AUTH_EDDSA_PUBLIC_KEYS")
                .unwrap_or_else(|| fc.auth.eddsa_public_keys.into_iter().map(rel).collect()),
            audience: env("OUTPOST_AUTH_AUDIENCE").or(fc.auth.audience),
            issuer: env("OUTPOST_AUTH_ISSUER").or(fc.auth.issuer),
            insecure_allow_unsigned: env_parse(env, "OUTPOST_AUTH_INSECURE_ALLOW_UNSIGNED")?
                .or(fc.auth.insecure_allow_unsigned)
                .unwrap_or(false),
            leeway_secs: env_parse(env, "OUTPOST_AUTH_LEEWAY_SECS")?
                .or(fc.auth.leeway_secs)
                .unwrap_or(30),
        };
        Ok(ServiceConfig {
            database_url,
            schema_dir: env("OUTPOST_SCHEMA_DIR")
                .map(PathBuf::from)
                .or(fc.schema_dir.map(rel))
                .unwrap_or_else(|| "schema".into()),
            data_dir: env("OUTPOST_DATA_DIR")
                .map(PathBuf::from)
                .or(fc.data_dir.map(rel))
                .unwrap_or_else(|| ".outpost".into()),
            listen,
            slot: env("OUTPOST_SLOT")
                .or(fc.slot)
                .unwrap_or_else(|| "outpost".into()),
            publication: env("OUTPOST_PUBLICATION")
                .or(fc.publication)
                .unwrap_or_else(|| "outpost".into()),
            create_publication: env_parse(env, "OUTPOST_CREATE_PUBLICATION")?
                .or(fc.create_publication)
                .unwrap_or(true),
            keepalive_secs: env_parse(env, "OUTPOST_KEEPALIVE_SECS")?
                .or(fc.keepalive_secs)
                .unwrap_or(15),
            auth,
            limits: Limits {
                max_buckets_per_user: env_parse(env, "OUTPOST_MAX_BUCKETS_PER_USER")?
                    .or(fc.max_buckets_per_user)
                    .unwrap_or(Limits::default().max_buckets_per_user)
                    .max(1),
                max_shapes_per_request: env_parse(env, "OUTPOST_MAX_SHAPES_PER_REQUEST")?
                    .or(fc.max_shapes_per_request)
                    .unwrap_or(Limits::default().max_shapes_per_request)
                    .max(1),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outpost.toml");
        std::fs::write(&path, "database_url = \"postgres://file\"\nlisten = \"127.0.0.1:1\"\n[auth]\nhs256_secret = \"s\"\n").unwrap();
        let vars: HashMap<&str, &str> = [
            ("OUTPOST_LISTEN", "127.0.0.1:2"),
            ("OUTPOST_AUTH_RS256_PUBLIC_KEYS", "a.pem, b.pem"),
        ]
        .into();
        let cfg =
            ServiceConfig::load_with(Some(&path), &|n| vars.get(n).map(|s| s.to_string())).unwrap();
        assert_eq!(cfg.database_url, "postgres://file");
        assert_eq!(cfg.listen.port(), 2);
        assert_eq!(
            cfg.auth.rs256_public_keys,
            vec![PathBuf::from("a.pem"), PathBuf::from("b.pem")]
        );
        assert_eq!(cfg.schema_dir, PathBuf::from("schema"));
        assert_eq!(cfg.limits, Limits::default());
    }

    #[test]
    fn limits_come_from_the_file_or_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outpost.toml");
        std::fs::write(
            &path,
            "database_url = \"postgres://file\"\nmax_buckets_per_user = 20\nmax_shapes_per_request = 3\n",
        )
        .unwrap();
        let cfg = ServiceConfig::load_with(Some(&path), &|_| None).unwrap();
        assert_eq!(
            cfg.limits,
            Limits {
                max_buckets_per_user: 20,
                max_shapes_per_request: 3
            }
        );
        let vars: HashMap<&str, &str> = [("OUTPOST_MAX_BUCKETS_PER_USER", "7")].into();
        let cfg =
            ServiceConfig::load_with(Some(&path), &|n| vars.get(n).map(|s| s.to_string())).unwrap();
        assert_eq!(cfg.limits.max_buckets_per_user, 7);
        let vars: HashMap<&str, &str> = [("OUTPOST_MAX_SHAPES_PER_REQUEST", "many")].into();
        let err = ServiceConfig::load_with(Some(&path), &|n| vars.get(n).map(|s| s.to_string()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("OUTPOST_MAX_SHAPES_PER_REQUEST"), "{err}");
    }

    #[test]
    fn unknown_keys_and_missing_url_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outpost.toml");
        std::fs::write(&path, "databse_url = \"x\"\n").unwrap();
        let err = ServiceConfig::load_with(Some(&path), &|_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("databse_url"), "{err}");
        let err = ServiceConfig::load_with(None, &|_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("OUTPOST_DATABASE_URL"), "{err}");
    }
}
