//! Operations: health, metrics, the OpenAPI document, and the benchmark's
//! baseline route.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::api::error::{ApiError, ErrorBody};
use crate::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Whether the service can serve
#[utoipa::path(get, path = "/healthz", operation_id = "get_health", tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
pub async fn healthz(State(app): State<AppState>) -> Result<Json<Health>, ApiError> {
    // Serving means the store answers.
    app.store.revisions().await.map_err(|e| {
        tracing::error!(error = %e, "health check: store unavailable");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Store unavailable")
    })?;
    Ok(Json(Health { status: "ok" }))
}

// The body is the OpenMetrics text format, which Prometheus scrapes; the
// content type says so, as the document does.
/// Prometheus metrics
#[utoipa::path(get, path = "/metrics", operation_id = "get_metrics", tag = "operations",
    responses((status = 200, description = "Prometheus metrics in the OpenMetrics text format",
        body = String, content_type = "application/openmetrics-text")))]
pub async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

/// This document
#[utoipa::path(get, path = "/openapi.json", operation_id = "get_openapi", tag = "operations",
    responses((status = 200, description = "This document", content_type = "application/json")))]
pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::api::openapi::document(),
    )
        .into_response()
}

/// Parses a JSON body and answers a small JSON object: the work every API
/// route does at least, and nothing more. Served only when benchmarking.
pub async fn noop(body: Body) -> Result<Json<serde_json::Value>, ApiError> {
    let obj = super::read_object(body).await?;
    Ok(Json(serde_json::json!({"ok": true, "fields": obj.len()})))
}
