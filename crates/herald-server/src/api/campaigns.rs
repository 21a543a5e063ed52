//! Campaigns (CONTRACT §12): create one, add its recipients, start, pause,
//! resume and cancel it, and follow it: its counts, its recipients by
//! state, and a CSV export. The scheduler that reaches the recipients is
//! [`crate::campaigns`].

use std::collections::{BTreeMap, HashSet};

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use herald_core::campaign::{CampaignState, RecipientState};
use herald_core::recipients::{CsvError, CsvReader, Limits, Row as CsvRow};
use herald_core::session::SessionParameters;
use herald_core::trigger::{StatusUrl, TemplateMessage};
use herald_core::window::{Tz, Window};
use herald_core::{AccountId, AgentId, CampaignId, Channel, Destination};
use herald_store::{
    CampaignRecord, NewCampaign, NewRecipient, RecipientCounts, RecipientRecord, RecipientRefusal,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{authenticate, read_object, PathParam};
use crate::api::error::{ApiError, ErrorBody};
use crate::campaigns::{
    Pace, Retries, Schedule, Settings, MAX_ATTEMPTS, MAX_PER_SECOND, MAX_RETRY_SECS, RETRIED,
};
use crate::AppState;

/// Rows one request may add (CONTRACT §12.2).
pub const MAX_ROWS_PER_REQUEST: usize = 100_000;
/// Recipients one campaign may have.
pub const MAX_RECIPIENTS: u32 = 1_000_000;
/// The largest body of recipients as JSON.
const MAX_RECIPIENTS_BODY: usize = 64 * 1024 * 1024;
const MAX_NAME: usize = 256;
const MAX_EXTERNAL_ID: usize = 128;
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CampaignView {
    pub campaign_id: String,
    pub name: String,
    pub agent_id: String,
    pub status_url: Option<String>,
    pub state: CampaignState,
    /// The settings it was created with, checked.
    #[schema(value_type = Object)]
    pub settings: Value,
    pub counts: Counts,
    pub created_at: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
}

/// Where a campaign's recipients are (CONTRACT §12.6).
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Counts {
    pub recipients: u64,
    pub pending: u64,
    /// For its window or a retry.
    pub waiting: u64,
    pub in_progress: u64,
    pub completed: u64,
    /// Its last attempt's outcome is not tried again, or no attempt is left.
    pub failed: u64,
    pub skipped: u64,
    pub expired: u64,
    pub cancelled: u64,
    /// The last outcome of each recipient that had one, counted.
    pub by_outcome: BTreeMap<String, u64>,
    /// Why skipped recipients were skipped, counted.
    pub by_skip_reason: BTreeMap<String, u64>,
    /// Sessions started in all.
    pub attempts: u64,
}

impl From<RecipientCounts> for Counts {
    fn from(c: RecipientCounts) -> Self {
        let mut counts = Counts {
            attempts: c.attempts,
            ..Counts::default()
        };
        for (state, n) in c.by_state {
            counts.recipients += n;
            *match state {
                RecipientState::Pending => &mut counts.pending,
                RecipientState::Waiting => &mut counts.waiting,
                RecipientState::InProgress => &mut counts.in_progress,
                RecipientState::Completed => &mut counts.completed,
                RecipientState::Failed => &mut counts.failed,
                RecipientState::Skipped => &mut counts.skipped,
                RecipientState::Expired => &mut counts.expired,
                RecipientState::Cancelled => &mut counts.cancelled,
            } += n;
        }
        counts.by_outcome = c
            .by_outcome
            .into_iter()
            .map(|(o, n)| (o.as_str().to_owned(), n))
            .collect();
        counts.by_skip_reason = c.by_skip_reason.into_iter().collect();
        counts
    }
}

fn view(c: CampaignRecord, counts: RecipientCounts) -> CampaignView {
    CampaignView {
        campaign_id: c.id.to_string(),
        name: c.name,
        agent_id: c.agent_id.to_string(),
        status_url: c.status_url,
        state: c.state,
        settings: c.settings,
        counts: counts.into(),
        created_at: herald_core::time::rfc3339(c.created_at),
        started_at: c.started_at.map(herald_core::time::rfc3339),
        ended_at: c.ended_at.map(herald_core::time::rfc3339),
    }
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CampaignList {
    pub campaigns: Vec<CampaignView>,
}

/// A campaign's body (CONTRACT §12.1); read field by field.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct CreateCampaign {
    name: String,
    agent_id: String,
    status_url: Option<String>,
    /// `{"start_at"?, "end_at"?}`, RFC 3339.
    #[schema(value_type = Option<Object>)]
    schedule: Option<Value>,
    /// `{"days": ["mon", …], "start": "09:00", "end": "20:00", "timezone"?}`.
    #[schema(value_type = Option<Object>)]
    window: Option<Value>,
    /// `{"per_second"?, "max_concurrent"?}`.
    #[schema(value_type = Option<Object>)]
    pace: Option<Value>,
    /// `{"max_attempts": N, "after": {"busy": SECS, …}}`.
    #[schema(value_type = Option<Object>)]
    retries: Option<Value>,
    /// A WhatsApp agent's template: `namespace`, `template`, `locale` and
    /// `components`, whose texts may name `$PARAM`s of each recipient.
    #[schema(value_type = Option<Object>)]
    whatsapp: Option<Value>,
}

/// One recipient of `POST /campaigns/{id}/recipients` as JSON.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct RecipientBody {
    to: String,
    id: Option<String>,
    timezone: Option<String>,
    #[schema(value_type = Option<Object>)]
    parameters: Option<Map<String, Value>>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecipientsAddedView {
    pub accepted: u32,
    pub rejected: Vec<RejectedRow>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RejectedRow {
    /// The row's line (CSV) or its place in the array from 1 (JSON).
    pub line: u64,
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecipientView {
    pub to: String,
    pub id: Option<String>,
    pub state: RecipientState,
    pub attempts: u32,
    /// The session of its latest attempt.
    pub session_id: Option<String>,
    pub last_outcome: Option<String>,
    /// Why it was skipped: `opted_out`, or `agent_deleted` (the campaign's
    /// agent was deleted before it was reached).
    pub skip_reason: Option<String>,
    /// The IANA zones its window is read in.
    pub timezone: Option<String>,
    /// What decided them: `recipient`, `number`, `campaign` or `default`.
    pub timezone_source: String,
    /// When a waiting recipient is next due.
    pub next_at: Option<String>,
    pub parameters: Vec<herald_core::session::SessionParameter>,
}

impl From<RecipientRecord> for RecipientView {
    fn from(r: RecipientRecord) -> Self {
        RecipientView {
            to: r.to,
            id: r.external_id,
            state: r.state,
            attempts: r.attempts,
            session_id: r.session_id.map(|s| s.to_string()),
            last_outcome: r.last_outcome.map(|o| o.as_str().to_owned()),
            skip_reason: r.skip_reason,
            timezone: r.timezone,
            timezone_source: r.zone_source,
            next_at: r.next_at.map(herald_core::time::rfc3339),
            parameters: r.parameters.iter().cloned().collect(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecipientList {
    pub recipients: Vec<RecipientView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

fn campaign_id(raw: &str) -> Result<CampaignId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::not_found(format!("Campaign {raw} was not found")))
}

async fn owned(app: &AppState, account: AccountId, raw: &str) -> Result<CampaignRecord, ApiError> {
    let id = campaign_id(raw)?;
    app.store
        .campaign(account, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Campaign {raw} was not found")))
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message)
}

fn time_field(value: Option<&Value>, field: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => DateTime::parse_from_rfc3339(text)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| bad(format!("{field} must be an RFC 3339 time"))),
        Some(_) => Err(bad(format!("{field} must be an RFC 3339 time"))),
    }
}

fn object<'a>(value: &'a Value, field: &str) -> Result<&'a Map<String, Value>, ApiError> {
    value
        .as_object()
        .ok_or_else(|| bad(format!("{field} must be an object")))
}

fn only(fields: &Map<String, Value>, field: &str, known: &[&str]) -> Result<(), ApiError> {
    match fields.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(bad(format!(
            "{field}.{unknown} is not a field of {field} ({})",
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

fn whole(
    value: Option<&Value>,
    field: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<u64>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|n| range.contains(n))
            .map(Some)
            .ok_or_else(|| {
                bad(format!(
                    "{field} must be a whole number from {} to {}",
                    range.start(),
                    range.end()
                ))
            }),
    }
}

/// Reads and checks a campaign's settings (CONTRACT §12.1).
fn settings(obj: &Map<String, Value>) -> Result<Settings, ApiError> {
    let mut settings = Settings::default();
    if let Some(value) = obj.get("schedule").filter(|v| !v.is_null()) {
        let fields = object(value, "schedule")?;
        only(fields, "schedule", &["start_at", "end_at"])?;
        let schedule = Schedule {
            start_at: time_field(fields.get("start_at"), "schedule.start_at")?,
            end_at: time_field(fields.get("end_at"), "schedule.end_at")?,
        };
        if let (Some(start), Some(end)) = (schedule.start_at, schedule.end_at) {
            if end <= start {
                return Err(bad("schedule.end_at must be after schedule.start_at"));
            }
        }
        settings.schedule = Some(schedule);
    }
    if let Some(value) = obj.get("window").filter(|v| !v.is_null()) {
        settings.window = Some(Window::parse(value).map_err(|e| bad(e.to_string()))?);
    }
    if let Some(value) = obj.get("pace").filter(|v| !v.is_null()) {
        let fields = object(value, "pace")?;
        only(fields, "pace", &["per_second", "max_concurrent"])?;
        settings.pace = Some(Pace {
            per_second: whole(
                fields.get("per_second"),
                "pace.per_second",
                1..=u64::from(MAX_PER_SECOND),
            )?
            .map(|n| n as u32),
            max_concurrent: whole(
                fields.get("max_concurrent"),
                "pace.max_concurrent",
                1..=100_000,
            )?
            .map(|n| n as u32),
        });
    }
    if let Some(value) = obj.get("retries").filter(|v| !v.is_null()) {
        let fields = object(value, "retries")?;
        only(fields, "retries", &["max_attempts", "after"])?;
        let max_attempts = whole(
            fields.get("max_attempts"),
            "retries.max_attempts",
            1..=u64::from(MAX_ATTEMPTS),
        )?
        .ok_or_else(|| bad("retries.max_attempts is required"))? as u32;
        let mut after = BTreeMap::new();
        if let Some(value) = fields.get("after").filter(|v| !v.is_null()) {
            let names: Vec<&str> = RETRIED.iter().map(|o| o.as_str()).collect();
            for (outcome, secs) in object(value, "retries.after")? {
                if !names.contains(&outcome.as_str()) {
                    return Err(bad(format!(
                        "retries.after.{outcome} is not an outcome that may be retried ({})",
                        names.join(", ")
                    )));
                }
                let field = format!("retries.after.{outcome}");
                let secs = whole(Some(secs), &field, 1..=MAX_RETRY_SECS)?.unwrap_or(1);
                after.insert(outcome.clone(), secs);
            }
        }
        settings.retries = Some(Retries {
            max_attempts,
            after,
        });
    }
    Ok(settings)
}

/// A WhatsApp agent's template, checked as a trigger's is.
async fn whatsapp_template(
    app: &AppState,
    account: AccountId,
    value: &Value,
) -> Result<Value, ApiError> {
    let fields = object(value, "whatsapp")?;
    only(
        fields,
        "whatsapp",
        &["namespace", "template", "locale", "components"],
    )?;
    let text = |name: &str| -> Result<String, ApiError> {
        match fields.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            _ => Err(bad(format!("whatsapp.{name} must be a non-empty string"))),
        }
    };
    let components = match fields.get("components") {
        None => Vec::new(),
        Some(v) => herald_core::whatsapp::parse_components(v)
            .map_err(|e| bad(format!("whatsapp.{}", e.0)))?,
    };
    let message = TemplateMessage {
        namespace: text("namespace")?,
        template: text("template")?,
        locale: text("locale")?,
        components,
    };
    crate::api::triggers::check_template(app, account, &message).await
}

/// Create a campaign
#[utoipa::path(post, path = "/campaigns", operation_id = "create_campaign", tag = "campaigns",
    request_body = CreateCampaign,
    responses((status = 201, body = CampaignView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)),
    security(("vgai_key" = []), ("bearer" = [])))]
pub async fn create(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<CampaignView>), ApiError> {
    let account = authenticate(&app, &headers)?;
    let obj = read_object(body).await?;
    only(
        &obj,
        "campaign",
        &[
            "name",
            "agent_id",
            "status_url",
            "schedule",
            "window",
            "pace",
            "retries",
            "whatsapp",
        ],
    )?;
    let absent: Vec<&str> = ["name", "agent_id"]
        .into_iter()
        .filter(|f| obj.get(*f).is_none_or(Value::is_null))
        .collect();
    if !absent.is_empty() {
        return Err(bad(format!(
            "Missing mandatory field(s): {}",
            absent.join(", ")
        )));
    }
    let name = match &obj["name"] {
        Value::String(n)
            if !n.trim().is_empty()
                && n.chars().count() <= MAX_NAME
                && !n.chars().any(char::is_control) =>
        {
            n.clone()
        }
        _ => return Err(bad(format!("name must be 1 to {MAX_NAME} characters"))),
    };
    let raw_agent = obj["agent_id"]
        .as_str()
        .ok_or_else(|| bad("agent_id must be a string"))?;
    let not_found = || ApiError::not_found(format!("ID {raw_agent} is not an ID to any agent"));
    let agent_id: AgentId = raw_agent.parse().map_err(|_| not_found())?;
    let agent = app
        .store
        .agent(account, &agent_id)
        .await?
        .ok_or_else(not_found)?;
    let status_url = match obj.get("status_url").filter(|v| !v.is_null()) {
        None => None,
        Some(Value::String(url)) => Some(
            StatusUrl::parse(url)
                .map_err(|e| bad(e.0))?
                .as_str()
                .to_owned(),
        ),
        Some(_) => return Err(bad("status_url must be a string")),
    };
    let mut settings = settings(&obj)?;
    match (agent.channel, obj.get("whatsapp").filter(|v| !v.is_null())) {
        (Channel::Whatsapp, Some(value)) => {
            settings.whatsapp = Some(whatsapp_template(&app, account, value).await?)
        }
        (Channel::Whatsapp, None) => {
            return Err(bad(
                "A WhatsApp agent's campaign needs whatsapp: its template",
            ))
        }
        (_, Some(_)) => return Err(bad("whatsapp is for a WhatsApp agent's campaign")),
        (_, None) => {}
    }
    if agent.channel == Channel::Whatsapp && status_url.is_none() {
        return Err(bad("Missing mandatory field(s): status_url"));
    }
    let campaign = app
        .store
        .create_campaign(NewCampaign {
            id: CampaignId::generate(),
            account_id: account,
            name,
            agent_id,
            status_url,
            settings: serde_json::to_value(&settings).expect("settings serialise"),
            created_at: Utc::now(),
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(view(campaign, RecipientCounts::default())),
    ))
}

/// List the account's campaigns, newest first
#[utoipa::path(get, path = "/campaigns", operation_id = "list_campaigns", tag = "campaigns",
    responses((status = 200, body = CampaignList), (status = 401, body = ErrorBody)),
    security(("vgai_key" = []), ("bearer" = [])))]
