//! Vonage's two kinds of JWT (CHANNELS §3): the RS256 token herald signs
//! with the application's private key to call Vonage's APIs, kept until
//! shortly before it expires; and the HS256 token Vonage signs each webhook
//! with (the account's signature secret), which carries the hash of the
//! body it came with.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How long a minted token is valid for.
const TOKEN_LIFETIME: Duration = Duration::from_secs(900);
/// A token is minted anew this long before it would expire, so that one in
/// flight never arrives expired.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);
/// How old a webhook's token may be (or how far ahead of our clock), so
/// that a request captured once cannot be replayed later.
pub const WEBHOOK_TOKEN_AGE: Duration = Duration::from_secs(300);

#[derive(Debug, Serialize)]
struct ApiClaims<'a> {
    application_id: &'a str,
    iat: i64,
    jti: String,
    exp: i64,
}

/// Mints the application's tokens for Vonage's APIs.
pub struct TokenMinter {
    application_id: String,
    key: EncodingKey,
    cached: Mutex<Option<(String, DateTime<Utc>)>>,
}

impl TokenMinter {
    /// `private_key` is the application's RSA key in PEM (PKCS#8 or
    /// PKCS#1); an error says only that it is not one.
    pub fn new(application_id: &str, private_key: &str) -> Result<Self, &'static str> {
        let key = EncodingKey::from_rsa_pem(private_key.as_bytes())
            .map_err(|_| "is not an RSA private key in PEM")?;
        // PEM that parses may still not sign (a truncated key): try once,
        // so that a key refused here is the only kind that fails.
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &(), &key)
            .map_err(|_| "is not an RSA private key in PEM")?;
        Ok(TokenMinter {
            application_id: application_id.to_owned(),
            key,
            cached: Mutex::new(None),
        })
    }

    /// A token good for at least [`TOKEN_MARGIN`] more.
    pub fn token(&self, now: DateTime<Utc>) -> String {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((token, expires)) = cached.as_ref() {
            if *expires - now > chrono::Duration::from_std(TOKEN_MARGIN).expect("small") {
                return token.clone();
            }
        }
        let iat = now.timestamp();
        let exp = iat + TOKEN_LIFETIME.as_secs() as i64;
        let claims = ApiClaims {
            application_id: &self.application_id,
            iat,
            jti: uuid::Uuid::new_v4().to_string(),
            exp,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .expect("an RSA key signs");
        let expires = DateTime::from_timestamp(exp, 0).expect("a time in range");
        *cached = Some((token.clone(), expires));
        token
    }
}

/// What a signed webhook's token claims.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct WebhookClaims {
    pub iat: i64,
    #[serde(default)]
    pub jti: Option<String>,
    #[serde(default)]
    pub iss: Option<String>,
    pub payload_hash: String,
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub application_id: Option<String>,
}

/// Why a webhook's signature does not verify. The reason is for the log;
/// the webhook's answer says only 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadSignature {
    #[error("no bearer token")]
    Missing,
    #[error("the token is not signed with the signature secret")]
    Signature,
    #[error("the token is too old or from the future")]
    Stale,
    #[error("the token names another account or application")]
    Foreign,
    #[error("the body is not the one the token signed")]
    Body,
}

