//! JSON-RPC in Bitcoin Core's dialect: envelopes (1.0 legacy, 2.0, batches),
//! argument checking and the methods the controller and the demo use.

use crate::{net, unix_time, Error, Shared};
use bitcoin::{Address, Network};
use serde_json::{json, Map, Value};
use std::str::FromStr;
use std::sync::Arc;

// Bitcoin Core's error codes (src/rpc/protocol.h).
pub const RPC_INVALID_REQUEST: i32 = -32600;
pub const RPC_METHOD_NOT_FOUND: i32 = -32601;
pub const RPC_PARSE_ERROR: i32 = -32700;
pub const RPC_MISC_ERROR: i32 = -1;
pub const RPC_TYPE_ERROR: i32 = -3;
pub const RPC_INVALID_ADDRESS_OR_KEY: i32 = -5;
pub const RPC_INVALID_PARAMETER: i32 = -8;
pub const RPC_CLIENT_NODE_ALREADY_ADDED: i32 = -23;
pub const RPC_CLIENT_NODE_NOT_ADDED: i32 = -24;
pub const RPC_CLIENT_NODE_NOT_CONNECTED: i32 = -29;

/// The node version we report (Core 28.0's numbering).
pub const CLIENT_VERSION: i64 = 280_000;
pub const USER_AGENT: &str = concat!("/regtest-node:", env!("CARGO_PKG_VERSION"), "/");

