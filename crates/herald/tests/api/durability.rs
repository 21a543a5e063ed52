//! CONTRACT §2.3: a 200 is sent only after the session and its dispatch job
//! are durably stored, so a crash after the 200 loses nothing. The server
//! here is a real `herald serve` process, killed with SIGKILL.

use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn sessions_acknowledged_before_a_crash_finish_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let database = crate::BACKEND.fresh_database(dir.path()).await;
    let client = reqwest::Client::new();

    let key = create_key(&database);

    // The simulator's calls ring for two seconds, so every session is
    // still in flight when the server dies; they ring out after the
    // restart, as a provider's calls would.
    let server = ServeProcess::start(
        &[
            "--database",
            &database,
            "--simulator-delay-ms",
            "2000",
            "--default-rate",
            "100",
            "--dispatch-lease-secs",
            "0.5",
        ],
        &[],
    )
    .await;
    let agent = server.published_agent(&key, "voice", "447700900001").await;
    let mut acknowledged = Vec::new();
    for _ in 0..20 {
        let response = client
            .post(format!("{}/telephony/make-call", server.base))
            .header("X-Vgai-Key", &key)
            .json(&json!({"agent_id": agent, "to": "447700900123"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        acknowledged.push(body["session_id"].as_str().unwrap().to_owned());
    }
    server.kill();

    // Everything acknowledged is stored, with its dispatch job.
    let db = TestDb::connect(&database).await;
    for id in &acknowledged {
        let sessions = db
            .count(
                "SELECT COUNT(*) FROM sessions WHERE CAST(id AS TEXT) = $1",
                &[id],
            )
            .await;
        let jobs = db
            .count(
                "SELECT COUNT(*) FROM dispatch_jobs WHERE CAST(session_id AS TEXT) = $1",
                &[id],
            )
            .await;
        assert_eq!((sessions, jobs), (1, 1), "session {id}");
    }

    // A new server takes the work up once the dead one's leases run out.
    let server = ServeProcess::start(
        &[
            "--database",
            &database,
            "--simulator-delay-ms",
            "5",
            "--dispatch-lease-secs",
            "0.5",
        ],
        &[],
    )
    .await;
    for id in &acknowledged {
        let session = server.ended(&key, id).await;
        assert_eq!(session["outcome"], "completed", "session {id}");
    }
}
