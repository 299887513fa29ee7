//! The local admin endpoint (SPEC §6): a minimal HTTP/1.1 server on a
//! `tokio::net::TcpListener`, hand-rolled to keep the binary small.
//!
//! | request | answer |
//! |---|---|
//! | `GET /metrics` | 200, Prometheus text format 0.0.4 ([`Metrics::render`]) |
//! | `GET /healthz` | 200 `ok` while the process runs |
//! | `GET /readyz` | 200 `ready` / 503 `not ready` ([`AdminState::ready`]) |
//! | `GET /alerts` | 200, JSON array of the open alerts (latest transition of each), built by the daemon when asked; 503 if it does not answer within 5 s |
//! | other path | 404 |
//! | other method | 405 with `Allow: GET, HEAD` |
//!
//! `HEAD` is answered like `GET` without the body; a query string is
//! ignored. Every response carries `Connection: close`: one request per
//! connection, which is all a scraper or `curl` needs.
//!
//! Robustness ([`Limits`]): the request head is capped (8 KiB, else 431), it
//! must arrive within a deadline (5 s, else 408) so a silent or trickling
//! client cannot hold a task, writes have a deadline too, and at most 16
//! connections are served at once (more are answered 503 without waiting).
//! Malformed requests get 400 (505 for an HTTP version other than 1.x);
//! nothing a client sends can panic the server. Request bodies are never
//! read.

use crate::alert::AlertTransition;
use crate::metrics::{self, Metrics};
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout, timeout_at, Instant};

/// A request for the open alerts, answered by whoever owns the engine (the
/// daemon's loop) with the latest transition of each. The list is built
/// only when asked: rebuilding it after every commit cost CPU at high event
/// rates and kept a second copy of every open alert in memory.
pub type AlertsRequest = oneshot::Sender<Vec<AlertTransition>>;

/// How long `/alerts` waits for the daemon's answer (503 after).
const ALERTS_WAIT: Duration = Duration::from_secs(5);

/// What the admin endpoint shows.
#[derive(Debug)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    /// Readiness as `/readyz` reports it (and `cg_ready` at scrape time).
    pub ready: Arc<AtomicBool>,
    /// Where `/alerts` asks for the open alerts.
    pub alerts: mpsc::Sender<AlertsRequest>,
}

/// Resource limits of the admin server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request line plus headers accepted (431 beyond).
    pub max_header_bytes: usize,
    /// Deadline for the whole request head to arrive (408 after).
    pub read_timeout: Duration,
    /// Deadline for writing a response.
    pub write_timeout: Duration,
    /// Connections served at once; more are answered 503 immediately.
    pub max_connections: usize,
    /// On shutdown, how long connections in progress may still finish.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 8 * 1024,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            max_connections: 16,
            shutdown_grace: Duration::from_secs(1),
        }
    }
}

/// Serves the admin endpoint on `listener` with the default [`Limits`]
/// until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(listener, state, shutdown, Limits::default()).await
}

/// [`serve`] with explicit limits. Returns when `shutdown` completes: the
/// listener is closed at once, connections in progress get
/// `limits.shutdown_grace` to finish and are then dropped.
pub async fn serve_with(
    listener: TcpListener,
    state: Arc<AdminState>,
    shutdown: impl Future<Output = ()>,
    limits: Limits,
) {
    let limits = Arc::new(limits);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // As many again may be told "503 busy" (a short task each); beyond
    // that, connections are closed unanswered.
    let busy_permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done {
                    tracing::warn!("admin connection task failed: {e}");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Ok(permit) = permits.clone().try_acquire_owned() {
                        let state = state.clone();
                        let limits = limits.clone();
                        tasks.spawn(async move {
                            connection(stream, &state, &limits).await;
                            drop(permit);
                        });
                    } else if let Ok(permit) = busy_permits.clone().try_acquire_owned() {
                        tracing::debug!("admin: too many connections, 503 to {peer}");
                        tasks.spawn(async move {
                            let busy = Response::text(503, "busy\n").into_bytes(false);
                            finish(stream, &busy, Duration::from_secs(1)).await;
                            drop(permit);
                        });
                    } else {
                        tracing::debug!("admin: too many connections, closing {peer}");
                    }
                }
                Err(e) => {
                    tracing::warn!("admin: accept failed: {e}");
                    if !is_per_connection(&e) {
                        // Out of descriptors or memory: back off instead of spinning.
                        sleep(Duration::from_millis(100)).await;
                    }
                }
            },
        }
    }
    drop(listener);
    let _ = timeout(limits.shutdown_grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.shutdown().await;
}

