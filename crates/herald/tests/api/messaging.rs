//! CONTRACT §3: `POST /messaging/conversation` for SMS and WhatsApp — its
//! body (§3.1), mandatory fields and their order (§3.2), components (§3.3),
//! registered templates (§3.4), and the §2.2–2.3 checks and success answer it
//! shares with voice (§3.5), with the §1.1 body parsing, §1.5 times, §1.6 ids
//! and §1.7 destinations as they apply here. Also the messaging side of the
//! simulator (§8.1), seen through the sessions (§7.1) and the status
//! callbacks (§5.2) it produces.

use std::time::Duration;

use herald_core::Channel;
use serde_json::{json, Value};

use crate::helpers::{
    account_with_agent, assert_error, assert_rfc3339_millis, assert_session_id, greeting_flow,
    has_shape, unique_number, Received, TestApp, TestReceiver,
};

const PATH: &str = "/messaging/conversation";
/// The template the WhatsApp tests register: one header and one body
/// placeholder, as the seed's example fills them.
const TEMPLATE: &str = "appointment";

fn sms(agent: &str, to: &str) -> Value {
    json!({"to": to, "agent_id": agent, "channel": "sms"})
}

/// The seed's WhatsApp example body, filled in.
fn seed_whatsapp(agent: &str, to: &str, status_url: &str) -> Value {
    json!({
        "components": [
            {"type": "header", "parameters": [{"type": "text", "text": "PARAM1_VALUE"}]},
            {"type": "body", "parameters": [{"type": "text", "text": "PARAM2_VALUE"}]}
        ],
        "namespace": "ns",
        "template": TEMPLATE,
        "locale": "en",
        "to": to,
        "agent_id": agent,
        "channel": "whatsapp",
        "status_url": status_url,
        "session_parameters": [{"name": "string", "value": "string"}]
    })
}

/// An account with a published WhatsApp agent and the seed's template
/// (header `{{1}}`, body `{{1}}`) registered.
async fn whatsapp_account(app: &TestApp) -> (String, String) {
    let (key, agent) = account_with_agent(app, Channel::Whatsapp).await;
    app.register_template(&key, TEMPLATE, Some("{{1}}"), "{{1}}")
        .await;
    (key, agent)
}

/// Triggers and answers the new session's id, asserting the 200.
async fn start(app: &TestApp, key: &str, body: Value) -> String {
    let response = app.post(PATH, key, body.clone()).await;
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "triggering {body}: {text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    answer["session_id"].as_str().unwrap().to_owned()
}

async fn session(app: &TestApp, key: &str, id: &str) -> Value {
    let response = app.get(&format!("/sessions/{id}"), key).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn statuses(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .map(|r| r.body["status"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Runs a session to `to` on `channel` with the receiver as `status_url`;
/// answers the session once ended, and every callback accepted, after
/// waiting for `expected` of them and a little longer for any extra.
async fn run_to(channel: Channel, to: &str, expected: usize) -> (Value, Vec<String>) {
    let app = TestApp::spawn().await;
    let receiver = TestReceiver::start().await;
    let (key, body) = match channel {
        Channel::Whatsapp => {
            let (key, agent) = whatsapp_account(&app).await;
            (key, seed_whatsapp(&agent, to, &receiver.url))
        }
        _ => {
            let (key, agent) = account_with_agent(&app, channel).await;
            let mut body = sms(&agent, to);
            body["status_url"] = json!(receiver.url);
            (key, body)
        }
    };
    let id = start(&app, &key, body).await;
    let ended = app.ended_session(&key, &id).await;
    receiver.wait_for(expected).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    (ended, statuses(&receiver.received()))
}

// §3.5 / §2.3: success.

#[tokio::test]
async fn sms_trigger_answers_200_with_a_lowercase_uuid_and_a_microsecond_start_time() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Sms).await;
    let before = chrono::Utc::now().naive_utc();
    let response = app.post(PATH, &key, sms(&agent, "447700900123")).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let fields: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(fields, ["session_id", "session_start_time"], "{body}");
    assert_session_id(body["session_id"].as_str().unwrap());
    let start = body["session_start_time"].as_str().unwrap();
    assert!(
        has_shape(start, "dddd-dd-ddTdd:dd:dd.dddddd"),
        "session_start_time {start:?} is not YYYY-MM-DDTHH:MM:SS.ffffff"
    );
    // UTC: the time of the request, not a local time.
    let parsed = chrono::NaiveDateTime::parse_from_str(start, "%Y-%m-%dT%H:%M:%S%.6f").unwrap();
    let after = chrono::Utc::now().naive_utc();
    assert!(
        parsed >= before - chrono::Duration::seconds(1)
            && parsed <= after + chrono::Duration::seconds(1),
        "{start} is not the UTC time of the request ({before} .. {after})"
    );
}

#[tokio::test]
async fn sms_session_records_the_trigger_and_the_agent() {
    let app = TestApp::spawn().await;
    let key = app.new_key("sms-records").await;
    let number = unique_number();
    let agent = app.published_agent(&key, Channel::Sms, &number).await;
    let id = start(&app, &key, sms(&agent, "447700900123")).await;
    let session = session(&app, &key, &id).await;
    assert_eq!(session["session_id"], id.as_str());
    assert_eq!(session["agent_id"], agent.as_str());
    assert_eq!(session["agent_version"], 1);
    assert_eq!(session["channel"], "sms");
    assert_eq!(session["to"], "447700900123");
    assert_eq!(session["from"], number.as_str());
}

#[tokio::test]
async fn sms_without_status_url_is_accepted() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Sms).await;
    let id = start(&app, &key, sms(&agent, "447700900123")).await;
    let ended = app.ended_session(&key, &id).await;
    assert_eq!(ended["outcome"], "completed");
}

