//! Meta's WhatsApp Cloud API (CHANNELS §5): WhatsApp messages sent with no
//! intermediary, their statuses and the person's messages in.
//!
//! Fields follow Meta's specification (`business-messaging-api_v23.0.yaml`
//! of `facebook/openapi`): a message is `POST /v23.0/{phone_number_id}/messages`
//! with the access token as a bearer token, answered with the message's
//! `wamid`; statuses and inbound messages come in one signed webhook
//! envelope (`X-Hub-Signature-256`, an HMAC-SHA256 of the raw body with the
//! app secret), and the webhook is verified once by a GET handshake with
//! the connection's verify token.

use std::time::Duration;

use herald_core::secret::Secret;
use herald_core::session::MessageStatus;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::adapter::{self, Content, OutboundMessage, SendOutcome};
use crate::connection::{BadConnection, Credentials};

/// The API base URL when none is configured (CONTRACT §10.1b).
pub const DEFAULT_API_URL: &str = "https://graph.facebook.com";
/// The Graph API version herald speaks.
pub const API_VERSION: &str = "v23.0";

/// How long one request to Meta may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Meta's codes that mean "slow down" (throughput, pair rate, rate limits).
const THROTTLING_CODES: [u64; 4] = [130429, 131056, 80007, 4];

/// Whether Meta's error `code` refuses the message for what it is (or
/// whom it is to): the message is `rejected`. 131047: outside the 24-hour
/// window; 131049: held back for the person's experience; 131050: the
/// person stopped marketing messages; 132xxx: the template.
fn is_policy(code: u64) -> bool {
    matches!(code, 131047 | 131049 | 131050) || (132000..133000).contains(&code)
}

/// A WhatsApp Cloud connection's credentials, checked.
#[derive(Debug, Clone)]
pub struct WhatsappCredentials {
    pub phone_number_id: String,
    pub access_token: Secret<String>,
    pub app_secret: Secret<String>,
    pub verify_token: Secret<String>,
}

impl WhatsappCredentials {
    pub fn from_credentials(c: &Credentials) -> Result<Self, BadConnection> {
        let get = |name: &str| c.get(name).unwrap_or_default().to_owned();
        let phone_number_id = get("phone_number_id");
        if phone_number_id.is_empty() || !phone_number_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BadConnection(
                "credentials.phone_number_id must be the number's id in Meta's WhatsApp \
                 Manager, all digits"
                    .into(),
            ));
        }
        Ok(WhatsappCredentials {
            phone_number_id,
            access_token: Secret::new(get("access_token")),
            app_secret: Secret::new(get("app_secret")),
            verify_token: Secret::new(get("verify_token")),
        })
    }
}

/// The body of a send: a text, or a template in Meta's form (the
/// namespace is the Business Account's own, and not sent).
pub fn body(message: &OutboundMessage) -> Value {
    let mut body = json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": message.to.trim_start_matches('+'),
        // Echoed in each status: a status that outruns the store's write
        // of the message's id still finds it.
        "biz_opaque_callback_data": message.client_ref,
    });
    match &message.content {
        Content::Text(text) => {
            body["type"] = json!("text");
            body["text"] = json!({"body": text.chars().take(4096).collect::<String>(),
                                  "preview_url": false});
        }
        Content::Template {
            name,
            locale,
            components,
            ..
        } => {
            body["type"] = json!("template");
            let mut template = json!({
                "name": name,
                "language": {"policy": "deterministic",
                             "code": crate::vonage::messages::meta_locale(locale)},
            });
            if components.as_array().is_some_and(|c| !c.is_empty()) {
                template["components"] = components.clone();
            }
            body["template"] = template;
        }
    }
    body
}

/// Meta's error: its code, and its message (at most 300 characters).
fn what_meta_said(text: &str) -> (Option<u64>, String) {
    let error: Value = serde_json::from_str(text).unwrap_or_default();
    let error = &error["error"];
    let message = error["error_data"]["details"]
        .as_str()
        .or(error["message"].as_str())
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    (error["code"].as_u64(), message)
}

