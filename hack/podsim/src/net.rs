//! Running probes: a TCP connect, a bare HTTP/1.1 GET and a JSON-RPC POST
//! over a plain `TcpStream`. Only loopback addresses are ever contacted.

use crate::probe::Action;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_RESPONSE: usize = 1 << 20;

/// Where a probe may connect: the pod IP unless the probe names a host,
/// which must be a loopback address (this simulator sends nothing else
/// anywhere).
pub fn probe_ip(host: Option<&str>, pod_ip: IpAddr) -> Result<IpAddr, String> {
    let Some(host) = host else { return Ok(pod_ip) };
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => Ok(ip),
        _ => Err(format!(
            "probe host {host:?} is not a loopback address; podsim only probes loopback"
        )),
    }
}

pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A parsed HTTP response head plus whatever body bytes were read.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Parses the head of `buf`. `Ok(None)`: incomplete, read more. The second
/// value is the content length if the head declares one, else `None`.
fn parse_head(buf: &[u8]) -> Result<Option<(u16, usize, Option<usize>)>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > 64 * 1024 {
            Err("response head too large".into())
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP response: {status_line:?}"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            }
        }
    }
    Ok(Some((status, end + 4, length)))
}

async fn exchange(addr: SocketAddr, request: Vec<u8>, want_body: bool) -> Result<Response, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .write_all(&request)
        .await
        .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read from {addr}: {e}"))?;
        buf.extend_from_slice(&chunk[..n]);
        let head = parse_head(&buf)?;
        if let Some((status, body_start, length)) = head {
            let body_len = buf.len() - body_start;
            let complete = match length {
                _ if !want_body => true,
                Some(len) => body_len >= len,
                None => n == 0,
            };
            if complete {
                let end = length.map_or(buf.len(), |len| (body_start + len).min(buf.len()));
                return Ok(Response {
                    status,
                    body: buf[body_start..end].to_vec(),
                });
            }
        }
        if n == 0 {
            return Err(format!("{addr} closed the connection early"));
        }
        if buf.len() > MAX_RESPONSE {
            return Err(format!("response from {addr} too large"));
        }
    }
}

async fn with_timeout<T>(
    timeout: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| Err(format!("{what}: timed out after {timeout:?}")))
}

/// One JSON-RPC 1.0 call with HTTP Basic auth; returns `result`.
pub async fn rpc_call(
    addr: SocketAddr,
    userpass: &str,
    method: &str,
    timeout: Duration,
) -> Result<serde_json::Value, String> {
    let body =
        serde_json::json!({"jsonrpc": "1.0", "id": "podsim", "method": method, "params": []})
            .to_string();
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        base64(userpass.as_bytes()),
        body.len()
    );
    let response =
        with_timeout(timeout, method, exchange(addr, request.into_bytes(), true)).await?;
    rpc_result(&response)
}

/// Interprets a JSON-RPC response the way bitcoin-cli does.
pub fn rpc_result(response: &Response) -> Result<serde_json::Value, String> {
    if response.status == 401 {
        return Err("RPC: 401 unauthorized".into());
    }
    let reply: serde_json::Value = serde_json::from_slice(&response.body)
        .map_err(|e| format!("RPC: HTTP {} with a non-JSON body: {e}", response.status))?;
    match reply.get("error") {
        Some(err) if !err.is_null() => Err(format!("RPC error: {err}")),
        _ if response.status != 200 => Err(format!("RPC: HTTP {}", response.status)),
        _ => Ok(reply
            .get("result")
            .cloned()
            .unwrap_or(serde_json::Value::Null)),
    }
}

pub async fn tcp_check(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    with_timeout(timeout, "tcp", async {
        TcpStream::connect(addr)
            .await
            .map(drop)
            .map_err(|e| format!("connect {addr}: {e}"))
    })
    .await
}

/// kubelet's rule: 200..400 is success.
pub async fn http_check(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(), String> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/podsim\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    let response =
        with_timeout(timeout, "http", exchange(addr, request.into_bytes(), false)).await?;
    if (200..400).contains(&response.status) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with status {}", response.status))
    }
}

/// What a probe needs to know about the pod's running node.
pub struct RpcTarget {
    pub addr: SocketAddr,
    pub cookie: String,
}

