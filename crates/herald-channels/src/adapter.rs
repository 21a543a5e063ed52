//! What herald asks of a real provider's adapter, and what the adapter
//! answers, in terms of no provider (CHANNELS §1): a message to send, a
//! call to place, a turn of a call the provider drives, and what became of
//! each request. Each provider's module ([`crate::vonage`],
//! [`crate::twilio`]) turns these into its own wire form and reads its
//! answers back into them; the session driver speaks only these.

use std::time::Duration;

use herald_core::flow::Awaited;
use herald_core::session::{CallFailure, MessageStatus};
use herald_core::Channel;
use serde_json::Value;

/// What one message carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    Text(String),
    /// A WhatsApp template: its namespace and name, its locale (herald's
    /// or Meta's form) and its components, in WhatsApp's wire shape.
    Template {
        namespace: String,
        name: String,
        locale: String,
        components: Value,
    },
}

/// One message to send.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundMessage {
    pub channel: Channel,
    /// The person: digits with the country code.
    pub to: String,
    /// The agent's number or sender id.
    pub from: String,
    pub content: Content,
    /// herald's id for the message (at most 100 characters), echoed in its
    /// statuses where the provider takes one.
    pub client_ref: String,
    /// Where the provider posts the message's statuses, for a provider
    /// that is told so with each message.
    pub status_url: String,
}

/// What became of a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// The provider took the message; its id for it.
    Accepted { id: String },
    /// The provider asks to slow down: nothing was sent, try again later.
    Throttled { retry_after: Option<Duration> },
    /// The provider could not be reached or failed: nothing was taken, as
    /// far as herald can tell; try again later.
    Unavailable { reason: String },
    /// The provider refused the message for good; `status` is what the
    /// message's callback reports (`rejected` for the message itself,
    /// `failed` for the account or the credentials).
    Refused {
        status: MessageStatus,
        reason: String,
    },
}

/// Whom a call goes to, or a hand-over hands it to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A phone number, digits with the country code (no `+`).
    Phone(String),
    /// A SIP URI.
    Sip(String),
}

impl Endpoint {
    /// A number (with or without `+`) or a `sip:`/`sips:` URI.
    pub fn parse(to: &str) -> Endpoint {
        let lower = to.to_ascii_lowercase();
        if lower.starts_with("sip:") || lower.starts_with("sips:") {
            Endpoint::Sip(to.to_owned())
        } else {
            Endpoint::Phone(to.trim_start_matches('+').to_owned())
        }
    }
}

/// What the provider does when an answering machine picks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineDetection {
    /// Report it and go on.
    Continue,
    /// Report it and hang up.
    Hangup,
}

/// One call to place.
#[derive(Debug, Clone, PartialEq)]
pub struct NewCall {
    pub to: Endpoint,
    /// The agent's number, digits with the country code.
    pub from: String,
    /// Where the provider asks for the call's first turn once it is
    /// answered.
    pub answer_url: String,
    /// Where the provider posts the call's progress.
    pub event_url: String,
    pub machine_detection: Option<MachineDetection>,
    /// How long the phone may ring, in seconds.
    pub ringing_timer: u32,
}

/// What became of a request about a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// The provider placed the call (or did what was asked); the call's
    /// id, if it said.
    Done { id: Option<String> },
    /// The provider asks to slow down: nothing happened, try again later.
    Throttled { retry_after: Option<Duration> },
    /// The provider could not be reached or failed: try again later.
    Unavailable { reason: String },
    /// The provider refused, for good.
    Refused { reason: String },
}

/// What one turn of a call its provider drives does, as the flow's steps
/// asked: each step in order, then the person's answer collected if the
/// flow waits for one. A turn with nothing to do ends the call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallTurn {
    pub steps: Vec<CallStep>,
    pub listen: Option<Listen>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CallStep {
    /// Say these words.
    Say(String),
    /// Hand the call over to `to` (a number or SIP URI), from `from`.
    Connect { to: String, from: String },
}

/// The answer a turn collects: what it may be, and where the provider
/// posts it (or that there was none).
#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    pub awaited: Awaited,
    pub answer_url: String,
}

/// What a provider's report of a call means for its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallStatus {
    /// Started, ringing, answered by a person: the call goes on.
    Progress,
    /// An answering machine picked up.
    Machine,
    /// The call ended before anyone answered.
    NotAnswered(CallFailure),
    /// The call was answered and is over.
    Completed,
}

