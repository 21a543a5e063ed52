//! Twilio's Messages API (CHANNELS §6): SMS and WhatsApp messages out,
//! their statuses and the person's messages in.
//!
//! A message is `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`,
//! form-encoded, answered `201` with the message resource (its `sid`);
//! its statuses are posted, form-encoded, to the `StatusCallback` it was
//! sent with. A WhatsApp template goes by its Content SID (the
//! connection's `content_sids` setting), its components' texts as the
//! content variables.

use std::collections::BTreeMap;
use std::time::Duration;

use herald_core::session::MessageStatus;
use herald_core::Channel;
use serde_json::Value;

use super::{field, what_twilio_said, Form};
use crate::adapter::{Content, OutboundMessage, SendOutcome};

/// Twilio's error codes that refuse a message for what it is (or whom it
/// is to), rather than for the account: the message is `rejected`.
const REJECTING_CODES: [u64; 4] = [
    21610, // the person has replied STOP
    21211, // not a valid `To` number
    30007, // filtered by the carrier
    63016, // WhatsApp: outside the 24-hour window, and not a template
];

/// An address in Twilio's form: `+` and the digits, with `whatsapp:`
/// before it on WhatsApp.
pub fn address(channel: Channel, number: &str) -> String {
    let number = format!("+{}", number.trim_start_matches('+'));
    match channel {
        Channel::Whatsapp => format!("whatsapp:{number}"),
        _ => number,
    }
}

/// The key of a template in the `content_sids` setting.
pub fn content_key(namespace: &str, name: &str, locale: &str) -> String {
    format!("{namespace}/{name}/{locale}")
}

/// A template's content variables: the text of each of its components'
/// parameters, in order, numbered from 1, as a JSON object.
pub fn content_variables(components: &Value) -> String {
    let texts = components
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["parameters"].as_array().into_iter().flatten())
        .filter_map(|p| p["text"].as_str());
    let variables: BTreeMap<String, &str> = texts
        .enumerate()
        .map(|(n, text)| ((n + 1).to_string(), text))
        .collect();
    serde_json::to_string(&variables).expect("a map of texts serialises")
}

/// The form of a message; an error (fit to show) when a template has no
/// Content SID in `content_sids`.
pub fn form(
    message: &OutboundMessage,
    content_sids: &BTreeMap<String, String>,
) -> Result<Form, String> {
    let mut form: Form = vec![
        ("To".into(), address(message.channel, &message.to)),
        ("From".into(), address(message.channel, &message.from)),
    ];
    match &message.content {
        Content::Text(text) => form.push(("Body".into(), text.chars().take(1600).collect())),
        Content::Template {
            namespace,
            name,
            locale,
            components,
        } => {
            let key = content_key(namespace, name, locale);
            let sid = content_sids.get(&key).ok_or_else(|| {
                format!("the connection's content_sids has no Content SID for the template {key}")
            })?;
            form.push(("ContentSid".into(), sid.clone()));
            form.push(("ContentVariables".into(), content_variables(components)));
        }
    }
    if !message.status_url.is_empty() {
        form.push(("StatusCallback".into(), message.status_url.clone()));
    }
    Ok(form)
}

/// The outcome of Twilio's answer of `status` with body `text` to a send.
pub fn classify(status: u16, retry_after: Option<Duration>, text: &str) -> SendOutcome {
    if (200..300).contains(&status) {
        return match serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| v.get("sid")?.as_str().map(str::to_owned))
        {
            Some(id) => SendOutcome::Accepted { id },
            None => SendOutcome::Unavailable {
                reason: format!("Twilio answered {status} without the message's sid"),
            },
        };
    }
    let (code, said) = what_twilio_said(text);
    let reason = |what: &str| super::reason(what, status, code, &said);
    match (status, code) {
        (429, _) | (_, Some(20429)) => SendOutcome::Throttled { retry_after },
        (500..=599, _) => SendOutcome::Unavailable {
            reason: reason("failed"),
        },
        (401..=403, _) => SendOutcome::Refused {
            status: MessageStatus::Failed,
            reason: reason("refused the account"),
        },
        _ => SendOutcome::Refused {
            status: MessageStatus::Rejected,
            reason: reason("refused the message"),
        },
    }
}

