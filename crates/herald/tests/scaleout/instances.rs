//! Several `herald serve` processes on one PostgreSQL database and one
//! Redis, as the scale-out deployment runs them: one global rate limit,
//! caches that follow changes made anywhere, each session dispatched once,
//! and an instance killed mid-load losing nothing.

use std::collections::{HashMap, HashSet};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{unique_number, Backend, ServeProcess, TestDb, TestReceiver};

/// A database shared by the instances of one test.
struct Cluster {
    database: String,
    key: String,
    client: reqwest::Client,
    instances: Vec<ServeProcess>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// `n` instances on a fresh database, each given `args` too.
    async fn start(n: usize, args: &[&str]) -> Self {
        Self::start_with(n, args, &[]).await
    }

    /// As [`Cluster::start`], with these variables set too.
    async fn start_with(n: usize, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let database = Backend::ScaleOut.fresh_database(dir.path()).await;
        let output = herald(&["keys", "create", "--account", "acme"], &database).await;
        assert!(output.status.success(), "{output:?}");
        let key = String::from_utf8(output.stdout).unwrap().trim().to_owned();
        let mut all = vec!["--database", &database, "--allow-private-callbacks"];
        all.extend_from_slice(args);
        let mut instances = Vec::new();
        for _ in 0..n {
            instances.push(ServeProcess::start(&all, envs).await);
        }
        Cluster {
            database,
            key,
            client: reqwest::Client::new(),
            instances,
            _dir: dir,
        }
    }