/// What the person answered a turn's question with, as the provider heard
/// it.
#[derive(Debug, Clone, PartialEq)]
pub enum Heard {
    Digits(String),
    Speech {
        text: String,
        confidence: f64,
    },
    /// Neither digits nor words came in time.
    Nothing,
}

/// Whether a request that did not get through may be tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retry {
    /// It got an answer that stands (taken, or refused for good).
    No,
    /// The provider asks to slow down, for this long if it says.
    Throttled(Option<Duration>),
    /// The provider failed or could not be reached, for this reason.
    Unavailable(String),
}

/// What a request to a provider came to, as a sender that tries again
/// reads it.
pub trait Attempt {
    /// The word for it in herald's provider metrics.
    fn result(&self) -> &'static str;
    fn retry(&self) -> Retry;
}

impl Attempt for SendOutcome {
    fn result(&self) -> &'static str {
        match self {
            SendOutcome::Accepted { .. } => "accepted",
            SendOutcome::Throttled { .. } => "throttled",
            SendOutcome::Unavailable { .. } => "unavailable",
            SendOutcome::Refused { .. } => "refused",
        }
    }

    fn retry(&self) -> Retry {
        match self {
            SendOutcome::Throttled { retry_after } => Retry::Throttled(*retry_after),
            SendOutcome::Unavailable { reason } => Retry::Unavailable(reason.clone()),
            _ => Retry::No,
        }
    }
}

impl Attempt for CallOutcome {
    fn result(&self) -> &'static str {
        match self {
            CallOutcome::Done { .. } => "accepted",
            CallOutcome::Throttled { .. } => "throttled",
            CallOutcome::Unavailable { .. } => "unavailable",
            CallOutcome::Refused { .. } => "refused",
        }
    }

    fn retry(&self) -> Retry {
        match self {
            CallOutcome::Throttled { retry_after } => Retry::Throttled(*retry_after),
            CallOutcome::Unavailable { reason } => Retry::Unavailable(reason.clone()),
            _ => Retry::No,
        }
    }
}

/// A provider's answer, read: its status, its `Retry-After` and its body;
/// or, when there was none, why (fit to show: reqwest's text names the
/// URL, which is the operator's, and is not needed). `provider` names the
/// provider in that reason.
pub(crate) async fn read_answer(
    provider: &str,
    answer: Result<reqwest::Response, reqwest::Error>,
) -> Result<(u16, Option<Duration>, String), String> {
    let response = match answer {
        Ok(response) => response,
        Err(e) if e.is_timeout() => return Err(format!("{provider} did not answer in time")),
        Err(_) => return Err(format!("{provider} could not be reached")),
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let text = response.text().await.unwrap_or_default();
    Ok((status, retry_after, text))
}

/// `{provider} {what} ({status})`, or `({status}, code {code})` for a
/// provider whose errors carry a code, with what the provider said.
pub(crate) fn reason(
    provider: &str,
    what: &str,
    status: u16,
    code: Option<u64>,
    said: &str,
) -> String {
    let mut reason = match code {
        Some(code) => format!("{provider} {what} ({status}, code {code})"),
        None => format!("{provider} {what} ({status})"),
    };
    if !said.is_empty() {
        reason.push_str(": ");
        reason.push_str(said);
    }
    reason
}

/// The HTTP client of a provider's adapter: bounded in time, never
/// following redirects or a proxy (the operator's API URL is the only
/// place it goes).
pub(crate) fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
        .no_proxy()
        .build()
        .expect("the client's settings are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_is_a_number_or_a_sip_uri() {
        assert_eq!(
            Endpoint::parse("+447700900123"),
            Endpoint::Phone("447700900123".into())
        );
        assert_eq!(
            Endpoint::parse("SIP:alice@pbx.example.com"),
            Endpoint::Sip("SIP:alice@pbx.example.com".into())
        );
    }

    #[test]
    fn only_throttling_and_failures_are_tried_again() {
        let taken = SendOutcome::Accepted { id: "m".into() };
        assert_eq!(taken.retry(), Retry::No);
        assert_eq!(
            CallOutcome::Throttled { retry_after: None }.retry(),
            Retry::Throttled(None)
        );
        assert_eq!(
            CallOutcome::Refused {
                reason: "no".into()
            }
            .result(),
            "refused"
        );
    }
}
