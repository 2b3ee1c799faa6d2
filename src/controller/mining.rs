//! Mining by the controller (`spec.mining`), as pure decisions: which node
//! mines, how many blocks now, and when to look again. The reconcile shell
//! observes the nodes over RPC, asks [`decide`], and calls
//! `generatetoaddress`.
//!
//! Everything is derived from the chain as the nodes report it, never from
//! a timer or a counter in memory: `initialBlocks` is a height to reach
//! (the blocks missing are mined, whoever mined the others), and with an
//! `interval` a block is due when the tip (the newest block's header time)
//! is that old. A restarted controller, or a new leader, observes the same
//! chain and decides the same, so no block is mined twice or skipped.

use std::str::FromStr;
use std::time::Duration;

use bitcoin::key::{CompressedPublicKey, PrivateKey, Secp256k1};
use bitcoin::secp256k1::SecretKey;
use bitcoin::{Address, Network, NetworkKind};

use crate::api::{BitcoinNetwork, BitcoinNetworkNode, MiningSpec};

/// The ordinal that mines when `spec.mining.node` is absent.
pub const DEFAULT_NODE: i32 = 0;

/// Most blocks one `generatetoaddress` call asks for; a bigger gap to
/// `initialBlocks` takes several reconciles, one call each.
pub const MAX_BLOCKS_PER_CALL: u64 = 500;

/// How soon to look again while the mining node is behind the rest of the
/// network (it is catching up over P2P; mining now would fork).
pub const CATCH_UP_POLL: Duration = Duration::from_secs(2);

/// Key of the generated mining key (WIF) in the credentials Secret.
pub const MINING_KEY: &str = "BC_MINING_KEY";

/// The node that mines, and that `status.height` describes: `preferred`
/// when it is a ready node of the network (ordinal below `desired`), else
/// the lowest ready ordinal below `desired`; `None` when no node is ready.
/// (A Service that points at "the mining node" selects the same one.)
pub fn mining_node(preferred: i32, desired: i32, nodes: &[BitcoinNetworkNode]) -> Option<i32> {
    let ready = |o: i32| o < desired && nodes.iter().any(|n| n.ordinal == o && n.ready);
    if ready(preferred) {
        return Some(preferred);
    }
    nodes
        .iter()
        .filter(|n| ready(n.ordinal))
        .map(|n| n.ordinal)
        .min()
}

/// The node `net` asks to mine: `spec.mining.node`, else [`DEFAULT_NODE`].
pub fn preferred_node(net: &BitcoinNetwork) -> i32 {
    net.spec
        .mining
        .as_ref()
        .and_then(|m| m.node)
        .unwrap_or(DEFAULT_NODE)
}

/// The mining node of `net` (see [`mining_node`]); apps' Service
/// (`spec.service`) routes to it too.
pub fn network_mining_node(net: &BitcoinNetwork, nodes: &[BitcoinNetworkNode]) -> Option<i32> {
    mining_node(preferred_node(net), net.spec.nodes, nodes)
}

/// `spec.mining.interval` (`30s`, `5m`, `1h30m`: hours, minutes, seconds,
/// as the CRD's pattern allows), or `None` when it is malformed or zero.
pub fn parse_interval(text: &str) -> Option<Duration> {
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        let n: u64 = digits.parse().ok()?;
        digits.clear();
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    (digits.is_empty() && total > 0).then(|| Duration::from_secs(total))
}

/// What `spec.mining` asks for, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub initial_blocks: u64,
    pub interval: Option<Duration>,
}

impl Plan {
    /// The plan of `spec`, or why it cannot work (for specs stored before
    /// the CRD's rules; the API server refuses such specs today).
    pub fn of(spec: &MiningSpec) -> Result<Plan, String> {
        let interval = match spec.interval.as_deref() {
            None => None,
            Some(text) => Some(parse_interval(text).ok_or_else(|| {
                format!(
                    "spec.mining.interval {text:?} is not a duration of at least 1s such as 30s, 5m or 1h30m"
                )
            })?),
        };
        Ok(Plan {
            initial_blocks: u64::try_from(spec.initial_blocks.unwrap_or(0)).unwrap_or(0),
            interval,
        })
    }
}

