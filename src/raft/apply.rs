//! Applying one committed request to the state: the key-value store, leases, members' attributes,
//! alarms and auth. Deterministic, as a replicated state machine must be: no clock, no randomness, and
//! the same request on the same state gives the same result on every member.

use std::sync::Arc;

use super::state_machine::Applied;
use super::types::{Request, Response};
use crate::auth::{AuthError, AuthStore, Caller, TokenEffect, Tokens};
use crate::lease::LeaseTable;
use crate::mvcc::{MvccError, Store};
use crate::pb::mvccpb::Event;
use crate::storage::records::RecordLog;

/// Applies one request, adding the events it produced to `events`.
pub(super) fn apply_request(
    store: &mut Store<RecordLog>,
    meta: &mut Applied,
    tokens: &Tokens,
    req: Request,
    events: &mut Vec<Event>,
) -> Response {
    use crate::pb::etcdserverpb::{
        request_op, CompactionResponse, DeleteRangeRequest, LeaseGrantResponse, LeaseRevokeResponse,
        RequestOp, ResponseHeader, TxnRequest,
    };
    if let Request::Proposed { request, .. } = req {
        return apply_request(store, meta, tokens, *request, events);
    }
    if let Request::Authed { caller, request } = req {
        return match permitted(&meta.auth, &meta.leases, &caller, &request) {
            Ok(()) => apply_request(store, meta, tokens, *request, events),
            Err(e) => Response::Denied(e),
        };
    }
    let index = meta.last_applied.map_or(0, |l| l.index);
    let Applied { leases, attributes, alarms, auth, .. } = meta;
    let header = |store: &Store<RecordLog>| {
        Some(ResponseHeader { revision: store.current_revision(), ..Default::default() })
    };
    // etcd's corrupt applier: once a member's data is known to differ, no change is applied; its capped
    // applier: while out of space, nothing that adds data is.
    let changes_data = !matches!(
        req,
        Request::Batch(_)
            | Request::Proposed { .. }
            | Request::Alarm { .. }
            | Request::Publish { .. }
            | Request::Auth(_)
            | Request::Authed { .. }
            | Request::LeaseCheckpoint(_)
    );
    let active = |kind| alarms.iter().any(|(_, a)| *a == kind);
    if changes_data && active(crate::quota::CORRUPT) {
        return Response::Error(MvccError::Corrupt);
    }
    if changes_data && active(crate::quota::NOSPACE) && crate::quota::cost(&req) > 0 {
        return Response::Error(MvccError::NoSpace);
    }
    let result = match req {
        Request::Put(r) => {
            let exists = |id| leases.contains(id);
            store.put(&r, &exists).map(|a| (Response::Put(a.response), a.events))
        }
        Request::DeleteRange(r) => {
            store.delete_range(&r).map(|a| (Response::DeleteRange(a.response), a.events))
        }
        Request::Txn(r) => {
            let exists = |id| leases.contains(id);
            store.txn(&r, &exists).map(|a| (Response::Txn(a.response), a.events))
        }
        Request::Compact(r) => store
            .compact(r.revision)
            .map(|()| (Response::Compact(CompactionResponse { header: header(store) }), Vec::new())),
        Request::Publish { id, attributes: a } => {
            attributes.insert(id, a);
            Ok((Response::None, Vec::new()))
        }
        Request::Alarm { activate, member, alarm } => {
            // As etcd's alarm store: an activation answers with the alarm, new or already raised (NONE
            // is no alarm: etcd 3.5 ignores it, 3.4 recorded it); a deactivation with the alarm it
            // cleared, if there was one.
            let answered = match activate {
                true if alarm == crate::quota::NONE => false,
                true => {
                    alarms.insert((member, alarm));
                    true
                }
                false => alarms.remove(&(member, alarm)),
            };
            Ok((Response::Alarm(answered.then_some((member, alarm))), Vec::new()))
        }
        Request::LeaseGrant { id, ttl } => {
            if leases.grant(id, ttl) {
                let resp = LeaseGrantResponse { header: header(store), id, ttl, error: String::new() };
                Ok((Response::LeaseGrant(resp), Vec::new()))
            } else {
                Err(MvccError::LeaseExists)
            }
        }
        Request::LeaseRevoke { id } if !leases.contains(id) => Err(MvccError::LeaseNotFound),
        Request::LeaseRevoke { id } => {
            // Every attached key goes in one revision, like a transaction of deletes.
            let keys = leases.keys(id);
            let deleted = if keys.is_empty() {
                Ok(Vec::new())
            } else {
                let ops = keys.into_iter().map(|key| RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                        key,
                        ..Default::default()
                    })),
                });
                let txn = TxnRequest { success: ops.collect(), ..Default::default() };
                store.txn(&txn, &|_| false).map(|a| a.events)
            };
            deleted.map(|evs| {
                leases.remove(id);
                (Response::LeaseRevoke(LeaseRevokeResponse { header: header(store) }), evs)
            })
        }
        Request::LeaseCheckpoint(checkpoints) => {
            for (id, remaining) in checkpoints {
                leases.checkpoint(id, remaining);
            }
            Ok((Response::None, Vec::new()))
        }
        Request::Batch(reqs) => {
            let responses = reqs.into_iter().map(|r| apply_request(store, meta, tokens, r, events)).collect();
            return Response::Batch(responses);
        }
        Request::Authed { .. } | Request::Proposed { .. } => unreachable!("handled above"),
        Request::Auth(op) => {
            return match Arc::make_mut(auth).apply(op) {
                Ok(effect) => match effect {
                    // An empty prefix: the proposer signs a JWT instead.
                    TokenEffect::Issue { prefix, .. } if prefix.is_empty() => Response::Token(String::new()),
                    TokenEffect::Issue { user, prefix } => {
                        Response::Token(tokens.issue(user, &prefix, index))
                    }
                    TokenEffect::Invalidate(user) => {
                        tokens.invalidate_user(&user);
                        Response::None
                    }
                    TokenEffect::Clear => {
                        tokens.clear();
                        Response::None
                    }
                    TokenEffect::None => Response::None,
                },
                Err(e) => Response::Denied(e),
            };
        }
    };
    match result {
        Ok((response, evs)) => {
            // Keys follow their leases through the events; the events go on to the watch hub.
            leases.track(&evs);
            events.extend(evs);
            response
        }
        Err(e) => Response::Error(e),
    }
}

/// Whether `caller` may make `req`, checked against the auth state it is applied to (etcd's
/// `authApplierV3`): admin rights for auth changes, key permissions for writes, for a revoke write
/// permission on every key of the lease, and for any other change an authenticated caller.
fn permitted(auth: &AuthStore, leases: &LeaseTable, caller: &Caller, req: &Request) -> Result<(), AuthError> {
    let lease_keys = |id| leases.keys(id);
    match req {
        Request::Auth(op) if op.needs_admin() => auth.check_admin(caller),
        Request::Put(r) => auth.check_put(caller, r, &lease_keys),
        Request::DeleteRange(r) => auth.check_delete(caller, r),
        Request::Txn(r) => auth.check_txn(caller, r),
        Request::LeaseRevoke { id } => auth.check_lease(caller, &leases.keys(*id)),
        Request::LeaseGrant { .. } | Request::Compact(_) | Request::Alarm { .. } => {
            auth.check_authenticated(caller)
        }
        _ => Ok(()),
    }
}
