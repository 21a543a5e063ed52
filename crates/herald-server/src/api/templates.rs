//! WhatsApp templates (CONTRACT §4.4).

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::Utc;
use herald_core::whatsapp::placeholder_count;
use herald_store::Template;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{authenticate, opt_string, read_object};
use crate::api::error::{ApiError, ErrorBody};
use crate::AppState;

const MAX_FIELD: usize = 512;
const MAX_TEXT: usize = 1024;

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TemplateView {
    pub namespace: String,
    pub name: String,
    #[schema(example = "en")]
    pub locale: String,
    /// Header text with numbered placeholders `{{1}}`, `{{2}}`…
    pub header: Option<String>,
    #[schema(example = "Hello {{1}}, your appointment is on {{2}}.")]
    pub body: String,
    /// How many text parameters a trigger must send for the header.
    pub header_parameters: usize,
    /// How many text parameters a trigger must send for the body.
    pub body_parameters: usize,
    pub created_at: String,
}

impl From<Template> for TemplateView {
    fn from(t: Template) -> Self {
        let count = |text: Option<&str>| text.map_or(0, |t| placeholder_count(t).unwrap_or(0));
        TemplateView {
            header_parameters: count(t.header.as_deref()),
            body_parameters: count(Some(&t.body)),
            namespace: t.namespace,
            name: t.name,
            locale: t.locale,
            header: t.header,
            body: t.body,
            created_at: herald_core::time::rfc3339(t.created_at),
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct CreateTemplate {
    /// 1 to 512 bytes, no control characters.
    #[schema(pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$")]
    namespace: String,
    /// 1 to 512 bytes, no control characters.
    #[schema(pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$")]
    name: String,
    /// 1 to 512 bytes, no control characters.
    #[schema(pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$", example = "en")]
    locale: String,
    /// Text with numbered placeholders `{{1}}`, `{{2}}`…
    #[schema(min_length = 1, max_length = 1024)]
    header: Option<String>,
    /// Text with numbered placeholders `{{1}}`, `{{2}}`…
    #[schema(
        min_length = 1,
        max_length = 1024,
        example = "Hello {{1}}, your appointment is on {{2}}."
    )]
    body: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TemplateList {
    pub templates: Vec<TemplateView>,
}

/// Register a WhatsApp template
#[utoipa::path(post, path = "/whatsapp/templates", operation_id = "create_template", tag = "templates", request_body = CreateTemplate,
    responses((status = 201, body = TemplateView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 409, description = "Already registered", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody)),
    security(("vgai_key" = []), ("bearer" = [])))]
pub async fn create(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<TemplateView>), ApiError> {
    let account = authenticate(&app, &headers)?;
    let obj = read_object(body).await?;
    let absent: Vec<&str> = ["namespace", "name", "locale", "body"]
        .into_iter()
        .filter(|f| obj.get(*f).is_none_or(Value::is_null))
        .collect();
    if !absent.is_empty() {
        return Err(ApiError::bad_request(format!(
            "Missing mandatory field(s): {}",
            absent.join(", ")
        )));
    }
    let mut fields = Vec::new();
    for name in ["namespace", "name", "locale"] {
        let value = opt_string(&obj, name)?.unwrap_or_default();
        if value.is_empty() || value.len() > MAX_FIELD || value.chars().any(char::is_control) {
            return Err(ApiError::bad_request(format!(
                "{name} must be 1 to {MAX_FIELD} characters"
            )));
        }
        fields.push(value);
    }
    let header = opt_string(&obj, "header")?;
    let body = opt_string(&obj, "body")?.unwrap_or_default();
    for (name, text) in [("header", header.as_deref()), ("body", Some(body.as_str()))] {
        let Some(text) = text else { continue };
        if text.is_empty() || text.chars().count() > MAX_TEXT {
            return Err(ApiError::bad_request(format!(
                "{name} must be 1 to {MAX_TEXT} characters"
            )));
        }
        placeholder_count(text).map_err(|e| ApiError::bad_request(format!("{name}: {e}")))?;
    }
    let [namespace, name, locale]: [String; 3] = fields.try_into().expect("three fields");
    let template = Template {
        namespace,
        name,
        locale,
        header,
        body,
        created_at: Utc::now(),
    };
    app.store.create_template(account, template.clone()).await?;
    Ok((StatusCode::CREATED, Json(template.into())))
}

/// List the account's WhatsApp templates
#[utoipa::path(get, path = "/whatsapp/templates", operation_id = "list_templates", tag = "templates",
    responses((status = 200, body = TemplateList), (status = 401, body = ErrorBody)),
    security(("vgai_key" = []), ("bearer" = [])))]
pub async fn list(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<TemplateList>, ApiError> {
    let account = authenticate(&app, &headers)?;
    let templates = app.store.templates(account).await?;
    Ok(Json(TemplateList {
        templates: templates.into_iter().map(TemplateView::from).collect(),
    }))
}
