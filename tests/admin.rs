//! The admin endpoint over a real TCP socket, with raw requests.

use community_gateway::admin::{serve, serve_with, AdminState, AlertsRequest, Limits};
use community_gateway::alert::{
    AlertTransition, Location, Severity, Subject, SubjectKind, TransitionState,
};
use community_gateway::metrics::Metrics;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

struct Server {
    addr: SocketAddr,
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    /// What the stand-in for the daemon's loop answers `/alerts` with.
    alerts: Arc<Mutex<Vec<AlertTransition>>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

async fn start(limits: Option<Limits>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ready = Arc::new(AtomicBool::new(false));
    let metrics = Arc::new(Metrics::new());
    let alerts: Arc<Mutex<Vec<AlertTransition>>> = Arc::default();
    let (alerts_tx, mut requests) = mpsc::channel::<AlertsRequest>(8);
    let open = alerts.clone();
    tokio::spawn(async move {
        while let Some(reply) = requests.recv().await {
            let _ = reply.send(open.lock().unwrap().clone());
        }
    });
    let state = Arc::new(AdminState {
        metrics: metrics.clone(),
        ready: ready.clone(),
        alerts: alerts_tx,
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let task = match limits {
        None => tokio::spawn(serve(listener, state, shutdown)),
        Some(l) => tokio::spawn(serve_with(listener, state, shutdown, l)),
    };
    Server {
        addr,
        ready,
        metrics,
        alerts,
        stop: Some(stop),
        task,
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

/// Parses a whole response (the server closes after it).
fn parse_reply(raw: &[u8]) -> Reply {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head end in {:?}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(parts.next(), Some("HTTP/1.1"), "{status_line}");
    let status: u16 = parts.next().unwrap().parse().unwrap();
    assert!(parts.next().is_some_and(|r| !r.is_empty()), "reason phrase");
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(": ").unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    let reply = Reply {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    };
    assert_eq!(reply.header("Connection"), Some("close"));
    reply
}

/// Sends `raw` and reads the response to EOF.
async fn exchange(addr: SocketAddr, raw: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("response within 10 s")
        .unwrap();
    parse_reply(&out)
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n");
    let reply = exchange(addr, raw.as_bytes()).await;
    let len: usize = reply.header("Content-Length").unwrap().parse().unwrap();
    assert_eq!(len, reply.body.len());
    reply
}

fn transition(id: &str, rule: &str) -> AlertTransition {
    AlertTransition {
        alert_id: id.to_string(),
        revision: 1,
        state: TransitionState::Raised,
        rule: rule.to_string(),
        severity: Severity::Medium,
        compound: "tianlin-12".into(),
        subject: Subject {
            kind: SubjectKind::Resident,
            id: "R-0312".into(),
        },
        location: Location {
            building: Some("12".into()),
            unit: Some("1".into()),
            room: Some("502".into()),
            grid: Some("G-07".into()),
            device: None,
        },
        at: "2026-11-03T10:05:00+08:00".into(),
        since: "2026-11-02T10:05:00+08:00".into(),
        evidence: serde_json::json!({"last_seen": "2026-11-02T10:05:00+08:00", "threshold": "24h"}),
        message: "独居老人 R-0312（12号楼1单元502室）已24小时无门禁记录，请网格员上门查看".into(),
    }
}

#[tokio::test]
async fn healthz_readyz_and_metrics() {
    let srv = start(None).await;

    let r = get(srv.addr, "/healthz").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok\n");
    assert!(r.header("Content-Type").unwrap().starts_with("text/plain"));

    let r = get(srv.addr, "/readyz").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "not ready\n");
    let r = get(srv.addr, "/metrics").await;
    assert!(r.text().contains("\ncg_ready 0\n"));

    srv.ready.store(true, Ordering::SeqCst);
    let r = get(srv.addr, "/readyz").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ready\n");

    srv.metrics.received("mqtt");
    srv.metrics.rejected("invalid_json");
    let r = get(srv.addr, "/metrics").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let body = r.text();
    assert!(body.starts_with("# HELP "), "{body}");
    assert!(body.contains("# TYPE cg_events_received_total counter\n"));
    assert!(body.contains("\ncg_events_received_total{source=\"mqtt\"} 1\n"));
    assert!(body.contains("\ncg_events_rejected_total{reason=\"invalid_json\"} 1\n"));
    assert!(body.contains("\ncg_ready 1\n"));
    assert!(body.contains("\ncg_build_info{version=\""));
    assert!(body.ends_with('\n'));

    // Query strings are ignored; HTTP/1.0 and absolute-form targets work.
    assert_eq!(get(srv.addr, "/healthz?verbose=1").await.status, 200);
    let r = exchange(srv.addr, b"GET /healthz HTTP/1.0\r\n\r\n").await;
    assert_eq!((r.status, r.text()), (200, "ok\n"));
    let r = exchange(
        srv.addr,
        format!("GET http://{}/readyz HTTP/1.1\r\n\r\n", srv.addr).as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    // Bare LF line endings are tolerated.
    let r = exchange(srv.addr, b"GET /healthz HTTP/1.1\nHost: x\n\n").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn alerts_are_served_as_json() {
    let srv = start(None).await;
    let r = get(srv.addr, "/alerts").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(r.text(), "[]");

    let open = vec![
        transition("01JD0Z5K3W8Q9T7V6R5N4M3B2A", "elderly_inactivity"),
        transition("01JD0Z5K3W8Q9T7V6R5N4M3B2B", "door_forced"),
    ];
    *srv.alerts.lock().unwrap() = open.clone();
    let r = get(srv.addr, "/alerts").await;
    assert_eq!(r.status, 200);
    let parsed: Vec<AlertTransition> = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(parsed, open);
    let raw: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(raw[0]["alert_id"], "01JD0Z5K3W8Q9T7V6R5N4M3B2A");
    assert_eq!(raw[0]["subject"]["kind"], "resident");

    // A large list goes out whole.
    let many: Vec<AlertTransition> = (0..3000)
        .map(|i| transition(&format!("ID{i:024}"), "not_returned"))
        .collect();
    *srv.alerts.lock().unwrap() = many;
    let r = get(srv.addr, "/alerts").await;
    let parsed: Vec<AlertTransition> = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(parsed.len(), 3000);
    assert!(r.body.len() > 1_000_000, "{}", r.body.len());
}

#[tokio::test]
async fn methods_paths_and_head() {
    let srv = start(None).await;
    let r = get(srv.addr, "/nope").await;
    assert_eq!(r.status, 404);
    assert_eq!(get(srv.addr, "/metrics/").await.status, 404);
    assert_eq!(get(srv.addr, "/").await.status, 404);

    for method in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "BREW"] {
        let r = exchange(
            srv.addr,
            format!("{method} /metrics HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("Allow"), Some("GET, HEAD"));
    }
    // A POST with a body we never read still gets its answer.
    let mut raw = b"POST /alerts HTTP/1.1\r\nContent-Length: 20000\r\n\r\n".to_vec();
    raw.extend(std::iter::repeat_n(b'x', 20000));
    assert_eq!(exchange(srv.addr, &raw).await.status, 405);

    for path in ["/metrics", "/healthz", "/readyz", "/alerts"] {
        let full = get(srv.addr, path).await;
        let r = exchange(
            srv.addr,
            format!("HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(r.status, full.status, "{path}");
        assert!(r.body.is_empty(), "HEAD {path} has a body");
        assert_eq!(r.header("Content-Type"), full.header("Content-Type"));
        if path != "/metrics" {
            // (the metrics text changes between two scrapes: RSS)
            assert_eq!(r.header("Content-Length"), full.header("Content-Length"));
        }
    }
}

#[tokio::test]
async fn garbage_gets_400_without_waiting() {
    // A long read timeout: a 400 must come from parsing, not from the deadline.
    let srv = start(Some(Limits {
        read_timeout: Duration::from_secs(30),
        ..Limits::default()
    }))
    .await;
    let cases: &[&[u8]] = &[
        b"hello\r\n\r\n",
        b"\x00\x01\x02\x03garbage",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", // a TLS ClientHello
        b"GET /metrics\r\n\r\n",
        b"GET /metrics HTTP/1.1 trailing\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
        b"GET /\xff\xfe HTTP/1.1\r\n\r\n",
        b"GET\t/metrics HTTP/1.1\r\n\r\n",
        b"\r\n\r\n\r\n\r\n\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"GETTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTT",
    ];
    for raw in cases {
        let started = Instant::now();
        let r = exchange(srv.addr, raw).await;
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(raw));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?} took {:?}",
            String::from_utf8_lossy(raw),
            started.elapsed()
        );
    }
    let r = exchange(srv.addr, b"GET /healthz HTTP/2.0\r\n\r\n").await;
    assert_eq!(r.status, 505);
    // A head cut short by the client's close is a 400 too.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost:")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(parse_reply(&out).status, 400);
    // Still serving.
    assert_eq!(get(srv.addr, "/healthz").await.status, 200);
}

/// Panics anywhere in this test binary (none are expected from the server).
static PANICS: AtomicUsize = AtomicUsize::new(0);

#[tokio::test]
async fn random_bytes_never_panic_the_server() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info)
    }));
    let srv = start(Some(Limits {
        read_timeout: Duration::from_millis(200),
        max_connections: 64,
        ..Limits::default()
    }))
    .await;
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let prefixes: &[&[u8]] = &[b"", b"GET ", b"GET /metrics HTTP/1.1\r\n", b"HEAD /"];
    let mut handles = Vec::new();
    for i in 0..200 {
        let len = (next() % 600) as usize;
        let mut raw = prefixes[i % prefixes.len()].to_vec();
        // Bytes biased towards the ones that matter to the parser.
        const ALPHABET: &[u8] = b"\r\n :/GETHAD1.?#\x00\xff\t";
        raw.extend((0..len).map(|_| {
            let r = next();
            if r % 3 == 0 {
                ALPHABET[(r >> 8) as usize % ALPHABET.len()]
            } else {
                (r >> 16) as u8
            }
        }));
        if i % 2 == 0 {
            raw.extend_from_slice(b"\r\n\r\n");
        }
        let addr = srv.addr;
        handles.push(tokio::spawn(async move {
            let Ok(mut s) = TcpStream::connect(addr).await else {
                return;
            };
            let _ = s.write_all(&raw).await;
            let mut out = Vec::new();
            let _ = timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
            if !out.is_empty() {
                assert!(out.starts_with(b"HTTP/1.1 "), "{out:?}");
            }
        }));
        if handles.len() >= 32 {
            for h in handles.drain(..) {
                h.await.unwrap();
            }
        }
    }
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(get(srv.addr, "/healthz").await.status, 200);
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
    assert!(!srv.task.is_finished());
}

#[tokio::test]
async fn oversized_head_gets_431() {
    let srv = start(None).await;
    let mut raw = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    raw.extend(std::iter::repeat_n(b'a', 10 * 1024));
    raw.extend_from_slice(b"\r\n\r\n");
    let r = exchange(srv.addr, &raw).await;
    assert_eq!(r.status, 431);

    // Endless headers, never finished: answered as soon as the cap is
    // passed (read concurrently, so the answer is not lost to a reset).
    let (mut rd, mut wr) = TcpStream::connect(srv.addr).await.unwrap().into_split();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let line = b"X-More: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n";
        let _ = wr.write_all(b"GET / HTTP/1.1\r\n").await;
        for _ in 0..1000 {
            if wr.write_all(line).await.is_err() {
                break; // the server closed on us: fine
            }
        }
    });
    let mut out = Vec::new();
    let _ = timeout(Duration::from_secs(5), rd.read_to_end(&mut out)).await;
    assert_eq!(parse_reply(&out).status, 431);
    assert!(started.elapsed() < Duration::from_secs(4));
    writer.abort();

    // Exactly at the limit is fine.
    let mut raw = b"GET /healthz HTTP/1.1\r\nX-Filler: ".to_vec();
    let budget = 8 * 1024 - raw.len() - 4;
    raw.extend(std::iter::repeat_n(b'a', budget));
    raw.extend_from_slice(b"\r\n\r\n");
    assert_eq!(raw.len(), 8 * 1024);
    assert_eq!(exchange(srv.addr, &raw).await.status, 200);
    assert_eq!(get(srv.addr, "/healthz").await.status, 200);
}

