//! The watch fan-out workload: many watchers of one key, a stream of puts to it, and the time from each
//! put being sent to each watcher receiving its event (the put's value carries its send time).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::{BenchError, Common, Report};
use crate::pb::etcdserverpb::kv_client::KvClient;
use crate::pb::etcdserverpb::watch_client::WatchClient;
use crate::pb::etcdserverpb::watch_request::RequestUnion;
use crate::pb::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest};

const KEY: &[u8] = b"bench/watch";
/// A watcher that hears nothing for this long is counted as missing its remaining events.
const STALL: Duration = Duration::from_secs(10);

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Connect("watch".into(), e.to_string())
}

pub async fn run(
    c: &Common,
    channels: &[Channel],
    watchers: usize,
    streams: usize,
    val_size: usize,
) -> Result<Report, BenchError> {
    let streams = streams.clamp(1, watchers.max(1));
    let clock = Instant::now();
    let mut receivers = Vec::with_capacity(streams);
    for s in 0..streams {
        let n = watchers / streams + usize::from(s < watchers % streams);
        let (tx, rx) = mpsc::channel(n.max(1));
        let mut client =
            WatchClient::new(channels[s % channels.len()].clone()).max_decoding_message_size(usize::MAX);
        // The creates go out with the call (grpc-go sends no headers before its first message).
        for _ in 0..n {
            let create = WatchCreateRequest { key: KEY.to_vec(), ..Default::default() };
            tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) })
                .await
                .map_err(err)?;
        }
        let mut responses = client.watch(ReceiverStream::new(rx)).await.map_err(err)?.into_inner();
        let mut created = 0;
        while created < n {
            match responses.message().await.map_err(err)? {
                Some(r) if r.created => created += 1,
                Some(_) => {}
                None => return Err(err("watch stream closed")),
            }
        }
        let want = n as u64 * c.total;
        receivers.push(tokio::spawn(async move {
            let _requests = tx; // closing it would end the stream
            let mut lat = Vec::with_capacity(want as usize);
            while (lat.len() as u64) < want {
                let Ok(Ok(Some(r))) = tokio::time::timeout(STALL, responses.message()).await else { break };
                let now = clock.elapsed().as_micros() as u64;
                for ev in r.events {
                    let sent = ev.kv.and_then(|kv| {
                        kv.value.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                    });
                    lat.push(now.saturating_sub(sent.unwrap_or(now)).min(u32::MAX as u64) as u32);
                }
            }
            let missing = want.saturating_sub(lat.len() as u64);
            (lat, missing)
        }));
    }

    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::with_capacity(c.clients);
    for id in 0..c.clients {
        let mut kv = KvClient::new(channels[id % channels.len()].clone());
        let (next, errors, total) = (next.clone(), errors.clone(), c.total);
        writers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let mut value = (clock.elapsed().as_micros() as u64).to_le_bytes().to_vec();
                value.resize(val_size.max(8), b'v');
                if kv.put(PutRequest { key: KEY.to_vec(), value, ..Default::default() }).await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for w in writers {
        let _ = w.await;
    }
    let mut lat = Vec::new();
    let mut missing = 0;
    for r in receivers {
        if let Ok((l, m)) = r.await {
            lat.extend(l);
            missing += m;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let errors = errors.load(Ordering::Relaxed) + missing;
    Ok(Report::new("watch".into(), c, lat, errors, seconds))
}
