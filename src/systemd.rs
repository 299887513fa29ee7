//! systemd integration without libsystemd and without `unsafe`: the
//! `sd_notify` protocol (one datagram of `KEY=VALUE` lines to the socket
//! named by `$NOTIFY_SOCKET`) and the watchdog settings.
//!
//! The daemon's side of the contract with `systemd/community-gateway.service`
//! (`Type=notify`, `WatchdogSec=`, `ExecReload=kill -HUP`):
//!
//! 1. [`ready`] once the store is open and the sources are started;
//! 2. [`watchdog_ping`] every [`watchdog_ping_period`] from the main loop (so
//!    a wedged loop is restarted);
//! 3. on `SIGHUP`: [`reloading`], reload, then [`ready`] again, whether the
//!    new configuration was taken or rejected, with [`status`] saying which;
//! 4. [`stopping`] when shutdown begins.
//!
//! Every function returns `Ok(false)` when not running under systemd (no
//! `NOTIFY_SOCKET`), so callers can ignore the result outside systemd.
//! The environment is only read, never changed.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` (newline-separated `KEY=VALUE` assignments, e.g.
/// `"READY=1"`) to the service manager. `Ok(false)`: `$NOTIFY_SOCKET` is
/// not set, not under systemd. `Ok(true)`: sent.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        None => Ok(false),
        Some(socket) if socket.is_empty() => Ok(false),
        Some(socket) => {
            let socket = socket.to_str().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "NOTIFY_SOCKET is not UTF-8")
            })?;
            notify_to(socket, state).map(|()| true)
        }
    }
}

/// `READY=1`: start-up (or a reload) is complete.
pub fn ready() -> io::Result<bool> {
    notify("READY=1")
}

/// `STOPPING=1`: shutdown has begun.
pub fn stopping() -> io::Result<bool> {
    notify("STOPPING=1")
}

/// `RELOADING=1` with `MONOTONIC_USEC=`, which systemd ≥ 253 requires to
/// accept a reload notification under `Type=notify-reload` (older versions
/// ignore it). Send [`ready`] when the reload is over.
pub fn reloading() -> io::Result<bool> {
    notify(&reloading_message())
}

/// `WATCHDOG=1`: the main loop is alive.
pub fn watchdog_ping() -> io::Result<bool> {
    notify("WATCHDOG=1")
}

/// `STATUS=…`: one line shown by `systemctl status`. Newlines (which would
/// start another assignment) are replaced by spaces.
pub fn status(text: &str) -> io::Result<bool> {
    notify(&status_message(text))
}

/// The watchdog timeout systemd expects pings within (`$WATCHDOG_USEC`),
/// or `None` when the watchdog is off or meant for another process
/// (`$WATCHDOG_PID` set and not ours). Ping at least twice per interval:
/// see [`watchdog_ping_period`].
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// Half of [`watchdog_interval`], the usual ping period.
pub fn watchdog_ping_period() -> Option<Duration> {
    watchdog_interval().map(|d| d / 2)
}

/// Sends one datagram to `socket`: a filesystem path (`/run/systemd/notify`)
/// or, with a leading `@`, a Linux abstract socket name.
fn notify_to(socket: &str, state: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let sent = if let Some(name) = socket.strip_prefix('@') {
        send_abstract(&sock, name.as_bytes(), state.as_bytes())?
    } else if socket.starts_with('/') {
        sock.send_to(state.as_bytes(), socket)?
    } else {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("unsupported NOTIFY_SOCKET address {socket:?}"),
        ));
    };
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "notification datagram truncated",
        ));
    }
    Ok(())
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_abstract(sock: &UnixDatagram, name: &[u8], data: &[u8]) -> io::Result<usize> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    sock.send_to_addr(data, &addr)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_abstract(_sock: &UnixDatagram, _name: &[u8], _data: &[u8]) -> io::Result<usize> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract sockets exist on Linux only",
    ))
}

fn reloading_message() -> String {
    match monotonic_usec() {
        Some(usec) => format!("RELOADING=1\nMONOTONIC_USEC={usec}"),
        None => "RELOADING=1".to_string(),
    }
}

fn status_message(text: &str) -> String {
    format!("STATUS={}", text.replace(['\n', '\r'], " "))
}

fn watchdog_from(usec: Option<&str>, pid: Option<&str>, our_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(our_pid) {
            return None;
        }
    }
    match usec?.trim().parse::<u64>().ok()? {
        0 => None,
        usec => Some(Duration::from_micros(usec)),
    }
}

