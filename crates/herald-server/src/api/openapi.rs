//! The OpenAPI document, generated from the handlers' annotations. A copy
//! is committed at `openapi.json`; a test fails when the two differ
//! (`herald openapi > openapi.json` refreshes it).

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api::{
    account, agents, campaigns, connections, ops, opt_outs, replies, sessions, templates, triggers,
    webhooks,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "herald",
        description = "Start conversations with people by voice, SMS and WhatsApp: trigger a published virtual agent, follow its sessions, receive signed status callbacks.",
        license(name = "Apache-2.0")
    ),
    paths(
        triggers::make_call,
        triggers::conversation,
        agents::create,
        agents::list,
        agents::read,
        agents::edit,
        agents::delete,
        agents::publish,
        connections::create,
        connections::list,
        connections::read,
        connections::edit,
        connections::delete,
        connections::check,
        templates::create,
        templates::list,
        campaigns::create,
        campaigns::list,
        campaigns::read,
        campaigns::add_recipients,
        campaigns::recipients,
        campaigns::start,
        campaigns::pause,
        campaigns::resume,
        campaigns::cancel,
        campaigns::export,
        opt_outs::list,
        opt_outs::create,
        opt_outs::delete,
        account::read,
        sessions::read,
        sessions::list,
        sessions::read_transcript,
        replies::simulated,
        replies::provider,
        replies::live_agent,
        webhooks::receive,
        webhooks::handshake,
        ops::healthz,
        ops::metrics,
        ops::openapi,
    ),
    components(schemas(crate::api::error::ErrorBody, triggers::TriggerResponse)),
    modifiers(&Security),
    tags(
        (name = "triggers", description = "Start sessions (CONTRACT §2, §3)"),
        (name = "agents", description = "Agents and their published versions"),
        (name = "connections", description = "Connections to channel providers (CONTRACT §10)"),
        (name = "templates", description = "WhatsApp templates"),
        (name = "campaigns", description = "Many recipients, at a pace, in their hours (CONTRACT §12)"),
        (name = "opt-outs", description = "Recipients who must not be contacted (CONTRACT §13)"),
        (name = "account", description = "The calling account"),
        (name = "sessions", description = "What happened in each session"),
        (name = "conversations", description = "Replies from people and live agents"),
        (name = "providers", description = "What channel providers report (CONTRACT §11)"),
        (name = "operations", description = "Health, metrics, this document"),
    )
)]
struct ApiDoc;

/// The channels of `POST /messaging/conversation`; any other is refused with
/// 400 "Unsupported channel". The handler reads the field as a string, so
/// this type exists for the document only.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase", example = "sms")]
#[allow(dead_code)]
pub enum MessagingChannel {
    Sms,
    Whatsapp,
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "vgai_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Vgai-Key"))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as served and committed: pretty JSON with a final newline.
pub fn document() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises");
    text.push('\n');
    text
}
