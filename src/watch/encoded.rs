//! Watch responses encoded once, sent to many watchers.
//!
//! A put to a key with 1,000 watchers is one event in 1,000 responses that differ only in `watch_id`.
//! prost would encode the event 1,000 times (and each watcher's response would hold its own copy of the
//! event); here each event of a batch is encoded once, a response body (header and events) once per
//! distinct set of events, and each watcher's response is that body with its `watch_id` put in: the
//! gRPC codec of the Watch service (`WatchCodec`) only copies bytes. The fields come out in field
//! order, byte for byte what prost would write.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::Status;

use crate::pb::etcdserverpb::{ResponseHeader, WatchRequest, WatchResponse};
use crate::pb::mvccpb::Event;

/// `WatchResponse.header`, `.watch_id` and `.events` (etcd's rpc.proto).
const HEADER_FIELD: u32 = 1;
const WATCH_ID_FIELD: u32 = 2;
const EVENTS_FIELD: u32 = 11;

/// A `WatchResponse` as bytes: `head`, then the `watch_id` field, then `tail`.
#[derive(Clone, Debug)]
pub struct EncodedWatchResponse {
    head: Bytes,
    watch_id: i64,
    tail: Bytes,
    /// Room to make in the encoder's buffer when this response goes in: its own and the rest of its
    /// batch's (`size_batch`).
    room: usize,
}

/// The most room one response makes for its batch: tonic hands its buffer to h2 once it holds 32 KiB.
const MAX_ROOM: usize = 64 * 1024;
/// The gRPC message header tonic writes before each response: a flag byte and a 4-byte length.
const GRPC_HEADER: usize = 5;

/// Gives each response of a batch, which the stream's encoder takes one after another, the room that it
/// and the rest of the batch need (with tonic's message header each, up to `MAX_ROOM`).
///
/// tonic's encoder gathers responses in a buffer that starts at 8 KiB and is handed on at 32 KiB, so a
/// batch for many watchers grew it by doubling, copying its contents each time: ~7% of the server's
/// CPU in the watch fan-out row (docs/benchmarks.md, finding 30). One reservation per batch grows it
/// once, to what the batch needs; an idle stream's buffer stays small.
pub fn size_batch(batch: &mut [EncodedWatchResponse]) {
    let mut rest = 0usize;
    for r in batch.iter_mut().rev() {
        rest = rest.saturating_add(r.encoded_len() + GRPC_HEADER);
        r.room = rest.min(MAX_ROOM);
    }
}

impl EncodedWatchResponse {
    /// Any response, encoded on its own (control responses, and events that are one watcher's only:
    /// with `prev_kv`, or fragmented).
    pub fn message(r: &WatchResponse) -> Self {
        EncodedWatchResponse { head: r.encode_to_vec().into(), watch_id: 0, tail: Bytes::new(), room: 0 }
    }

    /// Watcher `watch_id`'s response of `header` (an encoded header field) and `events` (encoded
    /// events fields), both shared with other watchers' responses.
    pub fn shared(header: Bytes, watch_id: i64, events: Bytes) -> Self {
        EncodedWatchResponse { head: header, watch_id, tail: events, room: 0 }
    }

    /// The response as a message again (for tests, and anything that needs to look inside).
    pub fn decode(&self) -> Result<WatchResponse, prost::DecodeError> {
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut buf);
        WatchResponse::decode(buf.freeze())
    }

    fn encoded_len(&self) -> usize {
        self.head.len() + self.id_len() + self.tail.len()
    }

    fn id_len(&self) -> usize {
        if self.watch_id == 0 {
            0 // proto3 leaves a default out
        } else {
            prost::encoding::int64::encoded_len(WATCH_ID_FIELD, &self.watch_id)
        }
    }

    fn encode(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.head);
        if self.watch_id != 0 {
            prost::encoding::int64::encode(WATCH_ID_FIELD, &self.watch_id, buf);
        }
        buf.put_slice(&self.tail);
    }
}

/// The events of one batch, each encoded once as a `WatchResponse.events` field.
#[derive(Debug, Default)]
pub struct EncodedEvents {
    buf: Bytes,
    spans: Vec<Range<usize>>,
}

impl EncodedEvents {
    pub fn new(events: &[Event]) -> Self {
        let len = events.iter().map(|e| prost::encoding::message::encoded_len(EVENTS_FIELD, e)).sum();
        let mut buf = BytesMut::with_capacity(len);
        let mut spans = Vec::with_capacity(events.len());
        for e in events {
            let start = buf.len();
            prost::encoding::message::encode(EVENTS_FIELD, e, &mut buf);
            spans.push(start..buf.len());
        }
        EncodedEvents { buf: buf.freeze(), spans }
    }