/// The outcome of Meta's answer of `status` with body `text` to a send.
pub fn classify(status: u16, retry_after: Option<Duration>, text: &str) -> SendOutcome {
    if (200..300).contains(&status) {
        return match serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| v["messages"][0]["id"].as_str().map(str::to_owned))
        {
            Some(id) => SendOutcome::Accepted { id },
            None => SendOutcome::Unavailable {
                reason: format!("WhatsApp answered {status} without the message's id"),
            },
        };
    }
    let (code, said) = what_meta_said(text);
    let reason = |what: &str| adapter::reason("WhatsApp", what, status, code, &said);
    match (status, code) {
        (429, _) => SendOutcome::Throttled { retry_after },
        (_, Some(code)) if THROTTLING_CODES.contains(&code) => {
            SendOutcome::Throttled { retry_after }
        }
        (500..=599, _) => SendOutcome::Unavailable {
            reason: reason("failed"),
        },
        (_, Some(code)) if is_policy(code) => SendOutcome::Refused {
            status: MessageStatus::Rejected,
            reason: reason("refused the message"),
        },
        (401 | 403, _) | (_, Some(190)) => SendOutcome::Refused {
            status: MessageStatus::Failed,
            reason: reason("refused the access token"),
        },
        _ => SendOutcome::Refused {
            status: MessageStatus::Rejected,
            reason: reason("refused the message"),
        },
    }
}

/// Checks `X-Hub-Signature-256` (`sha256=` and the hex HMAC-SHA256 of the
/// raw body with the app secret), in constant time.
pub fn verify_signature(app_secret: &str, body: &[u8], header: Option<&str>) -> bool {
    let Some(hex) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Some(tag) = decode_hex(hex) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(app_secret.as_bytes())
        .expect("HMAC takes a key of any size");
    mac.update(body);
    mac.verify_slice(&tag).is_ok()
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The GET handshake that subscribes a webhook: the challenge to echo when
/// `mode` is `subscribe` and `token` is the connection's verify token.
pub fn handshake<'a>(
    mode: Option<&str>,
    token: Option<&str>,
    challenge: Option<&'a str>,
    verify_token: &str,
) -> Option<&'a str> {
    let token = token?;
    let matches = token.len() == verify_token.len()
        && token
            .bytes()
            .zip(verify_token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    (mode == Some("subscribe") && matches).then_some(challenge?)
}

