//! The metrics and health endpoints: a minimal HTTP/1.1 server on tokio.
//!
//! Probes and Prometheus scrapes are `GET` requests without a body, so this
//! reads the request head only, answers with `Connection: close` and a
//! `Content-Length`, and closes. A client that does not send its request
//! head within [`READ_TIMEOUT`] or sends more than [`MAX_HEAD`] bytes is
//! dropped without an answer. Handlers are plain functions of the path.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, CONTENT_TYPE};

/// How long a client may take to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head accepted.
pub const MAX_HEAD: usize = 8 * 1024;

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// Maps a request path (without the query) to an answer.
pub type Handler = Arc<dyn Fn(&str) -> Response + Send + Sync>;

/// Parses a bind address in controller-runtime's style: `0` disables the
/// server, `:8080` listens on every interface, `127.0.0.1:8080` and
/// `[::1]:8080` on one.
pub fn parse_bind_address(s: &str) -> Result<Option<SocketAddr>, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(None);
    }
    let full = match s.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => s.to_owned(),
    };
    full.parse::<SocketAddr>().map(Some).map_err(|_| {
        format!("invalid bind address {s:?}: expected e.g. :8080, 127.0.0.1:8080 or 0 to disable")
    })
}

/// Whether one cache has synced (e.g. [`SyncedFlag::is_synced`](crate::informer::SyncedFlag::is_synced)).
pub type SyncCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// What `/healthz` and `/readyz` report.
#[derive(Clone)]
pub struct Health {
    caches: Arc<Vec<(String, SyncCheck)>>,
    shutting_down: Arc<AtomicBool>,
    /// Why the process is failing (an informer or worker died); it exits.
    failed: Arc<std::sync::Mutex<Option<String>>>,
}

impl Health {
    /// Ready once every named cache is synced.
    pub fn new(caches: Vec<(String, SyncCheck)>) -> Self {
        Self {
            caches: Arc::new(caches),
            shutting_down: Arc::new(AtomicBool::new(false)),
            failed: Arc::default(),
        }
    }

    /// From now on not ready, saying why (a task the controller needs
    /// died; the process is about to exit with an error).
    pub fn set_failed(&self, why: String) {
        *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    /// From now on not ready (the process is stopping).
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// `/readyz`: 200 once every cache has synced, 503 before and while
    /// shutting down. Leadership plays no part: a standby is ready.
    pub fn readyz(&self) -> Response {
        let mut body = String::new();
        let mut ready = true;
        for (name, check) in self.caches.iter() {
            let synced = check();
            ready &= synced;
            body.push_str(&format!(
                "[{}] informer {name}: {}\n",
                if synced { "+" } else { "-" },
                if synced { "synced" } else { "not synced" }
            ));
        }
        if let Some(why) = self
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_deref()
        {
            ready = false;
            body.push_str(&format!("[-] failed: {why}\n"));
        }
        if self.shutting_down.load(Ordering::Relaxed) {
            ready = false;
            body.push_str("[-] shutting down\n");
        }
        body.push_str(if ready {
            "readyz check passed\n"
        } else {
            "readyz check failed\n"
        });
        Response::text(if ready { 200 } else { 503 }, body)
    }

    /// `/healthz`: the process serves requests. A lost lease ends the
    /// process, so there is nothing else to report here.
    pub fn healthz(&self) -> Response {
        Response::text(200, "ok\n")
    }
}

/// The handler of the health probe server.
pub fn health_handler(health: Health) -> Handler {
    Arc::new(move |path| match path {
        "/healthz" | "/livez" => health.healthz(),
        "/readyz" => health.readyz(),
        _ => Response::text(404, "not found\n"),
    })
}

/// The handler of the metrics server.
pub fn metrics_handler(metrics: Metrics) -> Handler {
    Arc::new(move |path| match path {
        "/metrics" => Response {
            status: 200,
            content_type: CONTENT_TYPE,
            body: metrics.encode(),
        },
        _ => Response::text(404, "not found\n"),
    })
}

/// Binds `addr`; fails at once if it is taken, so a misconfiguration shows
/// at startup.
pub async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("{what}: cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    log::info!("{what} listening on {local}");
    Ok(listener)
}

/// Serves connections on `listener` until `cancel` fires.
pub async fn serve(listener: TcpListener, handler: Handler, cancel: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    log::warn!("accepting a connection: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(err) = answer(stream, &handler).await {
                log::debug!("HTTP connection: {err}");
            }
        });
    }
}

