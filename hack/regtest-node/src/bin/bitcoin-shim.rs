//! The entry points of the node test image: one binary, linked as `bitcoind`,
//! `bitcoin-cli`, `getent` and `bc-fault`, that behaves by the name it is
//! called with. It lets the StatefulSet's real pod spec run unchanged:
//!
//! - `bitcoind -conf=FILE -datadir=DIR` runs regtest-node on the address of
//!   the configuration's `rpcbind=` (`::`, what the controller renders, is
//!   one dual-stack socket serving IPv4 and IPv6, falling back to 0.0.0.0
//!   with a warning where the pod has no IPv6; without `rpcbind=`,
//!   0.0.0.0), writing the RPC cookie to `DIR/regtest/.cookie`.
//! - `bitcoin-cli -conf=FILE -datadir=DIR [-rpcconnect=H] [-rpcport=P]
//!   [-rpcclienttimeout=S] METHOD [ARGS...]` makes a real JSON-RPC call,
//!   authenticated with the cookie (or `-rpcuser`/`-rpcpassword`), prints
//!   the result like Bitcoin Core's CLI and exits as it does: 0, the
//!   absolute RPC error code (28 while warming up...), or 1 when it cannot
//!   connect.
//! - `getent hosts NAME` resolves NAME through the pod's resolver
//!   (`/etc/resolv.conf`, i.e. the cluster DNS) and prints `IP NAME`.
//! - `bc-fault rpc-hang on|off -datadir=DIR` makes the running bitcoind stop
//!   (or resume) answering RPC: a fault for tests, read from a file in the
//!   data directory.

use regtest_node::{Config, Node, NodeOptions};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Core-style options (`-name=value`, `--name=value`, `-name`) before the
/// first positional argument; the rest are positional.
struct Opts {
    named: Vec<(String, String)>,
    positional: Vec<String>,
}

impl Opts {
    fn parse(args: impl Iterator<Item = String>) -> Opts {
        let mut named = Vec::new();
        let mut positional = Vec::new();
        for arg in args {
            if positional.is_empty() && arg.starts_with('-') && arg.len() > 1 {
                let body = arg.trim_start_matches('-');
                let (k, v) = body.split_once('=').unwrap_or((body, "1"));
                named.push((k.to_owned(), v.to_owned()));
            } else {
                positional.push(arg);
            }
        }
        Opts { named, positional }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.named
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn datadir(&self) -> PathBuf {
        PathBuf::from(self.get("datadir").unwrap_or("/data"))
    }

    /// `-conf`: relative paths are relative to the data directory, as in Core.
    fn conf(&self) -> PathBuf {
        let conf = PathBuf::from(self.get("conf").unwrap_or("bitcoin.conf"));
        if conf.is_absolute() {
            conf
        } else {
            self.datadir().join(conf)
        }
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args();
    let argv0 = args.next().unwrap_or_default();
    let name = Path::new(&argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let mut rest: Vec<String> = args.collect();
    // `bitcoin-shim bitcoind ...` works too (no symlink needed).
    let name = if name == "bitcoin-shim" && !rest.is_empty() {
        rest.remove(0)
    } else {
        name
    };
    match name.as_str() {
        "bitcoind" => bitcoind(Opts::parse(rest.into_iter())),
        "bitcoin-cli" => bitcoin_cli(Opts::parse(rest.into_iter())),
        "getent" => getent(&rest),
        "bc-fault" => fault(Opts::parse(rest.into_iter())),
        other => {
            eprintln!("bitcoin-shim: unknown entry point {other:?} (bitcoind, bitcoin-cli, getent, bc-fault)");
            ExitCode::from(2)
        }
    }
}

fn hang_file(datadir: &Path) -> PathBuf {
    datadir.join("regtest").join("rpc-hang")
}

fn bitcoind(opts: Opts) -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    for (k, _) in &opts.named {
        if !matches!(k.as_str(), "conf" | "datadir" | "printtoconsole") {
            log::warn!("bitcoind: option -{k} is ignored by this test node");
        }
    }
    let conf = opts.conf();
    let datadir = opts.datadir();
    let text = match std::fs::read_to_string(&conf) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("Error: cannot read {}: {e}", conf.display());
            return ExitCode::from(1);
        }
    };
    let config = match Config::parse(&text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Error: {}: {e}", conf.display());
            return ExitCode::from(1);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let bind_ip = config
            .rpc_bind_ip()
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let node = match Node::start(NodeOptions {
            bind_ip,
            config,
            datadir: Some(datadir.clone()),
        })
        .await
        {
            Ok(node) => node,
            Err(e) => {
                eprintln!("Error: cannot start: {e}");
                return ExitCode::from(1);
            }
        };
        log::info!("bitcoind (regtest-node) started, conf {}", conf.display());
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        let mut poll = tokio::time::interval(Duration::from_millis(500));
        let mut hanging = false;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => { log::info!("SIGINT received"); break }
                _ = term.recv() => { log::info!("SIGTERM received, shutting down"); break }
                _ = node.stopped() => { log::info!("stop requested over RPC"); break }
                _ = poll.tick() => {
                    let want = hang_file(&datadir).exists();
                    if want != hanging {
                        log::warn!("fault rpc-hang {}", if want { "on" } else { "off" });
                        node.set_rpc_hang(want);
                        hanging = want;
                    }
                }
            }
        }
        node.stop().await;
        ExitCode::SUCCESS
    })
}

