//! Token verification: signatures of every supported algorithm, the claim
//! checks, and the refusal of unsigned tokens outside insecure dev mode.

use super::*;
use jsonwebtoken::get_current_timestamp;
use serde_json::json;

const SECRET: &str = "test-secret-of-reasonable-length";

fn key_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

fn now() -> u64 {
    get_current_timestamp()
}

fn hs_config() -> AuthConfig {
    AuthConfig {
        hs256_secret: Some(SECRET.into()),
        ..AuthConfig::default()
    }
}

fn auth(cfg: AuthConfig) -> Authenticator {
    Authenticator::new(&cfg).expect("authenticator")
}

fn sign_with(alg: Algorithm, private_pem: &str, kid: Option<&str>, claims: &Value) -> String {
    let pem = std::fs::read(key_path(private_pem)).expect("key file");
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => panic!("unexpected algorithm"),
    }
    .expect("private key");
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &key).expect("sign")
}

#[test]
fn hs256_accepts_and_exposes_claims() {
    let claims = json!({
        "sub": "user-1",
        "exp": now() + 600,
        "org_id": 7,
        "app": {"org": "acme", "teams": ["a", "b"]},
        "https://example.com/role": "admin",
    });
    let token = sign_hs256(SECRET, &claims).unwrap();
    let got = auth(hs_config()).verify(&token).unwrap();
    assert_eq!(got.sub(), Some("user-1"));
    assert_eq!(got.get("org_id"), Some(&json!(7)));
    assert_eq!(got.get("app.org"), Some(&json!("acme")));
    assert_eq!(got.get("app.teams.1"), Some(&json!("b")));
    assert_eq!(got.get("https://example.com/role"), Some(&json!("admin")));
    assert_eq!(got.get("app.missing"), None);
    assert_eq!(got.get("org_id.x"), None);
    // Surrounding white space (as in a header value) is ignored.
    assert!(auth(hs_config()).verify(&format!(" {token}\n")).is_ok());
}

#[test]
fn hs256_refuses_wrong_secret_expired_and_missing_exp() {
    let a = auth(hs_config());
    let good = json!({"sub": "u", "exp": now() + 600});
    let wrong = sign_hs256("another-secret", &good).unwrap();
    assert!(matches!(
        a.verify(&wrong),
        Err(AuthError::BadSignature { .. })
    ));

    let expired = sign_hs256(SECRET, &json!({"sub": "u", "exp": now() - 3600})).unwrap();
    let err = a.verify(&expired).unwrap_err();
    assert!(matches!(err, AuthError::Expired), "{err}");
    assert_eq!(err.to_string(), "token expired");

    let no_exp = sign_hs256(SECRET, &json!({"sub": "u"})).unwrap();
    let err = a.verify(&no_exp).unwrap_err();
    assert!(matches!(err, AuthError::MissingExp), "{err}");
    assert!(err.to_string().contains("no exp claim"));

    let bad_exp = sign_hs256(SECRET, &json!({"sub": "u", "exp": "tomorrow"})).unwrap();
    assert!(matches!(a.verify(&bad_exp), Err(AuthError::Malformed(_))));

    let future = sign_hs256(SECRET, &json!({"exp": now() + 600, "nbf": now() + 300})).unwrap();
    assert!(matches!(a.verify(&future), Err(AuthError::NotYetValid)));
}

#[test]
fn leeway_applies_to_exp() {
    let token = sign_hs256(SECRET, &json!({"exp": now() - 30})).unwrap();
    let strict = auth(hs_config());
    assert!(matches!(strict.verify(&token), Err(AuthError::Expired)));
    let lenient = auth(AuthConfig {
        leeway_secs: 120,
        ..hs_config()
    });
    assert!(lenient.verify(&token).is_ok());
    // An absurd leeway is capped, not an overflow.
    let capped = auth(AuthConfig {
        leeway_secs: u64::MAX,
        ..hs_config()
    });
    let old = sign_hs256(SECRET, &json!({"exp": 1})).unwrap();
    assert!(matches!(capped.verify(&old), Err(AuthError::Expired)));
}

