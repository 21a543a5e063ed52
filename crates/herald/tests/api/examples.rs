//! The example agents of `examples/agents/`, end to end: each is created
//! from its file as a user would send it (`POST /agents` with a `number`
//! added), published, triggered, and played through every branch of its
//! flow, one session per branch, with the test as the person: on the
//! simulator (`POST /simulator/inbound`), and again over Vonage and over
//! Twilio (loopback fakes of them, which take the messages, report their
//! statuses and bring the person's answers in by webhook; and place the
//! call, play the agent's NCCO or TwiML and post what the person keys or
//! says). What the
//! agent said, the parameters it set and the session's outcome are checked
//! from the transcript (`GET /sessions/{id}/transcript`).
//!
//! Timeouts are shortened by editing the file's JSON before it is sent, as
//! an operator might for a test agent.

use std::time::Duration;

use herald_server::testing::twilio::FakeTwilio;
use herald_server::testing::vonage::FakeVonage;
use herald_server::testing::whatsapp_cloud::{FakeWhatsapp, DISPLAY_PHONE_NUMBER};
use serde_json::{json, Value};

use crate::helpers::*;

/// How the person is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Simulator,
    Vonage,
    Twilio,
    /// Meta's Cloud API, which carries WhatsApp alone.
    WhatsappCloud,
}

/// Runs each branch every way: `simulator::NAME`, `vonage::NAME`,
/// `twilio::NAME`.
macro_rules! every_way {
    ($($name:ident),* $(,)?) => {
        mod simulator {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Way::Simulator).await
                }
            )*
        }
        mod vonage {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Way::Vonage).await
                }
            )*
        }
        mod twilio {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Way::Twilio).await
                }
            )*
        }
    };
}

every_way!(
    appointment_reminder_confirmed,
    appointment_reminder_rescheduled_to_a_new_date_and_time,
    appointment_reminder_asks_again_when_the_new_slot_is_wrong,
    appointment_reminder_cancelled,
    appointment_reminder_understood_at_the_second_try,
    appointment_reminder_gives_up_after_two_unclear_answers,
    appointment_reminder_gives_up_when_no_date_is_understood,
    appointment_reminder_keeps_the_appointment_without_a_reply,
    appointment_reminder_keeps_the_appointment_when_the_time_never_comes,
    delivery_notice_opens_with_the_template_and_sends_the_tracking_link,
    delivery_notice_changes_the_day,
    delivery_notice_helps_when_no_day_is_understood,
    delivery_notice_keeps_the_day_without_an_answer,
    delivery_notice_helps_with_what_it_does_not_understand,
    delivery_notice_ends_quietly_without_an_answer,
    satisfaction_survey_thanks_a_promoter,
    satisfaction_survey_asks_a_passive_what_would_make_it_a_ten,
    satisfaction_survey_asks_a_detractor_what_went_wrong,
    satisfaction_survey_thanks_a_detractor_who_says_nothing_more,
    satisfaction_survey_asks_again_for_a_score_out_of_range,
    satisfaction_survey_stops_after_two_scores_out_of_range,
    satisfaction_survey_stops_when_no_number_is_understood,
    satisfaction_survey_stops_without_an_answer,
);

/// The WhatsApp agent's branches, once more on Meta's Cloud API.
mod whatsapp_cloud {
    macro_rules! on_cloud {
        ($($name:ident),* $(,)?) => {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Way::WhatsappCloud).await
                }
            )*
        };
    }
    on_cloud!(
        delivery_notice_opens_with_the_template_and_sends_the_tracking_link,
        delivery_notice_changes_the_day,
        delivery_notice_helps_when_no_day_is_understood,
        delivery_notice_keeps_the_day_without_an_answer,
        delivery_notice_helps_with_what_it_does_not_understand,
        delivery_notice_ends_quietly_without_an_answer,
    );
}

const APPOINTMENT_REMINDER: &str =
    include_str!("../../../../examples/agents/appointment-reminder.json");
const DELIVERY_NOTICE: &str = include_str!("../../../../examples/agents/delivery-notice.json");
const SATISFACTION_SURVEY: &str =
    include_str!("../../../../examples/agents/satisfaction-survey.json");

/// A WhatsApp conversation opens with this template (the README's and the
/// demo's).
const TEMPLATE: (&str, &str, &str) = ("demo_namespace", "delivery_notice", "en");
const TEMPLATE_BODY: &str = "Your parcel {{1}} is on its way and will come on {{2}}.";

