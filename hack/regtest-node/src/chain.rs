//! In-memory block tree: header and block validation (the consensus checks
//! that do not need a UTXO set), best-chain selection by cumulative work with
//! reorgs, locators, and mining.

use crate::Error;
use bitcoin::absolute::LockTime;
use bitcoin::block::{Header, Version};
use bitcoin::blockdata::constants::genesis_block;
use bitcoin::hashes::Hash;
use bitcoin::pow::{CompactTarget, Target, Work};
use bitcoin::script::Builder;
use bitcoin::transaction;
use bitcoin::{
    Amount, Block, BlockHash, Network, OutPoint, ScriptBuf, Sequence, Transaction, TxIn,
    TxMerkleNode, TxOut, Witness,
};
use std::collections::HashMap;

/// nBits of every regtest block (no retargeting on regtest).
pub const REGTEST_BITS: u32 = 0x207f_ffff;
/// Blocks may be at most this far ahead of our clock (Core's MAX_FUTURE_BLOCK_TIME).
const MAX_FUTURE_BLOCK_TIME: u32 = 2 * 60 * 60;
/// Regtest halves the subsidy every 150 blocks.
const HALVING_INTERVAL: u32 = 150;
/// Consensus limit on block weight.
const MAX_BLOCK_WEIGHT: u64 = 4_000_000;
/// Most headers in one `headers` message.
pub const MAX_HEADERS: usize = 2000;
/// Most block hashes in one `inv` answering `getblocks`.
pub const MAX_BLOCKS_INV: usize = 500;

/// One header we know, with the block if we have it.
#[derive(Debug)]
pub struct Entry {
    pub header: Header,
    pub height: u32,
    /// Cumulative work up to and including this block.
    pub work: Work,
    pub block: Option<Block>,
    /// Block data present for this block and all its ancestors.
    connectable: bool,
}

/// What a new block changed in the active chain.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TipChange {
    /// Blocks that left the active chain (reorg), tip first.
    pub disconnected: Vec<BlockHash>,
    /// Blocks that joined the active chain, lowest first.
    pub connected: Vec<BlockHash>,
}

#[derive(Debug)]
pub struct Chain {
    entries: HashMap<BlockHash, Entry>,
    children: HashMap<BlockHash, Vec<BlockHash>>,
    /// Hashes of the active chain by height.
    active: Vec<BlockHash>,
    /// Header with the most work (may lack block data).
    best_header: BlockHash,
    /// Latched once the tip is recent, like Core's IsInitialBlockDownload.
    synced: bool,
}

fn reject(reason: &'static str) -> Error {
    Error::Invalid(reason)
}

/// Script that starts every valid coinbase scriptSig at `height` (BIP34).
fn bip34_prefix(height: u32) -> ScriptBuf {
    Builder::new().push_int(i64::from(height)).into_script()
}

/// Block subsidy at `height` on regtest.
fn subsidy(height: u32) -> Amount {
    let halvings = height / HALVING_INTERVAL;
    if halvings >= 64 {
        return Amount::ZERO;
    }
    Amount::from_sat((50 * 100_000_000u64) >> halvings)
}

impl Default for Chain {
    fn default() -> Self {
        Self::new()
    }
}

impl Chain {
    /// A chain holding only the regtest genesis block.
    pub fn new() -> Chain {
        let genesis = genesis_block(Network::Regtest);
        let hash = genesis.block_hash();
        let entry = Entry {
            header: genesis.header,
            height: 0,
            work: genesis.header.work(),
            block: Some(genesis),
            connectable: true,
        };
        Chain {
            entries: HashMap::from([(hash, entry)]),
            children: HashMap::new(),
            active: vec![hash],
            best_header: hash,
            synced: false,
        }
    }

    /// True until the tip is less than 24 hours old; never true again after.
    pub fn initial_block_download(&mut self, now: u64) -> bool {
        if !self.synced && u64::from(self.tip().header.time) + 24 * 60 * 60 >= now {
            self.synced = true;
        }
        !self.synced
    }

    pub fn tip(&self) -> &Entry {
        &self.entries[self.active.last().expect("genesis")]
    }

    pub fn tip_hash(&self) -> BlockHash {
        *self.active.last().expect("genesis")
    }

    pub fn height(&self) -> u32 {
        self.tip().height
    }