pub async fn list(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<CampaignList>, ApiError> {
    let account = authenticate(&app, &headers)?;
    let mut campaigns = Vec::new();
    for campaign in app.store.campaigns(account).await? {
        let counts = app.store.recipient_counts(&campaign.id).await?;
        campaigns.push(view(campaign, counts));
    }
    Ok(Json(CampaignList { campaigns }))
}

/// Read a campaign, with its counts
#[utoipa::path(get, path = "/campaigns/{campaign_id}", operation_id = "read_campaign", tag = "campaigns",
    params(("campaign_id" = String, Path)),
    responses((status = 200, body = CampaignView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("vgai_key" = []), ("bearer" = [])))]
pub async fn read(
    State(app): State<AppState>,
    headers: HeaderMap,
    PathParam(raw): PathParam,
) -> Result<Json<CampaignView>, ApiError> {
    let account = authenticate(&app, &headers)?;
    let campaign = owned(&app, account, &raw).await?;
    let counts = app.store.recipient_counts(&campaign.id).await?;
    Ok(Json(view(campaign, counts)))
}

/// What a recipient row holds, before it is checked.
struct Row {
    line: u64,
    to: String,
    id: Option<String>,
    timezone: Option<String>,
    parameters: Vec<(String, String)>,
}

/// A row as read: its fields, or its line and why it cannot be taken.
type ReadRow = Result<Row, (u64, String)>;