/// `CLOCK_MONOTONIC` in microseconds, which is what systemd compares
/// `MONOTONIC_USEC` with. std offers no safe accessor: on Linux `Instant`
/// is `CLOCK_MONOTONIC` and its `Debug` shows the `timespec`; if that ever
/// changes, `/proc/uptime` (boot time, never behind the monotonic clock;
/// rounded up) stands in.
fn monotonic_usec() -> Option<u64> {
    let debug = format!("{:?}", std::time::Instant::now());
    instant_debug_usec(&debug).or_else(uptime_usec)
}

fn instant_debug_usec(debug: &str) -> Option<u64> {
    let field = |name: &str| -> Option<u64> {
        let start = debug.find(name)? + name.len();
        let digits: String = debug[start..]
            .chars()
            .skip_while(|c| *c == ':' || *c == ' ')
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.parse().ok()
    };
    let sec = field("tv_sec")?;
    let nsec = field("tv_nsec")?;
    if nsec >= 1_000_000_000 {
        return None;
    }
    sec.checked_mul(1_000_000)?.checked_add(nsec / 1_000)
}

fn uptime_usec() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let first = text.split_whitespace().next()?;
    let (sec, frac) = first.split_once('.').unwrap_or((first, "0"));
    let sec: u64 = sec.parse().ok()?;
    let frac_digits = frac.len().min(6) as u32;
    let frac: u64 = frac.get(..frac_digits as usize)?.parse().ok()?;
    let usec = sec * 1_000_000 + frac * 10u64.pow(6 - frac_digits);
    // /proc/uptime has 10 ms resolution: round up so we are never early.
    Some(usec + 10_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(dir: &std::path::Path) -> (UnixDatagram, String) {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (sock, path.to_str().unwrap().to_string())
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, path) = bound(dir.path());
        notify_to(&path, "READY=1").unwrap();
        assert_eq!(recv(&sock), "READY=1");
        notify_to(&path, &status_message("replaying\nline two")).unwrap();
        assert_eq!(recv(&sock), "STATUS=replaying line two");
        notify_to(&path, "WATCHDOG=1").unwrap();
        assert_eq!(recv(&sock), "WATCHDOG=1");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("community-gateway-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        notify_to(&format!("@{name}"), "STOPPING=1").unwrap();
        assert_eq!(recv(&sock), "STOPPING=1");
    }

    #[test]
    fn reports_a_missing_or_unsupported_socket() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nobody-listens");
        assert!(notify_to(missing.to_str().unwrap(), "READY=1").is_err());
        let e = notify_to("vsock:2:1234", "READY=1").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
    }

    #[test]
    fn not_under_systemd_is_ok_false() {
        // Only meaningful where the test runner is not itself a notify service.
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            assert!(!ready().unwrap());
            assert!(!watchdog_ping().unwrap());
            assert!(!status("x").unwrap());
        }
    }

    #[test]
    fn reloading_carries_the_monotonic_time() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, path) = bound(dir.path());
        let before = monotonic_usec().unwrap();
        notify_to(&path, &reloading_message()).unwrap();
        let msg = recv(&sock);
        let mut lines = msg.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"));
        let usec: u64 = lines
            .next()
            .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
            .unwrap()
            .parse()
            .unwrap();
        assert!(usec >= before);
        assert!(usec - before < 5_000_000);
    }

    #[test]
    fn monotonic_time_matches_the_kernel_clock() {
        let debug = instant_debug_usec(&format!("{:?}", std::time::Instant::now()));
        assert!(debug.is_some(), "Instant's Debug format changed");
        assert_eq!(
            instant_debug_usec("Instant { tv_sec: 1748, tv_nsec: 86507917 }"),
            Some(1_748_086_507)
        );
        assert_eq!(instant_debug_usec("Instant { tv_nsec: 5 }"), None);
        assert_eq!(
            instant_debug_usec("Instant { tv_sec: 1, tv_nsec: 1000000000 }"),
            None
        );
        // CLOCK_MONOTONIC never runs ahead of CLOCK_BOOTTIME (/proc/uptime).
        if let (Some(mono), Some(boot)) = (debug, uptime_usec()) {
            assert!(mono <= boot, "monotonic {mono} > boottime {boot}");
        }
    }

    #[test]
    fn watchdog_settings() {
        let me = 4242;
        assert_eq!(
            watchdog_from(Some("30000000"), None, me),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_from(Some("30000000"), Some("4242"), me),
            Some(Duration::from_secs(30))
        );
        assert_eq!(watchdog_from(Some("30000000"), Some("1"), me), None);
        assert_eq!(watchdog_from(Some("30000000"), Some("junk"), me), None);
        assert_eq!(watchdog_from(Some("0"), None, me), None);
        assert_eq!(watchdog_from(Some("-5"), None, me), None);
        assert_eq!(watchdog_from(Some("abc"), None, me), None);
        assert_eq!(watchdog_from(None, Some("4242"), me), None);
    }
}