    pub fn best_header(&self) -> &Entry {
        &self.entries[&self.best_header]
    }

    pub fn get(&self, hash: &BlockHash) -> Option<&Entry> {
        self.entries.get(hash)
    }

    pub fn has_block(&self, hash: &BlockHash) -> bool {
        self.entries.get(hash).is_some_and(|e| e.block.is_some())
    }

    /// Hash of the active-chain block at `height`.
    pub fn hash_at(&self, height: u32) -> Option<BlockHash> {
        self.active.get(height as usize).copied()
    }

    fn on_active(&self, hash: &BlockHash) -> bool {
        self.entries
            .get(hash)
            .is_some_and(|e| self.hash_at(e.height) == Some(*hash))
    }

    /// Median time of the 11 blocks ending at `hash`.
    pub fn median_time_past(&self, hash: &BlockHash) -> u32 {
        let mut times = Vec::with_capacity(11);
        let mut cur = self.entries.get(hash);
        while let Some(e) = cur {
            times.push(e.header.time);
            if times.len() == 11 || e.height == 0 {
                break;
            }
            cur = self.entries.get(&e.header.prev_blockhash);
        }
        times.sort_unstable();
        times[times.len() / 2]
    }

    /// Block locator for the active chain: dense near the tip, then exponential.
    pub fn locator(&self) -> Vec<BlockHash> {
        let mut out = Vec::new();
        let mut height = self.height() as i64;
        let mut step = 1;
        while height > 0 {
            out.push(self.active[height as usize]);
            if out.len() >= 10 {
                step *= 2;
            }
            height -= step;
        }
        out.push(self.active[0]);
        out
    }

    /// Height of the last locator entry on our active chain (0 if none match).
    fn fork_height(&self, locator: &[BlockHash]) -> u32 {
        locator
            .iter()
            .find(|h| self.on_active(h))
            .map_or(0, |h| self.entries[h].height)
    }

    /// Active-chain hashes after the locator's fork point, up to `stop` or `max`.
    fn after_locator(&self, locator: &[BlockHash], stop: BlockHash, max: usize) -> Vec<BlockHash> {
        let start = self.fork_height(locator) as usize + 1;
        let mut out = Vec::new();
        for hash in self.active.iter().skip(start).take(max) {
            out.push(*hash);
            if *hash == stop {
                break;
            }
        }
        out
    }

    /// Answer to `getheaders`. An empty locator asks for just `stop`.
    pub fn headers_after(&self, locator: &[BlockHash], stop: BlockHash) -> Vec<Header> {
        if locator.is_empty() {
            return self
                .entries
                .get(&stop)
                .map(|e| e.header)
                .into_iter()
                .collect();
        }
        self.after_locator(locator, stop, MAX_HEADERS)
            .iter()
            .map(|h| self.entries[h].header)
            .collect()
    }

    /// Answer to `getblocks`.
    pub fn blocks_after(&self, locator: &[BlockHash], stop: BlockHash) -> Vec<BlockHash> {
        self.after_locator(locator, stop, MAX_BLOCKS_INV)
    }

    /// Validate and store a header. Returns true if it was new.
    pub fn accept_header(&mut self, header: &Header, now: u32) -> Result<bool, Error> {
        let hash = header.block_hash();
        if self.entries.contains_key(&hash) {
            return Ok(false);
        }
        let prev = self
            .entries
            .get(&header.prev_blockhash)
            .ok_or_else(|| reject("prev-blk-not-found"))?;
        if header.bits != CompactTarget::from_consensus(REGTEST_BITS) {
            return Err(reject("bad-diffbits"));
        }
        if header.validate_pow(header.target()).is_err() {
            return Err(reject("high-hash"));
        }
        if header.time <= self.median_time_past(&header.prev_blockhash) {
            return Err(reject("time-too-old"));
        }
        if header.time > now.saturating_add(MAX_FUTURE_BLOCK_TIME) {
            return Err(reject("time-too-new"));
        }
        // BIP34/65/66 are active from height 1 on regtest.
        if header.version.to_consensus() < 4 {
            return Err(reject("bad-version"));
        }
        let entry = Entry {
            header: *header,
            height: prev.height + 1,
            work: prev.work + header.work(),
            block: None,
            connectable: false,
        };
        if entry.work > self.best_header().work {
            self.best_header = hash;
        }
        self.children
            .entry(header.prev_blockhash)
            .or_default()
            .push(hash);
        self.entries.insert(hash, entry);
        Ok(true)
    }

