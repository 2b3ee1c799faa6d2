//! `bitcoin.conf` parsing with bitcoind's rules.
//!
//! * `#` starts a comment; lines are `key=value`; `[name]` opens a section and
//!   `name.key=value` is the same as `key=value` inside `[name]`.
//! * The chain comes from `chain=`, or `regtest=`/`testnet=`/`testnet4=`/`signet=`.
//! * For the selected chain, a value in its section wins over the top level;
//!   for single-valued options the first value in the file wins.
//! * Network-only options (`addnode`, `bind`, `connect`, `port`, `rpcbind`,
//!   `rpcport`, `wallet`) at the top level only apply to mainnet, as in
//!   bitcoind >= 0.17.
//! * `nofoo=1` negates `foo`. Unknown keys are ignored with a warning.

use crate::Error;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Error returned by [`Config::parse`].
pub type ConfigError = Error;

const NETWORK_ONLY: &[&str] = &[
    "addnode", "bind", "connect", "port", "rpcbind", "rpcport", "wallet",
];

/// Options this node understands; anything else is ignored with a warning
/// (bitcoind knows many more, which we simply have no use for).
const KNOWN: &[&str] = &[
    "addnode",
    "bind",
    "blockfilterindex",
    "chain",
    "connect",
    "datadir",
    "dbcache",
    "debug",
    "listen",
    "maxmempool",
    "port",
    "printtoconsole",
    "regtest",
    "rpcallowip",
    "rpcauth",
    "rpcbind",
    "rpccookiefile",
    "rpcpassword",
    "rpcport",
    "rpcuser",
    "server",
    "signet",
    "testnet",
    "testnet4",
    "txindex",
    "wallet",
    "fallbackfee",
];

const CHAINS: &[&str] = &["main", "test", "testnet4", "signet", "regtest"];

/// One `key=value` line after section resolution.
#[derive(Debug, Clone)]
struct Setting {
    section: Option<String>,
    key: String,
    /// `None` for a negated option (`nofoo=1`).
    value: Option<String>,
}

/// An `rpcauth=user:salt$hmac` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcAuth {
    pub user: String,
    pub salt: String,
    pub hmac: String,
}

impl RpcAuth {
    fn parse(s: &str) -> Result<RpcAuth, Error> {
        let bad = || Error::Config(format!("Invalid -rpcauth argument: {s}"));
        let (user, rest) = s.split_once(':').ok_or_else(bad)?;
        let (salt, hmac) = rest.split_once('$').ok_or_else(bad)?;
        if user.is_empty() || salt.is_empty() || hmac.is_empty() || hmac.contains('$') {
            return Err(bad());
        }
        Ok(RpcAuth {
            user: user.to_string(),
            salt: salt.to_string(),
            hmac: hmac.to_ascii_lowercase(),
        })
    }

