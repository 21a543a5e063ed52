//! Vonage, the hosted platform's own provider (CHANNELS §3, §4): its
//! connection's credentials and settings, its JWTs ([`auth`]), the Voice
//! API ([`voice`]) for calls and the Messages API ([`messages`]) for SMS
//! and WhatsApp.
//!
//! Everything here is wire types, signing, verification, request building
//! and status mapping, testable without a network; [`Vonage::send`] is the
//! one call that goes out, to the API base URL the operator configures
//! (`HERALD_VONAGE_API_URL`).

pub mod auth;
pub mod messages;
pub mod voice;

use std::time::Duration;

use chrono::Utc;
use herald_core::secret::Secret;

use crate::adapter::{self, CallOutcome, NewCall, OutboundMessage, SendOutcome};
use crate::connection::{BadConnection, Credentials};

pub use auth::{BadSignature, TokenMinter};
pub use messages::{Inbound, StatusReport};

/// The API base URL when none is configured (CONTRACT §10.1b).
pub const DEFAULT_API_URL: &str = "https://api.nexmo.com";

/// How long one request to Vonage may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// An answer of Vonage's, read (see [`adapter::read_answer`]).
pub(crate) async fn read_answer(
    answer: Result<reqwest::Response, reqwest::Error>,
) -> Result<(u16, Option<Duration>, String), String> {
    adapter::read_answer("Vonage", answer).await
}

/// What an error answer of Vonage's says (its title, then its detail), at
/// most 300 characters; empty if it says nothing readable.
pub(crate) fn what_vonage_said(text: &str) -> String {
    #[derive(Default, serde::Deserialize)]
    struct Error {
        #[serde(default)]
        title: Option<String>,
        #[serde(default)]
        error_title: Option<String>,
        #[serde(default)]
        detail: Option<String>,
    }
    let error: Error = serde_json::from_str(text).unwrap_or_default();
    [error.title.or(error.error_title), error.detail]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(": ")
        .chars()
        .take(300)
        .collect()
}

/// `Vonage {what} ({status})`, with what Vonage said after it.
pub(crate) fn reason(what: &str, status: u16, said: &str) -> String {
    adapter::reason("Vonage", what, status, None, said)
}

/// A Vonage connection's credentials, checked.
#[derive(Debug, Clone)]
pub struct VonageCredentials {
    pub application_id: String,
    pub private_key: Secret<String>,
    pub api_key: String,
    pub api_secret: Secret<String>,
    pub signature_secret: Secret<String>,
}

impl VonageCredentials {
    pub fn from_credentials(c: &Credentials) -> Result<Self, BadConnection> {
        let get = |name: &str| c.get(name).unwrap_or_default().to_owned();
        let application_id = get("application_id");
        if uuid::Uuid::parse_str(&application_id).is_err() {
            return Err(BadConnection(
                "credentials.application_id must be the application's id, a UUID".into(),
            ));
        }
        let private_key = get("private_key");
        TokenMinter::new(&application_id, &private_key)
            .map_err(|why| BadConnection(format!("credentials.private_key {why}")))?;
        Ok(VonageCredentials {
            application_id,
            private_key: Secret::new(private_key),
            api_key: get("api_key"),
            api_secret: Secret::new(get("api_secret")),
            signature_secret: Secret::new(get("signature_secret")),
        })
    }
}

/// One Vonage connection, ready to call Vonage.
pub struct Vonage {
    api_url: String,
    credentials: VonageCredentials,
    minter: TokenMinter,
    http: reqwest::Client,
}

impl Vonage {
    pub fn new(api_url: &str, credentials: VonageCredentials) -> Self {
        let minter = TokenMinter::new(
            &credentials.application_id,
            credentials.private_key.expose(),
        )
        .expect("checked when the connection was written");
        Vonage {
            api_url: api_url.trim_end_matches('/').to_owned(),
            credentials,
            minter,
            http: adapter::http_client(REQUEST_TIMEOUT),
        }
    }

    pub fn credentials(&self) -> &VonageCredentials {
        &self.credentials
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.minter.token(Utc::now()))
    }

    /// Sends one message through the Messages API.
    pub async fn send(&self, message: &OutboundMessage) -> SendOutcome {
        let request = self
            .http
            .post(format!("{}/v1/messages", self.api_url))
            .header(reqwest::header::AUTHORIZATION, self.bearer())
            .json(&messages::body(message));
        messages::outcome(request.send().await).await
    }

    /// Places a call through the Voice API.
    pub async fn create_call(&self, call: &NewCall) -> CallOutcome {
        let request = self
            .http
            .post(format!("{}/v1/calls", self.api_url))
            .header(reqwest::header::AUTHORIZATION, self.bearer())
            .json(&voice::call_body(call));
        voice::outcome(request.send().await).await
    }

    /// Changes a live call: `body` is [`voice::transfer_body`] or
    /// [`voice::hangup_body`].
    pub async fn update_call(&self, uuid: &str, body: &serde_json::Value) -> CallOutcome {
        if uuid.is_empty() || !uuid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return CallOutcome::Refused {
                reason: "not a call's uuid".into(),
            };
        }
        let request = self
            .http
            .put(format!("{}/v1/calls/{}", self.api_url, uuid))
            .header(reqwest::header::AUTHORIZATION, self.bearer())
            .json(body);
        voice::outcome(request.send().await).await
    }

    /// Asks Vonage whether the credentials work, with a cheap
    /// authenticated call (the latest call of the application); the
    /// detail is fit to show.
    pub async fn check(&self) -> (bool, String) {
        let answer = self
            .http
            .get(format!("{}/v1/calls", self.api_url))
            .query(&[("page_size", "1")])
            .header(reqwest::header::AUTHORIZATION, self.bearer())
            .send()
            .await;
        match answer {
            Ok(r) if r.status().is_success() => (true, "Vonage accepted the credentials".into()),
            Ok(r) if matches!(r.status().as_u16(), 401 | 403) => (
                false,
                format!(
                    "Vonage refused the credentials ({}): check the application id and private key",
                    r.status().as_u16()
                ),
            ),
            Ok(r) => (false, format!("Vonage answered {}", r.status().as_u16())),
            Err(e) if e.is_timeout() => (false, "Vonage did not answer in time".into()),
            Err(_) => (false, "Vonage could not be reached".into()),
        }
    }

    /// Checks a webhook's signature (CHANNELS §3).
    pub fn verify(&self, authorization: Option<&str>, body: &[u8]) -> Result<(), BadSignature> {
        auth::verify_webhook(
            authorization,
            body,
            self.credentials.signature_secret.expose(),
            &self.credentials.api_key,
            &self.credentials.application_id,
            Utc::now(),
        )
        .map(|_| ())
    }
}
