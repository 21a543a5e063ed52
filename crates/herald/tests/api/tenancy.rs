//! What one account cannot take from another (CONTRACT §4): an agent's
//! number, while the agent's published version or open sessions still use
//! it, and the replies of another account's conversations. An agent
//! deleted or given a new number keeps routing replies to the sessions it
//! has open.

use herald_core::secret::Secret;
use herald_core::Channel;
use serde_json::{json, Value};

use crate::conversations::{agent_with_flow, person, question_flow, trigger_sms, Person};
use crate::conversations::{transcript, wait_for_agent_lines};
use crate::helpers::*;

const TOKEN: &str = "provider-t0ken";

/// An agent of `key`'s on `number`, for `channel`: the answer to its create.
async fn create_agent(app: &TestApp, key: &str, number: &str) -> reqwest::Response {
    app.post(
        "/agents",
        key,
        json!({"name": "sms", "type": "sms", "number": number}),
    )
    .await
}

fn taken(number: &str) -> String {
    format!("Number {number} is already used by another sms agent in this region")
}

/// A message from a channel provider, through `POST /inbound/sms`.
async fn from_provider(app: &TestApp, from: &str, to: &str, text: &str) -> reqwest::Response {
    app.client
        .post(app.url("/inbound/sms"))
        .header("X-Herald-Inbound-Token", TOKEN)
        .json(&json!({"from": from, "to": to, "text": text}))
        .send()
        .await
        .unwrap()
}

/// A question waiting for `person`'s answer, on a fresh number of a fresh
/// account; returns (key, agent, number, session).
async fn waiting_question(app: &TestApp, person: &str) -> (String, String, String, String) {
    let (key, agent, number) = agent_with_flow(app, Channel::Sms, question_flow()).await;
    let id = trigger_sms(app, &key, &agent, person, json!([])).await;
    wait_for_agent_lines(app, &key, &id, 1).await;
    (key, agent, number, id)
}

#[tokio::test]
async fn a_number_is_held_while_a_published_version_or_an_open_session_uses_it() {
    let app = TestApp::spawn().await;
    let you = person();
    let (a, agent, number, id) = waiting_question(&app, &you).await;
    let b = app.new_key("another-account").await;

    // A new draft number frees nothing: the published version has it.
    let elsewhere = unique_number();
    let edited = app
        .client
        .patch(app.url(&format!("/agents/{agent}")))
        .header("X-Vgai-Key", &a)
        .json(&json!({"number": elsewhere}))
        .send()
        .await
        .unwrap();
    assert_eq!(edited.status(), 200);
    assert_error(create_agent(&app, &b, &number).await, 409, &taken(&number)).await;

    // Published elsewhere, the session still talks on the number.
    let published = app
        .post(&format!("/agents/{agent}/publish"), &a, json!({}))
        .await;
    assert_eq!(published.status(), 200);
    assert_error(create_agent(&app, &b, &number).await, 409, &taken(&number)).await;
    // Not by another agent of its own account either.
    assert_error(create_agent(&app, &a, &number).await, 409, &taken(&number)).await;
    // And not by moving another agent onto it.
    let other = app.draft_agent(&b, Channel::Sms, &unique_number()).await;
    let moved = app
        .client
        .patch(app.url(&format!("/agents/{other}")))
        .header("X-Vgai-Key", &b)
        .json(&json!({"number": number}))
        .send()
        .await
        .unwrap();
    assert_error(moved, 409, &taken(&number)).await;

    // Deleted, the agent keeps it for the session still open.
    let deleted = app
        .client
        .delete(app.url(&format!("/agents/{agent}")))
        .header("X-Vgai-Key", &a)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_error(create_agent(&app, &b, &number).await, 409, &taken(&number)).await;

    // Once the session ends, the number is free.
    Person::new(&app, &a, "sms", &you, &number)
        .says("yes")
        .await;
    app.ended_session(&a, &id).await;
    assert_eq!(create_agent(&app, &b, &number).await.status(), 201);
}

