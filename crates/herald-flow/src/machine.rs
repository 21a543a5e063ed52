//! The state machine behind [`crate::step`]: what each event does to a
//! conversation, and what each node does when the conversation enters it.
//!
//! Events:
//!
//! - `Started` (once, before anything else): fixes the channel, fills the
//!   parameters (the flow's declared defaults, overwritten by the given
//!   ones), sets the lifetime (`max_duration_secs`, default one hour on
//!   voice and a day on messaging) and runs from the flow's start.
//! - `Input`: sets `LAST_INPUT` (always, whatever the conversation waits
//!   for). At a Collect Input or a waiting Classification node, the flow's
//!   context switches come first (unless the node turns them off): the best
//!   one at or above its threshold (default 0.7) clears the sub-flow stack
//!   and jumps to its node. Otherwise a Collect Input node reads its entity
//!   (found: set the parameter, `success`; not found: ask again, up to
//!   `retries` times, default 2, then `invalid`) and a Classification node
//!   classifies (best intent at or above the threshold, default 0.5, else
//!   `fallback`). With a live agent, the input is forwarded to it. Waiting
//!   on a webhook, nothing else happens.
//! - `Timer`: past the lifetime, ends (`Expired`, stopping a live agent
//!   first); past an input deadline, leaves by `no_input` (a Classification
//!   node's default is `fallback`); past a live agent's deadline, stops it
//!   and goes on to the node's `next`.
//! - `NoInput`: the provider's own wait for an answer ran out; a
//!   conversation waiting for input leaves by `no_input` as at its
//!   deadline, whenever that is.
//! - `WebhookAnswered` / `WebhookFailed`: see [`crate::webhook`].
//! - `LiveAgentMessage`, `LiveAgentHandBack`, `LiveAgentEnd`: while a live
//!   agent holds the conversation, pass its message on to the person, give
//!   the conversation back to the flow (`next`), or end it.
//!
//! Nodes, entered one after another until one waits or the conversation
//! ends (each entry emits `Entered`): texts are templates rendered against
//! the parameters. A prompt that renders empty is not sent (so a Collect
//! Input node with an empty prompt only waits). Entering a node that does
//! not exist ends the conversation (`Completed`); so does a `return` with
//! no sub-flow to return from. After [`crate::MAX_NODES_PER_STEP`] nodes
//! in one step the conversation ends (`Looped`); a sub-flow call deeper
//! than [`crate::MAX_SUBFLOW_DEPTH`] ends it as a failure
//! (`SubflowTooDeep`).
//!
//! Waiting nodes keep the conversation at them (`state.node`) with
//! `state.waiting` set: Collect Input and a Classification node without
//! `input` wait for input (default 10 s on voice, 300 s on messaging), a
//! Webhook node for the webhook's answer (the driver enforces the request's
//! timeout and reports `WebhookFailed`), a Live Agent node for the live
//! agent (default one hour).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use herald_core::flow::{FlowDefinition, IntentExit, Node, NodeKind};
use herald_core::Channel;

use crate::{
    classifier, conditions, entities, render, webhook, Action, EndReason, Event, FlowState, Input,
    Wait, LAST_INPUT, MAX_NODES_PER_STEP, MAX_SUBFLOW_DEPTH,
};

const VOICE_LIFETIME_SECS: u64 = 3600;
const MESSAGING_LIFETIME_SECS: u64 = 86_400;
const VOICE_INPUT_TIMEOUT_SECS: u64 = 10;
const MESSAGING_INPUT_TIMEOUT_SECS: u64 = 300;
const DEFAULT_RETRIES: u32 = 2;
const DEFAULT_CONTEXT_SWITCH_THRESHOLD: f64 = 0.7;
const DEFAULT_CLASSIFY_THRESHOLD: f64 = 0.5;
const LIVE_AGENT_TIMEOUT_SECS: u64 = 3600;

