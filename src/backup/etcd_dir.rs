//! Taking over a stopped etcd member's data dir: `concord --data-dir <etcd's data dir>` starts with the
//! keys, leases and users etcd had, as a new etcd binary would on an older one's dir. So etcd is swapped
//! out by stopping it and starting concord with the same flags.
//!
//! etcd's state is its backend file (`member/snap/db`, the same bbolt file a backup is) plus the
//! requests its WAL (`member/wal`) holds past the file's consistent index: etcd commits the file in
//! batches (every 100 ms), and not every request moves the index it records (lease grants do not),
//! so the last requests before a crash, and some before a clean stop, are in the log alone. etcd replays them when it restarts, and so does
//! this: each is applied as etcd applied it, with its caller, and one that is in the file already
//! changes nothing (a grant of a lease that exists is refused; `etcdserver/apply.go` counts on the same).
//!
//! concord's files (`db`, `records`, `snap`, `wal`) go beside etcd's `member/`, which is left as it
//! was: going back to etcd means starting etcd again (without what was written to concord since). The
//! new member starts a new cluster from its flags, as after `snapshot restore`, so only one member's
//! data dir is taken over; a member of a larger etcd cluster moves through a backup instead.

use std::fs::{self, File};
use std::path::Path;

use prost::Message;

use super::etcd_wal::{self, Wal, ENTRY_NORMAL};
use super::{etcd, BackupError};
use crate::auth::{AuthOp, Caller};
use crate::pb::etcdserverpb::{
    AlarmRequest, AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleDeleteRequest,
    AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest, AuthUserAddRequest,
    AuthUserChangePasswordRequest, AuthUserDeleteRequest, AuthUserGrantRoleRequest,
    AuthUserRevokeRoleRequest, CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest,
    PutRequest, RangeRequest, TxnRequest,
};
use crate::raft::state_machine::StateMachine;
use crate::raft::Request;

/// `etcdserverpb.InternalRaftRequest` (etcd's `raft_internal.proto`): what a normal entry of etcd's
/// log holds. Requests that change nothing (reads, Authenticate, v2 and membership requests) are kept
/// as raw bytes, only to tell them from something unknown.
#[derive(Clone, PartialEq, Message)]
struct InternalRaftRequest {
    #[prost(message, optional, tag = "100")]
    header: Option<RequestHeader>,
    #[prost(bytes = "vec", optional, tag = "2")]
    v2: Option<Vec<u8>>,
    #[prost(message, optional, tag = "3")]
    range: Option<RangeRequest>,
    #[prost(message, optional, tag = "4")]
    put: Option<PutRequest>,
    #[prost(message, optional, tag = "5")]
    delete_range: Option<DeleteRangeRequest>,
    #[prost(message, optional, tag = "6")]
    txn: Option<TxnRequest>,
    #[prost(message, optional, tag = "7")]
    compaction: Option<CompactionRequest>,
    #[prost(message, optional, tag = "8")]
    lease_grant: Option<LeaseGrantRequest>,
    #[prost(message, optional, tag = "9")]
    lease_revoke: Option<LeaseRevokeRequest>,
    #[prost(message, optional, tag = "10")]
    alarm: Option<AlarmRequest>,
    #[prost(bytes = "vec", optional, tag = "11")]
    lease_checkpoint: Option<Vec<u8>>,
    #[prost(message, optional, tag = "1000")]
    auth_enable: Option<AuthEnableRequest>,
    #[prost(message, optional, tag = "1011")]
    auth_disable: Option<AuthDisableRequest>,
    #[prost(bytes = "vec", optional, tag = "1012")]
    authenticate: Option<Vec<u8>>,
    /// etcd 3.5's AuthStatus, a read.
    #[prost(bytes = "vec", optional, tag = "1013")]
    auth_status: Option<Vec<u8>>,
    #[prost(message, optional, tag = "1100")]
    auth_user_add: Option<AuthUserAddRequest>,
    #[prost(message, optional, tag = "1101")]
    auth_user_delete: Option<AuthUserDeleteRequest>,
    #[prost(bytes = "vec", optional, tag = "1102")]
    auth_user_get: Option<Vec<u8>>,
    #[prost(message, optional, tag = "1103")]
    auth_user_change_password: Option<AuthUserChangePasswordRequest>,
    #[prost(message, optional, tag = "1104")]
    auth_user_grant_role: Option<AuthUserGrantRoleRequest>,
    #[prost(message, optional, tag = "1105")]
    auth_user_revoke_role: Option<AuthUserRevokeRoleRequest>,
    #[prost(bytes = "vec", optional, tag = "1106")]
    auth_user_list: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "1107")]
    auth_role_list: Option<Vec<u8>>,
    #[prost(message, optional, tag = "1200")]
    auth_role_add: Option<AuthRoleAddRequest>,
    #[prost(message, optional, tag = "1201")]
    auth_role_delete: Option<AuthRoleDeleteRequest>,
    #[prost(bytes = "vec", optional, tag = "1202")]
    auth_role_get: Option<Vec<u8>>,
    #[prost(message, optional, tag = "1203")]
    auth_role_grant_permission: Option<AuthRoleGrantPermissionRequest>,
    #[prost(message, optional, tag = "1204")]
    auth_role_revoke_permission: Option<AuthRoleRevokePermissionRequest>,
    /// etcd 3.5's membership requests: cluster version, member attributes, downgrade.
    #[prost(bytes = "vec", optional, tag = "1300")]
    cluster_version_set: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "1301")]
    cluster_member_attr_set: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "1302")]
    downgrade_info_set: Option<Vec<u8>>,
}

