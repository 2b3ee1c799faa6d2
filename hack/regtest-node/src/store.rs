//! The chain on disk, in the data directory as Bitcoin Core keeps it:
//! `<datadir>/regtest/blocks/blk00000.dat` holds every block we stored, in
//! arrival order, as Core's records (`network magic | u32 LE length |
//! block`), and `index.dat` next to it one 44-byte record per block
//! (`hash | u64 LE offset of its record | 4-byte checksum`), written after
//! the block. Writes go out as blocks arrive; both files are fsync'd (block
//! file first) after an RPC `generatetoaddress`, once a second while there
//! is something new, and at shutdown.
//!
//! On start every indexed block is read back, checked against its hash and
//! replayed through full block validation, so the active chain (and which
//! of two equal-work tips came first) is what it was. A kill can leave a
//! torn last write: an incomplete last index record, an index record whose
//! block record is incomplete, or block bytes nobody indexes. Those are
//! dropped (the files are truncated) with a warning; peers send the blocks
//! again. Anything else that does not read back (a bad record in the
//! middle, a block whose bytes no longer match its hash or fail
//! validation) is corruption: the node refuses to start with an error
//! naming the file.

use crate::chain::Chain;
use crate::Error;
use bitcoin::consensus::{deserialize, serialize};
use bitcoin::hashes::{sha256d, Hash};
use bitcoin::{Block, BlockHash, Network};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const BLOCK_FILE: &str = "blk00000.dat";
const INDEX_FILE: &str = "index.dat";
/// Block hash, offset, checksum.
const INDEX_RECORD: usize = 32 + 8 + 4;
/// Network magic and length before each block.
const BLOCK_HEADER: usize = 8;

/// The open block and index files of a node.
#[derive(Debug)]
pub(crate) struct BlockStore {
    blk_path: PathBuf,
    blk: File,
    index: File,
    /// End of the block file (where the next record goes).
    blk_len: u64,
    /// Written since the last [`BlockStore::sync`].
    dirty: bool,
}

/// What [`open`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct LoadReport {
    /// Blocks replayed into the chain.
    pub blocks: usize,
    /// Bytes dropped from the end of the block file (a torn last write).
    pub torn_block_bytes: u64,
    /// Index records dropped from the end (torn, or pointing at a torn block).
    pub torn_index_records: usize,
    /// Stored blocks whose parent never arrived (kept on disk, not loaded).
    pub orphans: usize,
}

fn magic() -> [u8; 4] {
    Network::Regtest.magic().to_bytes()
}

fn checksum(bytes: &[u8]) -> [u8; 4] {
    let hash = sha256d::Hash::hash(bytes);
    hash.as_byte_array()[..4].try_into().expect("4 bytes")
}

fn index_record(hash: &BlockHash, offset: u64) -> [u8; INDEX_RECORD] {
    let mut rec = [0u8; INDEX_RECORD];
    rec[..32].copy_from_slice(hash.as_byte_array());
    rec[32..40].copy_from_slice(&offset.to_le_bytes());
    let sum = checksum(&rec[..40]);
    rec[40..].copy_from_slice(&sum);
    rec
}

fn corrupt(path: &Path, what: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "corrupted block file {}: {what}; move its blocks directory away to start \
             from genesis and download the chain from peers again",
            path.display()
        ),
    )
}

fn read_or_empty(path: &Path) -> io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        other => other,
    }
}

/// Why the block record at `offset` cannot be used; `None` if it is torn
/// (the file ends inside it).
enum RecordError {
    Torn,
    Bad(String),
}

fn read_record(blk: &[u8], offset: u64, hash: &BlockHash) -> Result<(Block, u64), RecordError> {
    let start = usize::try_from(offset).map_err(|_| RecordError::Torn)?;
    let head = blk
        .get(start..start + BLOCK_HEADER)
        .ok_or(RecordError::Torn)?;
    if head[..4] != magic() {
        return Err(RecordError::Bad(format!(
            "no block record at offset {offset} (block {hash} expected)"
        )));
    }
    let len = u32::from_le_bytes(head[4..].try_into().expect("4 bytes")) as usize;
    let body = blk
        .get(start + BLOCK_HEADER..start + BLOCK_HEADER + len)
        .ok_or(RecordError::Torn)?;
    let block: Block = deserialize(body).map_err(|e| {
        RecordError::Bad(format!(
            "block {hash} at offset {offset} does not decode ({e})"
        ))
    })?;
    if block.block_hash() != *hash {
        return Err(RecordError::Bad(format!(
            "the record at offset {offset} holds block {}, not block {hash}",
            block.block_hash()
        )));
    }
    Ok((block, (start + BLOCK_HEADER + len) as u64))
}

