//! The session lifecycle's decisions, without I/O: what each call result,
//! message status, end of flow and stranger's message means for the
//! session, and the keys and ids that keep re-runs from doubling anything.

use chrono::{DateTime, TimeZone, Utc};
use herald_core::flow::InboundPolicy;
use herald_core::session::callback::{Callback, MessageCallback, VoiceCallback};
use herald_core::session::{
    AnsweredBy, CallFailure, CallProgress, EndReason, MessageStatus, Outcome, SessionEvent,
    SessionInput, ShownContent,
};
use herald_core::{Channel, ConversationUuid, SessionId};
use herald_flow::lifecycle::{self, Effect, EventKeys, Inbound, Report, Session, SessionState};
use herald_flow::{FlowState, Wait};

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 9, 30, 0).unwrap()
}

fn session(channel: Channel) -> Session {
    Session {
        id: "0190b2a4-5c1e-7c3a-9b7e-2f4c1d2e3f40".parse().unwrap(),
        agent_id: "60c09d70e6a68858f4220848".parse().unwrap(),
        channel,
        to: "447700900123".into(),
        from: "447700900001".into(),
        hangup_on_machine: false,
        inbound: false,
        conversation_uuid: ConversationUuid::from_stored(
            "CON-2f4c1d2e-3f40-4c1e-9b7e-0190b2a45c1e".into(),
        ),
    }
}

fn voice_report(s: &Session, status: Outcome) -> Effect {
    Effect::Report {
        key: format!("call:{status}"),
        callback: Callback::Voice(VoiceCallback {
            agent_id: s.agent_id.clone(),
            conversation_uuid: s.conversation_uuid.as_str().into(),
            status,
            timestamp: "2026-12-01T09:30:00.000Z".into(),
            to: s.to.clone(),
        }),
    }
}

fn end(outcome: Outcome) -> Effect {
    Effect::End {
        outcome,
        reason: None,
    }
}

#[test]
fn a_call_that_is_not_answered_ends_with_its_status_and_reports_it() {
    let s = session(Channel::Voice);
    for (failure, outcome) in [
        (CallFailure::Busy, Outcome::Busy),
        (CallFailure::Rejected, Outcome::Rejected),
        (CallFailure::Timeout, Outcome::Timeout),
        (CallFailure::Failed, Outcome::Failed),
        (CallFailure::Cancelled, Outcome::Cancelled),
    ] {
        assert_eq!(
            s.call_progress(CallProgress::NotAnswered { failure }, now()),
            vec![
                Effect::Record(SessionEvent::CallStatus { status: failure }),
                voice_report(&s, outcome),
                end(outcome),
            ]
        );
    }
}

#[test]
fn a_machine_is_hung_up_on_only_when_the_trigger_asked() {
    let machine = CallProgress::Answered {
        by: AnsweredBy::Machine,
    };
    let talks = session(Channel::Voice);
    assert_eq!(
        talks.call_progress(machine, now()),
        vec![Effect::Record(SessionEvent::Answered {
            by: AnsweredBy::Machine
        })]
    );
    let hangs_up = Session {
        hangup_on_machine: true,
        ..session(Channel::Voice)
    };
    assert_eq!(
        hangs_up.call_progress(machine, now()),
        vec![
            Effect::Record(SessionEvent::Answered {
                by: AnsweredBy::Machine
            }),
            Effect::HangUp,
            Effect::Record(SessionEvent::Hangup {
                reason: Some("answering machine".into())
            }),
            voice_report(&hangs_up, Outcome::Machine),
            end(Outcome::Machine),
        ]
    );
    // A person is talked to either way.
    let person = CallProgress::Answered {
        by: AnsweredBy::Person,
    };
    assert_eq!(
        hangs_up.call_progress(person, now()),
        vec![Effect::Record(SessionEvent::Answered {
            by: AnsweredBy::Person
        })]
    );
}

#[test]
fn ringing_is_recorded_and_a_hang_up_by_the_person_completes_the_session() {
    let s = session(Channel::Voice);
    assert_eq!(
        s.call_progress(CallProgress::Ringing, now()),
        vec![Effect::Record(SessionEvent::Ringing)]
    );
    assert_eq!(
        s.call_progress(CallProgress::Completed, now()),
        vec![end(Outcome::Completed)]
    );
}

