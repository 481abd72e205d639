//! Token validation: turns a bearer token (a JWT) into the [`Claims`] that
//! shapes are keyed by.
//!
//! Accepted tokens are signed with HS256 (a shared secret), RS256 or EdDSA
//! (public keys read from PEM files). Invariants: every accepted token has an
//! `exp` claim in the future (within the configured leeway) and, when present,
//! an `nbf` in the past; `aud` and `iss` must match when an audience or issuer
//! is configured (and are then required); a token whose `aud` is set is
//! accepted without an audience configured. Unsigned (`alg: none`) tokens are
//! refused unless insecure dev mode is on, and even then they must not be
//! expired. Bad input is an [`AuthError`], never a panic.
//!
//! With several keys for an algorithm, a token's `kid` header selects the keys
//! whose file stem equals it (`keys/2024-05.pem` has kid `2024-05`); when no
//! key has that kid, or the token has none, every key of the algorithm is tried.

#[cfg(test)]
mod tests;
mod unsigned;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// The largest leeway honoured, in seconds (one day): clocks are not that far apart.
const MAX_LEEWAY_SECS: u64 = 86_400;

/// How tokens are verified.
#[derive(Clone, Debug, Default)]
pub struct AuthConfig {
    /// The shared secret of HS256 tokens.
    pub hs256_secret: Option<String>,
    /// RSA public keys (PEM files) of RS256 tokens.
    pub rs256_public_keys: Vec<PathBuf>,
    /// Ed25519 public keys (PEM files) of EdDSA tokens.
    pub eddsa_public_keys: Vec<PathBuf>,
    /// The required `aud`, if any.
    pub audience: Option<String>,
    /// The required `iss`, if any.
    pub issuer: Option<String>,
    /// Dev only: accept unsigned (`alg: none`) tokens.
    pub insecure_allow_unsigned: bool,
    /// Clock skew allowed on `exp` and `nbf`, in seconds (at most a day).
    pub leeway_secs: u64,
}

/// Why a key could not be loaded or a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no token verification key configured: set an HS256 secret, RS256 or EdDSA public key \
         files, or enable insecure dev mode"
    )]
    NoKeys,
    #[error("the HS256 secret is empty")]
    EmptySecret,
    #[error("cannot read key file {path}: {source}")]
    KeyRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} is not a valid {algorithm} public key in PEM format: {reason}")]
    KeyParse {
        path: PathBuf,
        algorithm: &'static str,
        reason: String,
    },
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token expired")]
    Expired,
    #[error("token not valid yet (its nbf is in the future)")]
    NotYetValid,
    #[error("token has no exp claim: only expiring tokens are accepted")]
    MissingExp,
    #[error("token has no {0:?} claim, which is required")]
    MissingClaim(String),
    #[error("bad token signature: no configured {algorithm} key verifies it")]
    BadSignature { algorithm: String },
    #[error("token audience does not match the expected audience {expected:?}")]
    WrongAudience { expected: Option<String> },
    #[error("token issuer does not match the expected issuer {expected:?}")]
    WrongIssuer { expected: Option<String> },
    #[error("unsigned token refused: unsigned tokens are accepted only with insecure dev mode")]
    UnsignedRefused,
    #[error("token algorithm {algorithm} is not accepted: {accepted}")]
    UnsupportedAlgorithm { algorithm: String, accepted: String },
    #[error("cannot sign token: {0}")]
    Signing(String),
}

/// The claims of a verified token.
#[derive(Clone, Debug, PartialEq)]
pub struct Claims(pub Map<String, Value>);

impl Claims {
    /// The `sub` claim, when it is a string.
    pub fn sub(&self) -> Option<&str> {
        self.0.get("sub").and_then(Value::as_str)
    }

