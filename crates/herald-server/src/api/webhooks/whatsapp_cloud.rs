//! Meta's WhatsApp Cloud webhook (CHANNELS §5): one envelope of statuses
//! and inbound messages, verified by `X-Hub-Signature-256` over the raw
//! body, each item handed on as what any provider reports.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use herald_channels::whatsapp_cloud::{timestamp, Envelope, WhatsappCloud};
use herald_core::Channel;

use super::{json, message_inbound, message_status, Hook, Message, Status};
use crate::api::error::ApiError;

const NAME: &str = "webhook";

pub(super) async fn receive(
    hook: Hook<'_>,
    whatsapp: &WhatsappCloud,
) -> Result<Response, ApiError> {
    let signature = hook
        .headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok());
    if !whatsapp.verify(hook.body, signature) {
        return Err(hook.refuse(NAME, &"X-Hub-Signature-256 does not match the body"));
    }
    let envelope: Envelope = match json(hook.body) {
        Ok(envelope) => envelope,
        Err(error) => {
            hook.count(NAME, "malformed");
            return Err(error);
        }
    };
    let (app, opened) = (hook.app, hook.opened);
    let number_id = &whatsapp.credentials().phone_number_id;
    let changes = envelope
        .entry
        .iter()
        .flat_map(|e| &e.changes)
        .filter(|c| c.field.as_deref() == Some("messages"));
    for change in changes {
        let value = &change.value;
        let metadata = value.metadata.as_ref();
        // Another number of the same Business Account: not this connection's.
        if metadata.and_then(|m| m.phone_number_id.as_deref()) != Some(number_id.as_str()) {
            hook.count(NAME, "unmatched");
            continue;
        }
        for report in &value.statuses {
            let status = Status {
                id: &report.id,
                client_ref: report.biz_opaque_callback_data.as_deref(),
                to: report.recipient_id.as_deref(),
                status: report.status(),
                word: &report.status,
                reason: report.reason(),
                at: timestamp(report.timestamp.as_deref()).unwrap_or_else(Utc::now),
            };
            let fate = message_status(app, opened, status).await?;
            hook.count(NAME, fate.as_str());
        }
        let number: String = metadata
            .and_then(|m| m.display_phone_number.as_deref())
            .unwrap_or_default()
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        for inbound in &value.messages {
            let message = Message {
                channel: Some(Channel::Whatsapp),
                id: &inbound.id,
                from: &inbound.from,
                to: &number,
                text: inbound.words(),
                at: timestamp(inbound.timestamp.as_deref()).unwrap_or_else(Utc::now),
            };
            let fate = message_inbound(app, opened, message).await?;
            hook.count(NAME, fate.as_str());
        }
    }
    Ok(StatusCode::OK.into_response())
}
