//! Gathers the HTTP/2 frames hyper writes in one go into one system call.
//!
//! h2 writes each DATA frame of 256 bytes or more with a `writev` of its own: it chains the payload
//! instead of copying it, so it must flush before it takes the next frame. A frame is at most the
//! client's maximum frame size, 16 KiB for every etcd client. A watch stream with many watchers sends
//! hundreds of KiB at a time, ~12 KiB per call where etcd's Go server writes ~25 (docs/benchmarks.md,
//! finding 18), and loopback TCP costs per call as well as per byte, on both ends.
//!
//! [`Coalesce`] sits between hyper and the connection. With nothing gathered, a write goes straight
//! through unless it is a large frame chained to its header (h2's write of a DATA frame: two slices,
//! 4 KiB or more). h2 copies small frames into one buffer of its own, so a small unary response (a
//! put, a range of small values) arrives as one slice and is neither held back nor copied. A chained
//! frame is copied into a buffer, and the flush h2 makes right after it is put off, so the frames of
//! one turn gather. Any other flush writes everything gathered (h2 flushes once more when it has
//! nothing left to send, or after a response's trailers: a large unary response leaves in the turn
//! that wrote it), as does a full buffer. A put-off flush also wakes the connection's
//! task, whose next poll reads (`poll_read` first writes what is pending) and flushes again: nothing
//! waits beyond the task's next turn, whatever hyper does. That relies on one task doing both the reads
//! and the writes, as hyper's and h2's connections do: a write inside `poll_read` registers the
//! reader's waker for write readiness.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// A chained frame at least this large has the flush after it put off.
const LARGE: usize = 4 * 1024;
/// Pending bytes that are written without waiting for a flush.
const GATHER: usize = 64 * 1024;

pub struct Coalesce<S> {
    io: S,
    buf: Vec<u8>,
    /// How much of `buf` is already written.
    sent: usize,
    /// The last write was a large chained frame, with more likely to follow in the same turn.
    large: bool,
}

impl<S> Coalesce<S> {
    pub fn new(io: S) -> Self {
        Coalesce { io, buf: Vec::new(), sent: 0, large: false }
    }

    fn pending(&self) -> usize {
        self.buf.len() - self.sent
    }

    fn take(&mut self, bufs: &[io::IoSlice<'_>], n: usize, chained: bool) {
        if self.sent > 0 {
            // Partly written: what is gone makes room, so the buffer stays within GATHER and a write.
            self.buf.drain(..self.sent);
            self.sent = 0;
        }
        if self.buf.capacity() - self.buf.len() < n {
            // One allocation for the whole gather rather than a doubling per frame.
            self.buf.reserve(GATHER + n);
        }
        for b in bufs {
            self.buf.extend_from_slice(b);
        }
        self.large = chained;
    }
}

impl<S: AsyncWrite + Unpin> Coalesce<S> {
    /// Writes everything pending.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.sent = 0;
        self.large = false;
        // No buffer is kept between gathers: thousands of quiet connections hold none.
        self.buf = Vec::new();
        Poll::Ready(Ok(()))
    }

