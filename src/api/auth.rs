//! The Auth service, and how every other service learns who is calling.
//!
//! A caller is named by a simple token in the `token` metadata (etcd's Go client) or the `authorization`
//! one (the JSON gateway). While auth is off, only a token that comes with a request is checked. Writes
//! carry the caller through the log and are checked when applied; reads are checked here, against the
//! auth state as last applied.

use tonic::{Request, Response, Status};

use super::{header, node_status};
use crate::auth::{self, AuthError, AuthOp, AuthStore, Caller, Tokens};
use crate::pb::etcdserverpb::auth_server::Auth;
use crate::pb::etcdserverpb::*;
use crate::raft::{self, RaftNode};

/// The token metadata keys, in etcd's order of preference.
const TOKEN_KEYS: [&str; 2] = ["token", "authorization"];

/// How long a token issued by an entry this member has not applied yet may wait for it.
const TOKEN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub fn auth_status(e: AuthError) -> Status {
    use tonic::Code;
    let code = match e {
        AuthError::RootUserNotExist
        | AuthError::RootRoleNotExist
        | AuthError::UserAlreadyExist
        | AuthError::UserNotFound
        | AuthError::RoleAlreadyExist
        | AuthError::RoleNotFound
        | AuthError::RoleNotGranted
        | AuthError::PermissionNotGranted
        | AuthError::AuthNotEnabled => Code::FailedPrecondition,
        AuthError::UserEmpty
        | AuthError::RoleEmpty
        | AuthError::AuthFailed
        | AuthError::InvalidAuthMgmt
        | AuthError::AuthOldRevision
        | AuthError::PermissionNotGiven => Code::InvalidArgument,
        AuthError::PermissionDenied => Code::PermissionDenied,
        AuthError::InvalidAuthToken => Code::Unauthenticated,
    };
    Status::new(code, e.to_string())
}

/// Who sent `req`: `None` while auth is off; an anonymous caller when no token came with it; an error
/// for a token that is not valid.
///
/// A token is checked even while auth is off, as etcd checks it: one from before an `auth disable`
/// (which drops every simple token) is refused as invalid, and the client takes a new one or none.
pub async fn caller<T>(node: &RaftNode, req: &Request<T>) -> Result<Option<Caller>, Status> {
    let token = TOKEN_KEYS.iter().find_map(|k| req.metadata().get(*k)?.to_str().ok());
    let Some(token) = token else {
        if !node.sm.auth_enabled() {
            return Ok(None);
        }
        let revision = node.sm.auth().revision();
        let caller = certificate_user(node, req).map(|user| Caller { user, revision });
        return Ok(Some(caller.unwrap_or_else(Caller::anonymous)));
    };
    if let Some(jwt) = &node.jwt {
        let (user, revision) = jwt.verify(token).ok_or_else(|| auth_status(AuthError::InvalidAuthToken))?;
        return Ok(node.sm.auth_enabled().then_some(Caller { user, revision }));
    }
    let tokens = node.sm.tokens();
    let mut user = tokens.user(token);
    let issued_at = Tokens::index(token);
    if user.is_none() && node.sm.last_applied().is_none_or(|l| l.index < issued_at) {
        // Another member issued it, at an entry this one has yet to apply (or, made up, at one that may
        // never come: then the wait is bounded, where etcd's lasts as long as the request).
        let _ = tokio::time::timeout(TOKEN_WAIT, node.sm.wait_applied(issued_at)).await;
        user = tokens.user(token);
    }
    let user = user.ok_or_else(|| auth_status(AuthError::InvalidAuthToken))?;
    Ok(Some(Caller { user, revision: node.sm.auth().revision() }))
}

/// With `--client-cert-auth`, the common name of the client's certificate (verified by the TLS layer
/// against the trusted CA), as etcd's `AuthInfoFromTLS`. The gateway's calls carry none: etcd ignores
/// the name for gateway requests too.
fn certificate_user<T>(node: &RaftNode, req: &Request<T>) -> Option<String> {
    if !node.client_cert_auth {
        return None;
    }
    let cert = req.extensions().get::<crate::tls::ConnInfo>()?.client_certificate()?;
    crate::tls::common_name(cert).filter(|cn| !cn.is_empty())
}

/// Runs a permission check of a read for `caller`. A caller taken while auth was off here is checked
/// as anonymous if auth is on by now (the read barrier may have applied an AuthEnable since).
pub fn check(
    node: &RaftNode,
    caller: &Option<Caller>,
    f: impl FnOnce(&AuthStore, &Caller) -> Result<(), AuthError>,
) -> Result<(), Status> {
    match caller {
        Some(c) => f(&node.sm.auth(), c).map_err(auth_status),
        None if node.sm.auth_enabled() => f(&node.sm.auth(), &Caller::anonymous()).map_err(auth_status),
        None => Ok(()),
    }
}

