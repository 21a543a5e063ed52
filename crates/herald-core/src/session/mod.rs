//! Sessions: their parameters, states and outcomes (CONTRACT §2.1, §5, §7),
//! and the vocabulary of what happens in one: what wakes it ([`input`]),
//! what it records ([`event`]), how a call goes ([`call`]), what it reports
//! to its `status_url` ([`callback`]), and the conversation its events tell
//! ([`transcript`]).

pub mod call;
pub mod callback;
pub mod event;
pub mod input;
pub mod transcript;

pub use call::{AnsweredBy, CallFailure, CallProgress};
pub use event::{SessionEvent, ShownContent};
pub use input::{InputKind, SessionInput, StoredInput};

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A session's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    Queued,
    Active,
    Ended,
}

impl SessionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Queued => "queued",
            SessionStatus::Active => "active",
            SessionStatus::Ended => "ended",
        }
    }
}

impl FromStr for SessionStatus {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "queued" => Ok(SessionStatus::Queued),
            "active" => Ok(SessionStatus::Active),
            "ended" => Ok(SessionStatus::Ended),
            _ => Err(()),
        }
    }
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Completed,
    Busy,
    Rejected,
    Timeout,
    Failed,
    Cancelled,
    Machine,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Completed,
        Outcome::Busy,
        Outcome::Rejected,
        Outcome::Timeout,
        Outcome::Failed,
        Outcome::Cancelled,
        Outcome::Machine,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Busy => "busy",
            Outcome::Rejected => "rejected",
            Outcome::Timeout => "timeout",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
            Outcome::Machine => "machine",
        }
    }
}

impl FromStr for Outcome {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s).ok_or(())
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a conversation ended, as its `ended` event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// An end node, or a flow that ran out of nodes.
    Completed,
    /// A Call Routing node handed the call over.
    Transferred,
    /// The live agent ended the conversation.
    LiveAgentEnded,
    /// The person opted out by keyword (CONTRACT §13.2).
    OptedOut,
    /// The session's maximum lifetime ran out.
    Expired,
    /// The step bound was reached (a loop validation could not rule out).
    Looped,
    /// A sub-flow call would have gone deeper than
    /// [`crate::flow::MAX_SUBFLOW_DEPTH`].
    SubflowTooDeep,
}

impl EndReason {
    /// Whether the conversation ended because the flow could not go on,
    /// rather than by its own design: the session's outcome is `failed`.
    pub fn is_failure(self) -> bool {
        matches!(self, EndReason::SubflowTooDeep)
    }
}

/// The status of one outbound message, as messaging callbacks report it
/// (CONTRACT §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    Sent,
    Delivered,
    Read,
    Rejected,
    Failed,
}

impl MessageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Sent => "sent",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Read => "read",
            MessageStatus::Rejected => "rejected",
            MessageStatus::Failed => "failed",
        }
    }
}

/// Session parameters seeded by the trigger (`session_parameters`).
///
/// Names are 1 to 64 ASCII letters, digits or underscores; values are text.
/// The same name twice keeps the last value, in the position of its first
/// appearance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionParameters(Vec<SessionParameter>);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionParameter {
    pub name: String,
    pub value: String,
}

/// Limits on what a trigger may seed (CONTRACT §2.1).
pub const MAX_PARAMETERS: usize = 100;
pub const MAX_PARAMETER_BYTES: usize = 4096;
pub const MAX_PARAMETER_NAME: usize = 64;

impl SessionParameters {
    pub fn is_valid_name(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= MAX_PARAMETER_NAME
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    }

