//! The HTTP API: one module per resource, and the pieces they share
//! (authentication, bodies, path parameters, the router and its layers).

pub mod account;
pub mod agents;
pub mod campaigns;
pub mod connections;
pub mod error;
pub mod openapi;
pub mod ops;
pub mod opt_outs;
pub mod replies;
pub mod sessions;
pub mod templates;
pub mod triggers;
pub mod webhooks;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use herald_core::AccountId;
use serde_json::Value;

use crate::api::error::ApiError;
use crate::metrics::RequestLabels;
use crate::AppState;

/// Bodies over this get 413 (CONTRACT §1.4).
pub const MAX_BODY: usize = 64 * 1024;

pub fn router(app: AppState) -> Router {
    let mut api = Router::new()
        .route("/telephony/make-call", post(triggers::make_call))
        .route("/messaging/conversation", post(triggers::conversation))
        .route("/agents", post(agents::create).get(agents::list))
        .route(
            "/agents/{agent_id}",
            get(agents::read).patch(agents::edit).delete(agents::delete),
        )
        .route("/agents/{agent_id}/publish", post(agents::publish))
        .route(
            "/connections",
            post(connections::create).get(connections::list),
        )
        .route(
            "/connections/{connection_id}",
            get(connections::read)
                .patch(connections::edit)
                .delete(connections::delete),
        )
        .route(
            "/connections/{connection_id}/check",
            post(connections::check),
        )
        .route(
            "/whatsapp/templates",
            post(templates::create).get(templates::list),
        )
        .route("/campaigns", post(campaigns::create).get(campaigns::list))
        .route("/campaigns/{campaign_id}", get(campaigns::read))
        .route(
            "/campaigns/{campaign_id}/recipients",
            post(campaigns::add_recipients).get(campaigns::recipients),
        )
        .route("/campaigns/{campaign_id}/start", post(campaigns::start))
        .route("/campaigns/{campaign_id}/pause", post(campaigns::pause))
        .route("/campaigns/{campaign_id}/resume", post(campaigns::resume))
        .route("/campaigns/{campaign_id}/cancel", post(campaigns::cancel))
        .route("/campaigns/{campaign_id}/export", get(campaigns::export))
        .route("/opt-outs", post(opt_outs::create).get(opt_outs::list))
        .route("/opt-outs/{channel}/{to}", delete(opt_outs::delete))
        .route("/account", get(account::read))
        .route("/sessions", get(sessions::list))
        .route("/sessions/{session_id}", get(sessions::read))
        .route(
            "/sessions/{session_id}/transcript",
            get(sessions::read_transcript),
        )
        .route(
            "/sessions/{session_id}/live-agent",
            post(replies::live_agent),
        )
        .route("/simulator/inbound", post(replies::simulated))
        .route("/inbound/{channel}", post(replies::provider))
        .route(
            "/providers/{connection_id}/{webhook}",
            get(webhooks::handshake).post(webhooks::receive),
        )
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi));
    if app.config.bench_routes {
        api = api.route("/bench/noop", post(ops::noop));
    }
    api.route_layer(axum::middleware::from_fn_with_state(
        app.clone(),
        count_requests,
    ))
    .fallback(not_found)
    .method_not_allowed_fallback(method_not_allowed)
    .layer(axum::middleware::from_fn_with_state(
        app.clone(),
        buffer_body,
    ))
    .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
    .with_state(app)
}

/// What connections past the cap are served (`crate::serve`): the health
/// check, and for everything else a 503 that says to come back.
pub fn reserve_router(app: AppState) -> Router {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .fallback(|| async {
            let mut error = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Too many connections, try again shortly",
            );
            error.retry_after = Some(1);
            error
        })
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        .with_state(app)
}

