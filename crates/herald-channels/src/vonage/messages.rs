//! The Vonage Messages API (CHANNELS §4): SMS and WhatsApp messages out,
//! their statuses and the person's messages in.
//!
//! Fields follow Vonage's specification (`messages-olympus`, version
//! 1.4.0): a message is `POST /v1/messages`, answered `202 {message_uuid}`;
//! herald's own id for the message goes in `client_ref`, and comes back in
//! every status.

use std::time::Duration;

use herald_core::session::MessageStatus;
use herald_core::Channel;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::adapter::{Content, OutboundMessage, SendOutcome};

/// The body of `POST /v1/messages` for `message`.
pub fn body(message: &OutboundMessage) -> Value {
    let channel = match message.channel {
        Channel::Whatsapp => "whatsapp",
        _ => "sms",
    };
    let mut body = json!({
        "channel": channel,
        "to": message.to,
        "from": message.from,
        "client_ref": message.client_ref,
    });
    match &message.content {
        Content::Text(text) => {
            body["message_type"] = json!("text");
            body["text"] = json!(text);
        }
        Content::Template {
            namespace,
            name,
            locale,
            components,
        } => {
            body["message_type"] = json!("custom");
            body["custom"] = json!({
                "type": "template",
                "template": {
                    "namespace": namespace,
                    "name": name,
                    "language": {"policy": "deterministic", "code": meta_locale(locale)},
                    "components": components,
                }
            });
        }
    }
    body
}

/// A locale in Meta's form: `en_US` for `en-US`, as WhatsApp's templates
/// name them.
pub fn meta_locale(locale: &str) -> String {
    locale.replace('-', "_")
}

/// Reads Vonage's answer to a send.
pub(crate) async fn outcome(answer: Result<reqwest::Response, reqwest::Error>) -> SendOutcome {
    match super::read_answer(answer).await {
        Ok((status, retry_after, text)) => classify(status, retry_after, &text),
        Err(reason) => SendOutcome::Unavailable { reason },
    }
}

/// The outcome of an answer of `status` with body `text`.
pub fn classify(status: u16, retry_after: Option<Duration>, text: &str) -> SendOutcome {
    if (200..300).contains(&status) {
        return match serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| v.get("message_uuid")?.as_str().map(str::to_owned))
        {
            Some(id) => SendOutcome::Accepted { id },
            None => SendOutcome::Unavailable {
                reason: format!("Vonage answered {status} without a message_uuid"),
            },
        };
    }
    let said = super::what_vonage_said(text);
    let reason = |what: &str| super::reason(what, status, &said);
    match status {
        429 => SendOutcome::Throttled { retry_after },
        500..=599 => SendOutcome::Unavailable {
            reason: reason("failed"),
        },
        401..=403 => SendOutcome::Refused {
            status: MessageStatus::Failed,
            reason: reason("refused the account"),
        },
        _ => SendOutcome::Refused {
            status: MessageStatus::Rejected,
            reason: reason("refused the message"),
        },
    }
}

/// A message status webhook (`messageStatus*` of the specification).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct StatusReport {
    pub message_uuid: String,
    #[serde(default)]
    pub client_ref: Option<String>,
    /// Whom the message went to.
    #[serde(default)]
    pub to: Option<String>,
    pub status: String,
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(default)]
    pub error: Option<Value>,
}

impl StatusReport {
    /// The status as herald reports it (CHANNELS §4): `submitted` is sent,
    /// `undeliverable` failed; `None` for one herald does not know.
    pub fn status(&self) -> Option<MessageStatus> {
        Some(match self.status.as_str() {
            "submitted" => MessageStatus::Sent,
            "delivered" => MessageStatus::Delivered,
            "read" => MessageStatus::Read,
            "rejected" => MessageStatus::Rejected,
            "undeliverable" => MessageStatus::Failed,
            _ => return None,
        })
    }

    /// What the error says, if the status has one.
    pub fn reason(&self) -> Option<String> {
        let error = self.error.as_ref()?;
        let part = |name: &str| {
            error.get(name).and_then(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .or_else(|| Some(v.to_string()))
                    .filter(|s| s != "null")
            })
        };
        match (part("title"), part("detail")) {
            (Some(t), Some(d)) => Some(format!("{t}: {d}")),
            (t, d) => t.or(d),
        }
    }
}

