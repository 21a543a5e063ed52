//! Agents: create, list, read, edit, delete, publish (CONTRACT §4.1–4.3).

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_channels::ProviderKind;
use herald_core::flow::FlowDefinition;
use herald_core::{AccountId, AgentId, Channel, ConnectionId, PhoneNumber, Region};
use herald_store::{Agent, AgentPatch, NewAgent};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{authenticate, display_name, opt_string, read_object, req_string, PathParam};
use crate::api::error::{ApiError, ErrorBody};
use crate::AppState;

/// An agent's draft and the number of its current published version.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentView {
    #[schema(example = "60c09d70e6a68858f4220848")]
    pub agent_id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: Channel,
    /// The agent's phone number or sender id, digits with country code.
    #[schema(example = "447700900000")]
    pub number: String,
    pub region: Region,
    pub flow: FlowDefinition,
    /// The connection the agent's sessions run on once published; null:
    /// the simulator (CONTRACT §10.3).
    pub connection_id: Option<String>,
    /// The version triggers run, or null before the first publish.
    pub published_version: Option<u32>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<Agent> for AgentView {
    fn from(a: Agent) -> Self {
        AgentView {
            agent_id: a.agent_id.to_string(),
            name: a.name,
            kind: a.channel,
            number: a.number,
            region: a.region,
            flow: a.flow,
            connection_id: a.connection_id.map(|c| c.to_string()),
            published_version: a.current_version,
            created_at: herald_core::time::rfc3339(a.created_at),
            updated_at: herald_core::time::rfc3339(a.updated_at),
        }
    }
}

/// `POST /agents`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct CreateAgent {
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    #[serde(rename = "type")]
    kind: Channel,
    /// Digits with country code; one leading `+` is accepted.
    #[schema(pattern = r"^\+?[1-9][0-9]{6,14}$", example = "447700900000")]
    number: String,
    /// Defaults to the server's region.
    region: Option<Region>,
    /// Defaults to a flow that greets and ends.
    flow: Option<FlowDefinition>,
    /// A connection of the account; null or absent: the simulator.
    connection_id: Option<String>,
}