fn fault(opts: Opts) -> ExitCode {
    let file = hang_file(&opts.datadir());
    let result = match opts
        .positional
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()[..]
    {
        ["rpc-hang", "on"] => std::fs::write(&file, b"1"),
        ["rpc-hang", "off"] => match std::fs::remove_file(&file) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        },
        _ => {
            eprintln!("usage: bc-fault [-datadir=DIR] rpc-hang on|off");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bc-fault: {}: {e}", file.display());
            ExitCode::from(1)
        }
    }
}

fn getent(args: &[String]) -> ExitCode {
    let [db, name] = args else {
        eprintln!("usage: getent hosts NAME");
        return ExitCode::from(1);
    };
    if db != "hosts" {
        eprintln!("getent: only the hosts database is supported");
        return ExitCode::from(1);
    }
    match (name.as_str(), 0).to_socket_addrs() {
        Ok(addrs) => {
            let mut seen = Vec::new();
            for a in addrs {
                if !seen.contains(&a.ip()) {
                    seen.push(a.ip());
                    println!("{:<15} {name}", a.ip());
                }
            }
            if seen.is_empty() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        // getent's exit status for "key not found".
        Err(_) => ExitCode::from(2),
    }
}

/// Parses a positional argument the way bitcoin-cli does for the methods
/// used here: JSON if it parses (numbers, booleans, arrays), else a string.
fn param(arg: &str) -> Value {
    serde_json::from_str(arg).unwrap_or_else(|_| Value::String(arg.to_owned()))
}

fn bitcoin_cli(opts: Opts) -> ExitCode {
    let Some((method, params)) = opts.positional.split_first() else {
        eprintln!("error: too few parameters (need at least command)");
        return ExitCode::from(1);
    };
    let datadir = opts.datadir();
    // Port and credentials: command line, then the [regtest] section of the
    // configuration file, then the defaults (18443, the cookie).
    let config = std::fs::read_to_string(opts.conf())
        .ok()
        .and_then(|t| Config::parse(&t).ok());
    let port: u16 = match opts.get("rpcport") {
        Some(p) => match p.parse() {
            Ok(p) => p,
            Err(_) => {
                eprintln!("error: Invalid port provided in -rpcport: {p}");
                return ExitCode::from(1);
            }
        },
        None => config.as_ref().map_or(18443, Config::rpc_port),
    };
    let host = opts.get("rpcconnect").unwrap_or("127.0.0.1").to_owned();
    let auth = match (opts.get("rpcuser"), opts.get("rpcpassword")) {
        (Some(u), Some(p)) => format!("{u}:{p}"),
        _ => {
            let cookie = datadir.join("regtest").join(".cookie");
            match std::fs::read_to_string(&cookie) {
                Ok(c) => c.trim().to_owned(),
                Err(_) => {
                    eprintln!(
                        "error: Could not locate RPC credentials. No authentication cookie could be found, and RPC password is not set.  See -rpcpassword and -stdinrpcpass.  Configuration file: ({})",
                        opts.conf().display()
                    );
                    return ExitCode::from(1);
                }
            }
        }
    };
    let timeout = Duration::from_secs(
        opts.get("rpcclienttimeout")
            .and_then(|s| s.parse().ok())
            .filter(|s| *s > 0)
            .unwrap_or(900),
    );
    let body = serde_json::json!({
        "jsonrpc": "1.0",
        "id": 1,
        "method": method,
        "params": params.iter().map(|p| param(p)).collect::<Vec<_>>(),
    })
    .to_string();
    let response = match call(&host, port, &auth, &body, timeout) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: Could not connect to the server {host}:{port} ({e})\n\nMake sure the bitcoind server is running and that you are connecting to the correct RPC port.");
            return ExitCode::from(1);
        }
    };
    let (status, text) = response;
    if status == 401 {
        eprintln!("error: Authorization failed: Incorrect rpcuser or rpcpassword");
        return ExitCode::from(1);
    }
    let reply: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(_) => {
            eprintln!("error: couldn't parse reply from server (HTTP {status})");
            return ExitCode::from(1);
        }
    };
    match reply.get("error") {
        Some(err) if !err.is_null() => {
            let code = err.get("code").and_then(Value::as_i64).unwrap_or(-1);
            let message = err.get("message").and_then(Value::as_str).unwrap_or("");
            eprintln!("error code: {code}\nerror message:\n{message}");
            ExitCode::from(u8::try_from(code.unsigned_abs()).unwrap_or(1))
        }
        _ => {
            match reply.get("result") {
                Some(Value::String(s)) => println!("{s}"),
                Some(Value::Null) | None => {}
                Some(v) => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
            }
            ExitCode::SUCCESS
        }
    }
}

/// One HTTP/1.1 POST with Basic auth; returns the status and the body.
fn call(
    host: &str,
    port: u16,
    auth: &str,
    body: &str,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    use base64::Engine as _;
    let addr = (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(30)))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let credentials = base64::engine::general_purpose::STANDARD.encode(auth);
    write!(
        stream,
        "POST / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAuthorization: Basic {credentials}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("malformed HTTP reply"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("malformed HTTP status line"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