/// One session with an example agent, the test playing the person.
struct Talk {
    app: TestApp,
    key: String,
    channel: String,
    /// The agent's number.
    number: String,
    /// The person's number.
    person: String,
    id: String,
    /// Where a WhatsApp session's statuses go (kept alive with the talk).
    receiver: Option<TestReceiver>,
    /// The fake Vonage the talk goes through, if it does.
    vonage: Option<FakeVonage>,
    /// The fake Twilio the talk goes through, if it does.
    twilio: Option<FakeTwilio>,
    /// The fake of Meta's Cloud API the talk goes through, if it does.
    meta: Option<FakeWhatsapp>,
}

/// How a talk ended.
struct Ended {
    outcome: String,
    transcript: Value,
}

impl Ended {
    fn agent_lines(&self) -> Vec<String> {
        lines(&self.transcript, "outbound")
    }

    fn person_lines(&self) -> Vec<String> {
        lines(&self.transcript, "inbound")
    }

    /// The last value the flow set `name` to.
    fn parameter(&self, name: &str) -> Option<String> {
        self.transcript["transcript"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|e| e["type"] == "parameter" && e["name"] == name)
            .map(|e| e["value"].as_str().unwrap().to_owned())
    }

    /// The nodes entered, in order.
    fn nodes(&self) -> Vec<String> {
        self.transcript["transcript"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "node")
            .map(|e| e["node"].as_str().unwrap().to_owned())
            .collect()
    }
}