#[tokio::test]
async fn silent_and_slow_clients_time_out_and_do_not_block_others() {
    let srv = start(Some(Limits {
        read_timeout: Duration::from_millis(1000),
        ..Limits::default()
    }))
    .await;

    // Silent: connects and sends nothing.
    let mut silent = TcpStream::connect(srv.addr).await.unwrap();
    // Slowloris: a byte every 100 ms, never finishing.
    let (mut slow_rd, mut slow_wr) = TcpStream::connect(srv.addr).await.unwrap().into_split();
    let trickler = tokio::spawn(async move {
        for b in b"GET /healthz HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            if slow_wr.write_all(&[*b]).await.is_err() {
                break;
            }
            sleep(Duration::from_millis(100)).await;
        }
    });
    let trickle = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = timeout(Duration::from_secs(5), slow_rd.read_to_end(&mut out)).await;
        out
    });

    // Others are served meanwhile, promptly.
    let started = Instant::now();
    assert_eq!(get(srv.addr, "/healthz").await.status, 200);
    assert!(started.elapsed() < Duration::from_millis(800));

    let started = Instant::now();
    let mut out = Vec::new();
    timeout(Duration::from_secs(5), silent.read_to_end(&mut out))
        .await
        .expect("the silent client is cut off")
        .unwrap();
    assert_eq!(parse_reply(&out).status, 408);
    assert!(started.elapsed() < Duration::from_secs(3));

    let out = trickle.await.unwrap();
    assert_eq!(parse_reply(&out).status, 408);
    trickler.abort();

    // A request written in small pieces within the deadline is fine.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    for piece in [
        &b"GE"[..],
        b"T /hea",
        b"lthz HTTP/1.1\r",
        b"\nHost: x\r\n",
        b"\r\n",
    ] {
        s.write_all(piece).await.unwrap();
        sleep(Duration::from_millis(50)).await;
    }
    let mut out = Vec::new();
    timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(parse_reply(&out).status, 200);
}