#[tokio::test]
async fn unknown_fields_are_ignored() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Sms).await;
    let mut body = sms(&agent, "447700900123");
    body["priority"] = json!("high");
    body["hangup_on_answer_machine"] = json!(true);
    start(&app, &key, body).await;
}

#[tokio::test]
async fn leading_plus_on_to_is_accepted_and_dropped() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Sms).await;
    let id = start(&app, &key, sms(&agent, "+447700900123")).await;
    assert_eq!(session(&app, &key, &id).await["to"], "447700900123");
}

#[tokio::test]
async fn body_is_parsed_as_json_whatever_the_content_type() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Sms).await;
    let response = app
        .client
        .post(app.url(PATH))
        .header("X-Vgai-Key", &key)
        .header("Content-Type", "text/plain")
        .body(sms(&agent, "447700900123").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_session_id(body["session_id"].as_str().unwrap());
}

#[tokio::test]
async fn body_without_content_type_is_parsed_as_json() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Sms).await;
    let response = app
        .post_raw(PATH, &key, sms(&agent, "447700900123").to_string())
        .await;
    assert_eq!(response.status(), 200);
}

// §2.2 steps 1 and 2.

#[tokio::test]
async fn trigger_without_key_is_not_authorised() {
    let app = TestApp::spawn().await;
    let (_key, agent) = account_with_agent(&app, Channel::Sms).await;
    let response = app
        .client
        .post(app.url(PATH))
        .json(&sms(&agent, "447700900123"))
        .send()
        .await
        .unwrap();
    assert_error(response, 401, "Not Authorised").await;
}

#[tokio::test]
async fn trigger_with_unknown_key_is_not_authorised_before_any_body_check() {
    let app = TestApp::spawn().await;
    let response = app.post(PATH, "not-a-key", json!({})).await;
    assert_error(response, 401, "Not Authorised").await;
}

#[tokio::test]
async fn body_that_is_not_a_json_object_is_invalid_json() {
    let app = TestApp::spawn().await;
    let key = app.new_key("bad-json").await;
    for raw in ["{\"to\": ", "[]", "\"sms\""] {
        let response = app.post_raw(PATH, &key, raw).await;
        assert_eq!(response.status(), 400, "{raw}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], 400, "{raw}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.starts_with("Invalid JSON body: "),
            "{raw}: {message}"
        );
        assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
    }
}

// §3.2: mandatory fields, in the seed's order.

#[tokio::test]
async fn empty_body_lists_the_sms_mandatory_fields() {
    let app = TestApp::spawn().await;
    let key = app.new_key("missing-sms").await;
    let response = app.post(PATH, &key, json!({})).await;
    assert_error(
        response,
        400,
        "Missing mandatory field(s): to, agent_id, channel",
    )
    .await;
}

#[tokio::test]
async fn sms_missing_fields_are_each_named_in_order() {
    let app = TestApp::spawn().await;
    let key = app.new_key("missing-sms-combos").await;
    let id = "60c09d70e6a68858f4220848";
    let cases = [
        (json!({"channel": "sms"}), "to, agent_id"),
        (json!({"to": "447700900123", "channel": "sms"}), "agent_id"),
        (json!({"agent_id": id, "channel": "sms"}), "to"),
        (json!({"to": "447700900123", "agent_id": id}), "channel"),
        (json!({"agent_id": id}), "to, channel"),
        // An unknown channel needs only the common fields before it is refused.
        (json!({"channel": "fax"}), "to, agent_id"),
    ];
    for (body, missing) in cases {
        let response = app.post(PATH, &key, body).await;
        assert_error(
            response,
            400,
            &format!("Missing mandatory field(s): {missing}"),
        )
        .await;
    }
}

#[tokio::test]
async fn whatsapp_body_with_only_channel_lists_every_other_mandatory_field() {
    let app = TestApp::spawn().await;
    let key = app.new_key("missing-whatsapp").await;
    let response = app.post(PATH, &key, json!({"channel": "whatsapp"})).await;
    assert_error(
        response,
        400,
        "Missing mandatory field(s): namespace, template, locale, to, agent_id, status_url",
    )
    .await;
}