/// Checks a row against the campaign's agent: its number, id, zone and
/// parameters; the reason it is refused otherwise.
struct RowCheck {
    channel: Channel,
    declared: HashSet<String>,
    window_zone: Option<Tz>,
}

impl RowCheck {
    fn check(&self, row: Row) -> Result<NewRecipient, String> {
        let to = if self.channel.is_messaging() {
            Destination::parse_messaging(row.to.trim())
        } else {
            Destination::parse_voice(row.to.trim())
        }
        .map_err(|_| format!("to: bad number {:?}", row.to))?;
        if let Some(id) = &row.id {
            if id.is_empty() || id.len() > MAX_EXTERNAL_ID || id.chars().any(char::is_control) {
                return Err(format!("id must be 1 to {MAX_EXTERNAL_ID} bytes"));
            }
        }
        let timezone = match row.timezone.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(name) => Some(
                name.parse::<Tz>()
                    .map_err(|_| format!("timezone {name:?} is not an IANA time zone"))?,
            ),
        };
        let mut parameters = Vec::new();
        for (name, value) in row.parameters {
            if !self.declared.contains(&name) {
                return Err(format!(
                    "parameter {name} is not one the agent's flow declares"
                ));
            }
            parameters.push(serde_json::json!({"name": name, "value": value}));
        }
        let parameters = SessionParameters::from_json(&Value::Array(parameters))
            .map_err(|e| e.replace("session_parameters", "parameters"))?;
        let number = match &to {
            Destination::Phone(number) => Some(number),
            _ => None,
        };
        let zones =
            herald_core::window::RecipientZones::resolve(timezone, number, self.window_zone);
        let names: Vec<&str> = zones.zones().iter().map(|z| z.name()).collect();
        Ok(NewRecipient {
            to: to.as_str().to_owned(),
            external_id: row.id,
            timezone: Some(names.join("&")),
            zone_source: zones.source().as_str().to_owned(),
            parameters,
        })
    }
}