    /// Validate and store a block. Returns how the active chain changed.
    pub fn accept_block(&mut self, block: Block, now: u32) -> Result<TipChange, Error> {
        let hash = block.block_hash();
        self.accept_header(&block.header, now)?;
        if self.has_block(&hash) {
            return Ok(TipChange::default());
        }
        check_block(&block, self.entries[&hash].height)?;
        let entry = self.entries.get_mut(&hash).expect("header accepted");
        entry.block = Some(block);
        let prev = entry.header.prev_blockhash;
        if !self.entries[&prev].connectable {
            return Ok(TipChange::default());
        }
        // Mark this block and every stored descendant connectable.
        let mut stack = vec![hash];
        let mut best = self.tip_hash();
        while let Some(h) = stack.pop() {
            let best_work = self.entries[&best].work;
            let e = self.entries.get_mut(&h).expect("known");
            e.connectable = true;
            if e.work > best_work {
                best = h;
            }
            for child in self.children.get(&h).into_iter().flatten() {
                if self.entries[child].block.is_some() {
                    stack.push(*child);
                }
            }
        }
        Ok(self.activate(best))
    }

    /// Make `new_tip` the active tip.
    fn activate(&mut self, new_tip: BlockHash) -> TipChange {
        let mut change = TipChange::default();
        if new_tip == self.tip_hash() {
            return change;
        }
        let mut cur = new_tip;
        while !self.on_active(&cur) {
            change.connected.push(cur);
            cur = self.entries[&cur].header.prev_blockhash;
        }
        change.connected.reverse();
        let fork = self.entries[&cur].height as usize;
        change.disconnected = self.active.drain(fork + 1..).rev().collect();
        self.active.extend(&change.connected);
        change
    }

    /// Build and solve a block on the tip paying `script` (like Core's
    /// generatetoaddress), then accept it. `None` if `max_tries` ran out.
    pub fn mine(
        &mut self,
        script: &ScriptBuf,
        now: u32,
        max_tries: &mut u64,
    ) -> Option<(Block, TipChange)> {
        let tip = self.tip();
        let height = tip.height + 1;
        let script_sig = Builder::new()
            .push_int(i64::from(height))
            .push_opcode(bitcoin::opcodes::OP_0)
            .into_script();
        let coinbase = Transaction {
            version: transaction::Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint::null(),
                script_sig,
                sequence: Sequence::MAX,
                witness: Witness::new(),
            }],
            output: vec![TxOut {
                value: subsidy(height),
                script_pubkey: script.clone(),
            }],
        };
        let mut block = Block {
            header: Header {
                version: Version::from_consensus(0x2000_0000),
                prev_blockhash: self.tip_hash(),
                merkle_root: TxMerkleNode::all_zeros(),
                time: now.max(self.median_time_past(&self.tip_hash()) + 1),
                bits: CompactTarget::from_consensus(REGTEST_BITS),
                nonce: 0,
            },
            txdata: vec![coinbase],
        };
        block.header.merkle_root = block.compute_merkle_root().expect("one tx");
        let target = Target::from_compact(block.header.bits);
        while block.header.validate_pow(target).is_err() {
            if *max_tries == 0 {
                return None;
            }
            *max_tries -= 1;
            block.header.nonce = block.header.nonce.wrapping_add(1);
            if block.header.nonce == 0 {
                block.header.time += 1;
            }
        }
        let change = self
            .accept_block(block.clone(), now)
            .expect("we mined a valid block");
        Some((block, change))
    }
}

