//! `X-Twilio-Signature` (CHANNELS §6): an HMAC-SHA1, keyed with the
//! account's auth token, of the full URL Twilio requested followed by each
//! form parameter, sorted by name, as its name and then its value, with no
//! separators; in base64.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// Why a webhook's signature does not verify. Says nothing of the token
/// or of what the signature should have been.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadSignature {
    #[error("the request has no X-Twilio-Signature")]
    Missing,
    #[error("X-Twilio-Signature does not match the request")]
    Mismatch,
}

/// What is signed: the URL, then the parameters by name (a name given
/// more than once keeps its values in the order they came).
fn signed_text(url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut text = url.to_owned();
    for (name, value) in sorted {
        text.push_str(name);
        text.push_str(value);
    }
    text
}

fn mac(auth_token: &str, url: &str, params: &[(String, String)]) -> Hmac<Sha1> {
    let mut mac =
        Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("HMAC takes a key of any size");
    mac.update(signed_text(url, params).as_bytes());
    mac
}

/// The signature Twilio puts on a request to `url` with form `params`.
pub fn sign(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let tag = mac(auth_token, url, params).finalize().into_bytes();
    base64::engine::general_purpose::STANDARD.encode(tag)
}

/// Checks `signature` (the header's value) in constant time.
pub fn verify(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    signature: Option<&str>,
) -> Result<(), BadSignature> {
    let signature = signature.ok_or(BadSignature::Missing)?;
    let tag = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|_| BadSignature::Mismatch)?;
    mac(auth_token, url, params)
        .verify_slice(&tag)
        .map_err(|_| BadSignature::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Vec<(String, String)> {
        [
            ("CallSid", "CA0123456789abcdef0123456789abcdef"),
            ("CallStatus", "completed"),
            ("AccountSid", "AC0123456789abcdef0123456789abcdef"),
            ("CallDuration", "12"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec()
    }

    const URL: &str = "https://herald.example.com/providers/conn_1/voice_status?session=abc";

    #[test]
    fn signs_the_url_and_the_sorted_parameters() {
        // Worked out apart from this code, with Python's hmac:
        //   s = url + "".join(k + v for k, v in sorted(params))
        //   base64.b64encode(hmac.new(b"12345token", s.encode(), hashlib.sha1).digest())
        assert_eq!(
            sign("12345token", URL, &params()),
            "OIsRQNy7oEWVGiYAqi4g81o4ozs="
        );
        assert_eq!(
            signed_text("u", &params()),
            "uAccountSidAC0123456789abcdef0123456789abcdefCallDuration12\
             CallSidCA0123456789abcdef0123456789abcdefCallStatuscompleted"
        );
    }

    #[test]
    fn verifies_only_what_the_token_signed() {
        let good = sign("12345token", URL, &params());
        assert_eq!(verify("12345token", URL, &params(), Some(&good)), Ok(()));
        assert_eq!(
            verify("other", URL, &params(), Some(&good)),
            Err(BadSignature::Mismatch)
        );
        let mut changed = params();
        changed[1].1 = "busy".into();
        assert_eq!(
            verify("12345token", URL, &changed, Some(&good)),
            Err(BadSignature::Mismatch)
        );
        assert_eq!(
            verify(
                "12345token",
                "https://elsewhere.example/x",
                &params(),
                Some(&good)
            ),
            Err(BadSignature::Mismatch)
        );
        assert_eq!(
            verify("12345token", URL, &params(), Some("not base64!")),
            Err(BadSignature::Mismatch)
        );
        assert_eq!(
            verify("12345token", URL, &params(), None),
            Err(BadSignature::Missing)
        );
    }
}