/// An inbound message webhook (`inboundMessage*`): a text from the person.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Inbound {
    pub channel: String,
    pub message_uuid: String,
    pub to: String,
    pub from: String,
    #[serde(default)]
    pub message_type: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub timestamp: Option<String>,
}

impl Inbound {
    /// The channel, if herald serves it.
    pub fn channel(&self) -> Option<Channel> {
        match self.channel.as_str() {
            "sms" => Some(Channel::Sms),
            "whatsapp" => Some(Channel::Whatsapp),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(content: Content) -> OutboundMessage {
        OutboundMessage {
            channel: Channel::Whatsapp,
            to: "447700900123".into(),
            from: "447700900001".into(),
            content,
            client_ref: "13d107fe-03c2-5ce5-bc22-228df7a92620".into(),
            status_url: "https://herald.example.com/providers/c/message_status".into(),
        }
    }

    #[test]
    fn text_and_template_bodies_have_the_specification_s_fields() {
        let sms = OutboundMessage {
            channel: Channel::Sms,
            ..message(Content::Text("Hi".into()))
        };
        assert_eq!(
            body(&sms),
            json!({"channel": "sms", "message_type": "text", "text": "Hi",
                   "to": "447700900123", "from": "447700900001",
                   "client_ref": "13d107fe-03c2-5ce5-bc22-228df7a92620"})
        );
        let components = json!([{"type": "body", "parameters": [{"type": "text", "text": "Ada"}]}]);
        let template = message(Content::Template {
            namespace: "acme".into(),
            name: "appointment_reminder".into(),
            locale: "en-US".into(),
            components: components.clone(),
        });
        assert_eq!(
            body(&template)["custom"],
            json!({"type": "template", "template": {
                "namespace": "acme",
                "name": "appointment_reminder",
                "language": {"policy": "deterministic", "code": "en_US"},
                "components": components}})
        );
        assert_eq!(body(&template)["message_type"], "custom");
        assert_eq!(body(&template)["channel"], "whatsapp");
    }

    #[test]
    fn answers_are_classified_by_status() {
        assert_eq!(
            classify(
                202,
                None,
                r#"{"message_uuid": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"}"#
            ),
            SendOutcome::Accepted {
                id: "aaaaaaaa-bbbb-cccc-dddd-0123456789ab".into()
            }
        );
        assert_eq!(
            classify(429, Some(Duration::from_secs(2)), "{}"),
            SendOutcome::Throttled {
                retry_after: Some(Duration::from_secs(2))
            }
        );
        assert!(matches!(
            classify(503, None, ""),
            SendOutcome::Unavailable { .. }
        ));
        assert!(matches!(
            classify(202, None, "{}"),
            SendOutcome::Unavailable { .. }
        ));
        assert_eq!(
            classify(422, None, r#"{"type": "x", "title": "Invalid recipient", "detail": "The `to` parameter is invalid for the given channel.", "instance": "i"}"#),
            SendOutcome::Refused {
                status: MessageStatus::Rejected,
                reason: "Vonage refused the message (422): Invalid recipient: The `to` parameter is invalid for the given channel.".into()
            }
        );
        assert!(matches!(
            classify(402, None, r#"{"title": "Low balance"}"#),
            SendOutcome::Refused {
                status: MessageStatus::Failed,
                ..
            }
        ));
    }

    #[test]
    fn statuses_map_as_channels_says() {
        let report = |status: &str| StatusReport {
            message_uuid: "m".into(),
            client_ref: None,
            to: None,
            status: status.into(),
            timestamp: None,
            error: None,
        };
        for (vonage, herald) in [
            ("submitted", MessageStatus::Sent),
            ("delivered", MessageStatus::Delivered),
            ("read", MessageStatus::Read),
            ("rejected", MessageStatus::Rejected),
            ("undeliverable", MessageStatus::Failed),
        ] {
            assert_eq!(report(vonage).status(), Some(herald));
        }
        assert_eq!(report("teleported").status(), None);
        let failed: StatusReport = serde_json::from_value(json!({
            "message_uuid": "m", "to": "1", "from": "2", "timestamp": "2020-01-01T14:00:00.000Z",
            "status": "rejected", "channel": "sms",
            "error": {"type": "https://developer.nexmo.com/api-errors/messages-olympus#1050",
                      "title": 1050, "detail": "Number barred", "instance": "i"}}))
        .unwrap();
        assert_eq!(failed.reason().as_deref(), Some("1050: Number barred"));
    }
}
