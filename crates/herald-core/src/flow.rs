//! The flow definition format: what an agent says and does, as data.
//!
//! A flow is a JSON document:
//!
//! ```json
//! {
//!   "format": 1,
//!   "start": "greet",
//!   "nodes": [
//!     {"id": "greet", "type": "speak", "text": "Hello from herald.", "next": "bye"},
//!     {"id": "bye", "type": "end"}
//!   ]
//! }
//! ```
//!
//! `format` versions the document so that later node types extend it rather
//! than replace it: a reader rejects a format it does not know instead of
//! misreading it. Nodes are a list (their order is how editors show them) with
//! unique ids; `start` names the first. Each node type lists its own fields;
//! a node that leads somewhere names its successor in `next`.
//!
//! The runtime that walks a flow lives in `herald-flow`; this module only
//! defines and checks the format, so that an agent can be validated where it
//! is created, edited and published.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::Channel;

/// The format version this build reads and writes.
pub const FORMAT: u32 = 1;

/// Bounds that keep one agent's flow from growing without limit.
pub const MAX_NODES: usize = 500;
pub const MAX_TEXT: usize = 4096;
pub const MAX_NODE_ID: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowDefinition {
    /// The format version; this build knows format 1.
    pub format: u32,
    /// The id of the node the conversation starts at.
    pub start: String,
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Node {
    /// Unique within the flow: 1 to 64 letters, digits, `_` or `-`.
    pub id: String,
    #[serde(flatten)]
    pub kind: NodeKind,
}

/// What a node does. The `type` field of a node selects one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum NodeKind {
    /// Voice: say `text` to the person, then go on to `next`.
    Speak { text: String, next: String },
    /// SMS and WhatsApp: send `text` to the person, then go on to `next`.
    SendMessage { text: String, next: String },
    /// End the conversation (End Call on voice).
    End {},
}

impl NodeKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            NodeKind::Speak { .. } => "speak",
            NodeKind::SendMessage { .. } => "send_message",
            NodeKind::End {} => "end",
        }
    }

    /// The node's exits, as (field, target) pairs.
    pub fn exits(&self) -> Vec<(&'static str, &str)> {
        match self {
            NodeKind::Speak { next, .. } | NodeKind::SendMessage { next, .. } => {
                vec![("next", next)]
            }
            NodeKind::End {} => vec![],
        }
    }

    fn allowed_on(&self, channel: Channel) -> bool {
        match self {
            NodeKind::Speak { .. } => channel == Channel::Voice,
            NodeKind::SendMessage { .. } => channel.is_messaging(),
            NodeKind::End {} => true,
        }
    }
}

/// Why a flow was refused; the message names the node and field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FlowError(pub String);

