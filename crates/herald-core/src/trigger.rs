//! The body of a trigger: `POST /telephony/make-call` (CONTRACT §2.1) and
//! `POST /messaging/conversation` (§3.1).
//!
//! These are steps 3 to 6 of §2.2 (mandatory fields, types, destination,
//! `status_url` syntax), run in the contract's order so that the first
//! failure is the one answered. They live here rather than in the server
//! because they depend on nothing but the JSON: sans-I/O, they are unit-tested
//! and fuzzed without building the HTTP stack. Whatever needs the running
//! service (whether `status_url` points back at it, the agent, the template)
//! is the server's, and runs after these.

use serde_json::{Map, Value};

use crate::session::SessionParameters;
use crate::whatsapp::{self, Component};
use crate::{Channel, Destination};

/// Longest `status_url` accepted: far above any real one, and it is stored
/// with every session.
pub const MAX_STATUS_URL: usize = 2048;

/// Why a body was refused: exactly the message of the API's 400 answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(pub String);

/// A trigger body that passed steps 3 to 6.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerBody {
    pub agent: AgentRef,
    pub channel: Channel,
    pub to: Destination,
    pub status_url: Option<StatusUrl>,
    pub hangup_on_machine: bool,
    pub parameters: SessionParameters,
    /// Present exactly when `channel` is WhatsApp.
    pub whatsapp: Option<TemplateMessage>,
}

/// How the body names its agent; which agent that is, the server decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentRef {
    Id(String),
    /// The legacy `from`, which wins over `agent_id` when both are sent.
    Number(String),
}

/// A WhatsApp trigger's template and what fills it; whether the template is
/// registered is checked by the server.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateMessage {
    pub namespace: String,
    pub template: String,
    pub locale: String,
    pub components: Vec<Component>,
}

/// A `status_url` that is an absolute `http`/`https` URL with a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUrl {
    raw: String,
    url: url::Url,
}

impl StatusUrl {
    /// The syntax half of step 6; whether the URL is this service is the
    /// server's to tell.
    pub fn parse(raw: &str) -> Result<Self, BodyError> {
        let invalid = || BodyError("Invalid status_url".into());
        // The URL parser quietly drops tabs and newlines; a URL that contains
        // them (or any control character or space) is refused instead.
        if raw.is_empty()
            || raw.len() > MAX_STATUS_URL
            || raw.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(invalid());
        }
        let url = url::Url::parse(raw).map_err(|_| invalid())?;
        if !matches!(url.scheme(), "http" | "https") || matches!(url.host_str(), None | Some("")) {
            return Err(invalid());
        }
        Ok(StatusUrl {
            raw: raw.to_owned(),
            url,
        })
    }

    /// The URL exactly as the client sent it, which is what is stored.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The parsed URL.
    pub fn url(&self) -> &url::Url {
        &self.url
    }
}

/// Checks a make-call body.
pub fn parse_voice(obj: &Map<String, Value>) -> Result<TriggerBody, BodyError> {
    // 3. Mandatory fields, in the order of the contract's table.
    let mut absent = Vec::new();
    if present(obj, "agent_id").is_none() && present(obj, "from").is_none() {
        absent.push("agent_id");
    }
    if present(obj, "to").is_none() {
        absent.push("to");
    }
    missing(&absent)?;

    // 4. Types and shapes.
    let agent_id = string(obj, "agent_id")?;
    let from = string(obj, "from")?;
    let to = string(obj, "to")?.unwrap_or_default();
    let status_url = string(obj, "status_url")?;
    let hangup_on_machine = match present(obj, "hangup_on_answer_machine") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(BodyError(
                "hangup_on_answer_machine must be a boolean".into(),
            ))
        }
    };
    let parameters = parameters(obj)?;

    // 5. The destination.
    let to = Destination::parse_voice(to).map_err(|e| BodyError(e.to_string()))?;

    // 6. status_url.
    let status_url = status_url.map(StatusUrl::parse).transpose()?;

    Ok(TriggerBody {
        agent: agent_ref(agent_id, from),
        channel: Channel::Voice,
        to,
        status_url,
        hangup_on_machine,
        parameters,
        whatsapp: None,
    })
}

