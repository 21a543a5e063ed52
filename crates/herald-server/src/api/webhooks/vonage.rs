//! Vonage's webhooks (CHANNELS §3, §4): each verified by its signature (a
//! JWT of the signature secret carrying the body's hash), read from
//! Vonage's JSON and handed on as what any provider reports.

use axum::response::{IntoResponse, Response};
use herald_channels::vonage::voice::{Answered, CallEvent, InputResult};
use herald_channels::vonage::{Inbound, StatusReport, Vonage};
use sha2::{Digest, Sha256};

use super::voice::{self, Asked, CallReport};
use super::{json, message_inbound, message_status, no_such_webhook, when, Hook, Message, Status};
use crate::api::error::ApiError;

pub(super) async fn receive(
    hook: Hook<'_>,
    vonage: &Vonage,
    webhook: &str,
) -> Result<Response, ApiError> {
    let name: &'static str = match webhook {
        "message_status" => "message_status",
        "message_inbound" => "message_inbound",
        "answer" => "answer",
        "event" => "event",
        // Where herald's own `input` and `notify` actions post.
        "input" => "input",
        _ => return Err(no_such_webhook()),
    };
    let authorization = hook
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Err(why) = vonage.verify(authorization, hook.body) {
        return Err(hook.refuse(name, &why));
    }
    let (app, opened, query) = (hook.app, hook.opened, &hook.query);
    if name == "answer" {
        let answered: Answered = json(hook.body)?;
        let asked = Asked::Answer {
            call: &answered.uuid,
        };
        let turn = voice::turn(app, opened, name, query, asked).await;
        return turned(&hook, name, turn);
    }
    if name == "input" {
        let input: InputResult = json(hook.body)?;
        let asked = Asked::Input {
            call: input.uuid.as_deref(),
            // A `notify` post (herald's own) is no answer.
            heard: input.is_answer().then(|| input.heard()),
            at: when(input.timestamp.as_deref()),
            dedupe: format!("input:{:x}", Sha256::digest(hook.body)),
        };
        let turn = voice::turn(app, opened, name, query, asked).await;
        return turned(&hook, name, turn);
    }
    let fate = match name {
        "message_status" => match json::<StatusReport>(hook.body) {
            Ok(report) => {
                let status = Status {
                    id: &report.message_uuid,
                    client_ref: report.client_ref.as_deref(),
                    to: report.to.as_deref(),
                    status: report.status(),
                    word: &report.status,
                    reason: report.reason().map(|r| format!("Vonage reported: {r}")),
                    at: when(report.timestamp.as_deref()),
                };
                message_status(app, opened, status).await
            }
            Err(e) => Err(e),
        },
        "event" => match json::<CallEvent>(hook.body) {
            Ok(event) => {
                let report = CallReport {
                    call: event.call(),
                    status: event.status(),
                    word: event.status.as_deref().unwrap_or_default(),
                    at: when(event.timestamp.as_deref()),
                };
                voice::event(app, opened, query, report).await
            }
            Err(e) => Err(e),
        },
        _ => match json::<Inbound>(hook.body) {
            Ok(inbound) => {
                let text = match inbound.message_type.as_deref() {
                    None | Some("text") => inbound.text.as_deref(),
                    // An image, a location, a sticker: nothing a flow reads.
                    _ => None,
                };
                let message = Message {
                    channel: inbound.channel(),
                    id: &inbound.message_uuid,
                    from: &inbound.from,
                    to: &inbound.to,
                    text,
                    at: when(inbound.timestamp.as_deref()),
                };
                message_inbound(app, opened, message).await
            }
            Err(e) => Err(e),
        },
    };
    hook.answer(name, fate)
}

/// Answers a turn webhook with the call's next turn, as NCCO.
fn turned(
    hook: &Hook<'_>,
    name: &'static str,
    turn: Result<(super::Fate, serde_json::Value), ApiError>,
) -> Result<Response, ApiError> {
    match turn {
        Ok((fate, ncco)) => {
            hook.count(name, fate.as_str());
            Ok(axum::Json(ncco).into_response())
        }
        Err(error) => {
            if error.status == axum::http::StatusCode::BAD_REQUEST {
                hook.count(name, "malformed");
            }
            Err(error)
        }
    }
}