/// Whether `request` adds a campaign's recipients, whose body its handler
/// reads as it arrives rather than whole beforehand.
pub(crate) fn streams_its_body(request: &axum::extract::Request) -> bool {
    let path = request.uri().path();
    request.method() == axum::http::Method::POST
        && path.starts_with("/campaigns/")
        && path.ends_with("/recipients")
}

/// The next part of a body, waiting at most `patience` for it.
async fn next_part(
    body: &mut Body,
    patience: std::time::Duration,
) -> Result<Option<axum::body::Bytes>, ApiError> {
    use http_body_util::BodyExt;
    loop {
        let frame = match tokio::time::timeout(patience, body.frame()).await {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "The request body did not arrive in time",
                ))
            }
            Ok(None) => return Ok(None),
            Ok(Some(frame)) => {
                frame.map_err(|e| bad(format!("Could not read the request body: {e}")))?
            }
        };
        if let Ok(data) = frame.into_data() {
            return Ok(Some(data));
        }
    }
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "A body of recipients is at most {} MiB",
            MAX_RECIPIENTS_BODY >> 20
        ),
    )
}

/// Reads CSV recipients as the body arrives (CONTRACT §12.2): a refused
/// upload is refused before anything is stored, and a body over the
/// limits is refused without being read to its end.
async fn csv_rows(mut body: Body, patience: std::time::Duration) -> Result<Vec<ReadRow>, ApiError> {
    let mut reader = CsvReader::new(Limits::default());
    let mut rows = Vec::new();
    let mut take = |row: CsvRow| {
        rows.push(match row {
            CsvRow::Recipient(r) => Ok(Row {
                line: r.line,
                to: r.to,
                id: r.id,
                timezone: r.timezone,
                parameters: r.parameters,
            }),
            CsvRow::Rejected { line, reason } => Err((line, reason)),
        })
    };
    let mut read = 0usize;
    while let Some(chunk) = next_part(&mut body, patience).await? {
        read += chunk.len();
        if read > MAX_RECIPIENTS_BODY {
            return Err(too_large());
        }
        reader.push(&chunk, &mut take).map_err(refused)?;
    }
    reader.finish(&mut take).map_err(refused)?;
    Ok(rows)
}

