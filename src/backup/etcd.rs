//! etcd's backend schema: which buckets a backup holds and how each value is encoded, so that etcd's
//! tools restore concord's backups and concord restores etcd's (etcd's `mvcc/kvstore.go`,
//! `lease/lessor.go`, `auth/store.go`).
//!
//! | bucket      | key                                   | value                                    |
//! |-------------|---------------------------------------|------------------------------------------|
//! | `auth`      | `authEnabled`, `authRevision`         | one byte 0/1; big-endian u64             |
//! | `authRoles` | role name                             | `authpb.Role`                            |
//! | `authUsers` | user name                             | `authpb.User` (password: a bcrypt hash)  |
//! | `key`       | revision (see `mvcc::etcd_record`)    | `mvccpb.KeyValue`                        |
//! | `lease`     | big-endian lease id                   | `leasepb.Lease`                          |
//! | `meta`      | `consistent_index`, `*CompactRev`     | big-endian u64; a revision's 17 bytes    |
//!
//! etcd also keeps its membership (`members`, by member id) and alarms in the file; a restore starts a
//! new cluster, whose members come from its flags, so concord writes none, and reads only how many
//! members there were ([`members`]) when it takes over a member's data dir.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;

use prost::Message;

use super::bolt::{EachKv, Reader, Writer};
use crate::auth::{AuthStore, User};
use crate::mvcc::{etcd_record, Revision};
use crate::pb::authpb;
use crate::pb::mvccpb::KeyValue;

/// Everything of a member's state a backup carries besides the records.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupState {
    pub current: i64,
    /// -1 when nothing was compacted.
    pub compacted: i64,
    /// The last applied log index (etcd's consistent index).
    pub consistent_index: u64,
    /// Every lease: id, granted TTL.
    pub leases: Vec<(i64, i64)>,
    pub auth: AuthStore,
}

/// etcd's `leasepb.Lease`.
#[derive(Clone, PartialEq, Message)]
struct Lease {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

const ENABLED: &[u8] = b"authEnabled";
const AUTH_REVISION: &[u8] = b"authRevision";
const CONSISTENT_INDEX: &[u8] = b"consistent_index";
const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
const SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";

/// A revision as etcd's meta bucket stores a compaction's: the record key of `(main, 0)`.
fn rev_bytes(main: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(etcd_record::KEY_LEN);
    etcd_record::key(Revision::new(main, 0), &KeyValue { version: 1, ..Default::default() }, &mut out);
    out
}

/// Writes a bbolt file with `state` and the records `records` passes on (in revision order) to `out`.
pub fn write(
    out: File,
    state: &BackupState,
    records: impl FnOnce(&mut dyn FnMut(Revision, KeyValue) -> io::Result<()>) -> io::Result<()>,
) -> io::Result<File> {
    let mut w = Writer::new(out)?;
    let auth = &state.auth;
    let mut b = w.bucket(b"auth")?;
    b.put(ENABLED, &[u8::from(auth.enabled())])?;
    b.put(AUTH_REVISION, &auth.revision().to_be_bytes())?;
    b.finish()?;

    let mut b = w.bucket(b"authRoles")?;
    for name in auth.roles() {
        let key_permission = auth.role(name).unwrap_or_default().to_vec();
        b.put(
            name.as_bytes(),
            &authpb::Role { name: name.as_bytes().to_vec(), key_permission }.encode_to_vec(),
        )?;
    }
    b.finish()?;

    let mut b = w.bucket(b"authUsers")?;
    for name in auth.users() {
        let Some(u) = auth.user(name) else { continue };
        let user = authpb::User {
            name: name.as_bytes().to_vec(),
            password: u.password.as_bytes().to_vec(),
            roles: u.roles.iter().cloned().collect(),
            options: u.no_password.then_some(authpb::UserAddOptions { no_password: true }),
        };
        b.put(name.as_bytes(), &user.encode_to_vec())?;
    }
    b.finish()?;

    let mut b = w.bucket(b"key")?;
    let (mut key, mut value) = (Vec::new(), Vec::new());
    records(&mut |rev, kv| {
        key.clear();
        value.clear();
        etcd_record::key(rev, &kv, &mut key);
        etcd_record::value(&kv, &mut value);
        b.put(&key, &value)
    })?;
    b.finish()?;

    let mut b = w.bucket(b"lease")?;
    let mut leases = state.leases.clone();
    leases.sort_by_key(|(id, _)| *id as u64);
    for (id, ttl) in leases {
        b.put(&id.to_be_bytes(), &Lease { id, ttl, remaining_ttl: 0 }.encode_to_vec())?;
    }
    b.finish()?;

    let mut b = w.bucket(b"meta")?;
    b.put(CONSISTENT_INDEX, &state.consistent_index.to_be_bytes())?;
    // etcd records a compaction at revision 0 too; -1 is none.
    if state.compacted >= 0 {
        b.put(FINISHED_COMPACT, &rev_bytes(state.compacted))?;
        b.put(SCHEDULED_COMPACT, &rev_bytes(state.compacted))?;
    }
    b.finish()?;
    w.finish()
}

/// How many members the `members` bucket of an etcd backend file lists (a member removed is deleted
/// from it); 0 when it has none.
pub fn members(file: File) -> io::Result<usize> {
    let r = Reader::open(file)?;
    let mut n = 0;
    if let Some(b) = r.bucket(b"members")? {
        r.for_each(&b, &mut |_, _| {
            n += 1;
            Ok(())
        })?;
    }
    Ok(n)
}

fn bad(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("not an etcd backup: {what}"))
}