fn lines(transcript: &Value, direction: &str) -> Vec<String> {
    transcript["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "message" && e["direction"] == direction)
        .map(|e| e["text"].as_str().unwrap().to_owned())
        .collect()
}

/// Sets `field` of the node `id` in an example agent's JSON.
fn set_node_field(agent: &mut Value, id: &str, field: &str, value: Value) {
    let node = agent["flow"]["nodes"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|n| n["id"] == id)
        .unwrap_or_else(|| panic!("the example has no node {id}"));
    node[field] = value;
}

/// A number the simulator always connects: it ends in 00. (Each talk has
/// a server of its own, so it need not be unique.)
fn person_number() -> String {
    format!("{}00", &unique_number()[..10])
}

impl Talk {
    /// Creates the example agent in `file` (after `edit`) on a server of its
    /// own, publishes it and triggers one session with `parameters`.
    async fn start(way: Way, file: &str, edit: impl FnOnce(&mut Value), parameters: Value) -> Talk {
        let vonage = match way {
            Way::Vonage => Some(FakeVonage::start(VONAGE_APPLICATION).await),
            _ => None,
        };
        let twilio = match way {
            Way::Twilio => Some(FakeTwilio::start(TWILIO_ACCOUNT, TWILIO_AUTH_TOKEN).await),
            _ => None,
        };
        let meta = match way {
            Way::WhatsappCloud => Some(
                FakeWhatsapp::start(WHATSAPP_NUMBER_ID, WHATSAPP_TOKEN, WHATSAPP_APP_SECRET).await,
            ),
            _ => None,
        };
        let vonage_url = vonage.as_ref().map(|v| v.url.clone());
        let twilio_url = twilio.as_ref().map(|t| t.url.clone());
        let meta_url = meta.as_ref().map(|m| m.url.clone());
        let app = TestApp::spawn_with(|c| {
            if let Some(url) = vonage_url {
                talk_to(c, &url);
            }
            if let Some(url) = twilio_url {
                talk_to_twilio(c, &url);
            }
            if let Some(url) = meta_url {
                talk_to_whatsapp(c, &url);
            }
        })
        .await;
        let key = app.new_key(&format!("examples-{}", unique_number())).await;
        let mut agent: Value = serde_json::from_str(file).expect("the example is JSON");
        edit(&mut agent);
        // On Meta's API the agent's number is the business number its
        // envelopes name.
        let number = match way {
            Way::WhatsappCloud => DISPLAY_PHONE_NUMBER.to_owned(),
            _ => unique_number(),
        };
        agent["number"] = json!(number);
        if let Some(vonage) = &vonage {
            let connection = vonage_connection(&app, &key, vonage).await;
            agent["connection_id"] = connection["connection_id"].clone();
        }
        if let Some(twilio) = &twilio {
            let (namespace, name, locale) = TEMPLATE;
            let settings = json!({"content_sids": {
                format!("{namespace}/{name}/{locale}"): format!("HX{}", "4".repeat(32))}});
            let connection = twilio_connection(&app, &key, twilio, settings).await;
            agent["connection_id"] = connection["connection_id"].clone();
        }
        if let Some(meta) = &meta {
            let connection = whatsapp_connection(&app, &key, meta).await;
            agent["connection_id"] = connection["connection_id"].clone();
        }
        let response = app.post("/agents", &key, agent.clone()).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 201, "creating {}: {body}", agent["name"]);
        let agent_id = body["agent_id"].as_str().unwrap().to_owned();
        let published = app
            .post(&format!("/agents/{agent_id}/publish"), &key, json!({}))
            .await;
        assert_eq!(published.status(), 200, "publishing {}", agent["name"]);

        let channel = agent["type"].as_str().unwrap().to_owned();
        let person = person_number();
        if let Some(meta) = &meta {
            // The person wrote lately, so that the agent's texts after its
            // template are inside WhatsApp's 24-hour window.
            meta.opened_window(&person);
        }
        let mut receiver = None;
        let (path, trigger) = match channel.as_str() {
            "voice" => (
                "/telephony/make-call",
                json!({"agent_id": agent_id, "to": person, "session_parameters": parameters}),
            ),
            "sms" => (
                "/messaging/conversation",
                json!({"agent_id": agent_id, "to": person, "channel": "sms",
                       "session_parameters": parameters}),
            ),
            "whatsapp" => {
                let (namespace, name, locale) = TEMPLATE;
                let response = app
                    .post(
                        "/whatsapp/templates",
                        &key,
                        json!({"namespace": namespace, "name": name, "locale": locale,
                               "body": TEMPLATE_BODY}),
                    )
                    .await;
                assert_eq!(response.status(), 201, "registering the template");
                // The template's {{1}} and {{2}}: the parcel and its day.
                let value = |name: &str| {
                    parameters
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|p| p["name"] == name)
                        .map(|p| p["value"].clone())
                        .unwrap()
                };
                let body_parameters = json!([
                    {"type": "text", "text": value("TRACKING_NUMBER")},
                    {"type": "text", "text": value("DELIVERY_DATE")}
                ]);
                let status_receiver = TestReceiver::start().await;
                let trigger = json!({
                    "agent_id": agent_id, "to": person, "channel": "whatsapp",
                    "namespace": namespace, "template": name, "locale": locale,
                    "components": [{"type": "body", "parameters": body_parameters}],
                    "status_url": status_receiver.url,
                    "session_parameters": parameters,
                });
                receiver = Some(status_receiver);
                ("/messaging/conversation", trigger)
            }
            other => panic!("unknown agent type {other}"),
        };
        let response = app.post(path, &key, trigger).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "triggering {}: {body}", agent["name"]);
        let id = body["session_id"].as_str().unwrap().to_owned();
        Talk {
            app,
            key,
            channel,
            number,
            person,
            id,
            receiver,
            vonage,
            twilio,
            meta,
        }
    }

    async fn transcript(&self) -> Value {
        let response = self
            .app
            .get(&format!("/sessions/{}/transcript", self.id), &self.key)
            .await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Waits until the agent has said `n` things; returns the `n`th.
    async fn heard(&self, n: usize) -> String {
        for _ in 0..400 {
            let said = lines(&self.transcript().await, "outbound");
            if said.len() >= n {
                return said[n - 1].clone();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "the agent did not say {n} things: {}",
            self.transcript().await
        );
    }

    /// The person answers: a message, or on a call keyed digits (a line of
    /// only digits) or speech, as `herald chat` sends them.
    async fn reply(&self, text: &str) {
        if let (Some(vonage), "voice") = (&self.vonage, self.channel.as_str()) {
            vonage.person_answers(&self.person, text);
            return;
        }
        if let Some(vonage) = &self.vonage {
            let (status, _) = vonage
                .send_inbound(&self.channel, &self.person, &self.number, text)
                .await;
            assert_eq!(status, 200, "delivering {text:?}");
            return;
        }
        if let Some(meta) = &self.meta {
            let (status, _) = meta.send_inbound(&self.person, text).await;
            assert_eq!(status, 200, "delivering {text:?}");
            return;
        }
        if let Some(twilio) = &self.twilio {
            match self.channel.as_str() {
                "voice" if text.bytes().all(|b| b.is_ascii_digit()) => {
                    twilio.person_answers(&self.person, text)
                }
                "voice" => twilio.person_says(&self.person, text),
                channel => {
                    let address = |n: &str| match channel {
                        "whatsapp" => format!("whatsapp:+{n}"),
                        _ => format!("+{n}"),
                    };
                    let (status, _) = twilio
                        .send_inbound(&address(&self.person), &address(&self.number), text)
                        .await;
                    assert_eq!(status, 200, "delivering {text:?}");
                }
            }
            return;
        }
        let field = match self.channel.as_str() {
            "voice" if text.bytes().all(|b| b.is_ascii_digit()) => "digits",
            "voice" => "speech",
            _ => "text",
        };
        let response = self
            .app
            .post(
                "/simulator/inbound",
                &self.key,
                json!({"channel": self.channel, "from": self.person, "to": self.number, field: text}),
            )
            .await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "delivering {text:?}: {body}");
        assert_eq!(body["session_id"], self.id.as_str(), "{body}");
        assert_eq!(body["started"], false);
    }

    /// Says `text` once the agent has said `n` things, so that each answer
    /// answers the question it is meant for.
    async fn answer(&self, n: usize, text: &str) {
        self.heard(n).await;
        self.reply(text).await;
    }

    async fn ended(&self) -> Ended {
        let session = self.app.ended_session(&self.key, &self.id).await;
        if let (Some(vonage), "voice") = (&self.vonage, self.channel.as_str()) {
            // Vonage said on the call what the agent said, once.
            let calls = vonage.wait_for_calls_to_end(&self.person).await;
            assert_eq!(vonage.problems(), Vec::<String>::new());
            assert_eq!(calls.len(), 1, "{calls:?}");
            assert_eq!(
                calls[0].said,
                lines(&self.transcript().await, "outbound"),
                "{calls:?}"
            );
        } else if let Some(vonage) = &self.vonage {
            assert_eq!(vonage.problems(), Vec::<String>::new());
            // Every message the agent sent went through Vonage, once.
            let said = lines(&self.transcript().await, "outbound").len();
            let templates = usize::from(self.channel == "whatsapp");
            assert_eq!(vonage.messages().len(), said + templates);
        }
        if let (Some(twilio), "voice") = (&self.twilio, self.channel.as_str()) {
            // Twilio said on the call what the agent said, once.
            let calls = twilio.wait_for_calls_to_end(&self.person).await;
            assert_eq!(twilio.problems(), Vec::<String>::new());
            assert_eq!(calls.len(), 1, "{calls:?}");
            assert_eq!(
                calls[0].said,
                lines(&self.transcript().await, "outbound"),
                "{calls:?}"
            );
        } else if let Some(twilio) = &self.twilio {
            assert_eq!(twilio.problems(), Vec::<String>::new());
            // Every message the agent sent went through Twilio, once.
            let said = lines(&self.transcript().await, "outbound").len();
            let templates = usize::from(self.channel == "whatsapp");
            assert_eq!(twilio.messages().len(), said + templates);
        }
        if let Some(meta) = &self.meta {
            assert_eq!(meta.problems(), Vec::<String>::new());
            // Every message the agent sent went through Meta, once.
            let said = lines(&self.transcript().await, "outbound").len();
            assert_eq!(meta.messages().len(), said + 1);
        }
        Ended {
            outcome: session["outcome"].as_str().unwrap().to_owned(),
            transcript: self.transcript().await,
        }
    }
}

