//! Serves the admin protocol on the node's Unix socket.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::NodeContext;
use super::admin_protocol::{AdminError, AdminRequest, AdminResponse, MAX_ADMIN_LINE};
use super::local_deploy::{LocalDeployError, deploy_local};

/// Most admin connections served at once.
const MAX_ADMIN_CONNECTIONS: usize = 64;

/// Binds the socket (owner-only) and serves it until `stop` turns true.
pub fn spawn(path: &Path, ctx: NodeContext, mut stop: watch::Receiver<bool>) -> anyhow::Result<JoinHandle<()>> {
    // A socket left by a node that died is stale: the data dir lock proves
    // no live node owns it.
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).with_context(|| format!("binding admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_CONNECTIONS));
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let Ok(permit) = slots.clone().try_acquire_owned() else {
                            tracing::warn!("admin connection refused: {MAX_ADMIN_CONNECTIONS} already open");
                            continue;
                        };
                        let ctx = ctx.clone();
                        tokio::spawn(async move {
                            if let Err(e) = serve_connection(stream, ctx).await {
                                tracing::debug!(error = %e, "admin connection ended");
                            }
                            drop(permit);
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "admin accept failed"),
                },
            }
        }
    }))
}

async fn serve_connection(stream: UnixStream, ctx: NodeContext) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader).take(MAX_ADMIN_LINE as u64 + 1).read_until(b'\n', &mut line).await?;
        if n == 0 {
            return Ok(());
        }
        let response = if line.len() > MAX_ADMIN_LINE {
            let r = refuse("too_large", format!("request longer than {MAX_ADMIN_LINE} bytes"));
            write_response(&mut write, &r).await?;
            return Ok(());
        } else {
            match serde_json::from_slice::<AdminRequest>(&line) {
                Ok(request) => handle(&ctx, request).await,
                Err(e) => refuse("bad_request", format!("not an admin request: {e}")),
            }
        };
        write_response(&mut write, &response).await?;
    }
}

async fn write_response(write: &mut tokio::net::unix::OwnedWriteHalf, response: &AdminResponse) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await
}

fn refuse(code: &str, message: String) -> AdminResponse {
    AdminResponse::Error(AdminError {
        code: code.to_string(),
        message,
    })
}

#[tracing::instrument(skip(ctx))]
async fn handle(ctx: &NodeContext, request: AdminRequest) -> AdminResponse {
    match request {
        AdminRequest::Deploy { package, version } => match deploy_local(ctx, &package, &version).await {
            Ok(done) => AdminResponse::Ok(serde_json::to_value(done).unwrap_or_default()),
            Err(e) => refuse(e.code(), e.to_string()),
        },
        AdminRequest::Stop { package } => {
            if ctx.supervisor.stop(&package).await {
                ctx.unpin(&package);
                AdminResponse::Ok(serde_json::json!({ "stopped": package }))
            } else {
                refuse(LocalDeployError::NOT_RUNNING, format!("{package} is not running on this node"))
            }
        }
        AdminRequest::Status => AdminResponse::Ok(serde_json::json!({
            "node": ctx.supervisor.node_name(),
            "cgroups": ctx.supervisor.cgroup_support(),
            "skills": ctx.supervisor.status(),
        })),
    }
}