/// After a read: if the auth state changed while it ran, the caller hears so and retries (etcd's
/// `doSerialize`), rather than get an answer its permissions may no longer allow.
pub fn still_current(node: &RaftNode, caller: &Option<Caller>) -> Result<(), Status> {
    match caller {
        Some(c) if c.revision != 0 && c.revision != node.sm.auth().revision() => {
            Err(auth_status(AuthError::AuthOldRevision))
        }
        _ => Ok(()),
    }
}

/// etcd's admin check (root role) for Cluster, Maintenance and auth management calls.
pub async fn require_admin<T>(node: &RaftNode, req: &Request<T>) -> Result<Option<Caller>, Status> {
    let caller = caller(node, req).await?;
    check(node, &caller, |auth, c| auth.check_admin(c))?;
    Ok(caller)
}

pub struct AuthService {
    pub node: RaftNode,
    pub bcrypt_cost: u32,
}

impl AuthService {
    /// Proposes an auth change as `caller` (checked for admin rights when applied).
    async fn change(&self, caller: Option<Caller>, op: AuthOp) -> Result<Option<ResponseHeader>, Status> {
        match super::write(&self.node, caller, raft::Request::Auth(op)).await? {
            raft::Response::None => Ok(header(&self.node)),
            _ => Err(super::unexpected()),
        }
    }

