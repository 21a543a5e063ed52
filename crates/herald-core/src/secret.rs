//! Secrets that never print, and URLs shown without theirs.
//!
//! Keys, tokens and passwords reach herald in settings, in URLs (a database
//! URL's password, a `status_url`'s `?token=`) and, with channel providers,
//! in credentials. None of them may appear in a response, a log line, an
//! event or an error text. [`Secret`] holds a value whose `Debug` prints
//! nothing of it; [`redact_url`] is the one way a URL is shown.

use std::fmt;

/// A value that is used but never shown: `Debug` and `Display` print
/// `***`, so a `Secret` inside a logged struct or an error stays hidden.
/// [`Secret::expose`] is the one way to the value, easy to find in review.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    /// The value itself, for the one place that needs it (a connection, a
    /// comparison, a signature).
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Secret(value)
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A URL that may carry a secret (a database or Redis URL with a password,
/// an SMTP relay's): it prints as [`redact_url`] shows it, and
/// [`SecretUrl::expose`] gives the whole of it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        SecretUrl(url.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for SecretUrl {
    fn from(url: &str) -> Self {
        SecretUrl::new(url)
    }
}

impl From<String> for SecretUrl {
    fn from(url: String) -> Self {
        SecretUrl::new(url)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact_url(&self.0))
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

/// What stands in for a hidden part.
const HIDDEN: &str = "***";

/// `url` fit for a log line, an event or an error: its user name and
/// password (either may be a token) become `***`, each query value becomes
/// `***` (the names stay, they help), and the fragment goes. What does not
/// parse as a URL is hidden whole, since where a secret sits in it cannot
/// be told; a bare path such as `herald.db` is shown as it is.
pub fn redact_url(text: &str) -> String {
    let mut url = match url::Url::parse(text) {
        Ok(url) => url,
        Err(url::ParseError::RelativeUrlWithoutBase)
            if !text.contains(['@', '?', '#', ':']) && !text.is_empty() =>
        {
            return text.to_owned();
        }
        Err(_) => return "(a URL that does not parse)".to_owned(),
    };
    if url.cannot_be_a_base() {
        // `mailto:`, `data:` and the like: nothing to keep apart.
        return format!("{}:{HIDDEN}", url.scheme());
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Only fails for URLs that cannot carry userinfo (no host).
        let _ = url.set_password(None);
        let _ = url.set_username(HIDDEN);
    }
    if url.query().is_some() {
        let names: Vec<String> = url
            .query_pairs()
            .map(|(name, _)| name.into_owned())
            .collect();
        if names.is_empty() {
            url.set_query(None);
        } else {
            let mut pairs = url.query_pairs_mut();
            pairs.clear();
            for name in &names {
                pairs.append_pair(name, HIDDEN);
            }
        }
    }
    url.set_fragment(None);
    url.to_string()
}

/// Seals what must be kept at rest but never read there (connections'
/// credentials) under the operator's key (`HERALD_SECRET_KEY`):
/// ChaCha20-Poly1305 with a random nonce, bound to a label (the row it
/// belongs to), so that a sealed value moved to another row does not open.
pub struct Sealer(ring::aead::LessSafeKey);

/// The length of a sealing key: 32 bytes, given as base64.
pub const SEALING_KEY_BYTES: usize = 32;

/// Why a key or a sealed value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the key must be 32 bytes in base64 (`herald secret-key` makes one)")]
    BadKey,
    #[error("the sealed value does not open with this key")]
    WrongKey,
}

/// What a sealed value starts with: its format.
const SEALED_V1: u8 = 1;