    fn poll_take(&mut self, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let n = bufs.iter().map(|b| b.len()).sum::<usize>();
        let chained = bufs.len() > 1 && n >= LARGE;
        if self.pending() >= GATHER {
            ready!(self.poll_drain(cx))?;
        }
        // With nothing gathered, only a chained frame that fits the buffer starts a gather.
        if self.pending() == 0 && (!chained || n >= GATHER) {
            return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        }
        self.take(bufs, n, chained);
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesce<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pending() > 0 {
            // A put-off flush: the task is polled again, and this is where it lands first.
            if let Poll::Ready(Err(e)) = self.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesce<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_take(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_take(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if std::mem::take(&mut self.large) && (1..GATHER).contains(&self.pending()) {
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for Coalesce<S> {
    type ConnectInfo = S::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    use super::*;

    /// A connection that records the size of each write; it may take only part of a write, or none.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<usize>,
        /// The most one write takes (0: all of it).
        limit: usize,
        /// The client reads nothing: writes wait.
        blocked: bool,
        shut: bool,
    }

    impl AsyncRead for Recorder {
        fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            if self.blocked {
                return Poll::Pending;
            }
            let total = bufs.iter().map(|b| b.len()).sum::<usize>();
            let n = if self.limit > 0 { total.min(self.limit) } else { total };
            self.writes.push(n);
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.shut = true;
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    struct Fixture {
        c: Coalesce<Recorder>,
        wakes: Arc<Wakes>,
        waker: Waker,
    }

    impl Fixture {
        fn new() -> Self {
            let wakes = Arc::new(Wakes::default());
            Fixture { c: Coalesce::new(Recorder::default()), waker: Waker::from(wakes.clone()), wakes }
        }

        fn wakes(&self) -> usize {
            self.wakes.0.load(Ordering::Relaxed)
        }

        /// h2's write of one buffer (small frames it copied together).
        fn write(&mut self, n: usize) -> Poll<io::Result<usize>> {
            let mut cx = Context::from_waker(&self.waker);
            Pin::new(&mut self.c).poll_write(&mut cx, &vec![7; n])
        }

        /// h2's write of a DATA frame: its 9-byte header, then the payload it chains.
        fn frame(&mut self, payload: usize) -> Poll<io::Result<usize>> {
            let mut cx = Context::from_waker(&self.waker);
            let (head, body) = ([0u8; 9], vec![7u8; payload]);
            Pin::new(&mut self.c)
                .poll_write_vectored(&mut cx, &[io::IoSlice::new(&head), io::IoSlice::new(&body)])
        }

        fn flush(&mut self) -> Poll<io::Result<()>> {
            let mut cx = Context::from_waker(&self.waker);
            Pin::new(&mut self.c).poll_flush(&mut cx)
        }

        fn read(&mut self) -> Poll<io::Result<()>> {
            let mut cx = Context::from_waker(&self.waker);
            let mut space = [0u8; 16];
            Pin::new(&mut self.c).poll_read(&mut cx, &mut ReadBuf::new(&mut space))
        }
    }

    fn done(p: Poll<io::Result<usize>>) -> usize {
        match p {
            Poll::Ready(Ok(n)) => n,
            other => panic!("write: {other:?}"),
        }
    }

    fn flushed(p: Poll<io::Result<()>>) {
        assert!(matches!(p, Poll::Ready(Ok(()))), "flush: {p:?}");
    }

    #[test]
    fn unary_responses_go_straight_through() {
        let mut f = Fixture::new();
        assert_eq!(done(f.write(129)), 129);
        assert_eq!(done(f.frame(1_000)), 1_009, "a small frame");
        assert_eq!(done(f.write(20_000)), 20_000, "many small frames h2 copied together");
        flushed(f.flush());
        assert_eq!(f.c.io.writes, [129, 1_009, 20_000]);
        assert_eq!(f.wakes(), 0);
    }

    #[test]
    fn the_frames_of_one_turn_leave_in_one_write() {
        let mut f = Fixture::new();
        for _ in 0..3 {
            done(f.frame(16_384));
            flushed(f.flush());
        }
        assert!(f.c.io.writes.is_empty(), "put off while frames keep coming");
        assert_eq!(f.wakes(), 3, "each put-off flush has the task polled again");
        flushed(f.flush());
        assert_eq!(f.c.io.writes, [3 * 16_393]);

        // A large unary response as h2 writes it: the DATA frame, a flush, the trailers, a flush.
        done(f.frame(5_000));
        flushed(f.flush());
        assert_eq!(f.c.io.writes.len(), 1);
        done(f.write(30));
        flushed(f.flush());
        assert_eq!(f.c.io.writes[1..], [5_009 + 30]);

        // A full buffer is written without waiting for the end of the turn.
        for _ in 0..5 {
            done(f.frame(16_384));
            flushed(f.flush());
        }
        assert_eq!(f.c.io.writes[2..], [4 * 16_393]);
        assert_eq!(f.c.pending(), 16_393);
    }

    #[test]
    fn the_next_read_writes_a_put_off_flush() {
        let mut f = Fixture::new();
        done(f.frame(10_000));
        flushed(f.flush());
        assert!(f.c.io.writes.is_empty());
        assert!(f.read().is_pending());
        assert_eq!(f.c.io.writes, [10_009]);
        assert_eq!(f.c.buf.capacity(), 0, "the gathering buffer is given back");
    }

    #[test]
    fn partial_writes_a_client_that_stops_reading_and_shutdown() {
        let mut f = Fixture::new();
        f.c.io.limit = 1_000;
        done(f.frame(16_384));
        flushed(f.flush());
        flushed(f.flush());
        assert_eq!(f.c.io.writes.iter().sum::<usize>(), 16_393, "written in parts, in full");

        f.c.io.blocked = true;
        let mut offered = 0;
        for _ in 0..3 {
            offered += done(f.frame(16_384));
            flushed(f.flush());
        }
        offered += done(f.frame(16_384));
        assert!(f.flush().is_pending(), "a full buffer waits for the client");
        assert!(f.frame(16_384).is_pending(), "and so does the next write");
        assert_eq!(f.c.pending(), offered);

        f.c.io.blocked = false;
        let mut cx = Context::from_waker(&f.waker);
        assert!(matches!(Pin::new(&mut f.c).poll_shutdown(&mut cx), Poll::Ready(Ok(()))));
        assert!(f.c.io.shut);
        assert_eq!(f.c.io.writes.iter().sum::<usize>(), 16_393 + offered, "nothing lost at shutdown");
    }
}
