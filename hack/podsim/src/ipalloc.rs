//! Loopback addresses for pods: `<prefix>.x.y`, one per pod UID, handed out
//! round-robin (like host-local IPAM, so a freed address is not reused at
//! once) and persisted so that a restarted podsim gives every pod its old
//! address back.
//!
//! Usable last octets are 2..=254: `.0` and `.255` look like network and
//! broadcast addresses to tools, and `.1` of `127.x.y.1` is left out so that
//! `127.0.0.1`-style "host" addresses never belong to a pod.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

const FIRST_HOST: u8 = 2;
const LAST_HOST: u8 = 254;
const HOSTS_PER_BLOCK: u32 = (LAST_HOST - FIRST_HOST) as u32 + 1;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("invalid ip prefix {0:?}: want 127.N or 127.N.N")]
    BadPrefix(String),
    #[error("no free address left under prefix {0}")]
    Exhausted(String),
}

/// `127.N` (64k-ish addresses) or `127.N.N` (253 addresses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix {
    octets: Vec<u8>,
}

impl Prefix {
    pub fn parse(text: &str) -> Result<Prefix, AllocError> {
        let bad = || AllocError::BadPrefix(text.to_string());
        let octets = text
            .trim_end_matches('.')
            .split('.')
            .map(|part| part.parse::<u8>().map_err(|_| bad()))
            .collect::<Result<Vec<u8>, _>>()?;
        if !(2..=3).contains(&octets.len()) || octets[0] != 127 {
            return Err(bad());
        }
        Ok(Prefix { octets })
    }

    /// Number of addresses this prefix can hand out.
    pub fn size(&self) -> u32 {
        if self.octets.len() == 2 {
            256 * HOSTS_PER_BLOCK
        } else {
            HOSTS_PER_BLOCK
        }
    }

    /// The `index`th usable address (`index < size()`).
    pub fn addr(&self, index: u32) -> Ipv4Addr {
        let host = FIRST_HOST + (index % HOSTS_PER_BLOCK) as u8;
        let block = (index / HOSTS_PER_BLOCK) as u8;
        match self.octets[..] {
            [a, b] => Ipv4Addr::new(a, b, block, host),
            [a, b, c] => Ipv4Addr::new(a, b, c, host),
            _ => unreachable!("checked in parse"),
        }
    }

    /// Inverse of [`Prefix::addr`]; `None` for addresses this prefix never
    /// hands out.
    pub fn index_of(&self, ip: Ipv4Addr) -> Option<u32> {
        let o = ip.octets();
        if o[..self.octets.len()] != self.octets[..] || !(FIRST_HOST..=LAST_HOST).contains(&o[3]) {
            return None;
        }
        let block = if self.octets.len() == 2 {
            o[2] as u32
        } else {
            0
        };
        Some(block * HOSTS_PER_BLOCK + (o[3] - FIRST_HOST) as u32)
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.octets.iter().map(u8::to_string).collect();
        f.write_str(&parts.join("."))
    }
}

/// What is written to `<state-dir>/ips.json`.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
struct State {
    prefix: String,
    next: u32,
    pods: BTreeMap<String, Ipv4Addr>,
}

#[derive(Debug)]
pub struct IpAllocator {
    prefix: Prefix,
    next: u32,
    by_uid: BTreeMap<String, Ipv4Addr>,
    owner: HashMap<Ipv4Addr, String>,
}

impl IpAllocator {
    pub fn new(prefix: Prefix) -> IpAllocator {
        IpAllocator {
            prefix,
            next: 0,
            by_uid: BTreeMap::new(),
            owner: HashMap::new(),
        }
    }

    /// The address of `uid`, allocating one if it has none. `preferred` (the
    /// address the pod already reports in its status) wins when it is one of
    /// ours and no other pod holds it.
    pub fn allocate(
        &mut self,
        uid: &str,
        preferred: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, AllocError> {
        if let Some(ip) = preferred {
            let free = self.owner.get(&ip).is_none_or(|owner| owner == uid);
            if let (true, Some(index)) = (free, self.prefix.index_of(ip)) {
                self.assign(uid, ip);
                // keep handing out addresses after the adopted ones
                if index >= self.next {
                    self.next = (index + 1) % self.prefix.size();
                }
                return Ok(ip);
            }
        }
        if let Some(ip) = self.by_uid.get(uid) {
            return Ok(*ip);
        }
        let size = self.prefix.size();
        for step in 0..size {
            let index = (self.next + step) % size;
            let ip = self.prefix.addr(index);
            if !self.owner.contains_key(&ip) {
                self.next = (index + 1) % size;
                self.assign(uid, ip);
                return Ok(ip);
            }
        }
        Err(AllocError::Exhausted(self.prefix.to_string()))
    }

    fn assign(&mut self, uid: &str, ip: Ipv4Addr) {
        if let Some(old) = self.by_uid.insert(uid.to_string(), ip) {
            if old != ip {
                self.owner.remove(&old);
            }
        }
        self.owner.insert(ip, uid.to_string());
    }

    pub fn get(&self, uid: &str) -> Option<Ipv4Addr> {
        self.by_uid.get(uid).copied()
    }

    pub fn release(&mut self, uid: &str) -> Option<Ipv4Addr> {
        let ip = self.by_uid.remove(uid)?;
        self.owner.remove(&ip);
        Some(ip)
    }

    /// Drops every UID for which `keep` is false; returns the dropped ones.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) -> Vec<(String, Ipv4Addr)> {
        let gone: Vec<(String, Ipv4Addr)> = self
            .by_uid
            .iter()
            .filter(|(uid, _)| !keep(uid))
            .map(|(uid, ip)| (uid.clone(), *ip))
            .collect();
        for (uid, _) in &gone {
            self.release(uid);
        }
        gone
    }