/// A CSV body refused whole: 413 for one with too many rows, as for JSON;
/// 400 for one that is not CSV herald can read.
fn refused(e: CsvError) -> ApiError {
    let status = match e {
        CsvError::TooManyRows { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, e.to_string())
}

/// Reads the JSON array of recipients.
fn json_rows(bytes: &[u8]) -> Result<Vec<ReadRow>, ApiError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("Invalid JSON body: {e}")))?;
    let Value::Array(items) = value else {
        return Err(bad(
            "Recipients are a JSON array, or CSV (Content-Type: text/csv)",
        ));
    };
    if items.len() > MAX_ROWS_PER_REQUEST {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("At most {MAX_ROWS_PER_REQUEST} recipients a request"),
        ));
    }
    Ok(items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let line = i as u64 + 1;
            let refuse = |reason: &str| Err((line, reason.to_owned()));
            let Value::Object(fields) = item else {
                return refuse("a recipient is an object");
            };
            if let Some(unknown) = fields
                .keys()
                .find(|k| !["to", "id", "timezone", "parameters"].contains(&k.as_str()))
            {
                return refuse(&format!("{unknown} is not a field of a recipient"));
            }
            let text = |name: &str| -> Result<Option<String>, String> {
                match fields.get(name) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s.clone())),
                    Some(_) => Err(format!("{name} must be a string")),
                }
            };
            let (to, id, timezone) = match (text("to"), text("id"), text("timezone")) {
                (Ok(Some(to)), Ok(id), Ok(tz)) => (to, id, tz),
                (Ok(None), ..) => return refuse("to is missing"),
                (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => return refuse(&e),
            };
            let mut parameters = Vec::new();
            match fields.get("parameters") {
                None | Some(Value::Null) => {}
                Some(Value::Object(given)) => {
                    for (name, value) in given {
                        match value {
                            Value::String(s) => parameters.push((name.clone(), s.clone())),
                            Value::Number(n) => parameters.push((name.clone(), n.to_string())),
                            _ => return refuse(&format!("parameters.{name} must be a string")),
                        }
                    }
                }
                Some(_) => return refuse("parameters must be an object"),
            }
            Ok(Row {
                line,
                to,
                id,
                timezone,
                parameters,
            })
        })
        .collect())
}