    /// HMAC-SHA256 keyed with the salt string over the password, as hex.
    pub fn digest(salt: &str, password: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(salt.as_bytes()).expect("any key length");
        mac.update(password.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    fn matches(&self, user: &str, password: &str) -> bool {
        self.user == user && Self::digest(&self.salt, password) == self.hmac
    }
}

/// A parsed `bitcoin.conf`.
#[derive(Debug, Clone)]
pub struct Config {
    chain: String,
    rpc_port: u16,
    p2p_port: u16,
    rpc_user: Option<String>,
    rpc_password: Option<String>,
    rpc_auth: Vec<RpcAuth>,
    add_nodes: Vec<String>,
    rpc_bind: Option<String>,
    txindex: bool,
    blockfilterindex: bool,
}

impl Config {
    /// Parse `bitcoin.conf` text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let settings = read_settings(text)?;
        let args = Args { settings };
        let chain = args.chain()?;
        let (rpc_default, p2p_default) = match chain.as_str() {
            "main" => (8332, 8333),
            "test" => (18332, 18333),
            "testnet4" => (48332, 48333),
            "signet" => (38332, 38333),
            _ => (18443, 18444),
        };
        let port_of = |key: &str, default: u16| -> Result<u16, Error> {
            match args.get(&chain, key) {
                Some(v) => parse_port(key, &v),
                None => Ok(default),
            }
        };
        let rpc_port = port_of("rpcport", rpc_default)?;
        let p2p_port = port_of("port", p2p_default)?;
        // A port in rpcbind=/bind= overrides rpcport=/port=, as in bitcoind.
        let rpc_port = bind_port(args.get_all(&chain, "rpcbind").first(), rpc_port)?;
        let p2p_port = bind_port(args.get_all(&chain, "bind").first(), p2p_port)?;
        let rpc_auth = args
            .get_all(&chain, "rpcauth")
            .iter()
            .map(|s| RpcAuth::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        // No UTXO set or mempool here, so dbcache and maxmempool change
        // nothing; but like Core, a mempool that cannot hold 40 packages of
        // 101 kvB (below 5 MB) stops the node.
        if let Some(mb) = args.get(&chain, "maxmempool") {
            if mb.trim().parse::<i64>().unwrap_or(0) < 5 {
                return Err(Error::Config("-maxmempool must be at least 5 MB".into()));
            }
        }
        let flag = |key: &str| args.get(&chain, key).is_some_and(|v| interpret_bool(&v));
        // Core knows one filter type, `basic`; 1 means all of them.
        let blockfilterindex = match args.get(&chain, "blockfilterindex").as_deref() {
            None => false,
            Some("basic") => true,
            Some(v) if v.trim().parse::<i64>().is_ok() || v.is_empty() => interpret_bool(v),
            Some(v) => {
                return Err(Error::Config(format!(
                    "Unknown -blockfilterindex value {v}."
                )))
            }
        };
        Ok(Config {
            txindex: flag("txindex"),
            blockfilterindex,
            rpc_user: args.get(&chain, "rpcuser"),
            rpc_password: args.get(&chain, "rpcpassword").filter(|p| !p.is_empty()),
            rpc_auth,
            add_nodes: args.get_all(&chain, "addnode"),
            rpc_bind: args.get_all(&chain, "rpcbind").into_iter().next(),
            chain,
            rpc_port,
            p2p_port,
        })
    }

    /// JSON-RPC port (regtest default 18443).
    pub fn rpc_port(&self) -> u16 {
        self.rpc_port
    }

    /// P2P port (regtest default 18444).
    pub fn p2p_port(&self) -> u16 {
        self.p2p_port
    }

    /// Override the ports (0 picks a free port). bitcoind has no such thing;
    /// it is for tests that run many nodes on one address.
    pub fn set_ports(&mut self, rpc: u16, p2p: u16) {
        self.rpc_port = rpc;
        self.p2p_port = p2p;
    }

    /// Selected chain, named as bitcoind names it: `main`, `test`, `testnet4`,
    /// `signet` or `regtest`.
    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// The address of the first `rpcbind=` entry for the selected chain
    /// (`IP`, `IP:port`, `[IPv6]` or `[IPv6]:port`); `None` without one or
    /// for a host name. The `bitcoind` entry point of the node image binds
    /// it, `::` being one dual-stack socket as in Core.
    pub fn rpc_bind_ip(&self) -> Option<std::net::IpAddr> {
        let bind = self.rpc_bind.as_deref()?;
        if let Some(rest) = bind.strip_prefix('[') {
            return rest.split_once(']')?.0.parse().ok();
        }
        bind.parse()
            .ok()
            .or_else(|| bind.rsplit_once(':')?.0.parse().ok())
    }

    /// Whether `txindex` is on. This node keeps no transaction index (its
    /// blocks hold only a coinbase), but reports the index in
    /// `getindexinfo` as Core does.
    pub fn txindex(&self) -> bool {
        self.txindex
    }

    /// Whether `blockfilterindex` is on (`1` or `basic`); reported by
    /// `getindexinfo` like [`Config::txindex`].
    pub fn blockfilterindex(&self) -> bool {
        self.blockfilterindex
    }

    /// `addnode=` entries that apply to the selected chain.
    pub fn add_nodes(&self) -> &[String] {
        &self.add_nodes
    }

    /// `rpcauth=` entries that apply to the selected chain.
    pub fn rpc_auth(&self) -> &[RpcAuth] {
        &self.rpc_auth
    }

    /// True when bitcoind would write a cookie file (no `rpcpassword`).
    pub fn uses_cookie(&self) -> bool {
        self.rpc_password.is_none()
    }

    /// Check RPC credentials against `rpcuser`/`rpcpassword` and `rpcauth`.
    pub fn check_credentials(&self, user: &str, password: &str) -> bool {
        let plain = match (&self.rpc_user, &self.rpc_password) {
            (Some(u), Some(p)) => u == user && p == password,
            _ => false,
        };
        plain || self.rpc_auth.iter().any(|a| a.matches(user, password))
    }
}

fn parse_port(key: &str, v: &str) -> Result<u16, Error> {
    match v.trim().parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(Error::Config(format!(
            "Invalid port specified in -{key}: '{v}'"
        ))),
    }
}

/// The port of `host:port` / `[v6]:port` if it has one, else `default`.
fn bind_port(bind: Option<&String>, default: u16) -> Result<u16, Error> {
    let Some(b) = bind else { return Ok(default) };
    let port = if let Some(rest) = b.strip_prefix('[') {
        rest.split_once("]:").map(|(_, p)| p)
    } else if b.matches(':').count() == 1 {
        b.split_once(':').map(|(_, p)| p)
    } else {
        None
    };
    match port {
        Some(p) => parse_port("bind", p),
        None => Ok(default),
    }
}

fn read_settings(text: &str) -> Result<Vec<Setting>, Error> {
    let mut section: Option<String> = None;
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line_no = n + 1;
        let (content, had_comment) = match raw.find('#') {
            Some(i) => (&raw[..i], true),
            None => (raw, false),
        };
        let line = content.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            if !CHAINS.contains(&name) {
                log::warn!("bitcoin.conf: section [{name}] is not recognized");
            }
            section = Some(name.to_string());
            continue;
        }
        if line.starts_with('-') {
            return Err(Error::Config(format!(
                "parse error on line {line_no}, options in configuration file must be specified without leading -"
            )));
        }
        let Some((key, value)) = line.split_once('=') else {
            let hint = match line.strip_prefix("no") {
                Some(rest) => {
                    format!(", if you intended to specify a negated option, use -{rest}=1 instead")
                }
                None => String::new(),
            };
            return Err(Error::Config(format!(
                "parse error on line {line_no}: {line}{hint}"
            )));
        };
        let (key, value) = (key.trim(), value.trim());
        if had_comment && key == "rpcpassword" {
            return Err(Error::Config(format!(
                "parse error on line {line_no}, using # in rpcpassword can be ambiguous and should be avoided"
            )));
        }
        let (sec, key) = match key.split_once('.') {
            Some((s, k)) => (Some(s.to_string()), k),
            None => (section.clone(), key),
        };
        let (key, value) = match key.strip_prefix("no") {
            Some(k) if KNOWN.contains(&k) => {
                // nofoo=1 negates foo; nofoo=0 means foo=1.
                (
                    k,
                    if interpret_bool(value) {
                        None
                    } else {
                        Some("1".to_string())
                    },
                )
            }
            _ => (key, Some(value.to_string())),
        };
        if !KNOWN.contains(&key) {
            log::warn!("bitcoin.conf: ignoring unknown configuration value {key}");
            continue;
        }
        out.push(Setting {
            section: sec,
            key: key.to_string(),
            value,
        });
    }
    Ok(out)
}