    /// The password's hash: the one the client sent (etcd 3.5's `hashedPassword`), or one made here
    /// with bcrypt, on a blocking thread (it takes tens of milliseconds at etcd's default cost).
    async fn hashed(&self, password: String, hashed: String) -> Result<String, Status> {
        if !hashed.is_empty() {
            return Ok(hashed);
        }
        let cost = self.bcrypt_cost;
        tokio::task::spawn_blocking(move || auth::hash_password(&password, cost))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("etcdserver: hashing the password: {e}")))
    }

    /// A linearizable view of the auth state, for the calls etcd answers through its log.
    async fn current(&self) -> Result<std::sync::Arc<AuthStore>, Status> {
        self.node.read_barrier().await.map_err(node_status)?;
        Ok(self.node.sm.auth())
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        req: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        let caller = caller(&self.node, &req).await?;
        let header = self.change(caller, AuthOp::Enable).await?;
        Ok(Response::new(AuthEnableResponse { header }))
    }

    async fn auth_disable(
        &self,
        req: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let caller = caller(&self.node, &req).await?;
        let header = self.change(caller, AuthOp::Disable).await?;
        Ok(Response::new(AuthDisableResponse { header }))
    }

    async fn auth_status(
        &self,
        _: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        let auth = self.current().await?;
        Ok(Response::new(AuthStatusResponse {
            header: header(&self.node),
            enabled: auth.enabled(),
            auth_revision: auth.revision(),
        }))
    }

    /// Checks the password here, then issues the token through the log so that every member knows it.
    /// If the auth state changed in between, the password is checked again (a few times at most).
    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let AuthenticateRequest { name, password } = req.into_inner();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let auth = self.current().await?;
            if !auth.enabled() {
                return Err(auth_status(AuthError::AuthNotEnabled));
            }
            let hash = match auth.user(&name) {
                Some(u) if !u.no_password => u.password.clone(),
                _ => return Err(auth_status(AuthError::AuthFailed)),
            };
            let pw = password.clone();
            let good = tokio::task::spawn_blocking(move || auth::verify_password(&pw, &hash))
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            if !good {
                tracing::info!(user = %name, "authentication failed: invalid password");
                return Err(auth_status(AuthError::AuthFailed));
            }
            // A JWT needs no simple token: the entry only confirms the revision the password was checked at.
            let prefix = if self.node.jwt.is_some() { String::new() } else { Tokens::prefix() };
            let op = AuthOp::Authenticate { name: name.clone(), prefix, revision: auth.revision() };
            match super::write(&self.node, None, raft::Request::Auth(op)).await {
                Ok(raft::Response::Token(simple)) => {
                    let token = match &self.node.jwt {
                        Some(jwt) => {
                            jwt.sign(&name, auth.revision()).map_err(|e| Status::unknown(e.to_string()))?
                        }
                        None => simple,
                    };
                    return Ok(Response::new(AuthenticateResponse { header: header(&self.node), token }));
                }
                Ok(_) => return Err(super::unexpected()),
                Err(s) if s.message() == AuthError::AuthOldRevision.to_string() && attempts < 5 => continue,
                Err(s) => return Err(s),
            }
        }
    }

    /// Admin rights are checked before the password is hashed (a bcrypt round is dear), and again when
    /// the change is applied.
    async fn user_add(
        &self,
        req: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let caller = require_admin(&self.node, &req).await?;
        let r = req.into_inner();
        let no_password = r.options.is_some_and(|o| o.no_password);
        let password = match no_password {
            true => String::new(),
            false => self.hashed(r.password, r.hashed_password).await?,
        };
        let header = self.change(caller, AuthOp::UserAdd { name: r.name, password, no_password }).await?;
        Ok(Response::new(AuthUserAddResponse { header }))
    }

    /// Admin's, or the user's own.
    async fn user_get(
        &self,
        req: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let caller = caller(&self.node, &req).await?;
        let name = req.into_inner().name;
        check(&self.node, &caller, |auth, c| match c.user == name {
            true => Ok(()),
            false => auth.check_admin(c),
        })?;
        let auth = self.current().await?;
        let user = auth.user(&name).ok_or_else(|| auth_status(AuthError::UserNotFound))?;
        let roles = user.roles.iter().cloned().collect();
        Ok(Response::new(AuthUserGetResponse { header: header(&self.node), roles }))
    }

    async fn user_list(
        &self,
        req: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        require_admin(&self.node, &req).await?;
        let users = self.current().await?.users().map(String::from).collect();
        Ok(Response::new(AuthUserListResponse { header: header(&self.node), users }))
    }

    async fn user_delete(
        &self,
        req: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let caller = caller(&self.node, &req).await?;
        let name = req.into_inner().name;
        let header = self.change(caller, AuthOp::UserDelete { name }).await?;
        Ok(Response::new(AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let caller = require_admin(&self.node, &req).await?;
        let r = req.into_inner();
        let password = self.hashed(r.password, r.hashed_password).await?;
        let header = self.change(caller, AuthOp::UserChangePassword { name: r.name, password }).await?;
        Ok(Response::new(AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        req: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let caller = caller(&self.node, &req).await?;
        let AuthUserGrantRoleRequest { user, role } = req.into_inner();
        let header = self.change(caller, AuthOp::UserGrantRole { user, role }).await?;
        Ok(Response::new(AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        req: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let caller = caller(&self.node, &req).await?;
        let AuthUserRevokeRoleRequest { name, role } = req.into_inner();
        let header = self.change(caller, AuthOp::UserRevokeRole { name, role }).await?;
        Ok(Response::new(AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(
        &self,
        req: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let caller = caller(&self.node, &req).await?;
        let name = req.into_inner().name;
        let header = self.change(caller, AuthOp::RoleAdd { name }).await?;
        Ok(Response::new(AuthRoleAddResponse { header }))
    }

    /// Admin's, or a user's of its own role.
    async fn role_get(
        &self,
        req: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let caller = caller(&self.node, &req).await?;
        let role = req.into_inner().role;
        check(&self.node, &caller, |auth, c| match auth.has_role(&c.user, &role) {
            true => Ok(()),
            false => auth.check_admin(c),
        })?;
        let auth = self.current().await?;
        let perm = auth.role(&role).ok_or_else(|| auth_status(AuthError::RoleNotFound))?.to_vec();
        Ok(Response::new(AuthRoleGetResponse { header: header(&self.node), perm }))
    }

    async fn role_list(
        &self,
        req: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        require_admin(&self.node, &req).await?;
        let roles = self.current().await?.roles().map(String::from).collect();
        Ok(Response::new(AuthRoleListResponse { header: header(&self.node), roles }))
    }

    async fn role_delete(
        &self,
        req: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let caller = caller(&self.node, &req).await?;
        let role = req.into_inner().role;
        let header = self.change(caller, AuthOp::RoleDelete { role }).await?;
        Ok(Response::new(AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let caller = caller(&self.node, &req).await?;
        let AuthRoleGrantPermissionRequest { name, perm } = req.into_inner();
        let perm = perm.ok_or_else(|| auth_status(AuthError::PermissionNotGiven))?;
        let header = self.change(caller, AuthOp::RoleGrantPermission { name, perm }).await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse { header }))
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let caller = caller(&self.node, &req).await?;
        let AuthRoleRevokePermissionRequest { role, key, range_end } = req.into_inner();
        let header = self.change(caller, AuthOp::RoleRevokePermission { role, key, range_end }).await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse { header }))
    }
}
