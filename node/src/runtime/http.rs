//! The node's HTTP surface for the runtime: invoke, status, metrics and
//! health probes. [`router`] is the axum router of every route; [`serve`]
//! serves it with the invoke route answered first by a lean hyper service
//! (no router, extractor or body boxing on the hot path).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use super::errors::InvokeError;
use super::frame;
use super::supervisor::Supervisor;

/// Prefix of the invoke route.
const INVOKE_PREFIX: &str = "/v1/skills/";

/// Pause after a failed accept (out of descriptors, usually) so the loop
/// does not spin while connections close.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

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

/// Body of a response from [`serve`]: the invoke fast path's bytes, or
/// whatever the axum router answered.
pub type ServeBody = Either<Full<Bytes>, Body>;

/// Serves [`router`] on `listener` over HTTP/1.1 until `shutdown`
/// completes, then lets open connections finish their exchange and returns.
/// `POST /v1/skills/{package}/{op}` with a plain path is answered without
/// going through the router; every other request (including invoke paths
/// with percent-escapes) goes to the router.
pub async fn serve(
    listener: TcpListener,
    state: RuntimeHttpState,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let fallback = TowerToHyperService::new(router(state.clone()));
    let (closing, closed) = watch::channel(false);
    // Each connection task holds a sender; `recv` returns None once all ended.
    let (open, mut all_ended) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                if !is_connection_error(&error) {
                    tracing::warn!(%error, "HTTP accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                continue;
            }
        };
        // Answers are written whole; no reason to hold the last segment back.
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let fallback = fallback.clone();
        let mut closed = closed.clone();
        let open = open.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                let fallback = fallback.clone();
                async move { Ok::<_, Infallible>(answer(&state, &fallback, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                // A client that goes away mid-request is not the node's error.
                _ = connection.as_mut() => {}
                () = async { let _ = closed.wait_for(|closing| *closing).await; } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(open);
        });
    }
    let _ = closing.send(true);
    drop(open);
    let _ = all_ended.recv().await;
    Ok(())
}

/// Errors of one incoming connection, not of the listener.
fn is_connection_error(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

async fn answer(
    state: &RuntimeHttpState,
    fallback: &TowerToHyperService<Router>,
    request: hyper::Request<Incoming>,
) -> Response<ServeBody> {
    let (parts, body) = request.into_parts();
    let Some((package, op)) = invoke_target(&parts.method, parts.uri.path()) else {
        let request = hyper::Request::from_parts(parts, body);
        return match hyper::service::Service::call(fallback, request).await {
            Ok(response) => response.map(Either::Right),
            Err(never) => match never {},
        };
    };
    let op = op.to_string();
    let input = match read_input(body).await {
        Ok(input) => input,
        Err(error) => return error_response(&error).map(Either::Right),
    };
    match state.supervisor.invoke(package, op, input).await {
        Ok(output) => {
            let mut response = Response::new(Either::Left(Full::new(output)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            response
        }
        Err(error) => error_response(&error).map(Either::Right),
    }
}

/// `(package, op)` of a `POST /v1/skills/{package}/{op}` the fast path can
/// take: two non-empty segments and no percent-escape (the router decodes
/// those; the fast path leaves them to it).
fn invoke_target<'a>(method: &Method, path: &'a str) -> Option<(&'a str, &'a str)> {
    if method != Method::POST {
        return None;
    }
    let rest = path.strip_prefix(INVOKE_PREFIX)?;
    let (package, op) = rest.split_once('/')?;
    let plain = |segment: &str| !segment.is_empty() && !segment.contains(['/', '%']);
    (plain(package) && plain(op)).then_some((package, op))
}

/// The request body, refused past one frame's payload as `input_too_large`.
async fn read_input(body: Incoming) -> Result<Bytes, InvokeError> {
    let too_large = |length: usize| InvokeError::InputTooLarge {
        length,
        limit: frame::MAX_PAYLOAD,
    };
    // A Content-Length over the bound is refused before reading anything.
    if let Some(length) = body.size_hint().exact()
        && length > frame::MAX_PAYLOAD as u64
    {
        return Err(too_large(usize::try_from(length).unwrap_or(usize::MAX)));
    }
    match Limited::new(body, frame::MAX_PAYLOAD).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(too_large(frame::MAX_PAYLOAD + 1))
        }
        Err(error) => Err(InvokeError::BadRequest {
            message: format!("reading the request body: {error}"),
        }),
    }
}