    /// The events at `picks` (positions in the batch, in order), as the tail of a response.
    pub fn pick(&self, picks: &[u32]) -> Bytes {
        let span = |p: &u32| self.spans[*p as usize].clone();
        // Consecutive events are one slice of the shared buffer: no copy at all.
        if let (Some(first), Some(last)) = (picks.first(), picks.last()) {
            if (*last - *first) as usize + 1 == picks.len() {
                return self.buf.slice(span(first).start..span(last).end);
            }
        }
        let mut out = BytesMut::with_capacity(picks.iter().map(|p| span(p).len()).sum());
        for p in picks {
            out.put_slice(&self.buf[span(p)]);
        }
        out.freeze()
    }
}

/// A response header as the head of a response.
pub fn header_field(header: &ResponseHeader) -> Bytes {
    let mut buf = BytesMut::with_capacity(prost::encoding::message::encoded_len(HEADER_FIELD, header));
    prost::encoding::message::encode(HEADER_FIELD, header, &mut buf);
    buf.freeze()
}

/// The Watch service's gRPC codec: requests through prost, responses already bytes.
#[derive(Debug, Default, Clone)]
pub struct WatchCodec;

impl Codec for WatchCodec {
    type Encode = EncodedWatchResponse;
    type Decode = WatchRequest;
    type Encoder = WatchEncoder;
    type Decoder = tonic_prost::ProstDecoder<WatchRequest>;

    fn encoder(&mut self) -> WatchEncoder {
        WatchEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

#[derive(Debug, Default, Clone)]
pub struct WatchEncoder;

impl Encoder for WatchEncoder {
    type Item = EncodedWatchResponse;
    type Error = Status;

    fn encode(&mut self, item: EncodedWatchResponse, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len().max(item.room));
        item.encode(buf);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::mvccpb::KeyValue;

    fn event(key: &str, rev: i64) -> Event {
        let kv = KeyValue {
            key: key.as_bytes().to_vec().into(),
            value: Bytes::from_static(b"value"),
            create_revision: 2,
            mod_revision: rev,
            version: rev - 1,
            lease: 0,
        };
        Event { r#type: 0, kv: Some(kv), prev_kv: None }
    }

    #[test]
    fn shared_responses_are_the_bytes_prost_writes() {
        let events: Vec<Event> = (0..4).map(|i| event(&format!("k{i}"), 10 + i)).collect();
        let encoded = EncodedEvents::new(&events);
        let header = ResponseHeader { cluster_id: 7, member_id: 8, revision: 13, raft_term: 2 };
        for (watch_id, picks) in [(0, vec![0, 1, 2, 3]), (5, vec![1, 2]), (-1, vec![0, 3]), (1 << 40, vec![])]
        {
            let shared = EncodedWatchResponse::shared(header_field(&header), watch_id, encoded.pick(&picks));
            let want = WatchResponse {
                header: Some(header),
                watch_id,
                events: picks.iter().map(|p| events[*p as usize].clone()).collect(),
                ..Default::default()
            };
            let mut bytes = BytesMut::new();
            shared.encode(&mut bytes);
            assert_eq!(&bytes[..], &want.encode_to_vec()[..], "watch {watch_id}, events {picks:?}");
            assert_eq!(shared.decode().unwrap(), want);
        }
    }

    #[test]
    fn each_response_makes_room_for_the_rest_of_its_batch() {
        let encoded = EncodedEvents::new(&[event("k", 10)]);
        let header = header_field(&ResponseHeader { revision: 10, ..Default::default() });
        let mut batch: Vec<_> = (10_000..13_000)
            .map(|id| EncodedWatchResponse::shared(header.clone(), id, encoded.pick(&[0])))
            .collect();
        let each = batch[0].encoded_len() + GRPC_HEADER;
        size_batch(&mut batch);
        assert_eq!(batch[2999].room, each, "the last makes room for itself");
        assert_eq!(batch[2990].room, 10 * each);
        assert_eq!(batch[0].room, MAX_ROOM, "up to a cap");
        assert!(3000 * each > MAX_ROOM);
        // The room does not change the bytes.
        let mut buf = BytesMut::new();
        batch[0].encode(&mut buf);
        assert_eq!(buf.len(), each - GRPC_HEADER);
    }

    #[test]
    fn a_message_keeps_every_field() {
        let r = WatchResponse {
            header: Some(ResponseHeader { revision: 3, ..Default::default() }),
            watch_id: 4,
            created: true,
            canceled: true,
            compact_revision: 2,
            cancel_reason: "gone".into(),
            fragment: true,
            events: vec![event("a", 3)],
        };
        assert_eq!(EncodedWatchResponse::message(&r).decode().unwrap(), r);
    }
}
