//! Commands that talk to a running node: `deploy`, `status`, `invoke`.

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

use super::ui::Ui;
use super::{DeployArgs, InvokeArgs};
use crate::daemon::{AdminRequest, NodeInfo, admin_call};
use crate::data_dir::DataDir;

/// Largest response body `invoke` prints.
const MAX_INVOKE_RESPONSE: usize = 64 << 20;

/// Runs `clawmesh deploy`.
pub fn deploy(args: &DeployArgs) -> anyhow::Result<ExitCode> {
    let Some((package, version)) = args.target.split_once('@') else {
        bail!("{:?}: expected PKG@VERSION", args.target);
    };
    let dir = DataDir::new(&args.node.node);
    let done = admin_call(
        &dir.admin_socket(),
        &AdminRequest::Deploy {
            package: package.into(),
            version: version.into(),
        },
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    } else {
        println!(
            "{} {package}@{version} in {:.1} ms",
            Ui::from_env().ok("deployed"),
            done["millis"].as_f64().unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Renders one node's local runtime status (its workers).
pub fn render_local_status(status: &serde_json::Value, ui: &Ui) -> String {
    let mut out = format!(
        "node {}  cgroups: {}\n",
        status["node"].as_str().unwrap_or("?"),
        status["cgroups"]["version"].as_str().unwrap_or("?")
    );
    out.push_str(&format!(
        "{:<32} {:<10} {:<8} {:<10} {:>8} {:>9} {:>12}\n",
        "PACKAGE", "VERSION", "ROLE", "STATE", "PID", "RESTARTS", "MEMORY"
    ));
    for s in status["skills"].as_array().into_iter().flatten() {
        let state = s["state"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| s["state"].to_string());
        out.push_str(&format!(
            "{:<32} {:<10} {:<8} {} {:>8} {:>9} {:>12}\n",
            s["package"].as_str().unwrap_or("?"),
            s["version"].as_str().unwrap_or("?"),
            s["role"].as_str().unwrap_or("?"),
            ui.ok(&format!("{state:<10}")),
            s["pid"]
                .as_u64()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            s["restarts"].as_u64().unwrap_or(0),
            s["memory_bytes"]
                .as_u64()
                .map(|m| format!("{} KiB", m / 1024))
                .unwrap_or_else(|| "-".into()),
        ));
    }
    out
}

fn read_data(spec: Option<&str>) -> anyhow::Result<Vec<u8>> {
    match spec {
        None => Ok(Vec::new()),
        Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading stdin")?;
            Ok(buf)
        }
        Some(s) if s.starts_with('@') => {
            let path = Path::new(&s[1..]);
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        }
        Some(s) => Ok(s.as_bytes().to_vec()),
    }
}

/// Runs `clawmesh invoke`.
pub fn invoke(args: &InvokeArgs) -> anyhow::Result<ExitCode> {
    let info = NodeInfo::read(&DataDir::new(&args.node.node).node_json())?;
    let body = read_data(args.data.as_deref())?;
    let url = format!("{}/v1/skills/{}/{}", info.http, args.package, args.op);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, bytes) = runtime.block_on(http_post(&url, body))?;
    if status.is_success() {
        std::io::stdout().write_all(&bytes)?;
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) && !bytes.ends_with(b"\n") {
            println!();
        }
        Ok(ExitCode::SUCCESS)
    } else {
        let text = String::from_utf8_lossy(&bytes);
        bail!("{status}: {text}");
    }
}

/// POSTs `body` to `url` (plain HTTP/1.1, the node's own API) and returns
/// the status and the body, bounded.
pub async fn http_post(url: &str, body: Vec<u8>) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
    let uri: hyper::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
    let authority = uri.authority().context("URL without host")?.clone();
    let stream = tokio::net::TcpStream::connect(authority.as_str())
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let request = hyper::Request::post(uri.path())
        .header(hyper::header::HOST, authority.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
        .body(Full::new(Bytes::from(body)))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let limited = http_body_util::Limited::new(response.into_body(), MAX_INVOKE_RESPONSE);
    let bytes = limited
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the response: {e}"))?
        .to_bytes();
    Ok((status, bytes))
}
