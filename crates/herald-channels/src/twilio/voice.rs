//! Twilio's Voice API (CHANNELS §6): calls out, their TwiML, and what
//! Twilio reports of them.
//!
//! Twilio drives the call: when the person picks up it asks the call's
//! `Url` for TwiML, runs it (`<Say>`, `<Gather>`, `<Dial>`, `<Hangup>`),
//! posts what the person keyed or said to the `<Gather>`'s `action` and
//! runs the TwiML herald answers with then, and posts the call's progress
//! to its `StatusCallback`. An unanswered `<Gather>` falls through to the
//! next verb, so each is followed by a `<Redirect>` to the same URL: a post
//! there without `Digits` or `SpeechResult` is the person's silence.

use std::time::Duration;

use herald_core::session::CallFailure;
use serde_json::Value;

use super::{field, what_twilio_said, Form};
use crate::adapter::{CallOutcome, CallStatus, CallStep, CallTurn, Endpoint, Heard, NewCall};

/// How herald's prompts are spoken: the connection's `language` and
/// `voice` settings (Twilio's defaults if unset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Voice {
    /// A BCP-47 tag such as `en-GB`.
    pub language: Option<String>,
    /// A voice's name, such as `Polly.Amy`.
    pub voice: Option<String>,
}

/// A number in E.164 form, or a SIP URI as it is.
fn address(endpoint: &Endpoint) -> String {
    match endpoint {
        Endpoint::Phone(digits) => format!("+{digits}"),
        Endpoint::Sip(uri) => uri.clone(),
    }
}

/// The form of `POST .../Calls.json` for `call`.
pub fn call_form(call: &NewCall) -> Form {
    let mut form: Form = vec![
        ("To".into(), address(&call.to)),
        (
            "From".into(),
            format!("+{}", call.from.trim_start_matches('+')),
        ),
        ("Url".into(), call.answer_url.clone()),
        ("Method".into(), "POST".into()),
        ("StatusCallback".into(), call.event_url.clone()),
        ("StatusCallbackMethod".into(), "POST".into()),
    ];
    for event in ["initiated", "ringing", "answered", "completed"] {
        form.push(("StatusCallbackEvent".into(), event.into()));
    }
    form.push((
        "Timeout".into(),
        call.ringing_timer.clamp(5, 600).to_string(),
    ));
    if call.machine_detection.is_some() {
        form.push(("MachineDetection".into(), "Enable".into()));
    }
    form
}

/// The outcome of Twilio's answer of `status` with body `text` to a
/// request about a call.
pub fn classify(status: u16, retry_after: Option<Duration>, text: &str) -> CallOutcome {
    if (200..300).contains(&status) {
        let id = serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| v.get("sid")?.as_str().map(str::to_owned));
        return CallOutcome::Done { id };
    }
    let (code, said) = what_twilio_said(text);
    let reason = |what: &str| super::reason(what, status, code, &said);
    match (status, code) {
        (429, _) | (_, Some(20429)) => CallOutcome::Throttled { retry_after },
        (500..=599, _) => CallOutcome::Unavailable {
            reason: reason("failed"),
        },
        _ => CallOutcome::Refused {
            reason: reason("refused the call"),
        },
    }
}

/// Escapes text for XML, in an element or an attribute.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters have no place in XML 1.0.
            c if c.is_control() && !matches!(c, '\n' | '\r' | '\t') => {}
            c => out.push(c),
        }
    }
    out
}

const HEAD: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response>"#;
const TAIL: &str = "</Response>";

/// The TwiML that ends a call.
pub const HANG_UP: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response><Hangup/></Response>"#;