#[tokio::test]
async fn whatsapp_missing_fields_are_each_named_in_the_seed_order() {
    let app = TestApp::spawn().await;
    let key = app.new_key("missing-whatsapp-combos").await;
    let full = seed_whatsapp(
        "60c09d70e6a68858f4220848",
        "447700900123",
        "https://example.com/status",
    );
    let cases: [(&[&str], &str); 6] = [
        (&["template"], "template"),
        (&["status_url"], "status_url"),
        (&["locale", "to"], "locale, to"),
        (
            &["status_url", "agent_id", "namespace"],
            "namespace, agent_id, status_url",
        ),
        (
            &["to", "template", "status_url"],
            "template, to, status_url",
        ),
        (
            &[
                "namespace",
                "template",
                "locale",
                "to",
                "agent_id",
                "status_url",
            ],
            "namespace, template, locale, to, agent_id, status_url",
        ),
    ];
    for (remove, missing) in cases {
        let mut body = full.clone();
        for field in remove {
            body.as_object_mut().unwrap().remove(*field);
        }
        let response = app.post(PATH, &key, body).await;
        assert_error(
            response,
            400,
            &format!("Missing mandatory field(s): {missing}"),
        )
        .await;
    }
}

#[tokio::test]
async fn whatsapp_components_are_optional_when_the_template_has_no_placeholders() {
    let app = TestApp::spawn().await;
    let receiver = TestReceiver::start().await;
    let (key, agent) = account_with_agent(&app, Channel::Whatsapp).await;
    app.register_template(&key, "plain", None, "Your parcel is on its way.")
        .await;
    let mut body = seed_whatsapp(&agent, "447700900123", &receiver.url);
    body["template"] = json!("plain");
    body.as_object_mut().unwrap().remove("components");
    start(&app, &key, body).await;
}

#[tokio::test]
async fn null_counts_as_missing() {
    let app = TestApp::spawn().await;
    let key = app.new_key("null-missing").await;
    let id = "60c09d70e6a68858f4220848";
    let response = app
        .post(
            PATH,
            &key,
            json!({"to": null, "agent_id": id, "channel": "sms"}),
        )
        .await;
    assert_error(response, 400, "Missing mandatory field(s): to").await;

    let response = app
        .post(
            PATH,
            &key,
            json!({"to": "447700900123", "agent_id": null, "from": null, "channel": null}),
        )
        .await;
    assert_error(
        response,
        400,
        "Missing mandatory field(s): agent_id, channel",
    )
    .await;

    let mut body = seed_whatsapp(id, "447700900123", "https://example.com/status");
    body["status_url"] = Value::Null;
    body["namespace"] = Value::Null;
    let response = app.post(PATH, &key, body).await;
    assert_error(
        response,
        400,
        "Missing mandatory field(s): namespace, status_url",
    )
    .await;
}

#[tokio::test]
async fn empty_to_is_present_and_fails_as_a_bad_destination() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Sms).await;
    let response = app.post(PATH, &key, sms(&agent, "")).await;
    assert_error(response, 400, "Bad destination number format").await;
}

// §3.2: channels and destinations.

#[tokio::test]
async fn unknown_channel_is_unsupported() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Sms).await;
    let mut body = sms(&agent, "447700900123");
    body["channel"] = json!("fax");
    let response = app.post(PATH, &key, body.clone()).await;
    assert_error(response, 400, "Unsupported channel: fax").await;

    body["channel"] = json!("voice");
    let response = app.post(PATH, &key, body).await;
    assert_error(response, 400, "Unsupported channel: voice").await;
}

#[tokio::test]
async fn sip_uri_is_not_a_messaging_destination() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Sms).await;
    for to in [
        "sip:447700900123@example.com",
        "sips:alice@example.com:5061",
    ] {
        let response = app.post(PATH, &key, sms(&agent, to)).await;
        assert_error(response, 400, "Bad destination number format").await;
    }
}

#[tokio::test]
async fn sip_uri_is_not_a_whatsapp_destination() {
    let app = TestApp::spawn().await;
    let (key, agent) = whatsapp_account(&app).await;
    let body = seed_whatsapp(
        &agent,
        "sip:447700900123@example.com",
        "https://example.com/status",
    );
    let response = app.post(PATH, &key, body).await;
    assert_error(response, 400, "Bad destination number format").await;
}

#[tokio::test]
async fn malformed_phone_numbers_are_bad_destinations() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Sms).await;
    for to in [
        "44 7700 900123",
        "+44-7700-900123",
        "++447700900123",
        "123456",
        "4477009001234567",
        "0447700900123",
        "TO_NUMBER",
    ] {
        let response = app.post(PATH, &key, sms(&agent, to)).await;
        assert_eq!(response.status(), 400, "{to}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body,
            json!({"status": 400, "message": "Bad destination number format"}),
            "{to}"
        );
    }
}

// §2.2 step 4: types.