/// A message status callback.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusReport {
    pub message_sid: String,
    /// Twilio's word for the status.
    pub status: String,
    pub error_code: Option<u64>,
    /// What Twilio said of the error, when it says.
    pub error_message: Option<String>,
    /// Whom the message went to, without `whatsapp:`.
    pub to: Option<String>,
}

impl StatusReport {
    /// Reads a callback's form; `None` if it is not one.
    pub fn from_form(form: &Form) -> Option<StatusReport> {
        Some(StatusReport {
            message_sid: field(form, "MessageSid")?.to_owned(),
            status: field(form, "MessageStatus")?.to_owned(),
            error_code: field(form, "ErrorCode").and_then(|c| c.trim().parse().ok()),
            error_message: field(form, "ErrorMessage")
                .filter(|m| !m.trim().is_empty())
                .map(|m| m.chars().take(300).collect()),
            to: field(form, "To").map(|to| number(to).to_owned()),
        })
    }

    /// Why the message failed, for a failure with an error code.
    pub fn reason(&self) -> Option<String> {
        let code = self.error_code?;
        Some(match &self.error_message {
            Some(message) => format!("Twilio reported error {code}: {message}"),
            None => format!("Twilio reported error {code}"),
        })
    }

    /// What the status means; `None` for the steps before `sent`
    /// (`queued`, `accepted`, `sending`, …), which herald does not report.
    pub fn status(&self) -> Option<MessageStatus> {
        Some(match self.status.as_str() {
            "sent" => MessageStatus::Sent,
            "delivered" => MessageStatus::Delivered,
            "read" => MessageStatus::Read,
            "undelivered" | "failed" | "canceled" => match self.error_code {
                Some(code) if REJECTING_CODES.contains(&code) => MessageStatus::Rejected,
                _ => MessageStatus::Failed,
            },
            _ => return None,
        })
    }
}

/// A number without Twilio's `whatsapp:` and `+`.
fn number(address: &str) -> &str {
    address
        .strip_prefix("whatsapp:")
        .unwrap_or(address)
        .trim_start_matches('+')
}

/// A person's message to one of the account's numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    pub message_sid: String,
    pub channel: Channel,
    /// The person, digits only.
    pub from: String,
    /// The number it was sent to, digits only.
    pub to: String,
    /// Its words: the body, or a WhatsApp button's text.
    pub text: Option<String>,
}

