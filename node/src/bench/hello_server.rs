//! The baseline: a plain hyper HTTP/1.1 server answering "hello" to every
//! request, on its own runtime (as many threads as the node gets) so it
//! competes for the CPUs the way a separate server process would.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

/// The answer to every request.
pub const HELLO_BODY: &[u8] = b"hello";
/// Pause after a failed accept (out of descriptors, usually) so the loop
/// does not spin while connections close.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// A running hello server; stops when dropped.
#[derive(Debug)]
pub struct HelloServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl HelloServer {
    /// Binds `127.0.0.1:0` and serves on a new runtime of `threads` workers.
    pub fn start(threads: usize) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("bench-hello")
            .enable_all()
            .build()
            .context("starting the hello server's runtime")?;
        // Bound without `block_on`: this may be called from inside another
        // runtime (the loader's).
        let std_listener =
            std::net::TcpListener::bind(("127.0.0.1", 0)).context("binding the hello server")?;
        std_listener.set_nonblocking(true)?;
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener)?
        };
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        runtime.spawn(accept_loop(listener, stopped));
        Ok(Self {
            addr,
            stop,
            runtime: Some(runtime),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HelloServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(runtime) = self.runtime.take() {
            // Open connections end with their tasks; nothing to wait for.
            runtime.shutdown_background();
        }
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, mut stopped: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(hello);
                    // A client that goes away mid-request is not our error.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "hello server: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn hello(_request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(HELLO_BODY))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::load::{LoadConfig, LoadTarget, run_closed_loop};

    #[test]
    fn answers_hello_under_closed_loop_load() {
        let server = HelloServer::start(1).unwrap();
        let loader = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let target = LoadTarget {
            addr: server.addr(),
            path: "/".into(),
            body: Bytes::new(),
        };
        let report = loader.block_on(run_closed_loop(
            &target,
            LoadConfig {
                connections: 3,
                warmup: Duration::ZERO,
                duration: Duration::from_millis(200),
            },
        ));
        assert_eq!(report.errors, 0, "{:?}", report.error_samples);
        assert!(report.ok > 0);
        assert_eq!(report.latencies.count(), report.ok);
        assert_eq!(report.connects, 3);
    }
}