// ---------------------------------------------------------------- appointment reminder

const REMINDER: &str = "Hi Ada, a reminder of your appointment on Tuesday 3 March at 10:30. \
    Reply YES to confirm, or tell us if you need to reschedule or cancel.";
const ASK_DATE: &str = "No problem. Which day would suit you? (for example: Friday, or 21/11)";
const GIVE_UP: &str = "Sorry, we could not sort this out by text. \
    Please call us on 0800 000 000 and we will help you.";
const NO_REPLY: &str = "We did not hear back, so your appointment on Tuesday 3 March at 10:30 \
    stands. Call 0800 000 000 if you need to change it.";

async fn appointment(way: Way, edit: impl FnOnce(&mut Value)) -> Talk {
    Talk::start(
        way,
        APPOINTMENT_REMINDER,
        edit,
        json!([
            {"name": "NAME", "value": "Ada"},
            {"name": "APPOINTMENT_DATE", "value": "Tuesday 3 March"},
            {"name": "APPOINTMENT_TIME", "value": "10:30"}
        ]),
    )
    .await
}

async fn appointment_reminder_confirmed(way: Way) {
    let talk = appointment(way, |_| {}).await;
    assert_eq!(talk.heard(1).await, REMINDER);
    talk.reply("Yes, I'll be there").await;

    let end = talk.ended().await;
    assert_eq!(end.outcome, "completed");
    assert_eq!(
        end.agent_lines(),
        [
            REMINDER,
            "Thank you, Ada. See you on Tuesday 3 March at 10:30."
        ]
    );
    assert_eq!(end.parameter("CHOICE").as_deref(), Some("confirm"));
    assert_eq!(end.nodes(), ["remind", "confirmed", "end"]);
}

