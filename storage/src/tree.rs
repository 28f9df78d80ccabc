//! The state tree's nodes and values in RocksDB, behind jmt's reader and
//! writer traits.

use std::sync::Arc;

use phalanx_ledger::jmt::storage::{
    LeafNode, Node, NodeBatch, NodeKey, TreeReader, TreeUpdateBatch, TreeWriter,
};
use phalanx_ledger::jmt::{KeyHash, OwnedValue, Version};
use rocksdb::{DB, Direction, IteratorMode, WriteBatch};

use crate::StorageError;
use crate::keys::{CF_TREE_NODES, CF_TREE_STALE, CF_TREE_VALUES, value_key};

/// A cheap handle on the database for tree reads and writes.
#[derive(Clone)]
pub struct TreeStore {
    pub(crate) db: Arc<DB>,
}

pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily, StorageError> {
    db.cf_handle(name)
        .ok_or_else(|| StorageError::Corrupt(format!("column family {name} missing")))
}

fn node_key_bytes(k: &NodeKey) -> Vec<u8> {
    // borsh of a NodeKey cannot fail: it is plain data.
    borsh::to_vec(k).unwrap_or_default()
}

fn encode_value(v: &Option<OwnedValue>) -> Vec<u8> {
    match v {
        None => vec![0],
        Some(b) => {
            let mut out = Vec::with_capacity(b.len() + 1);
            out.push(1);
            out.extend_from_slice(b);
            out
        }
    }
}

/// Adds a tree update (new nodes, values, stale-node index) to a batch.
pub(crate) fn add_update(
    db: &DB,
    wb: &mut WriteBatch,
    update: &TreeUpdateBatch,
) -> Result<(), StorageError> {
    add_nodes(db, wb, &update.node_batch)?;
    let stale = cf(db, CF_TREE_STALE)?;
    for s in &update.stale_node_index_batch {
        let mut k = s.stale_since_version.to_be_bytes().to_vec();
        k.extend_from_slice(&node_key_bytes(&s.node_key));
        wb.put_cf(stale, k, []);
    }
    Ok(())
}

fn add_nodes(db: &DB, wb: &mut WriteBatch, batch: &NodeBatch) -> Result<(), StorageError> {
    let nodes = cf(db, CF_TREE_NODES)?;
    let values = cf(db, CF_TREE_VALUES)?;
    for (k, n) in batch.nodes() {
        let bytes = borsh::to_vec(n)
            .map_err(|e| StorageError::Corrupt(format!("encoding a tree node: {e}")))?;
        wb.put_cf(nodes, node_key_bytes(k), bytes);
    }
    for ((version, key), v) in batch.values() {
        wb.put_cf(values, value_key(&key.0, *version), encode_value(v));
    }
    Ok(())
}

/// Deletes tree nodes (and the values of leaves) that became stale at or
/// before `version`: versions below it are no longer readable afterwards.
pub(crate) fn prune_stale(db: &DB, version: u64) -> Result<usize, StorageError> {
    let stale = cf(db, CF_TREE_STALE)?;
    let nodes = cf(db, CF_TREE_NODES)?;
    let values = cf(db, CF_TREE_VALUES)?;
    let mut wb = WriteBatch::default();
    let mut n = 0;
    for item in db.iterator_cf(stale, IteratorMode::Start) {
        let (k, _) = item?;
        if k.len() < 8 {
            return Err(StorageError::Corrupt("short stale-node key".into()));
        }
        let mut since = [0u8; 8];
        since.copy_from_slice(&k[..8]);
        if u64::from_be_bytes(since) > version {
            break;
        }
        let node_key = &k[8..];
        if let Some(bytes) = db.get_cf(nodes, node_key)?
            && let Ok(Node::Leaf(leaf)) = borsh::from_slice::<Node>(&bytes)
            && let Ok(nk) = borsh::from_slice::<NodeKey>(node_key)
        {
            wb.delete_cf(values, value_key(&leaf.key_hash().0, nk.version()));
        }
        wb.delete_cf(nodes, node_key);
        wb.delete_cf(stale, &k);
        n += 1;
    }
    db.write(wb)?;
    Ok(n)
}

impl TreeReader for TreeStore {
    fn get_node_option(&self, node_key: &NodeKey) -> anyhow::Result<Option<Node>> {
        let nodes = cf(&self.db, CF_TREE_NODES)?;
        match self.db.get_cf(nodes, node_key_bytes(node_key))? {
            None => Ok(None),
            Some(b) => Ok(Some(borsh::from_slice(&b)?)),
        }
    }

    fn get_value_option(
        &self,
        max_version: Version,
        key_hash: KeyHash,
    ) -> anyhow::Result<Option<OwnedValue>> {
        let values = cf(&self.db, CF_TREE_VALUES)?;
        let seek = value_key(&key_hash.0, max_version);
        let mut it = self
            .db
            .iterator_cf(values, IteratorMode::From(&seek, Direction::Reverse));
        match it.next() {
            Some(item) => {
                let (k, v) = item?;
                if k.len() != 40 || k[..32] != key_hash.0 {
                    return Ok(None);
                }
                match v.first() {
                    Some(1) => Ok(Some(v[1..].to_vec())),
                    Some(0) => Ok(None),
                    _ => anyhow::bail!("malformed tree value"),
                }
            }
            None => Ok(None),
        }
    }

    fn get_rightmost_leaf(&self) -> anyhow::Result<Option<(NodeKey, LeafNode)>> {
        // Only jmt's restore asks, to resume an interrupted restore. Restores
        // here always start on an empty store (a failed one is wiped and
        // started again), so there is never a leaf to resume from.
        Ok(None)
    }
}

impl TreeWriter for TreeStore {
    fn write_node_batch(&self, batch: &NodeBatch) -> anyhow::Result<()> {
        let mut wb = WriteBatch::default();
        add_nodes(&self.db, &mut wb, batch)?;
        self.db.write(wb)?;
        Ok(())
    }
}