/// Reads one request head and writes one answer.
async fn answer(mut stream: TcpStream, handler: &Handler) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let complete = timeout(READ_TIMEOUT, async {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(false);
            }
            head.extend_from_slice(&buf[..n]);
            if head.len() > MAX_HEAD {
                return Ok(false);
            }
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(true);
            }
        }
    })
    .await;
    let response = match complete {
        Ok(Ok(true)) => route(&head, handler),
        Ok(Ok(false)) | Err(_) => return Ok(()),
        Ok(Err(err)) => return Err(err),
    };
    let head_only = head.starts_with(b"HEAD ");
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(response.body.as_bytes());
    }
    stream.write_all(&out).await?;
    stream.shutdown().await
}

/// The answer to a complete request head.
fn route(head: &[u8], handler: &Handler) -> Response {
    let line = head
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Response::text(400, "bad request\n");
    };
    if method != "GET" && method != "HEAD" {
        return Response::text(405, "only GET and HEAD\n");
    }
    let path = target.split('?').next().unwrap_or_default();
    handler(path)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_addresses() {
        assert_eq!(parse_bind_address("0"), Ok(None));
        assert_eq!(
            parse_bind_address(":8080"),
            Ok(Some("0.0.0.0:8080".parse().unwrap()))
        );
        assert_eq!(
            parse_bind_address("127.0.0.1:9"),
            Ok(Some("127.0.0.1:9".parse().unwrap()))
        );
        assert_eq!(
            parse_bind_address("[::1]:9"),
            Ok(Some("[::1]:9".parse().unwrap()))
        );
        for bad in ["", "8080", "localhost:80", ":x", "1.2.3.4"] {
            assert!(parse_bind_address(bad).is_err(), "{bad}");
        }
    }

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let _ = stream.write_all(request.as_bytes()).await;
        let mut out = Vec::new();
        // A connection the server drops may end in a reset: keep what came.
        let _ = stream.read_to_end(&mut out).await;
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn serves_readyz_healthz_and_errors() {
        let synced = Arc::new(AtomicBool::new(false));
        let check: SyncCheck = {
            let synced = synced.clone();
            Arc::new(move || synced.load(Ordering::Relaxed))
        };
        let health = Health::new(vec![("pods".into(), check)]);
        let listener = bind("127.0.0.1:0".parse().unwrap(), "health")
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            health_handler(health.clone()),
            cancel.clone(),
        ));

        let req = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: t\r\n\r\n");
        let out = get(addr, &req("/readyz")).await;
        assert!(out.starts_with("HTTP/1.1 503 "), "{out}");
        assert!(out.contains("informer pods: not synced"), "{out}");
        assert!(get(addr, &req("/healthz"))
            .await
            .starts_with("HTTP/1.1 200 "));

        synced.store(true, Ordering::Relaxed);
        let out = get(addr, &req("/readyz?verbose")).await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("Content-Length: "), "{out}");
        assert!(out.ends_with("readyz check passed\n"), "{out}");

        // A dead informer or worker: not ready, saying which.
        let failing = health.clone();
        failing.set_failed("the pods informer stopped".into());
        let out = get(addr, &req("/readyz")).await;
        assert!(out.starts_with("HTTP/1.1 503 "), "{out}");
        assert!(
            out.contains("[-] failed: the pods informer stopped"),
            "{out}"
        );

        health.set_shutting_down();
        assert!(get(addr, &req("/readyz"))
            .await
            .starts_with("HTTP/1.1 503 "));
        assert!(get(addr, &req("/nope")).await.starts_with("HTTP/1.1 404 "));
        let post = get(addr, "POST /healthz HTTP/1.1\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405 "));
        let head = get(addr, "HEAD /healthz HTTP/1.1\r\n\r\n").await;
        assert!(head.ends_with("\r\n\r\n"), "no body for HEAD: {head:?}");
        let huge = format!(
            "GET /healthz HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        assert_eq!(get(addr, &huge).await, "", "too large: dropped");

        cancel.cancel();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn serves_metrics() {
        let metrics = Metrics::new();
        metrics.set_leader(true);
        let listener = bind("127.0.0.1:0".parse().unwrap(), "metrics")
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        tokio::spawn(serve(listener, metrics_handler(metrics), cancel.clone()));
        let out = get(addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")));
        assert!(out.contains("\nbitcoin_controller_leader 1\n"), "{out}");
        assert!(out.ends_with("# EOF\n"));
        cancel.cancel();
    }
}