#[tokio::test]
async fn wrong_field_types_name_the_field() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Sms).await;
    let cases = [
        ("to", json!(5), "to must be a string"),
        ("to", json!(447700900123u64), "to must be a string"),
        ("agent_id", json!(5), "agent_id must be a string"),
        ("from", json!(["447700900000"]), "from must be a string"),
        ("channel", json!(5), "channel must be a string"),
        ("status_url", json!(true), "status_url must be a string"),
    ];
    for (field, value, message) in cases {
        let mut body = sms(&agent, "447700900123");
        body[field] = value;
        let response = app.post(PATH, &key, body).await;
        assert_error(response, 400, message).await;
    }
}

#[tokio::test]
async fn whatsapp_wrong_field_types_name_the_field() {
    let app = TestApp::spawn().await;
    let (key, agent) = whatsapp_account(&app).await;
    for field in ["namespace", "template", "locale"] {
        let mut body = seed_whatsapp(&agent, "447700900123", "https://example.com/status");
        body[field] = json!(7);
        let response = app.post(PATH, &key, body).await;
        assert_error(response, 400, &format!("{field} must be a string")).await;
    }
}

#[tokio::test]
async fn malformed_session_parameters_name_the_field() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Sms).await;
    for params in [
        json!("name=value"),
        json!([{"value": "x"}]),
        json!([{"name": "bad name", "value": "x"}]),
        json!([{"name": "ok", "value": {"nested": 1}}]),
    ] {
        let mut body = sms(&agent, "447700900123");
        body["session_parameters"] = params.clone();
        let response = app.post(PATH, &key, body).await;
        assert_eq!(response.status(), 400, "{params}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], 400);
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("session_parameters"),
            "{params}: {message}"
        );
    }
}

// §3.3: components.

#[tokio::test]
async fn malformed_component_names_its_path() {
    let app = TestApp::spawn().await;
    let (key, agent) = whatsapp_account(&app).await;
    let mut body = seed_whatsapp(&agent, "447700900123", "https://example.com/status");
    body["components"][1]["parameters"][0]
        .as_object_mut()
        .unwrap()
        .remove("text");
    let response = app.post(PATH, &key, body).await;
    assert_error(
        response,
        400,
        "components[1].parameters[0].text is required",
    )
    .await;
}

#[tokio::test]
async fn other_malformed_components_name_their_path() {
    let app = TestApp::spawn().await;
    let (key, agent) = whatsapp_account(&app).await;
    let cases = [
        (json!({"type": "body"}), "components"),
        (
            json!([{"type": "footer", "parameters": []}]),
            "components[0].type",
        ),
        (json!([{"parameters": []}]), "components[0].type"),
        (
            json!([{"type": "header", "parameters": []}, "body"]),
            "components[1]",
        ),
        (
            json!([{"type": "body", "parameters": [{"type": "text", "text": 5}]}]),
            "components[0].parameters[0].text",
        ),
        (
            json!([{"type": "body", "parameters": [{"type": "emoji", "text": "x"}]}]),
            "components[0].parameters[0].type",
        ),
        (
            json!([{"type": "button", "index": 0, "parameters": []}]),
            "components[0].sub_type",
        ),
        (
            json!([{"type": "button", "sub_type": "url", "parameters": []}]),
            "components[0].index",
        ),
        (
            json!([{"type": "header", "parameters": [{"type": "image"}]}]),
            "components[0].parameters[0].image",
        ),
    ];
    for (components, path) in cases {
        let mut body = seed_whatsapp(&agent, "447700900123", "https://example.com/status");
        body["components"] = components.clone();
        let response = app.post(PATH, &key, body).await;
        assert_eq!(response.status(), 400, "{components}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], 400);
        let message = body["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("{path} ")),
            "{components}: {message:?} does not name {path}"
        );
    }
}

#[tokio::test]
async fn whatsapp_other_parameter_types_are_accepted() {
    let app = TestApp::spawn().await;
    let receiver = TestReceiver::start().await;
    let (key, agent) = whatsapp_account(&app).await;
    let mut body = seed_whatsapp(&agent, "447700900123", &receiver.url);
    body["components"] = json!([
        {"type": "header", "parameters": [
            {"type": "text", "text": "Ada"},
            {"type": "image", "image": {"link": "https://example.com/a.png"}}
        ]},
        {"type": "body", "parameters": [
            {"type": "text", "text": "Tuesday"},
            {"type": "currency", "currency": {"fallback_value": "$10", "code": "USD", "amount_1000": 10000}},
            {"type": "date_time", "date_time": {"fallback_value": "May 1"}}
        ]},
        {"type": "button", "sub_type": "url", "index": 0, "parameters": [
            {"type": "text", "text": "ref-1"}
        ]}
    ]);
    start(&app, &key, body).await;
}

// §3.4: templates.

#[tokio::test]
async fn unregistered_template_is_refused() {
    let app = TestApp::spawn().await;
    let (key, agent) = whatsapp_account(&app).await;
    let mut body = seed_whatsapp(&agent, "447700900123", "https://example.com/status");
    body["template"] = json!("welcome");
    let response = app.post(PATH, &key, body).await;
    assert_error(
        response,
        400,
        "Template welcome (en) is not registered in namespace ns",
    )
    .await;
}

#[tokio::test]
async fn template_of_another_locale_or_namespace_is_not_registered() {
    let app = TestApp::spawn().await;
    let (key, agent) = whatsapp_account(&app).await;
    let mut body = seed_whatsapp(&agent, "447700900123", "https://example.com/status");
    body["locale"] = json!("fr");
    let response = app.post(PATH, &key, body).await;
    assert_error(
        response,
        400,
        &format!("Template {TEMPLATE} (fr) is not registered in namespace ns"),
    )
    .await;

    let mut body = seed_whatsapp(&agent, "447700900123", "https://example.com/status");
    body["namespace"] = json!("NAMESPACE_ID");
    let response = app.post(PATH, &key, body).await;
    assert_error(
        response,
        400,
        &format!("Template {TEMPLATE} (en) is not registered in namespace NAMESPACE_ID"),
    )
    .await;
}

#[tokio::test]
async fn template_of_another_account_is_not_registered() {
    let app = TestApp::spawn().await;
    // Another account registers the very template.
    whatsapp_account(&app).await;
    let (key, agent) = account_with_agent(&app, Channel::Whatsapp).await;
    let body = seed_whatsapp(&agent, "447700900123", "https://example.com/status");
    let response = app.post(PATH, &key, body).await;
    assert_error(
        response,
        400,
        &format!("Template {TEMPLATE} (en) is not registered in namespace ns"),
    )
    .await;
}

#[tokio::test]
async fn body_parameter_count_must_match_the_template() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Whatsapp).await;
    app.register_template(&key, "reminder", None, "Hello {{1}}, see you on {{2}}.")
        .await;
    let mut body = seed_whatsapp(&agent, "447700900123", "https://example.com/status");
    body["template"] = json!("reminder");
    body["components"] = json!([
        {"type": "body", "parameters": [{"type": "text", "text": "Ada"}]}
    ]);
    let response = app.post(PATH, &key, body.clone()).await;
    assert_error(
        response,
        400,
        "Template reminder body expects 2 parameter(s), got 1",
    )
    .await;

    body["components"] = json!([{"type": "body", "parameters": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}, {"type": "text", "text": "c"}
    ]}]);
    let response = app.post(PATH, &key, body).await;
    assert_error(
        response,
        400,
        "Template reminder body expects 2 parameter(s), got 3",
    )
    .await;
}