#[test]
fn audience_and_issuer() {
    let a = auth(AuthConfig {
        audience: Some("outpost".into()),
        issuer: Some("https://issuer.example".into()),
        ..hs_config()
    });
    let exp = now() + 600;
    let iss = "https://issuer.example";
    let ok = |claims: Value| a.verify(&sign_hs256(SECRET, &claims).unwrap());
    assert!(ok(json!({"exp": exp, "aud": "outpost", "iss": iss})).is_ok());
    assert!(ok(json!({"exp": exp, "aud": ["x", "outpost"], "iss": iss})).is_ok());
    let err = ok(json!({"exp": exp, "aud": "other", "iss": iss})).unwrap_err();
    assert!(matches!(err, AuthError::WrongAudience { .. }), "{err}");
    assert!(err.to_string().contains("\"outpost\""));
    let err = ok(json!({"exp": exp, "iss": iss})).unwrap_err();
    assert!(
        matches!(&err, AuthError::MissingClaim(c) if c == "aud"),
        "{err}"
    );
    let err = ok(json!({"exp": exp, "aud": "outpost", "iss": "evil"})).unwrap_err();
    assert!(matches!(err, AuthError::WrongIssuer { .. }), "{err}");
    let err = ok(json!({"exp": exp, "aud": "outpost"})).unwrap_err();
    assert!(
        matches!(&err, AuthError::MissingClaim(c) if c == "iss"),
        "{err}"
    );

    // Without a configured audience, a token's aud is not a reason to refuse it.
    let open = auth(hs_config());
    let token = sign_hs256(SECRET, &json!({"exp": exp, "aud": "anything"})).unwrap();
    assert!(open.verify(&token).is_ok());
}

