//! Repairs the HTTP/2 `:authority` that etcd 3.4's clients send, before hyper sees it.
//!
//! The grpc-go that etcdctl 3.4 and clientv3 3.4 are built with sends an endpoint written as
//! `http://host:port` verbatim as the request's `:authority`. grpc-go's server (so etcd) ignores it; hyper's
//! h2 refuses the stream as malformed (PROTOCOL_ERROR). `etcdctl --endpoints=http://... endpoint status`,
//! `endpoint hashkv`, `defrag` and `move-leader` (the commands that dial each endpoint on its own, as does
//! `endpoint status --cluster` with the advertised URLs) all failed against concord because of it.
//!
//! [`RepairAuthority`] sits between the accepted TCP stream and hyper. It reads the connection preface and
//! the frames up to the end of the first header block: if that block's authority is valid (or absent), or
//! the connection is not HTTP/2 with prior knowledge (an HTTP/1 health check, TLS), it steps aside for
//! the rest of the connection and costs one branch per read. Only a connection whose first request needed
//! the repair is scanned to its end, header block by header block, and only header blocks are touched.
//!
//! The rewrite cuts the scheme (and any path) out of an invalid authority and keeps the rest of the block
//! byte for byte, so it needs no copy of the HPACK dynamic table: a repaired value is shorter than the
//! client's, so each entry in h2's table is no larger than the client's copy of it, and h2 never evicts an
//! entry the client still refers to (indices count from the newest entry; the client's live entries fit in
//! the table size on its side, hence on ours).

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame a client may send before it has seen our SETTINGS (h2's default; tonic keeps it).
const MAX_FRAME: usize = 16_384;
/// A header block larger than this is left to h2 to refuse (tonic's default header list limit is 16 KiB).
const MAX_BLOCK: usize = 1 << 20;

/// An accepted connection whose incoming header blocks get a repaired `:authority` where etcd 3.4's
/// clients sent a URL. Writes go straight through.
pub struct RepairAuthority<S> {
    io: S,
    scanner: Scanner,
    /// Bytes read from `io` that the scanner has not released yet (a partial frame).
    raw: BytesMut,
    /// Bytes released to hyper, not yet read by it.
    out: BytesMut,
}

impl<S> RepairAuthority<S> {
    pub fn new(io: S) -> Self {
        RepairAuthority { io, scanner: Scanner::default(), raw: BytesMut::new(), out: BytesMut::new() }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for RepairAuthority<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.scanner.mode == Mode::Passthrough && this.raw.is_empty() {
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // End of stream: whatever is left goes to h2 as it came, which reports it.
                this.scanner.mode = Mode::Passthrough;
                this.scanner.release_pending(&mut this.out);
                let rest = this.raw.split();
                this.out.unsplit(rest);
                if this.out.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            this.raw.extend_from_slice(read.filled());
            this.scanner.feed(&mut this.raw, &mut this.out);
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for RepairAuthority<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for RepairAuthority<S> {
    type ConnectInfo = S::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Mode {
    /// Matching the client's connection preface.
    #[default]
    Preface,
    /// Frames up to the end of the first header block.
    Inspect,
    /// The first block needed a repair: every header block of the connection is scanned.
    Repair,
    /// Nothing to do for this connection.
    Passthrough,
}

/// The frame-level state: which frames have been released, and the header block being collected.
#[derive(Default)]
struct Scanner {
    mode: Mode,
    /// Payload bytes of a non-header frame still to release as they come.
    skip: usize,
    pending: Option<PendingBlock>,
}

/// A header block split over HEADERS and CONTINUATION frames, kept until its last frame.
struct PendingBlock {
    stream: u32,
    end_stream: bool,
    /// The frames as received, released unchanged when the block needs no repair.
    frames: BytesMut,
    block: Vec<u8>,
}

impl Scanner {
    /// Moves every complete unit of `raw` (the preface, a frame header, a non-header frame's payload, a
    /// whole header block) to `out`, repairing header blocks on the way.
    fn feed(&mut self, raw: &mut BytesMut, out: &mut BytesMut) {
        loop {
            match self.mode {
                Mode::Passthrough => {
                    self.release_pending(out);
                    out.unsplit(raw.split());
                    return;
                }
                Mode::Preface => {
                    let n = raw.len().min(PREFACE.len());
                    if raw[..n] != PREFACE[..n] {
                        self.mode = Mode::Passthrough;
                        continue;
                    }
                    if n < PREFACE.len() {
                        return;
                    }
                    out.unsplit(raw.split_to(n));
                    self.mode = Mode::Inspect;
                }
                Mode::Inspect | Mode::Repair => {
                    if self.skip > 0 {
                        let n = self.skip.min(raw.len());
                        out.unsplit(raw.split_to(n));
                        self.skip -= n;
                        if self.skip > 0 {
                            return;
                        }
                    }
                    if raw.len() < FRAME_HEADER {
                        return;
                    }
                    let len = (usize::from(raw[0]) << 16) | (usize::from(raw[1]) << 8) | usize::from(raw[2]);
                    let kind = raw[3];
                    if kind != HEADERS && kind != CONTINUATION {
                        if self.pending.is_some() {
                            // Only CONTINUATION may follow an unfinished block: h2 will say so.
                            self.mode = Mode::Passthrough;
                            continue;
                        }
                        out.unsplit(raw.split_to(FRAME_HEADER));
                        self.skip = len;
                        continue;
                    }
                    let collected = self.pending.as_ref().map_or(0, |p| p.frames.len());
                    if collected + len > MAX_BLOCK {
                        self.mode = Mode::Passthrough;
                        continue;
                    }
                    if raw.len() < FRAME_HEADER + len {
                        return;
                    }
                    let frame = raw.split_to(FRAME_HEADER + len);
                    self.header_frame(frame, out);
                }
            }
        }
    }

    fn header_frame(&mut self, frame: BytesMut, out: &mut BytesMut) {
        let (kind, flags) = (frame[3], frame[4]);
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let Some(fragment) = fragment(kind, flags, &frame[FRAME_HEADER..]) else {
            return self.give_up(frame, out);
        };
        let mut pending = match (kind, self.pending.take()) {
            (HEADERS, None) => PendingBlock {
                stream,
                end_stream: flags & END_STREAM != 0,
                frames: BytesMut::new(),
                block: Vec::new(),
            },
            (CONTINUATION, Some(p)) if p.stream == stream => p,
            (_, p) => {
                self.pending = p;
                return self.give_up(frame, out);
            }
        };
        pending.block.extend_from_slice(fragment);
        pending.frames.unsplit(frame);
        if flags & END_HEADERS == 0 {
            self.pending = Some(pending);
            return;
        }
        match repair_block(&pending.block) {
            Some(block) => {
                write_header_block(pending.stream, pending.end_stream, &block, out);
                if self.mode == Mode::Inspect {
                    self.mode = Mode::Repair;
                }
            }
            None => {
                out.unsplit(pending.frames);
                if self.mode == Mode::Inspect {
                    self.mode = Mode::Passthrough;
                }
            }
        }
    }

    /// Something h2 will refuse anyway: hand it over as it came and stop looking.
    fn give_up(&mut self, frame: BytesMut, out: &mut BytesMut) {
        self.release_pending(out);
        out.unsplit(frame);
        self.mode = Mode::Passthrough;
    }

    fn release_pending(&mut self, out: &mut BytesMut) {
        if let Some(p) = self.pending.take() {
            out.unsplit(p.frames);
        }
    }
}

/// The header block fragment of a HEADERS or CONTINUATION frame's payload (without padding and priority).
fn fragment(kind: u8, flags: u8, payload: &[u8]) -> Option<&[u8]> {
    if kind == CONTINUATION {
        return Some(payload);
    }
    let (pad, rest) = if flags & PADDED != 0 {
        let (&pad, rest) = payload.split_first()?;
        (usize::from(pad), rest)
    } else {
        (0, payload)
    };
    let rest = if flags & PRIORITY != 0 { rest.get(5..)? } else { rest };
    rest.get(..rest.len().checked_sub(pad)?)
}

/// A repaired block as a HEADERS frame and as many CONTINUATION frames as it needs.
fn write_header_block(stream: u32, end_stream: bool, block: &[u8], out: &mut BytesMut) {
    let chunks = block.len().div_ceil(MAX_FRAME).max(1);
    for i in 0..chunks {
        let chunk = &block[i * MAX_FRAME..((i + 1) * MAX_FRAME).min(block.len())];
        let (kind, mut flags) =
            if i == 0 { (HEADERS, if end_stream { END_STREAM } else { 0 }) } else { (CONTINUATION, 0) };
        if i + 1 == chunks {
            flags |= END_HEADERS;
        }
        put_frame(kind, flags, stream, chunk, out);
    }
}

/// One HTTP/2 frame: its 9-byte header, then `payload`.
fn put_frame(kind: u8, flags: u8, stream: u32, payload: &[u8], out: &mut BytesMut) {
    out.put_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
    out.put_slice(payload);
}

/// The block with every invalid `:authority` value repaired, or `None` when it needs no change (or is not
/// valid HPACK, which h2 reports itself). Representations are walked per RFC 7541 section 6.
fn repair_block(block: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut pos, mut copied) = (0, 0);
    while pos < block.len() {
        let first = block[pos];
        let name_prefix = if first & 0x80 != 0 {
            integer(block, &mut pos, 7)?; // indexed field: no literal to look at
            continue;
        } else if first & 0xc0 == 0x40 {
            6 // literal with incremental indexing
        } else if first & 0xe0 == 0x20 {
            integer(block, &mut pos, 5)?; // dynamic table size update
            continue;
        } else {
            4 // literal without indexing, or never indexed
        };
        let name = integer(block, &mut pos, name_prefix)?;
        // `:authority` is entry 1 of the static table, which grpc-go's encoder always prefers.
        let is_authority = match name {
            0 => decode(string(block, &mut pos)?)?.as_ref() == b":authority",
            index => index == 1,
        };
        let value_at = pos;
        let value = string(block, &mut pos)?;
        if !is_authority {
            continue;
        }
        if let Some(fixed) = repaired(&decode(value)?) {
            out.extend_from_slice(&block[copied..value_at]);
            put_raw_string(fixed.as_bytes(), &mut out);
            copied = pos;
        }
    }
    if copied == 0 {
        return None;
    }
    out.extend_from_slice(&block[copied..]);
    Some(out)
}

/// `host:port` for an authority h2 would refuse that is a URL (`http://host:port`, with any path).
fn repaired(value: &[u8]) -> Option<String> {
    let value = std::str::from_utf8(value).ok()?;
    if http::uri::Authority::try_from(value).is_ok() {
        return None;
    }
    let (_, rest) = value.split_once("://")?;
    let host = rest.split('/').next()?;
    (!host.is_empty() && http::uri::Authority::try_from(host).is_ok()).then(|| host.to_string())
}

/// An HPACK integer with an N-bit prefix (RFC 7541 section 5.1).
fn integer(buf: &[u8], pos: &mut usize, prefix: u8) -> Option<usize> {
    let max = (1usize << prefix) - 1;
    let first = usize::from(*buf.get(*pos)?) & max;
    *pos += 1;
    if first < max {
        return Some(first);
    }
    let mut value = max;
    for shift in (0..=28).step_by(7) {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        value = value.checked_add(usize::from(byte & 0x7f) << shift)?;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// An HPACK string literal (RFC 7541 section 5.2): whether it is Huffman-coded, and its octets.
fn string<'a>(buf: &'a [u8], pos: &mut usize) -> Option<(bool, &'a [u8])> {
    let huffman = *buf.get(*pos)? & 0x80 != 0;
    let len = integer(buf, pos, 7)?;
    let octets = buf.get(*pos..pos.checked_add(len)?)?;
    *pos += len;
    Some((huffman, octets))
}

fn decode((huffman, octets): (bool, &[u8])) -> Option<Cow<'_, [u8]>> {
    if !huffman {
        return Some(Cow::Borrowed(octets));
    }
    let mut out = Vec::with_capacity(octets.len() * 8 / 5);
    httlib_huffman::decode(octets, &mut out, httlib_huffman::DecoderSpeed::FourBits).ok()?;
    Some(Cow::Owned(out))
}

fn put_raw_string(octets: &[u8], out: &mut Vec<u8>) {
    // The length as a 7-bit-prefix integer, H bit clear.
    let mut len = octets.len();
    if len < 0x7f {
        out.push(len as u8);
    } else {
        out.push(0x7f);
        len -= 0x7f;
        while len >= 0x80 {
            out.push((len & 0x7f) as u8 | 0x80);
            len >>= 7;
        }
        out.push(len as u8);
    }
    out.extend_from_slice(octets);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn huffman(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        httlib_huffman::encode(s.as_bytes(), &mut out).unwrap();
        out
    }

    /// A literal with incremental indexing on static name `index` (as grpc-go's encoder writes it).
    fn literal(index: u8, value: &str, huff: bool) -> Vec<u8> {
        let octets = if huff { huffman(value) } else { value.as_bytes().to_vec() };
        let mut out = vec![0x40 | index];
        let mut len = Vec::new();
        put_raw_string(&octets, &mut len);
        if huff {
            len[0] |= 0x80;
        }
        out.extend(len);
        out
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_frame(kind, flags, stream, payload, &mut out);
        out.to_vec()
    }

    /// What hyper would read, fed `input` in pieces of `step` bytes.
    fn scan(input: &[u8], step: usize) -> (Vec<u8>, Mode) {
        let (mut scanner, mut raw, mut out) = (Scanner::default(), BytesMut::new(), BytesMut::new());
        for piece in input.chunks(step) {
            raw.extend_from_slice(piece);
            scanner.feed(&mut raw, &mut out);
        }
        assert!(raw.is_empty() || scanner.mode != Mode::Passthrough);
        (out.to_vec(), scanner.mode)
    }

    fn connection(blocks: &[Vec<u8>]) -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        out.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])); // SETTINGS
        for (i, block) in blocks.iter().enumerate() {
            let stream = 2 * i as u32 + 1;
            out.extend(frame(HEADERS, END_HEADERS, stream, block));
            out.extend(frame(0x0, END_STREAM, stream, &[0, 0, 0, 0, 2, 8, 1])); // DATA
        }
        out
    }

    #[test]
    fn a_url_authority_becomes_host_and_port_in_every_encoding() {
        for huff in [false, true] {
            let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
            block.extend(literal(1, "http://127.0.0.1:2379", huff));
            block.extend(literal(4, "/etcdserverpb.Maintenance/Status", huff));
            let mut want = vec![0x83, 0x86];
            want.extend(literal(1, "127.0.0.1:2379", false));
            want.extend(literal(4, "/etcdserverpb.Maintenance/Status", huff));
            assert_eq!(repair_block(&block), Some(want));
        }
        // A literal name, never indexed.
        let mut block = vec![0x10];
        put_raw_string(b":authority", &mut block);
        put_raw_string(b"https://example.com:2379/path", &mut block);
        let mut want = vec![0x10];
        put_raw_string(b":authority", &mut want);
        put_raw_string(b"example.com:2379", &mut want);
        assert_eq!(repair_block(&block), Some(want));
    }

    #[test]
    fn valid_or_unrepairable_authorities_and_other_headers_are_left_alone() {
        assert_eq!(repair_block(&literal(1, "127.0.0.1:2379", true)), None);
        assert_eq!(repair_block(&literal(1, "unix:///var/run/etcd.sock", false)), None);
        assert_eq!(repair_block(&literal(4, "http://not/an/authority", false)), None);
        assert_eq!(repair_block(&[0x41, 0x85, 0xff]), None, "truncated HPACK is h2's to refuse");
    }

    #[test]
    fn a_connection_with_valid_authorities_passes_unchanged_and_is_then_left_alone() {
        let input = connection(&[literal(1, "127.0.0.1:2379", true), literal(1, "127.0.0.1:2379", false)]);
        for step in [1, 7, input.len()] {
            let (out, mode) = scan(&input, step);
            assert_eq!(out, input);
            assert_eq!(mode, Mode::Passthrough);
        }
        let http1 = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(scan(http1, 3), (http1.to_vec(), Mode::Passthrough));
    }

    #[test]
    fn every_header_block_of_a_repaired_connection_is_repaired_wherever_reads_split_it() {
        let blocks = [literal(1, "http://127.0.0.1:2379", true), literal(1, "http://127.0.0.1:2379", false)];
        let want = connection(&[literal(1, "127.0.0.1:2379", false), literal(1, "127.0.0.1:2379", false)]);
        let input = connection(&blocks);
        for step in [1, 5, 9, 64, input.len()] {
            assert_eq!(scan(&input, step), (want.clone(), Mode::Repair), "step {step}");
        }
    }

    #[test]
    fn padding_priority_and_continuation_frames_are_folded_into_one_header_block() {
        let block = literal(1, "http://h:1", false);
        let mut payload = vec![2]; // pad length
        payload.extend([0, 0, 0, 0, 16]); // priority
        payload.extend(&block[..2]);
        payload.extend([0, 0]); // padding
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 1, &payload));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, &block[2..]));
        let mut want = PREFACE.to_vec();
        want.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1, &literal(1, "h:1", false)));
        assert_eq!(scan(&input, 3), (want, Mode::Repair));
    }

    #[test]
    fn a_large_repaired_block_is_split_into_continuation_frames() {
        let mut block = literal(1, "http://h:1", false);
        block.extend(literal(16, &"x".repeat(20_000), false));
        let mut out = BytesMut::new();
        let fixed = repair_block(&block).unwrap();
        write_header_block(1, false, &fixed, &mut out);
        let first = frame(HEADERS, 0, 1, &fixed[..MAX_FRAME]);
        assert_eq!(&out[..first.len()], &first[..]);
        assert_eq!(&out[first.len()..], &frame(CONTINUATION, END_HEADERS, 1, &fixed[MAX_FRAME..])[..]);
    }
}
