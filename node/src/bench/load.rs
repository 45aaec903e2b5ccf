//! Closed-loop HTTP/1.1 load: `connections` keep-alive connections, each
//! sending its next request as soon as the previous answer is read, every
//! latency recorded. Runs on whatever tokio runtime awaits it; the bench
//! gives it one of its own so the servers never share its threads.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::histogram::LatencyHistogram;

/// Error messages kept per run (the count is exact, the samples are not).
pub const MAX_ERROR_SAMPLES: usize = 5;
/// Longest error message kept.
pub const MAX_ERROR_TEXT: usize = 300;
/// Largest response body read; a bigger one counts as an error.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// A request unanswered this long counts as an error and its connection is
/// replaced (so a stuck server shows up as errors, not as silence).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed connect before the next try, so a refusing server
/// is not hammered in a tight loop.
pub const RECONNECT_BACKOFF: Duration = Duration::from_millis(10);

/// Where the load goes.
#[derive(Debug, Clone)]
pub struct LoadTarget {
    /// Loopback address of the server.
    pub addr: SocketAddr,
    /// Request path, e.g. `/v1/skills/dev.clawmesh.counter/add`.
    pub path: String,
    /// Body of every request.
    pub body: Bytes,
}

impl LoadTarget {
    /// `http://addr/path`, for reports.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.path)
    }
}

/// How much load, for how long.
#[derive(Debug, Clone, Copy)]
pub struct LoadConfig {
    /// Concurrent connections.
    pub connections: usize,
    /// Load before measuring (not recorded).
    pub warmup: Duration,
    /// Measured window.
    pub duration: Duration,
}

/// What one run measured. Requests still in flight when the window closes
/// are abandoned and not counted.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Latency of every successful request answered in the window.
    pub latencies: LatencyHistogram,
    /// Successful (2xx) requests answered in the window.
    pub ok: u64,
    /// Failures in the window: non-2xx answers, I/O errors, timeouts.
    pub errors: u64,
    /// Failures during the warmup.
    pub warmup_errors: u64,
    /// The first few failure messages (see [`MAX_ERROR_SAMPLES`]).
    pub error_samples: Vec<String>,
    /// Connections opened (more than `connections` means some were lost).
    pub connects: u64,
    /// Length of the measured window.
    pub window: Duration,
}