/// Add recipients to a campaign
///
/// As a JSON array of `{"to", "id"?, "timezone"?, "parameters"?}`, or as
/// CSV (`Content-Type: text/csv`: a `to` column, optional `id` and
/// `timezone` columns, every other column a parameter), up to 100 000 a
/// request. Rows
/// that cannot be taken (a bad number, a duplicate `to` or `id`, an opted
/// out recipient, an unknown parameter) are listed with their place in the
/// array; the others are stored.
#[utoipa::path(post, path = "/campaigns/{campaign_id}/recipients", operation_id = "add_campaign_recipients", tag = "campaigns",
    params(("campaign_id" = String, Path)),
    request_body = Vec<RecipientBody>,
    responses((status = 200, body = RecipientsAddedView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody)),
    security(("vgai_key" = []), ("bearer" = [])))]
pub async fn add_recipients(
    State(app): State<AppState>,
    headers: HeaderMap,
    PathParam(raw): PathParam,
    body: Body,
) -> Result<Json<RecipientsAddedView>, ApiError> {
    let account = authenticate(&app, &headers)?;
    let campaign = owned(&app, account, &raw).await?;
    if campaign.state.is_final() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "Campaign {} is {}: it takes no more recipients",
                campaign.id, campaign.state
            ),
        ));
    }
    let csv = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("text/csv"));
    // A body that says it is too large is refused before it is read.
    if headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|length| length > MAX_RECIPIENTS_BODY as u64)
    {
        return Err(too_large());
    }
    let patience = app.config.body_timeout;
    let rows = if csv {
        csv_rows(body, patience).await?
    } else {
        let mut body = body;
        let mut bytes = Vec::new();
        while let Some(chunk) = next_part(&mut body, patience).await? {
            if bytes.len() + chunk.len() > MAX_RECIPIENTS_BODY {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        json_rows(&bytes)?
    };
    let agent = app
        .store
        .agent(account, &campaign.agent_id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "The campaign's agent was deleted"))?;
    let flow = match agent.current_version {
        Some(version) => app
            .directory
            .agent_version(app.store.as_ref(), &agent.agent_id, version)
            .await?
            .map(|v| v.flow.clone())
            .unwrap_or(agent.flow),
        None => agent.flow,
    };
    let settings = Settings::of(&campaign);
    let check = RowCheck {
        channel: agent.channel,
        declared: flow.parameters.iter().map(|p| p.name.clone()).collect(),
        window_zone: settings.window.and_then(|w| w.timezone()),
    };
    let mut rejected = Vec::new();
    let mut recipients = Vec::new();
    let mut lines = Vec::new();
    for row in rows {
        let checked = row.and_then(|row| {
            let line = row.line;
            check.check(row).map(|r| (line, r)).map_err(|e| (line, e))
        });
        match checked {
            Ok((line, recipient)) => {
                if app
                    .store
                    .opt_out(account, agent.channel, &recipient.to)
                    .await?
                    .is_some()
                {
                    rejected.push(RejectedRow {
                        line,
                        reason: format!("{} has opted out of {}", recipient.to, agent.channel),
                    });
                    continue;
                }
                lines.push(line);
                recipients.push(recipient);
            }
            Err((line, reason)) => rejected.push(RejectedRow { line, reason }),
        }
    }
    let added = app
        .store
        .add_recipients(&campaign.id, recipients, MAX_RECIPIENTS)
        .await?;
    for (i, why) in added.refused {
        rejected.push(RejectedRow {
            line: lines[i],
            reason: match why {
                RecipientRefusal::DuplicateTo => "duplicate to".into(),
                RecipientRefusal::DuplicateId => "duplicate id".into(),
            },
        });
    }
    rejected.sort_by_key(|r| r.line);
    Ok(Json(RecipientsAddedView {
        accepted: added.accepted,
        rejected,
    }))
}

