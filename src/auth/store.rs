//! The replicated auth state and the changes the log makes to it, with etcd's rules (`auth/store.go`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::perm::{permitted, Kind};
use super::{AuthError, Caller};
use crate::pb::authpb::Permission;
use crate::pb::etcdserverpb::request_op::Request as Op;
use crate::pb::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};

const ROOT: &str = "root";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// A bcrypt hash; empty for a user added without a password.
    pub password: String,
    /// Added with `no_password`: only a client certificate names this user.
    pub no_password: bool,
    pub roles: BTreeSet<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthStore {
    enabled: bool,
    /// etcd's auth revision: starts at 1, and every change of users, roles or permissions (and
    /// disabling auth) bumps it, so a request checked at an older one can be told so.
    revision: u64,
    users: BTreeMap<String, User>,
    /// Each role's permissions, sorted by key like etcd's.
    roles: BTreeMap<String, Vec<Permission>>,
}

impl Default for AuthStore {
    fn default() -> Self {
        AuthStore { enabled: false, revision: 1, users: BTreeMap::new(), roles: BTreeMap::new() }
    }
}

impl AuthStore {
    /// The auth state a backup carries (etcd's auth buckets).
    pub fn from_parts(
        enabled: bool,
        revision: u64,
        users: BTreeMap<String, User>,
        roles: BTreeMap<String, Vec<Permission>>,
    ) -> AuthStore {
        AuthStore { enabled, revision, users, roles }
    }
}

/// A change to the auth state, as proposed through the log. Passwords arrive hashed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AuthOp {
    Enable,
    Disable,
    /// Issues the simple token `<prefix>.<log index>` to `name`, if the auth state is still at
    /// `revision` (the one the password was checked at); with an empty prefix only confirms that
    /// (the proposer then signs a JWT).
    Authenticate {
        name: String,
        prefix: String,
        revision: u64,
    },
    UserAdd {
        name: String,
        password: String,
        no_password: bool,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password: String,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        name: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        role: String,
    },
    RoleGrantPermission {
        name: String,
        perm: Permission,
    },
    RoleRevokePermission {
        role: String,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
}

impl AuthOp {
    /// etcd's `needAdminPermission`: everything but Authenticate needs the root role once auth is on.
    pub fn needs_admin(&self) -> bool {
        !matches!(self, AuthOp::Authenticate { .. })
    }
}

/// What an applied change means for the tokens this member holds.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenEffect {
    None,
    /// Every token goes (auth was disabled).
    Clear,
    /// The user's tokens go (deleted, or its password changed).
    Invalidate(String),
    /// A token for this user, with the prefix proposed.
    Issue {
        user: String,
        prefix: String,
    },
}

impl AuthStore {
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    pub fn role(&self, name: &str) -> Option<&[Permission]> {
        self.roles.get(name).map(Vec::as_slice)
    }