    pub fn len(&self) -> usize {
        self.by_uid.len()
    }

    pub fn to_json(&self) -> String {
        let state = State {
            prefix: self.prefix.to_string(),
            next: self.next,
            pods: self.by_uid.clone(),
        };
        serde_json::to_string_pretty(&state).expect("state serializes")
    }

    /// Restores a saved state. Entries outside `prefix` (the prefix changed
    /// between runs) or claiming an address twice are dropped.
    pub fn from_json(prefix: Prefix, text: &str) -> Result<IpAllocator, serde_json::Error> {
        let state: State = serde_json::from_str(text)?;
        let mut alloc = IpAllocator::new(prefix);
        if state.prefix == alloc.prefix.to_string() {
            alloc.next = state.next % alloc.prefix.size();
        }
        for (uid, ip) in state.pods {
            if alloc.prefix.index_of(ip).is_some() && !alloc.owner.contains_key(&ip) {
                alloc.assign(&uid, ip);
            }
        }
        Ok(alloc)
    }
}

/// An allocator saved to a file after every change.
#[derive(Debug)]
pub struct IpStore {
    alloc: IpAllocator,
    path: PathBuf,
}

impl IpStore {
    /// Loads `<dir>/ips.json` if it exists (a broken file is logged and
    /// replaced: addresses are only a convenience across restarts).
    pub fn open(dir: &Path, prefix: Prefix) -> IpStore {
        let path = dir.join("ips.json");
        let alloc = match std::fs::read_to_string(&path) {
            Ok(text) => IpAllocator::from_json(prefix.clone(), &text).unwrap_or_else(|e| {
                log::warn!("ignoring unreadable {}: {e}", path.display());
                IpAllocator::new(prefix)
            }),
            Err(_) => IpAllocator::new(prefix),
        };
        IpStore { alloc, path }
    }