#[tokio::test]
async fn a_deleted_agent_s_open_session_still_gets_its_replies() {
    let app = TestApp::spawn_with(|c| c.inbound_token = Some(Secret::new(TOKEN.into()))).await;
    let (alice, bob) = (person(), person());
    let (key, agent, number, first) = waiting_question(&app, &alice).await;
    app.set_rate(&agent, 10).await;
    let second = trigger_sms(&app, &key, &agent, &bob, json!([])).await;
    wait_for_agent_lines(&app, &key, &second, 1).await;
    let deleted = app
        .client
        .delete(app.url(&format!("/agents/{agent}")))
        .header("X-Vgai-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);

    // Through the simulator, as the account plays the person.
    let delivered = Person::new(&app, &key, "sms", &alice, &number)
        .says("yes")
        .await;
    assert_eq!(delivered, json!({"session_id": first, "started": false}));
    assert_eq!(
        app.ended_session(&key, &first).await["outcome"],
        "completed"
    );
    // From the provider.
    let response = from_provider(&app, &bob, &number, "no").await;
    assert_eq!(response.status(), 200);
    let delivered: Value = response.json().await.unwrap();
    assert_eq!(delivered, json!({"session_id": second, "started": false}));
    app.ended_session(&key, &second).await;
    // A stranger starts nothing: no live agent has the number.
    assert_error(
        from_provider(&app, &person(), &number, "hi").await,
        404,
        &format!("No published sms agent has the number {number}"),
    )
    .await;
}

/// On a store whose numbers were given out before they were held (or by
/// any other means), replies still reach only what their sender may reach:
/// an account its own sessions, a provider the agent that owns the number.
#[tokio::test]
async fn replies_never_cross_into_another_account_s_conversation() {
    let app = TestApp::spawn_with(|c| c.inbound_token = Some(Secret::new(TOKEN.into()))).await;
    let you = person();
    let (a, agent_a, number, waiting) = waiting_question(&app, &you).await;
    // Account B's agent, published on a number of its own, is then moved
    // onto A's number behind the API's back, and A's agent off it.
    let b = app.new_key("the-other-account").await;
    let mut flow = question_flow();
    flow["inbound"] = json!({"accept": true});
    let created: Value = app
        .post(
            "/agents",
            &b,
            json!({"name": "b", "type": "sms", "number": unique_number(), "flow": flow}),
        )
        .await
        .json()
        .await
        .unwrap();
    let agent_b = created["agent_id"].as_str().unwrap().to_owned();
    let published = app
        .post(&format!("/agents/{agent_b}/publish"), &b, json!({}))
        .await;
    assert_eq!(published.status(), 200);
    let db = app.db().await;
    for (table, agent, to) in [
        ("agents", &agent_a, unique_number()),
        ("agent_versions", &agent_a, unique_number()),
        ("agents", &agent_b, number.clone()),
        ("agent_versions", &agent_b, number.clone()),
    ] {
        db.execute(
            &format!("UPDATE {table} SET number = $1 WHERE agent_id = $2"),
            &[&to, agent],
        )
        .await;
    }
    let server = app.server().app();
    server
        .directory
        .reload_agents(server.store.as_ref())
        .await
        .unwrap();

    // B, playing the person, starts B's own session: A's is not B's to reach.
    let delivered = Person::new(&app, &b, "sms", &you, &number)
        .says("yes")
        .await;
    assert_eq!(delivered["started"], true);
    assert_ne!(delivered["session_id"], waiting.as_str());
    // The provider's message goes to the agent that owns the number now.
    let response = from_provider(&app, &you, &number, "no").await;
    assert_eq!(response.status(), 200);
    let delivered: Value = response.json().await.unwrap();
    assert_ne!(delivered["session_id"], waiting.as_str());
    let session: Value = app
        .get(
            &format!("/sessions/{}", delivered["session_id"].as_str().unwrap()),
            &b,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(session["agent_id"], agent_b.as_str());
    // A's conversation heard nothing of either.
    let t = transcript(&app, &a, &waiting).await;
    let heard: Vec<&Value> = t["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["direction"] == "inbound")
        .collect();
    assert!(heard.is_empty(), "{t}");
}