/// Accept errors that concern one connection only.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// One connection: read a request head, answer, close.
async fn connection(mut stream: TcpStream, state: &AdminState, limits: &Limits) {
    let deadline = Instant::now() + limits.read_timeout;
    let response = match timeout_at(deadline, read_head(&mut stream, limits.max_header_bytes)).await
    {
        Err(_) => Response::text(408, "request timeout\n").into_bytes(false),
        Ok(Err(HeadError::Closed)) => return,
        Ok(Err(HeadError::TooLarge)) => {
            Response::text(431, "request header too large\n").into_bytes(false)
        }
        Ok(Err(HeadError::Malformed)) => Response::text(400, "bad request\n").into_bytes(false),
        Ok(Ok(head)) => match parse(&head) {
            Ok(request) => respond(&request, state).await,
            Err(status) => Response::text(status, &format!("{}\n", reason(status).to_lowercase()))
                .into_bytes(false),
        },
    };
    finish(stream, &response, limits.write_timeout).await;
}

/// Writes the response, closes our side and lingers briefly.
async fn finish(mut stream: TcpStream, response: &[u8], write_timeout: Duration) {
    let written = timeout(write_timeout, async {
        stream.write_all(response).await?;
        stream.shutdown().await
    })
    .await;
    match written {
        Ok(Ok(())) => {
            // Read what the client may still send (a body we ignored) until it
            // closes, briefly: closing with unread data would reset the
            // connection and could destroy the response before it is read.
            let _ = timeout(Duration::from_millis(500), drain(&mut stream)).await;
        }
        Ok(Err(e)) => tracing::debug!("admin: write failed: {e}"),
        Err(_) => tracing::debug!("admin: write timed out"),
    }
}

async fn drain(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    let mut total = 0usize;
    while total < 64 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n,
        }
    }
}

#[derive(Debug)]
enum HeadError {
    /// The client closed (or failed) before sending anything.
    Closed,
    TooLarge,
    Malformed,
}

/// `tchar` of RFC 9110 (method and header names).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads up to the blank line ending the request head. Leading empty lines
/// are skipped (RFC 9112 §2.2). Fails early on a request that cannot be
/// HTTP (the method is not a token), without waiting for more.
async fn read_head(stream: &mut TcpStream, max: usize) -> Result<Vec<u8>, HeadError> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let mut skipped = 0usize;
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) if buf.is_empty() => return Err(HeadError::Closed),
            Ok(0) => return Err(HeadError::Malformed),
            Ok(n) => n,
            Err(_) if buf.is_empty() => return Err(HeadError::Closed),
            Err(_) => return Err(HeadError::Malformed),
        };
        let mut searched_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        let skip = buf
            .iter()
            .position(|b| *b != b'\r' && *b != b'\n')
            .unwrap_or(buf.len());
        if skip > 0 {
            buf.drain(..skip);
            searched_from = 0;
            skipped += skip;
            if skipped > 8 {
                return Err(HeadError::Malformed);
            }
            if buf.is_empty() {
                continue;
            }
        }
        // The method must be a short token followed by a space.
        let method_end = buf.iter().position(|b| !is_tchar(*b)).unwrap_or(buf.len());
        if method_end > 32 || (method_end < buf.len() && buf[method_end] != b' ') {
            return Err(HeadError::Malformed);
        }
        if let Some(end) = find_head_end(&buf, searched_from) {
            buf.truncate(end);
            return Ok(buf);
        }
        if buf.len() > max {
            return Err(HeadError::TooLarge);
        }
    }
}

/// The end of the head (index past the blank line), accepting bare LF.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf[i + 1..].starts_with(b"\n") {
                return Some(i + 2);
            }
            if buf[i + 1..].starts_with(b"\r\n") {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

#[derive(Debug)]
struct Request<'a> {
    method: &'a str,
    path: &'a str,
}

/// Parses the request line and checks the header lines; the error is the status to answer.
fn parse(head: &[u8]) -> Result<Request<'_>, u16> {
    let text = std::str::from_utf8(head).map_err(|_| 400u16)?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().ok_or(400u16)?;
    let mut parts = request_line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) => (m, t, v),
        _ => return Err(400),
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(400);
    }
    if target.is_empty() || target.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(400);
    }
    match version.strip_prefix("HTTP/") {
        Some("1.0" | "1.1") => {}
        Some(v)
            if v.len() == 3
                && v.as_bytes()[0].is_ascii_digit()
                && v.as_bytes()[1] == b'.'
                && v.as_bytes()[2].is_ascii_digit() =>
        {
            return Err(505)
        }
        _ => return Err(400),
    }
    for line in lines {
        if line.is_empty() {
            continue; // the blank line ending the head
        }
        let (name, _value) = line.split_once(':').ok_or(400u16)?;
        // An empty name, whitespace before the colon or an obsolete line fold are errors.
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(400);
        }
    }
    Ok(Request {
        method,
        path: path_of(target),
    })
}