fn rpc_err(code: i32, message: impl Into<String>) -> Error {
    Error::Rpc {
        code,
        message: message.into(),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Ty {
    Num,
    Str,
    Bool,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::Num => "number",
            Ty::Str => "string",
            Ty::Bool => "bool",
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

struct Arg {
    name: &'static str,
    ty: Ty,
    required: bool,
}

const fn req(name: &'static str, ty: Ty) -> Arg {
    Arg {
        name,
        ty,
        required: true,
    }
}

const fn opt(name: &'static str, ty: Ty) -> Arg {
    Arg {
        name,
        ty,
        required: false,
    }
}

/// Method table: name, arguments, one-line help.
const METHODS: &[(&str, &[Arg], &str)] = &[
    ("addnode", &[req("node", Ty::Str), req("command", Ty::Str), opt("v2transport", Ty::Bool)],
        "Add a node to the added-node list (add), remove it (remove), or connect to it once (onetry)."),
    ("disconnectnode", &[opt("address", Ty::Str), opt("nodeid", Ty::Num)],
        "Disconnect a peer by address or by node id."),
    ("generatetoaddress", &[req("nblocks", Ty::Num), req("address", Ty::Str), opt("maxtries", Ty::Num)],
        "Mine blocks to an address right away; returns their hashes."),
    ("getaddednodeinfo", &[opt("node", Ty::Str)], "Show the added nodes and whether they are connected."),
    ("getbestblockhash", &[], "Hash of the tip of the active chain."),
    ("getblockchaininfo", &[], "State of the block chain."),
    ("getblockcount", &[], "Height of the active chain."),
    ("getblockhash", &[req("height", Ty::Num)], "Hash of the active-chain block at a height."),
    ("getconnectioncount", &[], "Number of peer connections."),
    ("getindexinfo", &[opt("index_name", Ty::Str)], "State of the optional indexes (txindex, blockfilterindex)."),
    ("getnetworkinfo", &[], "State of the P2P network."),
    ("getpeerinfo", &[], "One object per connected peer."),
    ("setnetworkactive", &[req("state", Ty::Bool)], "Disable (false) or enable (true) all P2P network activity."),
    ("stop", &[opt("wait", Ty::Num)], "Stop the node."),
    ("uptime", &[], "Seconds since the node started."),
];

/// `getindexinfo`: Core's names of the enabled indexes, each synced to the
/// tip (this node has no index to build), optionally only `name`.
fn index_info(shared: &Shared, name: Option<&str>) -> Value {
    let height = shared.chain.lock().unwrap().height();
    let enabled = [
        ("txindex", shared.config.txindex()),
        ("basic block filter index", shared.config.blockfilterindex()),
    ];
    let info: Map<String, Value> = enabled
        .into_iter()
        .filter(|(index, on)| *on && name.is_none_or(|n| n == *index))
        .map(|(index, _)| {
            let state = json!({"synced": true, "best_block_height": height});
            (index.to_owned(), state)
        })
        .collect();
    Value::Object(info)
}

fn usage(method: &str, args: &[Arg], help: &str) -> String {
    let names: Vec<String> = args
        .iter()
        .map(|a| {
            if a.required {
                a.name.to_string()
            } else {
                format!("( {} )", a.name)
            }
        })
        .collect();
    format!("{method} {}\n\n{help}\n", names.join(" ")).replace(" \n", "\n")
}

/// Positional arguments after named-argument mapping and Core's checks.
fn check_params(
    method: &str,
    args: &[Arg],
    help: &str,
    params: &Value,
) -> Result<Vec<Value>, Error> {
    let list = match params {
        Value::Array(a) => a.clone(),
        Value::Object(named) => {
            let mut list = vec![Value::Null; args.len()];
            for (k, v) in named {
                let i = args.iter().position(|a| a.name == k).ok_or_else(|| {
                    rpc_err(
                        RPC_INVALID_PARAMETER,
                        format!("Unknown named parameter {k}"),
                    )
                })?;
                list[i] = v.clone();
            }
            while list.last() == Some(&Value::Null) {
                list.pop();
            }
            list
        }
        _ => Vec::new(),
    };
    let required = args.iter().filter(|a| a.required).count();
    if list.len() < required || list.len() > args.len() {
        return Err(rpc_err(RPC_MISC_ERROR, usage(method, args, help)));
    }
    let mut mismatch = Map::new();
    for (i, (arg, v)) in args.iter().zip(&list).enumerate() {
        let ok = match (v, arg.ty) {
            (Value::Null, _) => !arg.required,
            (Value::Number(_), Ty::Num)
            | (Value::String(_), Ty::Str)
            | (Value::Bool(_), Ty::Bool) => true,
            _ => false,
        };
        if !ok {
            mismatch.insert(
                format!("Position {} ({})", i + 1, arg.name),
                Value::String(format!(
                    "JSON value of type {} is not of expected type {}",
                    type_name(v),
                    arg.ty.name()
                )),
            );
        }
    }
    if !mismatch.is_empty() {
        // Core writes this object with 4-space indentation.
        let lines: Vec<String> = mismatch
            .iter()
            .map(|(k, v)| format!("    {}: {v}", Value::String(k.clone())))
            .collect();
        return Err(rpc_err(
            RPC_TYPE_ERROR,
            format!("Wrong type passed:\n{{\n{}\n}}", lines.join(",\n")),
        ));
    }
    Ok(list)
}

fn int(v: &Value) -> Result<i64, Error> {
    v.as_i64()
        .ok_or_else(|| rpc_err(RPC_MISC_ERROR, "JSON integer out of range"))
}

fn opt_str(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str)
}

/// Run one method call.
pub(crate) fn execute(shared: &Arc<Shared>, method: &str, params: &Value) -> Result<Value, Error> {
    let (_, args, help) = METHODS
        .iter()
        .find(|(name, _, _)| *name == method)
        .ok_or_else(|| rpc_err(RPC_METHOD_NOT_FOUND, "Method not found"))?;
    let p = check_params(method, args, help, params)?;
    match method {
        "getblockcount" => Ok(json!(shared.chain.lock().unwrap().height())),
        "getbestblockhash" => Ok(json!(shared.chain.lock().unwrap().tip_hash().to_string())),
        "getblockhash" => {
            let height = int(&p[0])?;
            let chain = shared.chain.lock().unwrap();
            u32::try_from(height)
                .ok()
                .and_then(|h| chain.hash_at(h))
                .map(|h| json!(h.to_string()))
                .ok_or_else(|| rpc_err(RPC_INVALID_PARAMETER, "Block height out of range"))
        }
        "getblockchaininfo" => Ok(blockchain_info(shared)),
        "getnetworkinfo" => Ok(network_info(shared)),
        "getindexinfo" => Ok(index_info(shared, opt_str(p.first()))),
        "getpeerinfo" => Ok(net::peer_info(shared)),
        "getconnectioncount" => Ok(json!(shared.net.lock().unwrap().peers.len())),
        "getaddednodeinfo" => net::added_node_info(shared, opt_str(p.first()))
            .ok_or_else(|| rpc_err(RPC_CLIENT_NODE_NOT_ADDED, "Error: Node has not been added.")),
        "addnode" => addnode(shared, &p, args, help),
        "disconnectnode" => disconnectnode(shared, &p),
        "generatetoaddress" => generate(shared, &p),
        "setnetworkactive" => {
            let active = p[0].as_bool().expect("checked");
            net::set_network_active(shared, active);
            Ok(json!(active))
        }
        "uptime" => Ok(json!(shared.started.elapsed().as_secs())),
        "stop" => {
            shared.shutdown.cancel();
            Ok(json!("Bitcoin Core stopping"))
        }
        _ => unreachable!("every method in METHODS is handled"),
    }
}

fn addnode(shared: &Arc<Shared>, p: &[Value], args: &[Arg], help: &str) -> Result<Value, Error> {
    let node = p[0].as_str().expect("checked");
    if p.get(2).and_then(Value::as_bool) == Some(true) {
        return Err(rpc_err(
            RPC_INVALID_PARAMETER,
            "Error: v2transport requested but not enabled (see -v2transport)",
        ));
    }
    match p[1].as_str().expect("checked") {
        "onetry" => {
            net::connect_once(shared, node);
            Ok(Value::Null)
        }
        "add" if net::add_node(shared, node) => Ok(Value::Null),
        "add" => Err(rpc_err(
            RPC_CLIENT_NODE_ALREADY_ADDED,
            "Error: Node already added",
        )),
        "remove" if net::remove_node(shared, node) => Ok(Value::Null),
        "remove" => Err(rpc_err(
            RPC_CLIENT_NODE_NOT_ADDED,
            "Error: Node could not be removed. It has not been added previously.",
        )),
        _ => Err(rpc_err(RPC_MISC_ERROR, usage("addnode", args, help))),
    }
}

fn disconnectnode(shared: &Arc<Shared>, p: &[Value]) -> Result<Value, Error> {
    let address = opt_str(p.first());
    let id = p.get(1).filter(|v| !v.is_null());
    let found = match (address, id) {
        (Some(a), None) => net::disconnect(shared, |peer, _| peer.addr_name == a),
        (None | Some(""), Some(id)) => {
            let id = int(id)?;
            net::disconnect(shared, |_, peer_id| i64::try_from(peer_id) == Ok(id))
        }
        _ => {
            return Err(rpc_err(
                RPC_INVALID_PARAMETER,
                "Only one of address and nodeid should be provided.",
            ))
        }
    };
    if found {
        Ok(Value::Null)
    } else {
        Err(rpc_err(
            RPC_CLIENT_NODE_NOT_CONNECTED,
            "Node not found in connected nodes",
        ))
    }
}

fn generate(shared: &Arc<Shared>, p: &[Value]) -> Result<Value, Error> {
    let nblocks = int(&p[0])?;
    let script = Address::from_str(p[1].as_str().expect("checked"))
        .ok()
        .and_then(|a| a.require_network(Network::Regtest).ok())
        .ok_or_else(|| rpc_err(RPC_INVALID_ADDRESS_OR_KEY, "Error: Invalid address"))?
        .script_pubkey();
    let mut max_tries = match p.get(2).filter(|v| !v.is_null()) {
        Some(v) => u64::try_from(int(v)?).unwrap_or(0),
        None => 1_000_000,
    };
    let mut hashes = Vec::new();
    for _ in 0..nblocks.max(0) {
        let Some((block, change)) = shared.mine(&script, &mut max_tries) else {
            break;
        };
        hashes.push(json!(block.block_hash().to_string()));
        net::announce(shared, &change, None);
    }
    shared.sync_store();
    Ok(Value::Array(hashes))
}

/// Core's GetDifficulty for compact bits.
fn difficulty(bits: u32) -> f64 {
    let mut shift = (bits >> 24) & 0xff;
    let mut diff = f64::from(0x0000_ffff) / f64::from(bits & 0x00ff_ffff);
    while shift < 29 {
        diff *= 256.0;
        shift += 1;
    }
    while shift > 29 {
        diff /= 256.0;
        shift -= 1;
    }
    diff
}

fn blockchain_info(shared: &Arc<Shared>) -> Value {
    let mut chain = shared.chain.lock().unwrap();
    let ibd = chain.initial_block_download(unix_time());
    let tip = chain.tip();
    json!({
        "chain": "regtest",
        "blocks": tip.height,
        "headers": chain.best_header().height,
        "bestblockhash": chain.tip_hash().to_string(),
        "difficulty": difficulty(tip.header.bits.to_consensus()),
        "time": tip.header.time,
        "mediantime": chain.median_time_past(&chain.tip_hash()),
        "verificationprogress": 1.0,
        "initialblockdownload": ibd,
        "chainwork": hex::encode(tip.work.to_be_bytes()),
        "size_on_disk": 0,
        "pruned": false,
        "warnings": [],
    })
}

fn network_info(shared: &Arc<Shared>) -> Value {
    let (total, inbound) = {
        let net = shared.net.lock().unwrap();
        let inbound = net.peers.values().filter(|p| p.inbound).count();
        (net.peers.len(), inbound)
    };
    let networks: Vec<Value> = ["ipv4", "ipv6", "onion", "i2p", "cjdns"]
        .iter()
        .map(|name| {
            let usable = matches!(*name, "ipv4" | "ipv6");
            json!({
                "name": name,
                "limited": !usable,
                "reachable": usable,
                "proxy": "",
                "proxy_randomize_credentials": false,
            })
        })
        .collect();
    json!({
        "version": CLIENT_VERSION,
        "subversion": USER_AGENT,
        "protocolversion": net::PROTOCOL_VERSION,
        "localservices": format!("{:016x}", net::local_services().to_u64()),
        "localservicesnames": net::service_names(net::local_services()),
        "localrelay": true,
        "timeoffset": 0,
        "networkactive": net::network_active(shared),
        "connections": total,
        "connections_in": inbound,
        "connections_out": total - inbound,
        "networks": networks,
        "relayfee": 0.00001,
        "incrementalfee": 0.00001,
        "localaddresses": [],
        "warnings": [],
    })
}

/// JSON-RPC protocol version of a request.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Version {
    Legacy,
    V2,
}

/// A request object after envelope parsing.
struct Request {
    id: Option<Value>,
    version: Version,
    method: String,
    params: Value,
}

/// Parse a request object; on error also return what was learnt so far, so
/// the error reply carries the id and version like Core's.
fn parse_request(v: &Value) -> Result<Request, (Error, Option<Value>, Version)> {
    let invalid =
        |msg: &str, id: Option<Value>, ver| Err((rpc_err(RPC_INVALID_REQUEST, msg), id, ver));
    let Some(obj) = v.as_object() else {
        return invalid("Invalid Request object", None, Version::Legacy);
    };
    let id = obj.get("id").cloned();
    let version = match obj.get("jsonrpc") {
        None | Some(Value::Null) => Version::Legacy,
        Some(Value::String(s)) if s == "1.0" => Version::Legacy,
        Some(Value::String(s)) if s == "2.0" => Version::V2,
        Some(Value::String(_)) => {
            return invalid("JSON-RPC version not supported", id, Version::Legacy)
        }
        Some(_) => return invalid("jsonrpc field must be a string", id, Version::Legacy),
    };
    let method = match obj.get("method") {
        None | Some(Value::Null) => return invalid("Missing method", id, version),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return invalid("Method must be a string", id, version),
    };
    let params = match obj.get("params") {
        None | Some(Value::Null) => Value::Array(Vec::new()),
        Some(p @ (Value::Array(_) | Value::Object(_))) => p.clone(),
        Some(_) => return invalid("Params must be an array or object", id, version),
    };
    Ok(Request {
        id,
        version,
        method,
        params,
    })
}

fn error_object(e: Error) -> Value {
    match e {
        Error::Rpc { code, message } => json!({"code": code, "message": message}),
        other => json!({"code": RPC_MISC_ERROR, "message": other.to_string()}),
    }
}

fn reply(result: Result<Value, Error>, id: Option<Value>, version: Version) -> Value {
    let mut obj = Map::new();
    if version == Version::V2 {
        obj.insert("jsonrpc".into(), json!("2.0"));
    }
    match result {
        Ok(r) => {
            obj.insert("result".into(), r);
            if version == Version::Legacy {
                obj.insert("error".into(), Value::Null);
            }
        }
        Err(e) => {
            if version == Version::Legacy {
                obj.insert("result".into(), Value::Null);
            }
            obj.insert("error".into(), error_object(e));
        }
    }
    if let Some(id) = id {
        obj.insert("id".into(), id);
    }
    Value::Object(obj)
}

/// HTTP status for a failed legacy request.
fn error_status(e: &Error) -> u16 {
    match e {
        Error::Rpc {
            code: RPC_INVALID_REQUEST,
            ..
        } => 400,
        Error::Rpc {
            code: RPC_METHOD_NOT_FOUND,
            ..
        } => 404,
        _ => 500,
    }
}

/// Handle a POSTed JSON-RPC body: HTTP status and body (None = no content).
pub(crate) fn handle_body(shared: &Arc<Shared>, body: &[u8]) -> (u16, Option<String>) {
    let with_newline = |v: Value| Some(format!("{v}\n"));
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => {
            let e = rpc_err(RPC_PARSE_ERROR, "Parse error");
            return (500, with_newline(reply(Err(e), None, Version::Legacy)));
        }
    };
    match value {
        Value::Object(_) => match parse_request(&value) {
            Err((e, id, version)) => (error_status(&e), with_newline(reply(Err(e), id, version))),
            Ok(req) => {
                let result = execute(shared, &req.method, &req.params);
                match (req.version, req.id) {
                    (Version::V2, None) => (204, None),
                    (Version::Legacy, id) if result.is_err() => {
                        let e = result.unwrap_err();
                        (
                            error_status(&e),
                            with_newline(reply(Err(e), id, Version::Legacy)),
                        )
                    }
                    (version, id) => (200, with_newline(reply(result, id, version))),
                }
            }
        },
        Value::Array(batch) => {
            let replies: Vec<Value> = batch
                .iter()
                .filter_map(|item| match parse_request(item) {
                    Err((e, id, version)) => Some(reply(Err(e), id, version)),
                    Ok(req) if req.version == Version::V2 && req.id.is_none() => {
                        let _ = execute(shared, &req.method, &req.params);
                        None
                    }
                    Ok(req) => Some(reply(
                        execute(shared, &req.method, &req.params),
                        req.id,
                        req.version,
                    )),
                })
                .collect();
            if replies.is_empty() {
                (204, None)
            } else {
                (200, with_newline(Value::Array(replies)))
            }
        }
        _ => {
            let e = rpc_err(RPC_PARSE_ERROR, "Top-level object parse error");
            (500, with_newline(reply(Err(e), None, Version::Legacy)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{node_shared, REGTEST_ADDR};

    fn call(shared: &Arc<Shared>, body: Value) -> (u16, Value) {
        let (status, body) = handle_body(shared, body.to_string().as_bytes());
        (
            status,
            body.map_or(Value::Null, |b| serde_json::from_str(&b).unwrap()),
        )
    }

    fn legacy(shared: &Arc<Shared>, method: &str, params: Value) -> (u16, Value) {
        call(
            shared,
            json!({"jsonrpc": "1.0", "id": "t", "method": method, "params": params}),
        )
    }

    fn code(v: &Value) -> i64 {
        v["error"]["code"].as_i64().unwrap()
    }

    #[tokio::test]
    async fn legacy_and_v2_envelopes() {
        let s = node_shared().await;
        let (status, v) = legacy(&s, "getblockcount", json!([]));
        assert_eq!(status, 200);
        assert_eq!(v, json!({"result": 0, "error": null, "id": "t"}));

        let (status, v) = call(
            &s,
            json!({"jsonrpc": "2.0", "id": 7, "method": "getblockcount"}),
        );
        assert_eq!(status, 200);
        assert_eq!(v, json!({"jsonrpc": "2.0", "result": 0, "id": 7}));

        // v2 errors are HTTP 200 without a result field.
        let (status, v) = call(&s, json!({"jsonrpc": "2.0", "id": 1, "method": "nope"}));
        assert_eq!(status, 200);
        assert_eq!(
            v,
            json!({"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": 1})
        );

        // v2 notification: no content.
        let (status, v) = call(&s, json!({"jsonrpc": "2.0", "method": "getblockcount"}));
        assert_eq!((status, v), (204, Value::Null));

        // Legacy without id: reply without id.
        let (_, v) = call(&s, json!({"method": "getblockcount"}));
        assert_eq!(v, json!({"result": 0, "error": null}));
    }

    #[tokio::test]
    async fn legacy_errors_map_to_http_status() {
        let s = node_shared().await;
        let (status, v) = legacy(&s, "nope", json!([]));
        assert_eq!((status, code(&v)), (404, -32601));
        assert_eq!(v["result"], Value::Null);
        let (status, v) = legacy(&s, "getblockhash", json!([5]));
        assert_eq!((status, code(&v)), (500, -8));
        assert_eq!(v["error"]["message"], "Block height out of range");
        let (status, v) = call(&s, json!({"id": 1, "method": 5}));
        assert_eq!((status, code(&v)), (400, -32600));
        let (status, v) = call(&s, json!({"id": 1, "jsonrpc": "3.0", "method": "uptime"}));
        assert_eq!(
            (status, v["error"]["message"].as_str()),
            (400, Some("JSON-RPC version not supported"))
        );
        let (status, body) = handle_body(&s, b"{not json");
        assert_eq!(status, 500);
        assert!(body.unwrap().contains("-32700"));
    }

    #[tokio::test]
    async fn batch() {
        let s = node_shared().await;
        let (status, v) = call(
            &s,
            json!([
                {"jsonrpc": "2.0", "id": 1, "method": "getblockcount"},
                {"jsonrpc": "2.0", "method": "getblockcount"},
                {"id": 2, "method": "nope"},
                5
            ]),
        );
        assert_eq!(status, 200);
        let v = v.as_array().unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0]["result"], 0);
        assert_eq!(code(&v[1]), -32601);
        assert_eq!(code(&v[2]), -32600);
    }

    #[tokio::test]
    async fn argument_checks_like_core() {
        let s = node_shared().await;
        let (_, v) = legacy(&s, "getblockhash", json!(["1"]));
        assert_eq!(code(&v), -3);
        assert_eq!(
            v["error"]["message"],
            "Wrong type passed:\n{\n    \"Position 1 (height)\": \"JSON value of type string is not of expected type number\"\n}"
        );
        let (_, v) = legacy(&s, "getblockhash", json!([]));
        assert_eq!(code(&v), -1);
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("getblockhash height\n"));
        let (_, v) = legacy(&s, "getblockcount", json!([1]));
        assert_eq!(code(&v), -1);
        let (_, v) = legacy(&s, "getblockhash", json!({"height": 0}));
        assert_eq!(
            v["result"],
            "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
        );
        let (_, v) = legacy(&s, "getblockhash", json!({"heigth": 0}));
        assert_eq!(
            (code(&v), v["error"]["message"].as_str()),
            (-8, Some("Unknown named parameter heigth"))
        );
    }

    #[tokio::test]
    async fn generatetoaddress_and_chain_queries() {
        let s = node_shared().await;
        let (_, v) = legacy(&s, "generatetoaddress", json!([3, REGTEST_ADDR]));
        let hashes = v["result"].as_array().unwrap().clone();
        assert_eq!(hashes.len(), 3);
        assert_eq!(legacy(&s, "getblockcount", json!([])).1["result"], 3);
        assert_eq!(
            legacy(&s, "getbestblockhash", json!([])).1["result"],
            hashes[2]
        );
        assert_eq!(
            legacy(&s, "getblockhash", json!([1])).1["result"],
            hashes[0]
        );
        let info = legacy(&s, "getblockchaininfo", json!([])).1["result"].clone();
        assert_eq!(info["chain"], "regtest");
        assert_eq!(info["blocks"], 3);
        assert_eq!(info["headers"], 3);
        assert_eq!(info["bestblockhash"], hashes[2]);
        assert_eq!(info["initialblockdownload"], false);
        assert_eq!(info["chainwork"], format!("{:064x}", 8));
        // Core prints 4.656542373906925e-10 (16 digits) for the same double.
        assert!((info["difficulty"].as_f64().unwrap() - 4.656542373906925e-10).abs() < 1e-24);
        for addr in [
            "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn",
            "2MzQwSSnBHWHqSAqtTVQ6v47XtaisrJa1Vc",
            "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080",
        ] {
            let (_, v) = legacy(&s, "generatetoaddress", json!([1, addr]));
            assert_eq!(v["result"].as_array().map(Vec::len), Some(1), "{addr}: {v}");
        }
        for bad in [
            "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh",
            "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2",
            "x",
        ] {
            let (_, v) = legacy(&s, "generatetoaddress", json!([1, bad]));
            assert_eq!(
                (code(&v), v["error"]["message"].as_str()),
                (-5, Some("Error: Invalid address"))
            );
        }
        assert_eq!(
            legacy(&s, "generatetoaddress", json!([0, REGTEST_ADDR])).1["result"],
            json!([])
        );
    }

    #[tokio::test]
    async fn addnode_codes_and_addednodeinfo() {
        let s = node_shared().await;
        assert_eq!(
            legacy(&s, "addnode", json!(["127.0.9.9", "add"])).1["error"],
            Value::Null
        );
        let (_, v) = legacy(&s, "addnode", json!(["127.0.9.9", "add"]));
        assert_eq!(
            (code(&v), v["error"]["message"].as_str()),
            (-23, Some("Error: Node already added"))
        );
        let (_, v) = legacy(&s, "getaddednodeinfo", json!([]));
        assert_eq!(v["result"][0]["addednode"], "127.0.9.9");
        assert_eq!(v["result"][0]["connected"], false);
        assert_eq!(v["result"][0]["addresses"], json!([]));
        let (_, v) = legacy(&s, "getaddednodeinfo", json!(["127.0.9.9"]));
        assert_eq!(v["result"].as_array().unwrap().len(), 1);
        let (_, v) = legacy(&s, "getaddednodeinfo", json!(["127.0.9.8"]));
        assert_eq!(
            (code(&v), v["error"]["message"].as_str()),
            (-24, Some("Error: Node has not been added."))
        );
        assert_eq!(
            legacy(&s, "addnode", json!(["127.0.9.9", "remove"])).1["error"],
            Value::Null
        );
        let (_, v) = legacy(&s, "addnode", json!(["127.0.9.9", "remove"]));
        assert_eq!(
            (code(&v), v["error"]["message"].as_str()),
            (
                -24,
                Some("Error: Node could not be removed. It has not been added previously.")
            )
        );
        assert_eq!(
            legacy(&s, "getaddednodeinfo", json!([])).1["result"],
            json!([])
        );
        assert_eq!(
            code(&legacy(&s, "addnode", json!(["127.0.9.9", "bogus"])).1),
            -1
        );
        let (_, v) = legacy(&s, "disconnectnode", json!(["127.0.9.9"]));
        assert_eq!(code(&v), -29);
        let (_, v) = legacy(&s, "disconnectnode", json!(["127.0.9.9", 3]));
        assert_eq!(code(&v), -8);
    }

    #[tokio::test]
    async fn network_info_shape() {
        let s = node_shared().await;
        let v = legacy(&s, "getnetworkinfo", json!([])).1["result"].clone();
        assert_eq!(v["version"], CLIENT_VERSION);
        assert_eq!(v["protocolversion"], 70016);
        assert_eq!(v["connections"], 0);
        assert_eq!(
            v["localservicesnames"],
            json!(["NETWORK", "WITNESS", "NETWORK_LIMITED"])
        );
        assert_eq!(v["localservices"], "0000000000000409");
        assert_eq!(v["networks"].as_array().unwrap().len(), 5);
        assert_eq!(legacy(&s, "getpeerinfo", json!([])).1["result"], json!([]));
        assert_eq!(legacy(&s, "getconnectioncount", json!([])).1["result"], 0);
        assert!(legacy(&s, "uptime", json!([])).1["result"].is_u64());
    }

    #[tokio::test]
    async fn stop_cancels_the_node() {
        let s = node_shared().await;
        assert_eq!(
            legacy(&s, "stop", json!([])).1["result"],
            "Bitcoin Core stopping"
        );
        assert!(s.shutdown.is_cancelled());
    }

    #[tokio::test]
    async fn getindexinfo_lists_the_enabled_indexes() {
        let shared = |conf: &str| {
            let addr: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
            Arc::new(Shared::new(
                crate::Config::parse(conf).unwrap(),
                addr.ip(),
                addr,
                addr,
                "__cookie__:00".into(),
                crate::chain::Chain::new(),
                None,
            ))
        };
        let none = shared("regtest=1\n");
        assert_eq!(
            execute(&none, "getindexinfo", &json!([])).unwrap(),
            json!({})
        );
        let both = shared("regtest=1\n[regtest]\ntxindex=1\nblockfilterindex=1\n");
        execute(&both, "generatetoaddress", &json!([2, REGTEST_ADDR])).unwrap();
        let synced = json!({"synced": true, "best_block_height": 2});
        assert_eq!(
            execute(&both, "getindexinfo", &json!([])).unwrap(),
            json!({"txindex": synced, "basic block filter index": synced})
        );
        assert_eq!(
            execute(&both, "getindexinfo", &json!(["txindex"])).unwrap(),
            json!({"txindex": synced})
        );
        let off = shared("regtest=1\n[regtest]\ntxindex=0\n");
        assert_eq!(
            execute(&off, "getindexinfo", &json!([])).unwrap(),
            json!({})
        );
    }
}