fn say(out: &mut String, text: &str, voice: &Voice) {
    out.push_str("<Say");
    if let Some(name) = &voice.voice {
        out.push_str(&format!(r#" voice="{}""#, escape(name)));
    }
    if let Some(language) = &voice.language {
        out.push_str(&format!(r#" language="{}""#, escape(language)));
    }
    // Twilio reads at most 4 096 characters of one <Say>.
    let text: String = text.chars().take(4096).collect();
    out.push_str(&format!(">{}</Say>", escape(&text)));
}

/// The TwiML of a call's `turn`: each step, then a `<Gather>` of the
/// answer and a `<Redirect>` for silence; a turn that collects nothing
/// hangs up once it has said its words (or handed the call over).
pub fn twiml(turn: &CallTurn, voice: &Voice) -> String {
    let mut out = HEAD.to_owned();
    for step in &turn.steps {
        match step {
            CallStep::Say(text) => say(&mut out, text, voice),
            CallStep::Connect { to, from } => {
                let caller = format!("+{}", from.trim_start_matches('+'));
                out.push_str(&format!(r#"<Dial callerId="{}">"#, escape(&caller)));
                match Endpoint::parse(to) {
                    Endpoint::Phone(digits) => {
                        out.push_str(&format!("<Number>+{}</Number>", escape(&digits)))
                    }
                    Endpoint::Sip(uri) => out.push_str(&format!("<Sip>{}</Sip>", escape(&uri))),
                }
                out.push_str("</Dial>");
            }
        }
    }
    match &turn.listen {
        Some(listen) => {
            let awaited = &listen.awaited;
            let input = match (awaited.dtmf, awaited.speech) {
                (true, true) => "dtmf speech",
                (false, true) => "speech",
                _ => "dtmf",
            };
            let url = escape(&listen.answer_url);
            let seconds = (awaited.timeout.as_secs_f32().ceil() as u32).clamp(1, 60);
            out.push_str(&format!(
                r#"<Gather input="{input}" action="{url}" method="POST" timeout="{seconds}""#
            ));
            if awaited.dtmf {
                out.push_str(&format!(
                    r##" numDigits="{}" finishOnKey="#""##,
                    awaited.max_digits.clamp(1, 20)
                ));
            }
            if awaited.speech {
                out.push_str(r#" speechTimeout="auto""#);
                if let Some(language) = &voice.language {
                    out.push_str(&format!(r#" language="{}""#, escape(language)));
                }
            }
            out.push_str("/>");
            out.push_str(&format!(r#"<Redirect method="POST">{url}</Redirect>"#));
        }
        None => out.push_str("<Hangup/>"),
    }
    out.push_str(TAIL);
    out
}

/// What herald answers when it cannot answer in time (CONTRACT §11.4): a
/// second's pause, then a fetch of `next_url`.
pub fn hold_on(next_url: &str) -> String {
    format!(
        r#"{HEAD}<Pause length="1"/><Redirect method="POST">{}</Redirect>{TAIL}"#,
        escape(next_url)
    )
}

/// A call status callback, or the request for a call's first TwiML.
#[derive(Debug, Clone, PartialEq)]
pub struct CallReport {
    pub call_sid: String,
    /// Twilio's word for the call's status.
    pub status: String,
    /// Who or what answered, when machine detection was asked for.
    pub answered_by: Option<String>,
    /// The SIP response that ended a failed call.
    pub sip_response_code: Option<u16>,
    /// The callback's place among the call's callbacks.
    pub sequence_number: Option<u64>,
}

impl CallReport {
    /// Reads a callback's form; `None` if it is not one.
    pub fn from_form(form: &Form) -> Option<CallReport> {
        Some(CallReport {
            call_sid: field(form, "CallSid")?.to_owned(),
            status: field(form, "CallStatus")?.to_owned(),
            answered_by: field(form, "AnsweredBy").map(str::to_owned),
            sip_response_code: field(form, "SipResponseCode").and_then(|c| c.parse().ok()),
            sequence_number: field(form, "SequenceNumber").and_then(|n| n.parse().ok()),
        })
    }

    /// Whether an answering machine (or a fax) answered.
    pub fn by_machine(&self) -> bool {
        self.answered_by
            .as_deref()
            .is_some_and(|by| by.starts_with("machine") || by == "fax")
    }

    /// What the status means for the session (CHANNELS §6); `None` for a
    /// status herald does not know.
    pub fn status(&self) -> Option<CallStatus> {
        Some(match self.status.as_str() {
            "queued" | "initiated" | "ringing" | "in-progress" => CallStatus::Progress,
            "completed" => CallStatus::Completed,
            "busy" => CallStatus::NotAnswered(CallFailure::Busy),
            "no-answer" => CallStatus::NotAnswered(CallFailure::Timeout),
            "canceled" => CallStatus::NotAnswered(CallFailure::Cancelled),
            "failed" => match self.sip_response_code {
                Some(403 | 603) => CallStatus::NotAnswered(CallFailure::Rejected),
                _ => CallStatus::NotAnswered(CallFailure::Failed),
            },
            _ => return None,
        })
    }
}

/// What a `<Gather>`'s post (or the `<Redirect>` after it) says the person
/// answered: keys first (a person who keys means it), then words.
pub fn heard(form: &Form) -> Heard {
    if let Some(digits) = field(form, "Digits")
        .map(|d| d.trim_end_matches('#'))
        .filter(|d| !d.is_empty())
    {
        return Heard::Digits(digits.to_owned());
    }
    match field(form, "SpeechResult").map(str::trim) {
        Some(text) if !text.is_empty() => Heard::Speech {
            text: text.to_owned(),
            confidence: field(form, "Confidence")
                .and_then(|c| c.trim().parse::<f64>().ok())
                .filter(|c| c.is_finite())
                .unwrap_or(0.0)
                .clamp(0.0, 1.0),
        },
        _ => Heard::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::{Listen, MachineDetection};
    use herald_core::flow::Awaited;

    fn form_of(pairs: &[(&str, &str)]) -> Form {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_call_asks_for_its_turns_and_every_progress_event() {
        let call = NewCall {
            to: Endpoint::parse("447700900123"),
            from: "447700900001".into(),
            answer_url: "https://h.example/providers/c/voice?session=s".into(),
            event_url: "https://h.example/providers/c/voice_status?session=s".into(),
            machine_detection: Some(MachineDetection::Continue),
            ringing_timer: 60,
        };
        let form = call_form(&call);
        assert_eq!(field(&form, "To"), Some("+447700900123"));
        assert_eq!(field(&form, "From"), Some("+447700900001"));
        assert_eq!(field(&form, "Method"), Some("POST"));
        assert_eq!(field(&form, "Timeout"), Some("60"));
        assert_eq!(field(&form, "MachineDetection"), Some("Enable"));
        let events: Vec<&str> = form
            .iter()
            .filter(|(k, _)| k == "StatusCallbackEvent")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(events, ["initiated", "ringing", "answered", "completed"]);
        let sip = NewCall {
            to: Endpoint::parse("sip:ada@pbx.example.com"),
            machine_detection: None,
            ..call
        };
        let form = call_form(&sip);
        assert_eq!(field(&form, "To"), Some("sip:ada@pbx.example.com"));
        assert_eq!(field(&form, "MachineDetection"), None);
    }

    #[test]
    fn a_turn_says_then_gathers_then_redirects_for_silence() {
        let voice = Voice {
            language: Some("en-GB".into()),
            voice: Some("Polly.Amy".into()),
        };
        let turn = CallTurn {
            steps: vec![CallStep::Say("Press 1 & speak <now>".into())],
            listen: Some(Listen {
                awaited: Awaited {
                    dtmf: true,
                    speech: true,
                    max_digits: 4,
                    timeout: Duration::from_secs(8),
                },
                answer_url: "https://h.example/providers/c/input?session=s&turn=3".into(),
            }),
        };
        assert_eq!(
            twiml(&turn, &voice),
            concat!(
                r#"<?xml version="1.0" encoding="UTF-8"?><Response>"#,
                r#"<Say voice="Polly.Amy" language="en-GB">Press 1 &amp; speak &lt;now&gt;</Say>"#,
                r#"<Gather input="dtmf speech" action="https://h.example/providers/c/input?session=s&amp;turn=3" method="POST" timeout="8""#,
                r##" numDigits="4" finishOnKey="#" speechTimeout="auto" language="en-GB"/>"##,
                r#"<Redirect method="POST">https://h.example/providers/c/input?session=s&amp;turn=3</Redirect>"#,
                r#"</Response>"#
            )
        );
    }

    #[test]
    fn a_turn_without_an_answer_hangs_up_after_its_steps() {
        let turn = CallTurn {
            steps: vec![
                CallStep::Say("Putting you through.".into()),
                CallStep::Connect {
                    to: "447700900999".into(),
                    from: "447700900001".into(),
                },
            ],
            listen: None,
        };
        assert_eq!(
            twiml(&turn, &Voice::default()),
            concat!(
                r#"<?xml version="1.0" encoding="UTF-8"?><Response>"#,
                r#"<Say>Putting you through.</Say>"#,
                r#"<Dial callerId="+447700900001"><Number>+447700900999</Number></Dial>"#,
                r#"<Hangup/></Response>"#
            )
        );
        assert_eq!(twiml(&CallTurn::default(), &Voice::default()), HANG_UP);
        assert!(hold_on("https://h.example/x?a=1&b=2").contains(
            r#"<Pause length="1"/><Redirect method="POST">https://h.example/x?a=1&amp;b=2</Redirect>"#
        ));
    }

    #[test]
    fn call_statuses_map_as_the_design_says() {
        let report = |status: &str, extra: &[(&str, &str)]| {
            let mut form = form_of(&[("CallSid", "CA1"), ("CallStatus", status)]);
            form.extend(form_of(extra));
            CallReport::from_form(&form).unwrap()
        };
        use CallFailure::*;
        assert_eq!(report("ringing", &[]).status(), Some(CallStatus::Progress));
        assert_eq!(
            report("completed", &[]).status(),
            Some(CallStatus::Completed)
        );
        assert_eq!(
            report("busy", &[]).status(),
            Some(CallStatus::NotAnswered(Busy))
        );
        assert_eq!(
            report("no-answer", &[]).status(),
            Some(CallStatus::NotAnswered(Timeout))
        );
        assert_eq!(
            report("canceled", &[]).status(),
            Some(CallStatus::NotAnswered(Cancelled))
        );
        assert_eq!(
            report("failed", &[("SipResponseCode", "603")]).status(),
            Some(CallStatus::NotAnswered(Rejected))
        );
        assert_eq!(
            report("failed", &[("SipResponseCode", "500")]).status(),
            Some(CallStatus::NotAnswered(Failed))
        );
        assert_eq!(report("bogus", &[]).status(), None);
        assert!(report("completed", &[("AnsweredBy", "machine_end_beep")]).by_machine());
        assert!(report("in-progress", &[("AnsweredBy", "fax")]).by_machine());
        assert!(!report("in-progress", &[("AnsweredBy", "human")]).by_machine());
        let sequenced = report("ringing", &[("SequenceNumber", "2")]);
        assert_eq!(sequenced.sequence_number, Some(2));
    }

    #[test]
    fn keys_come_before_words_and_silence_is_nothing() {
        assert_eq!(
            heard(&form_of(&[("Digits", "42#"), ("SpeechResult", "four")])),
            Heard::Digits("42".into())
        );
        assert_eq!(
            heard(&form_of(&[
                ("SpeechResult", " yes please "),
                ("Confidence", "0.91")
            ])),
            Heard::Speech {
                text: "yes please".into(),
                confidence: 0.91
            }
        );
        assert_eq!(heard(&form_of(&[("CallSid", "CA1")])), Heard::Nothing);
    }

    #[test]
    fn answers_about_calls_are_classified() {
        assert_eq!(
            classify(201, None, r#"{"sid": "CA0123"}"#),
            CallOutcome::Done {
                id: Some("CA0123".into())
            }
        );
        assert_eq!(
            classify(429, None, r#"{"code": 20429}"#),
            CallOutcome::Throttled { retry_after: None }
        );
        assert!(matches!(
            classify(
                400,
                None,
                r#"{"code": 21215, "message": "Geo permissions"}"#
            ),
            CallOutcome::Refused { .. }
        ));
    }
}