impl LoadReport {
    /// Successful requests per second over the window.
    pub fn requests_per_sec(&self) -> f64 {
        let secs = self.window.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    fn note_error(&mut self, in_window: bool, message: impl FnOnce() -> String) {
        if in_window {
            self.errors += 1;
        } else {
            self.warmup_errors += 1;
        }
        if self.error_samples.len() < MAX_ERROR_SAMPLES {
            let mut text = message();
            if text.len() > MAX_ERROR_TEXT {
                let cut = (0..=MAX_ERROR_TEXT)
                    .rev()
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(0);
                text.truncate(cut);
                text.push('…');
            }
            if !in_window {
                text.insert_str(0, "(warmup) ");
            }
            self.error_samples.push(text);
        }
    }

    fn merge(&mut self, other: &Self) {
        self.latencies.merge(&other.latencies);
        self.ok += other.ok;
        self.errors += other.errors;
        self.warmup_errors += other.warmup_errors;
        self.connects += other.connects;
        for sample in &other.error_samples {
            if self.error_samples.len() < MAX_ERROR_SAMPLES {
                self.error_samples.push(sample.clone());
            }
        }
    }
}

/// Loads `target` as `config` says and returns what was measured.
pub async fn run_closed_loop(target: &LoadTarget, config: LoadConfig) -> LoadReport {
    let start = Instant::now();
    let window = Window {
        measure_from: start + config.warmup,
        end: start + config.warmup + config.duration,
    };
    let tasks: Vec<_> = (0..config.connections)
        .map(|_| tokio::spawn(one_connection(target.clone(), window)))
        .collect();
    let mut report = LoadReport {
        window: config.duration,
        ..LoadReport::default()
    };
    for task in tasks {
        match task.await {
            Ok(part) => report.merge(&part),
            Err(e) => report.note_error(true, || format!("load task failed: {e}")),
        }
    }
    report
}

/// When recording starts and when the run ends.
#[derive(Debug, Clone, Copy)]
struct Window {
    measure_from: Instant,
    end: Instant,
}

/// Why one exchange failed.
enum ExchangeError {
    /// The server answered, not with 2xx.
    Status(hyper::StatusCode, Bytes),
    /// The connection or the protocol broke.
    Io(String),
}

async fn one_connection(target: LoadTarget, window: Window) -> LoadReport {
    let mut report = LoadReport::default();
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    while Instant::now() < window.end {
        let mut connection = match sender.take() {
            Some(s) => s,
            None => match tokio::time::timeout_at(window.end, connect(target.addr)).await {
                Err(_) => break,
                Ok(Ok(s)) => {
                    report.connects += 1;
                    s
                }
                Ok(Err(e)) => {
                    let now = Instant::now();
                    report.note_error(now >= window.measure_from, || {
                        format!("connecting to {}: {e}", target.addr)
                    });
                    tokio::time::sleep_until((now + RECONNECT_BACKOFF).min(window.end)).await;
                    continue;
                }
            },
        };
        let started = Instant::now();
        let deadline = (started + REQUEST_TIMEOUT).min(window.end);
        let outcome = tokio::time::timeout_at(deadline, exchange(&mut connection, &target)).await;
        let finished = Instant::now();
        let in_window = finished >= window.measure_from;
        match outcome {
            // The run ended with this request in flight: abandoned, uncounted.
            Err(_) if deadline == window.end => break,
            Err(_) => {
                report.note_error(in_window, || {
                    format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())
                });
            }
            Ok(Ok(())) => {
                if in_window {
                    report.ok += 1;
                    report.latencies.record(finished - started);
                }
                sender = Some(connection);
            }
            Ok(Err(ExchangeError::Status(status, body))) => {
                report.note_error(in_window, || {
                    format!("HTTP {status}: {}", String::from_utf8_lossy(&body))
                });
                sender = Some(connection);
            }
            Ok(Err(ExchangeError::Io(e))) => report.note_error(in_window, || e),
        }
    }
    report
}

async fn connect(addr: SocketAddr) -> std::io::Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    // Ends when the sender is dropped or the server closes.
    tokio::spawn(connection);
    Ok(sender)
}

async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    target: &LoadTarget,
) -> Result<(), ExchangeError> {
    sender
        .ready()
        .await
        .map_err(|e| ExchangeError::Io(format!("connection: {e}")))?;
    let request = hyper::Request::post(target.path.as_str())
        .header(hyper::header::HOST, "bench")
        .body(Full::new(target.body.clone()))
        .map_err(|e| ExchangeError::Io(format!("building the request: {e}")))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| ExchangeError::Io(format!("request: {e}")))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| ExchangeError::Io(format!("reading the response: {e}")))?
        .to_bytes();
    if status.is_success() {
        Ok(())
    } else {
        Err(ExchangeError::Status(status, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_that_is_not_there_shows_up_as_errors() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        // The listener is closed: nothing listens there any more.
        let loader = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let target = LoadTarget {
            addr,
            path: "/".into(),
            body: Bytes::new(),
        };
        let report = loader.block_on(run_closed_loop(
            &target,
            LoadConfig {
                connections: 2,
                warmup: Duration::ZERO,
                duration: Duration::from_millis(100),
            },
        ));
        assert_eq!(report.ok, 0);
        assert!(report.errors > 0);
        assert!(report.error_samples.len() <= MAX_ERROR_SAMPLES);
        assert!(
            report.error_samples[0].contains("connecting"),
            "{:?}",
            report.error_samples
        );
    }

    #[test]
    fn long_error_messages_are_cut_on_a_char_boundary() {
        let mut report = LoadReport::default();
        report.note_error(true, || "é".repeat(MAX_ERROR_TEXT));
        report.note_error(false, || "late".into());
        assert_eq!(report.errors, 1);
        assert_eq!(report.warmup_errors, 1);
        assert!(report.error_samples[0].len() <= MAX_ERROR_TEXT + '…'.len_utf8());
        assert_eq!(report.error_samples[1], "(warmup) late");
    }
}
