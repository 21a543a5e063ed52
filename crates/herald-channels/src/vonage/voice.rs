//! The Vonage Voice API (CHANNELS §3): calls out, their NCCO, and what
//! Vonage reports of them.
//!
//! Vonage drives the call: it fetches the answer URL when the person picks
//! up, runs the NCCO herald answers with (`talk`, `input`, `connect`,
//! `notify`), posts what the person keyed or said to the `input`'s event
//! URL and runs the NCCO herald answers with then, and posts the call's
//! progress to the event URL. Fields follow `definitions/voice.yml` of
//! Vonage's specification and its NCCO and webhook references.

use std::time::Duration;

use herald_core::flow::Awaited;
use herald_core::session::CallFailure;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::adapter::{
    CallOutcome, CallStatus, CallStep, CallTurn, Endpoint, Heard, MachineDetection, NewCall,
};

/// An endpoint in Vonage's form.
fn endpoint(endpoint: &Endpoint) -> Value {
    match endpoint {
        Endpoint::Phone(number) => json!({"type": "phone", "number": number}),
        Endpoint::Sip(uri) => json!({"type": "sip", "uri": uri}),
    }
}

/// The body of `POST /v1/calls` for `call`.
pub fn call_body(call: &NewCall) -> Value {
    let mut body = json!({
        "to": [endpoint(&call.to)],
        "from": {"type": "phone", "number": call.from.trim_start_matches('+')},
        "answer_url": [call.answer_url],
        "answer_method": "POST",
        "event_url": [call.event_url],
        "event_method": "POST",
        "ringing_timer": call.ringing_timer.clamp(1, 120),
    });
    if let Some(detection) = call.machine_detection {
        body["machine_detection"] = json!(match detection {
            MachineDetection::Continue => "continue",
            MachineDetection::Hangup => "hangup",
        });
    }
    body
}

/// Reads Vonage's answer to a request about a call.
pub(crate) async fn outcome(answer: Result<reqwest::Response, reqwest::Error>) -> CallOutcome {
    match super::read_answer(answer).await {
        Ok((status, retry_after, text)) => classify(status, retry_after, &text),
        Err(reason) => CallOutcome::Unavailable { reason },
    }
}

/// The outcome of an answer of `status` with body `text`.
pub fn classify(status: u16, retry_after: Option<Duration>, text: &str) -> CallOutcome {
    if (200..300).contains(&status) {
        let uuid = serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| v.get("uuid")?.as_str().map(str::to_owned));
        return CallOutcome::Done { id: uuid };
    }
    let said = super::what_vonage_said(text);
    let reason = |what: &str| super::reason(what, status, &said);
    match status {
        429 => CallOutcome::Throttled { retry_after },
        500..=599 => CallOutcome::Unavailable {
            reason: reason("failed"),
        },
        _ => CallOutcome::Refused {
            reason: reason("refused the call"),
        },
    }
}

/// How herald's prompts are spoken: the connection's `language` and
/// `style` settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Voice {
    /// A BCP-47 tag such as `en-GB`; Vonage's default (`en-US`) if unset.
    pub language: Option<String>,
    /// The voice's style number for the language.
    pub style: Option<u32>,
}