/// The path of an origin-form (`/metrics?x`) or absolute-form
/// (`http://host/metrics`) target, without query or fragment.
fn path_of(target: &str) -> &str {
    let target = match target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let end = target.find(['?', '#']).unwrap_or(target.len());
    &target[..end]
}

async fn respond(request: &Request<'_>, state: &AdminState) -> Vec<u8> {
    let head_only = match request.method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return Response::text(405, "method not allowed\n")
                .header("Allow", "GET, HEAD")
                .into_bytes(false)
        }
    };
    let response = match request.path {
        "/metrics" => {
            let metrics = &state.metrics;
            metrics.set_ready(state.ready.load(Ordering::Relaxed));
            Response::new(200, metrics::CONTENT_TYPE, metrics.render().into_bytes())
        }
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" => {
            if state.ready.load(Ordering::Relaxed) {
                Response::text(200, "ready\n")
            } else {
                Response::text(503, "not ready\n")
            }
        }
        "/alerts" => match open_alerts(state).await {
            None => Response::text(503, "the gateway did not answer in time\n"),
            Some(alerts) => match serde_json::to_vec(&alerts) {
                Ok(body) => Response::new(200, "application/json", body),
                Err(e) => {
                    tracing::warn!("admin: cannot serialise open alerts: {e}");
                    Response::text(500, "internal error\n")
                }
            },
        },
        _ => Response::text(404, "not found\n"),
    };
    response.into_bytes(head_only)
}

/// The open alerts from the daemon, or `None` if it did not answer within
/// [`ALERTS_WAIT`] (or is shutting down).
async fn open_alerts(state: &AdminState) -> Option<Vec<AlertTransition>> {
    let ask = async {
        let (tx, rx) = oneshot::channel();
        state.alerts.send(tx).await.ok()?;
        rx.await.ok()
    };
    timeout(ALERTS_WAIT, ask).await.ok().flatten()
}

struct Response {
    status: u16,
    content_type: &'static str,
    extra: Option<(&'static str, &'static str)>,
    body: Vec<u8>,
}

impl Response {
    fn new(status: u16, content_type: &'static str, body: Vec<u8>) -> Self {
        Response {
            status,
            content_type,
            extra: None,
            body,
        }
    }

    fn text(status: u16, body: &str) -> Self {
        Self::new(
            status,
            "text/plain; charset=utf-8",
            body.as_bytes().to_vec(),
        )
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.extra = Some((name, value));
        self
    }

    /// The bytes on the wire; `head_only` (HEAD) keeps `Content-Length` but
    /// leaves out the body.
    fn into_bytes(self, head_only: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(160 + if head_only { 0 } else { self.body.len() });
        out.extend_from_slice(
            format!(
                "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
                self.status,
                reason(self.status).trim_end(),
                self.content_type,
                self.body.len()
            )
            .as_bytes(),
        );
        if let Some((name, value)) = self.extra {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(b"Cache-Control: no-store\r\nConnection: close\r\n\r\n");
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_lines() {
        let r = parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!((r.method, r.path), ("GET", "/metrics"));
        let r = parse(b"HEAD /alerts?pretty=1 HTTP/1.0\n\n").unwrap();
        assert_eq!((r.method, r.path), ("HEAD", "/alerts"));
        let r = parse(b"GET http://127.0.0.1:9464/readyz HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(r.path, "/readyz");
        assert_eq!(
            parse(b"GET http://host HTTP/1.1\r\n\r\n").unwrap().path,
            "/"
        );
        assert_eq!(parse(b"GET /x#frag HTTP/1.1\r\n\r\n").unwrap().path, "/x");
    }

    #[test]
    fn rejects_malformed_heads() {
        for bad in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n\r\n",
            b"GET /metrics HTTX/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\n: empty\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
            b"GET /a\x01b HTTP/1.1\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(
                parse(bad).unwrap_err(),
                400,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse(b"GET / HTTP/2.0\r\n\r\n").unwrap_err(), 505);
    }

    #[test]
    fn finds_the_end_of_the_head() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nbody", 0), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\nbody", 0), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n", 0), None);
        assert_eq!(find_head_end(b"\n", 0), None);
    }

    #[test]
    fn responses_are_well_formed() {
        let r = Response::text(405, "nope\n")
            .header("Allow", "GET, HEAD")
            .into_bytes(false);
        let text = String::from_utf8(r).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nAllow: GET, HEAD\r\n"));
        assert!(text.contains("\r\nContent-Length: 5\r\n"));
        assert!(text.ends_with("\r\n\r\nnope\n"));
        let head = String::from_utf8(Response::text(200, "ok\n").into_bytes(true)).unwrap();
        assert!(head.contains("Content-Length: 3\r\n"));
        assert!(head.ends_with("\r\n\r\n"));
    }
}