#[tokio::test]
async fn header_parameter_count_must_match_the_template() {
    let app = TestApp::spawn().await;
    let (key, agent) = whatsapp_account(&app).await;
    let mut body = seed_whatsapp(&agent, "447700900123", "https://example.com/status");
    body["components"] = json!([
        {"type": "body", "parameters": [{"type": "text", "text": "PARAM2_VALUE"}]}
    ]);
    let response = app.post(PATH, &key, body.clone()).await;
    assert_error(
        response,
        400,
        &format!("Template {TEMPLATE} header expects 1 parameter(s), got 0"),
    )
    .await;

    body["components"] = json!([
        {"type": "header", "parameters": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"type": "body", "parameters": [{"type": "text", "text": "PARAM2_VALUE"}]}
    ]);
    let response = app.post(PATH, &key, body).await;
    assert_error(
        response,
        400,
        &format!("Template {TEMPLATE} header expects 1 parameter(s), got 2"),
    )
    .await;
}

#[tokio::test]
async fn missing_components_count_as_no_parameters() {
    let app = TestApp::spawn().await;
    let (key, agent) = whatsapp_account(&app).await;
    let mut body = seed_whatsapp(&agent, "447700900123", "https://example.com/status");
    body.as_object_mut().unwrap().remove("components");
    let response = app.post(PATH, &key, body).await;
    assert_error(
        response,
        400,
        &format!("Template {TEMPLATE} header expects 1 parameter(s), got 0"),
    )
    .await;
}

// §3.5: agents.

#[tokio::test]
async fn sms_trigger_on_a_voice_agent_is_refused() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    let response = app.post(PATH, &key, sms(&agent, "447700900123")).await;
    assert_error(response, 400, &format!("Agent {agent} is a voice agent")).await;
}

#[tokio::test]
async fn sms_trigger_on_a_whatsapp_agent_is_refused() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Whatsapp).await;
    let response = app.post(PATH, &key, sms(&agent, "447700900123")).await;
    assert_error(response, 400, &format!("Agent {agent} is a whatsapp agent")).await;
}

#[tokio::test]
async fn whatsapp_trigger_on_an_sms_agent_is_refused() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Sms).await;
    app.register_template(&key, TEMPLATE, Some("{{1}}"), "{{1}}")
        .await;
    let body = seed_whatsapp(&agent, "447700900123", "https://example.com/status");
    let response = app.post(PATH, &key, body).await;
    assert_error(response, 400, &format!("Agent {agent} is a sms agent")).await;
}