/// Checks a conversation body (SMS or WhatsApp).
pub fn parse_messaging(obj: &Map<String, Value>) -> Result<TriggerBody, BodyError> {
    let whatsapp = matches!(present(obj, "channel"), Some(Value::String(c)) if c == "whatsapp");

    // 3. Mandatory fields, in the seed's order.
    let mut absent = Vec::new();
    if whatsapp {
        for name in ["namespace", "template", "locale"] {
            if present(obj, name).is_none() {
                absent.push(name);
            }
        }
    }
    if present(obj, "to").is_none() {
        absent.push("to");
    }
    if present(obj, "agent_id").is_none() && present(obj, "from").is_none() {
        absent.push("agent_id");
    }
    if present(obj, "channel").is_none() {
        absent.push("channel");
    }
    if whatsapp && present(obj, "status_url").is_none() {
        absent.push("status_url");
    }
    missing(&absent)?;

    // 4. Types and shapes.
    let to = string(obj, "to")?.unwrap_or_default();
    let agent_id = string(obj, "agent_id")?;
    let from = string(obj, "from")?;
    let channel = match string(obj, "channel")?.unwrap_or_default() {
        "sms" => Channel::Sms,
        "whatsapp" => Channel::Whatsapp,
        other => return Err(BodyError(format!("Unsupported channel: {other}"))),
    };
    let status_url = string(obj, "status_url")?;
    let parameters = parameters(obj)?;
    let whatsapp = if channel == Channel::Whatsapp {
        let components = match present(obj, "components") {
            None => Vec::new(),
            Some(v) => whatsapp::parse_components(v).map_err(|e| BodyError(e.0))?,
        };
        Some(TemplateMessage {
            namespace: string(obj, "namespace")?.unwrap_or_default().to_owned(),
            template: string(obj, "template")?.unwrap_or_default().to_owned(),
            locale: string(obj, "locale")?.unwrap_or_default().to_owned(),
            components,
        })
    } else {
        None
    };

    // 5. The destination: phone numbers only.
    let to = Destination::parse_messaging(to).map_err(|e| BodyError(e.to_string()))?;

    // 6. status_url.
    let status_url = status_url.map(StatusUrl::parse).transpose()?;

    Ok(TriggerBody {
        agent: agent_ref(agent_id, from),
        channel,
        to,
        status_url,
        hangup_on_machine: false,
        parameters,
        whatsapp,
    })
}

/// A field's value, or `None` when it is absent or `null` (both count as
/// missing, CONTRACT §2.2 step 3).
fn present<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).filter(|v| !v.is_null())
}

fn string<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, BodyError> {
    match present(obj, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(BodyError(format!("{name} must be a string"))),
    }
}

fn missing(fields: &[&str]) -> Result<(), BodyError> {
    if fields.is_empty() {
        Ok(())
    } else {
        Err(BodyError(format!(
            "Missing mandatory field(s): {}",
            fields.join(", ")
        )))
    }
}

fn agent_ref(agent_id: Option<&str>, from: Option<&str>) -> AgentRef {
    match (from, agent_id) {
        (Some(number), _) => AgentRef::Number(number.to_owned()),
        (None, Some(id)) => AgentRef::Id(id.to_owned()),
        // One of them is present (step 3), and a present one that is not a
        // string failed step 4.
        (None, None) => unreachable!("mandatory fields are checked first"),
    }
}