#[tokio::test]
async fn connections_over_the_cap_get_503() {
    let srv = start(Some(Limits {
        read_timeout: Duration::from_millis(1500),
        max_connections: 2,
        ..Limits::default()
    }))
    .await;
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let addr = srv.addr;
            tokio::spawn(async move {
                // Silent until the server gives up on us.
                let mut s = TcpStream::connect(addr).await.unwrap();
                let mut out = Vec::new();
                timeout(Duration::from_secs(5), s.read_to_end(&mut out))
                    .await
                    .unwrap()
                    .unwrap();
                parse_reply(&out).status
            })
        })
        .collect();
    sleep(Duration::from_millis(200)).await; // let the server take both
    let started = Instant::now();
    let r = exchange(srv.addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "busy\n");
    assert!(started.elapsed() < Duration::from_millis(1000));

    // Once the holders time out, service resumes.
    for h in holders {
        assert_eq!(h.await.unwrap(), 408);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let status = get(srv.addr, "/healthz").await.status;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(Instant::now() < deadline, "still busy");
        sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let mut srv = start(None).await;
    assert_eq!(get(srv.addr, "/healthz").await.status, 200);
    // A silent client does not hold up shutdown beyond the grace period.
    let _silent = TcpStream::connect(srv.addr).await.unwrap();
    sleep(Duration::from_millis(50)).await;

    let started = Instant::now();
    srv.stop.take().unwrap().send(()).unwrap();
    timeout(Duration::from_secs(3), &mut srv.task)
        .await
        .expect("serve returns after shutdown")
        .unwrap();
    assert!(started.elapsed() < Duration::from_millis(2500));

    // The listener is closed: connecting fails, or the connection is closed unanswered.
    match TcpStream::connect(srv.addr).await {
        Err(_) => {}
        Ok(mut s) => {
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").await;
            let mut out = Vec::new();
            let _ = timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
            assert!(out.is_empty(), "answered after shutdown");
        }
    }
}

#[tokio::test]
async fn alerts_answer_503_when_the_daemon_is_gone() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (alerts, requests) = mpsc::channel::<AlertsRequest>(1);
    drop(requests); // the daemon's loop has ended
    let state = Arc::new(AdminState {
        metrics: Arc::new(Metrics::new()),
        ready: Arc::new(AtomicBool::new(true)),
        alerts,
    });
    tokio::spawn(serve(listener, state, std::future::pending::<()>()));
    let r = get(addr, "/alerts").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(get(addr, "/healthz").await.status, 200);
}
