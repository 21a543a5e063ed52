//! Campaigns (CONTRACT §12) on the simulator: recipients by JSON and CSV,
//! each reached once per attempt and ending in its own state, retries by
//! outcome, opt-outs, windows in the recipient's zones, the schedule, the
//! pace, and pause, resume and cancel.

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use herald_core::Channel;
use serde_json::{json, Value};

use crate::helpers::*;

/// The `k`th number of a test, whose last two digits pick the simulator's
/// fate of a call (90 busy, 91 rejected, 92 timeout, …; others answer).
fn number(k: u32, ending: u32) -> String {
    format!("447700{k:04}{ending:02}")
}

/// A call that asks for keys and waits a second for them: it stays under
/// way that long.
fn asking_call() -> Value {
    json!({"format": 1, "start": "ask", "nodes": [
        {"id": "ask", "type": "collect_input", "prompt": "Key a number.", "entity": "number",
         "parameter": "N", "timeout_secs": 1, "success": "end", "invalid": "end", "no_input": "end"},
        {"id": "end", "type": "end"}
    ]})
}

struct Campaigns {
    app: TestApp,
    key: String,
    agent: String,
    /// The agent's number.
    number: String,
}

impl Campaigns {
    async fn start(channel: Channel, flow: Option<Value>) -> Campaigns {
        Self::start_with(channel, flow, |_| {}).await
    }

    async fn start_with(
        channel: Channel,
        flow: Option<Value>,
        configure: impl FnOnce(&mut herald_server::Config),
    ) -> Campaigns {
        let app = TestApp::spawn_with(|c| {
            c.default_rate = 100;
            configure(c);
        })
        .await;
        let key = app.new_key(&format!("campaigns-{}", unique_number())).await;
        let mut body = json!({"name": "c", "type": channel, "number": unique_number()});
        if let Some(flow) = flow {
            body["flow"] = flow;
        }
        Self::with_agent(app, key, body).await
    }

    /// A campaign's agent made of `body` and published.
    async fn with_agent(app: TestApp, key: String, body: Value) -> Campaigns {
        let number = body["number"].as_str().unwrap().to_owned();
        let agent = app.publish_agent(&key, body).await;
        Campaigns {
            app,
            key,
            agent,
            number,
        }
    }

    async fn create(&self, mut body: Value) -> String {
        body["agent_id"] = json!(self.agent);
        if body.get("name").is_none() {
            body["name"] = json!("reminders");
        }
        let response = self.app.post("/campaigns", &self.key, body).await;
        let status = response.status();
        let created: Value = response.json().await.unwrap();
        assert_eq!(status, 201, "{created}");
        assert_eq!(created["state"], "draft");
        created["campaign_id"].as_str().unwrap().to_owned()
    }