#[test]
fn each_message_status_is_recorded_and_reported_and_an_undelivered_message_ends_the_session() {
    let s = session(Channel::Whatsapp);
    let uuid = s.message_uuid(2);
    for (status, ends) in [
        (MessageStatus::Sent, None),
        (MessageStatus::Delivered, None),
        (MessageStatus::Read, None),
        (MessageStatus::Rejected, Some(Outcome::Rejected)),
        (MessageStatus::Failed, Some(Outcome::Failed)),
    ] {
        let mut expected = vec![
            Effect::Record(SessionEvent::MessageStatus {
                message_uuid: uuid,
                status,
            }),
            Effect::Report {
                key: format!("message:2:{}", status.as_str()),
                callback: Callback::Message(MessageCallback {
                    agent_id: s.agent_id.clone(),
                    channel: Channel::Whatsapp,
                    message_uuid: uuid,
                    session_id: s.id,
                    status,
                    timestamp: "2026-12-01T09:30:00.000Z".into(),
                    to: s.to.clone(),
                }),
            },
        ];
        expected.extend(ends.map(end));
        // Each status reaching a message that has none yet.
        let mut state = SessionState::default();
        assert_eq!(
            s.message_status(&mut state, 2, status, now()),
            expected,
            "{status:?}"
        );
        assert_eq!(state.statuses.get(&2), Some(&status));
    }
}

#[test]
fn statuses_take_effect_in_the_order_they_happen_and_a_failure_is_final() {
    let s = session(Channel::Whatsapp);
    let mut state = SessionState {
        messages: 1,
        ..SessionState::default()
    };
    let apply = |state: &mut SessionState, status| s.message_status(state, 0, status, now()).len();
    assert_eq!(apply(&mut state, MessageStatus::Read), 2);
    // Late, and again: nothing more.
    assert_eq!(apply(&mut state, MessageStatus::Delivered), 0);
    assert_eq!(apply(&mut state, MessageStatus::Sent), 0);
    assert_eq!(apply(&mut state, MessageStatus::Read), 0);
    assert_eq!(state.statuses[&0], MessageStatus::Read);
    let mut failed = SessionState::default();
    assert_eq!(apply(&mut failed, MessageStatus::Sent), 2);
    // Recorded, reported, and the end of the session.
    assert_eq!(apply(&mut failed, MessageStatus::Failed), 3);
    assert_eq!(apply(&mut failed, MessageStatus::Delivered), 0);
    assert_eq!(apply(&mut failed, MessageStatus::Rejected), 0);
    // Once the session has ended, a failure is reported but ends nothing.
    let mut ended = SessionState {
        reports_until: Some(now()),
        ..SessionState::default()
    };
    let effects = s.message_status(&mut ended, 0, MessageStatus::Rejected, now());
    assert_eq!(effects.len(), 2);
    assert!(!effects.iter().any(|e| matches!(e, Effect::End { .. })));
}

#[test]
fn a_session_settles_once_each_message_got_through_or_failed() {
    let state = |statuses: &[(u32, MessageStatus)], closed: &[u32]| SessionState {
        messages: 2,
        statuses: statuses.iter().copied().collect(),
        closed: closed.iter().copied().collect(),
        ..SessionState::default()
    };
    use MessageStatus::*;
    assert!(!state(&[], &[]).settled());
    assert!(!state(&[(0, Delivered), (1, Sent)], &[]).settled());
    assert!(state(&[(0, Delivered), (1, Failed)], &[]).settled());
    assert!(state(&[(0, Read)], &[1]).settled());
    // What may still come: WhatsApp reads, nothing after an SMS's delivery.
    let delivered = state(&[(0, Delivered), (1, Delivered)], &[]);
    assert!(delivered.awaiting_reports(Channel::Whatsapp));
    assert!(!delivered.awaiting_reports(Channel::Sms));
    assert!(!state(&[(0, Read), (1, Rejected)], &[]).awaiting_reports(Channel::Whatsapp));
    assert!(!state(&[(0, Sent)], &[0, 1]).awaiting_reports(Channel::Whatsapp));
    assert!(!SessionState::default().awaiting_reports(Channel::Sms));
}