/// Reads every request's body before its handler runs, within the body
/// deadline (`--body-timeout-secs`), so that a client sending a body
/// slowly holds a connection for that long at most, and no handler waits
/// on one. Bodies are small (64 KiB at most), so holding one whole costs
/// little; the handler then reads it from memory. A campaign's recipients
/// are the one exception: up to 100 000 rows, read by their handler as
/// they arrive, each part within the same deadline.
async fn buffer_body(State(app): State<AppState>, request: Request, next: Next) -> Response {
    if campaigns::streams_its_body(&request) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = match tokio::time::timeout(app.config.body_timeout, read_body(body)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(error)) => return error.into_response(),
        Err(_) => {
            let mut response = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "The request body did not arrive in time",
            )
            .into_response();
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            return response;
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

async fn count_requests(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    app.metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

async fn not_found(State(app): State<AppState>) -> ApiError {
    count_unmatched(&app, StatusCode::NOT_FOUND);
    ApiError::not_found("Route not found")
}

async fn method_not_allowed(State(app): State<AppState>) -> ApiError {
    count_unmatched(&app, StatusCode::METHOD_NOT_ALLOWED);
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
}

fn count_unmatched(app: &AppState, status: StatusCode) {
    app.metrics
        .requests
        .get_or_create(&RequestLabels {
            route: "unmatched".into(),
            status: status.as_u16(),
        })
        .inc();
}

fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error").into_response()
}

/// The account a request's key belongs to (CONTRACT §1.3): `X-Vgai-Key`, or
/// `Authorization: Bearer`.
pub fn authenticate(app: &AppState, headers: &HeaderMap) -> Result<AccountId, ApiError> {
    let key = headers
        .get("x-vgai-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    let (scheme, token) = v.split_once(' ')?;
                    scheme
                        .eq_ignore_ascii_case("bearer")
                        .then_some(token.trim())
                })
        })
        .ok_or_else(ApiError::unauthorised)?;
    app.directory
        .authenticate(key.trim())
        .ok_or_else(ApiError::unauthorised)
}

/// A route's one path parameter, as text. A parameter that is not UTF-8
/// once percent-decoded (`/agents/%FF`) is answered with the JSON error of
/// CONTRACT §1.2, not with axum's plain text.
pub struct PathParam(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(text)| PathParam(text))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

/// Reads a body of at most 64 KiB.
pub async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY).await.map_err(|e| {
        let too_big = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_big {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request body is larger than 64 KiB",
            )
        } else {
            // The client went away or broke the body mid-way.
            ApiError::bad_request(format!("Could not read the request body: {e}"))
        }
    })
}

/// Reads a body as a JSON object, whatever its Content-Type (CONTRACT §1.1).
pub async fn read_object(body: Body) -> Result<serde_json::Map<String, Value>, ApiError> {
    let bytes = read_body(body).await?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => Err(ApiError::bad_request(
            "Invalid JSON body: expected a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(format!("Invalid JSON body: {e}"))),
    }
}

/// An optional string field of an account-API body.
pub fn opt_string(
    obj: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<Option<String>, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad_request(format!("{name} must be a string"))),
    }
}

pub fn req_string(obj: &serde_json::Map<String, Value>, name: &str) -> Result<String, ApiError> {
    opt_string(obj, name)?
        .ok_or_else(|| ApiError::bad_request(format!("Missing mandatory field(s): {name}")))
}

/// The `name` of an agent or a connection: 1 to 200 characters, none of
/// them a control character.
pub fn display_name(obj: &serde_json::Map<String, Value>) -> Result<Option<String>, ApiError> {
    let name = opt_string(obj, "name")?;
    if let Some(n) = &name {
        if n.trim().is_empty() || n.chars().count() > 200 {
            return Err(ApiError::bad_request("name must be 1 to 200 characters"));
        }
        // As for templates' fields: a name is shown to people, and control
        // characters (NUL among them, which PostgreSQL cannot store) have no
        // place in one.
        if n.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "name must not contain control characters",
            ));
        }
    }
    Ok(name)
}