/// Runs one probe. `rpc` is `None` when the pod has no node running.
pub async fn run_probe(
    action: &Action,
    pod_ip: IpAddr,
    rpc: Option<&RpcTarget>,
    timeout: Duration,
) -> Result<(), String> {
    match action {
        Action::GetNetworkInfo => match rpc {
            Some(t) => rpc_call(t.addr, &t.cookie, "getnetworkinfo", timeout)
                .await
                .map(drop),
            None => Err("no node is running for this pod".into()),
        },
        Action::ExecOk => Ok(()),
        Action::Tcp { host, port } => {
            tcp_check(
                SocketAddr::new(probe_ip(host.as_deref(), pod_ip)?, *port),
                timeout,
            )
            .await
        }
        Action::Http {
            host,
            port,
            https: true,
            ..
        } => {
            tcp_check(
                SocketAddr::new(probe_ip(host.as_deref(), pod_ip)?, *port),
                timeout,
            )
            .await
        }
        Action::Http {
            host,
            port,
            path,
            https: false,
        } => {
            http_check(
                SocketAddr::new(probe_ip(host.as_deref(), pod_ip)?, *port),
                path,
                timeout,
            )
            .await
        }
        Action::Invalid(reason) => Err(reason.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn base64_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("__cookie__:ab12", "X19jb29raWVfXzphYjEy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain}");
        }
    }

    #[test]
    fn probe_ip_only_loopback() {
        let pod: IpAddr = "127.1.0.2".parse().unwrap();
        assert_eq!(probe_ip(None, pod), Ok(pod));
        assert_eq!(
            probe_ip(Some("localhost"), pod),
            Ok("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            probe_ip(Some("127.3.4.5"), pod),
            Ok("127.3.4.5".parse().unwrap())
        );
        assert!(probe_ip(Some("10.0.0.1"), pod).is_err());
        assert!(probe_ip(Some("example.com"), pod).is_err());
    }

    #[test]
    fn head_parsing() {
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Len"), Ok(None));
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"),
            Ok(Some((200, 38, Some(5))))
        );
        assert_eq!(
            parse_head(b"HTTP/1.0 404 Not Found\r\n\r\n"),
            Ok(Some((404, 26, None)))
        );
        assert!(parse_head(b"SSH-2.0-x\r\n\r\n").is_err());
    }

    #[test]
    fn rpc_result_rules() {
        let ok = Response {
            status: 200,
            body: br#"{"result":{"version":1},"error":null,"id":"podsim"}"#.to_vec(),
        };
        assert_eq!(rpc_result(&ok).unwrap()["version"], 1);
        let err = Response {
            status: 500,
            body: br#"{"result":null,"error":{"code":-28,"message":"Loading"},"id":1}"#.to_vec(),
        };
        assert!(rpc_result(&err).unwrap_err().contains("-28"));
        assert!(rpc_result(&Response {
            status: 401,
            body: vec![]
        })
        .is_err());
        assert!(rpc_result(&Response {
            status: 200,
            body: b"nope".to_vec()
        })
        .is_err());
    }

    /// Serves one canned response per connection and returns what it read.
    async fn serve_once(
        reply: &'static [u8],
        hang: bool,
    ) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            if hang {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            s.write_all(reply).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (addr, task)
    }

    #[tokio::test]
    async fn rpc_call_sends_basic_auth_and_reads_result() {
        let (addr, server) = serve_once(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 48\r\n\r\n{\"result\":{\"connections\":0},\"error\":null,\"id\":1}",
            false,
        )
        .await;
        let result = rpc_call(
            addr,
            "__cookie__:ab12",
            "getnetworkinfo",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(result["connections"], 0);
        let request = server.await.unwrap();
        assert!(request.starts_with("POST / HTTP/1.1\r\n"), "{request}");
        assert!(
            request.contains("Authorization: Basic X19jb29raWVfXzphYjEy\r\n"),
            "{request}"
        );
        assert!(
            request.contains(r#""method":"getnetworkinfo""#),
            "{request}"
        );
    }

    #[tokio::test]
    async fn rpc_call_times_out_on_a_hanging_server() {
        let (addr, server) = serve_once(b"", true).await;
        let err = rpc_call(addr, "u:p", "getnetworkinfo", Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(err.contains("timed out"), "{err}");
        server.abort();
    }

    #[tokio::test]
    async fn http_and_tcp_checks() {
        let (addr, _s) = serve_once(b"HTTP/1.1 204 No Content\r\n\r\n", false).await;
        http_check(addr, "/healthz", Duration::from_secs(5))
            .await
            .unwrap();
        let (addr, _s) = serve_once(
            b"HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .await;
        assert!(http_check(addr, "/", Duration::from_secs(5)).await.is_err());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tcp_check(addr, Duration::from_secs(5)).await.unwrap();
        drop(listener);
        assert!(tcp_check(addr, Duration::from_secs(5)).await.is_err());
    }

    #[tokio::test]
    async fn run_probe_dispatch() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let t = Duration::from_secs(1);
        assert!(run_probe(&Action::ExecOk, ip, None, t).await.is_ok());
        assert!(run_probe(&Action::GetNetworkInfo, ip, None, t)
            .await
            .is_err());
        assert!(run_probe(&Action::Invalid("x".into()), ip, None, t)
            .await
            .is_err());
        let far = Action::Tcp {
            host: Some("192.0.2.1".into()),
            port: 80,
        };
        assert!(run_probe(&far, ip, None, t)
            .await
            .unwrap_err()
            .contains("loopback"));
    }
}