/// One NCCO action herald answers with.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Ncco {
    Talk {
        text: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        language: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        style: Option<u32>,
        /// Whether the person's answer may cut the prompt short.
        #[serde(rename = "bargeIn")]
        barge_in: bool,
    },
    Input {
        #[serde(rename = "type")]
        kinds: Vec<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        dtmf: Option<DtmfSettings>,
        #[serde(skip_serializing_if = "Option::is_none")]
        speech: Option<SpeechSettings>,
        #[serde(rename = "eventUrl")]
        event_url: Vec<String>,
        #[serde(rename = "eventMethod")]
        event_method: &'static str,
    },
    Connect {
        endpoint: Vec<Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        from: Option<String>,
    },
    Notify {
        payload: Value,
        #[serde(rename = "eventUrl")]
        event_url: Vec<String>,
        #[serde(rename = "eventMethod")]
        event_method: &'static str,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DtmfSettings {
    /// Seconds of silence after a digit that end the answer (0 to 10).
    #[serde(rename = "timeOut")]
    pub time_out: u32,
    #[serde(rename = "maxDigits")]
    pub max_digits: u32,
    #[serde(rename = "submitOnHash")]
    pub submit_on_hash: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpeechSettings {
    /// The call leg to listen to.
    pub uuid: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Seconds of silence that end the answer.
    #[serde(rename = "endOnSilence")]
    pub end_on_silence: f32,
    /// Seconds the person has to start speaking (1 to 60).
    #[serde(rename = "startTimeout")]
    pub start_timeout: u32,
    /// The longest answer, in seconds (1 to 60).
    #[serde(rename = "maxDuration")]
    pub max_duration: u32,
}

impl Ncco {
    /// Says `text` (at most 1500 characters, as Vonage takes them).
    pub fn talk(text: &str, voice: &Voice) -> Ncco {
        Ncco::Talk {
            text: text.chars().take(1500).collect(),
            language: voice.language.clone(),
            style: voice.style,
            barge_in: false,
        }
    }

    /// Collects the person's answer as `awaited` asks, posted to
    /// `event_url`.
    pub fn input(call_uuid: &str, awaited: &Awaited, voice: &Voice, event_url: String) -> Ncco {
        let seconds = awaited.timeout.as_secs_f32().ceil() as u32;
        let mut kinds = Vec::new();
        let dtmf = awaited.dtmf.then(|| {
            kinds.push("dtmf");
            DtmfSettings {
                time_out: seconds.clamp(1, 10),
                max_digits: awaited.max_digits.clamp(1, 20),
                submit_on_hash: true,
            }
        });
        let speech = awaited.speech.then(|| {
            kinds.push("speech");
            SpeechSettings {
                uuid: vec![call_uuid.to_owned()],
                language: voice.language.clone(),
                end_on_silence: 1.5,
                start_timeout: seconds.clamp(1, 60),
                max_duration: 30,
            }
        });
        Ncco::Input {
            kinds,
            dtmf,
            speech,
            event_url: vec![event_url],
            event_method: "POST",
        }
    }

    /// Hands the call over to `to` (a number or SIP URI).
    pub fn connect(to: &str, from: &str) -> Ncco {
        Ncco::Connect {
            endpoint: vec![endpoint(&Endpoint::parse(to))],
            from: Some(from.trim_start_matches('+').to_owned()),
        }
    }

    /// After a pause of about a second, asks `event_url` for the next
    /// NCCO: what herald answers when it cannot answer in time
    /// (CONTRACT §11.4).
    pub fn hold_on(event_url: String) -> Vec<Ncco> {
        vec![
            Ncco::Talk {
                text: "<speak><break time=\"1s\"/></speak>".into(),
                language: None,
                style: None,
                barge_in: false,
            },
            Ncco::Notify {
                payload: json!({"herald": "next_turn"}),
                event_url: vec![event_url],
                event_method: "POST",
            },
        ]
    }
}

/// The NCCO of a call's `turn`: each step, then the answer's `input`.
/// Empty when the turn has nothing to do: the call ends.
pub fn ncco(turn: &CallTurn, call_uuid: &str, voice: &Voice) -> Vec<Ncco> {
    let mut ncco: Vec<Ncco> = turn
        .steps
        .iter()
        .map(|step| match step {
            CallStep::Say(text) => Ncco::talk(text, voice),
            CallStep::Connect { to, from } => Ncco::connect(to, from),
        })
        .collect();
    if let Some(listen) = &turn.listen {
        ncco.push(Ncco::input(
            call_uuid,
            &listen.awaited,
            voice,
            listen.answer_url.clone(),
        ));
    }
    ncco
}

/// The body of `PUT /v1/calls/{uuid}` that replaces the call's NCCO.
pub fn transfer_body(ncco: &[Ncco]) -> Value {
    json!({"action": "transfer", "destination": {"type": "ncco", "ncco": ncco}})
}

/// The body of `PUT /v1/calls/{uuid}` that ends the call.
pub fn hangup_body() -> Value {
    json!({"action": "hangup"})
}

/// The answer webhook: the person picked up.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Answered {
    pub uuid: String,
    #[serde(default)]
    pub conversation_uuid: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
}

/// An event webhook: a step of the call.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct CallEvent {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub uuid: Option<String>,
    /// Machine detection events name the call so.
    #[serde(default)]
    pub call_uuid: Option<String>,
    #[serde(default)]
    pub conversation_uuid: Option<String>,
    #[serde(default)]
    pub timestamp: Option<String>,
}

impl CallEvent {
    /// The call it is of.
    pub fn call(&self) -> Option<&str> {
        self.uuid.as_deref().or(self.call_uuid.as_deref())
    }