impl Inbound {
    /// Reads an inbound message's form; `None` if it is not one.
    pub fn from_form(form: &Form) -> Option<Inbound> {
        let from = field(form, "From")?;
        let channel = if from.starts_with("whatsapp:") {
            Channel::Whatsapp
        } else {
            Channel::Sms
        };
        let text = field(form, "Body")
            .filter(|b| !b.trim().is_empty())
            .or_else(|| field(form, "ButtonText"))
            .map(str::to_owned);
        Some(Inbound {
            message_sid: field(form, "MessageSid")?.to_owned(),
            channel,
            from: number(from).to_owned(),
            to: number(field(form, "To")?).to_owned(),
            text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(channel: Channel, content: Content) -> OutboundMessage {
        OutboundMessage {
            channel,
            to: "447700900123".into(),
            from: "447700900001".into(),
            content,
            client_ref: "s:0".into(),
            status_url: "https://herald.example.com/providers/c/message_status".into(),
        }
    }

    fn pairs(form: &Form) -> Vec<(&str, &str)> {
        form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    #[test]
    fn a_text_goes_as_its_body_to_and_from_e164_numbers() {
        let sms = message(Channel::Sms, Content::Text("Hi".into()));
        assert_eq!(
            pairs(&form(&sms, &BTreeMap::new()).unwrap()),
            [
                ("To", "+447700900123"),
                ("From", "+447700900001"),
                ("Body", "Hi"),
                (
                    "StatusCallback",
                    "https://herald.example.com/providers/c/message_status"
                ),
            ]
        );
        let whatsapp = message(Channel::Whatsapp, Content::Text("Hi".into()));
        let form = form(&whatsapp, &BTreeMap::new()).unwrap();
        assert_eq!(field(&form, "To"), Some("whatsapp:+447700900123"));
        assert_eq!(field(&form, "From"), Some("whatsapp:+447700900001"));
    }

    #[test]
    fn a_template_goes_by_its_content_sid_with_its_texts_as_variables() {
        let components = json!([
            {"type": "header", "parameters": [{"type": "text", "text": "Ada"}]},
            {"type": "body", "parameters": [{"type": "text", "text": "Friday"}, {"type": "text", "text": "10:00"}]}
        ]);
        let template = message(
            Channel::Whatsapp,
            Content::Template {
                namespace: "acme".into(),
                name: "reminder".into(),
                locale: "en-GB".into(),
                components,
            },
        );
        let sids: BTreeMap<String, String> =
            [("acme/reminder/en-GB".to_owned(), "HX0123".to_owned())].into();
        let form = form(&template, &sids).unwrap();
        assert_eq!(field(&form, "ContentSid"), Some("HX0123"));
        assert_eq!(
            field(&form, "ContentVariables"),
            Some(r#"{"1":"Ada","2":"Friday","3":"10:00"}"#)
        );
        assert_eq!(field(&form, "Body"), None);
        assert_eq!(
            super::form(&template, &BTreeMap::new()).unwrap_err(),
            "the connection's content_sids has no Content SID for the template acme/reminder/en-GB"
        );
    }

    #[test]
    fn answers_are_classified_by_status_and_code() {
        assert_eq!(
            classify(201, None, r#"{"sid": "SM0123", "status": "queued"}"#),
            SendOutcome::Accepted {
                id: "SM0123".into()
            }
        );
        assert_eq!(
            classify(429, Some(Duration::from_secs(1)), r#"{"code": 20429}"#),
            SendOutcome::Throttled {
                retry_after: Some(Duration::from_secs(1))
            }
        );
        assert!(matches!(
            classify(503, None, ""),
            SendOutcome::Unavailable { .. }
        ));
        assert_eq!(
            classify(
                400,
                None,
                r#"{"code": 21211, "message": "The 'To' number is not a valid phone number.", "status": 400}"#
            ),
            SendOutcome::Refused {
                status: MessageStatus::Rejected,
                reason: "Twilio refused the message (400, code 21211): The 'To' number is not a valid phone number.".into()
            }
        );
        assert!(matches!(
            classify(401, None, r#"{"code": 20003, "message": "Authenticate"}"#),
            SendOutcome::Refused {
                status: MessageStatus::Failed,
                ..
            }
        ));
    }

    fn form_of(pairs: &[(&str, &str)]) -> Form {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn statuses_map_onto_herald_s_and_policy_codes_reject() {
        let report = |status: &str, code: Option<&str>| {
            let mut form = form_of(&[
                ("MessageSid", "SM1"),
                ("MessageStatus", status),
                ("To", "whatsapp:+447700900123"),
            ]);
            if let Some(code) = code {
                form.push(("ErrorCode".into(), code.into()));
            }
            StatusReport::from_form(&form).unwrap()
        };
        assert_eq!(report("queued", None).status(), None);
        assert_eq!(report("sending", None).status(), None);
        assert_eq!(report("sent", None).status(), Some(MessageStatus::Sent));
        assert_eq!(
            report("delivered", None).status(),
            Some(MessageStatus::Delivered)
        );
        assert_eq!(report("read", None).status(), Some(MessageStatus::Read));
        assert_eq!(
            report("undelivered", Some("30007")).status(),
            Some(MessageStatus::Rejected)
        );
        assert_eq!(
            report("failed", Some("30008")).status(),
            Some(MessageStatus::Failed)
        );
        assert_eq!(report("sent", None).to.as_deref(), Some("447700900123"));
        assert_eq!(StatusReport::from_form(&form_of(&[("To", "+1")])), None);
    }

    #[test]
    fn an_inbound_message_names_its_channel_by_its_sender() {
        let sms = Inbound::from_form(&form_of(&[
            ("MessageSid", "SM9"),
            ("From", "+447700900123"),
            ("To", "+447700900001"),
            ("Body", "yes"),
        ]))
        .unwrap();
        assert_eq!(sms.channel, Channel::Sms);
        assert_eq!(sms.from, "447700900123");
        assert_eq!(sms.text.as_deref(), Some("yes"));
        let button = Inbound::from_form(&form_of(&[
            ("MessageSid", "SM10"),
            ("From", "whatsapp:+447700900123"),
            ("To", "whatsapp:+447700900001"),
            ("Body", ""),
            ("ButtonText", "Confirm"),
        ]))
        .unwrap();
        assert_eq!(button.channel, Channel::Whatsapp);
        assert_eq!(button.to, "447700900001");
        assert_eq!(button.text.as_deref(), Some("Confirm"));
    }
}