pub(crate) fn step(
    flow: &FlowDefinition,
    state: FlowState,
    event: Event,
    now: SystemTime,
) -> (FlowState, Vec<Action>) {
    if state.ended {
        return (state, Vec::new());
    }
    let mut machine = Machine {
        flow,
        state,
        // Most steps take a handful of actions: grow once, if at all.
        actions: Vec::with_capacity(8),
        now,
        now_ms: now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        entered: 0,
    };
    // `handle` leaves the state untouched when it ignores the event.
    if machine.handle(event) {
        machine.state.seq += 1;
        (machine.state, machine.actions)
    } else {
        (machine.state, Vec::new())
    }
}

/// Where the conversation goes after a node.
enum Next<'a> {
    /// Enter this node (`None`: a node that does not exist).
    Node(Option<&'a Node>),
    /// The conversation waits or has ended.
    Stop,
}

struct Machine<'a> {
    flow: &'a FlowDefinition,
    state: FlowState,
    actions: Vec<Action>,
    now: SystemTime,
    now_ms: u64,
    /// Nodes entered in this step.
    entered: usize,
}

impl<'a> Machine<'a> {
    /// Applies `event`; `false` when it does not apply and is ignored.
    fn handle(&mut self, event: Event) -> bool {
        let started = self.state.node.is_some();
        match event {
            Event::Started {
                channel,
                parameters,
            } => {
                if started {
                    return false;
                }
                self.start(channel, parameters);
                true
            }
            _ if !started => false,
            Event::Input(input) => {
                self.input(input);
                true
            }
            Event::Timer => self.timer(),
            Event::NoInput => {
                if !matches!(self.state.waiting, Some(Wait::Input { .. })) {
                    return false;
                }
                self.leave_by_no_input();
                true
            }
            Event::WebhookAnswered { status, body } => self.webhook_answered(Some((status, &body))),
            Event::WebhookFailed { .. } => self.webhook_answered(None),
            Event::LiveAgentMessage { text } => {
                if !self.with_live_agent() {
                    return false;
                }
                self.say(text);
                true
            }
            Event::LiveAgentHandBack => {
                if !self.with_live_agent() {
                    return false;
                }
                self.actions.push(Action::LiveAgentStop);
                self.stop_waiting();
                match self.current().map(|n| &n.kind) {
                    Some(NodeKind::LiveAgent { next, .. }) => self.run(self.find(next)),
                    _ => self.end(EndReason::Completed),
                }
                true
            }
            Event::LiveAgentEnd => {
                if !self.with_live_agent() {
                    return false;
                }
                self.actions.push(Action::LiveAgentStop);
                self.end(EndReason::LiveAgentEnded);
                true
            }
        }
    }

    // ---- events -------------------------------------------------------------

    fn start(&mut self, channel: Channel, given: BTreeMap<String, String>) {
        self.state.channel = Some(channel);
        let mut parameters: BTreeMap<String, String> = self
            .flow
            .parameters
            .iter()
            .filter_map(|p| Some((p.name.clone(), p.default.clone()?)))
            .collect();
        parameters.extend(given);
        self.state.parameters = parameters;
        let lifetime = self.flow.max_duration_secs.unwrap_or(if self.voice() {
            VOICE_LIFETIME_SECS
        } else {
            MESSAGING_LIFETIME_SECS
        });
        self.state.expires_at = Some(self.after(lifetime));
        self.run(self.find(&self.flow.start));
    }