/// Load the chain stored under `datadir` (an empty chain if nothing is
/// stored yet), repairing a torn tail, and open the files for appending.
pub(crate) fn open(datadir: &Path) -> io::Result<(Chain, BlockStore, LoadReport)> {
    let dir = datadir.join("regtest").join("blocks");
    std::fs::create_dir_all(&dir)?;
    let blk_path = dir.join(BLOCK_FILE);
    let index_path = dir.join(INDEX_FILE);
    let blk_bytes = read_or_empty(&blk_path)?;
    let index_bytes = read_or_empty(&index_path)?;
    let mut report = LoadReport::default();

    // Index records; only the last one may be torn.
    let records: Vec<&[u8]> = index_bytes.chunks(INDEX_RECORD).collect();
    let mut entries: Vec<(BlockHash, u64)> = Vec::with_capacity(records.len());
    for (i, rec) in records.iter().enumerate() {
        let last = i + 1 == records.len();
        if rec.len() < INDEX_RECORD || rec[40..] != checksum(&rec[..40]) {
            if last {
                report.torn_index_records += 1;
                break;
            }
            return Err(corrupt(
                &index_path,
                format!("index record {i} has a bad checksum"),
            ));
        }
        let hash = BlockHash::from_byte_array(rec[..32].try_into().expect("32 bytes"));
        let offset = u64::from_le_bytes(rec[32..40].try_into().expect("8 bytes"));
        entries.push((hash, offset));
    }

    // Their block records, contiguous from the start of the block file.
    let mut blocks = Vec::with_capacity(entries.len());
    let mut end = 0u64;
    for (i, (hash, offset)) in entries.iter().enumerate() {
        if *offset != end {
            return Err(corrupt(
                &index_path,
                format!(
                    "index record {i} points at offset {offset}, the previous block ends at {end}"
                ),
            ));
        }
        match read_record(&blk_bytes, *offset, hash) {
            Ok((block, next)) => {
                blocks.push((block, *offset));
                end = next;
            }
            Err(RecordError::Torn) if i + 1 == entries.len() => {
                report.torn_index_records += 1;
            }
            Err(RecordError::Torn) => {
                return Err(corrupt(
                    &blk_path,
                    format!("block {hash} at offset {offset} is cut short but later blocks follow"),
                ))
            }
            Err(RecordError::Bad(what)) => return Err(corrupt(&blk_path, what)),
        }
    }
    report.torn_block_bytes = blk_bytes.len() as u64 - end;
    let kept_index = blocks.len() as u64;

    // Replay through full validation, in arrival order.
    let mut chain = Chain::new();
    let mut waiting: HashMap<BlockHash, Vec<(Block, u64)>> = HashMap::new();
    for (block, offset) in blocks {
        let mut ready = vec![(block, offset)];
        while let Some((block, offset)) = ready.pop() {
            let hash = block.block_hash();
            let prev = block.header.prev_blockhash;
            // The clock check does not apply to blocks we already accepted.
            match chain.accept_block(block.clone(), u32::MAX) {
                Ok(_) => {
                    report.blocks += 1;
                    ready.extend(waiting.remove(&hash).unwrap_or_default());
                }
                // Stored before its parent's data arrived: wait for it.
                Err(Error::Invalid("prev-blk-not-found")) => {
                    waiting.entry(prev).or_default().push((block, offset))
                }
                Err(e) => {
                    return Err(corrupt(
                        &blk_path,
                        format!("block {hash} at offset {offset} fails validation ({e})"),
                    ))
                }
            }
        }
    }
    report.orphans = waiting.values().map(Vec::len).sum();

    // Drop the torn tail, then append after what is good.
    let index = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&index_path)?;
    index.set_len(kept_index * INDEX_RECORD as u64)?;
    let blk = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&blk_path)?;
    blk.set_len(end)?;
    if report.torn_block_bytes > 0 || report.torn_index_records > 0 {
        log::warn!(
            "dropped a torn last write in {}: {} bytes of block data, {} index records",
            dir.display(),
            report.torn_block_bytes,
            report.torn_index_records
        );
        blk.sync_all()?;
        index.sync_all()?;
    }
    let store = BlockStore {
        blk_path,
        blk,
        index,
        blk_len: end,
        dirty: false,
    };
    Ok((chain, store, report))
}

impl BlockStore {
    /// Append `block` (its record, then its index record). Not yet fsync'd.
    pub(crate) fn append(&mut self, block: &Block) -> io::Result<()> {
        let body = serialize(block);
        let mut rec = Vec::with_capacity(BLOCK_HEADER + body.len());
        rec.extend_from_slice(&magic());
        rec.extend_from_slice(&(body.len() as u32).to_le_bytes());
        rec.extend_from_slice(&body);
        self.blk.write_all(&rec)?;
        self.index
            .write_all(&index_record(&block.block_hash(), self.blk_len))?;
        self.blk_len += rec.len() as u64;
        self.dirty = true;
        Ok(())
    }

