//! The flow runtime as a pure state machine.
//!
//! `step(definition, state, event, now)` returns the new state and the
//! actions the driver must carry out. Nothing here touches the network, the
//! store or the clock: the driver (in `herald-server`) feeds in events and
//! time, performs the actions and persists the state after every step. That
//! keeps the conversation logic deterministic and testable without sockets.

use herald_core::flow::{FlowDefinition, NodeKind};
use serde::{Deserialize, Serialize};

/// Where a conversation is. Small and serialisable: the driver stores it
/// after every step, so a waiting session holds nothing in memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowState {
    /// The node the conversation is at, or `None` before it starts.
    pub node: Option<String>,
    pub ended: bool,
}

/// What happened to the conversation.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The person is reachable: the call was answered, or the messaging
    /// session opened.
    Started,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A node was entered (recorded in the session's events).
    Entered {
        node: String,
    },
    Speak {
        text: String,
    },
    SendMessage {
        text: String,
    },
    /// The conversation is over; hang up or close the session.
    End,
}

/// The most nodes one step may pass through. Validation rejects flows that
/// could loop without waiting, this bound makes sure a step always returns.
const MAX_NODES_PER_STEP: usize = 1000;

/// Advances the conversation by one event.
pub fn step(
    flow: &FlowDefinition,
    mut state: FlowState,
    event: Event,
    _now: std::time::SystemTime,
) -> (FlowState, Vec<Action>) {
    let mut actions = Vec::new();
    if state.ended {
        return (state, actions);
    }
    let mut current = match (event, state.node.take()) {
        (Event::Started, None) => flow.start.clone(),
        // A repeated start (a redelivered event) changes nothing.
        (Event::Started, Some(node)) => {
            state.node = Some(node);
            return (state, actions);
        }
    };
    for _ in 0..MAX_NODES_PER_STEP {
        let Some(node) = flow.node(&current) else {
            break;
        };
        actions.push(Action::Entered {
            node: node.id.clone(),
        });
        match &node.kind {
            NodeKind::Speak { text, next } => {
                actions.push(Action::Speak { text: text.clone() });
                current = next.clone();
            }
            NodeKind::SendMessage { text, next } => {
                actions.push(Action::SendMessage { text: text.clone() });
                current = next.clone();
            }
            NodeKind::End {} => break,
        }
    }
    // Reaching an end node, a missing node (which validation rules out) or
    // the step bound all end the conversation rather than leave it hanging.
    actions.push(Action::End);
    state.node = Some(current);
    state.ended = true;
    (state, actions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::Channel;
    use std::time::SystemTime;

    #[test]
    fn default_voice_flow_greets_and_ends() {
        let flow = FlowDefinition::default_for(Channel::Voice);
        let (state, actions) = step(
            &flow,
            FlowState::default(),
            Event::Started,
            SystemTime::UNIX_EPOCH,
        );
        assert!(state.ended);
        assert_eq!(actions.len(), 4);
        assert_eq!(
            actions[0],
            Action::Entered {
                node: "greet".into()
            }
        );
        assert!(matches!(&actions[1], Action::Speak { text } if text.starts_with("Hello")));
        assert_eq!(actions[2], Action::Entered { node: "end".into() });
        assert_eq!(actions[3], Action::End);
    }

    #[test]
    fn default_sms_flow_sends_one_message() {
        let flow = FlowDefinition::default_for(Channel::Sms);
        let (_, actions) = step(
            &flow,
            FlowState::default(),
            Event::Started,
            SystemTime::UNIX_EPOCH,
        );
        let sends = actions
            .iter()
            .filter(|a| matches!(a, Action::SendMessage { .. }))
            .count();
        assert_eq!(sends, 1);
        assert_eq!(actions.last(), Some(&Action::End));
    }

    #[test]
    fn an_ended_conversation_ignores_events() {
        let flow = FlowDefinition::default_for(Channel::Whatsapp);
        let (state, _) = step(
            &flow,
            FlowState::default(),
            Event::Started,
            SystemTime::UNIX_EPOCH,
        );
        let (again, actions) = step(&flow, state.clone(), Event::Started, SystemTime::UNIX_EPOCH);
        assert_eq!(again, state);
        assert!(actions.is_empty());
    }
}