/// Reads an etcd backend file (etcd's backup, or concord's): passes every record to `records` in
/// revision order and returns the rest of the state.
pub fn read(
    file: File,
    records: &mut dyn FnMut(Revision, KeyValue) -> io::Result<()>,
) -> io::Result<BackupState> {
    let r = Reader::open(file)?;
    let each = |name: &[u8], f: &mut EachKv<'_>| -> io::Result<()> {
        match r.bucket(name)? {
            Some(b) => r.for_each(&b, f),
            None => Ok(()),
        }
    };
    let keys = r.bucket(b"key")?.ok_or_else(|| bad("no key bucket"))?;
    let mut last = 0;
    r.for_each(&keys, &mut |k, v| {
        let (rev, deletion) = etcd_record::parse_key(k).ok_or_else(|| bad("a malformed revision"))?;
        last = rev.main;
        records(rev, etcd_record::record(rev, deletion, v).map_err(bad)?)
    })?;

    // A compaction etcd scheduled but had not finished is finished by whoever opens the file next.
    let (mut compacted, mut consistent_index) = (-1, 0);
    each(b"meta", &mut |k, v| {
        match k {
            FINISHED_COMPACT | SCHEDULED_COMPACT => {
                let (rev, _) = etcd_record::parse_key(v).ok_or_else(|| bad("a malformed compaction"))?;
                compacted = compacted.max(rev.main);
            }
            CONSISTENT_INDEX if v.len() == 8 => {
                consistent_index = u64::from_be_bytes(v.try_into().unwrap_or_default())
            }
            _ => {}
        }
        Ok(())
    })?;

    let mut leases = Vec::new();
    each(b"lease", &mut |_, v| {
        let l = Lease::decode(v).map_err(bad)?;
        leases.push((l.id, l.ttl));
        Ok(())
    })?;

    let (mut enabled, mut revision) = (false, 1);
    each(b"auth", &mut |k, v| {
        match k {
            ENABLED => enabled = v == [1],
            AUTH_REVISION if v.len() == 8 => {
                revision = u64::from_be_bytes(v.try_into().unwrap_or_default()).max(1)
            }
            _ => {}
        }
        Ok(())
    })?;
    let mut users = BTreeMap::new();
    each(b"authUsers", &mut |_, v| {
        let u = authpb::User::decode(v).map_err(bad)?;
        let user = User {
            password: String::from_utf8(u.password).map_err(bad)?,
            no_password: u.options.is_some_and(|o| o.no_password),
            roles: u.roles.into_iter().collect(),
        };
        users.insert(String::from_utf8(u.name).map_err(bad)?, user);
        Ok(())
    })?;
    let mut roles = BTreeMap::new();
    each(b"authRoles", &mut |_, v| {
        let role = authpb::Role::decode(v).map_err(bad)?;
        roles.insert(String::from_utf8(role.name).map_err(bad)?, role.key_permission);
        Ok(())
    })?;

    Ok(BackupState {
        current: last.max(compacted).max(1),
        compacted,
        consistent_index,
        leases,
        auth: AuthStore::from_parts(enabled, revision, users, roles),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthOp;

    #[test]
    fn a_backup_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut auth = AuthStore::default();
        auth.apply(AuthOp::UserAdd { name: "root".into(), password: "$2a$10$x".into(), no_password: false })
            .unwrap();
        auth.apply(AuthOp::RoleAdd { name: "root".into() }).unwrap();
        auth.apply(AuthOp::UserGrantRole { user: "root".into(), role: "root".into() }).unwrap();
        auth.apply(AuthOp::Enable).unwrap();
        let state = BackupState {
            current: 9,
            compacted: 3,
            consistent_index: 42,
            leases: vec![(7, 60), (5, 10)],
            auth,
        };
        let records = vec![
            (
                Revision::new(4, 0),
                KeyValue {
                    key: "a".into(),
                    value: "1".into(),
                    create_revision: 4,
                    mod_revision: 4,
                    version: 1,
                    lease: 7,
                },
            ),
            (Revision::new(8, 0), KeyValue { key: "a".into(), mod_revision: 8, ..Default::default() }),
            (
                Revision::new(9, 1),
                KeyValue {
                    key: "b".into(),
                    create_revision: 9,
                    mod_revision: 9,
                    version: 1,
                    ..Default::default()
                },
            ),
        ];
        write(File::create(&path).unwrap(), &state, |f| {
            records.iter().try_for_each(|(r, kv)| f(*r, kv.clone()))
        })
        .unwrap();
        let mut got = Vec::new();
        let read_back = read(File::open(&path).unwrap(), &mut |r, kv| {
            got.push((r, kv));
            Ok(())
        })
        .unwrap();
        assert_eq!(got, records);
        let mut leases = state.leases.clone();
        leases.sort();
        assert_eq!(read_back, BackupState { leases, ..state });
    }
}