/// `PATCH /agents/{agent_id}`: edits the draft.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct EditAgent {
    #[schema(min_length = 1, max_length = 200)]
    name: Option<String>,
    /// Digits with country code; one leading `+` is accepted.
    #[schema(pattern = r"^\+?[1-9][0-9]{6,14}$", example = "447700900000")]
    number: Option<String>,
    flow: Option<FlowDefinition>,
    /// A connection of the account; null moves the agent to the simulator.
    connection_id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Published {
    pub agent_id: String,
    pub version: u32,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentList {
    pub agents: Vec<AgentView>,
}

fn number(obj: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    opt_string(obj, "number")?
        .map(|n| {
            PhoneNumber::parse(&n)
                .map(|p| p.as_str().to_owned())
                .map_err(|_| {
                    ApiError::bad_request(
                        "number must be a phone number with country code, digits only",
                    )
                })
        })
        .transpose()
}

fn flow(obj: &Map<String, Value>, channel: Channel) -> Result<Option<FlowDefinition>, ApiError> {
    match obj.get("flow") {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => FlowDefinition::from_json(v, channel)
            .map(Some)
            .map_err(|e| ApiError::bad_request(e.to_string())),
        Some(_) => Err(ApiError::bad_request("flow must be an object")),
    }
}

/// `connection_id`: absent (`None`), null (`Some(None)`: the simulator), or
/// one of the account's connections.
async fn connection_field(
    app: &AppState,
    account: AccountId,
    obj: &Map<String, Value>,
) -> Result<Option<Option<ConnectionId>>, ApiError> {
    let raw = match obj.get("connection_id") {
        None => return Ok(None),
        Some(Value::Null) => return Ok(Some(None)),
        Some(Value::String(raw)) => raw,
        Some(_) => {
            return Err(ApiError::bad_request(
                "connection_id must be a string or null",
            ))
        }
    };
    let found = match raw.parse::<ConnectionId>() {
        Ok(id) => app.store.connection(account, &id).await?,
        Err(()) => None,
    };
    match found {
        Some(connection) => Ok(Some(Some(connection.id))),
        None => Err(ApiError::bad_request(format!(
            "connection_id: this account has no connection {raw}"
        ))),
    }
}

/// Whether the agent's connection carries its channel (CONTRACT §10.3).
async fn check_connection(
    app: &AppState,
    account: AccountId,
    agent: &Agent,
) -> Result<(), ApiError> {
    let Some(id) = &agent.connection_id else {
        return Ok(());
    };
    let connection = app.store.connection(account, id).await?.ok_or_else(|| {
        ApiError::bad_request(format!(
            "connection_id: connection {id} was deleted; put the agent on another"
        ))
    })?;
    let provider: ProviderKind = connection.provider.parse().map_err(|e: String| {
        ApiError::internal("Internal server error", format!("connection {id}: {e}"))
    })?;
    let carried = provider.channels();
    let templates = connection
        .settings
        .get("content_sids")
        .and_then(|v| v.as_object())
        .is_some_and(|sids| !sids.is_empty());
    if provider == ProviderKind::Twilio && agent.channel == Channel::Whatsapp && !templates {
        // A WhatsApp session opens with a template, which Twilio sends
        // only by its Content SID.
        return Err(ApiError::bad_request(format!(
            "Connection {id} is a twilio connection without settings.content_sids, so it cannot \
             send the WhatsApp templates whatsapp sessions open with: add each template's \
             Content SID under \"namespace/name/locale\""
        )));
    }
    if carried.contains(&agent.channel) {
        return Ok(());
    }
    let carries = if carried.is_empty() {
        "none yet".to_owned()
    } else {
        carried
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(ApiError::bad_request(format!(
        "Connection {id} is a {provider} connection, which cannot carry {} agents in this \
         version of herald (it carries: {carries})",
        agent.channel
    )))
}

fn agent_id(raw: &str) -> Result<AgentId, ApiError> {
    raw.parse().map_err(|_| agent_not_found(raw))
}

fn agent_not_found(raw: &str) -> ApiError {
    ApiError::not_found(format!("Agent {raw} was not found"))
}

async fn reload(app: &AppState) {
    if let Err(e) = app.directory.reload_agents(app.store.as_ref()).await {
        tracing::warn!(error = %e, "could not reload agents; the refresher will retry");
    }
}

/// Create an agent
#[utoipa::path(post, path = "/agents", operation_id = "create_agent", tag = "agents", request_body = CreateAgent,
    responses((status = 201, body = AgentView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 409, description = "The number is taken", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody)),
    security(("vgai_key" = []), ("bearer" = [])))]
pub async fn create(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let account = authenticate(&app, &headers)?;
    let obj = read_object(body).await?;
    let mut absent = vec![];
    for field in ["name", "type", "number"] {
        if obj.get(field).is_none_or(Value::is_null) {
            absent.push(field);
        }
    }
    if !absent.is_empty() {
        return Err(ApiError::bad_request(format!(
            "Missing mandatory field(s): {}",
            absent.join(", ")
        )));
    }
    let name = display_name(&obj)?.unwrap_or_default();
    let channel: Channel = req_string(&obj, "type")?
        .parse()
        .map_err(|_| ApiError::bad_request("type must be one of voice, sms, whatsapp"))?;
    let number = number(&obj)?.unwrap_or_default();
    let region = match opt_string(&obj, "region")? {
        None => app.config.region,
        Some(r) => r
            .parse()
            .map_err(|_| ApiError::bad_request("region must be one of eu, us"))?,
    };
    let flow = flow(&obj, channel)?.unwrap_or_else(|| FlowDefinition::default_for(channel));
    let connection_id = connection_field(&app, account, &obj).await?.flatten();
    let agent = app
        .store
        .create_agent(NewAgent {
            account_id: account,
            name,
            channel,
            number,
            region,
            flow,
            connection_id,
        })
        .await?;
    reload(&app).await;
    Ok((StatusCode::CREATED, Json(AgentView::from(agent))).into_response())
}

/// List the account's agents
#[utoipa::path(get, path = "/agents", operation_id = "list_agents", tag = "agents",
    responses((status = 200, body = AgentList), (status = 401, body = ErrorBody)),
    security(("vgai_key" = []), ("bearer" = [])))]