#[test]
fn rs256_with_several_keys_and_kids() {
    let claims = json!({"sub": "r", "exp": now() + 600});
    let a = auth(AuthConfig {
        rs256_public_keys: vec![key_path("rsa_other_public.pem"), key_path("rsa_public.pem")],
        ..AuthConfig::default()
    });
    let token = sign_with(Algorithm::RS256, "rsa_private.pem", None, &claims);
    assert_eq!(a.verify(&token).unwrap().sub(), Some("r"));
    let by_kid = sign_with(
        Algorithm::RS256,
        "rsa_private.pem",
        Some("rsa_public"),
        &claims,
    );
    assert!(a.verify(&by_kid).is_ok());
    // A kid naming the wrong key selects only that key.
    let wrong_kid = sign_with(
        Algorithm::RS256,
        "rsa_private.pem",
        Some("rsa_other_public"),
        &claims,
    );
    assert!(matches!(
        a.verify(&wrong_kid),
        Err(AuthError::BadSignature { .. })
    ));
    // An unknown kid falls back to every key.
    let unknown_kid = sign_with(
        Algorithm::RS256,
        "rsa_private.pem",
        Some("2031-01"),
        &claims,
    );
    assert!(a.verify(&unknown_kid).is_ok());

    let only_other = auth(AuthConfig {
        rs256_public_keys: vec![key_path("rsa_other_public.pem")],
        ..AuthConfig::default()
    });
    let err = only_other.verify(&token).unwrap_err();
    assert!(matches!(err, AuthError::BadSignature { .. }), "{err}");

    let expired = sign_with(
        Algorithm::RS256,
        "rsa_private.pem",
        None,
        &json!({"exp": now() - 3600}),
    );
    assert!(matches!(a.verify(&expired), Err(AuthError::Expired)));

    // No HS256 secret: an HS256 token names an algorithm with no key.
    let hs = sign_hs256(SECRET, &claims).unwrap();
    let err = a.verify(&hs).unwrap_err();
    assert!(
        matches!(err, AuthError::UnsupportedAlgorithm { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("RS256"));
}

#[test]
fn eddsa() {
    let a = auth(AuthConfig {
        eddsa_public_keys: vec![key_path("ed25519_public.pem")],
        ..AuthConfig::default()
    });
    let token = sign_with(
        Algorithm::EdDSA,
        "ed25519_private.pem",
        None,
        &json!({"sub": "e", "exp": now() + 600}),
    );
    assert_eq!(a.verify(&token).unwrap().sub(), Some("e"));

    // Changing the payload breaks the signature.
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let forged = unsigned_token(&json!({"sub": "admin", "exp": now() + 600}));
    parts[1] = forged.split('.').nth(1).unwrap().to_string();
    let err = a.verify(&parts.join(".")).unwrap_err();
    assert!(matches!(err, AuthError::BadSignature { .. }), "{err}");
}

#[test]
fn unsigned_tokens_need_insecure_mode() {
    let token = unsigned_token(&json!({"sub": "dev", "exp": now() + 600}));
    let err = auth(hs_config()).verify(&token).unwrap_err();
    assert!(matches!(err, AuthError::UnsignedRefused));
    assert!(
        err.to_string()
            .contains("unsigned tokens are accepted only with insecure dev mode")
    );

    let dev = auth(AuthConfig {
        insecure_allow_unsigned: true,
        ..AuthConfig::default()
    });
    assert_eq!(dev.verify(&token).unwrap().sub(), Some("dev"));
    let expired = unsigned_token(&json!({"sub": "dev", "exp": now() - 3600}));
    assert!(matches!(dev.verify(&expired), Err(AuthError::Expired)));
    let no_exp = unsigned_token(&json!({"sub": "dev"}));
    assert!(matches!(dev.verify(&no_exp), Err(AuthError::MissingExp)));
    let future = unsigned_token(&json!({"exp": now() + 600, "nbf": now() + 300}));
    assert!(matches!(dev.verify(&future), Err(AuthError::NotYetValid)));

    let dev_aud = auth(AuthConfig {
        insecure_allow_unsigned: true,
        audience: Some("outpost".into()),
        issuer: Some("me".into()),
        ..AuthConfig::default()
    });
    let wrong = unsigned_token(&json!({"exp": now() + 600, "aud": "x", "iss": "me"}));
    assert!(matches!(
        dev_aud.verify(&wrong),
        Err(AuthError::WrongAudience { .. })
    ));
    let right = unsigned_token(&json!({"exp": now() + 600, "aud": "outpost", "iss": "me"}));
    assert!(dev_aud.verify(&right).is_ok());
    let bad_iss = unsigned_token(&json!({"exp": now() + 600, "aud": "outpost", "iss": "you"}));
    assert!(matches!(
        dev_aud.verify(&bad_iss),
        Err(AuthError::WrongIssuer { .. })
    ));

    // Insecure mode still verifies signed tokens it has keys for.
    let dev_hs = auth(AuthConfig {
        insecure_allow_unsigned: true,
        ..hs_config()
    });
    let forged = sign_hs256("nope", &json!({"exp": now() + 600})).unwrap();
    assert!(matches!(
        dev_hs.verify(&forged),
        Err(AuthError::BadSignature { .. })
    ));
}

#[test]
fn malformed_tokens() {
    let a = auth(hs_config());
    for bad in [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.e30.",
        "e30.e30.",
        "bm90IGpzb24.e30.",
        "WzFd.e30.",
    ] {
        let err = a.verify(bad).unwrap_err();
        assert!(matches!(err, AuthError::Malformed(_)), "{bad:?}: {err}");
    }
    // Valid header, broken payload.
    let token = sign_hs256(SECRET, &json!({"exp": now() + 600})).unwrap();
    let header = token.split('.').next().unwrap();
    let err = a.verify(&format!("{header}.@@@.sig")).unwrap_err();
    assert!(matches!(err, AuthError::Malformed(_)), "{err}");
    assert!(sign_hs256(SECRET, &json!([1])).is_err());
}

#[test]
fn configuration_errors() {
    assert!(matches!(
        Authenticator::new(&AuthConfig::default()),
        Err(AuthError::NoKeys)
    ));
    assert!(matches!(
        Authenticator::new(&AuthConfig {
            hs256_secret: Some(String::new()),
            ..AuthConfig::default()
        }),
        Err(AuthError::EmptySecret)
    ));
    let missing = Authenticator::new(&AuthConfig {
        rs256_public_keys: vec![key_path("no_such_key.pem")],
        ..AuthConfig::default()
    })
    .unwrap_err();
    assert!(matches!(missing, AuthError::KeyRead { .. }), "{missing}");
    assert!(missing.to_string().contains("no_such_key.pem"));
    let wrong_type = Authenticator::new(&AuthConfig {
        eddsa_public_keys: vec![key_path("rsa_public.pem")],
        ..AuthConfig::default()
    })
    .unwrap_err();
    assert!(
        matches!(wrong_type, AuthError::KeyParse { .. }),
        "{wrong_type}"
    );
    let not_pem = Authenticator::new(&AuthConfig {
        rs256_public_keys: vec![key_path("README.md")],
        ..AuthConfig::default()
    })
    .unwrap_err();
    assert!(matches!(not_pem, AuthError::KeyParse { .. }), "{not_pem}");
}