/// etcd's v2 request (`etcdserverpb.Request`), as 3.4 logs a member's attributes: only as much of it as
/// tells it apart.
#[derive(Clone, PartialEq, Message)]
struct V2Request {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(string, tag = "2")]
    method: String,
    #[prost(string, tag = "3")]
    path: String,
    #[prost(string, tag = "4")]
    val: String,
}

#[derive(Clone, PartialEq, Message)]
struct RequestHeader {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(string, tag = "2")]
    username: String,
    #[prost(uint64, tag = "3")]
    auth_revision: u64,
}

/// What was taken over, for the log.
#[derive(Debug, PartialEq, Eq)]
pub struct Adopted {
    pub revision: i64,
    /// Requests replayed from etcd's WAL, and how many of them changed nothing.
    pub replayed: usize,
    pub unchanged: usize,
}

/// What replaying etcd's requests takes from the member's flags: etcd 3.4 logs a new password itself
/// (concord keeps its bcrypt hash), and a lease grant before the lessor raised its TTL to the minimum.
pub struct Options {
    pub bcrypt_cost: u32,
    pub min_lease_ttl: i64,
}

/// If `data_dir` is a stopped etcd member's (it has `member/snap/db`; its WAL is in `wal_dir`) and
/// concord has not started on it yet (no `db`), builds concord's state from etcd's beside it.
pub fn adopt(
    data_dir: &Path,
    wal_dir: &Path,
    concord_wal: &Path,
    options: &Options,
) -> Result<Option<Adopted>, BackupError> {
    let member = data_dir.join("member");
    let backend = member.join("snap").join("db");
    if crate::storage::Db::exists(data_dir) || !backend.exists() {
        return Ok(None);
    }
    let invalid = |path: &Path| {
        let path = path.to_path_buf();
        move |e| BackupError::Invalid(path, e)
    };
    // A running etcd holds an exclusive lock on its backend file (bbolt's flock), and its file changes
    // under a reader: taking over a live etcd's data dir is refused, not attempted.
    // The lock is held until the take-over is done.
    let lock = File::open(&backend)?;
    if let Err(std::fs::TryLockError::WouldBlock) = lock.try_lock_shared() {
        return Err(BackupError::EtcdRunning(data_dir.into()));
    }
    let members = etcd::members(lock.try_clone()?).map_err(invalid(&backend))?;
    if members > 1 {
        return Err(BackupError::ClusterMember(data_dir.into(), members));
    }
    let wal = etcd_wal::read(wal_dir).map_err(invalid(wal_dir))?;

    // A start cut short leaves concord's half-made files, never etcd's: begin again. That includes
    // concord's own Raft log segments (`<seq>.wal`), which must not be applied over the new state.
    let building = data_dir.join("adopting");
    for dir in [&building, &data_dir.join("records"), &data_dir.join("snap")] {
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
    }
    crate::storage::wal::remove_segments(concord_wal)?;
    let built = build(&building, &backend, wal_dir, wal, options);
    if built.is_err() {
        let _ = fs::remove_dir_all(&building);
    }
    let adopted = built?;
    // Until concord's `db` exists (it is made at start), the next start does all of this again.
    fs::rename(building.join("snap"), data_dir.join("snap"))?;
    fs::rename(building.join("records"), data_dir.join("records"))?;
    fs::remove_dir_all(&building)?;
    crate::storage::sync_dir(data_dir)?;
    drop(lock);
    Ok(Some(adopted))
}

