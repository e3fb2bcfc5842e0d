//! The scrape endpoint: a few lines of `std::net` for one GET, on threads
//! of its own, so a scrape is answered even while the daemon's supervisor
//! is busy with a takeover (its tokio runtime has no network stack).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Metrics;

/// Connections answered at once; more wait in the listen queue.
const MAX_CLIENTS: usize = 8;
/// Largest request head read.
const MAX_HEAD: usize = 8192;
/// How long a client may take to send its request or read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds `addr` (a `metrics_listen` value): the daemon binds before it
/// reports ready, so a taken port fails `capra start` and not a scrape.
pub fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in addr.to_socket_addrs()? {
        match TcpListener::bind(a) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "the name resolves to no address")))
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub fn serve(listener: TcpListener, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let busy = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("capra-metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else {
                    // Out of file descriptors, say: wait rather than spin.
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                // Wait for a free slot: a slow client holds one slot for at
                // most CLIENT_TIMEOUT, never the whole endpoint.
                while busy.load(Ordering::SeqCst) >= MAX_CLIENTS {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let slot = Slot::take(&busy);
                let m = metrics.clone();
                let _ = std::thread::Builder::new().name("capra-scrape".into()).spawn(move || {
                    let _slot = slot;
                    answer(stream, &m);
                });
            }
        })
        .map(|_| ())
}

/// One of the MAX_CLIENTS slots, given back when dropped (a panic too).
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(busy: &Arc<AtomicUsize>) -> Slot {
        busy.fetch_add(1, Ordering::SeqCst);
        Slot(busy.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The time left before `deadline`, None once it passed.
fn left(deadline: Instant) -> Option<Duration> {
    let d = deadline.saturating_duration_since(Instant::now());
    (!d.is_zero()).then_some(d)
}

/// Reads one request head and answers it, all within CLIENT_TIMEOUT
/// however slowly the client sends or reads; errors just close the
/// connection.
fn answer(mut s: TcpStream, metrics: &Metrics) {
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let Some(t) = left(deadline) else { return };
        let _ = s.set_read_timeout(Some(t));
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > MAX_HEAD {
            break;
        }
    }
    let (status, extra, body) = respond(&head, metrics);
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    if !head.starts_with(b"HEAD ") {
        out.extend_from_slice(&body);
    }
    let mut sent = 0;
    while sent < out.len() {
        let Some(t) = left(deadline) else { return };
        let _ = s.set_write_timeout(Some(t));
        match s.write(&out[sent..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => sent += n,
        }
    }
}

/// The status line, extra header lines and body for a request head.
fn respond(head: &[u8], metrics: &Metrics) -> (&'static str, String, Vec<u8>) {
    let text = |t: &str| t.as_bytes().to_vec();
    let plain = "Content-Type: text/plain; charset=utf-8\r\n".to_string();
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return ("400 Bad Request", plain, text("bad request\n"));
    };
    if !version.starts_with("HTTP/") {
        return ("400 Bad Request", plain, text("bad request\n"));
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return ("404 Not Found", plain, text("capra serves its metrics at /metrics\n"));
    }
    if method != "GET" && method != "HEAD" {
        return (
            "405 Method Not Allowed",
            format!("Allow: GET, HEAD\r\n{plain}"),
            text("use GET\n"),
        );
    }
    (
        "200 OK",
        "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n".to_string(),
        metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(addr: std::net::SocketAddr, req: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(req).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn answers_get_head_and_refuses_the_rest() {
        let l = bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        serve(l, Arc::new(Metrics::new(|| false))).unwrap();
        // A client that connects and says nothing holds only its own slot.
        let _silent = TcpStream::connect(addr).unwrap();
        let got = ask(addr, b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(
            got.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{got}"
        );
        assert!(got.contains("\r\n\r\n# HELP capra_build_info"), "{got}");
        assert!(got.contains("capra_daemon_leader 0\n"), "{got}");
        let (head, body) = got.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())), "{head}");
        let got = ask(addr, b"HEAD /metrics HTTP/1.0\r\n\r\n");
        assert!(got.starts_with("HTTP/1.1 200 OK") && got.ends_with("\r\n\r\n"), "{got}");
        assert!(ask(addr, b"GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        let got = ask(addr, b"POST /metrics HTTP/1.1\r\n\r\n");
        assert!(
            got.starts_with("HTTP/1.1 405") && got.contains("Allow: GET, HEAD\r\n"),
            "{got}"
        );
        assert!(ask(addr, b"hello\r\n\r\n").starts_with("HTTP/1.1 400"));
    }

    /// Clients that send a byte a second hold their slot for at most
    /// CLIENT_TIMEOUT: with every slot taken by them, a scrape still gets
    /// its answer within about that time.
    #[test]
    fn dribbling_clients_cannot_stall_the_endpoint() {
        let l = bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        serve(l, Arc::new(Metrics::new(|| true))).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut dribblers = Vec::new();
        for _ in 0..MAX_CLIENTS {
            let stop = stop.clone();
            let mut c = TcpStream::connect(addr).unwrap();
            dribblers.push(std::thread::spawn(move || {
                let t = Instant::now();
                while !stop.load(Ordering::SeqCst) && c.write_all(b"G").is_ok() {
                    std::thread::sleep(Duration::from_millis(300));
                }
                t.elapsed()
            }));
        }
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        let got = ask(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        let waited = t.elapsed();
        stop.store(true, Ordering::SeqCst);
        assert!(got.contains("capra_daemon_leader 1\n"), "{got}");
        assert!(waited < CLIENT_TIMEOUT + Duration::from_secs(2), "{waited:?}");
        for d in dribblers {
            // Each was cut off at its deadline (a write fails once closed).
            assert!(d.join().unwrap() < CLIENT_TIMEOUT + Duration::from_secs(3));
        }
    }

    #[test]
    fn a_taken_port_is_an_error() {
        let l = bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let e = bind(&addr).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    }
}