    /// fsync the block file, then the index, if anything was written.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        if self.dirty {
            self.blk.sync_data()?;
            self.index.sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }

    pub(crate) fn path(&self) -> &Path {
        &self.blk_path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::TipChange;
    use bitcoin::ScriptBuf;

    const NOW: u32 = 1_700_000_000;

    /// What the node does with a block: validate, then append if new.
    fn accept(chain: &mut Chain, store: &mut BlockStore, block: Block) -> TipChange {
        let hash = block.block_hash();
        let had = chain.has_block(&hash);
        let change = chain.accept_block(block, NOW).unwrap();
        if !had {
            store
                .append(chain.get(&hash).unwrap().block.as_ref().unwrap())
                .unwrap();
        }
        change
    }

    fn mine(chain: &mut Chain, store: &mut BlockStore, n: usize, tag: u8) -> Vec<Block> {
        (0..n)
            .map(|_| {
                let script = ScriptBuf::new_op_return([tag]);
                let (block, _) = chain.mine(&script, NOW, &mut 1_000_000).unwrap();
                store.append(&block).unwrap();
                block
            })
            .collect()
    }

    fn blocks_dir(dir: &Path) -> PathBuf {
        dir.join("regtest").join("blocks")
    }

    fn file_len(path: PathBuf) -> u64 {
        std::fs::metadata(path).unwrap().len()
    }

    fn truncate(path: PathBuf, len: u64) {
        OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(len)
            .unwrap();
    }

    /// A datadir holding `n` mined blocks; returns their hashes.
    fn stored_chain(n: usize) -> (tempfile::TempDir, Vec<Block>) {
        let dir = tempfile::tempdir().unwrap();
        let (mut chain, mut store, report) = open(dir.path()).unwrap();
        assert_eq!(report, LoadReport::default());
        let blocks = mine(&mut chain, &mut store, n, 1);
        store.sync().unwrap();
        (dir, blocks)
    }

    #[test]
    fn a_restarted_node_resumes_at_its_height() {
        let (dir, blocks) = stored_chain(20);
        let (chain, mut store, report) = open(dir.path()).unwrap();
        assert_eq!(chain.height(), 20);
        assert_eq!(chain.tip_hash(), blocks[19].block_hash());
        assert_eq!(report.blocks, 20);
        // It keeps appending after the loaded blocks.
        let mut chain = chain;
        mine(&mut chain, &mut store, 3, 1);
        drop(store);
        let (chain, _, report) = open(dir.path()).unwrap();
        assert_eq!((chain.height(), report.blocks), (23, 23));
        assert_eq!(
            report.torn_block_bytes + report.torn_index_records as u64,
            0
        );
    }

    #[test]
    fn a_block_stored_before_its_parent_loads() {
        let mut miner = Chain::new();
        let mut scratch = tempfile::tempdir()
            .map(|d| open(d.path()).unwrap().1)
            .unwrap();
        let blocks = mine(&mut miner, &mut scratch, 3, 1);
        let dir = tempfile::tempdir().unwrap();
        let (mut chain, mut store, _) = open(dir.path()).unwrap();
        for b in &blocks {
            chain.accept_header(&b.header, NOW).unwrap();
        }
        for b in blocks.iter().rev() {
            accept(&mut chain, &mut store, b.clone());
        }
        assert_eq!(chain.height(), 3);
        drop(store);
        let (chain, _, report) = open(dir.path()).unwrap();
        assert_eq!(chain.tip_hash(), blocks[2].block_hash());
        assert_eq!((report.blocks, report.orphans), (3, 0));
    }

    #[test]
    fn a_torn_last_block_is_dropped() {
        let (dir, blocks) = stored_chain(5);
        let blk = blocks_dir(dir.path()).join(BLOCK_FILE);
        let len = file_len(blk.clone());
        // The kill came in the middle of the last block record.
        truncate(blk.clone(), len - 10);
        let (mut chain, mut store, report) = open(dir.path()).unwrap();
        assert_eq!(chain.height(), 4);
        assert_eq!(chain.tip_hash(), blocks[3].block_hash());
        assert_eq!(report.torn_index_records, 1);
        assert!(report.torn_block_bytes > 0);
        // The files are repaired: the next block lands where the torn one was.
        let again = mine(&mut chain, &mut store, 1, 2);
        drop(store);
        let (chain, _, report) = open(dir.path()).unwrap();
        assert_eq!(chain.tip_hash(), again[0].block_hash());
        assert_eq!(
            report,
            LoadReport {
                blocks: 5,
                ..LoadReport::default()
            }
        );
    }

    #[test]
    fn a_torn_index_record_or_an_unindexed_block_is_dropped() {
        // The kill came after the block record, inside its index record.
        let (dir, blocks) = stored_chain(5);
        let index = blocks_dir(dir.path()).join(INDEX_FILE);
        truncate(index.clone(), 4 * INDEX_RECORD as u64 + 7);
        let (chain, _, report) = open(dir.path()).unwrap();
        assert_eq!(chain.tip_hash(), blocks[3].block_hash());
        assert_eq!(report.torn_index_records, 1);
        assert_eq!(
            report.torn_block_bytes,
            (BLOCK_HEADER + serialize(&blocks[4]).len()) as u64
        );
        assert_eq!(file_len(index), 4 * INDEX_RECORD as u64);
        // ... or before the index record was written at all.
        let (dir, blocks) = stored_chain(5);
        truncate(
            blocks_dir(dir.path()).join(INDEX_FILE),
            4 * INDEX_RECORD as u64,
        );
        let (chain, _, report) = open(dir.path()).unwrap();
        assert_eq!(chain.tip_hash(), blocks[3].block_hash());
        assert_eq!(report.torn_index_records, 0);
        assert!(report.torn_block_bytes > 0);
    }

    /// Flip one byte of the block file at `offset` from the end of block `i`'s record start.
    fn flip(dir: &Path, blocks: &[Block], i: usize, at: usize) {
        let path = blocks_dir(dir).join(BLOCK_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let start: usize = blocks[..i]
            .iter()
            .map(|b| BLOCK_HEADER + serialize(b).len())
            .sum();
        bytes[start + BLOCK_HEADER + at] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();
    }

    #[test]
    fn a_corrupted_block_file_is_refused_naming_the_file() {
        let cases: [(&str, usize, &str); 3] = [
            // A byte of the coinbase: the hash still matches, the merkle root not.
            (
                "transaction",
                90,
                "fails validation (invalid block: bad-txnmrklroot)",
            ),
            // A byte of the header: another block than the index says.
            ("header", 40, "not block"),
            // The record's magic.
            ("magic", usize::MAX, "no block record at offset"),
        ];
        for (name, at, want) in cases {
            let (dir, blocks) = stored_chain(5);
            if at == usize::MAX {
                let path = blocks_dir(dir.path()).join(BLOCK_FILE);
                let mut bytes = std::fs::read(&path).unwrap();
                let start = BLOCK_HEADER + serialize(&blocks[0]).len();
                bytes[start] ^= 0xff;
                std::fs::write(&path, bytes).unwrap();
            } else {
                flip(dir.path(), &blocks, 1, at);
            }
            let err = open(dir.path()).unwrap_err().to_string();
            let file = blocks_dir(dir.path()).join(BLOCK_FILE);
            assert!(
                err.contains(&format!("corrupted block file {}", file.display())),
                "{name}: {err}"
            );
            assert!(err.contains(want), "{name}: {err}");
            assert!(
                err.contains(&blocks[1].block_hash().to_string()),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn a_corrupted_index_record_before_the_end_is_refused() {
        let (dir, _) = stored_chain(5);
        let path = blocks_dir(dir.path()).join(INDEX_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[INDEX_RECORD + 3] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let err = open(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("index record 1 has a bad checksum"), "{err}");
    }

    #[test]
    fn a_reorg_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, mut store, _) = open(dir.path()).unwrap();
        let mut other = Chain::new();
        let mut scratch = tempfile::tempdir()
            .map(|d| open(d.path()).unwrap().1)
            .unwrap();
        let common = mine(&mut a, &mut store, 3, 1);
        for b in &common {
            accept(&mut other, &mut scratch, b.clone());
        }
        let ours = mine(&mut a, &mut store, 2, 1);
        let theirs = mine(&mut other, &mut scratch, 3, 9);
        // Equal work: the first-seen tip stays, before and after a restart.
        accept(&mut a, &mut store, theirs[0].clone());
        accept(&mut a, &mut store, theirs[1].clone());
        drop((a, store));
        let (mut a, mut store, _) = open(dir.path()).unwrap();
        assert_eq!(a.tip_hash(), ours[1].block_hash());
        // More work: reorg, and the restarted node is on the new chain.
        let change = accept(&mut a, &mut store, theirs[2].clone());
        assert_eq!(change.disconnected.len(), 2);
        drop((a, store));
        let (a, _, report) = open(dir.path()).unwrap();
        assert_eq!(a.tip_hash(), theirs[2].block_hash());
        assert_eq!(a.height(), 6);
        assert_eq!(a.hash_at(4), Some(theirs[0].block_hash()));
        assert_eq!(a.hash_at(3), Some(common[2].block_hash()));
        assert_eq!(report.blocks, 8);
    }
}
