//! The flow runtime, node by node and exit by exit, through `step` alone:
//! no sockets, no clock, every time given.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_core::flow::FlowDefinition;
use herald_core::Channel;
use herald_flow::{
    step, Action, EndReason, Event, FlowState, Input, InputMode, Wait, WebhookRequest,
    MAX_NODES_PER_STEP, MAX_SUBFLOW_DEPTH,
};
use serde_json::{json, Value};

/// Wednesday 20 November 2024, 00:00:00 UTC.
const T0: u64 = 1_732_060_800;

fn flow(nodes: Value) -> FlowDefinition {
    flow_with(nodes, json!({}))
}

/// A flow of `nodes` starting at the first, with the other top-level
/// fields in `extra`.
fn flow_with(nodes: Value, extra: Value) -> FlowDefinition {
    let start = nodes[0]["id"].clone();
    let mut doc = json!({"format": 1, "start": start, "nodes": nodes});
    for (k, v) in extra.as_object().unwrap() {
        doc[k] = v.clone();
    }
    serde_json::from_value(doc).expect("a well-formed flow")
}

/// A conversation under test: its flow, its state and its clock.
struct Talk {
    flow: FlowDefinition,
    state: FlowState,
    now: u64,
}

impl Talk {
    fn new(flow: FlowDefinition) -> Self {
        Talk {
            flow,
            state: FlowState::default(),
            now: T0,
        }
    }

    fn time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.now)
    }

    fn send(&mut self, event: Event) -> Vec<Action> {
        let (state, actions) = step(&self.flow, self.state.clone(), event, self.time());
        self.state = state;
        actions
    }

    fn start_on(&mut self, channel: Channel, parameters: &[(&str, &str)]) -> Vec<Action> {
        let parameters = parameters
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.send(Event::Started {
            channel,
            parameters,
        })
    }

    fn start(&mut self) -> Vec<Action> {
        self.start_on(Channel::Sms, &[("RECIPIENT", "+15550100")])
    }

    fn say(&mut self, text: &str) -> Vec<Action> {
        self.input(InputMode::Text, text)
    }

    fn input(&mut self, mode: InputMode, text: &str) -> Vec<Action> {
        self.send(Event::Input(Input {
            mode,
            text: text.into(),
        }))
    }

    /// Moves the clock on by `secs` and fires the timer.
    fn wait(&mut self, secs: u64) -> Vec<Action> {
        self.now += secs;
        self.send(Event::Timer)
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.state.parameters.get(name).map(String::as_str)
    }

    fn at(&self) -> &str {
        self.state.node.as_deref().unwrap_or("")
    }

    /// The step is ignored: no actions, the state unchanged.
    fn assert_ignores(&mut self, event: Event) {
        let before = self.state.clone();
        let actions = self.send(event.clone());
        assert_eq!(actions, vec![], "{event:?}");
        assert_eq!(self.state, before, "{event:?}");
    }
}

fn entered(node: &str) -> Action {
    Action::Entered { node: node.into() }
}

fn message(text: &str) -> Action {
    Action::SendMessage { text: text.into() }
}

fn speak(text: &str) -> Action {
    Action::Speak { text: text.into() }
}

fn set(name: &str, value: &str) -> Action {
    Action::ParameterSet {
        name: name.into(),
        value: value.into(),
    }
}

fn end(reason: EndReason) -> Action {
    Action::End { reason }
}

fn last_input(text: &str) -> Action {
    set("LAST_INPUT", text)
}

fn ms(secs: u64) -> u64 {
    secs * 1000
}

// ---- starting ---------------------------------------------------------------

#[test]
fn the_default_flows_greet_and_end() {
    for (channel, greeting) in [
        (
            Channel::Voice,
            speak("Hello, this is an automated call from herald. Goodbye."),
        ),
        (
            Channel::Sms,
            message("Hello, this is an automated message from herald."),
        ),
    ] {
        let mut talk = Talk::new(FlowDefinition::default_for(channel));
        let actions = talk.start_on(channel, &[]);
        assert_eq!(
            actions,
            vec![
                entered("greet"),
                greeting,
                entered("end"),
                end(EndReason::Completed)
            ]
        );
        assert!(talk.state.ended);
        assert_eq!(talk.state.seq, 1);
        assert_eq!(talk.state.channel, Some(channel));
        assert_eq!(talk.state.next_deadline(), None);
    }
    let mut talk = Talk::new(FlowDefinition::default_for(Channel::Whatsapp));
    let actions = talk.start_on(Channel::Whatsapp, &[]);
    assert_eq!(actions, vec![entered("end"), end(EndReason::Completed)]);
}