/// A webhook envelope: what a Business Account's numbers report.
#[derive(Debug, Clone, Deserialize)]
pub struct Envelope {
    #[serde(default)]
    pub object: Option<String>,
    #[serde(default)]
    pub entry: Vec<Entry>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Entry {
    #[serde(default)]
    pub changes: Vec<Change>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Change {
    #[serde(default)]
    pub field: Option<String>,
    #[serde(default)]
    pub value: ChangeValue,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ChangeValue {
    #[serde(default)]
    pub metadata: Option<Metadata>,
    #[serde(default)]
    pub statuses: Vec<StatusReport>,
    #[serde(default)]
    pub messages: Vec<InboundMessage>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub display_phone_number: Option<String>,
    #[serde(default)]
    pub phone_number_id: Option<String>,
}

/// A status of a message sent from the number.
#[derive(Debug, Clone, Deserialize)]
pub struct StatusReport {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub recipient_id: Option<String>,
    /// Unix seconds, as a string.
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(default)]
    pub errors: Vec<MetaError>,
    /// What herald sent with the message, echoed.
    #[serde(default)]
    pub biz_opaque_callback_data: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MetaError {
    #[serde(default)]
    pub code: Option<u64>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub error_data: Option<Value>,
}

impl StatusReport {
    /// Why the message failed, as Meta says (its first error).
    pub fn reason(&self) -> Option<String> {
        let error = self.errors.first()?;
        let details = error
            .error_data
            .as_ref()
            .and_then(|d| d["details"].as_str())
            .or(error.message.as_deref())
            .or(error.title.as_deref())
            .unwrap_or_default();
        let details: String = details.chars().take(300).collect();
        Some(match (error.code, details.is_empty()) {
            (Some(code), false) => format!("WhatsApp reported error {code}: {details}"),
            (Some(code), true) => format!("WhatsApp reported error {code}"),
            (None, _) => format!("WhatsApp reported: {details}"),
        })
    }

    /// What the status means; `None` for one herald does not know.
    pub fn status(&self) -> Option<MessageStatus> {
        Some(match self.status.as_str() {
            "sent" => MessageStatus::Sent,
            "delivered" => MessageStatus::Delivered,
            "read" => MessageStatus::Read,
            "failed" => {
                let policy = self.errors.iter().filter_map(|e| e.code).any(is_policy);
                if policy {
                    MessageStatus::Rejected
                } else {
                    MessageStatus::Failed
                }
            }
            _ => return None,
        })
    }
}

/// A person's message to the number.
#[derive(Debug, Clone, Deserialize)]
pub struct InboundMessage {
    pub from: String,
    pub id: String,
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub text: Option<Value>,
    #[serde(default)]
    pub button: Option<Value>,
    #[serde(default)]
    pub interactive: Option<Value>,
}

impl InboundMessage {
    /// Its words: a text's body, a quick-reply button's text, or an
    /// interactive reply's title; `None` for an image, a location, … .
    pub fn words(&self) -> Option<&str> {
        match self.kind.as_deref() {
            Some("text") => self.text.as_ref()?["body"].as_str(),
            Some("button") => self.button.as_ref()?["text"].as_str(),
            Some("interactive") => {
                let reply = self.interactive.as_ref()?;
                reply["button_reply"]["title"]
                    .as_str()
                    .or(reply["list_reply"]["title"].as_str())
            }
            _ => None,
        }
    }
}

/// When Meta says something happened (unix seconds as a string).
pub fn timestamp(text: Option<&str>) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(text?.trim().parse().ok()?, 0)
}

/// One WhatsApp Cloud connection, ready to call Meta.
pub struct WhatsappCloud {
    api_url: String,
    credentials: WhatsappCredentials,
    http: reqwest::Client,
}

impl WhatsappCloud {
    pub fn new(api_url: &str, credentials: WhatsappCredentials) -> Self {
        WhatsappCloud {
            api_url: api_url.trim_end_matches('/').to_owned(),
            credentials,
            http: adapter::http_client(REQUEST_TIMEOUT),
        }
    }

    pub fn credentials(&self) -> &WhatsappCredentials {
        &self.credentials
    }

    fn number_url(&self) -> String {
        format!(
            "{}/{API_VERSION}/{}",
            self.api_url, self.credentials.phone_number_id
        )
    }

    /// Sends one message.
    pub async fn send(&self, message: &OutboundMessage) -> SendOutcome {
        let request = self
            .http
            .post(format!("{}/messages", self.number_url()))
            .bearer_auth(self.credentials.access_token.expose())
            .json(&body(message));
        match adapter::read_answer("WhatsApp", request.send().await).await {
            Ok((status, retry_after, text)) => classify(status, retry_after, &text),
            Err(reason) => SendOutcome::Unavailable { reason },
        }
    }

    /// Asks Meta whether the token opens the number; the detail is fit to
    /// show.
    pub async fn check(&self) -> (bool, String) {
        let answer = self
            .http
            .get(self.number_url())
            .bearer_auth(self.credentials.access_token.expose())
            .send()
            .await;
        match answer {
            Ok(r) if r.status().is_success() => (true, "Meta accepted the access token".into()),
            Ok(r) if matches!(r.status().as_u16(), 400 | 401 | 403) => (
                false,
                format!(
                    "Meta refused the access token or the number ({}): check the phone number \
                     id and the token",
                    r.status().as_u16()
                ),
            ),
            Ok(r) => (false, format!("Meta answered {}", r.status().as_u16())),
            Err(e) if e.is_timeout() => (false, "Meta did not answer in time".into()),
            Err(_) => (false, "Meta could not be reached".into()),
        }
    }

    /// Checks a webhook's signature.
    pub fn verify(&self, body: &[u8], header: Option<&str>) -> bool {
        verify_signature(self.credentials.app_secret.expose(), body, header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::Channel;

    fn message(content: Content) -> OutboundMessage {
        OutboundMessage {
            channel: Channel::Whatsapp,
            to: "447700900123".into(),
            from: "447700900001".into(),
            content,
            client_ref: "s:0".into(),
            status_url: String::new(),
        }
    }

    #[test]
    fn texts_and_templates_have_the_specification_s_fields() {
        assert_eq!(
            body(&message(Content::Text("Hi".into()))),
            json!({"messaging_product": "whatsapp", "recipient_type": "individual",
                   "to": "447700900123", "type": "text", "biz_opaque_callback_data": "s:0",
                   "text": {"body": "Hi", "preview_url": false}})
        );
        let components = json!([{"type": "body", "parameters": [{"type": "text", "text": "Ada"}]}]);
        let template = body(&message(Content::Template {
            namespace: "acme".into(),
            name: "reminder".into(),
            locale: "en-GB".into(),
            components: components.clone(),
        }));
        assert_eq!(
            template["template"],
            json!({"name": "reminder", "language": {"policy": "deterministic", "code": "en_GB"},
                   "components": components})
        );
    }

    #[test]
    fn answers_are_classified_by_code() {
        assert_eq!(
            classify(200, None, r#"{"messages": [{"id": "wamid.X"}]}"#),
            SendOutcome::Accepted {
                id: "wamid.X".into()
            }
        );
        let error = |code: u64| {
            json!({"error": {"message": "(#x) said", "code": code,
                             "error_data": {"details": "what Meta said"}}})
            .to_string()
        };
        assert_eq!(
            classify(400, None, &error(130429)),
            SendOutcome::Throttled { retry_after: None }
        );
        assert_eq!(
            classify(400, None, &error(131047)),
            SendOutcome::Refused {
                status: MessageStatus::Rejected,
                reason: "WhatsApp refused the message (400, code 131047): what Meta said".into()
            }
        );
        assert!(matches!(
            classify(401, None, &error(190)),
            SendOutcome::Refused {
                status: MessageStatus::Failed,
                ..
            }
        ));
        assert!(matches!(
            classify(503, None, ""),
            SendOutcome::Unavailable { .. }
        ));
    }

    #[test]
    fn signatures_and_the_handshake_are_checked() {
        // Worked out apart from this code, with Python's hmac:
        //   hmac.new(b"app-s3cret", b'{"object":"x"}', hashlib.sha256).hexdigest()
        let body = br#"{"object":"x"}"#;
        let header = "sha256=f0f7259ddee7e49fc796dfa698a77bde56f9d1758377b843364c653dcb80cae2";
        assert!(verify_signature("app-s3cret", body, Some(header)));
        assert!(!verify_signature("other", body, Some(header)));
        assert!(!verify_signature("app-s3cret", b"{}", Some(header)));
        assert!(!verify_signature("app-s3cret", body, Some("sha256=zz")));
        assert!(!verify_signature("app-s3cret", body, None));
        assert_eq!(
            handshake(Some("subscribe"), Some("tok"), Some("123"), "tok"),
            Some("123")
        );
        assert_eq!(
            handshake(Some("subscribe"), Some("bad"), Some("123"), "tok"),
            None
        );
        assert_eq!(handshake(None, Some("tok"), Some("123"), "tok"), None);
    }

    #[test]
    fn envelopes_carry_statuses_and_messages() {
        let envelope: Envelope = serde_json::from_value(json!({
            "object": "whatsapp_business_account",
            "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "447700900001", "phone_number_id": "106"},
                "statuses": [
                    {"id": "wamid.A", "status": "read", "timestamp": "1700000000", "recipient_id": "447700900123"},
                    {"id": "wamid.B", "status": "failed", "timestamp": "1700000001", "recipient_id": "447700900123",
                     "errors": [{"code": 131047, "title": "Re-engagement message"}]},
                    {"id": "wamid.C", "status": "failed", "errors": [{"code": 131026}]}
                ],
                "messages": [
                    {"from": "447700900123", "id": "wamid.D", "timestamp": "1700000002", "type": "text", "text": {"body": "yes"}},
                    {"from": "447700900123", "id": "wamid.E", "type": "button", "button": {"payload": "p", "text": "Confirm"}},
                    {"from": "447700900123", "id": "wamid.F", "type": "interactive",
                     "interactive": {"type": "button_reply", "button_reply": {"id": "b1", "title": "Tuesday"}}},
                    {"from": "447700900123", "id": "wamid.G", "type": "image", "image": {"id": "m"}}
                ]
            }}]}]
        }))
        .unwrap();
        let value = &envelope.entry[0].changes[0].value;
        let statuses: Vec<Option<MessageStatus>> =
            value.statuses.iter().map(|s| s.status()).collect();
        assert_eq!(
            statuses,
            [
                Some(MessageStatus::Read),
                Some(MessageStatus::Rejected),
                Some(MessageStatus::Failed)
            ]
        );
        let words: Vec<Option<&str>> = value.messages.iter().map(|m| m.words()).collect();
        assert_eq!(words, [Some("yes"), Some("Confirm"), Some("Tuesday"), None]);
        assert_eq!(
            timestamp(value.statuses[0].timestamp.as_deref())
                .unwrap()
                .timestamp(),
            1_700_000_000
        );
    }
}