    pub fn allocate(
        &mut self,
        uid: &str,
        preferred: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, AllocError> {
        let before = self.alloc.get(uid);
        let ip = self.alloc.allocate(uid, preferred)?;
        if before != Some(ip) {
            self.save();
        }
        Ok(ip)
    }

    pub fn get(&self, uid: &str) -> Option<Ipv4Addr> {
        self.alloc.get(uid)
    }

    pub fn release(&mut self, uid: &str) -> Option<Ipv4Addr> {
        let ip = self.alloc.release(uid);
        if ip.is_some() {
            self.save();
        }
        ip
    }

    pub fn retain(&mut self, keep: impl FnMut(&str) -> bool) -> Vec<(String, Ipv4Addr)> {
        let gone = self.alloc.retain(keep);
        if !gone.is_empty() {
            self.save();
        }
        gone
    }

    pub fn len(&self) -> usize {
        self.alloc.len()
    }

    fn save(&self) {
        let tmp = self.path.with_extension("json.tmp");
        let result = std::fs::write(&tmp, self.alloc.to_json())
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = result {
            log::error!("cannot save {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn prefix_parsing() {
        assert_eq!(Prefix::parse("127.1").unwrap().to_string(), "127.1");
        assert_eq!(Prefix::parse("127.1.").unwrap().to_string(), "127.1");
        assert_eq!(Prefix::parse("127.2.3").unwrap().to_string(), "127.2.3");
        for bad in ["10.1", "127", "127.1.2.3", "127.x", "127.256", ""] {
            assert!(Prefix::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefix_addresses_skip_reserved_host_octets() {
        let p = Prefix::parse("127.1").unwrap();
        assert_eq!(p.addr(0), ip("127.1.0.2"));
        assert_eq!(p.addr(252), ip("127.1.0.254"));
        assert_eq!(p.addr(253), ip("127.1.1.2"));
        assert_eq!(p.size(), 256 * 253);
        assert_eq!(p.addr(p.size() - 1), ip("127.1.255.254"));
        for i in [0, 1, 252, 253, 1000, p.size() - 1] {
            assert_eq!(p.index_of(p.addr(i)), Some(i));
        }
        for not_ours in [
            "127.1.0.0",
            "127.1.0.1",
            "127.1.0.255",
            "127.2.0.2",
            "10.1.0.2",
        ] {
            assert_eq!(p.index_of(ip(not_ours)), None, "{not_ours}");
        }
        let small = Prefix::parse("127.9.9").unwrap();
        assert_eq!(small.size(), 253);
        assert_eq!(small.addr(0), ip("127.9.9.2"));
        assert_eq!(small.index_of(ip("127.9.8.2")), None);
    }

    #[test]
    fn allocates_round_robin_and_is_stable_per_uid() {
        let mut a = IpAllocator::new(Prefix::parse("127.1").unwrap());
        assert_eq!(a.allocate("a", None).unwrap(), ip("127.1.0.2"));
        assert_eq!(a.allocate("b", None).unwrap(), ip("127.1.0.3"));
        assert_eq!(a.allocate("a", None).unwrap(), ip("127.1.0.2"));
        assert_eq!(a.release("a"), Some(ip("127.1.0.2")));
        assert_eq!(a.release("a"), None);
        // the freed address is not handed out again right away
        assert_eq!(a.allocate("c", None).unwrap(), ip("127.1.0.4"));
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn reuses_reported_pod_ip_when_free() {
        let mut a = IpAllocator::new(Prefix::parse("127.1").unwrap());
        let got = |a: &mut IpAllocator, uid: &str, pref: Option<&str>| {
            a.allocate(uid, pref.map(ip)).unwrap()
        };
        assert_eq!(got(&mut a, "a", Some("127.1.0.9")), ip("127.1.0.9"));
        // taken by a: b gets a fresh one, after the adopted address
        assert_eq!(got(&mut a, "b", Some("127.1.0.9")), ip("127.1.0.10"));
        // not ours (wrong prefix, reserved octet): ignored
        assert_eq!(got(&mut a, "c", Some("127.0.0.1")), ip("127.1.0.11"));
        assert_eq!(got(&mut a, "d", Some("127.1.3.1")), ip("127.1.0.12"));
        // an adopted address below the cursor does not move it back
        assert_eq!(got(&mut a, "e", Some("127.1.0.3")), ip("127.1.0.3"));
        assert_eq!(got(&mut a, "f", None), ip("127.1.0.13"));
        // a pod reporting another free address moves there; its old one is freed
        assert_eq!(got(&mut a, "a", Some("127.1.0.20")), ip("127.1.0.20"));
        assert_eq!(got(&mut a, "g", Some("127.1.0.9")), ip("127.1.0.9"));
    }

    #[test]
    fn exhaustion_and_wraparound() {
        let mut a = IpAllocator::new(Prefix::parse("127.5.5").unwrap());
        for i in 0..253 {
            a.allocate(&format!("p{i}"), None).unwrap();
        }
        assert_eq!(
            a.allocate("x", None),
            Err(AllocError::Exhausted("127.5.5".into()))
        );
        a.release("p7");
        assert_eq!(a.allocate("x", None).unwrap(), ip("127.5.5.9"));
    }

    #[test]
    fn retain_drops_unknown_uids() {
        let mut a = IpAllocator::new(Prefix::parse("127.1").unwrap());
        a.allocate("keep", None).unwrap();
        a.allocate("gone", None).unwrap();
        let gone = a.retain(|uid| uid == "keep");
        assert_eq!(gone, vec![("gone".to_string(), ip("127.1.0.3"))]);
        assert_eq!(a.get("keep"), Some(ip("127.1.0.2")));
        assert_eq!(a.get("gone"), None);
    }

    #[test]
    fn json_round_trip_keeps_addresses_and_cursor() {
        let p = Prefix::parse("127.1").unwrap();
        let mut a = IpAllocator::new(p.clone());
        a.allocate("a", None).unwrap();
        a.allocate("b", None).unwrap();
        a.release("a");
        let mut b = IpAllocator::from_json(p, &a.to_json()).unwrap();
        assert_eq!(b.get("b"), Some(ip("127.1.0.3")));
        assert_eq!(b.get("a"), None);
        assert_eq!(b.allocate("c", None).unwrap(), ip("127.1.0.4"));
    }

    #[test]
    fn json_from_another_prefix_drops_foreign_entries() {
        let mut a = IpAllocator::new(Prefix::parse("127.1").unwrap());
        a.allocate("a", None).unwrap();
        let b = IpAllocator::from_json(Prefix::parse("127.2").unwrap(), &a.to_json()).unwrap();
        assert_eq!(b.len(), 0);
    }

    #[test]
    fn store_persists_across_reopen() {
        let dir = std::env::temp_dir().join(format!("podsim-ipstore-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = Prefix::parse("127.1").unwrap();
        {
            let mut s = IpStore::open(&dir, p.clone());
            assert_eq!(s.allocate("a", None).unwrap(), ip("127.1.0.2"));
            assert_eq!(s.allocate("b", None).unwrap(), ip("127.1.0.3"));
            s.release("b");
        }
        let mut s = IpStore::open(&dir, p.clone());
        assert_eq!(s.get("a"), Some(ip("127.1.0.2")));
        assert_eq!(s.get("b"), None);
        assert_eq!(s.allocate("c", None).unwrap(), ip("127.1.0.4"));
        // a broken file is replaced, not fatal
        std::fs::write(dir.join("ips.json"), "{not json").unwrap();
        let s = IpStore::open(&dir, p);
        assert_eq!(s.len(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
