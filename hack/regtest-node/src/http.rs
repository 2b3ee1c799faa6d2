//! A minimal HTTP/1.1 server for JSON-RPC, behaving like bitcoind's:
//! POST only, Basic auth (401 with `WWW-Authenticate`, 250 ms delay on a wrong
//! password), keep-alive, 30 s idle timeout (Core's -rpcservertimeout).

use crate::{rpc, Shared};
use base64::Engine;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX_HEADERS_SIZE: usize = 8192;
/// Core's MAX_SIZE for a request body.
const MAX_BODY: usize = 0x0200_0000;
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const WRONG_PASSWORD_DELAY: Duration = Duration::from_millis(250);

pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                shared.tasks.spawn(connection(shared.clone(), stream));
            }
            Err(e) => {
                log::warn!("RPC accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

struct Request {
    method: String,
    path: String,
    keep_alive: bool,
    authorization: Option<String>,
    expect_continue: bool,
    body: Vec<u8>,
}

enum ReadError {
    /// Peer closed, timed out, or the node is stopping: just close.
    Closed,
    /// Malformed or too large: answer 400 and close.
    Bad,
}

/// Read one request; `buf` keeps bytes of a pipelined next request.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Request, ReadError> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let header = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
                };
                if header("transfer-encoding").is_some() {
                    return Err(ReadError::Bad);
                }
                let len = match header("content-length") {
                    Some(v) => v.parse::<usize>().map_err(|_| ReadError::Bad)?,
                    None => 0,
                };
                if len > MAX_BODY {
                    return Err(ReadError::Bad);
                }
                let connection = header("connection").map(|c| c.to_ascii_lowercase());
                let keep_alive = match req.version {
                    Some(1) => connection.as_deref() != Some("close"),
                    _ => connection.as_deref() == Some("keep-alive"),
                };
                let mut out = Request {
                    method: req.method.unwrap_or_default().to_string(),
                    path: req.path.unwrap_or_default().to_string(),
                    keep_alive,
                    authorization: header("authorization"),
                    expect_continue: header("expect")
                        .is_some_and(|e| e.eq_ignore_ascii_case("100-continue")),
                    body: Vec::new(),
                };
                buf.drain(..head_len);
                if out.expect_continue && buf.len() < len {
                    stream
                        .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                        .await
                        .map_err(|_| ReadError::Closed)?;
                }
                while buf.len() < len {
                    buf.reserve(len - buf.len());
                    if stream.read_buf(buf).await.map_err(|_| ReadError::Closed)? == 0 {
                        return Err(ReadError::Closed);
                    }
                }
                out.body = buf.drain(..len).collect();
                return Ok(out);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEADERS_SIZE => {}
            _ => return Err(ReadError::Bad),
        }
        buf.reserve(1024);
        if stream.read_buf(buf).await.map_err(|_| ReadError::Closed)? == 0 {
            return Err(ReadError::Closed);
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    }
}

struct Response {
    status: u16,
    json: bool,
    body: String,
}

impl Response {
    fn plain(status: u16, body: &str) -> Response {
        Response {
            status,
            json: false,
            body: body.to_string(),
        }
    }
}

fn credentials(header: &str) -> Option<(String, String)> {
    let encoded = header.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

fn authorized(shared: &Shared, user: &str, pass: &str) -> bool {
    format!("{user}:{pass}") == shared.cookie || shared.config.check_credentials(user, pass)
}

async fn respond_to(shared: &Arc<Shared>, req: &Request) -> Response {
    if req.path != "/" && !req.path.starts_with("/wallet/") {
        return Response::plain(404, "");
    }
    if req.method != "POST" {
        return Response::plain(405, "JSONRPC server handles only POST requests");
    }
    let Some(auth) = &req.authorization else {
        return Response::plain(401, "");
    };
    let ok = credentials(auth).is_some_and(|(u, p)| authorized(shared, &u, &p));
    if !ok {
        log::warn!("ThreadRPCServer incorrect password attempt");
        tokio::time::sleep(WRONG_PASSWORD_DELAY).await;
        return Response::plain(401, "");
    }
    let (status, body) = rpc::handle_body(shared, &req.body);
    Response {
        status,
        json: body.is_some(),
        body: body.unwrap_or_default(),
    }
}

async fn connection(shared: Arc<Shared>, mut stream: TcpStream) {
    let mut buf = Vec::new();
    let mut hang = shared.rpc_hang.subscribe();
    loop {
        let read = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = tokio::time::timeout(IDLE_TIMEOUT, read_request(&mut stream, &mut buf)) => {
                r.unwrap_or(Err(ReadError::Closed))
            }
        };
        let req = match read {
            Ok(req) => req,
            Err(ReadError::Closed) => return,
            Err(ReadError::Bad) => {
                let _ = write(&mut stream, &Response::plain(400, ""), false).await;
                return;
            }
        };
        // Fault injection: hold the request until the hang is lifted.
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = hang.wait_for(|h| !*h) => {}
        }
        let resp = respond_to(&shared, &req).await;
        if write(&mut stream, &resp, req.keep_alive).await.is_err() || !req.keep_alive {
            return;
        }
    }
}

