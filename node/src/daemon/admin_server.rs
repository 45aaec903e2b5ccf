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
use super::local_deploy::{
    LocalDeployError, deploy_local, deploy_wasm, remember_deployed, restore_deployed,
    rollback_local, swap_config,
};

/// Most admin connections served at once.
const MAX_ADMIN_CONNECTIONS: usize = 64;

/// Binds the socket (owner-only) and serves it until `stop` turns true.
pub fn spawn(
    path: &Path,
    ctx: NodeContext,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<()>> {
    // A socket left by a node that died is stale: the data dir lock proves
    // no live node owns it.
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_CONNECTIONS));
    Ok(tokio::spawn(async move {
        // What the node ran before it stopped comes back first, from its
        // checkpoints; admin connections wait in the backlog meanwhile.
        restore_deployed(&ctx).await;
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
        let n = (&mut reader)
            .take(MAX_ADMIN_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let response = if line.len() > MAX_ADMIN_LINE {
            let r = refuse(
                "too_large",
                format!("request longer than {MAX_ADMIN_LINE} bytes"),
            );
            write_response(&mut write, &r).await?;
            return Ok(());
        } else {
            match serde_json::from_slice::<AdminRequest>(&line) {
                Ok(AdminRequest::Events { package }) => {
                    return stream_events(&ctx, package, &mut write).await;
                }
                Ok(AdminRequest::Fetch { package, version }) => {
                    let mut lines = super::mesh_fetch::admin_fetch(ctx.clone(), package, version);
                    while let Some(line) = lines.recv().await {
                        write_response(&mut write, &line).await?;
                    }
                    continue;
                }
                Ok(request) => handle(&ctx, request).await,
                Err(e) => refuse("bad_request", format!("not an admin request: {e}")),
            }
        };
        write_response(&mut write, &response).await?;
    }
}

async fn write_response(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    response: &AdminResponse,
) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await
}

/// Writes one line per swap event until the client goes away or the node stops.
async fn stream_events(
    ctx: &NodeContext,
    package: Option<String>,
    write: &mut tokio::net::unix::OwnedWriteHalf,
) -> std::io::Result<()> {
    let mut events = ctx.supervisor.subscribe_events();
    write_response(
        write,
        &AdminResponse::Ok(serde_json::json!({ "subscribed": true })),
    )
    .await?;
    loop {
        match events.recv().await {
            Ok(event) => {
                if package.as_ref().is_some_and(|p| *p != event.package) {
                    continue;
                }
                let value = serde_json::to_value(&event).unwrap_or_default();
                write_response(write, &AdminResponse::Ok(value)).await?;
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                let note = serde_json::json!({ "kind": "lagged", "missed": missed });
                write_response(write, &AdminResponse::Ok(note)).await?;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

fn swap_status(ctx: &NodeContext) -> Vec<crate::swap::PackageSwapStatus> {
    ctx.supervisor
        .packages()
        .into_iter()
        .filter_map(|package| {
            let journal = ctx
                .supervisor
                .route(&package)
                .map_or(0, |r| r.journal().len());
            ctx.supervisor
                .existing_package_state(&package)
                .map(|state| state.status(journal))
        })
        .collect()
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
        AdminRequest::Deploy { package, version } => {
            match deploy_local(ctx, &package, &version).await {
                Ok(done) => AdminResponse::Ok(serde_json::to_value(done).unwrap_or_default()),
                Err(e) => refuse(e.code(), e.to_string()),
            }
        }
        AdminRequest::Stop { package } => {
            if ctx.supervisor.stop(&package).await {
                ctx.unpin(&package);
                // An explicit stop forgets the package and its state.
                remember_deployed(ctx, &package, None);
                let _ = std::fs::remove_file(crate::swap::durable::checkpoint_path(
                    &ctx.data.checkpoints_dir(),
                    &package,
                ));
                AdminResponse::Ok(serde_json::json!({ "stopped": package }))
            } else {
                refuse(
                    LocalDeployError::NOT_RUNNING,
                    format!("{package} is not running on this node"),
                )
            }
        }
        AdminRequest::Mesh(request) => match ctx.mesh.get() {
            Some(mesh) => match super::mesh_admin::handle_mesh(ctx, mesh, request).await {
                Ok(value) => AdminResponse::Ok(value),
                Err((code, message)) => refuse(code, message),
            },
            None => refuse("no_mesh", "this node runs without the mesh".to_string()),
        },
        AdminRequest::DeployWasm {
            package,
            path,
            version,
            max_memory_mib,
        } => match deploy_wasm(
            ctx,
            &package,
            Path::new(&path),
            version.as_deref(),
            max_memory_mib,
        )
        .await
        {
            Ok(done) => AdminResponse::Ok(serde_json::to_value(done).unwrap_or_default()),
            Err(e) => refuse(e.code(), e.to_string()),
        },
        AdminRequest::Rollback { package } => match rollback_local(ctx, &package).await {
            Ok(event) => AdminResponse::Ok(serde_json::to_value(event).unwrap_or_default()),
            Err(e) => refuse(e.code(), e.to_string()),
        },
        AdminRequest::Checkpoint { package } => {
            match crate::swap::checkpoint(&ctx.supervisor, &package, &swap_config(ctx)).await {
                Ok(event) => AdminResponse::Ok(serde_json::to_value(event).unwrap_or_default()),
                Err(e) => refuse(e.code(), e.to_string()),
            }
        }
        AdminRequest::InjectFault { spec } => {
            crate::swap::fault::set_override(spec.clone());
            AdminResponse::Ok(serde_json::json!({ "faults": spec }))
        }
        AdminRequest::Events { .. } | AdminRequest::Fetch { .. } => refuse(
            "bad_request",
            "events and fetches are streamed on their own connection".into(),
        ),
        AdminRequest::Status => AdminResponse::Ok(serde_json::json!({
            "node": ctx.supervisor.node_name(),
            "cgroups": ctx.supervisor.cgroup_support(),
            "swap": swap_status(ctx),
            "skills": ctx.supervisor.status(),
        })),
    }
}