/// The mining node's chain, as it reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tip {
    pub height: u64,
    /// Header time of the best block (UNIX seconds; getblockchaininfo
    /// `time`).
    pub time: u64,
}

/// What the decision looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The mining node's tip; `None` when no node is ready or it did not
    /// answer.
    pub miner: Option<Tip>,
    /// The highest height any ready node reported.
    pub best_height: u64,
    /// Now, in milliseconds since the UNIX epoch.
    pub now_ms: u64,
}

/// Blocks to mine now, and when to look again (`None`: only when something
/// changes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub mine: u64,
    pub look_again: Option<Duration>,
}

const fn decision(mine: u64, look_again: Option<Duration>) -> Decision {
    Decision { mine, look_again }
}

/// The mining decision: level-based (the blocks missing to
/// `initial_blocks`, never "N more per reconcile"), then one block when the
/// tip is `interval` old; nothing while the mining node is behind the
/// network (it would fork the chain).
pub fn decide(plan: &Plan, observed: &Observed) -> Decision {
    let Some(tip) = observed.miner else {
        // No mining node: a pod becoming ready queues the network again.
        return decision(0, None);
    };
    if tip.height < observed.best_height {
        return decision(0, Some(CATCH_UP_POLL));
    }
    if tip.height < plan.initial_blocks {
        let missing = plan.initial_blocks - tip.height;
        let mine = missing.min(MAX_BLOCKS_PER_CALL);
        // More to mine: at once. Done: the interval starts at the new tip.
        let next = if mine < missing {
            Some(Duration::ZERO)
        } else {
            plan.interval
        };
        return decision(mine, next);
    }
    let Some(interval) = plan.interval else {
        return decision(0, None);
    };
    let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
    let due_ms = tip.time.saturating_mul(1000).saturating_add(interval_ms);
    if observed.now_ms >= due_ms {
        // One block, however long the tip has waited (a controller that was
        // down for three intervals does not catch up with three blocks).
        decision(1, Some(interval))
    } else {
        decision(0, Some(Duration::from_millis(due_ms - observed.now_ms)))
    }
}

/// A new mining key, in WIF (regtest/testnet prefix).
pub fn new_mining_key() -> String {
    loop {
        let bytes: [u8; 32] = rand::random();
        if let Ok(secret) = SecretKey::from_slice(&bytes) {
            return PrivateKey::new(secret, NetworkKind::Test).to_wif();
        }
    }
}

/// The P2WPKH regtest address (bcrt1q...) of a WIF key, or why there is
/// none. The error never contains the key.
pub fn address_of_key(wif: &str) -> Result<String, String> {
    let key =
        PrivateKey::from_wif(wif.trim()).map_err(|_| "is not a private key in WIF".to_owned())?;
    if key.network != NetworkKind::Test {
        return Err("is a mainnet key; regtest keys start with c (compressed) or 9".to_owned());
    }
    let public =
        CompressedPublicKey::from_private_key(&Secp256k1::signing_only(), &key).map_err(|_| {
            "is an uncompressed key; use a compressed one (WIF starting with c)".to_owned()
        })?;
    Ok(Address::p2wpkh(&public, Network::Regtest).to_string())
}

