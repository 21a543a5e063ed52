//! Twilio's webhooks (CHANNELS §6): each verified by its
//! `X-Twilio-Signature` over the URL Twilio requested (herald's public URL,
//! whatever proxy stands between) and its form, read from Twilio's form
//! fields and handed on as what any provider reports. A call's `voice`
//! and `input` webhooks are answered with TwiML.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use herald_channels::adapter::CallStatus;
use herald_channels::twilio::messages::{Inbound, StatusReport};
use herald_channels::twilio::voice::{self as twiml, CallReport};
use herald_channels::twilio::{field, parse_form, Twilio};
use sha2::{Digest, Sha256};

use super::voice::{self, Asked};
use super::{message_inbound, message_status, no_such_webhook, Fate, Hook, Message, Status};
use crate::api::error::ApiError;

pub(super) async fn receive(
    hook: Hook<'_>,
    twilio: &Twilio,
    webhook: &str,
) -> Result<Response, ApiError> {
    let name: &'static str = match webhook {
        "voice" => "voice",
        "voice_status" => "voice_status",
        "message_status" => "message_status",
        "message_inbound" => "message_inbound",
        // Where a turn's <Gather> and <Redirect> post.
        "input" => "input",
        _ => return Err(no_such_webhook()),
    };
    let form = parse_form(hook.body);
    let signature = hook
        .headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok());
    if let Err(why) = twilio.verify(&requested_url(&hook, name), &form, signature) {
        return Err(hook.refuse(name, &why));
    }
    let (app, opened, query) = (hook.app, hook.opened, &hook.query);
    let malformed = |what: &str| {
        hook.count(name, "malformed");
        ApiError::bad_request(format!("Not a Twilio {what}"))
    };
    match name {
        "voice" => {
            let report = CallReport::from_form(&form).ok_or_else(|| malformed("voice request"))?;
            if report.by_machine() {
                machine(&hook, &report).await?;
            }
            let asked = Asked::Answer {
                call: &report.call_sid,
            };
            let turn = voice::turn(app, opened, name, query, asked).await?;
            Ok(turned(&hook, name, turn))
        }
        "input" => {
            let asked = Asked::Input {
                call: field(&form, "CallSid"),
                heard: Some(twiml::heard(&form)),
                at: Utc::now(),
                dedupe: format!(
                    "input:{:x}",
                    Sha256::new()
                        .chain_update(hook.raw_query)
                        .chain_update(hook.body)
                        .finalize()
                ),
            };
            let turn = voice::turn(app, opened, name, query, asked).await?;
            Ok(turned(&hook, name, turn))
        }
        "voice_status" => {
            let report = CallReport::from_form(&form).ok_or_else(|| malformed("call status"))?;
            let status = report.status();
            if status == Some(CallStatus::Completed) && report.by_machine() {
                // A machine answered, and the call is over: the machine
                // first (a no-op when the answer said so already).
                machine(&hook, &report).await?;
            }
            let fate = voice::event(app, opened, query, call_report(&report, status)).await;
            hook.answer(name, fate)
        }
        "message_status" => {
            let report =
                StatusReport::from_form(&form).ok_or_else(|| malformed("message status"))?;
            let status = Status {
                id: &report.message_sid,
                client_ref: query.reference.as_deref(),
                to: report.to.as_deref(),
                status: report.status(),
                word: &report.status,
                reason: report.reason(),
                at: Utc::now(),
            };
            hook.answer(name, message_status(app, opened, status).await)
        }
        _ => {
            let inbound = Inbound::from_form(&form).ok_or_else(|| malformed("inbound message"))?;
            let message = Message {
                channel: Some(inbound.channel),
                id: &inbound.message_sid,
                from: &inbound.from,
                to: &inbound.to,
                text: inbound.text.as_deref(),
                at: Utc::now(),
            };
            hook.answer(name, message_inbound(app, opened, message).await)?;
            // Nothing to say back: herald's replies go out as messages.
            Ok(xml(
                r#"<?xml version="1.0" encoding="UTF-8"?><Response/>"#.to_owned()
            ))
        }
    }
}

/// The URL Twilio requested, as it signed it: herald's public URL, the
/// webhook's path and the query herald gave.
fn requested_url(hook: &Hook<'_>, name: &str) -> String {
    let base = hook.app.config.public_url.as_deref().unwrap_or_default();
    let mut url = format!("{base}/providers/{}/{name}", hook.opened.id);
    if !hook.raw_query.is_empty() {
        url.push('?');
        url.push_str(hook.raw_query);
    }
    url
}

fn call_report<'a>(report: &'a CallReport, status: Option<CallStatus>) -> voice::CallReport<'a> {
    voice::CallReport {
        call: Some(&report.call_sid),
        status,
        word: &report.status,
        at: Utc::now(),
    }
}

/// Reports that an answering machine answered the call.
async fn machine(hook: &Hook<'_>, report: &CallReport) -> Result<Fate, ApiError> {
    let machine = voice::CallReport {
        word: "machine",
        ..call_report(report, Some(CallStatus::Machine))
    };
    voice::event(hook.app, hook.opened, &hook.query, machine).await
}

fn xml(body: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Answers a turn webhook with the call's next turn, as TwiML.
fn turned(
    hook: &Hook<'_>,
    name: &'static str,
    (fate, turn): (Fate, serde_json::Value),
) -> Response {
    hook.count(name, fate.as_str());
    let twiml = match turn {
        serde_json::Value::String(twiml) => twiml,
        _ => twiml::HANG_UP.to_owned(),
    };
    xml(twiml)
}