fn parameters(obj: &Map<String, Value>) -> Result<SessionParameters, BodyError> {
    match present(obj, "session_parameters") {
        None => Ok(SessionParameters::default()),
        Some(v) => SessionParameters::from_json(v).map_err(BodyError),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn voice(body: Value) -> Result<TriggerBody, BodyError> {
        parse_voice(body.as_object().unwrap())
    }

    fn messaging(body: Value) -> Result<TriggerBody, BodyError> {
        parse_messaging(body.as_object().unwrap())
    }

    fn voice_err(body: Value) -> String {
        voice(body).unwrap_err().0
    }

    fn messaging_err(body: Value) -> String {
        messaging(body).unwrap_err().0
    }

    #[test]
    fn a_make_call_body_is_parsed() {
        let body = voice(json!({
            "agent_id": "60c09d70e6a68858f4220848",
            "to": "+9725411116037",
            "status_url": "https://example.com/status?x=1",
            "hangup_on_answer_machine": true,
            "session_parameters": [{"name": "n", "value": 3}],
            "unknown": {"ignored": true}
        }))
        .unwrap();
        assert_eq!(body.agent, AgentRef::Id("60c09d70e6a68858f4220848".into()));
        assert_eq!(body.channel, Channel::Voice);
        assert_eq!(body.to.as_str(), "9725411116037");
        let url = body.status_url.unwrap();
        assert_eq!(url.as_str(), "https://example.com/status?x=1");
        assert_eq!(url.url().host_str(), Some("example.com"));
        assert!(body.hangup_on_machine);
        assert_eq!(body.parameters.get("n"), Some("3"));
        assert_eq!(body.whatsapp, None);
    }

    #[test]
    fn from_wins_over_agent_id() {
        let body = voice(json!({"agent_id": "a", "from": "+4420", "to": "sip:u@h"})).unwrap();
        assert_eq!(body.agent, AgentRef::Number("+4420".into()));
        assert!(matches!(body.to, Destination::Sip(_)));
    }

    #[test]
    fn a_whatsapp_body_is_parsed() {
        let body = messaging(json!({
            "agent_id": "a",
            "to": "447700900123",
            "channel": "whatsapp",
            "status_url": "http://example.com",
            "namespace": "ns",
            "template": "welcome",
            "locale": "en",
            "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ann"}]}]
        }))
        .unwrap();
        assert_eq!(body.channel, Channel::Whatsapp);
        let message = body.whatsapp.unwrap();
        assert_eq!(
            (message.namespace.as_str(), message.template.as_str()),
            ("ns", "welcome")
        );
        assert_eq!(message.locale, "en");
        assert_eq!(message.components.len(), 1);
        // Stored as sent, not as the URL parser would normalise it.
        assert_eq!(body.status_url.unwrap().as_str(), "http://example.com");
    }

    #[test]
    fn missing_fields_are_named_in_the_contracts_order() {
        assert_eq!(
            voice_err(json!({"agent_id": null})),
            "Missing mandatory field(s): agent_id, to"
        );
        assert_eq!(
            messaging_err(json!({"channel": "whatsapp"})),
            "Missing mandatory field(s): namespace, template, locale, to, agent_id, status_url"
        );
        assert_eq!(
            messaging_err(json!({})),
            "Missing mandatory field(s): to, agent_id, channel"
        );
    }

    #[test]
    fn each_step_fails_before_the_next() {
        // Types before the destination, the destination before status_url.
        assert_eq!(
            voice_err(json!({"agent_id": 1, "to": "x", "status_url": "x"})),
            "agent_id must be a string"
        );
        assert_eq!(
            voice_err(json!({"agent_id": "a", "to": "x", "status_url": "x"})),
            "Bad destination number format"
        );
        assert_eq!(
            voice_err(json!({"agent_id": "a", "to": "447700900123", "status_url": "x"})),
            "Invalid status_url"
        );
        assert_eq!(
            voice_err(json!({"agent_id": "a", "to": "1", "hangup_on_answer_machine": "yes"})),
            "hangup_on_answer_machine must be a boolean"
        );
        assert_eq!(
            messaging_err(json!({"agent_id": "a", "to": "1", "channel": "fax"})),
            "Unsupported channel: fax"
        );
        assert_eq!(
            messaging_err(json!({"agent_id": "a", "to": "sip:u@h", "channel": "sms"})),
            "Bad destination number format"
        );
        assert_eq!(
            messaging_err(json!({
                "agent_id": "a", "to": "1", "channel": "whatsapp", "status_url": "x",
                "namespace": "n", "template": "t", "locale": "l", "components": {}
            })),
            "components must be an array"
        );
    }

    #[test]
    fn status_urls() {
        for ok in ["http://h", "https://example.com:8443/cb?a=b#f"] {
            assert_eq!(StatusUrl::parse(ok).unwrap().as_str(), ok);
        }
        let too_long = format!("https://example.com/{}", "a".repeat(MAX_STATUS_URL));
        for bad in [
            "",
            "/relative",
            "example.com/cb",
            "ftp://example.com",
            "file:///etc/passwd",
            "http://",
            "mailto:ops@example.com",
            "https://exa mple.com",
            "https://example.com/\tx",
            "https://example.com/\n",
            too_long.as_str(),
        ] {
            assert_eq!(
                StatusUrl::parse(bad),
                Err(BodyError("Invalid status_url".into())),
                "{bad:?}"
            );
        }
    }
}
