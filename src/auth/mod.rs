//! etcd's authentication and authorization, split like the lease module: what every member must agree
//! on, and what each member keeps for itself.
//!
//! - [`AuthStore`] is replicated state, changed only by applying the log: whether auth is on, the users
//!   (bcrypt hashes, roles) and the roles (key-range permissions), and etcd's auth revision, which every
//!   change bumps. Permission checks of writes run when they are applied, against the state they are
//!   applied to, with the caller the proposing member named in the entry (see [`Caller`]).
//! - [`Tokens`] is member-local: the simple tokens this member knows, each with a TTL counted on the
//!   local clock. An Authenticate entry makes every member learn the token when it applies it; nothing
//!   time-dependent happens inside apply, since only the lookups look at the clock.
//!
//! Passwords are hashed (and checked) by the member that takes the request, outside apply: bcrypt is
//! slow on purpose, and the log then carries only hashes.

mod jwt;
mod perm;
mod store;
mod token;

pub use jwt::{Jwt, JwtError};
pub use perm::Kind;
pub use store::{AuthOp, AuthStore, TokenEffect, User};
pub use token::Tokens;

use serde::{Deserialize, Serialize};

/// etcd's auth failures; the texts are etcd's (clients match on them).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum AuthError {
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
}

/// Who sent a request, as the member that took it resolved the token: the user and the auth revision
/// it was resolved at. An unauthenticated caller has an empty name and revision 0 (etcd's empty
/// `AuthInfo`), which every permission check refuses with "user name is empty".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub user: String,
    pub revision: u64,
}

impl Caller {
    pub fn anonymous() -> Caller {
        Caller::default()
    }
}

/// etcd's `--bcrypt-cost` default (bcrypt's own default cost).
pub const DEFAULT_BCRYPT_COST: u32 = 10;

/// A bcrypt hash of `password`; `cost` outside bcrypt's range falls back to the default, as in etcd.
pub fn hash_password(password: &str, cost: u32) -> Result<String, bcrypt::BcryptError> {
    let cost = if (4..=31).contains(&cost) { cost } else { DEFAULT_BCRYPT_COST };
    bcrypt::hash(password, cost)
}

/// Whether `password` matches `hash` (bcrypt's comparison does not stop at the first differing byte).
pub fn verify_password(password: &str, hash: &str) -> bool {
    bcrypt::verify(password, hash).unwrap_or(false)
}