#[test]
fn reports_due_come_in_time_order_and_the_last_of_a_message_closes_it() {
    use MessageStatus::*;
    let ms = chrono::Duration::milliseconds;
    let t0 = now();
    let mut state = SessionState {
        messages: 2,
        ..SessionState::default()
    };
    let status = |message, status| Report::Message { message, status };
    state.schedule(status(0, Sent), t0 + ms(20));
    state.schedule(status(0, Delivered), t0 + ms(40));
    state.schedule(status(1, Sent), t0 + ms(30));
    state.schedule(status(1, Delivered), t0 + ms(40));
    assert_eq!(state.next_report(), Some(t0 + ms(20)));
    assert_eq!(state.take_due(t0 + ms(19)), None);
    let taken: Vec<(u32, Report)> = std::iter::from_fn(|| state.take_due(t0 + ms(35)))
        .map(|due| (due.n, due.report))
        .collect();
    assert_eq!(taken, [(0, status(0, Sent)), (2, status(1, Sent))]);
    assert!(state.closed.is_empty());
    // Due at the same time: in the order they were made.
    let first = state.take_due(t0 + ms(40)).unwrap();
    assert_eq!((first.n, first.report), (1, status(0, Delivered)));
    assert_eq!(state.closed, [0].into_iter().collect());
    // What is still due survives the stored state.
    let stored = SessionState::from_stored(&state.to_stored()).unwrap();
    assert_eq!(stored, state);
    assert_eq!(stored.reports_made, 4);
    let last = state.take_due(t0 + ms(40)).unwrap();
    assert_eq!(last.n, 3);
    assert_eq!(state.closed, [0, 1].into_iter().collect());
    assert_eq!(state.next_report(), None);
    assert_eq!(
        SessionInput::from(last.report),
        SessionInput::MessageStatus {
            message: 1,
            status: Delivered,
            reason: None,
        }
    );
    // A call's report and a Send SMS node's text's close nothing.
    let mut call = SessionState::default();
    let answered = CallProgress::Answered {
        by: AnsweredBy::Person,
    };
    call.schedule(Report::Call { progress: answered }, t0);
    let due = call.take_due(t0).unwrap();
    assert_eq!(
        SessionInput::from(due.report),
        SessionInput::CallProgress(answered)
    );
    assert!(call.closed.is_empty());
}

#[test]
fn message_uuids_are_stable_per_session_and_message() {
    let s = session(Channel::Sms);
    assert_eq!(s.message_uuid(0), session(Channel::Sms).message_uuid(0));
    assert_ne!(s.message_uuid(0), s.message_uuid(1));
    let other = Session {
        id: SessionId::generate(),
        ..session(Channel::Sms)
    };
    assert_ne!(s.message_uuid(0), other.message_uuid(0));
    assert_eq!(
        s.message_sent(1, ShownContent::Text("Hi".into())),
        SessionEvent::MessageSent {
            message_uuid: s.message_uuid(1),
            content: ShownContent::Text("Hi".into())
        }
    );
}

#[test]
fn a_flow_that_ends_completes_the_session_unless_it_could_not_go_on() {
    let s = session(Channel::Sms);
    for reason in [
        EndReason::Completed,
        EndReason::Transferred,
        EndReason::LiveAgentEnded,
        EndReason::Expired,
        EndReason::Looped,
    ] {
        assert_eq!(
            s.flow_ended(reason),
            Effect::End {
                outcome: Outcome::Completed,
                reason: Some(reason)
            }
        );
    }
    assert_eq!(
        s.flow_ended(EndReason::SubflowTooDeep),
        Effect::End {
            outcome: Outcome::Failed,
            reason: Some(EndReason::SubflowTooDeep)
        }
    );
}

#[test]
fn a_stranger_s_message_runs_the_flow_only_when_it_takes_them() {
    let policy = |accept, reply: Option<&str>| InboundPolicy {
        accept,
        reply: reply.map(Into::into),
    };
    assert_eq!(Session::inbound(None), Inbound::Decline { reply: None });
    assert_eq!(Session::inbound(Some(&policy(true, None))), Inbound::Run);
    assert_eq!(
        Session::inbound(Some(&policy(false, Some("No replies")))),
        Inbound::Decline {
            reply: Some("No replies".into())
        }
    );
    assert_eq!(
        Session::inbound(Some(&policy(false, None))),
        Inbound::Decline { reply: None }
    );
}

