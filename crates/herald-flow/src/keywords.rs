//! The opt-out keywords of SMS and WhatsApp (CONTRACT §13.2): STOP and
//! the words like it opt a person out, START and the words like it undo
//! that, HELP and INFO ask what the messages are.
//!
//! A message is a keyword only when it is the whole message (in any case,
//! with spaces and punctuation around it ignored): "stop" is one, "please
//! stop calling" is not, and reaches the flow like any answer.
//!
//! Some keywords are also ordinary answers: the appointment reminder asks
//! whether to confirm, reschedule or cancel, and "cancel" is an opt-out
//! word. A keyword that the question now waiting lists among its own
//! answers (an example of one of its intents, or a value or synonym of its
//! entity) is that answer, and reaches the flow. STOP itself is never an
//! answer: it always opts the person out, whatever the flow asks.
//!
//! YES undoes an opt-out only for a person who has opted out; for anyone
//! else it is an answer like any other, which the driver decides with the
//! store.

use herald_core::flow::{FlowDefinition, NodeKind};

use crate::{FlowState, Wait};

/// What a keyword asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyword {
    /// Opt out: STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE,
    /// OPTOUT.
    Stop,
    /// Opt back in: START, UNSTOP, and YES from a person who opted out.
    Start,
    /// What the messages are: HELP, INFO.
    Help,
}

const STOP_WORDS: &[&str] = &[
    "STOP",
    "STOPALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "REVOKE",
    "OPTOUT",
];
const START_WORDS: &[&str] = &["START", "UNSTOP", "YES"];
const HELP_WORDS: &[&str] = &["HELP", "INFO"];

/// The message's one word, upper-cased, with the spaces and punctuation
/// around it taken off; `None` when it holds more than one word.
fn one_word(text: &str) -> Option<String> {
    let word = text.trim_matches(|c: char| c.is_whitespace() || c.is_ascii_punctuation());
    (!word.is_empty() && !word.contains(char::is_whitespace)).then(|| word.to_uppercase())
}

/// The keyword `text` is, if it is one.
pub fn keyword(text: &str) -> Option<Keyword> {
    let word = one_word(text)?;
    let is = |words: &[&str]| words.contains(&word.as_str());
    if is(STOP_WORDS) {
        Some(Keyword::Stop)
    } else if is(START_WORDS) {
        Some(Keyword::Start)
    } else if is(HELP_WORDS) {
        Some(Keyword::Help)
    } else {
        None
    }
}

/// Whether `text` is YES, which opts back in only a person who opted out.
pub fn is_yes(text: &str) -> bool {
    one_word(text).as_deref() == Some("YES")
}

/// Whether the question the conversation in `state` waits on lists `text`
/// among its own answers, so that the flow, not the keyword, hears it.
/// STOP is never one.
pub fn answers_waiting(flow: &FlowDefinition, state: &FlowState, text: &str) -> bool {
    let Some(word) = one_word(text) else {
        return false;
    };
    if word == "STOP" || !matches!(state.waiting, Some(Wait::Input { .. })) {
        return false;
    }
    let Some(node) = state.node.as_deref() else {
        return false;
    };
    let Some(kind) = flow
        .nodes
        .iter()
        .chain(flow.subflows.iter().flat_map(|s| s.nodes.iter()))
        .find(|n| n.id == node)
        .map(|n| &n.kind)
    else {
        return false;
    };
    let listed = |answer: &String| one_word(answer).as_deref() == Some(word.as_str());
    match kind {
        NodeKind::Classify { intents, .. } => intents.iter().any(|i| i.examples.iter().any(listed)),
        NodeKind::CollectInput { entity, .. } => flow
            .entities
            .iter()
            .filter(|e| &e.name == entity)
            .flat_map(|e| e.values.iter())
            .any(|v| listed(&v.value) || v.synonyms.iter().any(listed)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(json: serde_json::Value) -> FlowDefinition {
        serde_json::from_value(json).unwrap()
    }

    fn waiting_at(node: &str) -> FlowState {
        FlowState {
            node: Some(node.into()),
            waiting: Some(Wait::Input { until: u64::MAX }),
            ..FlowState::default()
        }
    }

    #[test]
    fn a_keyword_is_the_whole_message_in_any_case() {
        assert_eq!(keyword("STOP"), Some(Keyword::Stop));
        assert_eq!(keyword("  stop. "), Some(Keyword::Stop));
        assert_eq!(keyword("Unsubscribe!"), Some(Keyword::Stop));
        assert_eq!(keyword("optout"), Some(Keyword::Stop));
        assert_eq!(keyword("unstop"), Some(Keyword::Start));
        assert_eq!(keyword("Start"), Some(Keyword::Start));
        assert_eq!(keyword("yes"), Some(Keyword::Start));
        assert_eq!(keyword("help?"), Some(Keyword::Help));
        assert_eq!(keyword("INFO"), Some(Keyword::Help));
        assert_eq!(keyword("please stop"), None);
        assert_eq!(keyword("stopped"), None);
        assert_eq!(keyword("opt out"), None);
        assert_eq!(keyword("..."), None);
        assert!(is_yes("Yes!"));
        assert!(!is_yes("yes please"));
    }

    #[test]
    fn a_keyword_the_waiting_question_lists_is_its_answer_but_stop_never_is() {
        let reminder = flow(serde_json::json!({"format": 1, "start": "ask", "nodes": [
            {"id": "ask", "type": "classify", "prompt": "Confirm or cancel?",
             "intents": [{"name": "confirm", "examples": ["yes", "confirm"], "next": "end"},
                         {"name": "cancel", "examples": ["Cancel", "cancel it"], "next": "end"},
                         {"name": "halt", "examples": ["stop"], "next": "end"}],
             "fallback": "end"},
            {"id": "pick", "type": "collect_input", "prompt": "Which?", "entity": "choice",
             "parameter": "CHOICE", "success": "end", "invalid": "end", "no_input": "end"},
            {"id": "end", "type": "end"}
        ], "entities": [{"name": "choice", "values": [{"value": "help desk", "synonyms": ["info"]}]}]}));
        let asked = waiting_at("ask");
        assert!(answers_waiting(&reminder, &asked, "cancel"));
        assert!(answers_waiting(&reminder, &asked, " CANCEL! "));
        assert!(answers_waiting(&reminder, &asked, "yes"));
        assert!(
            !answers_waiting(&reminder, &asked, "stop"),
            "STOP always acts"
        );
        assert!(!answers_waiting(&reminder, &asked, "quit"));
        assert!(answers_waiting(&reminder, &waiting_at("pick"), "Info"));
        assert!(!answers_waiting(&reminder, &waiting_at("pick"), "help"));
        // A conversation not waiting on a question hears keywords.
        let idle = FlowState {
            waiting: None,
            ..asked.clone()
        };
        assert!(!answers_waiting(&reminder, &idle, "cancel"));
    }
}