async fn appointment_reminder_rescheduled_to_a_new_date_and_time(way: Way) {
    let talk = appointment(way, |_| {}).await;
    talk.answer(1, "Can I reschedule please?").await;
    talk.answer(2, "How about 21 November 2030?").await;
    talk.answer(3, "2:30 pm").await;
    talk.answer(4, "yes").await;

    let end = talk.ended().await;
    assert_eq!(end.outcome, "completed");
    assert_eq!(
        end.agent_lines(),
        [
            REMINDER,
            ASK_DATE,
            "And at what time on 2030-11-21? (for example: 9:30 or 2pm)",
            "So that is 2030-11-21 at 14:30. Is that right? (yes/no)",
            "Done: your appointment is now on 2030-11-21 at 14:30. See you then, Ada!",
        ]
    );
    assert_eq!(end.parameter("CHOICE").as_deref(), Some("reschedule"));
    assert_eq!(end.parameter("NEW_DATE").as_deref(), Some("2030-11-21"));
    assert_eq!(end.parameter("NEW_TIME").as_deref(), Some("14:30"));
    assert_eq!(end.parameter("NEW_OK").as_deref(), Some("yes"));
}

async fn appointment_reminder_asks_again_when_the_new_slot_is_wrong(way: Way) {
    let talk = appointment(way, |_| {}).await;
    talk.answer(1, "I need to reschedule").await;
    talk.answer(2, "21/11/2030").await;
    talk.answer(3, "9:30").await;
    talk.answer(4, "No, wrong day").await;
    talk.answer(5, "22/11/2030").await;
    talk.answer(6, "noon").await;
    talk.answer(7, "yes that's right").await;

    let end = talk.ended().await;
    assert_eq!(end.outcome, "completed");
    let said = end.agent_lines();
    assert_eq!(
        said[3],
        "So that is 2030-11-21 at 09:30. Is that right? (yes/no)"
    );
    assert_eq!(said[4], ASK_DATE);
    assert_eq!(
        said[6],
        "So that is 2030-11-22 at 12:00. Is that right? (yes/no)"
    );
    assert_eq!(
        said.last().unwrap(),
        "Done: your appointment is now on 2030-11-22 at 12:00. See you then, Ada!"
    );
}

async fn appointment_reminder_cancelled(way: Way) {
    let talk = appointment(way, |_| {}).await;
    talk.answer(1, "Please cancel it").await;

    let end = talk.ended().await;
    assert_eq!(end.outcome, "completed");
    assert_eq!(
        end.agent_lines(),
        [
            REMINDER,
            "Your appointment on Tuesday 3 March at 10:30 is cancelled. Text us any time to book again."
        ]
    );
    assert_eq!(end.parameter("CHOICE").as_deref(), Some("cancel"));
}

async fn appointment_reminder_understood_at_the_second_try(way: Way) {
    let talk = appointment(way, |_| {}).await;
    talk.answer(1, "banana").await;
    assert_eq!(
        talk.heard(2).await,
        "Sorry, I did not get that. Please reply CONFIRM, RESCHEDULE or CANCEL."
    );
    talk.reply("confirm").await;

    let end = talk.ended().await;
    assert_eq!(
        end.agent_lines().last().unwrap(),
        "Thank you, Ada. See you on Tuesday 3 March at 10:30."
    );
    assert_eq!(end.parameter("UNCLEAR").as_deref(), Some("1"));
}