impl Sealer {
    /// A sealer from a key as the operator gives it: 32 bytes in base64.
    pub fn from_base64(key: &str) -> Result<Self, SealError> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map_err(|_| SealError::BadKey)?;
        if bytes.len() != SEALING_KEY_BYTES {
            return Err(SealError::BadKey);
        }
        let key = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &bytes)
            .map_err(|_| SealError::BadKey)?;
        Ok(Sealer(ring::aead::LessSafeKey::new(key)))
    }

    /// A new random key, in base64.
    pub fn generate_key() -> String {
        use base64::Engine;
        use rand::RngCore;
        let mut key = [0u8; SEALING_KEY_BYTES];
        rand::thread_rng().fill_bytes(&mut key);
        base64::engine::general_purpose::STANDARD.encode(key)
    }

    /// `plain`, sealed for `label`.
    pub fn seal(&self, label: &str, plain: &[u8]) -> Vec<u8> {
        use rand::RngCore;
        let mut nonce = [0u8; ring::aead::NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut sealed = plain.to_vec();
        self.0
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(label.as_bytes()),
                &mut sealed,
            )
            .expect("sealing fits in memory");
        let mut out = Vec::with_capacity(1 + nonce.len() + sealed.len());
        out.push(SEALED_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// What `sealed` holds, if it was sealed for `label` with this key.
    pub fn open(&self, label: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let rest = match sealed.split_first() {
            Some((&SEALED_V1, rest)) if rest.len() >= ring::aead::NONCE_LEN => rest,
            _ => return Err(SealError::WrongKey),
        };
        let (nonce, data) = rest.split_at(ring::aead::NONCE_LEN);
        let nonce =
            ring::aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::WrongKey)?;
        let mut data = data.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, ring::aead::Aad::from(label.as_bytes()), &mut data)
            .map_err(|_| SealError::WrongKey)?;
        Ok(plain.to_vec())
    }
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_label() {
        let sealer = Sealer::from_base64(&Sealer::generate_key()).unwrap();
        let sealed = sealer.seal("conn_1", b"{\"api_secret\": \"s3cret\"}");
        assert!(!sealed.windows(6).any(|w| w == b"s3cret"));
        assert_eq!(
            sealer.open("conn_1", &sealed).unwrap(),
            b"{\"api_secret\": \"s3cret\"}"
        );
        // Each sealing draws a new nonce.
        assert_ne!(sealer.seal("conn_1", b"x"), sealer.seal("conn_1", b"x"));
        assert_eq!(sealer.open("conn_2", &sealed), Err(SealError::WrongKey));
        let other = Sealer::from_base64(&Sealer::generate_key()).unwrap();
        assert_eq!(other.open("conn_1", &sealed), Err(SealError::WrongKey));
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(sealer.open("conn_1", &tampered), Err(SealError::WrongKey));
        assert_eq!(sealer.open("conn_1", b""), Err(SealError::WrongKey));
    }

    #[test]
    fn keys_are_32_bytes_of_base64() {
        assert_eq!(
            Sealer::from_base64("c2hvcnQ=").unwrap_err(),
            SealError::BadKey
        );
        assert_eq!(
            Sealer::from_base64("not base64!").unwrap_err(),
            SealError::BadKey
        );
        assert!(Sealer::from_base64(&format!(" {} ", Sealer::generate_key())).is_ok());
        assert_eq!(
            format!(
                "{:?}",
                Sealer::from_base64(&Sealer::generate_key()).unwrap()
            ),
            "Sealer(***)"
        );
    }

    #[test]
    fn userinfo_and_query_values_are_hidden() {
        assert_eq!(
            redact_url("http://user:pass@hooks.example.com/cb?token=s3cret&a=1#frag"),
            "http://***@hooks.example.com/cb?token=***&a=***"
        );
        assert_eq!(
            redact_url("postgres://herald:pa55@db:5432/herald"),
            "postgres://***@db:5432/herald"
        );
        assert_eq!(
            redact_url("https://t0ken@hooks.example.com/"),
            "https://***@hooks.example.com/"
        );
        assert_eq!(
            redact_url("https://example.com/x?"),
            "https://example.com/x"
        );
    }

    #[test]
    fn urls_without_secrets_are_shown_as_they_are() {
        for url in ["http://127.0.0.1:8081/callbacks", "redis://127.0.0.1:6379"] {
            assert_eq!(redact_url(url), url);
        }
        assert_eq!(redact_url("herald.db"), "herald.db");
        assert_eq!(
            redact_url("sqlite:///var/lib/herald.db"),
            "sqlite:///var/lib/herald.db"
        );
    }

    #[test]
    fn what_does_not_parse_is_hidden_whole() {
        for text in ["http://[bad", "user:s3cret@", "://s3cret", "smtp://a:b@[x"] {
            let shown = redact_url(text);
            assert!(
                !shown.contains("s3cret") && !shown.contains(":b@"),
                "{text} → {shown}"
            );
        }
        assert_eq!(redact_url("mailto:ada@example.com"), "mailto:***");
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("s3cret".to_owned());
        assert_eq!(format!("{secret:?} {secret}"), "*** ***");
        assert_eq!(secret.expose(), "s3cret");
        let url = SecretUrl::new("postgres://herald:s3cret@db/herald");
        let shown = format!("{url:?} {url}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert_eq!(url.expose(), "postgres://herald:s3cret@db/herald");
    }
}
