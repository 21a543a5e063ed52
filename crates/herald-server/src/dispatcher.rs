//! The dispatcher: takes stored sessions off the queue and runs each through
//! its channel's provider and its agent's flow, recording every step.
//!
//! Each step is committed as it happens (events, status changes, callbacks
//! in the outbox). Events and callbacks carry keys derived from their place
//! in the run, so if a worker dies mid-session and the job is run again after
//! its lease, the steps already recorded are not recorded twice.

use std::sync::Arc;
use std::time::SystemTime;

use chrono::Utc;
use herald_channels::{
    CallAnswer, CallRequest, CallResult, MessageContent, OutboundMessage, Provider,
};
use herald_core::session::{MessageStatus, Outcome, SessionStatus};
use herald_core::{ConversationUuid, Destination};
use herald_flow::{Action, Event, FlowState};
use herald_store::{
    DispatchLease, LeaseToken, NewCallback, NewEvent, SessionRecord, SessionUpdate, StoreError,
};
use serde_json::json;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::metrics::{ChannelLabels, OutcomeLabels};
use crate::work::LeasedWork;
use crate::{AppState, Shutdown};

/// Sessions run at once by one server.
const MAX_RUNNING: usize = 1024;
const CLAIM_BATCH: usize = 128;

pub async fn run(app: AppState, mut shutdown: Shutdown) {
    let running = Arc::new(Semaphore::new(MAX_RUNNING));
    let mut work = LeasedWork::default();
    loop {
        work.reap();
        let free = running.available_permits().min(CLAIM_BATCH);
        let claimed = if free == 0 {
            Vec::new()
        } else {
            match app
                .store
                .claim_dispatches(Utc::now(), app.config.dispatch_lease, free)
                .await
            {
                Ok(leases) => leases,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "could not claim dispatch jobs");
                    Vec::new()
                }
            }
        };
        // With every slot busy, wait a little rather than spin.
        let idle = free == 0 || claimed.len() < free;
        for lease in claimed {
            let permit = running.clone().acquire_owned().await.expect("never closed");
            let app = app.clone();
            work.spawn(lease, async move {
                let id = lease.session_id;
                match run_holding_lease(&app, lease).await {
                    Ok(()) => {}
                    Err(e) if is_lease_lost(&e) => {
                        tracing::warn!(session_id = %id, "lost the lease on a session; another worker has it");
                    }
                    // The job keeps its lease and runs again when it expires.
                    Err(e) => {
                        tracing::error!(session_id = %id, error = %format!("{e:#}"), "session run failed")
                    }
                }
                drop(permit);
            });
        }
        if idle {
            tokio::select! {
                _ = app.dispatch_wakeup.notified() => {}
                _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
                _ = shutdown.wait() => break,
            }
        } else if shutdown.is_set() {
            break;
        }
    }
    // Let sessions under way finish, within the grace period; give the
    // leases of the rest back so the next server starts them at once.
    let unfinished = work.drain(app.config.shutdown_grace).await;
    if !unfinished.is_empty() {
        tracing::info!(
            count = unfinished.len(),
            "giving back unfinished dispatch jobs"
        );
        if let Err(e) = app.store.release_dispatches(unfinished).await {
            tracing::warn!(error = %format!("{e:#}"), "could not give back dispatch jobs");
        }
    }
}

fn is_lease_lost(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<StoreError>(), Some(StoreError::LeaseLost))
}

/// Runs a session, renewing its job's lease while it runs, so that a
/// session longer than the lease is not taken up a second time. If the
/// lease is lost all the same (this worker stalled past it and another took
/// the job), the run stops: its writes would be refused anyway.
async fn run_holding_lease(app: &AppState, lease: DispatchLease) -> anyhow::Result<()> {
    // The run and the renewals are polled side by side: a renewal waiting on
    // the store never holds the run up, nor the other way round.
    tokio::select! {
        result = run_session(app, lease) => result,
        lost = keep_renewing(app, lease) => Err(lost.into()),
    }
}

/// Renews the lease every third of its length; returns once it is lost.
async fn keep_renewing(app: &AppState, lease: DispatchLease) -> StoreError {
    let length = app.config.dispatch_lease;
    let mut renew = tokio::time::interval(length / 3);
    renew.tick().await; // the first tick is immediate; the claim just set the lease
    loop {
        renew.tick().await;
        let until = Utc::now() + chrono::Duration::from_std(length).unwrap_or_default();
        match app.store.renew_dispatch(lease, until).await {
            Ok(true) => {}
            Ok(false) => return StoreError::LeaseLost,
            Err(e) => {
                tracing::warn!(session_id = %lease.session_id, error = %format!("{e:#}"), "could not renew a lease");
            }
        }
    }
}

/// Records a session's steps with stable keys.
struct Recorder<'a> {
    app: &'a AppState,
    session: &'a SessionRecord,
    lease: LeaseToken,
    step: u32,
}

