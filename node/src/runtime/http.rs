//! The node's HTTP surface for the runtime: invoke, status, metrics and
//! health probes. The daemon mounts [`router`] next to its other routes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::errors::InvokeError;
use super::frame;
use super::supervisor::Supervisor;

/// What the runtime's handlers need.
#[derive(Debug, Clone)]
pub struct RuntimeHttpState {
    /// The supervisor calls are routed through.
    pub supervisor: Supervisor,
    /// Whether the node serves: `/readyz` answers 503 while false (set it
    /// false while shutting down).
    pub serving: Arc<AtomicBool>,
}

impl RuntimeHttpState {
    /// State for a node that is serving.
    pub fn new(supervisor: Supervisor) -> Self {
        Self {
            supervisor,
            serving: Arc::new(AtomicBool::new(true)),
        }
    }
}

/// `POST /v1/skills/{package}/{op}`, `GET /v1/status`, `GET /metrics`,
/// `GET /livez`, `GET /readyz`.
pub fn router(state: RuntimeHttpState) -> Router {
    Router::new()
        .route(
            "/v1/skills/{package}/{op}",
            // A body that cannot fit in one frame is refused by axum itself.
            post(invoke).layer(DefaultBodyLimit::max(frame::MAX_PAYLOAD)),
        )
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn invoke(
    State(state): State<RuntimeHttpState>,
    Path((package, op)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    match state.supervisor.invoke(&package, op, body).await {
        Ok(output) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )],
            output,
        )
            .into_response(),
        Err(error) => error_response(&error),
    }
}

/// The HTTP status of each error code.
pub fn http_status(error: &InvokeError) -> StatusCode {
    match error {
        InvokeError::NoSuchSkill { .. } => StatusCode::NOT_FOUND,
        InvokeError::Skill { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        InvokeError::DeadlineExceeded { .. } | InvokeError::WorkerTimeout { .. } => {
            StatusCode::GATEWAY_TIMEOUT
        }
        InvokeError::MemoryLimit { .. }
        | InvokeError::Trap { .. }
        | InvokeError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        InvokeError::WorkerUnavailable { .. }
        | InvokeError::Overloaded { .. }
        | InvokeError::Paused { .. } => StatusCode::SERVICE_UNAVAILABLE,
        InvokeError::BadRequest { .. } => StatusCode::BAD_REQUEST,
        InvokeError::InputTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
    }
}

/// `{"error": {"code": ..., "message": ...}}` (plus `skill_code` for skill errors).
pub fn error_response(error: &InvokeError) -> Response {
    let mut body = json!({ "error": { "code": error.code(), "message": error.to_string() } });
    if let InvokeError::Skill { skill_code, .. } = error {
        body["error"]["skill_code"] = json!(skill_code);
    }
    (http_status(error), Json(body)).into_response()
}

async fn status(State(state): State<RuntimeHttpState>) -> Response {
    let supervisor = &state.supervisor;
    Json(json!({
        "node": supervisor.node_name(),
        "cgroups": supervisor.cgroup_support(),
        "skills": supervisor.status(),
    }))
    .into_response()
}

async fn metrics(State(state): State<RuntimeHttpState>) -> Response {
    // Refreshes the memory gauges from the cgroups.
    let _ = state.supervisor.status();
    match state.supervisor.metrics().encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn livez() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<RuntimeHttpState>) -> Response {
    let serving = state.serving.load(Ordering::Acquire);
    let skills = state.supervisor.status();
    let ready = skills
        .iter()
        .filter(|s| s.state == super::supervisor::WorkerState::Ready)
        .count();
    let body = json!({
        "ready": serving,
        "cgroups": state.supervisor.cgroup_support(),
        "skills": { "total": skills.len(), "ready": ready },
    });
    let code = if serving {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}
