//! The nemesis: faults on a schedule drawn from the run's seed. Each fault is applied, held for a few
//! seconds, then healed, with quiet time between faults so the cluster can make progress.

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use tokio::time::Instant;

use crate::cluster::{member_name, Cluster};
use crate::proxy::Link;
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Network partitions: random halves, the leader alone, or a bridge (one member sees both sides).
    Partition,
    /// kill -9 of one member, of the leader, or of every member; restarted when healed.
    Kill,
    /// SIGSTOP of one member or of the leader (for longer than an election timeout); SIGCONT to heal.
    Pause,
    /// Every peer link slowed by tens to hundreds of milliseconds.
    Delay,
    /// A member (at times the leader) removed through another one; healed by adding it back as a new
    /// member with an empty data dir, as an operator replaces a member.
    Member,
    /// Leadership handed from the leader to another member (etcd's MoveLeader), as operators do before
    /// maintenance; nothing to heal.
    Transfer,
    /// A failing disk under one member, the leader, or every member: each of its syncs fails with EIO,
    /// so it stops at the next one; restarted when healed.
    Disk,
}

/// One fault as it happened, in microseconds since the run started.
#[derive(Clone, Debug, Serialize)]
pub struct Fault {
    pub start: u64,
    pub end: u64,
    pub kind: String,
    pub detail: String,
}

/// Injects faults until `until`, then heals everything and returns what it did.
pub async fn run(
    cluster: &mut Cluster,
    kinds: &[Kind],
    mut rng: Rng,
    start: std::time::Instant,
    until: Instant,
) -> Result<Vec<Fault>> {
    let mut faults = Vec::new();
    let now = || start.elapsed().as_micros() as u64;
    if kinds.is_empty() {
        tokio::time::sleep_until(until).await;
        return Ok(faults);
    }
    loop {
        tokio::time::sleep(Duration::from_millis(rng.between(1000, 3000))).await;
        let hold = Duration::from_millis(rng.between(1500, 5000));
        if Instant::now() + hold >= until {
            break;
        }
        let kind = *rng.pick(kinds);
        let begin = now();
        let detail = inject(cluster, kind, &mut rng).await?;
        tokio::time::sleep(hold).await;
        cluster.heal().await?;
        faults.push(Fault { start: begin, end: now(), kind: format!("{kind:?}").to_lowercase(), detail });
    }
    cluster.heal().await?;
    tokio::time::sleep_until(until).await;
    Ok(faults)
}

async fn inject(cluster: &mut Cluster, kind: Kind, rng: &mut Rng) -> Result<String> {
    let n = cluster.members.len();
    let names = |ids: &[usize]| ids.iter().map(|&i| member_name(i)).collect::<Vec<_>>().join(",");
    // Half the time the fault aims at the leader, as the interesting failures are the leader's.
    let target = match cluster.leader().await {
        Some(l) if rng.chance(0.5) => l,
        _ => rng.below(n as u64) as usize,
    };
    Ok(match kind {
        Kind::Partition => {
            let link = if rng.chance(0.7) { Link::Blackhole } else { Link::Cut };
            let mut ids: Vec<usize> = (0..n).collect();
            match rng.below(3) {
                0 => {
                    rng.shuffle(&mut ids);
                    let (a, b) = ids.split_at(n / 2);
                    cluster.net.split(a, b, link);
                    format!("{link:?} halves {} | {}", names(a), names(b))
                }
                1 => {
                    let rest: Vec<usize> = ids.into_iter().filter(|&i| i != target).collect();
                    cluster.net.split(&[target], &rest, link);
                    format!("{link:?} isolate {}", names(&[target]))
                }
                _ => {
                    // The bridge sees everyone; the others are split into two sides around it.
                    let mut rest: Vec<usize> = ids.into_iter().filter(|&i| i != target).collect();
                    rng.shuffle(&mut rest);
                    let (a, b) = rest.split_at(rest.len() / 2);
                    cluster.net.split(a, b, link);
                    format!("{link:?} bridge {} between {} | {}", names(&[target]), names(a), names(b))
                }
            }
        }
        Kind::Kill => {
            if rng.chance(0.2) {
                cluster.members.iter_mut().for_each(|m| m.kill());
                "kill all".to_string()
            } else {
                cluster.members[target].kill();
                format!("kill {}", names(&[target]))
            }
        }
        Kind::Disk => {
            if rng.chance(0.2) {
                for m in &mut cluster.members {
                    m.fail_disk()?;
                }
                "disk fails under all".to_string()
            } else {
                cluster.members[target].fail_disk()?;
                format!("disk fails under {}", names(&[target]))
            }
        }
        Kind::Pause => {
            cluster.members[target].pause();
            format!("pause {}", names(&[target]))
        }
        Kind::Delay => {
            let ms = rng.between(20, 300);
            for i in 0..n {
                for j in 0..n {
                    cluster.net.set(i, j, Link::Delay(Duration::from_millis(ms + rng.below(ms / 2 + 1))));
                }
            }
            format!("delay {ms}ms+")
        }
        Kind::Transfer => {
            let Some(leader) = cluster.leader().await.filter(|_| n > 1) else {
                return Ok("transfer: no leader to move".into());
            };
            let to = (leader + 1 + rng.below(n as u64 - 1) as usize) % n;
            match cluster.move_leader(leader, to).await {
                Ok(()) => format!("transfer {} -> {}", names(&[leader]), names(&[to])),
                Err(e) => format!("transfer {} -> {} failed: {e}", names(&[leader]), names(&[to])),
            }
        }
        Kind::Member => {
            let via = (target + 1 + rng.below(n as u64 - 1) as usize) % n;
            // A cluster that has not heard from every voter for 5 s (after the last fault's heal)
            // refuses changes as unhealthy, like etcd: ask again, as an operator would.
            let mut removed = cluster.remove_member(target, via).await;
            let deadline = Instant::now() + Duration::from_secs(8);
            while removed.as_ref().is_err_and(|e| e.to_string().contains("unhealthy cluster"))
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(500)).await;
                removed = cluster.remove_member(target, via).await;
            }
            match removed {
                Ok(()) => format!("remove {} via {}", names(&[target]), names(&[via])),
                Err(e) => format!("remove {} via {} failed: {e}", names(&[target]), names(&[via])),
            }
        }
    })
}