#[tokio::test]
async fn whatsapp_trigger_on_a_voice_agent_is_refused() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    app.register_template(&key, TEMPLATE, Some("{{1}}"), "{{1}}")
        .await;
    let body = seed_whatsapp(&agent, "447700900123", "https://example.com/status");
    let response = app.post(PATH, &key, body).await;
    assert_error(response, 400, &format!("Agent {agent} is a voice agent")).await;
}

#[tokio::test]
async fn agent_of_another_region_is_refused() {
    let app = TestApp::spawn().await;
    let key = app.new_key("us-agent").await;
    let response = app
        .post(
            "/agents",
            &key,
            json!({"name": "us", "type": "sms", "number": unique_number(), "region": "us"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let agent: Value = response.json().await.unwrap();
    let agent = agent["agent_id"].as_str().unwrap();
    let response = app
        .post(&format!("/agents/{agent}/publish"), &key, json!({}))
        .await;
    assert_eq!(response.status(), 200);
    let response = app.post(PATH, &key, sms(agent, "447700900123")).await;
    assert_error(
        response,
        404,
        &format!("Agent {agent} is deployed in region us"),
    )
    .await;
}

#[tokio::test]
async fn legacy_from_runs_the_agent_with_that_published_number() {
    let app = TestApp::spawn().await;
    let key = app.new_key("legacy-from").await;
    let number = unique_number();
    let agent = app.published_agent(&key, Channel::Sms, &number).await;
    let body = json!({"to": "447700900123", "from": number, "channel": "sms"});
    let id = start(&app, &key, body).await;
    let session = session(&app, &key, &id).await;
    assert_eq!(session["agent_id"], agent.as_str());
    assert_eq!(session["from"], number.as_str());
}

#[tokio::test]
async fn legacy_from_wins_over_agent_id() {
    let app = TestApp::spawn().await;
    let key = app.new_key("from-wins").await;
    let number = unique_number();
    let agent = app.published_agent(&key, Channel::Sms, &number).await;
    let other = app
        .published_agent(&key, Channel::Sms, &unique_number())
        .await;
    app.set_rate(&agent, 10).await;

    // A wrong agent_id is not even looked at.
    let body =
        json!({"to": "447700900123", "from": number, "agent_id": "not-an-agent", "channel": "sms"});
    let id = start(&app, &key, body).await;
    assert_eq!(session(&app, &key, &id).await["agent_id"], agent.as_str());

    // Another valid agent's id loses to the number.
    let body = json!({"to": "447700900124", "from": number, "agent_id": other, "channel": "sms"});
    let id = start(&app, &key, body).await;
    assert_eq!(session(&app, &key, &id).await["agent_id"], agent.as_str());
}

#[tokio::test]
async fn legacy_from_works_for_whatsapp() {
    let app = TestApp::spawn().await;
    let receiver = TestReceiver::start().await;
    let key = app.new_key("whatsapp-from").await;
    let number = unique_number();
    let agent = app.published_agent(&key, Channel::Whatsapp, &number).await;
    app.register_template(&key, TEMPLATE, Some("{{1}}"), "{{1}}")
        .await;
    let mut body = seed_whatsapp(&agent, "447700900123", &receiver.url);
    body.as_object_mut().unwrap().remove("agent_id");
    body["from"] = json!(number);
    let id = start(&app, &key, body).await;
    assert_eq!(session(&app, &key, &id).await["agent_id"], agent.as_str());
}

#[tokio::test]
async fn unknown_from_has_no_version_information() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Sms).await;
    let body =
        json!({"to": "447700900123", "from": "447700900999", "agent_id": agent, "channel": "sms"});
    let response = app.post(PATH, &key, body).await;
    assert_error(
        response,
        404,
        "Version information for number 447700900999 doesn't exist",
    )
    .await;
}

#[tokio::test]
async fn from_of_an_unpublished_agent_has_no_version_information() {
    let app = TestApp::spawn().await;
    let key = app.new_key("draft-from").await;
    let number = unique_number();
    app.draft_agent(&key, Channel::Sms, &number).await;
    let body = json!({"to": "447700900123", "from": number, "channel": "sms"});
    let response = app.post(PATH, &key, body).await;
    assert_error(
        response,
        404,
        &format!("Version information for number {number} doesn't exist"),
    )
    .await;
}

#[tokio::test]
async fn from_of_another_accounts_agent_has_no_version_information() {
    let app = TestApp::spawn().await;
    let owner = app.new_key("from-owner").await;
    let number = unique_number();
    app.published_agent(&owner, Channel::Sms, &number).await;
    let stranger = app.new_key("from-stranger").await;
    let body = json!({"to": "447700900123", "from": number, "channel": "sms"});
    let response = app.post(PATH, &stranger, body).await;
    assert_error(
        response,
        404,
        &format!("Version information for number {number} doesn't exist"),
    )
    .await;
}

// §2.2 step 6: status_url.

#[tokio::test]
async fn invalid_status_url_is_refused() {
    let app = TestApp::spawn().await;
    let (key, agent) = whatsapp_account(&app).await;
    for url in ["string", "ftp://example.com/status", "/status", ""] {
        let body = seed_whatsapp(&agent, "447700900123", url);
        let response = app.post(PATH, &key, body).await;
        assert_eq!(response.status(), 400, "{url:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body,
            json!({"status": 400, "message": "Invalid status_url"}),
            "{url:?}"
        );
    }
}

#[tokio::test]
async fn status_url_pointing_at_herald_itself_is_refused() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Sms).await;
    let mut body = sms(&agent, "447700900123");
    body["status_url"] = json!(app.url("/messaging/conversation"));
    let response = app.post(PATH, &key, body).await;
    assert_error(response, 400, "status_url must not point at this service").await;
}