/// Moves a campaign as `action` asks: start, pause, resume or cancel.
async fn act(
    app: &AppState,
    account: AccountId,
    raw: &str,
    action: &str,
) -> Result<CampaignView, ApiError> {
    let campaign = owned(app, account, raw).await?;
    let now = app.config.clock.now();
    let later_start = Settings::of(&campaign)
        .schedule
        .and_then(|s| s.start_at)
        .is_some_and(|at| at > now);
    let running = if later_start {
        CampaignState::Scheduled
    } else {
        CampaignState::Running
    };
    use CampaignState::*;
    let (from, to): (&[CampaignState], CampaignState) = match action {
        "start" => (&[Draft], running),
        "pause" => (&[Scheduled, Running], Paused),
        "resume" => (&[Paused], running),
        _ => (&[Draft, Scheduled, Running, Paused], Cancelled),
    };
    if action == "start" {
        let published = app
            .directory
            .agent(&campaign.agent_id)
            .is_some_and(|a| a.published.is_some());
        if !published {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("Agent {} has no published version", campaign.agent_id),
            ));
        }
    }
    let Some(moved) = app
        .store
        .set_campaign_state(account, &campaign.id, from, to, now)
        .await?
    else {
        let state = app
            .store
            .campaign(account, &campaign.id)
            .await?
            .map_or(campaign.state, |c| c.state);
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("Campaign {} is {state}: it cannot {action}", campaign.id),
        ));
    };
    if to == Cancelled {
        app.store
            .close_recipients(&campaign.id, RecipientState::Cancelled, None)
            .await?;
    }
    let counts = app.store.recipient_counts(&campaign.id).await?;
    Ok(view(moved, counts))
}

macro_rules! action {
    ($name:ident, $word:literal, $path:literal, $summary:literal) => {
        #[doc = $summary]
        #[utoipa::path(post, path = $path, operation_id = concat!($word, "_campaign"), tag = "campaigns",
            params(("campaign_id" = String, Path)),
            responses((status = 200, body = CampaignView), (status = 401, body = ErrorBody),
                (status = 404, body = ErrorBody), (status = 409, description = "Not in a state it can do that from", body = ErrorBody)),
            security(("vgai_key" = []), ("bearer" = [])))]
        pub async fn $name(
            State(app): State<AppState>,
            headers: HeaderMap,
            PathParam(raw): PathParam,
        ) -> Result<Json<CampaignView>, ApiError> {
            let account = authenticate(&app, &headers)?;
            act(&app, account, &raw, $word).await.map(Json)
        }
    };
}