#[test]
fn a_flow_starts_with_the_trigger_s_and_the_system_s_parameters() {
    let s = Session {
        inbound: true,
        ..session(Channel::Sms)
    };
    // A trigger cannot set a system parameter: the system's wins.
    let parameters = s.start_parameters([("NAME", "Ada"), ("CHANNEL", "fax")]);
    let get = |name: &str| parameters.get(name).map(String::as_str);
    assert_eq!(get("NAME"), Some("Ada"));
    assert_eq!(get("CHANNEL"), Some("sms"));
    assert_eq!(get("DIRECTION"), Some("inbound"));
    assert_eq!(get("RECIPIENT"), Some("447700900123"));
    assert_eq!(get("AGENT_NUMBER"), Some("447700900001"));
    assert_eq!(get("AGENT_ID"), Some("60c09d70e6a68858f4220848"));
    assert_eq!(
        get("SESSION_ID"),
        Some("0190b2a4-5c1e-7c3a-9b7e-2f4c1d2e3f40")
    );
    assert_eq!(get("LAST_INPUT"), Some(""));
}

#[test]
fn events_are_keyed_by_their_place_in_the_wake_or_the_step() {
    let mut keys = EventKeys::first_wake();
    assert_eq!(keys.next_key(), "run:1");
    assert_eq!(keys.next_key(), "run:2");
    keys.step(7);
    assert_eq!(keys.next_key(), "s7:1");
    assert_eq!(keys.next_key(), "s7:2");
    keys.step(8);
    assert_eq!(keys.next_key(), "s8:1");
    assert_eq!(EventKeys::input(42), "in:42");
}

#[test]
fn an_input_is_recorded_with_its_kind_and_words() {
    assert_eq!(
        lifecycle::input_received(&SessionInput::Digits("12".into())),
        SessionEvent::InputReceived {
            input: "dtmf".into(),
            text: "12".into()
        }
    );
    assert_eq!(
        lifecycle::input_received(&SessionInput::LiveAgentHandBack),
        SessionEvent::InputReceived {
            input: "live_agent_hand_back".into(),
            text: String::new()
        }
    );
}

#[test]
fn the_stored_state_reads_back_and_says_when_a_live_agent_holds_it() {
    let state = SessionState {
        flow: FlowState {
            node: Some("desk".into()),
            waiting: Some(Wait::LiveAgent { until: 1 }),
            ..FlowState::default()
        },
        inputs_consumed: 3,
        messages: 2,
        ..SessionState::default()
    };
    let stored = state.to_stored();
    // The fields earlier releases stored, by the same names, and no others
    // while the new ones are empty.
    assert_eq!(stored["inputs_consumed"], 3);
    assert_eq!(stored["messages"], 2);
    assert_eq!(stored.as_object().unwrap().len(), 3, "{stored}");
    let read = SessionState::from_stored(&stored).unwrap();
    assert_eq!(read, state);
    // What a session waiting on its messages keeps reads back too.
    let ending = SessionState {
        statuses: [(0, MessageStatus::Delivered)].into_iter().collect(),
        closed: [1].into_iter().collect(),
        texts: 1,
        ending: Some(lifecycle::PendingEnd {
            outcome: Outcome::Completed,
            reason: Some(EndReason::Completed),
            by: now(),
        }),
        reports_until: Some(now()),
        ..state.clone()
    };
    assert_eq!(
        SessionState::from_stored(&ending.to_stored()).unwrap(),
        ending
    );
    assert!(read.with_live_agent());
    assert!(!SessionState::default().with_live_agent());
    assert!(SessionState::from_stored(&serde_json::json!({"flow": 3})).is_err());
}

#[test]
fn a_session_that_cannot_run_fails_and_a_call_reports_it() {
    let call = session(Channel::Voice);
    let error = SessionEvent::Error {
        error: "the stored flow state is unreadable".into(),
    };
    assert_eq!(
        call.broken("the stored flow state is unreadable".into(), now()),
        vec![
            Effect::Record(error.clone()),
            voice_report(&call, Outcome::Failed),
            end(Outcome::Failed),
        ]
    );
    // Messaging reports statuses of messages only: nothing to report.
    let sms = session(Channel::Sms);
    assert_eq!(
        sms.broken("the stored flow state is unreadable".into(), now()),
        vec![Effect::Record(error), end(Outcome::Failed)]
    );
}
