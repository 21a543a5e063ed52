//! Campaigns (CONTRACT §12) on the simulator: recipients by JSON and CSV,
//! each reached once per attempt and ending in its own state, retries by
//! outcome, opt-outs, windows in the recipient's zones, the schedule, the
//! pace, and pause, resume and cancel.

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use herald_core::Channel;
use serde_json::{json, Value};

use crate::helpers::*;

/// A number of the test's own whose last two digits pick the simulator's
/// fate of a call (90 busy, 91 rejected, 92 timeout, …; others answer).
fn number(k: u32, ending: u32) -> String {
    format!("44770081{:02}{ending:02}", k % 100)
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
}

impl Campaigns {
    async fn start(channel: Channel, flow: Option<Value>) -> Campaigns {
        let app = TestApp::spawn_with(|c| c.default_rate = 100).await;
        let key = app.new_key(&format!("campaigns-{}", unique_number())).await;
        let mut body = json!({"name": "c", "type": channel, "number": unique_number()});
        if let Some(flow) = flow {
            body["flow"] = flow;
        }
        let created = app.post("/agents", &key, body).await;
        let status = created.status();
        let created: Value = created.json().await.unwrap();
        assert_eq!(status, 201, "{created}");
        let agent = created["agent_id"].as_str().unwrap().to_owned();
        let published = app
            .post(&format!("/agents/{agent}/publish"), &key, json!({}))
            .await;
        assert_eq!(published.status(), 200);
        Campaigns { app, key, agent }
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

    async fn recipients(&self, id: &str, query: &str) -> Vec<Value> {
        let response = self
            .app
            .get(&format!("/campaigns/{id}/recipients{query}"), &self.key)
            .await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        body["recipients"].as_array().unwrap().clone()
    }

    async fn sessions(&self, id: &str) -> Vec<Value> {
        let response = self
            .app
            .get(&format!("/sessions?campaign_id={id}&limit=100"), &self.key)
            .await;
        let body: Value = response.json().await.unwrap();
        body["sessions"].as_array().unwrap().clone()
    }
}

fn counts(campaign: &Value, field: &str) -> u64 {
    campaign["counts"][field].as_u64().unwrap()
}

/// Every recipient ends in its own state: the answered ones completed; a
/// busy one retried until its attempts ran out; a rejected one not
/// retried; one that opted out after it was added skipped. Each attempt is
/// one session, to that recipient, with the campaign's id.
#[tokio::test]
async fn every_recipient_ends_in_its_state_each_attempt_one_session() {
    let on = Campaigns::start(Channel::Voice, None).await;
    let id = on
        .create(json!({"retries": {"max_attempts": 3, "after": {"busy": 1, "timeout": 1}}}))
        .await;
    let mut rows: Vec<Value> = (0..6).map(|k| json!({"to": number(k, 10 + k)})).collect();
    rows.push(json!({"to": number(6, 90), "id": "busy"}));
    rows.push(json!({"to": number(7, 91), "id": "rejects"}));
    rows.push(json!({"to": number(8, 92)}));
    rows.push(json!({"to": number(9, 11), "id": "leaves"}));
    // Rows that cannot be taken, each with its place and reason.
    rows.push(json!({"to": "not a number"}));
    rows.push(json!({"to": number(0, 10)}));
    rows.push(json!({"to": number(10, 12), "id": "busy"}));
    rows.push(json!({"to": number(11, 12), "parameters": {"NAME": "Ada"}}));
    rows.push(json!({"to": number(12, 12), "timezone": "Mars/Base"}));
    let added = on.add(&id, json!(rows)).await;
    assert_eq!(added["accepted"], 10, "{added}");
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
    assert_eq!(
        rejected,
        [
            (11, "to: bad number \"not a number\"".to_owned()),
            (12, "duplicate to".into()),
            (13, "duplicate id".into()),
            (
                14,
                "parameter NAME is not one the agent's flow declares".into()
            ),
            (15, "timezone \"Mars/Base\" is not an IANA time zone".into()),
        ]
    );
    let leaves = number(9, 11);
    let opted = on
        .app
        .post(
            "/opt-outs",
            &on.key,
            json!({"channel": "voice", "to": leaves}),
        )
        .await;
    assert_eq!(opted.status(), 201);

    let started = on.act(&id, "start").await;
    assert_eq!(started.status(), 200);
    let done = on.until(&id, "completed").await;
    assert_eq!(counts(&done, "recipients"), 10);
    assert_eq!(counts(&done, "completed"), 6, "{done}");
    assert_eq!(counts(&done, "failed"), 3, "{done}");
    assert_eq!(counts(&done, "skipped"), 1, "{done}");
    assert_eq!(counts(&done, "attempts"), 6 + 3 + 1 + 3, "{done}");
    assert_eq!(
        done["counts"]["by_outcome"],
        json!({"completed": 6, "busy": 1, "rejected": 1, "timeout": 1})
    );
    assert_eq!(done["counts"]["by_skip_reason"], json!({"opted_out": 1}));
    assert!(done["ended_at"].is_string());

    let sessions = on.sessions(&id).await;
    assert_eq!(sessions.len(), 13);
    assert!(sessions.iter().all(|s| s["campaign_id"] == id.as_str()));
    let calls_to = |to: &str| sessions.iter().filter(|s| s["to"] == to).count();
    assert_eq!(calls_to(&number(6, 90)), 3, "busy: every attempt");
    assert_eq!(calls_to(&number(7, 91)), 1, "rejected: never retried");
    assert_eq!(calls_to(&leaves), 0);
    for k in 0..6 {
        assert_eq!(calls_to(&number(k, 10 + k)), 1);
    }
    let failed = on.recipients(&id, "?state=failed").await;
    assert_eq!(failed.len(), 3);
    let busy = failed.iter().find(|r| r["id"] == "busy").unwrap();
    assert_eq!(busy["attempts"], 3);
    assert_eq!(busy["last_outcome"], "busy");
    let skipped = on.recipients(&id, "?state=skipped").await;
    assert_eq!(skipped[0]["to"], leaves.as_str());
    assert_eq!(skipped[0]["skip_reason"], "opted_out");

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
    assert_eq!(lines.len(), 11);
    assert!(lines[0].starts_with("to,id,state,attempts,last_outcome,skip_reason"));
    assert!(csv.contains(&format!("{leaves},leaves,skipped,0,,opted_out,")));
    // A campaign that is over cannot be started again.
    assert_eq!(on.act(&id, "start").await.status(), 409);
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