    /// Parses the request's `session_parameters` value. The error is the
    /// message the API answers with, naming the field at fault.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, String> {
        let items = value
            .as_array()
            .ok_or_else(|| "session_parameters must be an array".to_owned())?;
        if items.len() > MAX_PARAMETERS {
            return Err(format!(
                "session_parameters must have at most {MAX_PARAMETERS} entries"
            ));
        }
        let mut params = SessionParameters::default();
        for (i, item) in items.iter().enumerate() {
            let obj = item
                .as_object()
                .ok_or_else(|| format!("session_parameters[{i}] must be an object"))?;
            let name = match obj.get("name") {
                Some(serde_json::Value::String(s)) if Self::is_valid_name(s) => s.clone(),
                Some(serde_json::Value::String(_)) => {
                    return Err(format!(
                    "session_parameters[{i}].name must be 1 to 64 letters, digits or underscores"
                ))
                }
                None | Some(serde_json::Value::Null) => {
                    return Err(format!("session_parameters[{i}].name is required"))
                }
                Some(_) => return Err(format!("session_parameters[{i}].name must be a string")),
            };
            let value = match obj.get("value") {
                Some(serde_json::Value::String(s)) => s.clone(),
                // Numbers and booleans are kept as the text the client wrote.
                Some(serde_json::Value::Number(n)) => n.to_string(),
                Some(serde_json::Value::Bool(b)) => b.to_string(),
                None | Some(serde_json::Value::Null) => {
                    return Err(format!("session_parameters[{i}].value is required"))
                }
                Some(_) => {
                    return Err(format!(
                        "session_parameters[{i}].value must be a string, number or boolean"
                    ))
                }
            };
            if value.len() > MAX_PARAMETER_BYTES {
                return Err(format!(
                    "session_parameters[{i}].value must be at most 4096 bytes"
                ));
            }
            if value.contains('\0') {
                return Err(format!(
                    "session_parameters[{i}].value {}",
                    crate::text::NO_NUL
                ));
            }
            params.set(name, value);
        }
        Ok(params)
    }

    /// Puts back the text the client wrote for the numbers among the
    /// values, from the raw request `body`: a parsed JSON number has lost
    /// it (an integer beyond 64 bits comes back rounded through a float,
    /// `1e2` as `100.0`), and CONTRACT §2.1 keeps a number as its text.
    /// Call it on parameters [`Self::from_json`] accepted from that body.
    /// A body this reading cannot follow (a key given twice) keeps the
    /// parsed values.
    pub fn keep_number_text(&mut self, body: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Body<'a> {
            #[serde(borrow)]
            session_parameters: Option<Vec<Entry<'a>>>,
        }
        #[derive(serde::Deserialize)]
        struct Entry<'a> {
            name: std::borrow::Cow<'a, str>,
            #[serde(borrow)]
            value: &'a serde_json::value::RawValue,
        }
        let Ok(Body {
            session_parameters: Some(entries),
        }) = serde_json::from_slice::<Body>(body)
        else {
            return;
        };
        // As in from_json, a later entry of the same name wins.
        let mut texts: Vec<(&str, Option<&str>)> = Vec::new();
        for entry in &entries {
            let raw = entry.value.get();
            let number = raw.starts_with(|c: char| c == '-' || c.is_ascii_digit());
            texts.retain(|(name, _)| *name != entry.name);
            texts.push((&entry.name, number.then_some(raw)));
        }
        for parameter in &mut self.0 {
            if let Some((_, Some(text))) = texts.iter().find(|(n, _)| *n == parameter.name) {
                parameter.value = (*text).to_owned();
            }
        }
    }

    pub fn set(&mut self, name: String, value: String) {
        match self.0.iter_mut().find(|p| p.name == name) {
            Some(p) => p.value = value,
            None => self.0.push(SessionParameter { name, value }),
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.value.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = &SessionParameter> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parameters_keep_text_and_last_value_wins() {
        let p = SessionParameters::from_json(&json!([
            {"name": "CALLER_NAME", "value": "Diane Miller"},
            {"name": "PROPERTY_VALUE", "value": 500},
            {"name": "VIP", "value": true},
            {"name": "CALLER_NAME", "value": "Diane"},
        ]))
        .unwrap();
        let all: Vec<_> = p
            .iter()
            .map(|p| (p.name.as_str(), p.value.as_str()))
            .collect();
        assert_eq!(
            all,
            [
                ("CALLER_NAME", "Diane"),
                ("PROPERTY_VALUE", "500"),
                ("VIP", "true")
            ]
        );
    }

    #[test]
    fn bad_parameters_name_the_field() {
        let cases = [
            (json!({}), "session_parameters must be an array"),
            (json!([1]), "session_parameters[0] must be an object"),
            (
                json!([{"value": "x"}]),
                "session_parameters[0].name is required",
            ),
            (
                json!([{"name": 3, "value": "x"}]),
                "session_parameters[0].name must be a string",
            ),
            (
                json!([{"name": "A", "value": "x"}, {"name": "bad name", "value": "x"}]),
                "session_parameters[1].name must be 1 to 64 letters, digits or underscores",
            ),
            (
                json!([{"name": "A"}]),
                "session_parameters[0].value is required",
            ),
            (
                json!([{"name": "A", "value": [1]}]),
                "session_parameters[0].value must be a string, number or boolean",
            ),
            (
                json!([{"name": "A", "value": "x".repeat(4097)}]),
                "session_parameters[0].value must be at most 4096 bytes",
            ),
        ];
        for (input, message) in cases {
            assert_eq!(
                SessionParameters::from_json(&input),
                Err(message.to_owned())
            );
        }
        let too_many: Vec<_> = (0..101)
            .map(|i| json!({"name": format!("P{i}"), "value": "x"}))
            .collect();
        assert!(SessionParameters::from_json(&json!(too_many)).is_err());
    }

    #[test]
    fn numbers_keep_the_text_the_client_wrote() {
        let body = br#"{"session_parameters": [
            {"name": "big", "value": 98765432109876543210},
            {"name": "exp", "value": 1e2},
            {"name": "text", "value": "1e2"},
            {"name": "flag", "value": true},
            {"name": "twice", "value": 1.0},
            {"name": "twice", "value": 2.50}
        ]}"#;
        let value: serde_json::Value = serde_json::from_slice(body).unwrap();
        let mut params = SessionParameters::from_json(&value["session_parameters"]).unwrap();
        assert_eq!(params.get("big"), Some("9.876543210987654e+19"));
        params.keep_number_text(body);
        assert_eq!(params.get("big"), Some("98765432109876543210"));
        assert_eq!(params.get("exp"), Some("1e2"));
        assert_eq!(params.get("text"), Some("1e2"));
        assert_eq!(params.get("flag"), Some("true"));
        assert_eq!(params.get("twice"), Some("2.50"));
    }

    #[test]
    fn a_body_with_a_repeated_key_keeps_the_parsed_values() {
        let body = br#"{"session_parameters": [{"name": "n", "value": 1e2}],
                        "session_parameters": [{"name": "n", "value": 1e2}]}"#;
        let value: serde_json::Value = serde_json::from_slice(body).unwrap();
        let mut params = SessionParameters::from_json(&value["session_parameters"]).unwrap();
        params.keep_number_text(body);
        assert_eq!(params.get("n"), Some("100.0"));
    }
}