impl Recorder<'_> {
    fn event(&mut self, kind: &str, data: Option<serde_json::Value>) -> NewEvent {
        self.step += 1;
        NewEvent {
            key: Some(format!("run:{}", self.step)),
            kind: kind.to_owned(),
            at: Utc::now(),
            data,
        }
    }

    async fn record(&mut self, update: SessionUpdate) -> anyhow::Result<()> {
        let update = SessionUpdate {
            lease: Some(self.lease),
            ..update
        };
        self.app
            .store
            .update_session(self.session.id, update)
            .await?;
        Ok(())
    }

    async fn note(&mut self, kind: &str, data: Option<serde_json::Value>) -> anyhow::Result<()> {
        let event = self.event(kind, data);
        self.record(SessionUpdate {
            events: vec![event],
            ..Default::default()
        })
        .await
    }

    fn callback(&self, dedupe_key: String, body: serde_json::Value) -> Option<NewCallback> {
        let url = self.session.status_url.clone()?;
        Some(NewCallback {
            dedupe_key,
            webhook_id: format!("msg_{}", Uuid::new_v4().simple()),
            account_id: self.session.account_id,
            url,
            body: body.to_string(),
            created_at: Utc::now(),
        })
    }

    async fn finish(
        &mut self,
        outcome: Outcome,
        callbacks: Vec<NewCallback>,
    ) -> anyhow::Result<()> {
        let event = self.event("ended", Some(json!({ "outcome": outcome })));
        self.record(SessionUpdate {
            status: Some(SessionStatus::Ended),
            outcome: Some(outcome),
            ended_at: Some(Utc::now()),
            events: vec![event],
            callbacks,
            finish_dispatch: true,
            ..Default::default()
        })
        .await?;
        self.app
            .metrics
            .sessions_ended
            .get_or_create(&OutcomeLabels {
                channel: self.session.channel.as_str(),
                outcome: outcome.as_str(),
            })
            .inc();
        self.app.callback_wakeup.notify_one();
        Ok(())
    }
}

#[tracing::instrument(skip_all, fields(session_id = %lease.session_id))]
async fn run_session(app: &AppState, lease: DispatchLease) -> anyhow::Result<()> {
    let id = lease.session_id;
    let Some(session) = app.store.session_for_work(id).await? else {
        anyhow::bail!("a dispatch job names a session that does not exist");
    };
    if session.status == SessionStatus::Ended {
        // A re-run after the end was recorded but before the job was removed.
        return app
            .store
            .update_session(
                id,
                SessionUpdate {
                    finish_dispatch: true,
                    lease: Some(lease.token),
                    ..Default::default()
                },
            )
            .await
            .map_err(Into::into);
    }
    let version = app
        .store
        .agent_version(&session.agent_id, session.agent_version)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the session's agent version is missing"))?;
    let mut rec = Recorder {
        app,
        session: &session,
        lease: lease.token,
        step: 0,
    };
    let conversation = session
        .conversation_uuid
        .clone()
        .map(ConversationUuid::from_stored)
        .unwrap_or_else(ConversationUuid::generate);
    app.metrics
        .sessions_dispatched
        .get_or_create(&ChannelLabels {
            channel: session.channel.as_str(),
        })
        .inc();
    let dispatched = rec.event("dispatched", None);
    rec.record(SessionUpdate {
        status: Some(SessionStatus::Active),
        conversation_uuid: (!session.channel.is_messaging())
            .then(|| conversation.as_str().to_owned()),
        events: vec![dispatched],
        ..Default::default()
    })
    .await?;

    let destination = if session.channel.is_messaging() {
        Destination::parse_messaging(&session.to)
    } else {
        Destination::parse_voice(&session.to)
    };
    let digits = destination.ok().and_then(|d| d.last_two_digits());
    let provider = app.provider.as_ref();
    if session.channel.is_messaging() {
        run_messaging(&mut rec, provider, &version.flow, digits).await
    } else {
        run_voice(&mut rec, provider, &version.flow, digits, &conversation).await
    }
}