    async fn add(&self, id: &str, rows: Value) -> Value {
        let response = self
            .app
            .post(&format!("/campaigns/{id}/recipients"), &self.key, rows)
            .await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn add_csv(&self, id: &str, csv: &[u8]) -> reqwest::Response {
        reqwest::Client::new()
            .post(self.app.url(&format!("/campaigns/{id}/recipients")))
            .header("X-Vgai-Key", &self.key)
            .header("Content-Type", "text/csv")
            .body(csv.to_vec())
            .send()
            .await
            .unwrap()
    }

    async fn act(&self, id: &str, action: &str) -> reqwest::Response {
        self.app
            .post(&format!("/campaigns/{id}/{action}"), &self.key, json!({}))
            .await
    }

    async fn read(&self, id: &str) -> Value {
        let response = self.app.get(&format!("/campaigns/{id}"), &self.key).await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Waits until the campaign is `state`.
    async fn until(&self, id: &str, state: &str) -> Value {
        for _ in 0..800 {
            let campaign = self.read(id).await;
            if campaign["state"] == state {
                return campaign;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "campaign {id} did not become {state}: {}",
            self.read(id).await
        );
    }

    /// Every recipient `query` selects, page by page.
    async fn recipients(&self, id: &str, query: &str) -> Vec<Value> {
        let query = query.trim_start_matches('?');
        self.every(
            &format!("/campaigns/{id}/recipients?{query}&limit=100"),
            "recipients",
        )
        .await
    }

    /// Every session of the campaign, page by page.
    async fn sessions(&self, id: &str) -> Vec<Value> {
        self.every(&format!("/sessions?campaign_id={id}&limit=100"), "sessions")
            .await
    }

    async fn every(&self, path: &str, field: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut cursor = String::new();
        loop {
            let response = self.app.get(&format!("{path}{cursor}"), &self.key).await;
            let status = response.status();
            let page: Value = response.json().await.unwrap();
            assert_eq!(status, 200, "{page}");
            all.extend(page[field].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = format!("&cursor={next}"),
                None => return all,
            }
        }
    }

    /// Waits until the campaign's counts are `expected` (those it names).
    async fn until_counts(&self, id: &str, expected: Value) -> Value {
        let matches = |campaign: &Value| {
            expected
                .as_object()
                .unwrap()
                .iter()
                .all(|(field, n)| campaign["counts"][field] == *n)
        };
        for _ in 0..1200 {
            let campaign = self.read(id).await;
            if matches(&campaign) {
                return campaign;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "campaign {id} never counted {expected}: {}",
            self.read(id).await
        );
    }
}

fn counts(campaign: &Value, field: &str) -> u64 {
    campaign["counts"][field].as_u64().unwrap()
}

/// Wednesday 10 June 2026, 12:00 UTC: 13:00 in London, 05:00 in Los
/// Angeles, midnight in Auckland.
fn june_noon() -> DateTime<Utc> {
    "2026-06-10T12:00:00Z".parse().unwrap()
}

/// A few hundred recipients, each ending in its own state: the answered
/// ones completed; each way a call fails, retried while attempts are left
/// where the retries name it and failed at once where they do not; those
/// whose window opens later waiting for it, and those whose window opens
/// only after the end expired; one that opted out after it was added
/// skipped; rows that cannot be taken refused by their place. Each attempt
/// is one session, to that recipient, with the campaign's id.
#[tokio::test]
async fn a_few_hundred_recipients_each_end_in_their_state_each_attempt_one_session() {
    let clock = herald_server::clock::Clock::starting_at(june_noon());
    let set = clock.clone();
    let on = Campaigns::start_with(Channel::Voice, None, |c| c.clock = set).await;
    let every_day = json!(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]);
    let id = on
        .create(json!({
            "window": {"days": every_day, "start": "08:00", "end": "20:00"},
            "schedule": {"end_at": "2026-06-10T18:00:00Z"},
            "retries": {"max_attempts": 3, "after": {"busy": 1, "timeout": 1, "machine": 1}}}))
        .await;
    let mut rows = Vec::new();
    let mut k = 0;
    let mut add = |ending: u32, n: u32, extra: Value| {
        for _ in 0..n {
            let mut row = json!({"to": number(k, ending), "id": format!("r{k}")});
            for (field, value) in extra.as_object().unwrap() {
                row[field] = value.clone();
            }
            rows.push(row);
            k += 1;
        }
    };
    // Answered, in London's afternoon.
    for ending in 0..50 {
        add(ending, 5, json!({}));
    }
    add(90, 10, json!({})); // busy: retried until the attempts run out
    add(91, 10, json!({})); // rejected: not retried
    add(92, 10, json!({})); // timeout: retried
    add(93, 10, json!({})); // failed: not retried
    add(94, 5, json!({})); // cancelled: not retried
    add(95, 5, json!({})); // a machine: hung up on, and retried
    add(10, 5, json!({"timezone": "America/Los_Angeles"})); // at 08:00 there
    add(11, 5, json!({"timezone": "Pacific/Auckland"})); // after the end
    add(12, 3, json!({})); // opt out once added
    let accepted = rows.len();
    let opted = number(9000, 13);
    // Rows that cannot be taken, each with its place and reason.
    let bad = [
        json!({"to": opted}),
        json!({"to": "not a number"}),
        json!({"to": number(0, 0)}),
        json!({"to": number(9001, 12), "id": "r0"}),
        json!({"to": number(9002, 12), "parameters": {"NAME": "Ada"}}),
        json!({"to": number(9003, 12), "timezone": "Mars/Base"}),
    ];
    rows.extend(bad);
    let on = &on;
    let optout = |to: String| async move {
        let response = on
            .app
            .post("/opt-outs", &on.key, json!({"channel": "voice", "to": to}))
            .await;
        assert_eq!(response.status(), 201);
    };
    optout(opted.clone()).await;
    let added = on.add(&id, json!(rows)).await;
    assert_eq!(added["accepted"], accepted, "{added}");
    let rejected: Vec<(u64, String)> = added["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().unwrap(),
                r["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let line = |i: usize| (accepted + i + 1) as u64;
    assert_eq!(
        rejected,
        [
            (line(0), format!("{opted} has opted out of voice")),
            (line(1), "to: bad number \"not a number\"".to_owned()),
            (line(2), "duplicate to".into()),
            (line(3), "duplicate id".into()),
            (
                line(4),
                "parameter NAME is not one the agent's flow declares".into()
            ),
            (
                line(5),
                "timezone \"Mars/Base\" is not an IANA time zone".into()
            ),
        ]
    );
    let leaving: Vec<String> = (accepted - 3..accepted)
        .map(|k| number(k as u32, 12))
        .collect();
    for to in &leaving {
        optout(to.clone()).await;
    }

    assert_eq!(on.act(&id, "start").await.status(), 200);
    // All but Los Angeles are settled; Los Angeles waits for its morning.
    let settled = on
        .until_counts(
            &id,
            json!({"completed": 250, "failed": 50, "skipped": 3, "expired": 5, "waiting": 5,
                   "in_progress": 0, "pending": 0}),
        )
        .await;
    assert_eq!(settled["state"], "running");
    let waiting = on.recipients(&id, "?state=waiting").await;
    for recipient in &waiting {
        assert_eq!(recipient["timezone"], "America/Los_Angeles");
        assert_eq!(
            recipient["next_at"], "2026-06-10T15:00:00.000Z",
            "{recipient}"
        );
        assert_eq!(recipient["attempts"], 0);
    }
    clock.set("2026-06-10T15:00:00Z".parse().unwrap());
    let done = on.until(&id, "completed").await;
    assert_eq!(counts(&done, "recipients"), accepted as u64);
    assert_eq!(counts(&done, "completed"), 255, "{done}");
    assert_eq!(counts(&done, "failed"), 50, "{done}");
    assert_eq!(counts(&done, "skipped"), 3, "{done}");
    assert_eq!(counts(&done, "expired"), 5, "{done}");
    assert_eq!(
        done["counts"]["by_outcome"],
        json!({"completed": 255, "busy": 10, "rejected": 10, "timeout": 10, "failed": 10,
               "cancelled": 5, "machine": 5})
    );
    assert_eq!(done["counts"]["by_skip_reason"], json!({"opted_out": 3}));
    let attempts = 255 + 10 * 3 + 10 + 10 * 3 + 10 + 5 + 5 * 3;
    assert_eq!(counts(&done, "attempts"), attempts, "{done}");
    assert!(done["ended_at"].is_string());

    // Each recipient's attempts are its sessions, no more and no fewer.
    let sessions = on.sessions(&id).await;
    assert_eq!(sessions.len() as u64, attempts);
    assert!(sessions.iter().all(|s| s["campaign_id"] == id.as_str()));
    let mut calls = std::collections::HashMap::<String, u64>::new();
    for session in &sessions {
        *calls
            .entry(session["to"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let recipients = on.recipients(&id, "").await;
    assert_eq!(recipients.len(), accepted);
    for recipient in &recipients {
        let to = recipient["to"].as_str().unwrap();
        let made = calls.get(to).copied().unwrap_or(0);
        assert_eq!(recipient["attempts"], made, "{recipient}");
        let expected = match (&to[to.len() - 2..], recipient["state"].as_str().unwrap()) {
            ("90" | "92" | "95", "failed") => 3,
            ("91" | "93" | "94", "failed") => 1,
            ("11" | "12", "expired" | "skipped") => 0,
            (_, "completed") => 1,
            other => panic!("{other:?}: {recipient}"),
        };
        assert_eq!(made, expected, "{recipient}");
    }
    for to in &leaving {
        assert!(!calls.contains_key(to));
    }
    let busy = recipients
        .iter()
        .find(|r| r["to"] == number(250, 90))
        .unwrap();
    assert_eq!(busy["last_outcome"], "busy");
    let skipped = on.recipients(&id, "?state=skipped").await;
    assert_eq!(skipped.len(), 3);
    assert!(skipped.iter().all(|r| r["skip_reason"] == "opted_out"));

    let export = on
        .app
        .get(&format!("/campaigns/{id}/export"), &on.key)
        .await;
    assert_eq!(export.status(), 200);
    assert!(export.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let csv = export.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), accepted + 1);
    assert!(lines[0].starts_with("to,id,state,attempts,last_outcome,skip_reason"));
    assert!(csv.contains(&format!(
        "{},r{},skipped,0,,opted_out,",
        leaving[0],
        accepted - 3
    )));
    // A campaign that is over cannot be started again.
    assert_eq!(on.act(&id, "start").await.status(), 409);
}

/// A recipient who was busy is called again and answers: it ends
/// completed after two attempts, each a call the provider placed.
#[tokio::test]
async fn a_busy_recipient_called_again_answers_and_completes() {
    use herald_server::testing::vonage::{CallFate, FakeVonage};
    let vonage = FakeVonage::start(VONAGE_APPLICATION).await;
    let url = vonage.url.clone();
    let app = TestApp::spawn_with(|c| talk_to(c, &url)).await;
    let key = app.new_key("retries").await;
    let connection = vonage_connection(&app, &key, &vonage).await;
    let body = json!({"name": "c", "type": "voice", "number": unique_number(),
                      "connection_id": connection["connection_id"]});
    let on = Campaigns::with_agent(app, key, body).await;
    let id = on
        .create(json!({"retries": {"max_attempts": 3, "after": {"busy": 1}}}))
        .await;
    let (busy, answers) = (number(1, 1), number(2, 2));
    vonage.call_fate(&busy, CallFate::Unanswered("busy"));
    on.add(&id, json!([{"to": busy}, {"to": answers}])).await;
    assert_eq!(on.act(&id, "start").await.status(), 200);
    // Busy the first time, and waiting a second for the next attempt.
    let first = on.until_counts(&id, json!({"waiting": 1})).await;
    assert_eq!(first["counts"]["by_outcome"]["busy"], 1, "{first}");
    // The person is free by the next attempt.
    vonage.call_fate(&busy, CallFate::Answer);
    let done = on.until(&id, "completed").await;
    assert_eq!(counts(&done, "completed"), 2, "{done}");
    assert_eq!(counts(&done, "attempts"), 3, "{done}");
    assert_eq!(done["counts"]["by_outcome"], json!({"completed": 2}));
    let recipient = on
        .recipients(&id, "")
        .await
        .into_iter()
        .find(|r| r["to"] == busy.as_str())
        .unwrap();
    assert_eq!(recipient["state"], "completed");
    assert_eq!(recipient["attempts"], 2);
    let placed = vonage.calls();
    assert_eq!(placed.iter().filter(|c| c.to == busy).count(), 2);
    assert_eq!(placed.iter().filter(|c| c.to == answers).count(), 1);
    assert_eq!(vonage.problems(), Vec::<String>::new());
}

/// Windows in the recipients' zones by a clock the test moves, over the
/// weekend Britain's clocks go forward: weekday mornings open in Tokyo
/// first, then in London an hour earlier in UTC than before the change,
/// and an Idaho number whose prefix is in two zones waits until the window
/// is open in both.
#[tokio::test]
async fn windows_open_in_each_recipient_s_zones_across_a_clock_change() {
    // Saturday 28 March 2026, 12:00 UTC; Britain goes to BST at 01:00 UTC
    // on Sunday.
    let clock = herald_server::clock::Clock::starting_at("2026-03-28T12:00:00Z".parse().unwrap());
    let set = clock.clone();
    let on = Campaigns::start_with(Channel::Sms, None, |c| c.clock = set).await;
    let id = on
        .create(
            json!({"window": {"days": ["mon", "tue", "wed", "thu", "fri"],
                                  "start": "09:00", "end": "17:00"}}),
        )
        .await;
    let (tokyo, london, idaho) = (number(1, 1), number(2, 2), "12082000042".to_owned());
    on.add(
        &id,
        json!([{"to": tokyo, "timezone": "Asia/Tokyo"},
               {"to": london, "timezone": "Europe/London"},
               {"to": idaho}]),
    )
    .await;
    assert_eq!(on.act(&id, "start").await.status(), 200);
    on.until_counts(&id, json!({"waiting": 3})).await;
    let next_at = |recipients: &[Value], to: &str| {
        let recipient = recipients.iter().find(|r| r["to"] == to).unwrap();
        recipient["next_at"].as_str().unwrap().to_owned()
    };
    let waiting = on.recipients(&id, "?state=waiting").await;
    // Monday 09:00 in Tokyo is Sunday 24:00 UTC.
    assert_eq!(next_at(&waiting, &tokyo), "2026-03-30T00:00:00.000Z");
    // Monday 09:00 in London is 08:00 UTC, in summer time since Sunday.
    assert_eq!(next_at(&waiting, &london), "2026-03-30T08:00:00.000Z");
    // Boise 09:00-17:00 is 15:00-23:00 UTC, Los Angeles 16:00-24:00: both
    // from 16:00.
    let boise = waiting.iter().find(|r| r["to"] == idaho.as_str()).unwrap();
    assert_eq!(boise["timezone"], "America/Boise&America/Los_Angeles");
    assert_eq!(boise["timezone_source"], "number");
    assert_eq!(next_at(&waiting, &idaho), "2026-03-30T16:00:00.000Z");

    let contacted = |at: &str, n: u64| {
        clock.set(at.parse().unwrap());
        on.until_counts(&id, json!({"attempts": n}))
    };
    let quiet = || tokio::time::sleep(Duration::from_millis(400));
    // A minute before each opening, nothing; at it, that one.
    contacted("2026-03-29T23:59:00Z", 0).await;
    quiet().await;
    assert_eq!(counts(&on.read(&id).await, "attempts"), 0);
    contacted("2026-03-30T00:00:00Z", 1).await;
    contacted("2026-03-30T07:59:00Z", 1).await;
    quiet().await;
    assert_eq!(counts(&on.read(&id).await, "attempts"), 1);
    contacted("2026-03-30T08:00:00Z", 2).await;
    // Open in Boise, not yet in Los Angeles.
    contacted("2026-03-30T15:30:00Z", 2).await;
    quiet().await;
    assert_eq!(counts(&on.read(&id).await, "attempts"), 2);
    contacted("2026-03-30T16:00:00Z", 3).await;
    let done = on.until(&id, "completed").await;
    assert_eq!(counts(&done, "completed"), 3, "{done}");
    let order: Vec<String> = {
        let mut sessions = on.sessions(&id).await;
        sessions.sort_by_key(|s| s["created_at"].as_str().unwrap().to_owned());
        sessions
            .iter()
            .map(|s| s["to"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(order, [tokyo, london, idaho]);
}

/// The pace holds: no more than `per_second` attempts start in any one
/// second, and no more than `max_concurrent` are under way at once.
#[tokio::test]
async fn attempts_keep_the_campaign_s_pace() {
    let on = Campaigns::start(Channel::Sms, None).await;
    let id = on.create(json!({"pace": {"per_second": 4}})).await;
    let rows: Vec<Value> = (0..14).map(|k| json!({"to": number(20 + k, 20)})).collect();
    on.add(&id, json!(rows)).await;
    assert_eq!(on.act(&id, "start").await.status(), 200);
    on.until(&id, "completed").await;
    let mut started: Vec<DateTime<Utc>> = on
        .sessions(&id)
        .await
        .iter()
        .map(|s| s["created_at"].as_str().unwrap().parse().unwrap())
        .collect();
    started.sort();
    assert_eq!(started.len(), 14);
    for five in started.windows(5) {
        assert!(
            five[4] - five[0] >= chrono::Duration::milliseconds(990),
            "five attempts within a second: {started:?}"
        );
    }

    // Calls that wait for an answer stay under way; two at most at once.
    let asking = asking_call();
    let on = Campaigns::start(Channel::Voice, Some(asking)).await;
    let id = on.create(json!({"pace": {"max_concurrent": 2}})).await;
    let rows: Vec<Value> = (0..6).map(|k| json!({"to": number(40 + k, 40)})).collect();
    on.add(&id, json!(rows)).await;
    assert_eq!(on.act(&id, "start").await.status(), 200);
    let mut most = 0;
    loop {
        let campaign = on.read(&id).await;
        most = most.max(counts(&campaign, "in_progress"));
        if campaign["state"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!((1..=2).contains(&most), "at most two under way, saw {most}");
    assert_eq!(on.sessions(&id).await.len(), 6);
}

/// Pause lets the attempts under way finish and starts no new one; resume
/// goes on; cancel is final: those not reached are cancelled, those under
/// way finish.
#[tokio::test]
async fn pause_resume_and_cancel() {
    let asking = asking_call();
    let on = Campaigns::start(Channel::Voice, Some(asking)).await;
    let id = on.create(json!({"pace": {"max_concurrent": 2}})).await;
    let rows: Vec<Value> = (0..8).map(|k| json!({"to": number(50 + k, 50)})).collect();
    on.add(&id, json!(rows)).await;
    assert_eq!(
        on.act(&id, "pause").await.status(),
        409,
        "a draft is not running"
    );
    assert_eq!(on.act(&id, "start").await.status(), 200);
    for _ in 0..400 {
        if counts(&on.read(&id).await, "attempts") >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let paused = on.act(&id, "pause").await;
    assert_eq!(paused.status(), 200);
    let attempts = counts(&paused.json::<Value>().await.unwrap(), "attempts");
    // What was under way finishes; nothing new starts.
    for _ in 0..400 {
        if counts(&on.read(&id).await, "in_progress") == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still = on.read(&id).await;
    assert_eq!(still["state"], "paused");
    assert_eq!(counts(&still, "attempts"), attempts, "{still}");
    assert_eq!(counts(&still, "in_progress"), 0, "{still}");

    assert_eq!(on.act(&id, "resume").await.status(), 200);
    for _ in 0..400 {
        if counts(&on.read(&id).await, "attempts") > attempts {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cancelled = on.act(&id, "cancel").await;
    assert_eq!(cancelled.status(), 200);
    let cancelled: Value = cancelled.json().await.unwrap();
    assert_eq!(cancelled["state"], "cancelled");
    for _ in 0..400 {
        if counts(&on.read(&id).await, "in_progress") == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let over = on.read(&id).await;
    let reached = counts(&over, "completed");
    assert!(reached > attempts.min(2) && reached < 8, "{over}");
    assert_eq!(counts(&over, "cancelled") + reached, 8, "{over}");
    assert_eq!(on.sessions(&id).await.len() as u64, reached);
    for action in ["start", "resume", "pause", "cancel"] {
        assert_eq!(on.act(&id, action).await.status(), 409, "{action}");
    }
}

/// A campaign whose agent is deleted reaches nobody more: those not yet
/// reached are skipped, and it completes.
#[tokio::test]
async fn a_campaign_whose_agent_is_deleted_skips_the_rest_and_completes() {
    let on = Campaigns::start(Channel::Sms, None).await;
    let id = on.create(json!({"pace": {"per_second": 2}})).await;
    let rows: Vec<Value> = (0..20).map(|k| json!({"to": number(80 + k, 80)})).collect();
    on.add(&id, json!(rows)).await;
    assert_eq!(on.act(&id, "start").await.status(), 200);
    for _ in 0..400 {
        if counts(&on.read(&id).await, "attempts") >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let deleted = on
        .app
        .delete(&format!("/agents/{}", on.agent), &on.key)
        .await;
    assert_eq!(deleted.status(), 204);
    let done = on.until(&id, "completed").await;
    let (reached, skipped) = (counts(&done, "completed"), counts(&done, "skipped"));
    assert!((1..20).contains(&reached), "{done}");
    assert_eq!(reached + skipped, 20, "{done}");
    assert_eq!(
        done["counts"]["by_skip_reason"],
        json!({"agent_deleted": skipped})
    );
    assert_eq!(on.sessions(&id).await.len() as u64, reached);
}

/// STOP in the middle of a campaign's conversation opts the recipient
/// out: the attempt ends completed, the opt-out names its session, and a
/// later campaign refuses the recipient when it is added.
#[tokio::test]
async fn stop_in_a_campaign_s_conversation_opts_the_recipient_out() {
    use crate::conversations::{said_by_agent, transcript, Person};
    let on = Campaigns::start(Channel::Sms, Some(friday_question_flow(300))).await;
    let id = on.create(json!({})).await;
    let (leaves, stays) = (number(1, 1), number(2, 2));
    on.add(&id, json!([{"to": leaves}, {"to": stays}])).await;
    assert_eq!(on.act(&id, "start").await.status(), 200);
    // Both are asked their question.
    let mut sessions = Vec::new();
    for _ in 0..400 {
        sessions = on.sessions(&id).await;
        let mut asked = 0;
        for session in &sessions {
            let id = session["session_id"].as_str().unwrap();
            asked +=
                usize::from(!said_by_agent(&transcript(&on.app, &on.key, id).await).is_empty());
        }
        if asked == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let session_of = |to: &str| {
        sessions.iter().find(|s| s["to"] == to).unwrap()["session_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    Person::new(&on.app, &on.key, "sms", &leaves, &on.number)
        .says("STOP")
        .await;
    Person::new(&on.app, &on.key, "sms", &stays, &on.number)
        .says("yes")
        .await;
    let done = on.until(&id, "completed").await;
    assert_eq!(counts(&done, "completed"), 2, "{done}");
    assert_eq!(counts(&done, "attempts"), 2, "{done}");
    let listed: Value = on
        .app
        .get("/opt-outs?channel=sms", &on.key)
        .await
        .json()
        .await
        .unwrap();
    let opt_outs = listed["opt_outs"].as_array().unwrap();
    assert_eq!(opt_outs.len(), 1, "{listed}");
    assert_eq!(opt_outs[0]["to"], leaves.as_str());
    assert_eq!(opt_outs[0]["source"], "keyword");
    assert_eq!(opt_outs[0]["session_id"], session_of(&leaves).as_str());

    let again = on.create(json!({})).await;
    let added = on.add(&again, json!([{"to": leaves}, {"to": stays}])).await;
    assert_eq!(added["accepted"], 1, "{added}");
    assert_eq!(
        added["rejected"],
        json!([{"line": 1, "reason": format!("{leaves} has opted out of sms")}])
    );
}

/// A window closed in the recipient's zone makes it wait for the next
/// opening; its zone is its own, else its number's; a window that opens
/// only after the schedule's end leaves it expired.
#[tokio::test]
async fn a_closed_window_waits_and_one_past_the_end_expires() {
    let on = Campaigns::start(Channel::Sms, None).await;
    let hour = Utc::now().hour();
    // An hour-long window two hours from now, UTC: closed now.
    let opens = (hour + 2) % 24;
    let window = json!({"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                        "start": format!("{opens:02}:00"), "end": format!("{:02}:00", opens + 1)});
    let id = on.create(json!({"window": window})).await;
    on.add(
        &id,
        json!([{"to": number(60, 60), "timezone": "UTC"}, {"to": number(61, 61)}]),
    )
    .await;
    let listed = on.recipients(&id, "").await;
    assert_eq!(listed[0]["timezone"], "UTC");
    assert_eq!(listed[0]["timezone_source"], "recipient");
    // A UK mobile number may be in any of the zones of the UK's numbering.
    assert_eq!(
        listed[1]["timezone"],
        "Europe/Guernsey&Europe/Isle_of_Man&Europe/London"
    );
    assert_eq!(listed[1]["timezone_source"], "number");
    assert_eq!(on.act(&id, "start").await.status(), 200);
    let mut waiting = Vec::new();
    for _ in 0..400 {
        waiting = on.recipients(&id, "?state=waiting").await;
        if waiting.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(waiting.len(), 2, "{:?}", on.recipients(&id, "").await);
    let next: DateTime<Utc> = waiting[0]["next_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(next.hour(), opens);
    assert_eq!(next.minute(), 0);
    assert!(next > Utc::now());
    let campaign = on.read(&id).await;
    assert_eq!(campaign["state"], "running");
    assert_eq!(counts(&campaign, "attempts"), 0);

    let end = Utc::now() + chrono::Duration::seconds(30);
    let id = on
        .create(json!({"window": window, "schedule": {"end_at": end.to_rfc3339()}}))
        .await;
    on.add(&id, json!([{"to": number(62, 62), "timezone": "UTC"}]))
        .await;
    assert_eq!(on.act(&id, "start").await.status(), 200);
    let done = on.until(&id, "completed").await;
    assert_eq!(counts(&done, "expired"), 1, "{done}");
    assert_eq!(counts(&done, "attempts"), 0);
}

/// CSV recipients (CONTRACT §12.2): a `to` column, `id` and `timezone`,
/// parameters by the other columns; a bad row is reported with its line
/// and the rest stored; a refused upload stores nothing.
#[tokio::test]
async fn recipients_by_csv_report_their_bad_rows_by_line() {
    let flow = json!({"format": 1, "start": "hi", "parameters": [{"name": "NAME"}],
        "nodes": [{"id": "hi", "type": "send_message", "text": "Hi $NAME", "next": "end"},
                  {"id": "end", "type": "end"}]});
    let on = Campaigns::start(Channel::Sms, Some(flow)).await;
    let id = on.create(json!({})).await;
    let mut csv = b"\xEF\xBB\xBFto,id,NAME\r\n".to_vec();
    csv.extend_from_slice(
        format!(
            "{},a1,\"Lovelace, Ada\"\r\n\r\n{},a2,\"Grace \"\"Amazing\"\" Hopper\"\r\n,a3,Nobody\r\n{},a4\r\nnot-a-number,a5,X\r\n{},a6,\"two\nlines\"\r\n",
            number(70, 70),
            number(71, 71),
            number(72, 72),
            number(73, 73),
        )
        .as_bytes(),
    );
    let response = on.add_csv(&id, &csv).await;
    let status = response.status();
    let added: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{added}");
    assert_eq!(added["accepted"], 3, "{added}");
    let lines: Vec<u64> = added["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [5, 6, 7], "{added}");
    let listed = on.recipients(&id, "").await;
    assert_eq!(
        listed[0]["parameters"],
        json!([{"name": "NAME", "value": "Lovelace, Ada"}])
    );
    assert_eq!(
        listed[1]["parameters"][0]["value"],
        "Grace \"Amazing\" Hopper"
    );
    assert_eq!(listed[2]["parameters"][0]["value"], "two\nlines");

    // Refused uploads leave nothing behind.
    for (body, message) in [
        (b"id,NAME\r\na,b\r\n".to_vec(), "no 'to' column"),
        (b"to,NAME\r\n447700900001,\xff\xfe\r\n".to_vec(), "line 2"),
        (
            b"to,NAME\r\n447700900001,\"open\r\n".to_vec(),
            "never closed",
        ),
    ] {
        let response = on.add_csv(&id, &body).await;
        assert_eq!(response.status(), 400);
        let error: Value = response.json().await.unwrap();
        assert!(
            error["message"].as_str().unwrap().contains(message),
            "{error}"
        );
    }
    let columns: String = (0..10_000).map(|i| format!(",c{i}")).collect();
    let response = on.add_csv(&id, format!("to{columns}\r\n").as_bytes()).await;
    assert_eq!(response.status(), 400);
    assert_eq!(counts(&on.read(&id).await, "recipients"), 3);
}

/// Posts `body` as CSV recipients over a connection of its own, written as
/// it goes (as a chunked body, or with `length` declared), reading the
/// answer while it writes: the server may answer before the body's end.
/// The status and body of the answer.
async fn post_streamed(
    on: &Campaigns,
    id: &str,
    length: Option<u64>,
    mut body: impl FnMut(usize) -> Option<Vec<u8>> + Send + 'static,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = on.app.base.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let framing = match length {
        Some(n) => format!("Content-Length: {n}"),
        None => "Transfer-Encoding: chunked".to_owned(),
    };
    let head = format!(
        "POST /campaigns/{id}/recipients HTTP/1.1\r\nHost: {address}\r\nX-Vgai-Key: {}\r\n\
         Content-Type: text/csv\r\n{framing}\r\n\r\n",
        on.key
    );
    let chunked = length.is_none();
    let writer = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await?;
        let mut part = 0;
        while let Some(bytes) = body(part) {
            if chunked {
                write
                    .write_all(format!("{:x}\r\n", bytes.len()).as_bytes())
                    .await?;
                write.write_all(&bytes).await?;
                write.write_all(b"\r\n").await?;
            } else {
                write.write_all(&bytes).await?;
            }
            part += 1;
        }
        if chunked {
            write.write_all(b"0\r\n\r\n").await?;
        }
        // Held open until the answer is read: the server takes a client
        // that closes its side as gone.
        std::future::pending::<()>().await;
        std::io::Result::Ok(())
    });
    let mut answer = Vec::new();
    let mut buffer = vec![0; 64 * 1024];
    let read_answer = async {
        loop {
            let n = match read.read(&mut buffer).await {
                Ok(n) => n,
                Err(e) => panic!(
                    "reading: {e}; so far {:?}",
                    String::from_utf8_lossy(&answer)
                ),
            };
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buffer[..n]);
            let text = String::from_utf8_lossy(&answer);
            if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                let length = head.lines().find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.parse::<usize>().unwrap())
                });
                if length.is_some_and(|n| rest.len() >= n) {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read_answer)
        .await
        .expect("an answer within a minute");
    writer.abort();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("an HTTP answer, not {text:?}"));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, rest.to_owned())
}

/// Bodies past the limits are refused with 413 and nothing of them is
/// stored: one that declares 2 GB at once, unread; a stream of 2 GB once it
/// passes 100 000 rows, or 64 MiB of fat rows; neither is read to its end.
#[tokio::test]
async fn a_body_past_the_limits_gets_413_and_stores_nothing() {
    let on = Campaigns::start(Channel::Sms, None).await;
    let id = on.create(json!({})).await;
    const TWO_GB: usize = 2 << 30;
    // `part` of a CSV body in 1 MiB parts, each row `width` bytes.
    let rows = |width: usize| {
        move |part: usize| {
            let mut bytes = Vec::with_capacity(1 << 20);
            if part == 0 {
                bytes.extend_from_slice(b"to,NOTE\n");
            }
            let mut n = part * (1 << 20) / width;
            while bytes.len() + width <= 1 << 20 {
                let row = format!("4477{n:08},");
                bytes.extend_from_slice(row.as_bytes());
                bytes.resize(bytes.len() + width - row.len() - 1, b'x');
                bytes.push(b'\n');
                n += 1;
            }
            (part < TWO_GB >> 20).then_some(bytes)
        }
    };
    let (status, body) = post_streamed(&on, &id, Some(TWO_GB as u64), rows(13)).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body.contains("A body of recipients is at most 64 MiB"),
        "{body}"
    );
    let (status, body) = post_streamed(&on, &id, None, rows(13)).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("more than 100000 rows"), "{body}");
    let (status, body) = post_streamed(&on, &id, None, rows(2000)).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body.contains("A body of recipients is at most 64 MiB"),
        "{body}"
    );
    assert_eq!(counts(&on.read(&id).await, "recipients"), 0);
    // The same server goes on taking bodies within the limits.
    let (status, body) = post_streamed(&on, &id, None, |part| {
        (part == 0).then(|| b"to\n447700900001\n".to_vec())
    })
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(counts(&on.read(&id).await, "recipients"), 1);
}

/// A campaign's body is checked field by field, and its agent must be the
/// account's.
#[tokio::test]
async fn a_campaign_s_settings_are_checked_naming_the_field() {
    let on = Campaigns::start(Channel::Sms, None).await;
    for (body, message) in [
        (json!({"agent_id": on.agent}), "Missing mandatory field(s): name"),
        (json!({"name": "x", "agent_id": "000000000000000000000000"}),
         "ID 000000000000000000000000 is not an ID to any agent"),
        (json!({"name": "x", "agent_id": on.agent, "pace": {"per_second": 0}}),
         "pace.per_second must be a whole number from 1 to 10000"),
        (json!({"name": "x", "agent_id": on.agent, "retries": {"max_attempts": 2, "after": {"completed": 5}}}),
         "retries.after.completed is not an outcome that may be retried (busy, timeout, failed, machine, rejected)"),
        (json!({"name": "x", "agent_id": on.agent, "window": {"days": ["mon"], "start": "20:00", "end": "09:00"}}),
         "window.end 09:00 must be after window.start 20:00"),
        (json!({"name": "x", "agent_id": on.agent, "schedule": {"start_at": "tomorrow"}}),
         "schedule.start_at must be an RFC 3339 time"),
        (json!({"name": "x", "agent_id": on.agent, "whatsapp": {"namespace": "a"}}),
         "whatsapp is for a WhatsApp agent's campaign"),
        (json!({"name": "x", "agent_id": on.agent, "speed": 1}),
         "campaign.speed is not a field of campaign (name, agent_id, status_url, schedule, window, pace, retries, whatsapp)"),
    ] {
        let status = if message.starts_with("ID ") { 404 } else { 400 };
        assert_error(on.app.post("/campaigns", &on.key, body).await, status, message).await;
    }
    let other = on.app.new_key("someone-else").await;
    assert_eq!(
        on.app
            .get("/campaigns/000000000000000000000000", &other)
            .await
            .status(),
        404
    );
    let id = on.create(json!({})).await;
    assert_eq!(
        on.app
            .get(&format!("/campaigns/{id}"), &other)
            .await
            .status(),
        404
    );
    let listed: Value = on
        .app
        .get("/campaigns", &on.key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["campaigns"][0]["campaign_id"], id.as_str());
}
