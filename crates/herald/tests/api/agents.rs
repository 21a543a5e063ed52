//! CONTRACT §4: the account's own API — agents (§4.1 create, §4.2 list,
//! read, edit, delete, one number per type and region, §4.3 publish and
//! versions), WhatsApp templates (§4.4) and `GET /account` (§4.5) — and the
//! §4 rule that another account's objects are answered 404 as if they did
//! not exist, on these endpoints and on both trigger endpoints (§2.2 step 7,
//! §3.5). Also §1.3 authentication and §1.6 agent ids as they apply here.

use base64::Engine;
use herald_core::{Channel, Region};
use serde_json::{json, Value};

use crate::helpers::{
    account_with_agent, assert_error, assert_rfc3339_millis, greeting_flow, has_shape,
    unique_number, TestApp,
};

fn is_agent_id(id: &str) -> bool {
    has_shape(id, &"x".repeat(24))
}

async fn create(app: &TestApp, key: &str, body: Value) -> reqwest::Response {
    app.post("/agents", key, body).await
}

/// Creates an agent, asserting the 201; answers the agent.
async fn created(app: &TestApp, key: &str, body: Value) -> Value {
    let response = create(app, key, body.clone()).await;
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 201, "creating {body}: {text}");
    serde_json::from_str(&text).unwrap()
}

async fn patch(app: &TestApp, path: &str, key: &str, body: Value) -> reqwest::Response {
    app.client
        .patch(app.url(path))
        .header("X-Vgai-Key", key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn delete(app: &TestApp, path: &str, key: &str) -> reqwest::Response {
    app.client
        .delete(app.url(path))
        .header("X-Vgai-Key", key)
        .send()
        .await
        .unwrap()
}

async fn publish(app: &TestApp, key: &str, agent: &str) -> reqwest::Response {
    app.post(&format!("/agents/{agent}/publish"), key, json!({}))
        .await
}

async fn read_agent(app: &TestApp, key: &str, agent: &str) -> Value {
    let response = app.get(&format!("/agents/{agent}"), key).await;
    assert_eq!(response.status(), 200, "reading {agent}");
    response.json().await.unwrap()
}

/// Asserts a 400 error body whose message names `what`.
async fn assert_bad_request_naming(response: reqwest::Response, what: &str) {
    assert_eq!(response.status(), 400, "a 400 naming {what}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], 400, "{body}");
    assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(what), "{message:?} does not name {what}");
}

/// Asserts a 404 error body and answers its message.
async fn not_found_message(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], 404, "{body}");
    assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
    body["message"].as_str().unwrap().to_owned()
}

async fn trigger(app: &TestApp, key: &str, channel: Channel, agent: &str) -> reqwest::Response {
    match channel {
        Channel::Voice => {
            app.post(
                "/telephony/make-call",
                key,
                json!({"agent_id": agent, "to": "447700900123"}),
            )
            .await
        }
        _ => {
            app.post(
                "/messaging/conversation",
                key,
                json!({"agent_id": agent, "to": "447700900123", "channel": channel}),
            )
            .await
        }
    }
}

