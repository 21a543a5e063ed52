//! Campaigns (CONTRACT §12): what a campaign's settings say, and the
//! scheduler that reaches its recipients.
//!
//! The scheduler runs on every server. Each pass looks at every live
//! campaign: it starts a scheduled one whose time has come, settles the
//! attempts whose sessions have ended (retrying by outcome), and starts
//! the attempts now due, in this order of checks for each recipient
//! (§12.5): the opt-outs, the window in the recipient's zones, the
//! schedule, then the pace: the campaign's `max_concurrent` and
//! `per_second`, and the agent's rate (shared with the API's triggers).
//! It waits for room rather than drawing 429s. Each attempt's session is
//! made in the store's transaction that counts the attempt, so servers
//! that pick the same recipient at once contact it once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use herald_core::campaign::{CampaignState, RecipientState};
use herald_core::session::{Outcome, SessionParameters};
use herald_core::window::{Tz, Window};
use herald_core::{CampaignId, SessionId};
use herald_limit::Decision;
use herald_store::{CampaignRecord, NewSession, RecipientChange, RecipientRecord};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::startup::Shutdown;
use crate::AppState;

/// How often the scheduler looks at the live campaigns.
const PASS: Duration = Duration::from_millis(100);
/// The most recipients one pass reads of one campaign.
const BATCH: usize = 500;
/// The most outcomes a campaign may retry after: 30 days.
pub const MAX_RETRY_SECS: u64 = 30 * 24 * 3600;
/// The most attempts a recipient may be given.
pub const MAX_ATTEMPTS: u32 = 10;
/// The fastest pace a campaign may ask for.
pub const MAX_PER_SECOND: u32 = 10_000;
/// Why the recipients not yet reached when the campaign's agent was
/// deleted are skipped.
pub const AGENT_DELETED: &str = "agent_deleted";

/// A campaign's settings, checked (CONTRACT §12.1); stored as this JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pace: Option<Pace>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// A WhatsApp agent's template: namespace, template, locale and
    /// components, whose texts may name the recipient's parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whatsapp: Option<Value>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// No attempt starts before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<DateTime<Utc>>,
    /// Recipients not reached by then expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Pace {
    /// The most attempts started in any one second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_second: Option<u32>,
    /// The most attempts under way at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Retries {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The outcomes tried again, each after so many seconds.
    #[serde(default)]
    pub after: BTreeMap<String, u64>,
}

/// The outcomes a campaign may retry after.
pub const RETRIED: [Outcome; 5] = [
    Outcome::Busy,
    Outcome::Timeout,
    Outcome::Failed,
    Outcome::Machine,
    Outcome::Rejected,
];

impl Settings {
    /// Reads what was stored.
    pub fn of(campaign: &CampaignRecord) -> Settings {
        serde_json::from_value(campaign.settings.clone()).unwrap_or_default()
    }

    /// What becomes of a recipient whose attempt `attempts` ended with
    /// `outcome` (CONTRACT §12.1): completed is never tried again; an
    /// outcome the retries name is, after its pause, while attempts are
    /// left.
    pub fn after_attempt(
        &self,
        attempts: u32,
        outcome: Outcome,
        now: DateTime<Utc>,
    ) -> RecipientChange {
        let settled = |state| RecipientChange {
            state,
            next_at: None,
            last_outcome: Some(outcome),
            skip_reason: None,
        };
        if outcome == Outcome::Completed {
            return settled(RecipientState::Completed);
        }
        let retry = self.retries.as_ref().and_then(|r| {
            let after = r.after.get(outcome.as_str())?;
            (attempts < r.max_attempts).then_some(*after)
        });
        match retry {
            Some(secs) => RecipientChange {
                state: RecipientState::Waiting,
                next_at: Some(now + chrono::Duration::seconds(secs as i64)),
                last_outcome: Some(outcome),
                skip_reason: None,
            },
            None => settled(RecipientState::Failed),
        }
    }
}