    /// What the status means; `None` for a status herald does not know
    /// (or an event without one, such as a recording's).
    pub fn status(&self) -> Option<CallStatus> {
        Some(match self.status.as_deref()? {
            "started" | "ringing" | "answered" | "human" => CallStatus::Progress,
            "machine" => CallStatus::Machine,
            "busy" => CallStatus::NotAnswered(CallFailure::Busy),
            "cancelled" => CallStatus::NotAnswered(CallFailure::Cancelled),
            "rejected" => CallStatus::NotAnswered(CallFailure::Rejected),
            "timeout" | "unanswered" => CallStatus::NotAnswered(CallFailure::Timeout),
            "failed" => CallStatus::NotAnswered(CallFailure::Failed),
            "completed" => CallStatus::Completed,
            _ => return None,
        })
    }
}

/// An input webhook: what the person keyed or said, or that they said
/// nothing. A `notify` action's post (herald's own payload) reads as one
/// with neither.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct InputResult {
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub dtmf: Option<Dtmf>,
    #[serde(default)]
    pub speech: Option<Speech>,
    #[serde(default)]
    pub timestamp: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Dtmf {
    #[serde(default)]
    pub digits: Option<String>,
    #[serde(default)]
    pub timed_out: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Speech {
    #[serde(default)]
    pub results: Option<Vec<SpeechResult>>,
    #[serde(default)]
    pub timeout_reason: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct SpeechResult {
    pub text: String,
    /// A number, which Vonage sends as a string.
    #[serde(default)]
    pub confidence: Option<Value>,
}

impl InputResult {
    /// Whether this is an answer at all (a `notify` post is not).
    pub fn is_answer(&self) -> bool {
        self.dtmf.is_some() || self.speech.is_some()
    }

    /// Digits first (a person who keys means it), then the most
    /// confident recognition.
    pub fn heard(&self) -> Heard {
        if let Some(digits) = self
            .dtmf
            .as_ref()
            .and_then(|d| d.digits.as_deref())
            .map(|d| d.trim_end_matches('#'))
            .filter(|d| !d.is_empty())
        {
            return Heard::Digits(digits.to_owned());
        }
        let best = self
            .speech
            .as_ref()
            .and_then(|s| s.results.as_ref())
            .into_iter()
            .flatten()
            .filter(|r| !r.text.trim().is_empty())
            .map(|r| (r, confidence(r.confidence.as_ref())))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        match best {
            Some((result, confidence)) => Heard::Speech {
                text: result.text.trim().to_owned(),
                confidence,
            },
            None => Heard::Nothing,
        }
    }
}

fn confidence(value: Option<&Value>) -> f64 {
    let n = match value {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    };
    n.filter(|c: &f64| c.is_finite())
        .unwrap_or(0.0)
        .clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_asks_for_its_ncco_by_post() {
        let call = NewCall {
            to: Endpoint::parse("+447700900123"),
            from: "+447700900000".into(),
            answer_url: "https://h.example/providers/c/answer".into(),
            event_url: "https://h.example/providers/c/event".into(),
            machine_detection: Some(MachineDetection::Hangup),
            ringing_timer: 500,
        };
        let body = call_body(&call);
        assert_eq!(
            body["to"],
            json!([{"type": "phone", "number": "447700900123"}])
        );
        assert_eq!(
            body["from"],
            json!({"type": "phone", "number": "447700900000"})
        );
        assert_eq!(body["answer_method"], "POST");
        assert_eq!(
            body["answer_url"][0],
            "https://h.example/providers/c/answer"
        );
        assert_eq!(body["machine_detection"], "hangup");
        assert_eq!(body["ringing_timer"], 120);
        let sip = NewCall {
            to: Endpoint::parse("sip:ada@pbx.example"),
            machine_detection: None,
            ..call
        };
        assert_eq!(
            call_body(&sip)["to"][0],
            json!({"type": "sip", "uri": "sip:ada@pbx.example"})
        );
        assert!(call_body(&sip).get("machine_detection").is_none());
    }

    #[test]
    fn answers_are_classified() {
        assert_eq!(
            classify(201, None, r#"{"uuid":"u1","status":"started"}"#),
            CallOutcome::Done {
                id: Some("u1".into())
            }
        );
        assert_eq!(classify(204, None, ""), CallOutcome::Done { id: None });
        assert_eq!(
            classify(429, Some(Duration::from_secs(2)), ""),
            CallOutcome::Throttled {
                retry_after: Some(Duration::from_secs(2))
            }
        );
        assert!(matches!(
            classify(503, None, ""),
            CallOutcome::Unavailable { .. }
        ));
        let CallOutcome::Refused { reason } = classify(
            400,
            None,
            r#"{"title":"Bad Request","detail":"to is invalid"}"#,
        ) else {
            panic!()
        };
        assert_eq!(
            reason,
            "Vonage refused the call (400): Bad Request: to is invalid"
        );
    }

    #[test]
    fn ncco_is_in_vonage_s_shape() {
        let voice = Voice {
            language: Some("en-GB".into()),
            style: Some(2),
        };
        let awaited = Awaited {
            dtmf: true,
            speech: true,
            max_digits: 2,
            timeout: Duration::from_millis(25_500),
        };
        let ncco = vec![
            Ncco::talk("Hello", &voice),
            Ncco::input("call-1", &awaited, &voice, "https://h/input".into()),
            Ncco::connect("+447700900999", "447700900000"),
        ];
        assert_eq!(
            serde_json::to_value(&ncco).unwrap(),
            json!([
                {"action": "talk", "text": "Hello", "language": "en-GB", "style": 2, "bargeIn": false},
                {"action": "input", "type": ["dtmf", "speech"],
                 "dtmf": {"timeOut": 10, "maxDigits": 2, "submitOnHash": true},
                 "speech": {"uuid": ["call-1"], "language": "en-GB", "endOnSilence": 1.5,
                            "startTimeout": 26, "maxDuration": 30},
                 "eventUrl": ["https://h/input"], "eventMethod": "POST"},
                {"action": "connect", "endpoint": [{"type": "phone", "number": "447700900999"}],
                 "from": "447700900000"}
            ])
        );
        let long = "x".repeat(2000);
        let Ncco::Talk { text, .. } = Ncco::talk(&long, &Voice::default()) else {
            panic!()
        };
        assert_eq!(text.len(), 1500);
    }

    #[test]
    fn statuses_map_as_channels_3_says() {
        let status = |s: &str| {
            CallEvent {
                status: Some(s.into()),
                uuid: Some("u".into()),
                call_uuid: None,
                conversation_uuid: None,
                timestamp: None,
            }
            .status()
        };
        use CallFailure::*;
        assert_eq!(status("busy"), Some(CallStatus::NotAnswered(Busy)));
        assert_eq!(
            status("cancelled"),
            Some(CallStatus::NotAnswered(Cancelled))
        );
        assert_eq!(status("rejected"), Some(CallStatus::NotAnswered(Rejected)));
        assert_eq!(status("timeout"), Some(CallStatus::NotAnswered(Timeout)));
        assert_eq!(status("unanswered"), Some(CallStatus::NotAnswered(Timeout)));
        assert_eq!(status("failed"), Some(CallStatus::NotAnswered(Failed)));
        assert_eq!(status("machine"), Some(CallStatus::Machine));
        assert_eq!(status("completed"), Some(CallStatus::Completed));
        for progress in ["started", "ringing", "answered", "human"] {
            assert_eq!(status(progress), Some(CallStatus::Progress));
        }
        assert_eq!(status("transfer"), None);
        let machine: CallEvent =
            serde_json::from_str(r#"{"call_uuid":"c1","status":"machine"}"#).unwrap();
        assert_eq!(machine.call(), Some("c1"));
    }

    #[test]
    fn what_the_person_answered_is_read() {
        let read = |body: Value| serde_json::from_value::<InputResult>(body).unwrap().heard();
        assert_eq!(
            read(
                json!({"uuid": "u", "dtmf": {"digits": "42#", "timed_out": false},
                        "speech": {"results": []}})
            ),
            Heard::Digits("42".into())
        );
        assert_eq!(
            read(
                json!({"uuid": "u", "dtmf": {"digits": "", "timed_out": true},
                        "speech": {"results": [
                            {"text": "yes please", "confidence": "0.91"},
                            {"text": "yes peas", "confidence": 0.42}]}})
            ),
            Heard::Speech {
                text: "yes please".into(),
                confidence: 0.91
            }
        );
        assert_eq!(
            read(
                json!({"uuid": "u", "dtmf": {"digits": null, "timed_out": true},
                        "speech": {"timeout_reason": "start_timeout"}})
            ),
            Heard::Nothing
        );
        let notify: InputResult = serde_json::from_value(json!({"herald": "next_turn"})).unwrap();
        assert!(!notify.is_answer());
    }
}