async fn session(app: &TestApp, key: &str, response: reqwest::Response) -> Value {
    assert_eq!(response.status(), 200, "triggering");
    let body: Value = response.json().await.unwrap();
    let id = body["session_id"].as_str().unwrap();
    let response = app.get(&format!("/sessions/{id}"), key).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn no_agent(id: &str) -> String {
    format!("ID {id} is not an ID to any agent or published version")
}

// §4.1: create.

#[tokio::test]
async fn create_agent_answers_201_with_the_agent() {
    let app = TestApp::spawn().await;
    let key = app.new_key("create").await;
    let number = unique_number();
    let agent = created(
        &app,
        &key,
        json!({"name": "Reminders", "type": "sms", "number": number}),
    )
    .await;
    let id = agent["agent_id"].as_str().unwrap();
    assert!(is_agent_id(id), "agent_id {id:?} is not 24 lowercase hex");
    assert_eq!(agent["name"], "Reminders");
    assert_eq!(agent["type"], "sms");
    assert_eq!(agent["number"], number.as_str());
    assert_eq!(agent["region"], "eu");
    assert_eq!(agent["published_version"], Value::Null);
    assert!(agent["flow"].is_object(), "{agent}");
    for field in ["created_at", "updated_at"] {
        let t = agent[field].as_str().unwrap();
        assert_rfc3339_millis(t);
    }
    // The same agent is read back.
    assert_eq!(read_agent(&app, &key, id).await, agent);
}

#[tokio::test]
async fn agent_ids_are_distinct() {
    let app = TestApp::spawn().await;
    let key = app.new_key("distinct-ids").await;
    let a = app.draft_agent(&key, Channel::Sms, &unique_number()).await;
    let b = app.draft_agent(&key, Channel::Sms, &unique_number()).await;
    assert!(is_agent_id(&a) && is_agent_id(&b));
    assert_ne!(a, b);
}

/// The node a flow starts at, and the node its `next` leads to.
fn start_and_next(flow: &Value) -> (Value, Option<Value>) {
    let nodes = flow["nodes"].as_array().unwrap();
    let find = |id: &Value| nodes.iter().find(|n| &n["id"] == id).cloned();
    let start = find(&flow["start"]).expect("the start node exists");
    let next = start.get("next").and_then(find);
    (start, next)
}

#[tokio::test]
async fn voice_and_sms_agents_get_a_default_flow_that_greets_and_ends() {
    let app = TestApp::spawn().await;
    let key = app.new_key("default-flow").await;
    for (channel, greeting) in [("voice", "speak"), ("sms", "send_message")] {
        let agent = created(
            &app,
            &key,
            json!({"name": "default", "type": channel, "number": unique_number()}),
        )
        .await;
        let (start, next) = start_and_next(&agent["flow"]);
        assert_eq!(start["type"], greeting, "{channel}: {agent}");
        assert!(
            start["text"].as_str().is_some_and(|t| !t.is_empty()),
            "{channel}: {agent}"
        );
        assert_eq!(next.expect("the greeting leads on")["type"], "end");
    }
}

#[tokio::test]
async fn whatsapp_agent_gets_a_default_flow_that_ends() {
    let app = TestApp::spawn().await;
    let key = app.new_key("default-whatsapp-flow").await;
    let agent = created(
        &app,
        &key,
        json!({"name": "wa", "type": "whatsapp", "number": unique_number()}),
    )
    .await;
    let flow = &agent["flow"];
    let nodes = flow["nodes"].as_array().unwrap();
    assert!(
        nodes.iter().any(|n| n["type"] == "end"),
        "no end node in {flow}"
    );
    // It can be published as it is.
    let id = agent["agent_id"].as_str().unwrap();
    assert_eq!(publish(&app, &key, id).await.status(), 200);
}

#[tokio::test]
async fn agent_number_with_a_plus_is_kept_as_digits() {
    let app = TestApp::spawn().await;
    let key = app.new_key("plus-number").await;
    let number = unique_number();
    let agent = created(
        &app,
        &key,
        json!({"name": "plus", "type": "voice", "number": format!("+{number}")}),
    )
    .await;
    assert_eq!(agent["number"], number.as_str());
}

#[tokio::test]
async fn region_defaults_to_the_servers_own() {
    let app = TestApp::spawn_with(|config| config.region = Region::Us).await;
    let key = app.new_key("us-default").await;
    let agent = created(
        &app,
        &key,
        json!({"name": "us", "type": "sms", "number": unique_number()}),
    )
    .await;
    assert_eq!(agent["region"], "us");
}

#[tokio::test]
async fn region_can_be_chosen() {
    let app = TestApp::spawn().await;
    let key = app.new_key("regions").await;
    for region in ["eu", "us"] {
        let agent = created(
            &app,
            &key,
            json!({"name": region, "type": "sms", "number": unique_number(), "region": region}),
        )
        .await;
        assert_eq!(agent["region"], region);
    }
}

#[tokio::test]
async fn create_agent_names_every_missing_field_in_order() {
    let app = TestApp::spawn().await;
    let key = app.new_key("create-missing").await;
    let cases = [
        (json!({}), "name, type, number"),
        (json!({"name": "x"}), "type, number"),
        (json!({"type": "sms"}), "name, number"),
        (json!({"name": "x", "type": "sms"}), "number"),
        (
            json!({"number": unique_number(), "region": "eu"}),
            "name, type",
        ),
        (
            json!({"name": null, "type": null, "number": null}),
            "name, type, number",
        ),
    ];
    for (body, missing) in cases {
        let response = create(&app, &key, body).await;
        assert_error(
            response,
            400,
            &format!("Missing mandatory field(s): {missing}"),
        )
        .await;
    }
}

#[tokio::test]
async fn create_agent_with_an_unknown_type_is_refused() {
    let app = TestApp::spawn().await;
    let key = app.new_key("bad-type").await;
    for kind in [json!("fax"), json!("SMS"), json!(""), json!(3)] {
        let response = create(
            &app,
            &key,
            json!({"name": "x", "type": kind, "number": unique_number()}),
        )
        .await;
        assert_bad_request_naming(response, "type").await;
    }
    let agents: Value = app.get("/agents", &key).await.json().await.unwrap();
    assert_eq!(agents["agents"], json!([]), "nothing was created");
}

#[tokio::test]
async fn create_agent_with_a_bad_number_is_refused() {
    let app = TestApp::spawn().await;
    let key = app.new_key("bad-number").await;
    for number in [
        json!("12345"),
        json!("44 7700 900123"),
        json!("+44-7700-900123"),
        json!("sip:agent@example.com"),
        json!("4477009001234567"),
        json!(""),
        json!(447700900123u64),
    ] {
        let response = create(
            &app,
            &key,
            json!({"name": "x", "type": "sms", "number": number}),
        )
        .await;
        assert_bad_request_naming(response, "number").await;
    }
}

#[tokio::test]
async fn create_agent_with_an_unknown_region_is_refused() {
    let app = TestApp::spawn().await;
    let key = app.new_key("bad-region").await;
    for region in [json!("asia"), json!("EU"), json!(""), json!(1)] {
        let response = create(
            &app,
            &key,
            json!({"name": "x", "type": "sms", "number": unique_number(), "region": region}),
        )
        .await;
        assert_bad_request_naming(response, "region").await;
    }
}

#[tokio::test]
async fn create_agent_with_an_invalid_flow_names_the_node() {
    let app = TestApp::spawn().await;
    let key = app.new_key("bad-flow").await;
    let flow = json!({"format": 1, "start": "a", "nodes": [
        {"id": "a", "type": "send_message", "text": "hi", "next": "b"}
    ]});
    let response = create(
        &app,
        &key,
        json!({"name": "x", "type": "sms", "number": unique_number(), "flow": flow}),
    )
    .await;
    assert_error(response, 400, "node 'a': next refers to unknown node 'b'").await;
}

#[tokio::test]
async fn create_agent_with_a_node_of_another_channel_names_the_node() {
    let app = TestApp::spawn().await;
    let key = app.new_key("wrong-node").await;
    let flow = json!({"format": 1, "start": "hello", "nodes": [
        {"id": "hello", "type": "speak", "text": "hi", "next": "bye"},
        {"id": "bye", "type": "end"}
    ]});
    let response = create(
        &app,
        &key,
        json!({"name": "x", "type": "sms", "number": unique_number(), "flow": flow}),
    )
    .await;
    assert_bad_request_naming(response, "node 'hello'").await;
}

#[tokio::test]
async fn create_agent_with_a_custom_flow_keeps_it() {
    let app = TestApp::spawn().await;
    let key = app.new_key("custom-flow").await;
    let flow = greeting_flow(Channel::Voice, "Your appointment is tomorrow.");
    let agent = created(
        &app,
        &key,
        json!({"name": "x", "type": "voice", "number": unique_number(), "flow": flow}),
    )
    .await;
    assert_eq!(agent["flow"], flow);
}

#[tokio::test]
async fn account_api_bodies_are_parsed_as_json_whatever_the_content_type() {
    let app = TestApp::spawn().await;
    let key = app.new_key("text-plain").await;
    let agent = json!({"name": "plain", "type": "sms", "number": unique_number()});
    let template = json!({"namespace": "ns", "name": "plain", "locale": "en", "body": "Hi {{1}}"});
    for (path, body) in [("/agents", agent), ("/whatsapp/templates", template)] {
        let response = app
            .client
            .post(app.url(path))
            .header("X-Vgai-Key", &key)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{path}");
    }
}

// §4.2: one number per type and region.

#[tokio::test]
async fn two_agents_of_one_type_and_region_cannot_share_a_number() {
    let app = TestApp::spawn().await;
    let key = app.new_key("number-taken").await;
    let number = unique_number();
    app.draft_agent(&key, Channel::Sms, &number).await;
    let response = create(
        &app,
        &key,
        json!({"name": "again", "type": "sms", "number": number}),
    )
    .await;
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], 409);
    assert!(body["message"].is_string(), "{body}");
    // Written with a '+', it is still the same number.
    let response = create(
        &app,
        &key,
        json!({"name": "again", "type": "sms", "number": format!("+{number}")}),
    )
    .await;
    assert_eq!(response.status(), 409);
}