// §2.2: the order of the checks.

#[tokio::test]
async fn checks_answer_in_the_contract_order() {
    let app = TestApp::spawn().await;
    let key = app.new_key("check-order").await;
    let unknown = "60c09d70e6a68858f4220848";
    // Mandatory fields before types.
    let response = app
        .post(PATH, &key, json!({"to": 5, "channel": "sms"}))
        .await;
    assert_error(response, 400, "Missing mandatory field(s): agent_id").await;
    // Types before the destination.
    let response = app
        .post(
            PATH,
            &key,
            json!({"to": "sip:a@example.com", "agent_id": 5, "channel": "sms"}),
        )
        .await;
    assert_error(response, 400, "agent_id must be a string").await;
    // The destination before status_url.
    let response = app
        .post(
            PATH,
            &key,
            json!({"to": "123", "agent_id": unknown, "channel": "sms", "status_url": "nope"}),
        )
        .await;
    assert_error(response, 400, "Bad destination number format").await;
    // status_url before the agent.
    let response = app
        .post(
            PATH,
            &key,
            json!({"to": "447700900123", "agent_id": unknown, "channel": "sms", "status_url": "nope"}),
        )
        .await;
    assert_error(response, 400, "Invalid status_url").await;
    // The agent before the template.
    let body = seed_whatsapp(unknown, "447700900123", "https://example.com/status");
    let response = app.post(PATH, &key, body).await;
    assert_error(
        response,
        404,
        &format!("ID {unknown} is not an ID to any agent or published version"),
    )
    .await;
}

// Session parameters (§2.1 via §3.1).

#[tokio::test]
async fn session_parameter_numbers_and_booleans_are_kept_as_text() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Sms).await;
    let mut body = sms(&agent, "447700900123");
    body["session_parameters"] = json!([
        {"name": "count", "value": 42},
        {"name": "ratio", "value": 1.5},
        {"name": "vip", "value": true},
        {"name": "opted_out", "value": false},
        {"name": "first_name", "value": "Ada"}
    ]);
    let id = start(&app, &key, body).await;
    let session = session(&app, &key, &id).await;
    assert_eq!(
        session["session_parameters"],
        json!([
            {"name": "count", "value": "42"},
            {"name": "ratio", "value": "1.5"},
            {"name": "vip", "value": "true"},
            {"name": "opted_out", "value": "false"},
            {"name": "first_name", "value": "Ada"}
        ])
    );
}

#[tokio::test]
async fn session_parameter_given_twice_keeps_the_last_value() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Sms).await;
    let mut body = sms(&agent, "447700900123");
    body["session_parameters"] = json!([
        {"name": "slot", "value": "9am"},
        {"name": "slot", "value": "10am"}
    ]);
    let id = start(&app, &key, body).await;
    let session = session(&app, &key, &id).await;
    assert_eq!(
        session["session_parameters"],
        json!([{"name": "slot", "value": "10am"}])
    );
}

#[tokio::test]
async fn whatsapp_seed_session_parameters_are_kept() {
    let app = TestApp::spawn().await;
    let receiver = TestReceiver::start().await;
    let (key, agent) = whatsapp_account(&app).await;
    let id = start(
        &app,
        &key,
        seed_whatsapp(&agent, "447700900123", &receiver.url),
    )
    .await;
    let session = session(&app, &key, &id).await;
    assert_eq!(session["channel"], "whatsapp");
    assert_eq!(session["status_url"], receiver.url.as_str());
    assert_eq!(
        session["session_parameters"],
        json!([{"name": "string", "value": "string"}])
    );
}

// §8.1 and §5.2: outcomes and callbacks.