    async fn post(&self, instance: usize, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.instances[instance].base))
            .header("X-Vgai-Key", &self.key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, instance: usize, path: &str) -> Value {
        self.client
            .get(format!("{}{path}", self.instances[instance].base))
            .header("X-Vgai-Key", &self.key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Creates an agent on one instance and publishes it on another.
    async fn published_agent(&self, channel: &'static str) -> Agent {
        let created: Value = self
            .post(
                0,
                "/agents",
                json!({"name": "a", "type": channel, "number": unique_number()}),
            )
            .await
            .json()
            .await
            .unwrap();
        let agent = created["agent_id"].as_str().unwrap().to_owned();
        let last = self.instances.len() - 1;
        let published = self
            .post(last, &format!("/agents/{agent}/publish"), json!({}))
            .await;
        assert_eq!(published.status(), 200);
        Agent { id: agent, channel }
    }

    /// Sets the agent's rate with `herald limits set`, as an operator does.
    async fn set_rate(&self, agent: &Agent, rate: u32) {
        let rate = rate.to_string();
        let output = herald(
            &["limits", "set", "--agent", &agent.id, "--rate", &rate],
            &self.database,
        )
        .await;
        assert!(output.status.success(), "{output:?}");
    }

    /// Waits until `instance` accepts a trigger of the agent (its caches
    /// know the agent's published version); answers how long that took.
    async fn wait_until_known(&self, instance: usize, agent: &Agent) -> Duration {
        let started = Instant::now();
        loop {
            let (path, body) = agent.trigger(None);
            let response = self.post(instance, path, body).await;
            match response.status().as_u16() {
                200 => return started.elapsed(),
                // Not yet known, or known with a rate not yet raised.
                404 | 429 if started.elapsed() < Duration::from_secs(10) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                status => panic!("instance {instance} answered {status}"),
            }
        }
    }

    /// The sum over the live instances of a counter in `/metrics`.
    async fn metric_sum(&self, name: &str) -> u64 {
        let mut total = 0;
        for n in 0..self.instances.len() {
            total += self.metric_on(n, name).await;
        }
        total
    }

    /// The sum of a counter's samples in instance `n`'s `/metrics`.
    async fn metric_on(&self, n: usize, name: &str) -> u64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.instances[n].base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// Waits until the session has ended, asking any live instance.
    async fn ended(&self, id: &str) -> Value {
        let mut session = Value::Null;
        for attempt in 0..600 {
            session = self
                .get(attempt % self.instances.len(), &format!("/sessions/{id}"))
                .await;
            if session["status"] == "ended" {
                return session;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("session {id} did not end: {session}");
    }
}

struct Agent {
    id: String,
    channel: &'static str,
}

impl Agent {
    /// The path and body of a trigger of this agent.
    fn trigger(&self, status_url: Option<&str>) -> (&'static str, Value) {
        let mut body = json!({"agent_id": self.id, "to": "447700900123"});
        if let Some(url) = status_url {
            body["status_url"] = json!(url);
        }
        if self.channel == "voice" {
            ("/telephony/make-call", body)
        } else {
            body["channel"] = json!(self.channel);
            ("/messaging/conversation", body)
        }
    }
}

/// Runs the `herald` binary against `database`.
async fn herald(args: &[&str], database: &str) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .args(args)
        .args(["--database", database])
        .env_remove("HERALD_MAX_RATE");
    tokio::task::spawn_blocking(move || command.output().expect("herald runs"))
        .await
        .unwrap()
}

/// Fires `n` triggers at once, spread round-robin over the instances;
/// answers each one's status and session id, and how long the burst took
/// from the first request sent to the last answer.
async fn burst(cluster: &Cluster, agent: &Agent, n: usize) -> (Vec<(u16, String)>, Duration) {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::new();
    for i in 0..n {
        let (path, body) = agent.trigger(None);
        let url = format!(
            "{}{path}",
            cluster.instances[i % cluster.instances.len()].base
        );
        let (client, key, barrier) = (cluster.client.clone(), cluster.key.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let sent = Instant::now();
            let response = client
                .post(url)
                .header("X-Vgai-Key", key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            let id = body["session_id"].as_str().unwrap_or_default().to_owned();
            (sent, Instant::now(), status, id)
        }));
    }
    let mut answers = Vec::new();
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    for t in tasks {
        let (sent, done, status, id) = t.await.unwrap();
        first = Some(first.map_or(sent, |f| f.min(sent)));
        last = Some(last.map_or(done, |l| l.max(done)));
        answers.push((status, id));
    }
    (answers, last.unwrap() - first.unwrap())
}

/// The most a sliding window of one second can admit in `span`: a window
/// starting at each whole second of it.
fn most_admitted(rate: usize, span: Duration) -> usize {
    rate * (span.as_secs() as usize + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_share_one_rate_limit_and_dispatch_each_session_once() {
    let cluster = Cluster::start(3, &["--simulator-delay-ms", "5"]).await;
    let agent = cluster.published_agent("voice").await;
    const RATE: usize = 40;
    cluster.set_rate(&agent, RATE as u32).await;
    for i in 0..3 {
        cluster.wait_until_known(i, &agent).await;
    }
    // Let the probes above leave the window, and the new rate reach every
    // instance (CONTRACT §6.2: within 2 s).
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let mut accepted = Vec::new();
    for round in 0..3 {
        let (answers, span) = burst(&cluster, &agent, 3 * RATE).await;
        let ok: Vec<_> = answers
            .iter()
            .filter(|(s, _)| *s == 200)
            .map(|(_, id)| id.clone())
            .collect();
        let limited = answers.iter().filter(|(s, _)| *s == 429).count();
        assert_eq!(ok.len() + limited, answers.len(), "{answers:?}");
        // Within one second, exactly the rate between all three; a burst
        // that took longer (a slow machine) may see a second window open.
        if span < Duration::from_secs(1) {
            assert_eq!(ok.len(), RATE, "round {round}, burst took {span:?}");
        } else {
            assert!(
                (RATE..=most_admitted(RATE, span)).contains(&ok.len()),
                "round {round}: {} admitted in {span:?}",
                ok.len()
            );
        }
        accepted.extend(ok);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }

    for id in &accepted {
        let session = cluster.ended(id).await;
        assert_eq!(session["outcome"], "completed", "{session}");
        let dispatched = session["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "dispatched")
            .count();
        assert_eq!(dispatched, 1, "{session}");
    }
    // Every run any instance started, counted by the instances themselves:
    // the probes' sessions and the bursts', each once.
    let runs = cluster.metric_sum("herald_sessions_dispatched_total").await;
    assert_eq!(runs as usize, accepted.len() + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_publish_or_a_limit_change_anywhere_reaches_every_instance() {
    let cluster = Cluster::start(2, &["--simulator-delay-ms", "5"]).await;
    // Created on one instance and published on the other; the first must
    // learn of it from the database (CONTRACT §6.2: within 2 s).
    let agent = cluster.published_agent("voice").await;
    let took = cluster.wait_until_known(0, &agent).await;
    assert!(took < Duration::from_secs(3), "took {took:?}");
    cluster.wait_until_known(1, &agent).await;

    // The default rate is 1; after `herald limits set`, 5 are accepted in
    // one second by each instance's view of the shared limit.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    cluster.set_rate(&agent, 5).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (answers, span) = burst(&cluster, &agent, 12).await;
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    assert!(
        (5..=most_admitted(5, span)).contains(&ok),
        "{ok} admitted in {span:?}: {answers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_killed_mid_load_loses_nothing_and_its_work_finishes_elsewhere() {
    let receiver = TestReceiver::start().await;
    // Slow steps keep sessions in flight, short leases let the survivors
    // take over the dead instance's work quickly.
    let mut cluster = Cluster::start(
        3,
        &[
            "--simulator-delay-ms",
            "150",
            "--dispatch-lease-secs",
            "1",
            "--callback-retry-schedule",
            "0.2,0.2,0.2",
            "--callback-timeout-secs",
            "1",
        ],
    )
    .await;
    let agent = cluster.published_agent("sms").await;
    cluster.set_rate(&agent, 10_000).await;
    for i in 0..3 {
        cluster.wait_until_known(i, &agent).await;
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;

    // Steady load on every instance; the first dies part-way.
    let mut acknowledged = Vec::new();
    let bases: Vec<String> = cluster.instances.iter().map(|s| s.base.clone()).collect();
    let mut killed = false;
    for round in 0..30 {
        let mut tasks = Vec::new();
        for (i, base) in bases.iter().enumerate() {
            if killed && i == 0 {
                continue;
            }
            let (client, key) = (cluster.client.clone(), cluster.key.clone());
            let (path, body) = agent.trigger(Some(&receiver.url));
            let url = format!("{base}{path}");
            tasks.push(tokio::spawn(async move {
                let response = client
                    .post(url)
                    .header("X-Vgai-Key", key)
                    .json(&body)
                    .send()
                    .await
                    .ok()?;
                if response.status() != 200 {
                    return None;
                }
                let body: Value = response.json().await.ok()?;
                Some(body["session_id"].as_str()?.to_owned())
            }));
        }
        for t in tasks {
            acknowledged.extend(t.await.unwrap());
        }
        if round == 10 {
            // Sessions it acknowledged are in flight on it: the simulator
            // takes 150 ms a step.
            cluster.instances.remove(0).kill();
            killed = true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(acknowledged.len() >= 70, "{}", acknowledged.len());

    // Every acknowledged session is stored, runs to its end and reports.
    let db = TestDb::connect(&cluster.database).await;
    for id in &acknowledged {
        let stored = db
            .count(
                "SELECT COUNT(*) FROM sessions WHERE CAST(id AS TEXT) = $1",
                &[id],
            )
            .await;
        assert_eq!(stored, 1, "session {id}");
        let session = cluster.ended(id).await;
        assert_eq!(session["outcome"], "completed", "{session}");
    }
    // Each session's message reports sent then delivered; a callback sent
    // again after the takeover carries the webhook-id it had the first time.
    let expected: HashSet<(String, String)> = acknowledged
        .iter()
        .flat_map(|id| ["sent", "delivered"].map(|s| (id.clone(), s.to_owned())))
        .collect();
    let mut ids_by_callback: HashMap<(String, String), HashSet<String>> = HashMap::new();
    for _ in 0..600 {
        ids_by_callback.clear();
        for r in receiver.received() {
            let session = r.body["session_id"].as_str().unwrap().to_owned();
            let status = r.body["status"].as_str().unwrap().to_owned();
            let webhook_id = r.headers["webhook-id"].to_str().unwrap().to_owned();
            ids_by_callback
                .entry((session, status))
                .or_default()
                .insert(webhook_id);
        }
        if expected.iter().all(|k| ids_by_callback.contains_key(k)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in &acknowledged {
        for status in ["sent", "delivered"] {
            let ids = ids_by_callback
                .get(&(id.clone(), status.to_owned()))
                .unwrap_or_else(|| panic!("no {status} callback for {id}"));
            assert_eq!(ids.len(), 1, "{id} {status}: {ids:?}");
        }
    }
    assert_eq!(
        db.count("SELECT COUNT(*) FROM dispatch_jobs", &[]).await,
        0,
        "no work is left behind"
    );
}

/// A message sent by one instance has its statuses reported to another
/// (the provider calls whichever the load balancer picks): they land all
/// the same, and the session ends as it would on one.
const VONAGE_APPLICATION: &str = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";
const PUBLIC_URL: &str = "https://herald.example.com";

/// Two instances on a fake Vonage, with a Vonage connection and a
/// published agent of `channel` (with `flow`, if given) on it: the fake,
/// the cluster, the connection and the agent's id.
async fn on_vonage(
    channel: &str,
    flow: Option<Value>,
) -> (
    herald_server::testing::vonage::FakeVonage,
    Cluster,
    Value,
    String,
) {
    on_vonage_with(channel, flow, json!({})).await
}

/// [`on_vonage`], with the connection's `settings`.
async fn on_vonage_with(
    channel: &str,
    flow: Option<Value>,
    settings: Value,
) -> (
    herald_server::testing::vonage::FakeVonage,
    Cluster,
    Value,
    String,
) {
    use herald_server::testing::vonage::FakeVonage;

    let vonage = FakeVonage::start(VONAGE_APPLICATION).await;
    let secret_key = herald_core::secret::Sealer::generate_key();
    let cluster = Cluster::start_with(
        2,
        &[],
        &[
            ("HERALD_SECRET_KEY", &secret_key),
            ("HERALD_PUBLIC_URL", PUBLIC_URL),
            ("HERALD_VONAGE_API_URL", &vonage.url),
            // Tests trigger several sessions at once.
            ("HERALD_DEFAULT_RATE", "100"),
        ],
    )
    .await;
    let connection: Value = cluster
        .post(
            0,
            "/connections",
            json!({"name": "Vonage", "provider": "vonage", "credentials": {
                "application_id": VONAGE_APPLICATION,
                "private_key": herald_channels::testing::vonage_private_key(),
                "api_key": "abcd1234", "api_secret": "api-secret",
                "signature_secret": "signature-secret"},
                   "settings": settings}),
        )
        .await
        .json()
        .await
        .unwrap();
    let mut agent = json!({"name": "a", "type": channel, "number": unique_number(),
                           "connection_id": connection["connection_id"]});
    if let Some(flow) = flow {
        agent["flow"] = flow;
    }
    let created: Value = cluster
        .post(0, "/agents", agent)
        .await
        .json()
        .await
        .unwrap();
    let agent = created["agent_id"].as_str().unwrap().to_owned();
    let published = cluster
        .post(0, &format!("/agents/{agent}/publish"), json!({}))
        .await;
    assert_eq!(published.status(), 200);
    // The other instance learns of the publish within its refresh.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    (vonage, cluster, connection, agent)
}

/// The session `id`, once it has ended (or after 20 s), as instance `n`
/// shows it.
async fn ended_on(cluster: &Cluster, n: usize, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let session = cluster.get(n, &format!("/sessions/{id}")).await;
        if session["status"] == "ended" || Instant::now() > deadline {
            return session;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_s_reports_may_reach_an_instance_that_did_not_send() {
    let (vonage, cluster, connection, agent) = on_vonage("sms", None).await;
    vonage.stay_silent(true);
    let receiver = TestReceiver::start().await;
    let triggered: Value = cluster
        .post(
            0,
            "/messaging/conversation",
            json!({"agent_id": agent, "to": unique_number(), "channel": "sms",
                   "status_url": receiver.url}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = triggered["session_id"].as_str().unwrap().to_owned();
    let (uuid, _) = vonage.wait_for_messages(1).await[0].clone();
    vonage.deliver_to(
        &connection["webhooks"],
        PUBLIC_URL,
        &cluster.instances[1].base,
        "signature-secret",
        "abcd1234",
    );
    for status in ["submitted", "delivered"] {
        let report = vonage.status_report(&uuid, status);
        assert_eq!(vonage.post_status(&report, None).await, 200);
    }
    let session = ended_on(&cluster, 1, &id).await;
    assert_eq!(session["outcome"], "completed", "{session}");
    let statuses: Vec<_> = receiver
        .wait_for(2)
        .await
        .iter()
        .map(|c| c.body["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses, ["sent", "delivered"]);
    assert_eq!(vonage.messages().len(), 1);
    assert_eq!(vonage.problems(), Vec::<String>::new());
}

/// A connection's pace holds across servers: two servers sending on one
/// connection send no faster together than its `messages_per_second`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_s_pace_is_kept_by_all_servers_together() {
    let (vonage, cluster, connection, agent) =
        on_vonage_with("sms", None, json!({"messages_per_second": 3})).await;
    vonage.deliver_to(
        &connection["webhooks"],
        PUBLIC_URL,
        &cluster.instances[0].base,
        "signature-secret",
        "abcd1234",
    );
    let mut ids = Vec::new();
    for n in 0..8 {
        let triggered: Value = cluster
            .post(
                n % 2,
                "/messaging/conversation",
                json!({"agent_id": agent, "to": unique_number(), "channel": "sms"}),
            )
            .await
            .json()
            .await
            .unwrap();
        ids.push(triggered["session_id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        assert_eq!(ended_on(&cluster, 0, id).await["outcome"], "completed");
    }
    let times = vonage.times_of("POST", "/v1/messages");
    assert_eq!(times.len(), 8);
    // Both servers sent (each claims sessions as they come).
    let sent_by = |n: usize| cluster.metric_on(n, "herald_provider_requests_total");
    assert!(sent_by(0).await > 0 && sent_by(1).await > 0);
    // No four within one second (a little less, for the way there).
    for four in times.windows(4) {
        assert!(four[3] - four[0] >= Duration::from_millis(900), "{times:?}");
    }
    assert_eq!(vonage.problems(), Vec::<String>::new());
}

/// A call's webhooks may reach either instance, whichever placed it: the
/// answer reaches one, the person's answer the other, and the call goes on
/// as on one server.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_s_turns_may_reach_either_instance() {
    let flow = json!({"format": 1, "start": "ask", "nodes": [
        {"id": "ask", "type": "collect_input", "prompt": "Key a number.", "entity": "number",
         "parameter": "N", "timeout_secs": 20,
         "success": "heard", "invalid": "end", "no_input": "end"},
        {"id": "heard", "type": "speak", "text": "You keyed $N.", "next": "end"},
        {"id": "end", "type": "end"}
    ]});
    let (vonage, cluster, connection, agent) = on_vonage("voice", Some(flow)).await;
    let deliver_to = |n: usize| {
        vonage.deliver_to(
            &connection["webhooks"],
            PUBLIC_URL,
            &cluster.instances[n].base,
            "signature-secret",
            "abcd1234",
        )
    };
    deliver_to(1);
    let to = unique_number();
    let triggered: Value = cluster
        .post(
            0,
            "/telephony/make-call",
            json!({"agent_id": agent, "to": to}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = triggered["session_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    while vonage.calls().first().is_none_or(|c| c.inputs.is_empty()) {
        assert!(Instant::now() < deadline, "no input: {:?}", vonage.calls());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    deliver_to(0);
    vonage.person_answers(&to, "4");
    let session = ended_on(&cluster, 1, &id).await;
    assert_eq!(session["outcome"], "completed", "{session}");
    let calls = vonage.wait_for_calls_to_end(&to).await;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].said, ["Key a number.", "You keyed 4."]);
    assert_eq!(vonage.problems(), Vec::<String>::new());
}

/// CONTRACT §12.7: servers share a campaign's recipients; one killed
/// mid-campaign and another started in its place, every recipient is
/// contacted exactly once and the campaign completes; the pace holds for
/// all servers together.
#[tokio::test]
async fn a_campaign_survives_a_killed_server_and_contacts_everyone_once() {
    let mut cluster = Cluster::start(2, &["--dispatch-lease-secs", "1"]).await;
    let agent = cluster.published_agent("sms").await;
    cluster.set_rate(&agent, 10_000).await;
    for i in 0..2 {
        cluster.wait_until_known(i, &agent).await;
    }
    let created: Value = cluster
        .post(
            0,
            "/campaigns",
            json!({"name": "all", "agent_id": agent.id, "pace": {"per_second": 20}}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = created["campaign_id"].as_str().unwrap().to_owned();
    let people: Vec<String> = (0..80).map(|k| format!("4477008{k:03}10")).collect();
    let rows: Vec<Value> = people.iter().map(|to| json!({"to": to})).collect();
    let added: Value = cluster
        .post(1, &format!("/campaigns/{id}/recipients"), json!(rows))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(added["accepted"], 80, "{added}");
    let started = cluster
        .post(1, &format!("/campaigns/{id}/start"), json!({}))
        .await;
    assert_eq!(started.status(), 200);
    for _ in 0..400 {
        let campaign = cluster.get(1, &format!("/campaigns/{id}")).await;
        if campaign["counts"]["attempts"].as_u64().unwrap() >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.instances.remove(0).kill();
    let mut all = vec![
        "--database",
        cluster.database.as_str(),
        "--allow-private-callbacks",
    ];
    all.extend_from_slice(&["--dispatch-lease-secs", "1"]);
    cluster.instances.push(ServeProcess::start(&all, &[]).await);
    let mut campaign = Value::Null;
    for round in 0..1200 {
        campaign = cluster.get(round % 2, &format!("/campaigns/{id}")).await;
        if campaign["state"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(campaign["state"], "completed", "{campaign}");
    assert_eq!(campaign["counts"]["completed"], 80, "{campaign}");
    assert_eq!(campaign["counts"]["attempts"], 80, "{campaign}");
    let sessions = cluster
        .get(0, &format!("/sessions?campaign_id={id}&limit=100"))
        .await;
    let sessions = sessions["sessions"].as_array().unwrap();
    let reached: HashSet<&str> = sessions.iter().map(|s| s["to"].as_str().unwrap()).collect();
    assert_eq!(sessions.len(), 80);
    assert_eq!(reached.len(), 80, "each once");
    let mut times: Vec<chrono::DateTime<chrono::Utc>> = sessions
        .iter()
        .map(|s| s["created_at"].as_str().unwrap().parse().unwrap())
        .collect();
    times.sort();
    for window in times.windows(21) {
        assert!(
            window[20] - window[0] >= chrono::Duration::milliseconds(990),
            "21 attempts within a second"
        );
    }
}
