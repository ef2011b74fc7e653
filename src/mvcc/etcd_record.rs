//! A record as etcd's backend stores it: the key bucket maps each revision (8 bytes big-endian main,
//! `_`, 8 bytes big-endian sub, and a `t` for a deletion) to the protobuf `KeyValue`, which for a deletion
//! holds the key alone.
//!
//! concord stores records its own way (`storage::records`), but two things must be etcd's bytes exactly:
//! HashKV, which hashes these keys and values (so a concord member and an etcd member with the same
//! history report the same hash), and a backup, which etcd's tools open as a bbolt file.

use prost::Message;

use super::Revision;
use crate::pb::mvccpb::KeyValue;

/// Length of a live record's key; a deletion's has the `t` after it.
pub const KEY_LEN: usize = 17;

/// Appends the key bucket's key for the record `kv` at `rev` to `out`.
pub fn key(rev: Revision, kv: &KeyValue, out: &mut Vec<u8>) {
    out.extend_from_slice(&(rev.main as u64).to_be_bytes());
    out.push(b'_');
    out.extend_from_slice(&(rev.sub as u64).to_be_bytes());
    if is_deletion(kv) {
        out.push(b't');
    }
}

/// Appends the key bucket's value for the record `kv` to `out`.
pub fn value(kv: &KeyValue, out: &mut Vec<u8>) {
    if is_deletion(kv) {
        KeyValue { key: kv.key.clone(), ..Default::default() }.encode_raw(out);
    } else {
        kv.encode_raw(out);
    }
}

/// The revision a key bucket key names, and whether it marks a deletion.
pub fn parse_key(key: &[u8]) -> Option<(Revision, bool)> {
    let deletion = match key.len() {
        KEY_LEN => false,
        18 if key[KEY_LEN] == b't' => true,
        _ => return None,
    };
    if key[8] != b'_' {
        return None;
    }
    let main = u64::from_be_bytes(key[..8].try_into().ok()?) as i64;
    let sub = u64::from_be_bytes(key[9..KEY_LEN].try_into().ok()?) as i64;
    Some((Revision::new(main, sub), deletion))
}

/// concord's record for an etcd key bucket entry: a deletion keeps its revision as `mod_revision`, as
/// concord's own deletions do.
pub fn record(rev: Revision, deletion: bool, value: &[u8]) -> Result<KeyValue, prost::DecodeError> {
    let kv = KeyValue::decode(value)?;
    Ok(if deletion { KeyValue { key: kv.key, mod_revision: rev.main, ..Default::default() } } else { kv })
}

/// concord marks a deletion with version 0, as etcd's key index does.
fn is_deletion(kv: &KeyValue) -> bool {
    kv.version == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_etcds_and_parse_back() {
        let live = KeyValue {
            key: "k".into(),
            value: "v".into(),
            version: 2,
            mod_revision: 5,
            ..Default::default()
        };
        let gone = KeyValue { key: "k".into(), mod_revision: 6, ..Default::default() };
        let mut k = Vec::new();
        key(Revision::new(5, 1), &live, &mut k);
        assert_eq!(k, b"\0\0\0\0\0\0\0\x05_\0\0\0\0\0\0\0\x01");
        assert_eq!(parse_key(&k), Some((Revision::new(5, 1), false)));
        k.clear();
        key(Revision::new(6, 0), &gone, &mut k);
        assert_eq!(k.last(), Some(&b't'));
        assert_eq!(parse_key(&k), Some((Revision::new(6, 0), true)));
        assert_eq!(parse_key(&k[..16]), None);

        let mut v = Vec::new();
        value(&gone, &mut v);
        assert_eq!(
            KeyValue::decode(v.as_slice()).unwrap(),
            KeyValue { key: "k".into(), ..Default::default() }
        );
        assert_eq!(record(Revision::new(6, 0), true, &v).unwrap(), gone);
        v.clear();
        value(&live, &mut v);
        assert_eq!(record(Revision::new(5, 1), false, &v).unwrap(), live);
    }
}