#[tokio::test]
async fn seed_whatsapp_example_is_sent_delivered_and_read() {
    let app = TestApp::spawn().await;
    let receiver = TestReceiver::start().await;
    let (key, agent) = whatsapp_account(&app).await;
    let id = start(
        &app,
        &key,
        seed_whatsapp(&agent, "447700900123", &receiver.url),
    )
    .await;
    let ended = app.ended_session(&key, &id).await;
    assert_eq!(ended["outcome"], "completed");

    receiver.wait_for(3).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let received = receiver.received();
    assert_eq!(statuses(&received), ["sent", "delivered", "read"]);
    let message_uuid = received[0].body["message_uuid"].clone();
    for callback in &received {
        let body = &callback.body;
        let mut fields: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "agent_id",
                "channel",
                "message_uuid",
                "session_id",
                "status",
                "timestamp",
                "to"
            ],
            "{body}"
        );
        assert_eq!(body["agent_id"], agent.as_str());
        assert_eq!(body["to"], "447700900123");
        assert_eq!(body["session_id"], id.as_str());
        assert_eq!(body["channel"], "whatsapp");
        assert_eq!(body["message_uuid"], message_uuid, "one message, one uuid");
        assert_rfc3339_millis(body["timestamp"].as_str().unwrap());
    }
    assert!(message_uuid.as_str().is_some_and(|u| !u.is_empty()));
}

#[tokio::test]
async fn whatsapp_to_a_number_ending_92_is_sent_and_delivered_not_read() {
    let (ended, statuses) = run_to(Channel::Whatsapp, "447700900192", 2).await;
    assert_eq!(ended["outcome"], "completed");
    assert_eq!(statuses, ["sent", "delivered"]);
}

#[tokio::test]
async fn whatsapp_to_a_number_ending_90_is_rejected() {
    let (ended, statuses) = run_to(Channel::Whatsapp, "447700900190", 1).await;
    assert_eq!(ended["outcome"], "rejected");
    assert_eq!(statuses, ["rejected"]);
}

#[tokio::test]
async fn whatsapp_to_a_number_ending_91_fails() {
    let (ended, statuses) = run_to(Channel::Whatsapp, "447700900191", 1).await;
    assert_eq!(ended["outcome"], "failed");
    assert_eq!(statuses, ["failed"]);
}

#[tokio::test]
async fn sms_is_sent_and_delivered_never_read() {
    let (ended, statuses) = run_to(Channel::Sms, "447700900123", 2).await;
    assert_eq!(ended["outcome"], "completed");
    assert_eq!(statuses, ["sent", "delivered"]);
}

#[tokio::test]
async fn sms_to_a_number_ending_90_is_rejected() {
    let (ended, statuses) = run_to(Channel::Sms, "447700900190", 1).await;
    assert_eq!(ended["outcome"], "rejected");
    assert_eq!(statuses, ["rejected"]);
}

#[tokio::test]
async fn sms_to_a_number_ending_91_fails() {
    let (ended, statuses) = run_to(Channel::Sms, "447700900191", 1).await;
    assert_eq!(ended["outcome"], "failed");
    assert_eq!(statuses, ["failed"]);
}

#[tokio::test]
async fn sms_to_a_number_ending_92_is_sent_and_delivered() {
    let (ended, statuses) = run_to(Channel::Sms, "447700900192", 2).await;
    assert_eq!(ended["outcome"], "completed");
    assert_eq!(statuses, ["sent", "delivered"]);
}

#[tokio::test]
async fn sms_to_a_number_ending_93_is_only_sent_and_completes() {
    let (ended, statuses) = run_to(Channel::Sms, "447700900193", 1).await;
    assert_eq!(ended["outcome"], "completed");
    assert_eq!(statuses, ["sent"]);
}

#[tokio::test]
async fn sms_callbacks_carry_the_messaging_payload() {
    let app = TestApp::spawn().await;
    let receiver = TestReceiver::start().await;
    let (key, agent) = account_with_agent(&app, Channel::Sms).await;
    let mut body = sms(&agent, "+447700900123");
    body["status_url"] = json!(receiver.url);
    let id = start(&app, &key, body).await;
    let received = receiver.wait_for(2).await;
    for callback in &received[..2] {
        let body = &callback.body;
        assert_eq!(body["agent_id"], agent.as_str());
        assert_eq!(body["to"], "447700900123");
        assert_eq!(body["session_id"], id.as_str());
        assert_eq!(body["channel"], "sms");
        assert!(body["message_uuid"].as_str().is_some_and(|u| !u.is_empty()));
        assert_rfc3339_millis(body["timestamp"].as_str().unwrap());
    }
}

#[tokio::test]
async fn sms_session_sends_the_published_greeting() {
    let app = TestApp::spawn().await;
    let key = app.new_key("sms-greeting").await;
    let agent = app.draft_agent(&key, Channel::Sms, &unique_number()).await;
    let response = app
        .client
        .patch(app.url(&format!("/agents/{agent}")))
        .header("X-Vgai-Key", &key)
        .json(&json!({"flow": greeting_flow(Channel::Sms, "Your table is booked.")}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = app
        .post(&format!("/agents/{agent}/publish"), &key, json!({}))
        .await;
    assert_eq!(response.status(), 200);
    let id = start(&app, &key, sms(&agent, "447700900123")).await;
    let ended = app.ended_session(&key, &id).await;
    assert_eq!(ended["outcome"], "completed");
    let events = ended["events"].to_string();
    assert!(events.contains("Your table is booked."), "{events}");
}