impl FlowDefinition {
    /// Reads and checks a flow for an agent of `channel`.
    pub fn from_json(value: &serde_json::Value, channel: Channel) -> Result<Self, FlowError> {
        // Read the format first, so that a document of a newer format gets an
        // answer about its format rather than about a field we do not know.
        match value.get("format") {
            Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(FORMAT)) => {}
            Some(other) => {
                return Err(FlowError(format!(
                    "flow.format {other} is not supported (this server reads format {FORMAT})"
                )))
            }
            None => return Err(FlowError("flow.format is required".into())),
        }
        if let Some(nodes) = value.get("nodes").and_then(|n| n.as_array()) {
            // Decode node by node, so that an error names the node.
            for (i, node) in nodes.iter().enumerate() {
                let id = node
                    .get("id")
                    .and_then(|v| v.as_str())
                    .map(|s| format!("node '{s}'"))
                    .unwrap_or_else(|| format!("flow.nodes[{i}]"));
                if let Err(e) = Node::deserialize(node) {
                    return Err(FlowError(format!("{id}: {e}")));
                }
            }
        }
        let flow =
            FlowDefinition::deserialize(value).map_err(|e| FlowError(format!("flow: {e}")))?;
        flow.validate(channel)?;
        Ok(flow)
    }

    /// Checks what the types alone cannot: ids, references, channel fit.
    pub fn validate(&self, channel: Channel) -> Result<(), FlowError> {
        if self.nodes.is_empty() {
            return Err(FlowError("flow.nodes must not be empty".into()));
        }
        if self.nodes.len() > MAX_NODES {
            return Err(FlowError(format!(
                "flow.nodes must have at most {MAX_NODES} nodes"
            )));
        }
        let mut ids = HashSet::new();
        for node in &self.nodes {
            let ok_id = !node.id.is_empty()
                && node.id.len() <= MAX_NODE_ID
                && node
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok_id {
                return Err(FlowError(format!(
                    "node '{}': id must be 1 to 64 letters, digits, '_' or '-'",
                    node.id
                )));
            }
            if !ids.insert(node.id.as_str()) {
                return Err(FlowError(format!("node '{}': id is used twice", node.id)));
            }
        }
        if !ids.contains(self.start.as_str()) {
            return Err(FlowError(format!(
                "flow.start refers to unknown node '{}'",
                self.start
            )));
        }
        for node in &self.nodes {
            if !node.kind.allowed_on(channel) {
                return Err(FlowError(format!(
                    "node '{}': type {} is not available on {} agents",
                    node.id,
                    node.kind.type_name(),
                    channel
                )));
            }
            if let NodeKind::Speak { text, .. } | NodeKind::SendMessage { text, .. } = &node.kind {
                if text.is_empty() || text.len() > MAX_TEXT {
                    return Err(FlowError(format!(
                        "node '{}': text must be 1 to {MAX_TEXT} bytes",
                        node.id
                    )));
                }
            }
            for (field, target) in node.kind.exits() {
                if !ids.contains(target) {
                    return Err(FlowError(format!(
                        "node '{}': {field} refers to unknown node '{target}'",
                        node.id
                    )));
                }
            }
        }
        Ok(())
    }

    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The flow an agent gets when it is created without one: it greets and
    /// ends. A WhatsApp session's greeting is the template its trigger sends,
    /// so a WhatsApp agent's default flow only ends.
    pub fn default_for(channel: Channel) -> Self {
        let end = Node {
            id: "end".into(),
            kind: NodeKind::End {},
        };
        let greet = |kind| Node {
            id: "greet".into(),
            kind,
        };
        let nodes = match channel {
            Channel::Voice => vec![
                greet(NodeKind::Speak {
                    text: "Hello, this is an automated call from herald. Goodbye.".into(),
                    next: "end".into(),
                }),
                end,
            ],
            Channel::Sms => vec![
                greet(NodeKind::SendMessage {
                    text: "Hello, this is an automated message from herald.".into(),
                    next: "end".into(),
                }),
                end,
            ],
            Channel::Whatsapp => vec![end],
        };
        FlowDefinition {
            format: FORMAT,
            start: nodes[0].id.clone(),
            nodes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn default_flows_are_valid_and_round_trip() {
        for channel in Channel::ALL {
            let flow = FlowDefinition::default_for(channel);
            let value = serde_json::to_value(&flow).unwrap();
            assert_eq!(FlowDefinition::from_json(&value, channel), Ok(flow));
        }
    }

    fn err(value: serde_json::Value, channel: Channel) -> String {
        FlowDefinition::from_json(&value, channel).unwrap_err().0
    }

    #[test]
    fn errors_name_the_node_and_field() {
        assert_eq!(
            err(json!({"start": "a", "nodes": []}), Channel::Sms),
            "flow.format is required"
        );
        assert!(err(
            json!({"format": 9, "start": "a", "nodes": []}),
            Channel::Sms
        )
        .starts_with("flow.format 9 is not supported"));
        assert_eq!(
            err(
                json!({"format": 1, "start": "a", "nodes": []}),
                Channel::Sms
            ),
            "flow.nodes must not be empty"
        );
        assert_eq!(
            err(
                json!({"format": 1, "start": "x", "nodes": [{"id": "a", "type": "end"}]}),
                Channel::Sms
            ),
            "flow.start refers to unknown node 'x'"
        );
        let e = err(
            json!({"format": 1, "start": "a", "nodes": [{"id": "a", "type": "dance"}]}),
            Channel::Sms,
        );
        assert!(e.starts_with("node 'a': unknown variant `dance`"), "{e}");
        assert_eq!(
            err(
                json!({"format": 1, "start": "a", "nodes": [
                    {"id": "a", "type": "send_message", "text": "hi", "next": "b"}
                ]}),
                Channel::Sms
            ),
            "node 'a': next refers to unknown node 'b'"
        );
        assert_eq!(
            err(
                json!({"format": 1, "start": "a", "nodes": [
                    {"id": "a", "type": "speak", "text": "hi", "next": "b"},
                    {"id": "b", "type": "end"}
                ]}),
                Channel::Sms
            ),
            "node 'a': type speak is not available on sms agents"
        );
        assert_eq!(
            err(
                json!({"format": 1, "start": "a", "nodes": [
                    {"id": "a", "type": "end"}, {"id": "a", "type": "end"}
                ]}),
                Channel::Voice
            ),
            "node 'a': id is used twice"
        );
        let e = err(
            json!({"format": 1, "start": "a", "nodes": [{"id": "a", "type": "speak", "next": "a"}]}),
            Channel::Voice,
        );
        assert!(e.starts_with("node 'a': missing field `text`"), "{e}");
    }
}
