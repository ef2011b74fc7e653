//! Leases, split the way etcd's lessor is: what every member must agree on, and what only the leader
//! keeps.
//!
//! - [`LeaseTable`] is replicated state, changed only by applying the log: which leases exist, their
//!   granted TTL, which keys are attached, and (with checkpoints) what the leader's clock had left of
//!   them. Grant, revoke and checkpoints are Raft proposals; attachment follows the applied events (a
//!   put moves a key to its new lease, a delete detaches it).
//! - [`Lessor`] is the leader's clock: when each lease expires. Keepalives renew it in memory, not
//!   through the log (followers forward them to the leader; only a checkpointed lease's first keepalive
//!   clears its checkpoint through the log); expiry is decided by the leader and carried out as a revoke
//!   proposal, so every member deletes the same keys at the same revision and nothing time-dependent
//!   happens inside apply. A new leader starts every lease's clock afresh (etcd's `Promote`): from its
//!   whole TTL, so a failover never expires a lease early, or with checkpoints from what was left at
//!   the last one, so failovers cannot keep an abandoned lease alive.

mod lessor;

pub use lessor::Lessor;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::pb::mvccpb::{event::EventType, Event};

/// etcd's largest TTL (`lease.MaxLeaseTTL`).
pub const MAX_TTL: i64 = 9_000_000_000;

/// etcd's smallest TTL: 1.5 election timeouts, in whole seconds (rounded up); shorter grants get it.
pub fn min_ttl(heartbeat_ms: u64, election_ms: u64) -> i64 {
    let ticks = (election_ms / heartbeat_ms.max(1)).max(1);
    ((3 * ticks / 2) * heartbeat_ms).div_ceil(1000) as i64
}

#[derive(Clone, Debug, Default)]
pub struct LeaseTable {
    leases: BTreeMap<i64, Lease>,
    /// The lease each attached key is on.
    key_lease: HashMap<Vec<u8>, i64>,
}

#[derive(Clone, Debug, Default)]
struct Lease {
    ttl: i64,
    /// The seconds left at the leader's last checkpoint, 0 if none.
    remaining: i64,
    keys: BTreeSet<Vec<u8>>,
}

impl LeaseTable {
    /// A table with `leases` (id, granted TTL) and no keys attached yet.
    pub fn with_leases(leases: impl IntoIterator<Item = (i64, i64)>) -> Self {
        LeaseTable {
            leases: leases.into_iter().map(|(id, ttl)| (id, Lease { ttl, ..Default::default() })).collect(),
            key_lease: HashMap::new(),
        }
    }

    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// False if the id is taken.
    pub fn grant(&mut self, id: i64, ttl: i64) -> bool {
        if self.leases.contains_key(&id) {
            return false;
        }
        self.leases.insert(id, Lease { ttl, ..Default::default() });
        true
    }

    /// Forgets a lease; its keys must have been deleted by then (see the state machine's revoke).
    pub fn remove(&mut self, id: i64) {
        if let Some(l) = self.leases.remove(&id) {
            for k in l.keys {
                self.key_lease.remove(&k);
            }
        }
    }

    pub fn ttl(&self, id: i64) -> Option<i64> {
        self.leases.get(&id).map(|l| l.ttl)
    }

    /// Records what the leader's clock had left of lease `id` (0: forget it).
    pub fn checkpoint(&mut self, id: i64, remaining: i64) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.remaining = remaining;
        }
    }

    /// The seconds left at lease `id`'s last checkpoint, 0 if none.
    pub fn checkpointed(&self, id: i64) -> i64 {
        self.leases.get(&id).map_or(0, |l| l.remaining)
    }

    /// The leases with a checkpoint: (id, seconds left then).
    pub fn checkpoints(&self) -> Vec<(i64, i64)> {
        self.leases.iter().filter(|(_, l)| l.remaining > 0).map(|(id, l)| (*id, l.remaining)).collect()
    }

    /// Every lease: (id, the TTL a new leader starts its clock with: what was left at its last
    /// checkpoint, else its granted TTL), by id.
    pub fn clocks(&self) -> Vec<(i64, i64)> {
        self.leases.iter().map(|(id, l)| (*id, if l.remaining > 0 { l.remaining } else { l.ttl })).collect()
    }

    pub fn keys(&self, id: i64) -> Vec<Vec<u8>> {
        self.leases.get(&id).map(|l| l.keys.iter().cloned().collect()).unwrap_or_default()
    }

    /// Every lease: (id, granted TTL), by id.
    pub fn leases(&self) -> Vec<(i64, i64)> {
        self.leases.iter().map(|(id, l)| (*id, l.ttl)).collect()
    }

    /// Attaches `key` to `lease` (0: to none), detaching it from the lease it was on.
    pub fn attach(&mut self, key: &[u8], lease: i64) {
        let old =
            if lease == 0 { self.key_lease.remove(key) } else { self.key_lease.insert(key.to_vec(), lease) };
        match old {
            Some(old) if old == lease => return,
            Some(old) => {
                if let Some(l) = self.leases.get_mut(&old) {
                    l.keys.remove(key);
                }
            }
            None => {}
        }
        if lease != 0 {
            match self.leases.get_mut(&lease) {
                Some(l) => {
                    l.keys.insert(key.to_vec());
                }
                // A lease revoked in the same batch: the key stays unattached.
                None => {
                    self.key_lease.remove(key);
                }
            }
        }
    }

    /// Follows applied events: a put moves its key to the put's lease, a delete detaches it.
    pub fn track(&mut self, events: &[Event]) {
        for ev in events {
            let Some(kv) = &ev.kv else { continue };
            let lease = if ev.r#type == EventType::Put as i32 { kv.lease } else { 0 };
            // Every write passes here: without attached keys, a write without a lease has nothing to do.
            if lease != 0 || !self.key_lease.is_empty() {
                self.attach(&kv.key, lease);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::mvccpb::KeyValue;

    fn ev(kind: EventType, key: &str, lease: i64) -> Event {
        Event {
            r#type: kind as i32,
            kv: Some(KeyValue { key: key.to_string().into(), lease, ..Default::default() }),
            prev_kv: None,
        }
    }

    #[test]
    fn keys_follow_puts_and_deletes() {
        let mut t = LeaseTable::default();
        assert!(t.grant(1, 10) && t.grant(2, 20) && !t.grant(1, 5));
        t.track(&[ev(EventType::Put, "a", 1), ev(EventType::Put, "b", 1), ev(EventType::Put, "c", 2)]);
        assert_eq!(t.keys(1), [b"a".to_vec(), b"b".to_vec()]);
        t.track(&[ev(EventType::Put, "a", 2), ev(EventType::Put, "b", 0), ev(EventType::Delete, "c", 0)]);
        assert_eq!(t.keys(1), Vec::<Vec<u8>>::new());
        assert_eq!(t.keys(2), [b"a".to_vec()]);
        t.remove(2);
        assert!(!t.contains(2));
        t.track(&[ev(EventType::Put, "a", 0)]);
        assert_eq!(t.leases(), [(1, 10)]);
    }
}