/// Builds concord's state in `dir` from the backend file at `backend` and the entries of the WAL (read
/// from `wal_dir`) that follow the file's consistent index.
fn build(
    dir: &Path,
    backend: &Path,
    wal_dir: &Path,
    wal: Wal,
    options: &Options,
) -> Result<Adopted, BackupError> {
    let bad = |what: String| BackupError::Invalid(wal_dir.into(), std::io::Error::other(what));
    let sm = StateMachine::open(&dir.join("records"), dir.join("snap"), u64::MAX)?;
    let applied = super::load_etcd(&sm, dir, backend, File::open(backend)?)?;
    // Every entry after the file's index, as a restarted one-member etcd applies them: it leads and
    // commits its whole log, committed before the stop or not. (Entries up to the WAL's snapshot are
    // in etcd's `.snap` file: membership, which concord does not take.)
    let from = applied.max(wal.snapshot) + 1;
    let tail: Vec<_> = wal.entries.iter().filter(|e| e.index >= from).collect();
    let mut expect = from;
    for entry in &tail {
        if entry.index != expect {
            let file = backend.display();
            return Err(bad(format!("entry {expect} is missing ({file} holds up to {applied})")));
        }
        expect += 1;
    }
    if expect <= wal.commit {
        return Err(bad(format!("entries {expect} to {} were committed but are missing", wal.commit)));
    }
    let mut requests = Vec::new();
    for entry in tail.into_iter().filter(|e| e.kind == ENTRY_NORMAL && !e.data.is_empty()) {
        if let Some(request) =
            translate(&entry.data, options).map_err(|e| bad(format!("entry {}: {e}", entry.index)))?
        {
            requests.push(request);
        }
    }
    let replayed = requests.len();
    let unchanged = sm.replay(requests)?;
    Ok(Adopted { revision: sm.read(|s| s.current_revision()), replayed, unchanged })
}