    /// A claim by name (`sub`, `org_id`, `https://example.com/roles`) or by a
    /// dotted path into nested objects (`app.org`); an exact name wins.
    pub fn get(&self, path: &str) -> Option<&Value> {
        if let Some(value) = self.0.get(path) {
            return Some(value);
        }
        let mut parts = path.split('.');
        let mut current = self.0.get(parts.next()?)?;
        for part in parts {
            current = match current {
                Value::Object(map) => map.get(part)?,
                Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(current)
    }
}

/// A public key with the `kid` it answers to.
#[derive(Clone, Debug)]
struct PublicKey {
    kid: Option<String>,
    key: DecodingKey,
}

/// Verifies tokens against the configured keys and claims.
#[derive(Clone, Debug)]
pub struct Authenticator {
    hs256: Option<DecodingKey>,
    rs256: Vec<PublicKey>,
    eddsa: Vec<PublicKey>,
    audience: Option<String>,
    issuer: Option<String>,
    insecure_allow_unsigned: bool,
    leeway_secs: u64,
}

impl Authenticator {
    /// Reads and parses the configured keys.
    pub fn new(cfg: &AuthConfig) -> Result<Self, AuthError> {
        let hs256 = match cfg.hs256_secret.as_deref() {
            Some("") => return Err(AuthError::EmptySecret),
            Some(secret) => Some(DecodingKey::from_secret(secret.as_bytes())),
            None => None,
        };
        let rs256 = load_keys(&cfg.rs256_public_keys, "RS256", DecodingKey::from_rsa_pem)?;
        let eddsa = load_keys(&cfg.eddsa_public_keys, "EdDSA", DecodingKey::from_ed_pem)?;
        if hs256.is_none() && rs256.is_empty() && eddsa.is_empty() && !cfg.insecure_allow_unsigned {
            return Err(AuthError::NoKeys);
        }
        if cfg.insecure_allow_unsigned {
            tracing::warn!("insecure dev mode: unsigned tokens are accepted");
        }
        Ok(Authenticator {
            hs256,
            rs256,
            eddsa,
            audience: cfg.audience.clone(),
            issuer: cfg.issuer.clone(),
            insecure_allow_unsigned: cfg.insecure_allow_unsigned,
            leeway_secs: cfg.leeway_secs.min(MAX_LEEWAY_SECS),
        })
    }

    /// Verifies `token` (signature and claims) and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let token = token.trim();
        let header = unsigned::header(token)?;
        let algorithm = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or_else(|| AuthError::Malformed("the header has no alg".into()))?;
        if algorithm.eq_ignore_ascii_case("none") {
            if !self.insecure_allow_unsigned {
                return Err(AuthError::UnsignedRefused);
            }
            let claims = unsigned::claims(token)?;
            unsigned::check_claims(
                &claims,
                self.leeway_secs,
                self.audience.as_deref(),
                self.issuer.as_deref(),
            )?;
            return Ok(Claims(claims));
        }
        // Read before the signature check, so that a bad payload is reported as such.
        let unverified = unsigned::claims(token)?;
        let kid = header.get("kid").and_then(Value::as_str);
        let (alg, candidates): (Algorithm, Vec<&DecodingKey>) = match algorithm {
            "HS256" if self.hs256.is_some() => (Algorithm::HS256, self.hs256.iter().collect()),
            "RS256" if !self.rs256.is_empty() => (Algorithm::RS256, select(&self.rs256, kid)),
            "EdDSA" if !self.eddsa.is_empty() => (Algorithm::EdDSA, select(&self.eddsa, kid)),
            _ => {
                return Err(AuthError::UnsupportedAlgorithm {
                    algorithm: algorithm.to_string(),
                    accepted: self.accepted(),
                });
            }
        };
        let validation = self.validation(alg);
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation) {
                Ok(data) => return Ok(Claims(data.claims)),
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
                Err(e) => return Err(self.map_error(e.into_kind(), &unverified)),
            }
        }
        Err(AuthError::BadSignature {
            algorithm: algorithm.to_string(),
        })
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    /// The error of a token whose signature was verified (`claims` are its payload).
    fn map_error(&self, kind: ErrorKind, claims: &Map<String, Value>) -> AuthError {
        match kind {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            // A claim that does not parse is reported as missing by the decoder.
            ErrorKind::MissingRequiredClaim(claim) if claims.contains_key(&claim) => {
                AuthError::Malformed(format!("the {claim} claim has the wrong type"))
            }
            ErrorKind::MissingRequiredClaim(claim) if claim == "exp" => AuthError::MissingExp,
            ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim),
            ErrorKind::InvalidAudience => AuthError::WrongAudience {
                expected: self.audience.clone(),
            },
            ErrorKind::InvalidIssuer => AuthError::WrongIssuer {
                expected: self.issuer.clone(),
            },
            ErrorKind::InvalidClaimFormat(claim) => {
                AuthError::Malformed(format!("the {claim} claim has the wrong type"))
            }
            other => AuthError::Malformed(format!("{other:?}")),
        }
    }

    fn accepted(&self) -> String {
        let mut algs = Vec::new();
        if self.hs256.is_some() {
            algs.push("HS256");
        }
        if !self.rs256.is_empty() {
            algs.push("RS256");
        }
        if !self.eddsa.is_empty() {
            algs.push("EdDSA");
        }
        if self.insecure_allow_unsigned {
            algs.push("none (insecure dev mode)");
        }
        if algs.is_empty() {
            "no key is configured".to_string()
        } else {
            format!("the configured keys accept {}", algs.join(", "))
        }
    }
}

/// The keys a token's `kid` selects: those with that kid, or all when none matches.
fn select<'a>(keys: &'a [PublicKey], kid: Option<&str>) -> Vec<&'a DecodingKey> {
    let matching: Vec<&DecodingKey> = keys
        .iter()
        .filter(|k| kid.is_some() && k.kid.as_deref() == kid)
        .map(|k| &k.key)
        .collect();
    if matching.is_empty() {
        keys.iter().map(|k| &k.key).collect()
    } else {
        matching
    }
}

fn load_keys(
    paths: &[PathBuf],
    algorithm: &'static str,
    parse: fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>,
) -> Result<Vec<PublicKey>, AuthError> {
    paths
        .iter()
        .map(|path| {
            let pem = std::fs::read(path).map_err(|source| AuthError::KeyRead {
                path: path.clone(),
                source,
            })?;
            let key = parse(&pem).map_err(|e| AuthError::KeyParse {
                path: path.clone(),
                algorithm,
                reason: format!("{:?}", e.kind()),
            })?;
            Ok(PublicKey {
                kid: key_id(path),
                key,
            })
        })
        .collect()
}

fn key_id(path: &Path) -> Option<String> {
    path.file_stem().map(|s| s.to_string_lossy().into_owned())
}

/// Signs `claims` (a JSON object) as an HS256 token.
pub fn sign_hs256(secret: &str, claims: &Value) -> Result<String, AuthError> {
    if !claims.is_object() {
        return Err(AuthError::Signing(
            "the claims must be a JSON object".into(),
        ));
    }
    let header = Header::new(Algorithm::HS256);
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| AuthError::Signing(format!("{:?}", e.kind())))
}

/// An unsigned (`alg: none`) token carrying `claims`: accepted only in
/// insecure dev mode.
pub fn unsigned_token(claims: &Value) -> String {
    unsigned::token(claims)
}