    fn input(&mut self, input: Input) {
        self.set(LAST_INPUT, input.text.clone());
        match self.state.waiting {
            Some(Wait::Input { .. }) => {}
            Some(Wait::LiveAgent { .. }) => {
                match self.current().map(|n| &n.kind) {
                    Some(NodeKind::LiveAgent { url, .. }) => {
                        let url = render(url, &self.state.parameters);
                        self.actions.push(Action::LiveAgentForward {
                            url,
                            text: input.text,
                        });
                    }
                    _ => self.end(EndReason::Completed),
                }
                return;
            }
            // Waiting on a webhook: the input is only remembered.
            Some(Wait::Webhook) | None => return,
        }
        let Some(node) = self.current() else {
            return self.end(EndReason::Completed);
        };
        match &node.kind {
            NodeKind::CollectInput {
                prompt,
                entity,
                parameter,
                retry_prompt,
                retries,
                timeout_secs,
                context_switch,
                success,
                invalid,
                ..
            } => {
                if self.context_switch(*context_switch, &input.text) {
                    return;
                }
                let value = entities::extract(entity, &input.text, input.mode, self.flow, self.now);
                if let Some(value) = value {
                    self.set(parameter, value);
                    self.stop_waiting();
                    return self.run(self.find(success));
                }
                self.state.retries += 1;
                if self.state.retries > retries.unwrap_or(DEFAULT_RETRIES) {
                    self.stop_waiting();
                    return self.run(self.find(invalid));
                }
                self.prompt(retry_prompt.as_deref().unwrap_or(prompt));
                self.wait_for_input(*timeout_secs);
            }
            NodeKind::Classify {
                intents,
                threshold,
                parameter,
                context_switch,
                fallback,
                ..
            } => {
                if self.context_switch(*context_switch, &input.text) {
                    return;
                }
                self.stop_waiting();
                let next = self.classify(&input.text, intents, *threshold, parameter, fallback);
                self.run(next);
            }
            _ => self.end(EndReason::Completed),
        }
    }

    fn timer(&mut self) -> bool {
        if self.state.expires_at.is_some_and(|t| t <= self.now_ms) {
            if self.with_live_agent() {
                self.actions.push(Action::LiveAgentStop);
            }
            self.end(EndReason::Expired);
            return true;
        }
        let kind = self.current().map(|n| &n.kind);
        match self.state.waiting {
            Some(Wait::Input { until }) if until <= self.now_ms => {
                self.leave_by_no_input();
                true
            }
            Some(Wait::LiveAgent { until }) if until <= self.now_ms => {
                self.actions.push(Action::LiveAgentStop);
                self.stop_waiting();
                match kind {
                    Some(NodeKind::LiveAgent { next, .. }) => self.run(self.find(next)),
                    _ => self.end(EndReason::Completed),
                }
                true
            }
            _ => false,
        }
    }

    /// No answer came: leaves the waiting node by its `no_input` exit (a
    /// Classification node's default is `fallback`).
    fn leave_by_no_input(&mut self) {
        let kind = self.current().map(|n| &n.kind);
        self.stop_waiting();
        match kind {
            Some(NodeKind::CollectInput { no_input, .. }) => self.run(self.find(no_input)),
            Some(NodeKind::Classify {
                no_input, fallback, ..
            }) => self.run(self.find(no_input.as_ref().unwrap_or(fallback))),
            _ => self.end(EndReason::Completed),
        }
    }

    /// A webhook's answer (`None`: the call failed).
    fn webhook_answered(&mut self, answer: Option<(u16, &str)>) -> bool {
        if self.state.waiting != Some(Wait::Webhook) {
            return false;
        }
        self.stop_waiting();
        let Some(NodeKind::Webhook {
            response,
            success,
            failure,
            ..
        }) = self.current().map(|n| &n.kind)
        else {
            self.end(EndReason::Completed);
            return true;
        };
        let set = answer.and_then(|(status, body)| webhook::read_answer(response, status, body));
        let next = match set {
            Some(set) => {
                for (name, value) in set {
                    self.set(&name, value);
                }
                success
            }
            None => failure,
        };
        self.run(self.find(next));
        true
    }

    /// Jumps to the context switch `text` expresses, if any; `true` if it
    /// did.
    fn context_switch(&mut self, enabled: Option<bool>, text: &str) -> bool {
        if enabled == Some(false) || self.flow.context_switches.is_empty() {
            return false;
        }
        let switches = self.flow.context_switches.iter().map(|c| {
            let threshold = c.threshold.unwrap_or(DEFAULT_CONTEXT_SWITCH_THRESHOLD);
            (c.examples.as_slice(), threshold)
        });
        let Some((i, _)) = classifier::best(text, switches) else {
            return false;
        };
        self.state.stack.clear();
        self.stop_waiting();
        self.run(self.find(&self.flow.context_switches[i].next));
        true
    }