/// Context-free block checks plus the BIP34 height (needs only the height).
fn check_block(block: &Block, height: u32) -> Result<(), Error> {
    if !block.check_merkle_root() {
        return Err(reject("bad-txnmrklroot"));
    }
    let coinbase = block
        .txdata
        .first()
        .ok_or_else(|| reject("bad-cb-missing"))?;
    if !coinbase.is_coinbase() {
        return Err(reject("bad-cb-missing"));
    }
    if block.txdata[1..].iter().any(|tx| tx.is_coinbase()) {
        return Err(reject("bad-cb-multiple"));
    }
    if !coinbase.input[0]
        .script_sig
        .as_bytes()
        .starts_with(bip34_prefix(height).as_bytes())
    {
        return Err(reject("bad-cb-height"));
    }
    if !block.check_witness_commitment() {
        return Err(reject("bad-witness-merkle-match"));
    }
    if block.weight().to_wu() > MAX_BLOCK_WEIGHT {
        return Err(reject("bad-blk-weight"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u32 = 1_700_000_000;

    fn work(n: u8) -> Work {
        let mut bytes = [0u8; 32];
        bytes[31] = n;
        Work::from_be_bytes(bytes)
    }

    fn script() -> ScriptBuf {
        ScriptBuf::new_op_return([1, 2, 3])
    }

    fn mine(chain: &mut Chain, n: usize) -> Vec<Block> {
        (0..n)
            .map(|_| chain.mine(&script(), NOW, &mut 1_000_000).unwrap().0)
            .collect()
    }

    /// Re-solve a modified header so only the intended defect remains.
    fn solve(block: &mut Block) {
        block.header.nonce = 0;
        while block.header.validate_pow(block.header.target()).is_err() {
            block.header.nonce += 1;
        }
    }

    #[test]
    fn genesis_is_regtest() {
        let c = Chain::new();
        assert_eq!(c.height(), 0);
        assert_eq!(
            c.tip_hash().to_string(),
            "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
        );
        assert_eq!(c.tip().work, work(2));
    }

    #[test]
    fn initial_block_download_latches() {
        let mut c = Chain::new();
        assert!(c.initial_block_download(u64::from(NOW)));
        mine(&mut c, 1);
        assert!(!c.initial_block_download(u64::from(NOW)));
        assert!(!c.initial_block_download(u64::from(NOW) + 10 * 24 * 3600));
    }

    #[test]
    fn mined_blocks_are_valid_for_another_node() {
        let mut a = Chain::new();
        let blocks = mine(&mut a, 20);
        assert_eq!(a.height(), 20);
        let mut b = Chain::new();
        for block in blocks {
            b.accept_block(block, NOW).unwrap();
        }
        assert_eq!(b.tip_hash(), a.tip_hash());
        assert_eq!(b.tip().work, work(42));
        // Timestamps strictly above median time past even when mined in one second.
        assert!(a.tip().header.time > a.median_time_past(&a.tip().header.prev_blockhash));
    }

    #[test]
    fn rejects_invalid_pow() {
        let mut a = Chain::new();
        let mut block = mine(&mut a, 1).pop().unwrap();
        let mut b = Chain::new();
        // Find a nonce whose hash misses the target.
        while block.header.validate_pow(block.header.target()).is_ok() {
            block.header.nonce += 1;
        }
        assert!(matches!(
            b.accept_block(block, NOW),
            Err(Error::Invalid("high-hash"))
        ));
        assert_eq!(b.height(), 0);
    }

    #[test]
    fn rejects_wrong_bits() {
        let mut a = Chain::new();
        let mut block = mine(&mut a, 1).pop().unwrap();
        block.header.bits = CompactTarget::from_consensus(0x2100_ffff);
        solve(&mut block);
        let err = Chain::new().accept_block(block, NOW);
        assert!(matches!(err, Err(Error::Invalid("bad-diffbits"))));
    }

    #[test]
    fn rejects_unknown_prev_block() {
        let mut a = Chain::new();
        let blocks = mine(&mut a, 2);
        let mut b = Chain::new();
        let err = b.accept_block(blocks[1].clone(), NOW);
        assert!(matches!(err, Err(Error::Invalid("prev-blk-not-found"))));
    }

    #[test]
    fn rejects_bad_merkle_root() {
        let mut a = Chain::new();
        let mut block = mine(&mut a, 1).pop().unwrap();
        block.header.merkle_root = TxMerkleNode::all_zeros();
        solve(&mut block);
        let mut b = Chain::new();
        assert!(matches!(
            b.accept_block(block, NOW),
            Err(Error::Invalid("bad-txnmrklroot"))
        ));
        assert_eq!(b.height(), 0);
    }

    #[test]
    fn rejects_wrong_bip34_height() {
        let mut a = Chain::new();
        let mut block = mine(&mut a, 1).pop().unwrap();
        block.txdata[0].input[0].script_sig = Builder::new().push_int(7).push_int(0).into_script();
        block.header.merkle_root = block.compute_merkle_root().unwrap();
        solve(&mut block);
        let err = Chain::new().accept_block(block, NOW);
        assert!(matches!(err, Err(Error::Invalid("bad-cb-height"))));
    }

    #[test]
    fn rejects_timestamps_outside_window() {
        let mut a = Chain::new();
        let mut block = mine(&mut a, 1).pop().unwrap();
        block.header.time = NOW + MAX_FUTURE_BLOCK_TIME + 1;
        solve(&mut block);
        let err = Chain::new().accept_block(block.clone(), NOW);
        assert!(matches!(err, Err(Error::Invalid("time-too-new"))));
        block.header.time = genesis_block(Network::Regtest).header.time;
        solve(&mut block);
        let err = Chain::new().accept_block(block, NOW);
        assert!(matches!(err, Err(Error::Invalid("time-too-old"))));
    }

    #[test]
    fn reorgs_to_heavier_chain_and_ignores_equal_work() {
        let mut a = Chain::new();
        let mut b = Chain::new();
        let common = mine(&mut a, 3);
        for blk in &common {
            b.accept_block(blk.clone(), NOW).unwrap();
        }
        let ours = mine(&mut a, 2);
        // b mines a different branch (different payout script -> different blocks).
        let theirs: Vec<Block> = (0..3)
            .map(|_| {
                b.mine(&ScriptBuf::new_op_return([9]), NOW + 1, &mut 1_000_000)
                    .unwrap()
                    .0
            })
            .collect();

        // Equal work (2 vs 2): a keeps its first-seen tip.
        a.accept_block(theirs[0].clone(), NOW).unwrap();
        let change = a.accept_block(theirs[1].clone(), NOW).unwrap();
        assert_eq!(change, TipChange::default());
        assert_eq!(a.tip_hash(), ours[1].block_hash());

        // One more block makes their branch heavier: reorg.
        let change = a.accept_block(theirs[2].clone(), NOW).unwrap();
        assert_eq!(a.tip_hash(), b.tip_hash());
        assert_eq!(a.height(), 6);
        assert_eq!(
            change.disconnected,
            vec![ours[1].block_hash(), ours[0].block_hash()]
        );
        assert_eq!(
            change.connected,
            theirs.iter().map(|b| b.block_hash()).collect::<Vec<_>>()
        );
        assert_eq!(a.hash_at(4), Some(theirs[0].block_hash()));
    }

    #[test]
    fn blocks_out_of_order_connect_when_parent_arrives() {
        let mut a = Chain::new();
        let blocks = mine(&mut a, 3);
        let mut b = Chain::new();
        for blk in &blocks {
            b.accept_header(&blk.header, NOW).unwrap();
        }
        assert_eq!(b.best_header().height, 3);
        assert_eq!(
            b.accept_block(blocks[2].clone(), NOW).unwrap(),
            TipChange::default()
        );
        assert_eq!(
            b.accept_block(blocks[1].clone(), NOW).unwrap(),
            TipChange::default()
        );
        let change = b.accept_block(blocks[0].clone(), NOW).unwrap();
        assert_eq!(change.connected.len(), 3);
        assert_eq!(b.tip_hash(), a.tip_hash());
    }

    #[test]
    fn locator_and_getheaders() {
        let mut a = Chain::new();
        mine(&mut a, 30);
        let loc = a.locator();
        assert_eq!(loc[0], a.tip_hash());
        assert_eq!(*loc.last().unwrap(), a.hash_at(0).unwrap());
        let b = Chain::new();
        let headers = a.headers_after(&b.locator(), BlockHash::all_zeros());
        assert_eq!(headers.len(), 30);
        assert_eq!(headers[0].prev_blockhash, b.tip_hash());
        let stop = a.hash_at(5).unwrap();
        assert_eq!(a.blocks_after(&b.locator(), stop).len(), 5);
        assert!(a.headers_after(&loc, BlockHash::all_zeros()).is_empty());
    }

    #[test]
    fn subsidy_halves_every_150_blocks() {
        assert_eq!(subsidy(1), Amount::from_btc(50.0).unwrap());
        assert_eq!(subsidy(150), Amount::from_btc(25.0).unwrap());
        assert_eq!(subsidy(150 * 64), Amount::ZERO);
    }
}