pub async fn list(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<AgentList>, ApiError> {
    let account = authenticate(&app, &headers)?;
    let agents = app.store.agents(account).await?;
    Ok(Json(AgentList {
        agents: agents.into_iter().map(AgentView::from).collect(),
    }))
}

async fn find(app: &AppState, account: AccountId, raw: &str) -> Result<Agent, ApiError> {
    let id = agent_id(raw)?;
    app.store
        .agent(account, &id)
        .await?
        .ok_or_else(|| agent_not_found(raw))
}

/// Read an agent
#[utoipa::path(get, path = "/agents/{agent_id}", operation_id = "get_agent", tag = "agents",
    params(("agent_id" = String, Path, description = "24 lowercase hex characters")),
    responses((status = 200, body = AgentView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("vgai_key" = []), ("bearer" = [])))]
pub async fn read(
    State(app): State<AppState>,
    headers: HeaderMap,
    PathParam(raw): PathParam,
) -> Result<Json<AgentView>, ApiError> {
    let account = authenticate(&app, &headers)?;
    Ok(Json(find(&app, account, &raw).await?.into()))
}

/// Edit an agent's draft
#[utoipa::path(patch, path = "/agents/{agent_id}", operation_id = "edit_agent", tag = "agents", request_body = EditAgent,
    params(("agent_id" = String, Path, description = "24 lowercase hex characters")),
    responses((status = 200, body = AgentView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "The number is taken", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody)),
    security(("vgai_key" = []), ("bearer" = [])))]
pub async fn edit(
    State(app): State<AppState>,
    headers: HeaderMap,
    PathParam(raw): PathParam,
    body: Body,
) -> Result<Json<AgentView>, ApiError> {
    let account = authenticate(&app, &headers)?;
    let current = find(&app, account, &raw).await?;
    let obj = read_object(body).await?;
    for fixed in ["type", "region"] {
        if obj.get(fixed).is_some() {
            return Err(ApiError::bad_request(format!(
                "{fixed} cannot be changed; create a new agent instead"
            )));
        }
    }
    let patch = AgentPatch {
        name: display_name(&obj)?,
        number: number(&obj)?,
        flow: flow(&obj, current.channel)?,
        connection_id: connection_field(&app, account, &obj).await?,
    };
    let agent = app
        .store
        .update_agent(account, &current.agent_id, patch)
        .await?
        .ok_or_else(|| agent_not_found(&raw))?;
    reload(&app).await;
    Ok(Json(agent.into()))
}

/// Delete an agent
#[utoipa::path(delete, path = "/agents/{agent_id}", operation_id = "delete_agent", tag = "agents",
    params(("agent_id" = String, Path, description = "24 lowercase hex characters")),
    responses((status = 204, description = "Deleted; sessions already started finish"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("vgai_key" = []), ("bearer" = [])))]
pub async fn delete(
    State(app): State<AppState>,
    headers: HeaderMap,
    PathParam(raw): PathParam,
) -> Result<StatusCode, ApiError> {
    let account = authenticate(&app, &headers)?;
    let id = agent_id(&raw)?;
    if !app.store.delete_agent(account, &id).await? {
        return Err(agent_not_found(&raw));
    }
    reload(&app).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Publish an agent's draft as its next version
#[utoipa::path(post, path = "/agents/{agent_id}/publish", operation_id = "publish_agent", tag = "agents",
    params(("agent_id" = String, Path, description = "24 lowercase hex characters")),
    responses((status = 200, body = Published), (status = 400, description = "The flow is invalid, or the agent's connection cannot carry its channel", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "Another agent holds the number", body = ErrorBody)),
    security(("vgai_key" = []), ("bearer" = [])))]
pub async fn publish(
    State(app): State<AppState>,
    headers: HeaderMap,
    PathParam(raw): PathParam,
) -> Result<Json<Published>, ApiError> {
    let account = authenticate(&app, &headers)?;
    let agent = find(&app, account, &raw).await?;
    // Drafts are checked when written; checking again here keeps a draft
    // written by an older herald from being published unchecked.
    agent
        .flow
        .validate(agent.channel)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    check_connection(&app, account, &agent).await?;
    let version = app
        .store
        .publish_agent(account, &agent.agent_id)
        .await?
        .ok_or_else(|| agent_not_found(&raw))?;
    reload(&app).await;
    Ok(Json(Published {
        agent_id: agent.agent_id.to_string(),
        version,
    }))
}
