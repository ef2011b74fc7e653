//! The watch fan-out workload: many watchers of one key, a stream of puts to it, and the time from each
//! put being sent to each watcher receiving its event (the put's value carries its send time).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Buf;
use prost::encoding::{decode_key, decode_varint, WireType};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::transport::Channel;
use tonic::Status;

use super::{BenchError, Common, Report};
use crate::pb::etcdserverpb::kv_client::KvClient;
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
        let mut client = tonic::client::Grpc::new(channels[s % channels.len()].clone())
            .max_decoding_message_size(usize::MAX);
        // The creates go out with the call (grpc-go sends no headers before its first message).
        for _ in 0..n {
            let create = WatchCreateRequest { key: KEY.to_vec(), ..Default::default() };
            tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) })
                .await
                .map_err(err)?;
        }
        client.ready().await.map_err(err)?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static("/etcdserverpb.Watch/Watch");
        let request = tonic::Request::new(ReceiverStream::new(rx));
        let mut responses = client.streaming(request, path, SeenCodec).await.map_err(err)?.into_inner();
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
            // One timer for the whole stream, pushed back at most once a second: a timer per response
            // was a visible share of the load generator.
            let stall = tokio::time::sleep(STALL);
            tokio::pin!(stall);
            let mut heard = clock.elapsed();
            while (lat.len() as u64) < want {
                let r = tokio::select! {
                    biased;
                    r = responses.message() => match r {
                        Ok(Some(r)) => r,
                        _ => break,
                    },
                    () = &mut stall => break,
                };
                let now = clock.elapsed();
                if now - heard > Duration::from_secs(1) {
                    heard = now;
                    stall.as_mut().reset(tokio::time::Instant::now() + STALL);
                }
                let now = now.as_micros() as u64;
                for sent in r.sent() {
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

/// What the load generator reads of a watch response: whether it confirms a create, and the send time
/// each event's value starts with. Reading only that, instead of decoding every key and value of every
/// event as prost would, keeps the load generator's share of the two cores it shares with the server
/// small: the row then measures the server (etcd's or concord's alike) more than its client.
#[derive(Debug, Default)]
struct Seen {
    created: bool,
    /// The send time of the first event (almost always the only one: kept out of a `Vec`, whose
    /// allocation per response cost more than the parse), then of the others.
    first: Option<Option<u64>>,
    more: Vec<Option<u64>>,
}

impl Seen {
    fn sent(&self) -> impl Iterator<Item = Option<u64>> + '_ {
        self.first.iter().chain(&self.more).copied()
    }

    fn push(&mut self, sent: Option<u64>) {
        match self.first {
            None => self.first = Some(sent),
            Some(_) => self.more.push(sent),
        }
    }

    /// Walks a `WatchResponse` (etcd's rpc.proto: `created` = 3, `events` = 11).
    fn parse(mut buf: &[u8]) -> Result<Seen, String> {
        let mut seen = Seen::default();
        while buf.has_remaining() {
            match decode_key(&mut buf).map_err(|e| e.to_string())? {
                (3, WireType::Varint) => {
                    seen.created = decode_varint(&mut buf).map_err(|e| e.to_string())? != 0
                }
                (11, WireType::LengthDelimited) => seen.push(sent_time(field(&mut buf)?)?),
                (_, wire) => skip(wire, &mut buf)?,
            }
        }
        Ok(seen)
    }
}

/// The first 8 bytes of an `Event`'s `kv.value` (`kv` = 2, `value` = 5), as the writer put them.
fn sent_time(mut event: &[u8]) -> Result<Option<u64>, String> {
    let mut sent = None;
    while event.has_remaining() {
        match decode_key(&mut event).map_err(|e| e.to_string())? {
            (2, WireType::LengthDelimited) => {
                let mut kv = field(&mut event)?;
                while kv.has_remaining() {
                    match decode_key(&mut kv).map_err(|e| e.to_string())? {
                        (5, WireType::LengthDelimited) => {
                            sent = field(&mut kv)?
                                .get(..8)
                                .and_then(|b| b.try_into().ok())
                                .map(u64::from_le_bytes)
                        }
                        (_, wire) => skip(wire, &mut kv)?,
                    }
                }
            }
            (_, wire) => skip(wire, &mut event)?,
        }
    }
    Ok(sent)
}

/// A length-delimited field's bytes.
fn field<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], String> {
    let len = decode_varint(buf).map_err(|e| e.to_string())? as usize;
    if len > buf.len() {
        return Err("truncated field".into());
    }
    let (field, rest) = buf.split_at(len);
    *buf = rest;
    Ok(field)
}

fn skip(wire: WireType, buf: &mut &[u8]) -> Result<(), String> {
    let fixed = |buf: &mut &[u8], n: usize| {
        if buf.len() < n {
            return Err("truncated field".to_string());
        }
        buf.advance(n);
        Ok(())
    };
    match wire {
        WireType::Varint => decode_varint(buf).map(|_| ()).map_err(|e| e.to_string()),
        WireType::LengthDelimited => field(buf).map(|_| ()),
        WireType::SixtyFourBit => fixed(buf, 8),
        WireType::ThirtyTwoBit => fixed(buf, 4),
        WireType::StartGroup | WireType::EndGroup => Err("groups are not used by etcd".into()),
    }
}

#[derive(Default)]
struct SeenCodec;

impl Codec for SeenCodec {
    type Encode = WatchRequest;
    type Decode = Seen;
    type Encoder = tonic_prost::ProstEncoder<WatchRequest>;
    type Decoder = SeenDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> SeenDecoder {
        SeenDecoder
    }
}

struct SeenDecoder;

impl Decoder for SeenDecoder {
    type Item = Seen;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Seen>, Status> {
        let len = buf.remaining();
        // Read in place when the message is in one piece (nearly always), instead of taking it out.
        let seen = if buf.chunk().len() >= len {
            let seen = Seen::parse(&buf.chunk()[..len]);
            buf.advance(len);
            seen
        } else {
            Seen::parse(&buf.copy_to_bytes(len))
        };
        seen.map(Some).map_err(Status::internal)
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::pb::etcdserverpb::{ResponseHeader, WatchResponse};
    use crate::pb::mvccpb::{Event, KeyValue};

    #[test]
    fn seen_reads_created_and_each_events_send_time() {
        let event = |value: &[u8]| Event {
            kv: Some(KeyValue {
                key: b"k".to_vec().into(),
                value: value.to_vec().into(),
                mod_revision: 9,
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = WatchResponse {
            header: Some(ResponseHeader { revision: 9, ..Default::default() }),
            watch_id: -1,
            created: true,
            events: vec![event(&42u64.to_le_bytes()), event(b"short")],
            ..Default::default()
        };
        let bytes = r.encode_to_vec();
        let seen = Seen::parse(&bytes).unwrap();
        assert!(seen.created);
        assert_eq!(seen.sent().collect::<Vec<_>>(), [Some(42), None]);
        assert!(Seen::parse(&bytes[..bytes.len() - 3]).is_err(), "a truncated response is an error");
    }
}