/// The zones a recipient's window is read in, as stored with it.
pub fn zones_of(recipient: &RecipientRecord) -> Vec<Tz> {
    recipient
        .timezone
        .as_deref()
        .unwrap_or("UTC")
        .split('&')
        .filter_map(|name| name.parse().ok())
        .collect()
}

/// The campaign's WhatsApp template with the recipient's parameters filled
/// into its texts.
pub fn fill_template(template: &Value, parameters: &SessionParameters) -> Value {
    match template {
        Value::String(text) => Value::String(
            herald_core::template::render(text, |name| parameters.get(name)).into_owned(),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| fill_template(item, parameters))
                .collect(),
        ),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(name, value)| (name.clone(), fill_template(value, parameters)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Each campaign's pace on this server: attempts are spread evenly over
/// each second, a pass's share at a time, rather than started in a burst
/// as a second's room opens. (The shared rate limiter still admits at most
/// `per_second` in any one second, from all servers together.)
#[derive(Default)]
pub struct Paces(Mutex<HashMap<CampaignId, Credit>>);

struct Credit {
    at: Instant,
    /// Attempts this server may start, and the fraction of one.
    attempts: f64,
}

impl Paces {
    /// How many attempts a campaign paced at `rate` may start now: what
    /// accrued since its last pass, at most a second's worth (a pass that
    /// came late makes up for it; the shared limiter still holds any one
    /// second to `rate`).
    fn take(&self, id: &CampaignId, rate: u32) -> usize {
        let mut credits = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let rate = f64::from(rate);
        let most = rate.max(1.0);
        // A pace starts with a pass's worth, as if paced for ever.
        let credit = credits.entry(id.clone()).or_insert(Credit {
            at: now.checked_sub(PASS).unwrap_or(now),
            attempts: 0.0,
        });
        let attempts =
            (credit.attempts + rate * now.duration_since(credit.at).as_secs_f64()).min(most);
        credit.at = now;
        let whole = attempts.floor();
        credit.attempts = attempts - whole;
        whole as usize
    }

    /// Forgets the campaigns not paced for `idle` (over, paused, or
    /// another server's now), so that the map does not grow for ever.
    fn forget_idle(&self, idle: Duration) {
        let mut credits = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        credits.retain(|_, credit| now.duration_since(credit.at) < idle);
    }

    /// Gives back attempts taken and not started.
    fn give_back(&self, id: &CampaignId, unused: usize) {
        let mut credits = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(credit) = credits.get_mut(id) {
            credit.attempts += unused as f64;
        }
    }
}

/// Runs the scheduler until shutdown.
pub async fn run(app: AppState, mut shutdown: Shutdown) {
    // Passes keep to a fixed beat (one that overruns is followed at once,
    // and the beat goes on). Each second then holds the same number of
    // passes, and a pace spread over them fills each second's quota: with
    // a pause after each pass instead, passes 118 ms apart put nine in
    // some seconds, the limiter refused the ninth's share, and the pace
    // fell 6% short.
    let mut beat = tokio::time::interval(PASS);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    loop {
        tokio::select! {
            _ = beat.tick() => {}
            _ = shutdown.wait() => return,
        }
        if let Err(e) = pass(&app).await {
            tracing::warn!(error = %format!("{e:#}"), "a campaign pass failed; trying again");
        }
    }
}

/// One pass over every live campaign, each worked on at once, within one
/// beat of the scheduler.
pub async fn pass(app: &AppState) -> anyhow::Result<()> {
    let until = Instant::now() + PASS;
    // A campaign paced again after a minute's rest starts afresh, with a
    // pass's worth.
    app.campaign_paces.forget_idle(Duration::from_secs(60));
    let mut campaigns = tokio::task::JoinSet::new();
    for campaign in app.store.live_campaigns().await? {
        let app = app.clone();
        campaigns.spawn(async move {
            if let Err(e) = work_on(&app, &campaign, until).await {
                tracing::warn!(campaign_id = %campaign.id, error = %format!("{e:#}"),
                    "could not work on a campaign");
            }
        });
    }
    while campaigns.join_next().await.is_some() {}
    Ok(())
}

/// Works on one campaign; its attempts are started by `until`.
async fn work_on(app: &AppState, campaign: &CampaignRecord, until: Instant) -> anyhow::Result<()> {
    let mut settings = Settings::of(campaign);
    let now = app.config.clock.now();
    let schedule = settings.schedule.unwrap_or_default();
    let store = app.store.as_ref();
    let mut state = campaign.state;
    if state == CampaignState::Scheduled {
        if schedule.start_at.is_some_and(|at| at > now) {
            return Ok(());
        }
        let started = store
            .set_campaign_state(
                campaign.account_id,
                &campaign.id,
                &[CampaignState::Scheduled],
                CampaignState::Running,
                now,
            )
            .await?;
        state = started.map_or(state, |c| c.state);
    }
    // Attempts that ended: done, or waiting for their retry; a cancelled
    // campaign retries nothing.
    if state == CampaignState::Cancelled {
        settings.retries = None;
    }
    // Attempts that ended are settled while new ones start: a settled
    // recipient is waiting for a retry or done, never due at once, so the
    // two never meet, and the pace's slots are not left to free unused
    // while the settling commits.
    let settling = settle_ended(app, campaign, &settings, now);
    let starting = async {
        if state != CampaignState::Running {
            return Ok(());
        }
        if schedule.end_at.is_some_and(|at| at <= now) {
            store
                .close_recipients(&campaign.id, RecipientState::Expired, None)
                .await?;
            Ok(())
        } else {
            start_due(app, campaign, &settings, now, until).await
        }
    };
    let (settled, started) = tokio::join!(settling, starting);
    settled?;
    started?;
    if state != CampaignState::Running {
        return Ok(());
    }
    // Over once nobody is left to reach or under way.
    let open = store.has_open_recipients(&campaign.id).await?;
    if !open {
        store
            .set_campaign_state(
                campaign.account_id,
                &campaign.id,
                &[CampaignState::Running],
                CampaignState::Completed,
                now,
            )
            .await?;
    }
    Ok(())
}

/// Settles the attempts whose sessions ended: done, or waiting for a
/// retry. Together, so that the store commits them together: one by one,
/// a durable commit each, they would take the whole of a pass at a few
/// hundred attempts a second.
async fn settle_ended(
    app: &AppState,
    campaign: &CampaignRecord,
    settings: &Settings,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let mut settles = tokio::task::JoinSet::new();
    for ended in app.store.ended_attempts(&campaign.id, BATCH).await? {
        let change = settings.after_attempt(ended.attempts, ended.outcome, now);
        let (app, id) = (app.clone(), campaign.id.clone());
        settles.spawn(async move {
            app.store
                .settle_attempt(&id, ended.n, ended.session_id, change)
                .await
        });
    }
    while let Some(settled) = settles.join_next().await {
        settled??;
    }
    Ok(())
}

/// Starts the attempts due now, as far as the pace allows, by `until`.
async fn start_due(
    app: &AppState,
    campaign: &CampaignRecord,
    settings: &Settings,
    now: DateTime<Utc>,
    until: Instant,
) -> anyhow::Result<()> {
    let store = app.store.as_ref();
    let pace = settings.pace.unwrap_or_default();
    let room = match pace.max_concurrent {
        Some(most) => {
            let under_way = store.recipients_in_progress(&campaign.id).await?;
            most.saturating_sub(under_way) as usize
        }
        None => BATCH,
    };
    if room == 0 {
        return Ok(());
    }
    let Some(agent) = app.directory.agent(&campaign.agent_id) else {
        // Deleted (the store says so: this server's directory may not
        // have heard yet of an agent made a moment ago): nobody more can
        // be reached through it.
        if store
            .agent(campaign.account_id, &campaign.agent_id)
            .await?
            .is_none()
        {
            store
                .close_recipients(&campaign.id, RecipientState::Skipped, Some(AGENT_DELETED))
                .await?;
        }
        return Ok(());
    };
    let Some((version, from)) = agent.published.clone() else {
        return Ok(());
    };
    let pace_key = format!("campaign:{}", campaign.id);
    let agent_rate = app
        .directory
        .rate(&agent.agent_id)
        .unwrap_or(app.config.default_rate);
    // This server's even share of the pace, first: no more are read.
    let mut allowed = match pace.per_second {
        Some(rate) => app.campaign_paces.take(&campaign.id, rate),
        None => room,
    };
    let room = room.min(allowed);
    if room == 0 {
        return Ok(());
    }
    let mut starts = tokio::task::JoinSet::new();
    for recipient in store.due_recipients(&campaign.id, now, room).await? {
        let defer = |change: RecipientChange| {
            store.defer_recipient(&campaign.id, recipient.n, recipient.attempts, change)
        };
        // 1. Opt-outs.
        if store
            .opt_out(campaign.account_id, agent.channel, &recipient.to)
            .await?
            .is_some()
        {
            defer(RecipientChange {
                state: RecipientState::Skipped,
                next_at: None,
                last_outcome: None,
                skip_reason: Some("opted_out".into()),
            })
            .await?;
            continue;
        }
        // 2. The window, in the recipient's zones.
        if let Some(window) = &settings.window {
            let zones = zones_of(&recipient);
            if !window.is_open(&zones, now) {
                let opens = window.next_open(&zones, now);
                let end = settings.schedule.and_then(|s| s.end_at);
                let change = match opens {
                    // 3. The schedule: it would open too late.
                    Some(at) if end.is_some_and(|end| at >= end) => RecipientChange {
                        state: RecipientState::Expired,
                        next_at: None,
                        last_outcome: None,
                        skip_reason: None,
                    },
                    // Not within the search's reach: looked at again then.
                    opens => RecipientChange {
                        state: RecipientState::Waiting,
                        next_at: Some(opens.unwrap_or(
                            now + chrono::Duration::days(herald_core::window::SEARCH_DAYS as i64),
                        )),
                        last_outcome: recipient.last_outcome,
                        skip_reason: None,
                    },
                };
                defer(change).await?;
                continue;
            }
        }
        // 4. The pace: the campaign's, then the agent's. A slot of the
        // campaign's that frees within this beat is waited for, so that
        // each attempt starts as soon as the second before it allows: the
        // pace then keeps to its rate rather than to the beat of passes,
        // which would lose what frees up between them.
        let permit = match pace.per_second {
            Some(rate) => loop {
                match app.limiter.acquire(&pace_key, rate).await? {
                    Decision::Admitted(permit) => break Some(permit),
                    Decision::Limited { retry_after } if Instant::now() + retry_after < until => {
                        tokio::time::sleep(retry_after).await;
                    }
                    Decision::Limited { .. } => break None,
                }
            },
            None => None,
        };
        if pace.per_second.is_some() && permit.is_none() {
            break;
        }
        let agent_permit = match app
            .limiter
            .acquire(agent.agent_id.as_str(), agent_rate)
            .await?
        {
            Decision::Admitted(permit) => permit,
            Decision::Limited { .. } => {
                if let Some(permit) = permit {
                    app.limiter.release(&pace_key, permit).await;
                }
                break;
            }
        };
        let session = NewSession {
            id: SessionId::generate(),
            account_id: campaign.account_id,
            agent_id: agent.agent_id.clone(),
            agent_version: version,
            channel: agent.channel,
            to: recipient.to.clone(),
            from: from.clone(),
            status_url: campaign.status_url.clone(),
            // A campaign that tries machines again wants a person: it
            // hangs up on a machine, as `hangup_on_answer_machine` does.
            hangup_on_machine: agent.channel == herald_core::Channel::Voice
                && settings
                    .retries
                    .as_ref()
                    .is_some_and(|r| r.after.contains_key(Outcome::Machine.as_str())),
            parameters: recipient.parameters.clone(),
            whatsapp: settings
                .whatsapp
                .as_ref()
                .map(|t| fill_template(t, &recipient.parameters)),
            created_at: Utc::now(),
            idempotency: None,
            inbound: false,
            first_input: None,
            campaign_id: Some(campaign.id.clone()),
        };
        allowed -= 1;
        // Started together, so that the store commits them together.
        let (app, id, pace_key) = (app.clone(), campaign.id.clone(), pace_key.clone());
        let (agent_id, channel) = (agent.agent_id.clone(), agent.channel);
        let (n, attempts) = (recipient.n, recipient.attempts);
        starts.spawn(async move {
            let started = app.store.start_attempt(&id, n, attempts, session).await?;
            if !started {
                // Another server started it first: the slots were not
                // used, and go back to the pace and the agent's rate.
                if let Some(permit) = permit {
                    app.limiter.release(&pace_key, permit).await;
                }
                app.limiter.release(agent_id.as_str(), agent_permit).await;
            } else {
                app.metrics
                    .sessions_accepted
                    .get_or_create(&crate::metrics::ChannelLabels {
                        channel: channel.as_str(),
                    })
                    .inc();
                app.dispatch_wakeup.notify_one();
            }
            anyhow::Ok(started)
        });
    }
    // What was not started (the pace's room, or a recipient another
    // server started first) is this server's to start next time.
    let mut unused = allowed;
    while let Some(started) = starts.join_next().await {
        if !started?? {
            unused += 1;
        }
    }
    if pace.per_second.is_some() {
        app.campaign_paces.give_back(&campaign.id, unused);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(retries: serde_json::Value) -> Settings {
        serde_json::from_value(serde_json::json!({ "retries": retries })).unwrap()
    }

    #[test]
    fn an_attempt_is_retried_by_its_outcome_while_attempts_are_left() {
        let now = Utc::now();
        let s = settings(serde_json::json!({"max_attempts": 3, "after": {"busy": 60}}));
        let busy = s.after_attempt(1, Outcome::Busy, now);
        assert_eq!(busy.state, RecipientState::Waiting);
        assert_eq!(busy.next_at, Some(now + chrono::Duration::seconds(60)));
        assert_eq!(busy.last_outcome, Some(Outcome::Busy));
        assert_eq!(
            s.after_attempt(3, Outcome::Busy, now).state,
            RecipientState::Failed
        );
        assert_eq!(
            s.after_attempt(1, Outcome::Timeout, now).state,
            RecipientState::Failed
        );
        assert_eq!(
            s.after_attempt(1, Outcome::Completed, now).state,
            RecipientState::Completed
        );
        assert_eq!(
            Settings::default()
                .after_attempt(1, Outcome::Busy, now)
                .state,
            RecipientState::Failed
        );
    }

    #[test]
    fn a_pace_s_credit_accrues_with_time_and_idle_ones_are_forgotten() {
        let paces = Paces::default();
        let id = CampaignId::generate();
        let first = paces.take(&id, 100);
        assert!(
            (10..=11).contains(&first),
            "a pass's worth to begin with: {first}"
        );
        std::thread::sleep(Duration::from_millis(50));
        let accrued = paces.take(&id, 100);
        assert!((5..=100).contains(&accrued), "{accrued}");
        // What was given back comes with the next take.
        paces.give_back(&id, 3);
        assert!(paces.take(&id, 100) >= 3);
        // Never more than a second's worth.
        paces.give_back(&id, 1_000);
        assert_eq!(paces.take(&id, 100), 100);
        paces.forget_idle(Duration::from_secs(60));
        assert_eq!(paces.0.lock().unwrap().len(), 1);
        paces.forget_idle(Duration::ZERO);
        assert!(paces.0.lock().unwrap().is_empty());
    }

    #[test]
    fn a_template_s_texts_take_the_recipient_s_parameters() {
        let parameters =
            SessionParameters::from_json(&serde_json::json!([{"name": "NAME", "value": "Ada"}]))
                .unwrap();
        let template = serde_json::json!({"namespace": "acme", "template": "hello",
            "components": [{"type": "body", "parameters": [{"type": "text", "text": "$NAME"}]}]});
        let filled = fill_template(&template, &parameters);
        assert_eq!(filled["components"][0]["parameters"][0]["text"], "Ada");
        assert_eq!(filled["template"], "hello");
    }
}
