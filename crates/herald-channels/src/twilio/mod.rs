//! Twilio (CHANNELS §6): its connection's credentials and settings, its
//! webhook signatures ([`signature`]), Programmable Voice ([`voice`]) for
//! calls and the Messages API ([`messages`]) for SMS and WhatsApp.
//!
//! Fields follow Twilio's specification (`twilio_api_v2010.json` of
//! `twilio/twilio-oai`): requests are form-encoded, with HTTP Basic
//! authentication of the account SID and auth token, under
//! `/2010-04-01/Accounts/{AccountSid}/`; answers and errors are JSON.
//! Everything here but [`Twilio`]'s requests is testable without a
//! network; those go to the API base URL the operator configures
//! (`HERALD_TWILIO_API_URL`).

pub mod messages;
pub mod signature;
pub mod voice;

use std::collections::BTreeMap;
use std::time::Duration;

use herald_core::secret::Secret;

use crate::adapter::{self, CallOutcome, NewCall, OutboundMessage, SendOutcome};
use crate::connection::{BadConnection, Credentials};

pub use signature::BadSignature;

/// The API base URL when none is configured (CONTRACT §10.1b).
pub const DEFAULT_API_URL: &str = "https://api.twilio.com";

/// How long one request to Twilio may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A form's fields, in order (a name may come more than once).
pub type Form = Vec<(String, String)>;

/// The first value of the form's field `name`.
pub fn field<'a>(form: &'a Form, name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Reads a form-encoded body.
pub fn parse_form(body: &[u8]) -> Form {
    url::form_urlencoded::parse(body).into_owned().collect()
}

fn encode(form: &Form) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish()
}

/// What an error answer of Twilio's says: its code, and its message (at
/// most 300 characters; empty if there is none).
pub(crate) fn what_twilio_said(text: &str) -> (Option<u64>, String) {
    let error: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    let message = error["message"]
        .as_str()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    (error["code"].as_u64(), message)
}

/// `Twilio {what} ({status}, code {code})`, with what Twilio said.
pub(crate) fn reason(what: &str, status: u16, code: Option<u64>, said: &str) -> String {
    adapter::reason("Twilio", what, status, code, said)
}

/// A Twilio connection's credentials, checked.
#[derive(Debug, Clone)]
pub struct TwilioCredentials {
    pub account_sid: String,
    /// What Twilio signs its webhooks with; the REST API's password too,
    /// unless an API key is given.
    pub auth_token: Secret<String>,
    /// An API key (`SK…`) and its secret, which herald's requests then
    /// authenticate with instead of the auth token.
    pub api_key: Option<(String, Secret<String>)>,
}