async fn appointment_reminder_gives_up_after_two_unclear_answers(way: Way) {
    let talk = appointment(way, |_| {}).await;
    talk.answer(1, "banana").await;
    talk.answer(2, "what is this?").await;

    let end = talk.ended().await;
    assert_eq!(end.outcome, "completed");
    assert_eq!(
        end.agent_lines(),
        [
            REMINDER,
            "Sorry, I did not get that. Please reply CONFIRM, RESCHEDULE or CANCEL.",
            GIVE_UP
        ]
    );
    assert_eq!(end.parameter("UNCLEAR").as_deref(), Some("2"));
}

async fn appointment_reminder_gives_up_when_no_date_is_understood(way: Way) {
    let talk = appointment(way, |_| {}).await;
    talk.answer(1, "reschedule").await;
    talk.answer(2, "whenever suits").await;
    assert_eq!(
        talk.heard(3).await,
        "Sorry, I could not read a date. Please send a day, like Friday or 21/11."
    );
    talk.reply("no idea").await;

    let end = talk.ended().await;
    assert_eq!(end.agent_lines().last().unwrap(), GIVE_UP);
    assert_eq!(end.parameter("NEW_DATE"), None);
}

async fn appointment_reminder_keeps_the_appointment_without_a_reply(way: Way) {
    let talk = appointment(way, |agent| {
        set_node_field(agent, "remind", "timeout_secs", json!(1))
    })
    .await;

    let end = talk.ended().await;
    assert_eq!(end.outcome, "completed");
    assert_eq!(end.agent_lines(), [REMINDER, NO_REPLY]);
    assert!(end.person_lines().is_empty());
}

async fn appointment_reminder_keeps_the_appointment_when_the_time_never_comes(way: Way) {
    let talk = appointment(way, |agent| {
        set_node_field(agent, "ask_time", "timeout_secs", json!(1))
    })
    .await;
    talk.answer(1, "another day").await;
    talk.answer(2, "21/11/2030").await;

    let end = talk.ended().await;
    assert_eq!(end.agent_lines().last().unwrap(), NO_REPLY);
    assert_eq!(end.parameter("NEW_DATE").as_deref(), Some("2030-11-21"));
}

// ---------------------------------------------------------------- delivery notice

const DELIVERY_QUESTION: &str = "Would you like the tracking link, or to change the delivery day?";
const DELIVERY_HELP: &str = "Sorry, I could not help with that here. Follow parcel TRK-2041 at \
    https://track.example.com/TRK-2041 or call 0800 000 000.";

async fn delivery(way: Way, edit: impl FnOnce(&mut Value)) -> Talk {
    Talk::start(
        way,
        DELIVERY_NOTICE,
        edit,
        json!([
            {"name": "TRACKING_NUMBER", "value": "TRK-2041"},
            {"name": "DELIVERY_DATE", "value": "Friday 6 June"}
        ]),
    )
    .await
}