/// bitcoind's InterpretBool: empty means true, otherwise a number != 0.
fn interpret_bool(v: &str) -> bool {
    v.is_empty() || v.trim().parse::<i64>().map(|n| n != 0).unwrap_or(false)
}

struct Args {
    settings: Vec<Setting>,
}

impl Args {
    fn values<'a>(
        &'a self,
        section: Option<&'a str>,
        key: &'a str,
    ) -> impl Iterator<Item = &'a Setting> {
        self.settings
            .iter()
            .filter(move |s| s.key == key && s.section.as_deref() == section)
    }

    /// Single value: chain section first, then top level; first line wins.
    fn get(&self, chain: &str, key: &str) -> Option<String> {
        let top_allowed = chain == "main" || !NETWORK_ONLY.contains(&key);
        let from_section = self.values(Some(chain), key).next();
        let setting = match from_section {
            Some(s) => Some(s),
            None if top_allowed => self.values(None, key).next(),
            None => None,
        };
        setting.and_then(|s| s.value.clone())
    }

    fn get_bool(&self, key: &str) -> bool {
        self.values(None, key)
            .next()
            .and_then(|s| s.value.as_deref())
            .map(interpret_bool)
            .unwrap_or(false)
    }

    /// All values: chain section, then top level (unless network-only).
    fn get_all(&self, chain: &str, key: &str) -> Vec<String> {
        let mut out: Vec<&Setting> = self.values(Some(chain), key).collect();
        if chain == "main" || !NETWORK_ONLY.contains(&key) {
            out.extend(self.values(None, key));
        }
        // A negation clears everything before it.
        let start = out
            .iter()
            .rposition(|s| s.value.is_none())
            .map_or(0, |i| i + 1);
        out[start..]
            .iter()
            .filter_map(|s| s.value.clone())
            .collect()
    }

    fn chain(&self) -> Result<String, Error> {
        let mut chosen: Vec<String> = Vec::new();
        for (flag, name) in [
            ("regtest", "regtest"),
            ("testnet", "test"),
            ("testnet4", "testnet4"),
            ("signet", "signet"),
        ] {
            if self.get_bool(flag) {
                chosen.push(name.to_string());
            }
        }
        if let Some(c) = self
            .values(None, "chain")
            .next()
            .and_then(|s| s.value.clone())
        {
            if !CHAINS.contains(&c.as_str()) {
                return Err(Error::Config(format!("Invalid chain '{c}'")));
            }
            chosen.push(c);
        }
        match chosen.len() {
            0 => Ok("main".to_string()),
            1 => Ok(chosen.remove(0)),
            _ => Err(Error::Config(
                "Invalid combination of -regtest, -signet, -testnet, -testnet4 and -chain. Can use at most one."
                    .to_string(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTROLLER_CONF: &str = "regtest=1\nserver=1\n\
        rpcauth=alice:0123456789abcdef0123456789abcdef$PLACEHOLDER\n\
        [regtest]\nrpcbind=::\nrpcallowip=0.0.0.0/0\nrpcallowip=::/0\nrpcport=18443\nport=18444\n";

    fn controller_conf(password: &str) -> String {
        let salt = "0123456789abcdef0123456789abcdef";
        CONTROLLER_CONF.replace("PLACEHOLDER", &RpcAuth::digest(salt, password))
    }

    #[test]
    fn controller_rendered_config() {
        let c = Config::parse(&controller_conf("s3cret")).unwrap();
        assert_eq!(c.chain(), "regtest");
        assert_eq!((c.rpc_port(), c.p2p_port()), (18443, 18444));
        assert!(c.check_credentials("alice", "s3cret"));
        assert!(!c.check_credentials("alice", "wrong"));
        assert!(!c.check_credentials("bob", "s3cret"));
        assert!(c.uses_cookie());
    }

    #[test]
    fn defaults_are_regtest_ports() {
        let c = Config::parse("regtest=1\n").unwrap();
        assert_eq!((c.rpc_port(), c.p2p_port()), (18443, 18444));
    }

    #[test]
    fn network_options_at_top_level_are_mainnet_only() {
        let c = Config::parse("regtest=1\nrpcport=1000\nport=1001\naddnode=1.2.3.4\n").unwrap();
        assert_eq!((c.rpc_port(), c.p2p_port()), (18443, 18444));
        assert!(c.add_nodes().is_empty());
        let main = Config::parse("rpcport=1000\nport=1001\n").unwrap();
        assert_eq!(main.chain(), "main");
        assert_eq!((main.rpc_port(), main.p2p_port()), (1000, 1001));
    }

    #[test]
    fn section_and_prefix_forms() {
        let c = Config::parse(
            "regtest=1\nregtest.rpcport=2000\n[regtest]\nport=2001\naddnode=10.0.0.1\naddnode=10.0.0.2\n[main]\nport=9\n",
        )
        .unwrap();
        assert_eq!((c.rpc_port(), c.p2p_port()), (2000, 2001));
        assert_eq!(c.add_nodes(), ["10.0.0.1", "10.0.0.2"]);
    }

    #[test]
    fn first_value_wins_and_section_beats_top_level() {
        let c = Config::parse(
            "regtest=1\nrpcuser=top\nrpcpassword=pw\n[regtest]\nrpcuser=sec\nrpcuser=later\n",
        )
        .unwrap();
        assert!(c.check_credentials("sec", "pw"));
        assert!(!c.check_credentials("top", "pw"));
        assert!(!c.uses_cookie());
    }

    #[test]
    fn bind_port_overrides_rpcport() {
        let c = Config::parse(
            "regtest=1\n[regtest]\nrpcport=1\nrpcbind=0.0.0.0:3000\nbind=[::]:3001\n",
        )
        .unwrap();
        assert_eq!((c.rpc_port(), c.p2p_port()), (3000, 3001));
    }

    #[test]
    fn multiple_rpcauth_lines_and_comments() {
        let salt = "ab";
        let conf = format!(
            "# comment\nregtest=1 # trailing\nrpcauth=a:{salt}${}\nrpcauth=b:{salt}${}\nunknownkey=1\n",
            RpcAuth::digest(salt, "pa"),
            RpcAuth::digest(salt, "pb")
        );
        let c = Config::parse(&conf).unwrap();
        assert_eq!(c.rpc_auth().len(), 2);
        assert!(c.check_credentials("a", "pa") && c.check_credentials("b", "pb"));
        assert!(!c.check_credentials("a", "pb"));
    }

    #[test]
    fn errors_like_bitcoind() {
        let err = |t: &str| Config::parse(t).unwrap_err().to_string();
        assert!(err("regtest=1\nfoo\n").contains("parse error on line 2: foo"));
        assert!(err("noregtest\n").contains("use -regtest=1 instead"));
        assert!(err("-regtest=1\n").contains("without leading -"));
        assert!(err("regtest=1\nrpcauth=nouser\n").contains("Invalid -rpcauth"));
        assert!(err("regtest=1\n[regtest]\nport=abc\n").contains("Invalid port"));
        assert!(err("regtest=1\ntestnet=1\n").contains("Invalid combination"));
        assert!(err("rpcpassword=a#b\n").contains("using # in rpcpassword"));
    }

    #[test]
    fn chain_selection() {
        assert_eq!(Config::parse("chain=regtest\n").unwrap().chain(), "regtest");
        assert_eq!(Config::parse("regtest=0\n").unwrap().chain(), "main");
        assert_eq!(Config::parse("regtest=\n").unwrap().chain(), "regtest");
        assert_eq!(Config::parse("noregtest=1\n").unwrap().chain(), "main");
        let t = Config::parse("testnet=1\n").unwrap();
        assert_eq!((t.chain(), t.rpc_port()), ("test", 18332));
    }

    /// The node options bitcoin-controller can render from `spec.config`
    /// and the memory limit: known ones are accepted, the others ignored
    /// with a warning; none stops the node from starting.
    #[test]
    fn controller_node_options_are_accepted() {
        let conf = format!(
            "{}txindex=1\nfallbackfee=0.0002\nblockfilterindex=1\nnotxindex=0\n\
             dbcache=211\nmaxmempool=147\npeerbloomfilters=1\n",
            controller_conf("pw")
        );
        let c = Config::parse(&conf).unwrap();
        assert_eq!(c.chain(), "regtest");
        assert_eq!((c.rpc_port(), c.p2p_port()), (18443, 18444));
        assert!(c.check_credentials("alice", "pw"));
        assert!(c.txindex() && c.blockfilterindex());
        let off = format!("{}txindex=0\nblockfilterindex=0\n", controller_conf("pw"));
        let c = Config::parse(&off).unwrap();
        assert!(!c.txindex() && !c.blockfilterindex());
        let c = Config::parse("regtest=1\nblockfilterindex=basic\n").unwrap();
        assert!(c.blockfilterindex() && !c.txindex());
        let err = Config::parse("regtest=1\n[regtest]\nmaxmempool=4\n").unwrap_err();
        assert!(err
            .to_string()
            .contains("-maxmempool must be at least 5 MB"));
        assert!(Config::parse("regtest=1\n[regtest]\nmaxmempool=5\ndbcache=4\n").is_ok());
        let err = Config::parse("regtest=1\nblockfilterindex=fancy\n").unwrap_err();
        assert!(err
            .to_string()
            .contains("Unknown -blockfilterindex value fancy."));
    }

    #[test]
    fn rpc_bind_address() {
        let ip = |conf: &str| Config::parse(conf).unwrap().rpc_bind_ip();
        let v6 = Some(std::net::Ipv6Addr::UNSPECIFIED.into());
        let v4 = Some(std::net::Ipv4Addr::UNSPECIFIED.into());
        assert_eq!(
            ip("regtest=1\n[regtest]\nrpcbind=::\nrpcbind=0.0.0.0\n"),
            v6
        );
        assert_eq!(ip("regtest=1\n[regtest]\nrpcbind=[::]:3000\n"), v6);
        assert_eq!(ip("regtest=1\n[regtest]\nrpcbind=0.0.0.0\n"), v4);
        assert_eq!(ip("regtest=1\n[regtest]\nrpcbind=0.0.0.0:3000\n"), v4);
        assert_eq!(ip("regtest=1\n[regtest]\nrpcbind=localhost\n"), None);
        assert_eq!(
            ip("regtest=1\nrpcbind=::\n"),
            None,
            "top level is mainnet's"
        );
        assert_eq!(ip("regtest=1\n"), None);
    }
}