    /// Where `text` leads at a Classification node.
    fn classify(
        &mut self,
        text: &str,
        intents: &'a [IntentExit],
        threshold: Option<f64>,
        parameter: &Option<String>,
        fallback: &str,
    ) -> Option<&'a Node> {
        let threshold = threshold.unwrap_or(DEFAULT_CLASSIFY_THRESHOLD);
        let scored = intents
            .iter()
            .map(|intent| (intent.examples.as_slice(), threshold));
        match classifier::best(text, scored) {
            Some((i, _)) => {
                let intent = &intents[i];
                if let Some(parameter) = parameter {
                    self.set(parameter, intent.name.clone());
                }
                self.find(&intent.next)
            }
            None => self.find(fallback),
        }
    }

    // ---- running nodes --------------------------------------------------------

    /// Enters `first` and the nodes after it until one waits or the
    /// conversation ends.
    fn run(&mut self, first: Option<&'a Node>) {
        let mut next = first;
        // The last node entered; `state.node` is written once, on the way
        // out, rather than at every node passed through.
        let mut last: Option<&'a Node> = None;
        loop {
            let Some(node) = next else {
                self.end(EndReason::Completed);
                break;
            };
            if self.entered >= MAX_NODES_PER_STEP {
                self.end(EndReason::Looped);
                break;
            }
            self.entered += 1;
            last = Some(node);
            self.actions.push(Action::Entered {
                node: node.id.clone(),
            });
            match self.enter(node) {
                Next::Node(node) => next = node,
                Next::Stop => break,
            }
        }
        if let Some(node) = last {
            self.state.node = Some(node.id.clone());
        }
    }

    /// Does what `node` does on entry.
    fn enter(&mut self, node: &'a Node) -> Next<'a> {
        let params = &self.state.parameters;
        match &node.kind {
            NodeKind::Speak { text, next } => {
                let text = render(text, params);
                self.actions.push(Action::Speak { text });
                self.go(next)
            }
            NodeKind::SendMessage { text, next } => {
                let text = render(text, params);
                self.actions.push(Action::SendMessage { text });
                self.go(next)
            }
            NodeKind::CollectInput {
                prompt,
                timeout_secs,
                ..
            } => {
                self.prompt(prompt);
                self.wait_for_input(*timeout_secs);
                Next::Stop
            }
            NodeKind::Classify {
                prompt,
                input,
                intents,
                threshold,
                parameter,
                timeout_secs,
                fallback,
                ..
            } => {
                if let Some(input) = input {
                    let text = render(input, params);
                    return Next::Node(
                        self.classify(&text, intents, *threshold, parameter, fallback),
                    );
                }
                if let Some(prompt) = prompt {
                    self.prompt(prompt);
                }
                self.wait_for_input(*timeout_secs);
                Next::Stop
            }
            NodeKind::Conditions { branches, default } => {
                self.go(conditions::choose(branches, default, params))
            }
            NodeKind::SetParameter {
                parameter,
                value,
                next,
            } => {
                let value = render(value, params);
                self.set(parameter, value);
                self.go(next)
            }
            NodeKind::Counter {
                counter,
                step,
                next,
            } => {
                let current = params
                    .get(counter)
                    .and_then(|v| v.trim().parse::<i64>().ok())
                    .unwrap_or(0);
                let value = current.saturating_add(step.unwrap_or(1));
                self.set(counter, value.to_string());
                self.go(next)
            }
            NodeKind::ResetCounter { counter, next } => {
                self.set(counter, "0".into());
                self.go(next)
            }
            NodeKind::Webhook {
                method,
                url,
                headers,
                body,
                timeout_secs,
                ..
            } => {
                let request = webhook::request(
                    method.as_deref(),
                    url,
                    headers,
                    body.as_deref(),
                    *timeout_secs,
                    params,
                );
                self.actions.push(Action::CallWebhook(request));
                self.state.waiting = Some(Wait::Webhook);
                Next::Stop
            }
            NodeKind::SendSms { to, text, next } => {
                let to = match to {
                    Some(to) => render(to, params),
                    None => params.get("RECIPIENT").cloned().unwrap_or_default(),
                };
                let text = render(text, params);
                self.actions.push(Action::SendSms { to, text });
                self.go(next)
            }
            NodeKind::OptOut { next } => {
                self.actions.push(Action::OptOut);
                self.go(next)
            }
            NodeKind::SendEmail {
                to,
                subject,
                body,
                next,
            } => {
                let action = Action::SendEmail {
                    to: render(to, params),
                    subject: render(subject, params),
                    body: render(body, params),
                };
                self.actions.push(action);
                self.go(next)
            }
            NodeKind::End {} => {
                self.end(EndReason::Completed);
                Next::Stop
            }
            NodeKind::Transfer { to } => {
                let to = render(to, params);
                self.actions.push(Action::Transfer { to });
                self.end(EndReason::Transferred);
                Next::Stop
            }
            NodeKind::Flow { flow, next } => {
                if self.state.stack.len() >= MAX_SUBFLOW_DEPTH {
                    self.end(EndReason::SubflowTooDeep);
                    return Next::Stop;
                }
                let Some(sub) = self.flow.subflows.iter().find(|s| s.name == *flow) else {
                    return Next::Node(None);
                };
                self.state.stack.push(next.clone());
                self.go(&sub.start)
            }
            NodeKind::Return {} => match self.state.stack.pop() {
                Some(back) => self.go(&back),
                None => {
                    self.end(EndReason::Completed);
                    Next::Stop
                }
            },
            NodeKind::LiveAgent {
                url, timeout_secs, ..
            } => {
                let url = render(url, params);
                self.actions.push(Action::LiveAgentStart { url });
                let until = self.after(timeout_secs.unwrap_or(LIVE_AGENT_TIMEOUT_SECS));
                self.state.waiting = Some(Wait::LiveAgent { until });
                Next::Stop
            }
        }
    }

    // ---- helpers ----------------------------------------------------------------

    /// The node called `id`, in the flow or one of its sub-flows (their ids
    /// share one space).
    fn find(&self, id: &str) -> Option<&'a Node> {
        let flow: &'a FlowDefinition = self.flow;
        flow.nodes
            .iter()
            .chain(flow.subflows.iter().flat_map(|s| &s.nodes))
            .find(|n| n.id == id)
    }

    fn go(&self, id: &str) -> Next<'a> {
        Next::Node(self.find(id))
    }

    /// The node the conversation is at.
    fn current(&self) -> Option<&'a Node> {
        self.find(self.state.node.as_deref()?)
    }

    fn voice(&self) -> bool {
        self.state.channel == Some(Channel::Voice)
    }

    fn with_live_agent(&self) -> bool {
        matches!(self.state.waiting, Some(Wait::LiveAgent { .. }))
    }

    /// Unix milliseconds `secs` seconds from now.
    fn after(&self, secs: u64) -> u64 {
        self.now_ms.saturating_add(secs.saturating_mul(1000))
    }

    fn set(&mut self, name: &str, value: String) {
        self.state.parameters.insert(name.to_owned(), value.clone());
        self.actions.push(Action::ParameterSet {
            name: name.to_owned(),
            value,
        });
    }

    /// Says `text` to the person: spoken on voice, sent elsewhere.
    fn say(&mut self, text: String) {
        self.actions.push(if self.voice() {
            Action::Speak { text }
        } else {
            Action::SendMessage { text }
        });
    }

    /// Asks `template`, unless it renders empty.
    fn prompt(&mut self, template: &str) {
        let text = render(template, &self.state.parameters);
        if !text.is_empty() {
            self.say(text);
        }
    }

    fn wait_for_input(&mut self, timeout_secs: Option<u64>) {
        let default = if self.voice() {
            VOICE_INPUT_TIMEOUT_SECS
        } else {
            MESSAGING_INPUT_TIMEOUT_SECS
        };
        let until = self.after(timeout_secs.unwrap_or(default));
        self.state.waiting = Some(Wait::Input { until });
    }

    /// Leaves the waiting node: whatever comes next starts afresh.
    fn stop_waiting(&mut self) {
        self.state.waiting = None;
        self.state.retries = 0;
    }

    fn end(&mut self, reason: EndReason) {
        self.stop_waiting();
        self.state.stack.clear();
        self.state.ended = true;
        self.actions.push(Action::End { reason });
    }
}