async fn run_voice(
    rec: &mut Recorder<'_>,
    provider: &dyn Provider,
    flow: &herald_core::flow::FlowDefinition,
    digits: Option<u8>,
    conversation: &ConversationUuid,
) -> anyhow::Result<()> {
    let session = rec.session;
    let call = CallRequest {
        to: session.to.clone(),
        from: session.from.clone(),
        last_two_digits: digits,
    };
    rec.note("ringing", None).await?;
    let voice_callback = |rec: &Recorder, status: &str| {
        rec.callback(
            format!("call:{status}"),
            json!({
                "agent_id": session.agent_id,
                "to": session.to,
                "conversation_uuid": conversation.as_str(),
                "status": status,
                "timestamp": herald_core::time::rfc3339(Utc::now()),
            }),
        )
    };
    match provider.call(&call).await {
        CallResult::NotAnswered(failure) => {
            let status = failure.as_str();
            let outcome: Outcome = status.parse().expect("call failures are outcomes");
            let callbacks = voice_callback(rec, status).into_iter().collect();
            rec.note("call_status", Some(json!({ "status": status })))
                .await?;
            rec.finish(outcome, callbacks).await
        }
        CallResult::Answered(CallAnswer::Machine) if session.hangup_on_machine => {
            rec.note("answered", Some(json!({ "by": "machine" })))
                .await?;
            provider.hang_up(&call).await;
            rec.note("hangup", Some(json!({ "reason": "answering machine" })))
                .await?;
            let callbacks = voice_callback(rec, "machine").into_iter().collect();
            rec.finish(Outcome::Machine, callbacks).await
        }
        CallResult::Answered(by) => {
            let by = match by {
                CallAnswer::Person => "person",
                CallAnswer::Machine => "machine",
            };
            rec.note("answered", Some(json!({ "by": by }))).await?;
            let (_, actions) = herald_flow::step(
                flow,
                FlowState::default(),
                Event::Started,
                SystemTime::now(),
            );
            for action in actions {
                match action {
                    Action::Entered { node } => {
                        rec.note("node_entered", Some(json!({ "node": node })))
                            .await?
                    }
                    Action::Speak { text } => {
                        provider.say(&call, &text).await;
                        rec.note("speak", Some(json!({ "text": text }))).await?;
                    }
                    // Validation keeps messages out of voice flows.
                    Action::SendMessage { .. } => {}
                    Action::End => {
                        provider.hang_up(&call).await;
                        rec.note("hangup", None).await?;
                    }
                }
            }
            rec.finish(Outcome::Completed, Vec::new()).await
        }
    }
}

async fn run_messaging(
    rec: &mut Recorder<'_>,
    provider: &dyn Provider,
    flow: &herald_core::flow::FlowDefinition,
    digits: Option<u8>,
) -> anyhow::Result<()> {
    let session = rec.session;
    let (_, actions) = herald_flow::step(
        flow,
        FlowState::default(),
        Event::Started,
        SystemTime::now(),
    );
    // A WhatsApp conversation opens with the trigger's template.
    let opening = session.whatsapp.clone().map(Step::Template);
    let mut sent = 0;
    for step in opening
        .into_iter()
        .chain(actions.into_iter().map(Step::Flow))
    {
        let content = match step {
            Step::Template(t) => MessageContent::Template(t),
            Step::Flow(Action::Entered { node }) => {
                rec.note("node_entered", Some(json!({ "node": node })))
                    .await?;
                continue;
            }
            Step::Flow(Action::SendMessage { text }) => MessageContent::Text(text),
            // Validation keeps speech out of messaging flows; the end is
            // recorded by `finish`.
            Step::Flow(Action::Speak { .. } | Action::End) => continue,
        };
        let outcome = send_message(rec, provider, sent, content, digits).await?;
        sent += 1;
        if outcome != Outcome::Completed {
            // The person cannot be reached: the conversation stops here.
            return rec.finish(outcome, Vec::new()).await;
        }
    }
    rec.finish(Outcome::Completed, Vec::new()).await
}

enum Step {
    Template(serde_json::Value),
    Flow(Action),
}

/// Sends one message and records its statuses, each with its callback;
/// answers how the message ended.
async fn send_message(
    rec: &mut Recorder<'_>,
    provider: &dyn Provider,
    n: usize,
    content: MessageContent,
    digits: Option<u8>,
) -> anyhow::Result<Outcome> {
    let session = rec.session;
    // Stable per session and message, so a re-run reports the same id.
    let message_uuid = Uuid::new_v5(&session.id.as_uuid(), format!("message-{n}").as_bytes());
    let shown = match &content {
        MessageContent::Text(t) => json!({ "text": t }),
        MessageContent::Template(t) => json!({ "template": t }),
    };
    rec.note(
        "message_sent",
        Some(json!({ "message_uuid": message_uuid, "content": shown })),
    )
    .await?;
    let mut statuses = provider
        .send(&OutboundMessage {
            channel: session.channel,
            to: session.to.clone(),
            from: session.from.clone(),
            content,
            last_two_digits: digits,
        })
        .await;
    let mut outcome = Outcome::Completed;
    while let Some(status) = statuses.recv().await {
        let event = rec.event(
            "message_status",
            Some(json!({ "message_uuid": message_uuid, "status": status })),
        );
        let callback = rec.callback(
            format!("message:{n}:{}", status.as_str()),
            json!({
                "agent_id": session.agent_id,
                "to": session.to,
                "session_id": session.id,
                "message_uuid": message_uuid,
                "channel": session.channel,
                "status": status,
                "timestamp": herald_core::time::rfc3339(event.at),
            }),
        );
        rec.record(SessionUpdate {
            events: vec![event],
            callbacks: callback.into_iter().collect(),
            ..Default::default()
        })
        .await?;
        rec.app.callback_wakeup.notify_one();
        match status {
            MessageStatus::Rejected => outcome = Outcome::Rejected,
            MessageStatus::Failed => outcome = Outcome::Failed,
            _ => {}
        }
    }
    Ok(outcome)
}
