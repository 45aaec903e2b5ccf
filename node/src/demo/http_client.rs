//! The smallest HTTP/1.1 client the demo needs: one POST per connection to
//! a node's loopback API. Bounded: answers over `MAX_ANSWER` bytes are an
//! error, and every call has `CALL_TIMEOUT`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Longest answer read.
pub const MAX_ANSWER: u64 = 1 << 20;
/// Longest a call may take (connect, write, read).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call did not return an answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpCallError {
    /// The URL is not `http://host:port/path`.
    #[error("url {0:?} is not http://host:port/path")]
    BadUrl(String),
    /// Connecting, writing or reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The answer is not HTTP.
    #[error("unreadable HTTP answer")]
    Malformed,
}

/// POSTs `body` to `url`; returns (status, body).
pub fn post(url: &str, body: &[u8]) -> Result<(u16, Vec<u8>), HttpCallError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HttpCallError::BadUrl(url.to_string()))?;
    let (authority, path) = rest
        .split_once('/')
        .ok_or_else(|| HttpCallError::BadUrl(url.to_string()))?;
    let addr: std::net::SocketAddr = authority
        .parse()
        .map_err(|_| HttpCallError::BadUrl(url.to_string()))?;
    let mut stream = TcpStream::connect_timeout(&addr, CALL_TIMEOUT)?;
    stream.set_read_timeout(Some(CALL_TIMEOUT))?;
    stream.set_write_timeout(Some(CALL_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut request = format!(
        "POST /{path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request)?;
    let mut answer = Vec::new();
    stream.take(MAX_ANSWER).read_to_end(&mut answer)?;
    parse(&answer)
}

fn parse(answer: &[u8]) -> Result<(u16, Vec<u8>), HttpCallError> {
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(HttpCallError::Malformed)?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(HttpCallError::Malformed)?;
    let mut body = answer[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body).ok_or(HttpCallError::Malformed)?;
    }
    Ok((status, body))
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        let chunk = data.get(eol + 2..eol + 2 + size)?;
        out.extend_from_slice(chunk);
        data = data.get(eol + 2 + size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plain_and_chunked_answers_and_refuses_garbage() {
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n12").unwrap(),
            (200, b"12".to_vec())
        );
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n12\r\n1\r\n3\r\n0\r\n\r\n").unwrap(),
            (200, b"123".to_vec())
        );
        assert!(matches!(parse(b"nothing"), Err(HttpCallError::Malformed)));
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"),
            Err(HttpCallError::Malformed)
        ));
        assert!(matches!(
            post("ftp://x/y", b""),
            Err(HttpCallError::BadUrl(_))
        ));
    }
}