/// The hex SHA-256 of `body`, as `payload_hash` has it.
pub fn payload_hash(body: &[u8]) -> String {
    Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks a webhook: its `Authorization: Bearer` token must be signed
/// (HS256) with `signature_secret`, be recent, name `api_key` and
/// `application_id` where it names them, and carry the hash of `body`.
pub fn verify_webhook(
    authorization: Option<&str>,
    body: &[u8],
    signature_secret: &str,
    api_key: &str,
    application_id: &str,
    now: DateTime<Utc>,
) -> Result<WebhookClaims, BadSignature> {
    let token = authorization
        .and_then(|h| {
            let (scheme, token) = h.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or(BadSignature::Missing)?;
    let mut validation = Validation::new(Algorithm::HS256);
    // Vonage's webhook tokens carry no `exp`: their age is checked below.
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    let claims = jsonwebtoken::decode::<WebhookClaims>(
        token,
        &DecodingKey::from_secret(signature_secret.as_bytes()),
        &validation,
    )
    .map_err(|_| BadSignature::Signature)?
    .claims;
    let age = now.timestamp() - claims.iat;
    if age.unsigned_abs() > WEBHOOK_TOKEN_AGE.as_secs() {
        return Err(BadSignature::Stale);
    }
    let foreign =
        |claimed: &Option<String>, ours: &str| claimed.as_deref().is_some_and(|c| c != ours);
    if foreign(&claims.api_key, api_key) || foreign(&claims.application_id, application_id) {
        return Err(BadSignature::Foreign);
    }
    if !claims
        .payload_hash
        .eq_ignore_ascii_case(&payload_hash(body))
    {
        return Err(BadSignature::Body);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_764_580_000, 0).unwrap()
    }

    fn signed(claims: serde_json::Value, secret: &str) -> String {
        let token = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        format!("Bearer {token}")
    }

    fn claims(body: &[u8]) -> serde_json::Value {
        json!({"iat": now().timestamp(), "jti": "j1", "iss": "Vonage",
               "payload_hash": payload_hash(body), "api_key": "key1",
               "application_id": "app1"})
    }

    #[test]
    fn a_signed_webhook_verifies_and_nothing_else_does() {
        let body = br#"{"status":"delivered"}"#;
        let verify = |auth: Option<&str>, body: &[u8]| {
            verify_webhook(auth, body, "sig-s3cret", "key1", "app1", now())
        };
        let good = signed(claims(body), "sig-s3cret");
        assert!(verify(Some(&good), body).is_ok());
        assert_eq!(verify(None, body), Err(BadSignature::Missing));
        assert_eq!(verify(Some("Basic abc"), body), Err(BadSignature::Missing));
        assert_eq!(
            verify(Some(&signed(claims(body), "another")), body),
            Err(BadSignature::Signature)
        );
        assert_eq!(
            verify(Some(&good), br#"{"status":"read"}"#),
            Err(BadSignature::Body)
        );
        let mut old = claims(body);
        old["iat"] = json!(now().timestamp() - 3600);
        assert_eq!(
            verify(Some(&signed(old, "sig-s3cret")), body),
            Err(BadSignature::Stale)
        );
        let mut foreign = claims(body);
        foreign["api_key"] = json!("key2");
        assert_eq!(
            verify(Some(&signed(foreign, "sig-s3cret")), body),
            Err(BadSignature::Foreign)
        );
        assert_eq!(
            verify(Some("Bearer not.a.token"), body),
            Err(BadSignature::Signature)
        );
    }

    #[test]
    fn payload_hashes_are_hex_sha256() {
        assert_eq!(
            payload_hash(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[derive(Debug, Deserialize)]
    struct Minted {
        application_id: String,
        iat: i64,
        exp: i64,
        jti: String,
    }

    #[test]
    fn minted_tokens_verify_with_the_public_key_and_are_kept_until_near_expiry() {
        let minter = TokenMinter::new("app1", crate::testing::vonage_private_key()).unwrap();
        let token = minter.token(now());
        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        let key =
            DecodingKey::from_rsa_pem(crate::testing::vonage_public_key().as_bytes()).unwrap();
        let claims = jsonwebtoken::decode::<Minted>(&token, &key, &validation)
            .unwrap()
            .claims;
        assert_eq!(claims.application_id, "app1");
        assert_eq!(claims.iat, now().timestamp());
        assert_eq!(claims.exp - claims.iat, TOKEN_LIFETIME.as_secs() as i64);
        assert!(!claims.jti.is_empty());
        let later = |secs| now() + chrono::Duration::seconds(secs);
        assert_eq!(minter.token(later(600)), token);
        assert_ne!(minter.token(later(850)), token);
    }

    #[test]
    fn a_bad_private_key_is_refused() {
        assert!(TokenMinter::new(
            "app1",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        )
        .is_err());
        assert!(TokenMinter::new("app1", "not a key").is_err());
    }
}