action!(
    start,
    "start",
    "/campaigns/{campaign_id}/start",
    "Start a campaign (or schedule it, before its start_at)"
);
action!(
    pause,
    "pause",
    "/campaigns/{campaign_id}/pause",
    "Pause a campaign: attempts under way finish, no new one starts"
);
action!(
    resume,
    "resume",
    "/campaigns/{campaign_id}/resume",
    "Resume a paused campaign"
);
action!(
    cancel,
    "cancel",
    "/campaigns/{campaign_id}/cancel",
    "Cancel a campaign, for good: attempts under way finish"
);

/// The state filter, cursor and page size of a recipients query.
fn page_query(
    query: Option<String>,
) -> Result<(Option<RecipientState>, Option<u32>, usize), ApiError> {
    let (mut state, mut after, mut limit) = (None, None, DEFAULT_PAGE);
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match name.as_ref() {
            "state" => {
                let names: Vec<&str> = RecipientState::ALL.iter().map(|s| s.as_str()).collect();
                state = Some(
                    value
                        .parse()
                        .map_err(|_| bad(format!("state must be one of {}", names.join(", "))))?,
                )
            }
            "cursor" => after = Some(value.parse().map_err(|_| bad("cursor is not valid"))?),
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| bad(format!("limit must be an integer from 1 to {MAX_PAGE}")))?
            }
            _ => {}
        }
    }
    Ok((state, after, limit))
}

/// List a campaign's recipients, in the order they were added
#[utoipa::path(get, path = "/campaigns/{campaign_id}/recipients", operation_id = "list_campaign_recipients", tag = "campaigns",
    params(("campaign_id" = String, Path),
        ("state" = Option<RecipientState>, Query, description = "Only those in this state"),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 1000, description = "1 to 1000, default 100"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, body = RecipientList), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("vgai_key" = []), ("bearer" = [])))]
pub async fn recipients(
    State(app): State<AppState>,
    headers: HeaderMap,
    PathParam(raw): PathParam,
    RawQuery(query): RawQuery,
) -> Result<Json<RecipientList>, ApiError> {
    let account = authenticate(&app, &headers)?;
    let campaign = owned(&app, account, &raw).await?;
    let (state, after, limit) = page_query(query)?;
    let mut page = app
        .store
        .recipients(&campaign.id, state, after, limit + 1)
        .await?;
    let next_cursor = if page.len() > limit {
        page.truncate(limit);
        page.last().map(|r| r.n.to_string())
    } else {
        None
    };
    Ok(Json(RecipientList {
        recipients: page.into_iter().map(RecipientView::from).collect(),
        next_cursor,
    }))
}

/// A CSV field, quoted when it must be.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// Export a campaign's recipients as CSV
#[utoipa::path(get, path = "/campaigns/{campaign_id}/export", operation_id = "export_campaign", tag = "campaigns",
    params(("campaign_id" = String, Path)),
    responses((status = 200, description = "One line a recipient", content_type = "text/csv", body = String),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("vgai_key" = []), ("bearer" = [])))]
pub async fn export(
    State(app): State<AppState>,
    headers: HeaderMap,
    PathParam(raw): PathParam,
) -> Result<Response, ApiError> {
    let account = authenticate(&app, &headers)?;
    let campaign = owned(&app, account, &raw).await?;
    let mut csv = String::from(
        "to,id,state,attempts,last_outcome,skip_reason,session_id,timezone,timezone_source\r\n",
    );
    let mut after = None;
    loop {
        let page = app
            .store
            .recipients(&campaign.id, None, after, MAX_PAGE)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.n);
        for r in &page {
            let fields = [
                r.to.clone(),
                r.external_id.clone().unwrap_or_default(),
                r.state.as_str().to_owned(),
                r.attempts.to_string(),
                r.last_outcome
                    .map(|o| o.as_str().to_owned())
                    .unwrap_or_default(),
                r.skip_reason.clone().unwrap_or_default(),
                r.session_id.map(|s| s.to_string()).unwrap_or_default(),
                r.timezone.clone().unwrap_or_default(),
                r.zone_source.clone(),
            ];
            let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
            csv.push_str(&line.join(","));
            csv.push_str("\r\n");
        }
    }
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"campaign-{}.csv\"", campaign.id),
            ),
        ],
        csv,
    )
        .into_response())
}