    pub fn roles(&self) -> impl Iterator<Item = &str> {
        self.roles.keys().map(String::as_str)
    }

    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.roles.contains(role))
    }

    /// Applies a change. Deterministic: the outcome depends only on the state and the op.
    pub fn apply(&mut self, op: AuthOp) -> Result<TokenEffect, AuthError> {
        let effect = match op {
            AuthOp::Enable => {
                if !self.enabled {
                    let root = self.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
                    if !root.roles.contains(ROOT) {
                        return Err(AuthError::RootRoleNotExist);
                    }
                    // Like etcd, enabling does not bump the revision.
                    self.enabled = true;
                }
                return Ok(TokenEffect::None);
            }
            AuthOp::Disable => {
                if !self.enabled {
                    return Ok(TokenEffect::None);
                }
                self.enabled = false;
                TokenEffect::Clear
            }
            AuthOp::Authenticate { name, prefix, revision } => {
                if !self.enabled {
                    return Err(AuthError::AuthNotEnabled);
                }
                match self.users.get(&name) {
                    Some(u) if !u.no_password => {}
                    _ => return Err(AuthError::AuthFailed),
                }
                if revision != self.revision {
                    return Err(AuthError::AuthOldRevision);
                }
                return Ok(TokenEffect::Issue { user: name, prefix });
            }
            AuthOp::UserAdd { name, password, no_password } => {
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(&name) {
                    return Err(AuthError::UserAlreadyExist);
                }
                let password = if no_password { String::new() } else { password };
                self.users.insert(name, User { password, no_password, roles: BTreeSet::new() });
                TokenEffect::None
            }
            AuthOp::UserDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.users.remove(&name).ok_or(AuthError::UserNotFound)?;
                TokenEffect::Invalidate(name)
            }
            AuthOp::UserChangePassword { name, password } => {
                self.users.get_mut(&name).ok_or(AuthError::UserNotFound)?.password = password;
                TokenEffect::Invalidate(name)
            }
            AuthOp::UserGrantRole { user, role } => {
                if role != ROOT && !self.roles.contains_key(&role) {
                    self.users.get(&user).ok_or(AuthError::UserNotFound)?;
                    return Err(AuthError::RoleNotFound);
                }
                let u = self.users.get_mut(&user).ok_or(AuthError::UserNotFound)?;
                if !u.roles.insert(role) {
                    return Ok(TokenEffect::None);
                }
                TokenEffect::None
            }
            AuthOp::UserRevokeRole { name, role } => {
                if self.enabled && name == ROOT && role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let u = self.users.get_mut(&name).ok_or(AuthError::UserNotFound)?;
                if !u.roles.remove(&role) {
                    return Err(AuthError::RoleNotGranted);
                }
                TokenEffect::None
            }
            AuthOp::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(&name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                self.roles.insert(name, Vec::new());
                TokenEffect::None
            }
            AuthOp::RoleDelete { role } => {
                if self.enabled && role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.roles.remove(&role).ok_or(AuthError::RoleNotFound)?;
                for u in self.users.values_mut() {
                    u.roles.remove(&role);
                }
                TokenEffect::None
            }
            AuthOp::RoleGrantPermission { name, perm } => {
                let perms = self.roles.get_mut(&name).ok_or(AuthError::RoleNotFound)?;
                // etcd's way, exactly: only the first permission of the same key is updated in place,
                // when its range end matches too; otherwise the new one goes after every permission of
                // its key (etcd appends, then sorts by key). So a role can hold the same range twice,
                // and lists its permissions in etcd's order.
                let first = perms.partition_point(|p| p.key < perm.key);
                match perms.get_mut(first) {
                    Some(p) if p.key == perm.key && p.range_end == perm.range_end => {
                        p.perm_type = perm.perm_type
                    }
                    _ => perms.insert(perms.partition_point(|p| p.key <= perm.key), perm),
                }
                TokenEffect::None
            }
            AuthOp::RoleRevokePermission { role, key, range_end } => {
                let perms = self.roles.get_mut(&role).ok_or(AuthError::RoleNotFound)?;
                let before = perms.len();
                perms.retain(|p| p.key != key || p.range_end != range_end);
                if perms.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
                TokenEffect::None
            }
        };
        self.revision += 1;
        Ok(effect)
    }

    /// etcd's `IsAdminPermitted`: with auth on, only a user with the root role.
    pub fn check_admin(&self, caller: &Caller) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        if caller.user.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        match self.users.get(&caller.user) {
            None => Err(AuthError::UserNotFound),
            Some(u) if u.roles.contains(ROOT) => Ok(()),
            Some(_) => Err(AuthError::PermissionDenied),
        }
    }

    /// With auth on, an unauthenticated caller may not change anything: etcd lets it grant, revoke (a
    /// lease without keys), compact and raise alarms; concord does not (see docs/design.md, Auth).
    pub fn check_authenticated(&self, caller: &Caller) -> Result<(), AuthError> {
        match self.enabled && caller.revision == 0 {
            true => Err(AuthError::UserEmpty),
            false => Ok(()),
        }
    }

    /// etcd's `isOpPermitted`: may `caller` do `kind` to `key`..`range_end`?
    pub fn check(&self, caller: &Caller, kind: Kind, key: &[u8], range_end: &[u8]) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        if caller.revision == 0 {
            return Err(AuthError::UserEmpty);
        }
        if caller.revision < self.revision {
            return Err(AuthError::AuthOldRevision);
        }
        let user = self.users.get(&caller.user).ok_or(AuthError::PermissionDenied)?;
        if user.roles.contains(ROOT) {
            return Ok(());
        }
        let perms = user.roles.iter().filter_map(|r| self.roles.get(r)).flatten();
        match permitted(perms, kind, key, range_end) {
            true => Ok(()),
            false => Err(AuthError::PermissionDenied),
        }
    }

    pub fn check_range(&self, caller: &Caller, r: &RangeRequest) -> Result<(), AuthError> {
        self.check(caller, Kind::Read, &r.key, &r.range_end)
    }

    /// A put needs write permission on its key, read permission too to get the previous value, and
    /// write permission on every key already on its lease (`lease_keys`): attaching a key to a lease
    /// the caller could not revoke is refused, as in etcd.
    pub fn check_put(
        &self,
        caller: &Caller,
        r: &PutRequest,
        lease_keys: &dyn Fn(i64) -> Vec<Vec<u8>>,
    ) -> Result<(), AuthError> {
        self.check(caller, Kind::Write, &r.key, &[])?;
        if r.lease != 0 && self.enabled {
            self.check_lease(caller, &lease_keys(r.lease))?;
        }
        if r.prev_kv {
            self.check(caller, Kind::Read, &r.key, &[])?;
        }
        Ok(())
    }

    pub fn check_delete(&self, caller: &Caller, r: &DeleteRangeRequest) -> Result<(), AuthError> {
        self.check(caller, Kind::Write, &r.key, &r.range_end)?;
        if r.prev_kv {
            self.check(caller, Kind::Read, &r.key, &r.range_end)?;
        }
        Ok(())
    }

    /// Revoking a lease deletes its keys: the caller needs write permission on each.
    pub fn check_lease(&self, caller: &Caller, keys: &[Vec<u8>]) -> Result<(), AuthError> {
        self.check_authenticated(caller)?;
        keys.iter().try_for_each(|k| self.check(caller, Kind::Write, k, &[]))
    }

    /// Every compare reads, and both branches are checked whichever runs (etcd's `checkTxnAuth`),
    /// nested transactions included.
    pub fn check_txn(&self, caller: &Caller, t: &TxnRequest) -> Result<(), AuthError> {
        for c in &t.compare {
            self.check(caller, Kind::Read, &c.key, &c.range_end)?;
        }
        t.success.iter().chain(&t.failure).try_for_each(|op| self.check_op(caller, op))
    }

    fn check_op(&self, caller: &Caller, op: &RequestOp) -> Result<(), AuthError> {
        match &op.request {
            Some(Op::RequestRange(r)) => self.check_range(caller, r),
            Some(Op::RequestPut(p)) => self.check_put(caller, p, &|_| Vec::new()),
            Some(Op::RequestDeleteRange(d)) => self.check_delete(caller, d),
            Some(Op::RequestTxn(t)) => self.check_txn(caller, t),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::authpb::permission::Type;

    fn op(store: &mut AuthStore, op: AuthOp) -> Result<TokenEffect, AuthError> {
        store.apply(op)
    }

    fn user_add(name: &str) -> AuthOp {
        AuthOp::UserAdd { name: name.into(), password: "hash".into(), no_password: false }
    }

    fn grant(user: &str, role: &str) -> AuthOp {
        AuthOp::UserGrantRole { user: user.into(), role: role.into() }
    }

    fn caller(s: &AuthStore, user: &str) -> Caller {
        Caller { user: user.into(), revision: s.revision() }
    }

    /// root with the root role, and alice with role r (readwrite on foo/), auth on.
    fn enabled() -> AuthStore {
        let mut s = AuthStore::default();
        for o in [
            user_add("root"),
            grant("root", "root"),
            user_add("alice"),
            AuthOp::RoleAdd { name: "r".into() },
            AuthOp::RoleGrantPermission {
                name: "r".into(),
                perm: Permission {
                    perm_type: Type::Readwrite as i32,
                    key: b"foo/".to_vec(),
                    range_end: b"foo0".to_vec(),
                },
            },
            grant("alice", "r"),
            AuthOp::Enable,
        ] {
            op(&mut s, o).unwrap();
        }
        s
    }

    #[test]
    fn enabling_needs_root_with_the_root_role() {
        let mut s = AuthStore::default();
        assert_eq!(op(&mut s, AuthOp::Enable), Err(AuthError::RootUserNotExist));
        op(&mut s, user_add("root")).unwrap();
        assert_eq!(op(&mut s, AuthOp::Enable), Err(AuthError::RootRoleNotExist));
        op(&mut s, grant("root", "root")).unwrap();
        let rev = s.revision();
        assert_eq!(op(&mut s, AuthOp::Enable), Ok(TokenEffect::None));
        assert!(s.enabled());
        assert_eq!(s.revision(), rev, "enabling does not bump the revision");
        assert_eq!(op(&mut s, AuthOp::UserDelete { name: "root".into() }), Err(AuthError::InvalidAuthMgmt));
        assert_eq!(
            op(&mut s, AuthOp::UserRevokeRole { name: "root".into(), role: "root".into() }),
            Err(AuthError::InvalidAuthMgmt)
        );
        assert_eq!(op(&mut s, AuthOp::Disable), Ok(TokenEffect::Clear));
        assert_eq!(s.revision(), rev + 1);
    }

    /// etcd's `RoleGrantPermission`: a permission goes after those of the same key, and replaces only
    /// the first of them, if its range end matches. Revoking takes every copy.
    #[test]
    fn permissions_are_granted_and_listed_in_etcds_order() {
        let mut s = AuthStore::default();
        op(&mut s, AuthOp::RoleAdd { name: "r".into() }).unwrap();
        let mut grant = |t: Type, key: &str, end: &str| {
            let perm = Permission { perm_type: t as i32, key: key.into(), range_end: end.into() };
            op(&mut s, AuthOp::RoleGrantPermission { name: "r".into(), perm }).unwrap();
        };
        grant(Type::Read, "c", "");
        grant(Type::Readwrite, "a", "\0");
        grant(Type::Write, "a", "");
        grant(Type::Read, "a", "\0");
        grant(Type::Read, "a", "");
        let listed = |s: &AuthStore| -> Vec<(i32, String, String)> {
            let perms = s.role("r").unwrap().iter();
            perms
                .map(|p| {
                    (
                        p.perm_type,
                        String::from_utf8_lossy(&p.key).into(),
                        String::from_utf8_lossy(&p.range_end).into(),
                    )
                })
                .collect()
        };
        let (r, w) = (Type::Read as i32, Type::Write as i32);
        let want = [(r, "a", "\0"), (w, "a", ""), (r, "a", ""), (r, "c", "")];
        assert_eq!(listed(&s), want.map(|(t, k, e)| (t, k.to_string(), e.to_string())));
        let revoke = AuthOp::RoleRevokePermission { role: "r".into(), key: b"a".to_vec(), range_end: vec![] };
        op(&mut s, revoke).unwrap();
        assert_eq!(listed(&s), [(r, "a".into(), "\0".into()), (r, "c".into(), String::new())]);
    }

    #[test]
    fn user_and_role_errors_are_etcds() {
        let mut s = AuthStore::default();
        assert_eq!(op(&mut s, user_add("")), Err(AuthError::UserEmpty));
        op(&mut s, user_add("u")).unwrap();
        assert_eq!(op(&mut s, user_add("u")), Err(AuthError::UserAlreadyExist));
        assert_eq!(op(&mut s, grant("nobody", "root")), Err(AuthError::UserNotFound));
        assert_eq!(op(&mut s, grant("u", "nope")), Err(AuthError::RoleNotFound));
        assert_eq!(
            op(&mut s, AuthOp::UserRevokeRole { name: "u".into(), role: "x".into() }),
            Err(AuthError::RoleNotGranted)
        );
        assert_eq!(op(&mut s, AuthOp::RoleAdd { name: String::new() }), Err(AuthError::RoleEmpty));
        op(&mut s, AuthOp::RoleAdd { name: "x".into() }).unwrap();
        assert_eq!(op(&mut s, AuthOp::RoleAdd { name: "x".into() }), Err(AuthError::RoleAlreadyExist));
        assert_eq!(
            op(
                &mut s,
                AuthOp::RoleRevokePermission { role: "x".into(), key: b"k".to_vec(), range_end: vec![] }
            ),
            Err(AuthError::PermissionNotGranted)
        );
        op(&mut s, grant("u", "x")).unwrap();
        op(&mut s, AuthOp::RoleDelete { role: "x".into() }).unwrap();
        assert!(!s.has_role("u", "x"), "deleting a role takes it from its users");
        assert_eq!(
            op(&mut s, AuthOp::UserDelete { name: "u".into() }),
            Ok(TokenEffect::Invalidate("u".into()))
        );
    }

    #[test]
    fn permissions_follow_roles() {
        let s = enabled();
        let alice = caller(&s, "alice");
        assert_eq!(s.check(&Caller::anonymous(), Kind::Read, b"foo/a", b""), Err(AuthError::UserEmpty));
        assert_eq!(s.check(&alice, Kind::Write, b"foo/a", b""), Ok(()));
        assert_eq!(s.check(&alice, Kind::Read, b"bar", b""), Err(AuthError::PermissionDenied));
        assert_eq!(s.check(&caller(&s, "root"), Kind::Write, b"bar", b"\0"), Ok(()));
        assert_eq!(
            s.check(&caller(&s, "ghost"), Kind::Read, b"foo/a", b""),
            Err(AuthError::PermissionDenied)
        );
        let old = Caller { user: "alice".into(), revision: s.revision() - 1 };
        assert_eq!(s.check(&old, Kind::Read, b"foo/a", b""), Err(AuthError::AuthOldRevision));
        assert_eq!(s.check_admin(&alice), Err(AuthError::PermissionDenied));
        assert_eq!(s.check_admin(&Caller::anonymous()), Err(AuthError::UserEmpty));
        assert_eq!(s.check_admin(&caller(&s, "root")), Ok(()));
    }

    #[test]
    fn a_txn_is_checked_through_both_branches_and_nested_txns() {
        use crate::pb::etcdserverpb::Compare;
        let s = enabled();
        let alice = caller(&s, "alice");
        let put = |key: &str| RequestOp {
            request: Some(Op::RequestPut(PutRequest { key: key.into(), ..Default::default() })),
        };
        let ok =
            TxnRequest { success: vec![put("foo/a")], failure: vec![put("foo/b")], ..Default::default() };
        assert_eq!(s.check_txn(&alice, &ok), Ok(()));
        let failure_outside = TxnRequest { failure: vec![put("bar")], ..ok.clone() };
        assert_eq!(s.check_txn(&alice, &failure_outside), Err(AuthError::PermissionDenied));
        let nested = RequestOp {
            request: Some(Op::RequestTxn(TxnRequest { success: vec![put("bar")], ..Default::default() })),
        };
        let nested = TxnRequest { success: vec![nested], ..Default::default() };
        assert_eq!(s.check_txn(&alice, &nested), Err(AuthError::PermissionDenied));
        let compare =
            TxnRequest { compare: vec![Compare { key: b"bar".to_vec(), ..Default::default() }], ..ok };
        assert_eq!(s.check_txn(&alice, &compare), Err(AuthError::PermissionDenied));
    }

    #[test]
    fn authenticate_needs_the_checked_revision() {
        let mut s = enabled();
        let rev = s.revision();
        let auth =
            |name: &str, revision| AuthOp::Authenticate { name: name.into(), prefix: "p".into(), revision };
        assert_eq!(
            op(&mut s, auth("alice", rev)),
            Ok(TokenEffect::Issue { user: "alice".into(), prefix: "p".into() })
        );
        assert_eq!(op(&mut s, auth("alice", rev - 1)), Err(AuthError::AuthOldRevision));
        assert_eq!(op(&mut s, auth("nobody", rev)), Err(AuthError::AuthFailed));
        op(&mut s, AuthOp::UserAdd { name: "cert".into(), password: String::new(), no_password: true })
            .unwrap();
        let rev = s.revision();
        assert_eq!(op(&mut s, auth("cert", rev)), Err(AuthError::AuthFailed));
    }
}
