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

#[cfg(test)]
mod tests {
    use super::*;

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