/// Whether `address` is a valid regtest address (checksum included).
pub fn check_address(address: &str) -> Result<(), String> {
    Address::from_str(address)
        .map_err(|e| e.to_string())?
        .require_network(Network::Regtest)
        .map(|_| ())
        .map_err(|_| "is not a regtest address".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ordinal: i32, ready: bool) -> BitcoinNetworkNode {
        BitcoinNetworkNode {
            ordinal,
            ready,
            ..Default::default()
        }
    }

    #[test]
    fn mining_node_prefers_the_spec_then_the_lowest_ready_ordinal() {
        let all = [node(0, true), node(1, true), node(2, true)];
        let zero_down = [node(0, false), node(1, true), node(2, true)];
        let none = [node(0, false), node(1, false)];
        // (preferred, desired, nodes) -> mining node
        let cases: [(i32, i32, &[BitcoinNetworkNode], Option<i32>); 8] = [
            (0, 3, &all, Some(0)),
            (2, 3, &all, Some(2)),
            (0, 3, &zero_down, Some(1)),
            (2, 3, &zero_down, Some(2)),
            (0, 2, &none, None),
            // An ordinal beyond spec.nodes (a pod being scaled away) never mines.
            (2, 2, &all, Some(0)),
            (5, 3, &all, Some(0)),
            (0, 0, &all, None),
        ];
        for (preferred, desired, nodes, want) in cases {
            assert_eq!(
                mining_node(preferred, desired, nodes),
                want,
                "preferred {preferred} desired {desired}"
            );
        }
    }

    #[test]
    fn intervals_are_hours_minutes_and_seconds() {
        for (text, want) in [
            ("30s", Some(30)),
            ("5m", Some(300)),
            ("1h30m", Some(5400)),
            ("1m1s", Some(61)),
            ("90s", Some(90)),
            ("0s", None),
            ("", None),
            ("30", None),
            ("1.5h", None),
            ("300ms", None),
            ("s", None),
            ("-1s", None),
            ("99999999999999999999h", None),
        ] {
            assert_eq!(
                parse_interval(text),
                want.map(Duration::from_secs),
                "{text:?}"
            );
        }
    }

    const NOW: u64 = 1_800_000_000;

    fn observed(tip: Option<(u64, u64)>, best: u64, now: u64) -> Observed {
        Observed {
            miner: tip.map(|(height, time)| Tip { height, time }),
            best_height: best,
            now_ms: now * 1000,
        }
    }

    /// The decision over height, interval and the tip's time, including
    /// what a restarted controller or a new leader sees: the same chain, so
    /// the same answer.
    #[test]
    fn decision_table() {
        let s = Duration::from_secs;
        let initial = |n| Plan {
            initial_blocks: n,
            interval: None,
        };
        let periodic = |n, secs| Plan {
            initial_blocks: n,
            interval: Some(s(secs)),
        };
        // (case, plan, miner (height, tip time), best height, now) -> decision
        type Case = (&'static str, Plan, Option<(u64, u64)>, u64, u64, Decision);
        let cases: Vec<Case> = vec![
            (
                "no plan",
                initial(0),
                Some((0, NOW)),
                0,
                NOW,
                decision(0, None),
            ),
            (
                "no mining node",
                initial(101),
                None,
                0,
                NOW,
                decision(0, None),
            ),
            (
                "fresh chain",
                initial(101),
                Some((0, 1_296_688_602)),
                0,
                NOW,
                decision(101, None),
            ),
            (
                "part way (a kill after some blocks)",
                initial(101),
                Some((60, NOW)),
                60,
                NOW,
                decision(41, None),
            ),
            (
                "reached: nothing more, ever",
                initial(101),
                Some((101, NOW)),
                101,
                NOW,
                decision(0, None),
            ),
            (
                "restarted controller, height reached long ago",
                initial(101),
                Some((101, NOW - 86_400)),
                101,
                NOW,
                decision(0, None),
            ),
            (
                "blocks mined by someone else count",
                initial(101),
                Some((150, NOW)),
                150,
                NOW,
                decision(0, None),
            ),
            (
                "big gap: capped, look again at once",
                initial(1200),
                Some((0, NOW)),
                0,
                NOW,
                decision(MAX_BLOCKS_PER_CALL, Some(Duration::ZERO)),
            ),
            (
                "last capped call",
                initial(1200),
                Some((1000, NOW)),
                1000,
                NOW,
                decision(200, None),
            ),
            (
                "mining node behind the network: wait, no fork",
                initial(101),
                Some((0, NOW)),
                101,
                NOW,
                decision(0, Some(CATCH_UP_POLL)),
            ),
            (
                "initial then interval starts at the new tip",
                periodic(101, 30),
                Some((0, NOW)),
                0,
                NOW,
                decision(101, Some(s(30))),
            ),
            (
                "tip 10 s old: due in 20 s",
                periodic(101, 30),
                Some((101, NOW - 10)),
                101,
                NOW,
                decision(0, Some(s(20))),
            ),
            (
                "tip exactly an interval old",
                periodic(101, 30),
                Some((101, NOW - 30)),
                101,
                NOW,
                decision(1, Some(s(30))),
            ),
            (
                "restart right after a block: no second block",
                periodic(0, 30),
                Some((102, NOW)),
                102,
                NOW,
                decision(0, Some(s(30))),
            ),
            (
                "new leader after 95 s without one: one block, not three",
                periodic(0, 30),
                Some((102, NOW - 95)),
                102,
                NOW,
                decision(1, Some(s(30))),
            ),
            (
                "a tip in the future (a burst of blocks): wait for it",
                periodic(101, 30),
                Some((101, NOW + 17)),
                101,
                NOW,
                decision(0, Some(s(47))),
            ),
            (
                "periodic behind the network: wait",
                periodic(0, 30),
                Some((5, NOW - 60)),
                6,
                NOW,
                decision(0, Some(CATCH_UP_POLL)),
            ),
        ];
        for (case, plan, tip, best, now, want) in cases {
            assert_eq!(decide(&plan, &observed(tip, best, now)), want, "{case}");
        }
        // Milliseconds count: 250 ms before the due second, look again then.
        let plan = periodic(0, 30);
        let mut o = observed(Some((5, NOW - 30)), 5, NOW);
        o.now_ms -= 250;
        assert_eq!(
            decide(&plan, &o),
            decision(0, Some(Duration::from_millis(250)))
        );
    }

    #[test]
    fn plans_come_from_the_spec() {
        let spec = MiningSpec {
            initial_blocks: Some(101),
            interval: Some("1m".into()),
            ..Default::default()
        };
        assert_eq!(
            Plan::of(&spec),
            Ok(Plan {
                initial_blocks: 101,
                interval: Some(Duration::from_secs(60))
            })
        );
        assert_eq!(
            Plan::of(&MiningSpec::default()),
            Ok(Plan {
                initial_blocks: 0,
                interval: None
            })
        );
        let bad = MiningSpec {
            interval: Some("soon".into()),
            ..Default::default()
        };
        assert!(Plan::of(&bad).unwrap_err().contains("spec.mining.interval"));
    }

    #[test]
    fn generated_keys_give_regtest_addresses() {
        let a = new_mining_key();
        let b = new_mining_key();
        assert_ne!(a, b);
        assert!(a.starts_with('c'), "compressed testnet WIF");
        let address = address_of_key(&a).unwrap();
        assert!(address.starts_with("bcrt1q"), "{address}");
        assert_eq!(check_address(&address), Ok(()));
        // The same key always gives the same address.
        assert_eq!(address_of_key(&a).unwrap(), address);
        // A known vector: the WIF of private key 1 (compressed, testnet).
        assert_eq!(
            address_of_key("cMahea7zqjxrtgAbB7LSGbcQUr1uX1ojuat9jZodMN87JcbXMTcA").unwrap(),
            "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
        );
        let err = address_of_key("not a key").unwrap_err();
        assert!(!err.contains("not a key"), "the key stays out of messages");
        // Mainnet WIF of key 1.
        assert!(
            address_of_key("KwDiBf89QgGbjEhKnhXJuH7LrciVrZi3qYjgd9M7rFU73sVHnoWn")
                .unwrap_err()
                .contains("mainnet")
        );
    }

    #[test]
    fn addresses_are_checked_for_regtest() {
        for good in [
            "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080",
            "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn",
            "2MzQwSSnBHWHqSAqtTVQ6v47XtaisrJa1Vc",
        ] {
            assert_eq!(check_address(good), Ok(()), "{good}");
        }
        for bad in [
            "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4",
            "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2",
            // One character changed: the checksum fails.
            "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt081",
            "x",
        ] {
            assert!(check_address(bad).is_err(), "{bad}");
        }
    }
}
