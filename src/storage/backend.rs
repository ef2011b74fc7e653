//! The MVCC store's records in sled: key `r` + revision, value the protobuf `KeyValue`.

use prost::Message;

use crate::mvcc::{Backend, MvccError, Revision};
use crate::pb::mvccpb::KeyValue;

use super::keys;

#[derive(Clone)]
pub struct SledBackend {
    tree: sled::Tree,
}

impl SledBackend {
    pub fn new(tree: sled::Tree) -> Self {
        SledBackend { tree }
    }
}

fn err(e: impl std::fmt::Display) -> MvccError {
    MvccError::Backend(e.to_string())
}

impl Backend for SledBackend {
    fn get(&self, rev: Revision) -> Result<Option<KeyValue>, MvccError> {
        match self.tree.get(keys::record(rev)).map_err(err)? {
            Some(bytes) => Ok(Some(KeyValue::decode(bytes.as_ref()).map_err(err)?)),
            None => Ok(None),
        }
    }

    fn for_each(&self, f: &mut dyn FnMut(Revision, KeyValue)) -> Result<(), MvccError> {
        for item in self.tree.scan_prefix([keys::RECORD_PREFIX]) {
            let (k, v) = item.map_err(err)?;
            let rev = Revision::from_bytes(&k[1..]).ok_or_else(|| err("bad record key"))?;
            f(rev, KeyValue::decode(v.as_ref()).map_err(err)?);
        }
        Ok(())
    }
}