#[test]
fn started_fills_parameters_and_the_lifetime() {
    let nodes = json!([
        {"id": "hi", "type": "send_message", "text": "Hi $NAME, $LANG, [$UNSET]", "next": "ask"},
        {"id": "ask", "type": "collect_input", "prompt": "?", "entity": "any",
         "parameter": "A", "success": "ask", "invalid": "ask", "no_input": "ask"}
    ]);
    let params = json!({"parameters": [
        {"name": "NAME", "default": "there"},
        {"name": "LANG", "default": "en"},
        {"name": "UNSET"}
    ]});
    let mut talk = Talk::new(flow_with(nodes.clone(), params.clone()));
    let actions = talk.start_on(Channel::Sms, &[("LANG", "fr"), ("EXTRA", "x")]);
    assert_eq!(
        actions,
        vec![
            entered("hi"),
            message("Hi there, fr, []"),
            entered("ask"),
            message("?")
        ]
    );
    let expected: BTreeMap<String, String> = [("NAME", "there"), ("LANG", "fr"), ("EXTRA", "x")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(talk.state.parameters, expected);
    // Messaging: a day to live, five minutes to answer.
    assert_eq!(talk.state.expires_at, Some(ms(T0 + 86_400)));
    assert_eq!(
        talk.state.waiting,
        Some(Wait::Input {
            until: ms(T0 + 300)
        })
    );
    assert_eq!(
        talk.state.next_deadline(),
        Some(UNIX_EPOCH + Duration::from_secs(T0 + 300))
    );

    // Voice: an hour to live, ten seconds to answer, prompts spoken.
    let mut talk = Talk::new(flow_with(nodes.clone(), params));
    assert_eq!(talk.start_on(Channel::Voice, &[])[3], speak("?"));
    assert_eq!(talk.state.expires_at, Some(ms(T0 + 3600)));
    assert_eq!(talk.state.waiting, Some(Wait::Input { until: ms(T0 + 10) }));

    // A flow's own lifetime.
    let mut talk = Talk::new(flow_with(nodes, json!({"max_duration_secs": 60})));
    talk.start();
    assert_eq!(talk.state.expires_at, Some(ms(T0 + 60)));
}

#[test]
fn a_second_start_and_events_before_the_start_are_ignored() {
    let mut talk = Talk::new(flow(json!([
        {"id": "ask", "type": "collect_input", "prompt": "?", "entity": "any",
         "parameter": "A", "success": "ask", "invalid": "ask", "no_input": "ask"}
    ])));
    for event in [
        Event::Input(Input {
            mode: InputMode::Text,
            text: "hi".into(),
        }),
        Event::Timer,
        Event::WebhookAnswered {
            status: 200,
            body: "{}".into(),
        },
        Event::WebhookFailed { error: "x".into() },
        Event::LiveAgentMessage { text: "x".into() },
        Event::LiveAgentHandBack,
        Event::LiveAgentEnd,
    ] {
        talk.assert_ignores(event);
    }
    assert_eq!(talk.state, FlowState::default());
    talk.start();
    assert_eq!(talk.state.seq, 1);
    talk.assert_ignores(Event::Started {
        channel: Channel::Voice,
        parameters: BTreeMap::new(),
    });
    assert_eq!(talk.state.channel, Some(Channel::Sms));
}

#[test]
fn an_ended_conversation_ignores_everything() {
    let mut talk = Talk::new(FlowDefinition::default_for(Channel::Sms));
    talk.start();
    assert!(talk.state.ended);
    for event in [
        Event::Started {
            channel: Channel::Sms,
            parameters: BTreeMap::new(),
        },
        Event::Input(Input {
            mode: InputMode::Text,
            text: "hi".into(),
        }),
        Event::Timer,
        Event::WebhookAnswered {
            status: 200,
            body: "{}".into(),
        },
        Event::WebhookFailed { error: "x".into() },
        Event::LiveAgentMessage { text: "x".into() },
        Event::LiveAgentHandBack,
        Event::LiveAgentEnd,
    ] {
        talk.now += 1_000_000;
        talk.assert_ignores(event);
    }
}

#[test]
fn seq_counts_the_steps_taken() {
    let mut talk = Talk::new(flow(json!([
        {"id": "ask", "type": "collect_input", "prompt": "?", "entity": "number",
         "parameter": "N", "retries": 9, "success": "ask", "invalid": "ask", "no_input": "ask"}
    ])));
    talk.start();
    assert_eq!(talk.state.seq, 1);
    talk.say("what?");
    talk.say("3");
    assert_eq!(talk.state.seq, 3);
    // A timer with nothing due is ignored.
    talk.assert_ignores(Event::Timer);
    talk.wait(300);
    assert_eq!(talk.state.seq, 4);
}

// ---- speaking, sending, parameters ------------------------------------------------

#[test]
fn speak_renders_its_text() {
    let mut talk = Talk::new(flow(json!([
        {"id": "a", "type": "speak", "text": "Costs $$5 for ${WHO}s, $5 $NOPE.", "next": "b"},
        {"id": "b", "type": "end"}
    ])));
    let actions = talk.start_on(Channel::Voice, &[("WHO", "cat")]);
    assert_eq!(actions[1], speak("Costs $5 for cats, $5 ."));
}

#[test]
fn set_parameter_counter_and_reset() {
    let mut talk = Talk::new(flow(json!([
        {"id": "s", "type": "set_parameter", "parameter": "GREETING", "value": "hi $NAME", "next": "c1"},
        {"id": "c1", "type": "counter", "counter": "N", "next": "c2"},
        {"id": "c2", "type": "counter", "counter": "N", "step": 5, "next": "c3"},
        {"id": "c3", "type": "counter", "counter": "WORD", "step": -2, "next": "c4"},
        {"id": "c4", "type": "counter", "counter": "BIG", "next": "r"},
        {"id": "r", "type": "reset_counter", "counter": "OLD", "next": "e"},
        {"id": "e", "type": "end"}
    ])));
    let actions = talk.start_on(
        Channel::Sms,
        &[
            ("NAME", "Ada"),
            ("WORD", "many"),
            ("OLD", "41"),
            ("BIG", &i64::MAX.to_string()),
        ],
    );
    assert_eq!(
        actions,
        vec![
            entered("s"),
            set("GREETING", "hi Ada"),
            entered("c1"),
            set("N", "1"),
            entered("c2"),
            set("N", "6"),
            entered("c3"),
            set("WORD", "-2"),
            entered("c4"),
            set("BIG", &i64::MAX.to_string()),
            entered("r"),
            set("OLD", "0"),
            entered("e"),
            end(EndReason::Completed),
        ]
    );
    assert_eq!(talk.param("N"), Some("6"));
}

#[test]
fn send_sms_and_email() {
    let mut talk = Talk::new(flow(json!([
        {"id": "a", "type": "send_sms", "text": "Code $CODE", "next": "b"},
        {"id": "b", "type": "send_sms", "to": "+1555$EXT", "text": "x", "next": "c"},
        {"id": "c", "type": "send_email", "to": "$EMAIL", "subject": "Re: $CODE",
         "body": "Dear $NAME", "next": "d"},
        {"id": "d", "type": "end"}
    ])));
    let actions = talk.start_on(
        Channel::Voice,
        &[
            ("RECIPIENT", "+15550100"),
            ("CODE", "42"),
            ("EXT", "0199"),
            ("EMAIL", "a@b.io"),
        ],
    );
    assert_eq!(
        actions,
        vec![
            entered("a"),
            Action::SendSms {
                to: "+15550100".into(),
                text: "Code 42".into()
            },
            entered("b"),
            Action::SendSms {
                to: "+15550199".into(),
                text: "x".into()
            },
            entered("c"),
            Action::SendEmail {
                to: "a@b.io".into(),
                subject: "Re: 42".into(),
                body: "Dear ".into()
            },
            entered("d"),
            end(EndReason::Completed),
        ]
    );
}

#[test]
fn transfer_hands_the_call_over_and_ends() {
    let mut talk = Talk::new(flow(json!([
        {"id": "t", "type": "transfer", "to": "sip:$DESK@example.com"}
    ])));
    let actions = talk.start_on(Channel::Voice, &[("DESK", "sales")]);
    assert_eq!(
        actions,
        vec![
            entered("t"),
            Action::Transfer {
                to: "sip:sales@example.com".into()
            },
            end(EndReason::Transferred),
        ]
    );
    assert!(talk.state.ended);
}

#[test]
fn a_missing_node_ends_the_conversation() {
    let mut talk = Talk::new(flow(json!([
        {"id": "a", "type": "send_message", "text": "hi", "next": "nowhere"}
    ])));
    let actions = talk.start();
    assert_eq!(
        actions,
        vec![entered("a"), message("hi"), end(EndReason::Completed)]
    );
    assert!(talk.state.ended);
}

#[test]
fn a_step_passes_through_at_most_the_bound() {
    let mut talk = Talk::new(flow(json!([
        {"id": "a", "type": "counter", "counter": "N", "next": "b"},
        {"id": "b", "type": "conditions", "branches": [], "default": "a"}
    ])));
    let actions = talk.start();
    let entries = actions
        .iter()
        .filter(|a| matches!(a, Action::Entered { .. }))
        .count();
    assert_eq!(entries, MAX_NODES_PER_STEP);
    assert_eq!(actions.last(), Some(&end(EndReason::Looped)));
    assert!(talk.state.ended);
    assert_eq!(
        talk.param("N"),
        Some((MAX_NODES_PER_STEP / 2).to_string().as_str())
    );
}

// ---- conditions -------------------------------------------------------------------

fn conditions_flow(branches: Value) -> FlowDefinition {
    flow(json!([
        {"id": "c", "type": "conditions", "branches": branches, "default": "dflt"},
        {"id": "one", "type": "end"},
        {"id": "two", "type": "end"},
        {"id": "dflt", "type": "end"}
    ]))
}

/// Where a Conditions node sends a conversation with `parameters`.
fn branch_taken(branches: &Value, parameters: &[(&str, &str)]) -> String {
    let mut talk = Talk::new(conditions_flow(branches.clone()));
    talk.start_on(Channel::Sms, parameters);
    talk.at().to_owned()
}

#[test]
fn conditions_take_the_first_branch_that_holds() {
    let branches = json!([
        {"rules": [{"parameter": "AGE", "op": "ge", "value": "$LIMIT"},
                   {"parameter": "NAME", "op": "is_set"}], "next": "one"},
        {"match": "any", "rules": [{"parameter": "AGE", "op": "eq", "value": "7.0"},
                                   {"parameter": "NAME", "op": "starts_with", "value": "Bo"}],
         "next": "two"}
    ]);
    assert_eq!(
        branch_taken(
            &branches,
            &[("AGE", "18"), ("LIMIT", "18"), ("NAME", "Ada")]
        ),
        "one"
    );
    assert_eq!(
        branch_taken(&branches, &[("AGE", "18"), ("LIMIT", "18")]),
        "dflt"
    );
    assert_eq!(
        branch_taken(&branches, &[("AGE", "18"), ("LIMIT", "18"), ("NAME", "")]),
        "dflt"
    );
    assert_eq!(
        branch_taken(&branches, &[("AGE", "7"), ("LIMIT", "18")]),
        "two"
    );
    assert_eq!(
        branch_taken(&branches, &[("AGE", "9"), ("LIMIT", "10"), ("NAME", "Bob")]),
        "two"
    );
    assert_eq!(
        branch_taken(&branches, &[("AGE", "9"), ("LIMIT", "10"), ("NAME", "bob")]),
        "dflt"
    );
    // Both hold: the first wins.
    assert_eq!(
        branch_taken(&branches, &[("AGE", "7"), ("LIMIT", "1"), ("NAME", "Bo")]),
        "one"
    );
}

#[test]
fn every_operator_in_a_flow() {
    let cases: &[(&str, &str, Option<&str>, bool)] = &[
        ("eq", "7", Some("7.0"), true),
        ("eq", "a", Some("b"), false),
        ("ne", "a", Some("b"), true),
        ("ne", "2", Some("2.00"), false),
        ("lt", "9", Some("10"), true),
        ("lt", "b", Some("a"), false),
        ("le", "10", Some("10"), true),
        ("gt", "10", Some("9"), true),
        ("gt", "abc", Some("abd"), false),
        ("ge", "1", Some("2"), false),
        ("contains", "hello", Some("ell"), true),
        ("contains", "hello", Some("xyz"), false),
        ("starts_with", "hello", Some("he"), true),
        ("starts_with", "hello", Some("lo"), false),
        ("is_set", "x", None, true),
        ("is_set", "", None, false),
        ("is_not_set", "", None, true),
        ("is_not_set", "x", None, false),
    ];
    for &(op, value, compared, holds) in cases {
        let mut rule = json!({"parameter": "P", "op": op});
        if let Some(c) = compared {
            rule["value"] = json!(c);
        }
        let branches = json!([{"rules": [rule], "next": "one"}]);
        let expected = if holds { "one" } else { "dflt" };
        assert_eq!(
            branch_taken(&branches, &[("P", value)]),
            expected,
            "{value} {op} {compared:?}"
        );
    }
    // An unset parameter is neither set nor anything but "".
    let branches = json!([{"rules": [{"parameter": "NOPE", "op": "is_not_set"}], "next": "one"}]);
    assert_eq!(branch_taken(&branches, &[]), "one");
    // `all` of no rules holds; `any` of none does not.
    assert_eq!(
        branch_taken(&json!([{"rules": [], "next": "one"}]), &[]),
        "one"
    );
    assert_eq!(
        branch_taken(&json!([{"match": "any", "rules": [], "next": "one"}]), &[]),
        "dflt"
    );
}

// ---- collect input --------------------------------------------------------------

fn ask_number(extra: Value) -> FlowDefinition {
    let mut ask = json!({"id": "ask", "type": "collect_input", "prompt": "How many, $NAME?",
        "entity": "number", "parameter": "COUNT",
        "success": "ok", "invalid": "bad", "no_input": "silent"});
    for (k, v) in extra.as_object().unwrap() {
        ask[k] = v.clone();
    }
    flow(json!([
        ask,
        {"id": "ok", "type": "send_message", "text": "Got $COUNT", "next": "end"},
        {"id": "bad", "type": "send_message", "text": "Sorry", "next": "end"},
        {"id": "silent", "type": "send_message", "text": "Hello?", "next": "end"},
        {"id": "end", "type": "end"}
    ]))
}

#[test]
fn collect_input_success() {
    let mut talk = Talk::new(ask_number(json!({})));
    let actions = talk.start_on(Channel::Sms, &[("NAME", "Ada")]);
    assert_eq!(actions, vec![entered("ask"), message("How many, Ada?")]);
    assert_eq!(talk.at(), "ask");
    assert_eq!(
        talk.state.waiting,
        Some(Wait::Input {
            until: ms(T0 + 300)
        })
    );
    talk.now += 5;
    let actions = talk.say("twelve please");
    assert_eq!(
        actions,
        vec![
            last_input("twelve please"),
            set("COUNT", "12"),
            entered("ok"),
            message("Got 12"),
            entered("end"),
            end(EndReason::Completed),
        ]
    );
    assert_eq!(talk.param("LAST_INPUT"), Some("twelve please"));
}

#[test]
fn collect_input_asks_again_then_leaves_by_invalid() {
    let mut talk = Talk::new(ask_number(json!({"retry_prompt": "A number, $NAME?"})));
    talk.start_on(Channel::Sms, &[("NAME", "Ada")]);
    for (i, answer) in ["lots", "many"].into_iter().enumerate() {
        talk.now += 100;
        let actions = talk.say(answer);
        assert_eq!(actions, vec![last_input(answer), message("A number, Ada?")]);
        assert_eq!(talk.state.retries, i as u32 + 1);
        // A fresh deadline each time.
        assert_eq!(
            talk.state.waiting,
            Some(Wait::Input {
                until: ms(talk.now + 300)
            })
        );
    }
    let actions = talk.say("heaps");
    assert_eq!(
        actions,
        vec![
            last_input("heaps"),
            entered("bad"),
            message("Sorry"),
            entered("end"),
            end(EndReason::Completed),
        ]
    );
    assert_eq!(talk.state.retries, 0);
}

#[test]
fn collect_input_retries_setting_and_prompt_reuse() {
    // No retry prompt: the prompt again. No retries: invalid at once.
    let mut talk = Talk::new(ask_number(json!({"retries": 1})));
    talk.start_on(Channel::Voice, &[]);
    assert_eq!(
        talk.say("what"),
        vec![last_input("what"), speak("How many, ?")]
    );
    assert_eq!(talk.say("what")[1], entered("bad"));

    let mut talk = Talk::new(ask_number(json!({"retries": 0})));
    talk.start();
    assert_eq!(talk.say("what")[1], entered("bad"));

    // A success after a failure resets the count.
    let mut talk = Talk::new(flow(json!([
        {"id": "ask", "type": "collect_input", "prompt": "?", "entity": "number",
         "parameter": "N", "retries": 1, "success": "ask", "invalid": "bad", "no_input": "bad"},
        {"id": "bad", "type": "end"}
    ])));
    talk.start();
    talk.say("x");
    assert_eq!(talk.state.retries, 1);
    talk.say("1");
    assert_eq!((talk.at(), talk.state.retries), ("ask", 0));
    talk.say("x");
    assert_eq!((talk.at(), talk.state.retries), ("ask", 1));
}

#[test]
fn collect_input_no_input() {
    let mut talk = Talk::new(ask_number(json!({"timeout_secs": 30})));
    talk.start_on(Channel::Voice, &[]);
    assert_eq!(talk.state.waiting, Some(Wait::Input { until: ms(T0 + 30) }));
    talk.now += 29;
    talk.assert_ignores(Event::Timer);
    let actions = talk.wait(1);
    assert_eq!(
        actions,
        // A send_message node sends, whatever the channel.
        vec![
            entered("silent"),
            message("Hello?"),
            entered("end"),
            end(EndReason::Completed)
        ]
    );
}

#[test]
fn a_provider_s_no_input_leaves_at_once_and_only_a_waiting_node() {
    let mut talk = Talk::new(ask_number(json!({"timeout_secs": 30})));
    talk.assert_ignores(Event::NoInput);
    talk.start_on(Channel::Voice, &[]);
    talk.now += 3;
    let actions = talk.send(Event::NoInput);
    assert_eq!(actions[0], entered("silent"));
    assert!(talk.state.ended);
    talk.assert_ignores(Event::NoInput);
}

#[test]
fn a_waiting_node_says_what_it_accepts() {
    let mut talk = Talk::new(ask_number(json!({"timeout_secs": 30})));
    assert_eq!(
        herald_flow::awaited(&talk.flow, &talk.state, talk.time()),
        None
    );
    talk.start_on(Channel::Voice, &[]);
    talk.now += 4;
    let awaited = herald_flow::awaited(&talk.flow, &talk.state, talk.time()).unwrap();
    assert!(awaited.dtmf && awaited.speech);
    assert_eq!(awaited.max_digits, 20);
    assert_eq!(awaited.timeout, Duration::from_secs(26));

    let yes_no = flow(json!([
        {"id": "ask", "type": "collect_input", "prompt": "?", "entity": "yes_no",
         "parameter": "OK", "success": "end", "invalid": "end", "no_input": "end"},
        {"id": "end", "type": "end"}
    ]));
    let mut talk = Talk::new(yes_no);
    talk.start_on(Channel::Voice, &[]);
    let awaited = herald_flow::awaited(&talk.flow, &talk.state, talk.time()).unwrap();
    assert_eq!(awaited.max_digits, 1);

    let menu = flow_with(
        json!([
            {"id": "ask", "type": "collect_input", "prompt": "?", "entity": "desk",
             "parameter": "D", "success": "end", "invalid": "end", "no_input": "end"},
            {"id": "end", "type": "end"}
        ]),
        json!({"entities": [{"name": "desk", "values": [
            {"value": "sales", "synonyms": ["1", "selling"]},
            {"value": "support", "synonyms": ["22"]}
        ]}]}),
    );
    let mut talk = Talk::new(menu);
    talk.start_on(Channel::Voice, &[]);
    let awaited = herald_flow::awaited(&talk.flow, &talk.state, talk.time()).unwrap();
    assert_eq!(awaited.max_digits, 2);
}

#[test]
fn collect_input_reads_dates_relative_to_now() {
    let mut talk = Talk::new(flow(json!([
        {"id": "ask", "type": "collect_input", "prompt": "When?", "entity": "date",
         "parameter": "DAY", "success": "ok", "invalid": "ok", "no_input": "ok"},
        {"id": "ok", "type": "end"}
    ])));
    talk.start();
    talk.say("tomorrow");
    assert_eq!(talk.param("DAY"), Some("2024-11-21"));
}

#[test]
fn collect_input_with_a_custom_entity_and_keypad() {
    let mut talk = Talk::new(flow_with(
        json!([
            {"id": "ask", "type": "collect_input", "prompt": "Size?", "entity": "size",
             "parameter": "SIZE", "success": "pin", "invalid": "end", "no_input": "end"},
            {"id": "pin", "type": "collect_input", "prompt": "PIN?", "entity": "number",
             "parameter": "PIN", "success": "end", "invalid": "end", "no_input": "end"},
            {"id": "end", "type": "end"}
        ]),
        json!({"entities": [{"name": "size", "values": [
            {"value": "small", "synonyms": ["little"]},
            {"value": "large", "synonyms": ["big"]}
        ]}]}),
    ));
    talk.start_on(Channel::Voice, &[]);
    talk.input(InputMode::Speech, "a big one");
    assert_eq!(talk.param("SIZE"), Some("large"));
    talk.input(InputMode::Dtmf, "0042#");
    assert_eq!(talk.param("PIN"), Some("0042"));
}

#[test]
fn an_empty_prompt_only_waits() {
    let mut talk = Talk::new(flow(json!([
        {"id": "ask", "type": "collect_input", "prompt": "$NOTHING", "entity": "any",
         "parameter": "A", "success": "ask", "invalid": "ask", "no_input": "ask"}
    ])));
    assert_eq!(talk.start(), vec![entered("ask")]);
    assert!(talk.state.waiting.is_some());
}

// ---- classification ---------------------------------------------------------------

fn classify_flow(extra: Value) -> FlowDefinition {
    let mut node = json!({"id": "cl", "type": "classify", "prompt": "How can I help?",
        "intents": [
            {"name": "billing", "examples": ["pay my bill", "billing question"], "next": "bill"},
            {"name": "support", "examples": ["my internet is broken", "support"], "next": "help"}
        ],
        "parameter": "INTENT", "fallback": "fb"});
    for (k, v) in extra.as_object().unwrap() {
        node[k] = v.clone();
    }
    flow(json!([
        node,
        {"id": "bill", "type": "end"},
        {"id": "help", "type": "end"},
        {"id": "fb", "type": "end"},
        {"id": "quiet", "type": "end"}
    ]))
}

#[test]
fn classify_each_intent_and_the_fallback() {
    for (said, node, intent) in [
        ("I want to pay my bill", "bill", Some("billing")),
        ("Billing question!", "bill", Some("billing")),
        ("support please", "help", Some("support")),
        ("the weather", "fb", None),
    ] {
        let mut talk = Talk::new(classify_flow(json!({})));
        let actions = talk.start();
        assert_eq!(actions, vec![entered("cl"), message("How can I help?")]);
        let actions = talk.say(said);
        let mut expected = vec![last_input(said)];
        if let Some(intent) = intent {
            expected.push(set("INTENT", intent));
        }
        expected.extend([entered(node), end(EndReason::Completed)]);
        assert_eq!(actions, expected, "{said}");
    }
}

#[test]
fn classify_threshold_and_no_parameter() {
    let mut talk = Talk::new(classify_flow(json!({"threshold": 0.9, "parameter": null})));
    talk.start();
    // "pay my bill now" scores 3/sqrt(12) ≈ 0.87 against "pay my bill".
    assert_eq!(
        talk.say("pay my bill now"),
        vec![
            last_input("pay my bill now"),
            entered("fb"),
            end(EndReason::Completed)
        ]
    );
    let mut talk = Talk::new(classify_flow(json!({"threshold": 0.9, "parameter": null})));
    talk.start();
    assert_eq!(talk.say("pay my bill")[1], entered("bill"));
    assert_eq!(talk.param("INTENT"), None);
}

#[test]
fn classify_no_input() {
    let mut talk = Talk::new(classify_flow(json!({})));
    talk.start_on(Channel::Voice, &[]);
    assert_eq!(
        talk.wait(10),
        vec![entered("fb"), end(EndReason::Completed)]
    );

    let mut talk = Talk::new(classify_flow(
        json!({"no_input": "quiet", "timeout_secs": 60}),
    ));
    talk.start();
    talk.now += 59;
    talk.assert_ignores(Event::Timer);
    assert_eq!(
        talk.wait(1),
        vec![entered("quiet"), end(EndReason::Completed)]
    );
}

#[test]
fn classify_without_a_prompt_waits_silently() {
    let mut talk = Talk::new(classify_flow(json!({"prompt": null})));
    assert_eq!(talk.start(), vec![entered("cl")]);
    assert!(matches!(talk.state.waiting, Some(Wait::Input { .. })));
}

#[test]
fn classify_an_input_at_once() {
    let mut talk = Talk::new(classify_flow(
        json!({"input": "$LAST_INPUT", "prompt": null}),
    ));
    let actions = talk.start_on(Channel::Sms, &[("LAST_INPUT", "my internet is broken")]);
    assert_eq!(
        actions,
        vec![
            entered("cl"),
            set("INTENT", "support"),
            entered("help"),
            end(EndReason::Completed)
        ]
    );
    let mut talk = Talk::new(classify_flow(json!({"input": "$LAST_INPUT"})));
    let actions = talk.start_on(Channel::Sms, &[]);
    assert_eq!(
        actions,
        vec![entered("cl"), entered("fb"), end(EndReason::Completed)]
    );
}

// ---- context switches ---------------------------------------------------------------

fn switching_flow(ask_extra: Value) -> FlowDefinition {
    let mut ask = json!({"id": "ask", "type": "collect_input", "prompt": "Your date of birth?",
        "entity": "date", "parameter": "DOB",
        "success": "back", "invalid": "back", "no_input": "back"});
    for (k, v) in ask_extra.as_object().unwrap() {
        ask[k] = v.clone();
    }
    flow_with(
        json!([
            {"id": "main", "type": "flow", "flow": "outer", "next": "done"},
            {"id": "done", "type": "end"},
            {"id": "agent", "type": "send_message", "text": "Connecting you", "next": "stop"},
            {"id": "stop", "type": "end"},
            {"id": "cancelled", "type": "end"}
        ]),
        json!({
            "context_switches": [
                {"intent": "agent", "examples": ["talk to a person", "agent"], "next": "agent"},
                {"intent": "cancel", "examples": ["cancel"], "next": "cancelled", "threshold": 0.4}
            ],
            "subflows": [
                {"name": "outer", "start": "o1", "nodes": [
                    {"id": "o1", "type": "flow", "flow": "inner", "next": "o2"},
                    {"id": "o2", "type": "return"}
                ]},
                {"name": "inner", "start": "ask", "nodes": [
                    ask,
                    {"id": "back", "type": "return"}
                ]}
            ]
        }),
    )
}

#[test]
fn sub_flows_call_and_return_nested() {
    let mut talk = Talk::new(switching_flow(json!({})));
    let actions = talk.start();
    assert_eq!(
        actions,
        vec![
            entered("main"),
            entered("o1"),
            entered("ask"),
            message("Your date of birth?")
        ]
    );
    assert_eq!(talk.state.stack, vec!["done".to_string(), "o2".to_string()]);
    let actions = talk.say("21/11/1990");
    assert_eq!(
        actions,
        vec![
            last_input("21/11/1990"),
            set("DOB", "1990-11-21"),
            entered("back"),
            entered("o2"),
            entered("done"),
            end(EndReason::Completed),
        ]
    );
    assert!(talk.state.stack.is_empty());
}

#[test]
fn a_context_switch_from_inside_a_sub_flow_clears_the_stack() {
    let mut talk = Talk::new(switching_flow(json!({})));
    talk.start();
    assert_eq!(talk.state.stack.len(), 2);
    let actions = talk.say("I want to talk to a person");
    assert_eq!(
        actions,
        vec![
            last_input("I want to talk to a person"),
            entered("agent"),
            message("Connecting you"),
            entered("stop"),
            end(EndReason::Completed),
        ]
    );
    assert!(talk.state.stack.is_empty());
}

#[test]
fn context_switch_thresholds_and_opting_out() {
    // "please cancel my order" scores 1/2 against "cancel": above its own
    // threshold of 0.4.
    let mut talk = Talk::new(switching_flow(json!({})));
    talk.start();
    assert_eq!(talk.say("please cancel my order")[1], entered("cancelled"));

    // "agent" scores 1/sqrt(3) < 0.7 in "an agent maybe": not a switch, and
    // not a date either.
    let mut talk = Talk::new(switching_flow(json!({})));
    talk.start();
    let actions = talk.say("an agent maybe");
    assert_eq!(
        actions,
        vec![last_input("an agent maybe"), message("Your date of birth?")]
    );
    assert_eq!(talk.state.stack.len(), 2);

    // A node may turn context switches off.
    let mut talk = Talk::new(switching_flow(json!({"context_switch": false})));
    talk.start();
    let actions = talk.say("agent");
    assert_eq!(
        actions,
        vec![last_input("agent"), message("Your date of birth?")]
    );
}

#[test]
fn a_context_switch_applies_at_a_classify_node() {
    let mut flow = classify_flow(json!({}));
    flow.context_switches = vec![serde_json::from_value(
        json!({"intent": "quit", "examples": ["stop"], "next": "quiet"}),
    )
    .unwrap()];
    let mut talk = Talk::new(flow.clone());
    talk.start();
    assert_eq!(talk.say("STOP")[1], entered("quiet"));
    let mut talk = Talk::new(flow);
    talk.start();
    assert_eq!(talk.say("support")[1], set("INTENT", "support"));
}

#[test]
fn returning_with_no_sub_flow_ends_and_a_missing_sub_flow_ends() {
    let mut talk = Talk::new(flow(json!([{"id": "r", "type": "return"}])));
    assert_eq!(talk.start(), vec![entered("r"), end(EndReason::Completed)]);
    let mut talk = Talk::new(flow(json!([
        {"id": "f", "type": "flow", "flow": "nope", "next": "e"},
        {"id": "e", "type": "end"}
    ])));
    assert_eq!(talk.start(), vec![entered("f"), end(EndReason::Completed)]);
    assert!(talk.state.ended);
}

#[test]
fn sub_flows_nest_only_so_deep() {
    // A sub-flow that calls itself after each answer.
    let mut talk = Talk::new(flow_with(
        json!([{"id": "main", "type": "flow", "flow": "again", "next": "e"},
               {"id": "e", "type": "end"}]),
        json!({"subflows": [{"name": "again", "start": "ask", "nodes": [
            {"id": "ask", "type": "collect_input", "prompt": "?", "entity": "any",
             "parameter": "A", "success": "call", "invalid": "call", "no_input": "call"},
            {"id": "call", "type": "flow", "flow": "again", "next": "ret"},
            {"id": "ret", "type": "return"}
        ]}]}),
    ));
    talk.start();
    for depth in 1..MAX_SUBFLOW_DEPTH {
        assert_eq!(talk.state.stack.len(), depth);
        talk.say("x");
    }
    assert_eq!(talk.state.stack.len(), MAX_SUBFLOW_DEPTH);
    let actions = talk.say("x");
    assert_eq!(actions.last(), Some(&end(EndReason::SubflowTooDeep)));
    assert!(EndReason::SubflowTooDeep.is_failure());
}

// ---- webhooks -----------------------------------------------------------------------

fn webhook_flow(response: Value) -> FlowDefinition {
    flow(json!([
        {"id": "call", "type": "webhook", "method": "put", "url": "https://api.test/orders/$ORDER",
         "headers": [{"name": "Authorization", "value": "Bearer $TOKEN"}],
         "body": "{\"order\": \"$ORDER\"}", "timeout_secs": 5,
         "response": response, "success": "ok", "failure": "ko"},
        {"id": "ok", "type": "send_message", "text": "Status: $STATUS", "next": "end"},
        {"id": "ko", "type": "send_message", "text": "Failed", "next": "end"},
        {"id": "end", "type": "end"}
    ]))
}

fn call_webhook(response: Value) -> Talk {
    let mut talk = Talk::new(webhook_flow(response));
    let actions = talk.start_on(
        Channel::Sms,
        &[("ORDER", "A1"), ("TOKEN", "t0k"), ("STATUS", "old")],
    );
    assert_eq!(
        actions,
        vec![
            entered("call"),
            Action::CallWebhook(WebhookRequest {
                method: "PUT".into(),
                url: "https://api.test/orders/A1".into(),
                headers: vec![("Authorization".into(), "Bearer t0k".into())],
                body: Some("{\"order\": \"A1\"}".into()),
                timeout: Duration::from_secs(5),
            }),
        ]
    );
    assert_eq!(talk.state.waiting, Some(Wait::Webhook));
    assert_eq!(
        talk.state.next_deadline(),
        Some(UNIX_EPOCH + Duration::from_secs(T0 + 86_400))
    );
    talk
}

#[test]
fn webhook_success_maps_the_answer() {
    let mut talk = call_webhook(json!([
        {"parameter": "STATUS", "path": "/order/status"},
        {"parameter": "TOTAL", "path": "/order/total"},
        {"parameter": "PAID", "path": "/order/paid"},
        {"parameter": "ITEMS", "path": "/order/items"},
        {"parameter": "NOTE", "path": "/order/note"},
        {"parameter": "GONE", "path": "/order/gone"}
    ]));
    let body = json!({"order": {"status": "shipped", "total": 12.5, "paid": true,
        "items": [{"sku": "x"}], "note": null}});
    let actions = talk.send(Event::WebhookAnswered {
        status: 200,
        body: body.to_string(),
    });
    assert_eq!(
        actions,
        vec![
            set("STATUS", "shipped"),
            set("TOTAL", "12.5"),
            set("PAID", "true"),
            set("ITEMS", r#"[{"sku":"x"}]"#),
            entered("ok"),
            message("Status: shipped"),
            entered("end"),
            end(EndReason::Completed),
        ]
    );
    assert_eq!(talk.param("NOTE"), None);
}

#[test]
fn webhook_success_without_mappings_ignores_the_body() {
    let mut talk = call_webhook(json!([]));
    let actions = talk.send(Event::WebhookAnswered {
        status: 204,
        body: "not json".into(),
    });
    assert_eq!(actions[0], entered("ok"));
}

#[test]
fn webhook_failures() {
    let mapping = json!([{"parameter": "STATUS", "path": "/status"}]);
    let failed = vec![
        entered("ko"),
        message("Failed"),
        entered("end"),
        end(EndReason::Completed),
    ];
    for event in [
        Event::WebhookAnswered {
            status: 500,
            body: "{\"status\": \"x\"}".into(),
        },
        Event::WebhookAnswered {
            status: 302,
            body: "{}".into(),
        },
        Event::WebhookAnswered {
            status: 200,
            body: "<html>".into(),
        },
        Event::WebhookFailed {
            error: "timed out".into(),
        },
    ] {
        let mut talk = call_webhook(mapping.clone());
        assert_eq!(talk.send(event.clone()), failed, "{event:?}");
        assert_eq!(talk.param("STATUS"), Some("old"));
    }
}

#[test]
fn while_a_webhook_runs_input_is_only_remembered() {
    let mut talk = call_webhook(json!([]));
    assert_eq!(talk.say("hello?"), vec![last_input("hello?")]);
    assert_eq!(talk.state.waiting, Some(Wait::Webhook));
    talk.now += 60;
    talk.assert_ignores(Event::Timer);
    talk.assert_ignores(Event::LiveAgentHandBack);
    assert_eq!(
        talk.send(Event::WebhookFailed { error: "x".into() })[0],
        entered("ko")
    );
}

#[test]
fn a_webhook_answer_nobody_waits_for_is_ignored() {
    let mut talk = Talk::new(ask_number(json!({})));
    talk.start();
    talk.assert_ignores(Event::WebhookAnswered {
        status: 200,
        body: "{}".into(),
    });
    talk.assert_ignores(Event::WebhookFailed { error: "x".into() });
}

#[test]
fn webhook_defaults() {
    let mut talk = Talk::new(flow(json!([
        {"id": "call", "type": "webhook", "url": "https://api.test/", "timeout_secs": 600,
         "success": "end", "failure": "end"},
        {"id": "end", "type": "end"}
    ])));
    let actions = talk.start();
    let Action::CallWebhook(request) = &actions[1] else {
        panic!("{actions:?}")
    };
    assert_eq!(request.method, "POST");
    assert_eq!(request.body, None);
    assert!(request.headers.is_empty());
    assert_eq!(request.timeout, Duration::from_secs(30));
}

// ---- live agents --------------------------------------------------------------------

fn live_agent_flow() -> FlowDefinition {
    flow(json!([
        {"id": "la", "type": "live_agent", "url": "https://desk.test/$SESSION_ID", "next": "after",
         "timeout_secs": 600},
        {"id": "after", "type": "send_message", "text": "Back with the bot", "next": "end"},
        {"id": "end", "type": "end"}
    ]))
}

fn with_live_agent() -> Talk {
    let mut talk = Talk::new(live_agent_flow());
    let actions = talk.start_on(Channel::Whatsapp, &[("SESSION_ID", "s1")]);
    assert_eq!(
        actions,
        vec![
            entered("la"),
            Action::LiveAgentStart {
                url: "https://desk.test/s1".into()
            }
        ]
    );
    assert_eq!(
        talk.state.waiting,
        Some(Wait::LiveAgent {
            until: ms(T0 + 600)
        })
    );
    talk
}

#[test]
fn live_agent_forward_and_message() {
    let mut talk = with_live_agent();
    assert_eq!(
        talk.say("my order is late"),
        vec![
            last_input("my order is late"),
            Action::LiveAgentForward {
                url: "https://desk.test/s1".into(),
                text: "my order is late".into()
            }
        ]
    );
    assert_eq!(
        talk.send(Event::LiveAgentMessage {
            text: "Let me check, $NAME".into()
        }),
        vec![message("Let me check, $NAME")]
    );
    assert!(matches!(talk.state.waiting, Some(Wait::LiveAgent { .. })));
    assert_eq!(talk.state.seq, 3);
}

#[test]
fn live_agent_hand_back() {
    let mut talk = with_live_agent();
    assert_eq!(
        talk.send(Event::LiveAgentHandBack),
        vec![
            Action::LiveAgentStop,
            entered("after"),
            message("Back with the bot"),
            entered("end"),
            end(EndReason::Completed)
        ]
    );
}

#[test]
fn live_agent_end() {
    let mut talk = with_live_agent();
    assert_eq!(
        talk.send(Event::LiveAgentEnd),
        vec![Action::LiveAgentStop, end(EndReason::LiveAgentEnded)]
    );
    assert!(talk.state.ended);
}

#[test]
fn live_agent_timeout() {
    let mut talk = with_live_agent();
    talk.now += 599;
    talk.assert_ignores(Event::Timer);
    assert_eq!(talk.wait(1)[..2], [Action::LiveAgentStop, entered("after")]);
}

#[test]
fn live_agent_default_timeout_and_voice_messages() {
    let mut talk = Talk::new(flow(json!([
        {"id": "la", "type": "live_agent", "url": "u", "next": "end"},
        {"id": "end", "type": "end"}
    ])));
    talk.start_on(Channel::Voice, &[]);
    assert_eq!(
        talk.state.waiting,
        Some(Wait::LiveAgent {
            until: ms(T0 + 3600)
        })
    );
    assert_eq!(
        talk.send(Event::LiveAgentMessage { text: "hi".into() }),
        vec![speak("hi")]
    );
}

#[test]
fn live_agent_events_without_a_live_agent_are_ignored() {
    let mut talk = Talk::new(ask_number(json!({})));
    talk.start();
    talk.assert_ignores(Event::LiveAgentMessage { text: "hi".into() });
    talk.assert_ignores(Event::LiveAgentHandBack);
    talk.assert_ignores(Event::LiveAgentEnd);
}

// ---- lifetime -----------------------------------------------------------------------

#[test]
fn the_lifetime_runs_out() {
    let nodes = json!([
        {"id": "ask", "type": "collect_input", "prompt": "?", "entity": "any", "timeout_secs": 1000,
         "parameter": "A", "success": "ask", "invalid": "ask", "no_input": "ask"}
    ]);
    let mut talk = Talk::new(flow_with(nodes, json!({"max_duration_secs": 100})));
    talk.start();
    assert_eq!(
        talk.state.next_deadline(),
        Some(UNIX_EPOCH + Duration::from_secs(T0 + 100))
    );
    talk.now += 99;
    talk.assert_ignores(Event::Timer);
    assert_eq!(talk.wait(1), vec![end(EndReason::Expired)]);
    assert!(talk.state.ended);
    assert_eq!(talk.state.waiting, None);
}

#[test]
fn the_lifetime_runs_out_with_a_live_agent() {
    let mut talk = with_live_agent();
    talk.now += 86_400;
    // As if the live agent's own deadline were still to come.
    talk.state.waiting = Some(Wait::LiveAgent {
        until: ms(talk.now + 10_000),
    });
    assert_eq!(
        talk.send(Event::Timer),
        vec![Action::LiveAgentStop, end(EndReason::Expired)]
    );
}

#[test]
fn the_state_survives_storage() {
    let mut talk = Talk::new(switching_flow(json!({})));
    talk.start();
    let stored = serde_json::to_string(&talk.state).unwrap();
    let read: FlowState = serde_json::from_str(&stored).unwrap();
    assert_eq!(read, talk.state);
    let minimal: FlowState = serde_json::from_str(r#"{"node": null}"#).unwrap();
    assert_eq!(minimal, FlowState::default());
}