async fn delivery_notice_opens_with_the_template_and_sends_the_tracking_link(way: Way) {
    let talk = delivery(way, |_| {}).await;
    assert_eq!(talk.heard(1).await, DELIVERY_QUESTION);
    talk.reply("Can I have the tracking link?").await;

    let end = talk.ended().await;
    assert_eq!(end.outcome, "completed");
    assert_eq!(
        end.agent_lines(),
        [
            DELIVERY_QUESTION,
            "Here you go: https://track.example.com/TRK-2041"
        ]
    );
    assert_eq!(end.parameter("CHOICE").as_deref(), Some("track"));

    // The template went first, with the trigger's parameters.
    let session = talk.app.ended_session(&talk.key, &talk.id).await;
    let first_message = session["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "message_sent")
        .unwrap();
    let template = &first_message["content"]["template"];
    assert_eq!(template["template"], "delivery_notice", "{first_message}");
    assert_eq!(
        template["components"][0]["parameters"][0]["text"],
        "TRK-2041"
    );
    // And each message's statuses reached the status_url.
    let receiver = talk.receiver.as_ref().unwrap();
    let callbacks = receiver.wait_for(3).await;
    assert!(callbacks
        .iter()
        .all(|c| c.body["session_id"] == talk.id.as_str()));
}

async fn delivery_notice_changes_the_day(way: Way) {
    let talk = delivery(way, |_| {}).await;
    talk.answer(1, "I'd like to change the day").await;
    assert_eq!(
        talk.heard(2).await,
        "Which day would suit you instead of Friday 6 June? (for example: Friday, or 21/11)"
    );
    talk.reply("21/11/2030 please").await;

    let end = talk.ended().await;
    assert_eq!(end.outcome, "completed");
    assert_eq!(
        end.agent_lines().last().unwrap(),
        "Done: parcel TRK-2041 will now come on 2030-11-21."
    );
    assert_eq!(end.parameter("CHOICE").as_deref(), Some("change_day"));
    assert_eq!(end.parameter("NEW_DAY").as_deref(), Some("2030-11-21"));
}

async fn delivery_notice_helps_when_no_day_is_understood(way: Way) {
    let talk = delivery(way, |_| {}).await;
    talk.answer(1, "change the delivery day").await;
    talk.answer(2, "soon").await;
    assert_eq!(
        talk.heard(3).await,
        "Sorry, I could not read a day. Please send one like Friday or 21/11."
    );
    talk.reply("whenever").await;

    let end = talk.ended().await;
    assert_eq!(end.agent_lines().last().unwrap(), DELIVERY_HELP);
    assert_eq!(end.parameter("NEW_DAY"), None);
}

async fn delivery_notice_keeps_the_day_without_an_answer(way: Way) {
    let talk = delivery(way, |agent| {
        set_node_field(agent, "new_day", "timeout_secs", json!(1))
    })
    .await;
    talk.answer(1, "another day").await;

    let end = talk.ended().await;
    assert_eq!(end.outcome, "completed");
    assert_eq!(
        end.agent_lines().last().unwrap(),
        "No change then: parcel TRK-2041 comes on Friday 6 June."
    );
}

async fn delivery_notice_helps_with_what_it_does_not_understand(way: Way) {
    let talk = delivery(way, |_| {}).await;
    talk.answer(1, "Who are you?").await;

    let end = talk.ended().await;
    assert_eq!(end.outcome, "completed");
    assert_eq!(end.agent_lines(), [DELIVERY_QUESTION, DELIVERY_HELP]);
    assert_eq!(end.parameter("CHOICE"), None);
}

async fn delivery_notice_ends_quietly_without_an_answer(way: Way) {
    let talk = delivery(way, |agent| {
        set_node_field(agent, "ask", "timeout_secs", json!(1))
    })
    .await;

    let end = talk.ended().await;
    assert_eq!(end.outcome, "completed");
    assert_eq!(end.agent_lines(), [DELIVERY_QUESTION]);
    assert_eq!(end.nodes(), ["ask", "done"]);
}

// ---------------------------------------------------------------- satisfaction survey

const SURVEY_HELLO: &str =
    "Hello Ada, thank you for your recent visit. This survey takes less than a minute.";
const SURVEY_QUESTION: &str = "On a scale from 0 to 10, how likely are you to recommend us \
    to a friend? Key or say a number.";
const SURVEY_THANKS: &str = "Thank you for your time, Ada. Goodbye.";
const SURVEY_NO_SCORE: &str = "No problem, we will not take more of your time. Goodbye.";

async fn survey(way: Way, edit: impl FnOnce(&mut Value)) -> Talk {
    Talk::start(
        way,
        SATISFACTION_SURVEY,
        edit,
        json!([{"name": "NAME", "value": "Ada"}]),
    )
    .await
}

async fn satisfaction_survey_thanks_a_promoter(way: Way) {
    let talk = survey(way, |_| {}).await;
    assert_eq!(talk.heard(1).await, SURVEY_HELLO);
    assert_eq!(talk.heard(2).await, SURVEY_QUESTION);
    talk.reply("10").await;

    let end = talk.ended().await;
    assert_eq!(end.outcome, "completed");
    assert_eq!(
        end.agent_lines(),
        [
            SURVEY_HELLO,
            SURVEY_QUESTION,
            "Wonderful, thank you! We are glad you would recommend us.",
            SURVEY_THANKS
        ]
    );
    assert_eq!(end.parameter("SCORE").as_deref(), Some("10"));
    assert_eq!(end.parameter("SEGMENT").as_deref(), Some("promoter"));
    assert_eq!(
        end.transcript["transcript"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["direction"] == "inbound")
            .unwrap()["input"],
        "dtmf"
    );
}

async fn satisfaction_survey_asks_a_passive_what_would_make_it_a_ten(way: Way) {
    let talk = survey(way, |_| {}).await;
    talk.answer(2, "eight").await;
    assert_eq!(
        talk.heard(3).await,
        "Thank you. What one thing would have made it a 10?"
    );
    talk.reply("Shorter queues").await;

    let end = talk.ended().await;
    assert_eq!(end.outcome, "completed");
    assert_eq!(
        end.agent_lines()[3..],
        ["We have noted: Shorter queues.", SURVEY_THANKS]
    );
    assert_eq!(end.parameter("SCORE").as_deref(), Some("8"));
    assert_eq!(end.parameter("SEGMENT").as_deref(), Some("passive"));
    assert_eq!(end.parameter("REASON").as_deref(), Some("Shorter queues"));
}

async fn satisfaction_survey_asks_a_detractor_what_went_wrong(way: Way) {
    let talk = survey(way, |_| {}).await;
    talk.answer(2, "3").await;
    assert_eq!(
        talk.heard(3).await,
        "We are sorry to hear that. What went wrong? Tell us in a few words."
    );
    talk.reply("The wait was too long").await;

    let end = talk.ended().await;
    assert_eq!(
        end.agent_lines()[3..],
        ["We have noted: The wait was too long.", SURVEY_THANKS]
    );
    assert_eq!(end.parameter("SEGMENT").as_deref(), Some("detractor"));
}

async fn satisfaction_survey_thanks_a_detractor_who_says_nothing_more(way: Way) {
    let talk = survey(way, |agent| {
        set_node_field(agent, "ask_wrong", "timeout_secs", json!(1))
    })
    .await;
    talk.answer(2, "zero").await;

    let end = talk.ended().await;
    assert_eq!(end.outcome, "completed");
    assert_eq!(end.agent_lines().last().unwrap(), SURVEY_THANKS);
    assert_eq!(end.parameter("SCORE").as_deref(), Some("0"));
    assert_eq!(end.parameter("REASON"), None);
}

async fn satisfaction_survey_asks_again_for_a_score_out_of_range(way: Way) {
    let talk = survey(way, |_| {}).await;
    talk.answer(2, "11").await;
    assert_eq!(talk.heard(3).await, "11 is not between 0 and 10.");
    assert_eq!(talk.heard(4).await, SURVEY_QUESTION);
    talk.reply("nine").await;

    let end = talk.ended().await;
    assert_eq!(end.parameter("SEGMENT").as_deref(), Some("promoter"));
    assert_eq!(end.parameter("OUT_OF_RANGE").as_deref(), Some("1"));
    assert_eq!(end.agent_lines().last().unwrap(), SURVEY_THANKS);
}

async fn satisfaction_survey_stops_after_two_scores_out_of_range(way: Way) {
    let talk = survey(way, |_| {}).await;
    talk.answer(2, "11").await;
    talk.answer(4, "42").await;

    let end = talk.ended().await;
    assert_eq!(end.outcome, "completed");
    assert_eq!(
        end.agent_lines()[2..],
        [
            "11 is not between 0 and 10.",
            SURVEY_QUESTION,
            "42 is not between 0 and 10.",
            SURVEY_NO_SCORE
        ]
    );
    assert_eq!(end.parameter("SEGMENT"), None);
}

async fn satisfaction_survey_stops_when_no_number_is_understood(way: Way) {
    let talk = survey(way, |_| {}).await;
    talk.answer(2, "I don't know").await;
    assert_eq!(
        talk.heard(3).await,
        "Please key or say a number from 0 to 10."
    );
    talk.reply("pass").await;

    let end = talk.ended().await;
    assert_eq!(end.agent_lines().last().unwrap(), SURVEY_NO_SCORE);
    assert_eq!(end.person_lines(), ["I don't know", "pass"]);
}

async fn satisfaction_survey_stops_without_an_answer(way: Way) {
    let talk = survey(way, |agent| {
        set_node_field(agent, "ask_score", "timeout_secs", json!(1))
    })
    .await;

    let end = talk.ended().await;
    assert_eq!(end.outcome, "completed");
    assert_eq!(
        end.agent_lines(),
        [SURVEY_HELLO, SURVEY_QUESTION, SURVEY_NO_SCORE]
    );
}