async fn write(stream: &mut TcpStream, resp: &Response, keep_alive: bool) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    if resp.status == 401 {
        head.push_str("WWW-Authenticate: Basic realm=\"jsonrpc\"\r\n");
    }
    if resp.json {
        head.push_str("Content-Type: application/json\r\n");
    } else if !resp.body.is_empty() {
        head.push_str("Content-Type: text/html; charset=ISO-8859-1\r\n");
    }
    if resp.status != 204 {
        head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    }
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    head.push_str(&resp.body);
    stream.write_all(head.as_bytes()).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::start_node;

    async fn post(
        addr: std::net::SocketAddr,
        auth: Option<&str>,
        body: &str,
    ) -> (u16, String, String) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let auth = auth
            .map(|a| {
                let enc = base64::engine::general_purpose::STANDARD.encode(a);
                format!("Authorization: Basic {enc}\r\n")
            })
            .unwrap_or_default();
        let req = format!(
            "POST / HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        let status = head[9..12].parse().unwrap();
        (status, head.to_string(), body.to_string())
    }

    const BODY: &str = r#"{"jsonrpc":"1.0","id":1,"method":"getblockcount","params":[]}"#;

    #[tokio::test]
    async fn basic_auth_like_bitcoind() {
        let (node, _dir) = start_node("127.0.0.1", "alice", "pw").await;
        let addr = node.rpc_addr();
        let (status, head, _) = post(addr, None, BODY).await;
        assert_eq!(status, 401);
        assert!(head.contains("WWW-Authenticate: Basic realm=\"jsonrpc\""));
        assert_eq!(post(addr, Some("alice:wrong"), BODY).await.0, 401);
        assert_eq!(post(addr, Some("mallory:pw"), BODY).await.0, 401);
        let (status, head, body) = post(addr, Some("alice:pw"), BODY).await;
        assert_eq!(status, 200);
        assert!(head.contains("Content-Type: application/json"));
        assert_eq!(body, "{\"error\":null,\"id\":1,\"result\":0}\n");
        assert_eq!(post(addr, Some(node.cookie()), BODY).await.0, 200);
        node.stop().await;
    }

    #[tokio::test]
    async fn keep_alive_and_method_check() {
        let (node, _dir) = start_node("127.0.0.1", "alice", "pw").await;
        let mut s = TcpStream::connect(node.rpc_addr()).await.unwrap();
        let enc = base64::engine::general_purpose::STANDARD.encode("alice:pw");
        let req = format!(
            "POST / HTTP/1.1\r\nAuthorization: Basic {enc}\r\nContent-Length: {}\r\n\r\n{BODY}",
            BODY.len()
        );
        // Two requests pipelined on one connection, then a GET.
        s.write_all(format!("{req}{req}GET / HTTP/1.1\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
        assert!(out.contains("HTTP/1.1 405 Method Not Allowed"));
        assert!(out.ends_with("JSONRPC server handles only POST requests"));
        node.stop().await;
    }

    #[tokio::test]
    async fn rpc_hang_holds_requests_until_lifted() {
        let (node, _dir) = start_node("127.0.0.1", "alice", "pw").await;
        node.set_rpc_hang(true);
        let addr = node.rpc_addr();
        let pending = tokio::spawn(async move { post(addr, Some("alice:pw"), BODY).await.0 });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!pending.is_finished(), "a hung node must not answer");
        node.set_rpc_hang(false);
        assert_eq!(pending.await.unwrap(), 200);
        node.stop().await;
    }

    #[tokio::test]
    async fn cookie_file_and_rpc_stop() {
        let (node, dir) = start_node("127.0.0.1", "alice", "pw").await;
        let cookie_path = dir.path().join("regtest/.cookie");
        assert_eq!(
            std::fs::read_to_string(&cookie_path).unwrap(),
            node.cookie()
        );
        let (user, secret) = node.cookie().split_once(':').unwrap();
        assert_eq!((user, secret.len()), ("__cookie__", 64));
        let stop = r#"{"jsonrpc":"2.0","id":1,"method":"stop"}"#;
        let (status, _, body) = post(node.rpc_addr(), Some(node.cookie()), stop).await;
        assert_eq!(status, 200);
        assert!(body.contains("Bitcoin Core stopping"));
        node.stopped().await;
        let addr = node.rpc_addr();
        node.stop().await;
        assert!(!cookie_path.exists());
        assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
    }
}