/// The request an entry of etcd's log holds, as concord applies it; `None` for one that changes no
/// state concord keeps (reads, Authenticate, lease checkpoints, alarms and membership, which belonged
/// to the etcd cluster, not to the data).
fn translate(data: &[u8], options: &Options) -> Result<Option<Request>, String> {
    use crate::pb::authpb::UserAddOptions;
    // etcd 3.4 logs its v2 requests (member attributes, cluster version) as a bare `etcdserverpb.Request`,
    // which does not parse as an InternalRaftRequest: its path starts with '/', no valid field key.
    let r = match InternalRaftRequest::decode(data) {
        Ok(r) => r,
        Err(_) if V2Request::decode(data).is_ok_and(|v2| v2.path.starts_with('/')) => return Ok(None),
        Err(e) => return Err(format!("neither a v3 nor a v2 request: {e}")),
    };
    let hash = |password: String, hashed: String| -> Result<String, String> {
        match hashed.is_empty() {
            true => crate::auth::hash_password(&password, options.bcrypt_cost).map_err(|e| e.to_string()),
            false => Ok(hashed),
        }
    };
    let request = if let Some(put) = r.put {
        Request::Put(put)
    } else if let Some(d) = r.delete_range {
        Request::DeleteRange(d)
    } else if let Some(txn) = r.txn {
        Request::Txn(txn)
    } else if let Some(c) = r.compaction {
        Request::Compact(c)
    } else if let Some(g) = r.lease_grant {
        Request::LeaseGrant { id: g.id, ttl: g.ttl.max(options.min_lease_ttl) }
    } else if let Some(l) = r.lease_revoke {
        Request::LeaseRevoke { id: l.id }
    } else if r.auth_enable.is_some() {
        Request::Auth(AuthOp::Enable)
    } else if r.auth_disable.is_some() {
        Request::Auth(AuthOp::Disable)
    } else if let Some(u) = r.auth_user_add {
        let no_password = u.options.is_some_and(|o: UserAddOptions| o.no_password);
        let password = if no_password { String::new() } else { hash(u.password, u.hashed_password)? };
        Request::Auth(AuthOp::UserAdd { name: u.name, password, no_password })
    } else if let Some(u) = r.auth_user_delete {
        Request::Auth(AuthOp::UserDelete { name: u.name })
    } else if let Some(u) = r.auth_user_change_password {
        let password = hash(u.password, u.hashed_password)?;
        Request::Auth(AuthOp::UserChangePassword { name: u.name, password })
    } else if let Some(u) = r.auth_user_grant_role {
        Request::Auth(AuthOp::UserGrantRole { user: u.user, role: u.role })
    } else if let Some(u) = r.auth_user_revoke_role {
        Request::Auth(AuthOp::UserRevokeRole { name: u.name, role: u.role })
    } else if let Some(role) = r.auth_role_add {
        Request::Auth(AuthOp::RoleAdd { name: role.name })
    } else if let Some(role) = r.auth_role_delete {
        Request::Auth(AuthOp::RoleDelete { role: role.role })
    } else if let Some(p) = r.auth_role_grant_permission {
        // etcd refuses a grant without a permission before it reaches the log.
        let Some(perm) = p.perm else { return Ok(None) };
        Request::Auth(AuthOp::RoleGrantPermission { name: p.name, perm })
    } else if let Some(p) = r.auth_role_revoke_permission {
        Request::Auth(AuthOp::RoleRevokePermission { role: p.role, key: p.key, range_end: p.range_end })
    } else if r.v2.is_some()
        || r.range.is_some()
        || r.alarm.is_some()
        || r.lease_checkpoint.is_some()
        || r.authenticate.is_some()
        || r.auth_status.is_some()
        || r.auth_user_get.is_some()
        || r.auth_user_list.is_some()
        || r.auth_role_list.is_some()
        || r.auth_role_get.is_some()
        || r.cluster_version_set.is_some()
        || r.cluster_member_attr_set.is_some()
        || r.downgrade_info_set.is_some()
    {
        return Ok(None);
    } else {
        return Err("a request this version of concord does not know".into());
    };
    // Checked at apply against the auth state of the moment where etcd's `authApplierV3` checks: key
    // changes, lease revokes and auth changes. etcd applies lease grants and compactions whoever asked
    // (concord's own API is stricter there), so what etcd applied is replayed as it is.
    if matches!(request, Request::LeaseGrant { .. } | Request::Compact(_)) {
        return Ok(Some(request));
    }
    let header = r.header.unwrap_or_default();
    let caller = Caller { user: header.username, revision: header.auth_revision };
    Ok(Some(Request::Authed { caller, request: Box::new(request) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: Options = Options { bcrypt_cost: 4, min_lease_ttl: 2 };

    #[test]
    fn requests_are_replayed_with_their_callers_and_what_changes_nothing_is_skipped() {
        let put = PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() };
        let header = RequestHeader { id: 1, username: "u1".into(), auth_revision: 7 };
        let logged =
            InternalRaftRequest { header: Some(header), put: Some(put.clone()), ..Default::default() };
        match translate(&logged.encode_to_vec(), &OPTIONS).expect("translated") {
            Some(Request::Authed { caller, request }) => {
                assert_eq!(caller, Caller { user: "u1".into(), revision: 7 });
                assert!(matches!(*request, Request::Put(p) if p == put));
            }
            other => panic!("{other:?}"),
        }

        let grant = LeaseGrantRequest { ttl: 1, id: 5 };
        let logged = InternalRaftRequest { lease_grant: Some(grant), ..Default::default() };
        // Not checked against a caller, as etcd does not: raised to the minimum TTL.
        let got = translate(&logged.encode_to_vec(), &OPTIONS).expect("translated");
        assert!(matches!(got, Some(Request::LeaseGrant { id: 5, ttl: 2 })), "{got:?}");

        let v2 = V2Request {
            id: 9,
            method: "PUT".into(),
            path: "/0/members/8e9e05c52164694d/attributes".into(),
            val: r#"{"name":"n1","clientURLs":["http://127.0.0.1:2379"]}"#.into(),
        };
        assert!(matches!(translate(&v2.encode_to_vec(), &OPTIONS), Ok(None)));
        let read = InternalRaftRequest { range: Some(RangeRequest::default()), ..Default::default() };
        assert!(matches!(translate(&read.encode_to_vec(), &OPTIONS), Ok(None)));
    }

    #[test]
    fn a_password_from_etcd_34s_log_is_hashed_and_35s_hash_kept() {
        let add = |password: &str, hashed: &str| {
            let u = AuthUserAddRequest {
                name: "u".into(),
                password: password.into(),
                hashed_password: hashed.into(),
                ..Default::default()
            };
            let logged = InternalRaftRequest { auth_user_add: Some(u), ..Default::default() };
            match translate(&logged.encode_to_vec(), &OPTIONS).expect("translated") {
                Some(Request::Authed { request, .. }) => match *request {
                    Request::Auth(AuthOp::UserAdd { password, .. }) => password,
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            }
        };
        let hashed = add("secret", "");
        assert!(bcrypt::verify("secret", &hashed).expect("a bcrypt hash"));
        assert_eq!(add("", "$2a$10$abc"), "$2a$10$abc");
    }

    #[test]
    fn a_request_concord_does_not_know_stops_the_take_over() {
        // A field number no etcd release uses: it would be skipped silently if nothing checked.
        let mut unknown = Vec::new();
        prost::encoding::bytes::encode(4000, &vec![1u8, 2, 3], &mut unknown);
        assert!(translate(&unknown, &OPTIONS).is_err());
    }

    #[test]
    fn a_data_dir_without_etcds_files_or_already_concords_is_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = dir.path().join("member/wal");
        assert_eq!(adopt(dir.path(), &wal, &dir.path().join("wal"), &OPTIONS).expect("nothing to do"), None);
        std::fs::create_dir_all(dir.path().join("member/snap")).expect("mkdir");
        std::fs::write(dir.path().join("member/snap/db"), b"not read").expect("write");
        std::fs::write(dir.path().join("db"), b"concord's").expect("write");
        assert_eq!(
            adopt(dir.path(), &wal, &dir.path().join("wal"), &OPTIONS).expect("concord's already"),
            None
        );
    }
}