#[tokio::test]
async fn agents_of_different_types_or_regions_may_share_a_number() {
    let app = TestApp::spawn().await;
    let key = app.new_key("number-shared").await;
    let number = unique_number();
    app.draft_agent(&key, Channel::Sms, &number).await;
    app.draft_agent(&key, Channel::Voice, &number).await;
    app.draft_agent(&key, Channel::Whatsapp, &number).await;
    created(
        &app,
        &key,
        json!({"name": "us", "type": "sms", "number": number, "region": "us"}),
    )
    .await;
}

#[tokio::test]
async fn editing_an_agent_onto_a_taken_number_conflicts() {
    let app = TestApp::spawn().await;
    let key = app.new_key("patch-taken").await;
    let taken = unique_number();
    app.draft_agent(&key, Channel::Voice, &taken).await;
    let mine = unique_number();
    let agent = app.draft_agent(&key, Channel::Voice, &mine).await;
    let response = patch(
        &app,
        &format!("/agents/{agent}"),
        &key,
        json!({"number": taken}),
    )
    .await;
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], 409);
    assert_eq!(
        read_agent(&app, &key, &agent).await["number"],
        mine.as_str()
    );
}

// §4.2: list and read.

#[tokio::test]
async fn list_agents_shows_only_the_accounts_own() {
    let app = TestApp::spawn().await;
    let mine = app.new_key("lister").await;
    let theirs = app.new_key("other-lister").await;
    let a = app.draft_agent(&mine, Channel::Sms, &unique_number()).await;
    let b = app
        .published_agent(&mine, Channel::Voice, &unique_number())
        .await;
    let c = app
        .draft_agent(&theirs, Channel::Sms, &unique_number())
        .await;

    let response = app.get("/agents", &mine).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let mut ids: Vec<&str> = body["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut expected = vec![a.as_str(), b.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected);

    let body: Value = app.get("/agents", &theirs).await.json().await.unwrap();
    let ids: Vec<&str> = body["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [c.as_str()]);
}

#[tokio::test]
async fn list_agents_of_a_new_account_is_empty() {
    let app = TestApp::spawn().await;
    let key = app.new_key("empty-list").await;
    let response = app.get("/agents", &key).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["agents"], json!([]));
}

#[tokio::test]
async fn reading_another_accounts_agent_is_404_as_if_absent() {
    let app = TestApp::spawn().await;
    let owner = app.new_key("owner").await;
    let stranger = app.new_key("stranger").await;
    let agent = app
        .published_agent(&owner, Channel::Sms, &unique_number())
        .await;
    let absent = "0123456789abcdef01234567";

    let foreign = not_found_message(app.get(&format!("/agents/{agent}"), &stranger).await).await;
    let missing = not_found_message(app.get(&format!("/agents/{absent}"), &stranger).await).await;
    assert_eq!(
        foreign.replace(&agent, "<id>"),
        missing.replace(absent, "<id>"),
        "another account's agent answers like an absent one"
    );
    // The owner still sees it.
    read_agent(&app, &owner, &agent).await;
}

#[tokio::test]
async fn reading_unknown_or_malformed_agent_ids_is_404() {
    let app = TestApp::spawn().await;
    let key = app.new_key("unknown-read").await;
    for id in [
        "0123456789abcdef01234567",
        "nope",
        "0123456789ABCDEF01234567",
    ] {
        not_found_message(app.get(&format!("/agents/{id}"), &key).await).await;
    }
}

// §4.2: edit.

#[tokio::test]
async fn patch_edits_name_number_and_flow_of_the_draft() {
    let app = TestApp::spawn().await;
    let key = app.new_key("editor").await;
    let agent = app.draft_agent(&key, Channel::Sms, &unique_number()).await;
    let number = unique_number();
    let flow = greeting_flow(Channel::Sms, "Edited greeting.");
    let response = patch(
        &app,
        &format!("/agents/{agent}"),
        &key,
        json!({"name": "Renamed", "number": number, "flow": flow}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let edited: Value = response.json().await.unwrap();
    assert_eq!(edited["agent_id"], agent.as_str());
    assert_eq!(edited["name"], "Renamed");
    assert_eq!(edited["number"], number.as_str());
    assert_eq!(edited["flow"], flow);
    assert_eq!(edited["type"], "sms");
    assert_eq!(read_agent(&app, &key, &agent).await, edited);
}

#[tokio::test]
async fn patch_changes_only_the_fields_given() {
    let app = TestApp::spawn().await;
    let key = app.new_key("partial-editor").await;
    let number = unique_number();
    let agent = app.draft_agent(&key, Channel::Voice, &number).await;
    let before = read_agent(&app, &key, &agent).await;
    let response = patch(
        &app,
        &format!("/agents/{agent}"),
        &key,
        json!({"name": "Only name"}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let after = read_agent(&app, &key, &agent).await;
    assert_eq!(after["name"], "Only name");
    assert_eq!(after["number"], number.as_str());
    assert_eq!(after["flow"], before["flow"]);
}

#[tokio::test]
async fn patch_cannot_change_the_type() {
    let app = TestApp::spawn().await;
    let key = app.new_key("type-editor").await;
    let agent = app.draft_agent(&key, Channel::Sms, &unique_number()).await;
    let response = patch(
        &app,
        &format!("/agents/{agent}"),
        &key,
        json!({"type": "voice"}),
    )
    .await;
    assert_bad_request_naming(response, "type").await;
    assert_eq!(read_agent(&app, &key, &agent).await["type"], "sms");
}

#[tokio::test]
async fn patch_with_a_bad_number_or_flow_is_refused_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let key = app.new_key("bad-editor").await;
    let agent = app.draft_agent(&key, Channel::Sms, &unique_number()).await;
    let before = read_agent(&app, &key, &agent).await;

    let response = patch(
        &app,
        &format!("/agents/{agent}"),
        &key,
        json!({"number": "123"}),
    )
    .await;
    assert_bad_request_naming(response, "number").await;

    let flow = json!({"format": 1, "start": "a", "nodes": [
        {"id": "a", "type": "send_message", "text": "hi", "next": "b"}
    ]});
    let response = patch(
        &app,
        &format!("/agents/{agent}"),
        &key,
        json!({"name": "half", "flow": flow}),
    )
    .await;
    assert_error(response, 400, "node 'a': next refers to unknown node 'b'").await;
    assert_eq!(read_agent(&app, &key, &agent).await, before);
}

#[tokio::test]
async fn patching_another_accounts_agent_is_404_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let owner = app.new_key("patch-owner").await;
    let stranger = app.new_key("patch-stranger").await;
    let agent = app
        .draft_agent(&owner, Channel::Sms, &unique_number())
        .await;
    let before = read_agent(&app, &owner, &agent).await;
    let response = patch(
        &app,
        &format!("/agents/{agent}"),
        &stranger,
        json!({"name": "hijacked"}),
    )
    .await;
    not_found_message(response).await;
    assert_eq!(read_agent(&app, &owner, &agent).await, before);
}

// §4.2: delete.

#[tokio::test]
async fn deleted_agent_is_gone() {
    let app = TestApp::spawn().await;
    let key = app.new_key("deleter").await;
    let agent = app
        .published_agent(&key, Channel::Sms, &unique_number())
        .await;
    let response = delete(&app, &format!("/agents/{agent}"), &key).await;
    assert_eq!(response.status(), 204);
    assert!(response.bytes().await.unwrap().is_empty());

    not_found_message(app.get(&format!("/agents/{agent}"), &key).await).await;
    let list: Value = app.get("/agents", &key).await.json().await.unwrap();
    assert_eq!(list["agents"], json!([]));
    // A second delete finds nothing.
    not_found_message(delete(&app, &format!("/agents/{agent}"), &key).await).await;
}

#[tokio::test]
async fn deleted_agent_cannot_be_triggered() {
    let app = TestApp::spawn().await;
    let key = app.new_key("deleted-trigger").await;
    let number = unique_number();
    let agent = app.published_agent(&key, Channel::Sms, &number).await;
    assert_eq!(
        delete(&app, &format!("/agents/{agent}"), &key)
            .await
            .status(),
        204
    );
    let response = trigger(&app, &key, Channel::Sms, &agent).await;
    assert_error(response, 404, &no_agent(&agent)).await;
    let response = app
        .post(
            "/messaging/conversation",
            &key,
            json!({"from": number, "to": "447700900123", "channel": "sms"}),
        )
        .await;
    assert_error(
        response,
        404,
        &format!("Version information for number {number} doesn't exist"),
    )
    .await;
}

#[tokio::test]
async fn deleted_voice_agent_cannot_be_called() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    assert_eq!(
        delete(&app, &format!("/agents/{agent}"), &key)
            .await
            .status(),
        204
    );
    let response = trigger(&app, &key, Channel::Voice, &agent).await;
    assert_error(response, 404, &no_agent(&agent)).await;
}

#[tokio::test]
async fn deleting_another_accounts_agent_is_404_and_keeps_it() {
    let app = TestApp::spawn().await;
    let owner = app.new_key("delete-owner").await;
    let stranger = app.new_key("delete-stranger").await;
    let agent = app
        .published_agent(&owner, Channel::Sms, &unique_number())
        .await;
    not_found_message(delete(&app, &format!("/agents/{agent}"), &stranger).await).await;
    read_agent(&app, &owner, &agent).await;
    let response = trigger(&app, &owner, Channel::Sms, &agent).await;
    assert_eq!(response.status(), 200, "the owner can still trigger it");
}

#[tokio::test]
async fn deleting_unknown_or_malformed_agent_ids_is_404() {
    let app = TestApp::spawn().await;
    let key = app.new_key("unknown-delete").await;
    for id in ["0123456789abcdef01234567", "nope"] {
        not_found_message(delete(&app, &format!("/agents/{id}"), &key).await).await;
    }
}

// §4.3: publish and versions.

#[tokio::test]
async fn publish_answers_the_next_version_each_time() {
    let app = TestApp::spawn().await;
    let key = app.new_key("publisher").await;
    let agent = app
        .draft_agent(&key, Channel::Voice, &unique_number())
        .await;
    for version in 1..=3 {
        let response = publish(&app, &key, &agent).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, json!({"agent_id": agent, "version": version}));
        assert_eq!(
            read_agent(&app, &key, &agent).await["published_version"],
            version
        );
    }
}

#[tokio::test]
async fn versions_are_counted_per_agent() {
    let app = TestApp::spawn().await;
    let key = app.new_key("per-agent-versions").await;
    let a = app
        .published_agent(&key, Channel::Sms, &unique_number())
        .await;
    let b = app.draft_agent(&key, Channel::Sms, &unique_number()).await;
    publish(&app, &key, &a).await;
    let body: Value = publish(&app, &key, &b).await.json().await.unwrap();
    assert_eq!(body, json!({"agent_id": b, "version": 1}));
}

#[tokio::test]
async fn session_runs_the_version_current_when_it_was_triggered() {
    let app = TestApp::spawn().await;
    let key = app.new_key("versions").await;
    let agent = app.draft_agent(&key, Channel::Sms, &unique_number()).await;
    let path = format!("/agents/{agent}");
    let first = greeting_flow(Channel::Sms, "First version.");
    let second = greeting_flow(Channel::Sms, "Second version.");
    assert_eq!(
        patch(&app, &path, &key, json!({"flow": first}))
            .await
            .status(),
        200
    );
    assert_eq!(publish(&app, &key, &agent).await.status(), 200);
    app.set_rate(&agent, 10).await;

    let s1 = session(&app, &key, trigger(&app, &key, Channel::Sms, &agent).await).await;
    assert_eq!(s1["agent_version"], 1);

    // Editing the draft changes nothing for triggers until it is published.
    assert_eq!(
        patch(&app, &path, &key, json!({"flow": second}))
            .await
            .status(),
        200
    );
    let s2 = session(&app, &key, trigger(&app, &key, Channel::Sms, &agent).await).await;
    assert_eq!(s2["agent_version"], 1);

    let published: Value = publish(&app, &key, &agent).await.json().await.unwrap();
    assert_eq!(published["version"], 2);
    let s3 = session(&app, &key, trigger(&app, &key, Channel::Sms, &agent).await).await;
    assert_eq!(s3["agent_version"], 2);

    // Sessions started before keep their version, and ran its flow.
    for (s, version, text) in [
        (&s1, 1, "First version."),
        (&s2, 1, "First version."),
        (&s3, 2, "Second version."),
    ] {
        let id = s["session_id"].as_str().unwrap();
        let ended = app.ended_session(&key, id).await;
        assert_eq!(ended["agent_version"], version, "{id}");
        let events = ended["events"].to_string();
        assert!(
            events.contains(text),
            "{id} did not send {text:?}: {events}"
        );
    }
}

#[tokio::test]
async fn published_number_is_the_one_of_the_version() {
    let app = TestApp::spawn().await;
    let key = app.new_key("number-versions").await;
    let old = unique_number();
    let agent = app.published_agent(&key, Channel::Sms, &old).await;
    app.set_rate(&agent, 10).await;
    let new = unique_number();
    let response = patch(
        &app,
        &format!("/agents/{agent}"),
        &key,
        json!({"number": new}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let s = session(&app, &key, trigger(&app, &key, Channel::Sms, &agent).await).await;
    assert_eq!(
        s["from"],
        old.as_str(),
        "the draft's number is not published yet"
    );

    assert_eq!(publish(&app, &key, &agent).await.status(), 200);
    let s = session(&app, &key, trigger(&app, &key, Channel::Sms, &agent).await).await;
    assert_eq!(s["from"], new.as_str());
}

#[tokio::test]
async fn publishing_another_accounts_agent_is_404() {
    let app = TestApp::spawn().await;
    let owner = app.new_key("publish-owner").await;
    let stranger = app.new_key("publish-stranger").await;
    let agent = app
        .draft_agent(&owner, Channel::Sms, &unique_number())
        .await;
    not_found_message(publish(&app, &stranger, &agent).await).await;
    assert_eq!(
        read_agent(&app, &owner, &agent).await["published_version"],
        Value::Null
    );
}

#[tokio::test]
async fn publishing_unknown_or_malformed_agent_ids_is_404() {
    let app = TestApp::spawn().await;
    let key = app.new_key("publish-unknown").await;
    for id in ["0123456789abcdef01234567", "nope"] {
        not_found_message(publish(&app, &key, id).await).await;
    }
}

// §2.2 step 7 and §3.5: agents as the triggers see them.

#[tokio::test]
async fn triggering_an_agent_never_published_is_404() {
    let app = TestApp::spawn().await;
    let key = app.new_key("unpublished").await;
    for channel in [Channel::Voice, Channel::Sms] {
        let agent = app.draft_agent(&key, channel, &unique_number()).await;
        let response = trigger(&app, &key, channel, &agent).await;
        assert_error(
            response,
            404,
            &format!("published version for Agent {agent} was not found"),
        )
        .await;
    }
}

#[tokio::test]
async fn triggering_an_unknown_or_malformed_agent_id_is_404() {
    let app = TestApp::spawn().await;
    let key = app.new_key("unknown-trigger").await;
    for channel in [Channel::Voice, Channel::Sms] {
        for id in [
            "0123456789abcdef01234567",
            "AGENT_ID",
            "0123456789abcdef0123456",
            "0123456789abcdef012345678",
            "0123456789abcdef0123456g",
        ] {
            let response = trigger(&app, &key, channel, id).await;
            assert_error(response, 404, &no_agent(id)).await;
        }
    }
}

#[tokio::test]
async fn triggering_another_accounts_agent_is_404_as_if_absent() {
    let app = TestApp::spawn().await;
    let owner = app.new_key("trigger-owner").await;
    let stranger = app.new_key("trigger-stranger").await;
    for channel in [Channel::Voice, Channel::Sms] {
        let agent = app.published_agent(&owner, channel, &unique_number()).await;
        let response = trigger(&app, &stranger, channel, &agent).await;
        assert_error(response, 404, &no_agent(&agent)).await;
    }
}

#[tokio::test]
async fn triggering_another_accounts_unpublished_agent_does_not_reveal_it() {
    let app = TestApp::spawn().await;
    let owner = app.new_key("draft-owner").await;
    let stranger = app.new_key("draft-stranger").await;
    for channel in [Channel::Voice, Channel::Sms] {
        let agent = app.draft_agent(&owner, channel, &unique_number()).await;
        let response = trigger(&app, &stranger, channel, &agent).await;
        assert_error(response, 404, &no_agent(&agent)).await;
    }
}

// §4.4: WhatsApp templates.

#[tokio::test]
async fn register_template_answers_201_with_its_parameter_counts() {
    let app = TestApp::spawn().await;
    let key = app.new_key("templates").await;
    let response = app
        .post(
            "/whatsapp/templates",
            &key,
            json!({
                "namespace": "NAMESPACE_ID",
                "name": "appointment",
                "locale": "en",
                "header": "Hi {{1}}",
                "body": "{{1}}, your appointment is on {{2}} at {{3}}. See you, {{1}}!"
            }),
        )
        .await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["namespace"], "NAMESPACE_ID");
    assert_eq!(body["name"], "appointment");
    assert_eq!(body["locale"], "en");
    assert_eq!(body["header"], "Hi {{1}}");
    assert_eq!(body["header_parameters"], 1);
    assert_eq!(body["body_parameters"], 3);
}

#[tokio::test]
async fn template_without_header_or_placeholders_has_no_parameters() {
    let app = TestApp::spawn().await;
    let key = app.new_key("plain-template").await;
    let response = app
        .post(
            "/whatsapp/templates",
            &key,
            json!({"namespace": "ns", "name": "plain", "locale": "en", "body": "Thanks for your order."}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["header"], Value::Null);
    assert_eq!(body["header_parameters"], 0);
    assert_eq!(body["body_parameters"], 0);
}

#[tokio::test]
async fn template_with_badly_numbered_placeholders_is_refused() {
    let app = TestApp::spawn().await;
    let key = app.new_key("bad-placeholders").await;
    let cases = [
        (None, "{{2}}", "body"),
        (None, "{{1}} and {{3}}", "body"),
        (None, "Hello {{name}}", "body"),
        (None, "Hello {{1", "body"),
        (Some("{{0}}"), "{{1}}", "header"),
        (Some("{{2}}"), "fine", "header"),
    ];
    for (header, body, field) in cases {
        let response = app
            .post(
                "/whatsapp/templates",
                &key,
                json!({"namespace": "ns", "name": "t", "locale": "en", "header": header, "body": body}),
            )
            .await;
        assert_bad_request_naming(response, field).await;
    }
    let list: Value = app
        .get("/whatsapp/templates", &key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["templates"], json!([]), "nothing was registered");
}

#[tokio::test]
async fn register_template_names_every_missing_field() {
    let app = TestApp::spawn().await;
    let key = app.new_key("template-missing").await;
    let response = app.post("/whatsapp/templates", &key, json!({})).await;
    assert_error(
        response,
        400,
        "Missing mandatory field(s): namespace, name, locale, body",
    )
    .await;
    let response = app
        .post(
            "/whatsapp/templates",
            &key,
            json!({"namespace": "ns", "name": null, "locale": "en", "header": "{{1}}"}),
        )
        .await;
    assert_error(response, 400, "Missing mandatory field(s): name, body").await;
}

#[tokio::test]
async fn registering_a_template_twice_conflicts() {
    let app = TestApp::spawn().await;
    let key = app.new_key("template-twice").await;
    app.register_template(&key, "welcome", None, "Hi {{1}}")
        .await;
    let response = app
        .post(
            "/whatsapp/templates",
            &key,
            json!({"namespace": "ns", "name": "welcome", "locale": "en", "body": "Hello {{1}}"}),
        )
        .await;
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], 409);
    assert!(body["message"].is_string(), "{body}");

    // Another locale or namespace is another template.
    for (namespace, locale) in [("ns", "fr"), ("other", "en")] {
        let response = app
            .post(
                "/whatsapp/templates",
                &key,
                json!({"namespace": namespace, "name": "welcome", "locale": locale, "body": "Hi {{1}}"}),
            )
            .await;
        assert_eq!(response.status(), 201, "{namespace} {locale}");
    }
}

#[tokio::test]
async fn accounts_register_templates_independently() {
    let app = TestApp::spawn().await;
    let a = app.new_key("template-a").await;
    let b = app.new_key("template-b").await;
    app.register_template(&a, "welcome", None, "Hi {{1}}").await;
    app.register_template(&b, "welcome", None, "Hi {{1}}").await;
}

#[tokio::test]
async fn list_templates_shows_only_the_accounts_own() {
    let app = TestApp::spawn().await;
    let mine = app.new_key("template-lister").await;
    let theirs = app.new_key("template-other").await;
    app.register_template(&mine, "one", Some("{{1}}"), "{{1}} {{2}}")
        .await;
    app.register_template(&mine, "two", None, "Two").await;
    app.register_template(&theirs, "three", None, "Three").await;

    let response = app.get("/whatsapp/templates", &mine).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let templates = body["templates"].as_array().unwrap();
    let mut names: Vec<&str> = templates
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["one", "two"]);
    let one = templates.iter().find(|t| t["name"] == "one").unwrap();
    assert_eq!(one["namespace"], "ns");
    assert_eq!(one["locale"], "en");
    assert_eq!(one["header_parameters"], 1);
    assert_eq!(one["body_parameters"], 2);

    let body: Value = app
        .get("/whatsapp/templates", &theirs)
        .await
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = body["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["three"]);
}

// §4.5: the account.

#[tokio::test]
async fn account_shows_its_name_and_webhook_secret() {
    let app = TestApp::spawn().await;
    let key = app.new_key("acme-clinic").await;
    let response = app.get("/account", &key).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let fields: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(fields, ["account", "webhook_secret"], "{body}");
    assert_eq!(body["account"], "acme-clinic");
    let secret = body["webhook_secret"].as_str().unwrap();
    let encoded = secret
        .strip_prefix("whsec_")
        .unwrap_or_else(|| panic!("{secret:?} does not start with whsec_"));
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("the part after whsec_ is base64");
    assert!(!decoded.is_empty());

    // The same secret every time it is read.
    let again: Value = app.get("/account", &key).await.json().await.unwrap();
    assert_eq!(again, body);
}

#[tokio::test]
async fn each_account_has_its_own_webhook_secret() {
    let app = TestApp::spawn().await;
    let a = app.new_key("secret-a").await;
    let b = app.new_key("secret-b").await;
    let a: Value = app.get("/account", &a).await.json().await.unwrap();
    let b: Value = app.get("/account", &b).await.json().await.unwrap();
    assert_eq!(a["account"], "secret-a");
    assert_eq!(b["account"], "secret-b");
    assert_ne!(a["webhook_secret"], b["webhook_secret"]);
}

#[tokio::test]
async fn two_keys_of_one_account_see_the_same_account() {
    let app = TestApp::spawn().await;
    let first = app.new_key("shared-account").await;
    let second = app.new_key("shared-account").await;
    let agent = app
        .draft_agent(&first, Channel::Sms, &unique_number())
        .await;
    read_agent(&app, &second, &agent).await;
    let a: Value = app.get("/account", &first).await.json().await.unwrap();
    let b: Value = app.get("/account", &second).await.json().await.unwrap();
    assert_eq!(a, b);
}

// §1.3 on every §4 endpoint.

#[tokio::test]
async fn every_account_endpoint_needs_a_key() {
    let app = TestApp::spawn().await;
    let key = app.new_key("auth").await;
    let agent = app
        .published_agent(&key, Channel::Sms, &unique_number())
        .await;
    let one = format!("/agents/{agent}");
    let publish_path = format!("/agents/{agent}/publish");
    let endpoints = [
        ("POST", "/agents".to_owned()),
        ("GET", "/agents".to_owned()),
        ("GET", one.clone()),
        ("PATCH", one.clone()),
        ("DELETE", one.clone()),
        ("POST", publish_path),
        ("POST", "/whatsapp/templates".to_owned()),
        ("GET", "/whatsapp/templates".to_owned()),
        ("GET", "/account".to_owned()),
    ];
    for (method, path) in &endpoints {
        for credential in [None, Some("not-a-key"), Some("")] {
            let mut request = app
                .client
                .request(method.parse().unwrap(), app.url(path))
                .json(&json!({"name": "x", "type": "sms", "number": unique_number()}));
            if let Some(credential) = credential {
                request = request.header("X-Vgai-Key", credential);
            }
            let response = request.send().await.unwrap();
            assert_eq!(
                response.status(),
                401,
                "{method} {path} with {credential:?}"
            );
            let body: Value = response.json().await.unwrap();
            assert_eq!(
                body,
                json!({"status": 401, "message": "Not Authorised"}),
                "{method} {path}"
            );
        }
    }
    // Nothing was changed without a key.
    let agent_now = read_agent(&app, &key, &agent).await;
    assert_eq!(agent_now["published_version"], 1);
    let list: Value = app.get("/agents", &key).await.json().await.unwrap();
    assert_eq!(list["agents"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn unknown_agent_without_a_key_is_401_not_404() {
    let app = TestApp::spawn().await;
    let absent = "0123456789abcdef01234567";
    let response = app
        .client
        .get(app.url(&format!("/agents/{absent}")))
        .send()
        .await
        .unwrap();
    assert_error(response, 401, "Not Authorised").await;
}