/// `prefix` and 32 hexadecimal digits: the form of Twilio's SIDs.
fn is_sid(text: &str, prefix: &str) -> bool {
    text.len() == 34 && text.starts_with(prefix) && text[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

impl TwilioCredentials {
    pub fn from_credentials(c: &Credentials) -> Result<Self, BadConnection> {
        let account_sid = c.get("account_sid").unwrap_or_default().to_owned();
        if !is_sid(&account_sid, "AC") {
            return Err(BadConnection(
                "credentials.account_sid must be the account's SID: AC and 32 hexadecimal digits"
                    .into(),
            ));
        }
        let api_key =
            match (c.get("api_key"), c.get("api_secret")) {
                (None, None) => None,
                (Some(key), Some(secret)) if is_sid(key, "SK") => {
                    Some((key.to_owned(), Secret::new(secret.to_owned())))
                }
                (Some(_), Some(_)) => return Err(BadConnection(
                    "credentials.api_key must be an API key's SID: SK and 32 hexadecimal digits"
                        .into(),
                )),
                _ => {
                    return Err(BadConnection(
                        "credentials.api_key and credentials.api_secret go together".into(),
                    ))
                }
            };
        Ok(TwilioCredentials {
            account_sid,
            auth_token: Secret::new(c.get("auth_token").unwrap_or_default().to_owned()),
            api_key,
        })
    }

    /// The user and password of herald's requests: the API key when there
    /// is one, else the account and its auth token.
    fn basic(&self) -> (&str, &str) {
        match &self.api_key {
            Some((key, secret)) => (key, secret.expose()),
            None => (&self.account_sid, self.auth_token.expose()),
        }
    }
}

/// What a Twilio connection's settings say.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TwilioSettings {
    /// WhatsApp templates' Content SIDs, by `namespace/name/locale`.
    pub content_sids: BTreeMap<String, String>,
    pub voice: voice::Voice,
}

/// One Twilio connection, ready to call Twilio.
pub struct Twilio {
    api_url: String,
    credentials: TwilioCredentials,
    pub settings: TwilioSettings,
    http: reqwest::Client,
}

impl Twilio {
    pub fn new(api_url: &str, credentials: TwilioCredentials, settings: TwilioSettings) -> Self {
        Twilio {
            api_url: api_url.trim_end_matches('/').to_owned(),
            credentials,
            settings,
            http: adapter::http_client(REQUEST_TIMEOUT),
        }
    }

    fn account_url(&self, rest: &str) -> String {
        format!(
            "{}/2010-04-01/Accounts/{}{rest}",
            self.api_url, self.credentials.account_sid
        )
    }

    async fn post(
        &self,
        url: String,
        form: &Form,
    ) -> Result<(u16, Option<Duration>, String), String> {
        let (user, password) = self.credentials.basic();
        let request = self
            .http
            .post(url)
            .basic_auth(user, Some(password))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(encode(form));
        adapter::read_answer("Twilio", request.send().await).await
    }

    /// Sends one message through the Messages API.
    pub async fn send(&self, message: &OutboundMessage) -> SendOutcome {
        let form = match messages::form(message, &self.settings.content_sids) {
            Ok(form) => form,
            Err(reason) => {
                return SendOutcome::Refused {
                    status: herald_core::session::MessageStatus::Rejected,
                    reason,
                }
            }
        };
        match self.post(self.account_url("/Messages.json"), &form).await {
            Ok((status, retry_after, text)) => messages::classify(status, retry_after, &text),
            Err(reason) => SendOutcome::Unavailable { reason },
        }
    }

    /// Places a call.
    pub async fn create_call(&self, call: &NewCall) -> CallOutcome {
        let form = voice::call_form(call);
        match self.post(self.account_url("/Calls.json"), &form).await {
            Ok((status, retry_after, text)) => voice::classify(status, retry_after, &text),
            Err(reason) => CallOutcome::Unavailable { reason },
        }
    }

    /// Changes a live call: `form` gives it new TwiML (`Twiml`) or ends it
    /// (`Status=completed`).
    pub async fn update_call(&self, sid: &str, form: &Form) -> CallOutcome {
        if sid.len() != 34
            || !sid.starts_with("CA")
            || !sid.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return CallOutcome::Refused {
                reason: "not a call's sid".into(),
            };
        }
        let url = self.account_url(&format!("/Calls/{sid}.json"));
        match self.post(url, form).await {
            Ok((status, retry_after, text)) => voice::classify(status, retry_after, &text),
            Err(reason) => CallOutcome::Unavailable { reason },
        }
    }

    /// Asks Twilio whether the credentials work, by reading the account;
    /// the detail is fit to show.
    pub async fn check(&self) -> (bool, String) {
        let (user, password) = self.credentials.basic();
        let answer = self
            .http
            .get(self.account_url(".json"))
            .basic_auth(user, Some(password))
            .send()
            .await;
        match answer {
            Ok(r) if r.status().is_success() => (true, "Twilio accepted the credentials".into()),
            Ok(r) if matches!(r.status().as_u16(), 401 | 403) => (
                false,
                format!(
                    "Twilio refused the credentials ({}): check the {}",
                    r.status().as_u16(),
                    match self.credentials.api_key {
                        Some(_) => "account SID, API key and API secret",
                        None => "account SID and auth token",
                    }
                ),
            ),
            Ok(r) => (false, format!("Twilio answered {}", r.status().as_u16())),
            Err(e) if e.is_timeout() => (false, "Twilio did not answer in time".into()),
            Err(_) => (false, "Twilio could not be reached".into()),
        }
    }

    /// Checks a webhook's `X-Twilio-Signature` over the URL Twilio
    /// requested and its form.
    pub fn verify(
        &self,
        url: &str,
        form: &Form,
        signature: Option<&str>,
    ) -> Result<(), BadSignature> {
        signature::verify(self.credentials.auth_token.expose(), url, form, signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_read_and_write_as_twilio_sends_them() {
        let form = parse_form(
            b"To=%2B447700900123&Body=caf%C3%A9+ok&StatusCallbackEvent=a&StatusCallbackEvent=b",
        );
        assert_eq!(field(&form, "To"), Some("+447700900123"));
        assert_eq!(field(&form, "Body"), Some("café ok"));
        assert_eq!(form.len(), 4);
        assert_eq!(parse_form(encode(&form).as_bytes()), form);
    }

    #[test]
    fn an_account_sid_is_checked_and_errors_say_twilio_s_code() {
        let credentials = |sid: &str| {
            let stored = serde_json::json!({"account_sid": sid, "auth_token": "t0ken"});
            let c = Credentials::from_stored(stored.to_string().as_bytes()).unwrap();
            TwilioCredentials::from_credentials(&c).map(|c| c.account_sid)
        };
        let sid = format!("AC{}", "0a".repeat(16));
        assert_eq!(credentials(&sid).unwrap(), sid);
        assert!(credentials("AC1").is_err());
        assert!(credentials(&format!("SK{}", "0a".repeat(16))).is_err());

        // An API key, when given, is what requests authenticate with.
        let with_key = |fields: serde_json::Value| {
            let c = Credentials::from_stored(fields.to_string().as_bytes()).unwrap();
            TwilioCredentials::from_credentials(&c)
        };
        let key = format!("SK{}", "1b".repeat(16));
        let keyed = with_key(
            serde_json::json!({"account_sid": sid, "auth_token": "t0ken",
                                                "api_key": key, "api_secret": "s3cret"}),
        )
        .unwrap();
        assert_eq!(keyed.basic(), (key.as_str(), "s3cret"));
        let plain = with_key(serde_json::json!({"account_sid": sid, "auth_token": "t0ken"}));
        assert_eq!(plain.unwrap().basic(), (sid.as_str(), "t0ken"));
        let lone = with_key(
            serde_json::json!({"account_sid": sid, "auth_token": "t0ken",
                                               "api_key": key}),
        );
        assert!(lone.unwrap_err().0.contains("go together"));
        let wrong = with_key(
            serde_json::json!({"account_sid": sid, "auth_token": "t0ken",
                                                "api_key": sid, "api_secret": "s3cret"}),
        );
        assert!(wrong.unwrap_err().0.contains("SK and 32"));
        assert_eq!(
            reason("refused the call", 400, Some(21215), "Geo"),
            "Twilio refused the call (400, code 21215): Geo"
        );
        assert_eq!(what_twilio_said("not json"), (None, String::new()));
    }
}
