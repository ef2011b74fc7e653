//! Gathers the HTTP/2 frames hyper writes in one go into one system call.
//!
//! h2 writes each DATA frame of 256 bytes or more with a `writev` of its own: it chains the payload
//! instead of copying it, so it must flush before it takes the next frame. A frame is at most the
//! client's maximum frame size, 16 KiB for every etcd client. A watch stream with many watchers sends
//! hundreds of KiB at a time, ~12 KiB per call where etcd's Go server writes ~25 (docs/benchmarks.md,
//! finding 18), and loopback TCP costs per call as well as per byte, on both ends.
//!
//! [`Coalesce`] sits between hyper and the connection. A small write with nothing gathered goes straight
//! through (a unary response: a put, a range), so nothing a lone client waits for is held back or
//! copied. Anything else is copied into a buffer. A flush right after a large write (a DATA frame) is
//! put off: h2 flushes after each large frame, so the frames of one turn gather, and any other flush
//! writes everything gathered (h2 flushes once more when it has nothing left to send, or after the
//! small trailers that end a unary response), as does a full buffer. A put-off flush also wakes the
//! connection's task, whose next poll reads (`poll_read` first writes what is pending) and flushes
//! again: nothing waits beyond the task's next turn, whatever h2 does.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// A flush with less than this pending writes at once.
const WRITE_NOW: usize = 4 * 1024;
/// Pending bytes that are written without waiting for a flush.
const GATHER: usize = 64 * 1024;

pub struct Coalesce<S> {
    io: S,
    buf: Vec<u8>,
    /// How much of `buf` is already written.
    sent: usize,
    /// The last write was a large one (a DATA frame, with more likely to follow in the same turn).
    large: bool,
}

impl<S> Coalesce<S> {
    pub fn new(io: S) -> Self {
        Coalesce { io, buf: Vec::new(), sent: 0, large: false }
    }

    fn pending(&self) -> usize {
        self.buf.len() - self.sent
    }

    fn take(&mut self, bufs: &[io::IoSlice<'_>]) -> usize {
        let n = bufs.iter().map(|b| b.len()).sum();
        if self.buf.capacity() - self.buf.len() < n && n + self.buf.len() > WRITE_NOW {
            // Gathering: one allocation for the whole gather rather than a doubling per frame.
            self.buf.reserve(GATHER + n);
        }
        for b in bufs {
            self.buf.extend_from_slice(b);
        }
        self.large = n >= WRITE_NOW;
        n
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
        if self.buf.capacity() > WRITE_NOW {
            // An idle connection keeps no gathering buffer.
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_take(&mut self, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        if self.pending() == 0 && bufs.iter().map(|b| b.len()).sum::<usize>() < WRITE_NOW {
            // Small, with nothing gathered: straight through, with no copy (h2 copies small frames
            // into one buffer of its own, so a unary response arrives here as one write).
            return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        }
        if self.pending() >= GATHER {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(self.take(bufs)))
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

    /// A connection that records the size of each write.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<usize>,
    }

    impl AsyncRead for Recorder {
        fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.writes.push(buf.len());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
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

    fn write(c: &mut Coalesce<Recorder>, cx: &mut Context<'_>, n: usize) {
        assert!(matches!(Pin::new(c).poll_write(cx, &vec![7; n]), Poll::Ready(Ok(m)) if m == n));
    }

    fn flush(c: &mut Coalesce<Recorder>, cx: &mut Context<'_>) {
        assert!(matches!(Pin::new(c).poll_flush(cx), Poll::Ready(Ok(()))));
    }

    #[test]
    fn small_writes_go_straight_through_unless_something_is_gathered() {
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut c = Coalesce::new(Recorder::default());
        write(&mut c, &mut cx, 129);
        assert_eq!(c.io.writes, [129]);
        flush(&mut c, &mut cx);
        write(&mut c, &mut cx, 5_000);
        write(&mut c, &mut cx, 100);
        assert_eq!(c.io.writes, [129], "behind a large write, a small one is gathered too");
        assert_eq!(c.pending(), 5_100);
        // A unary response's trailers after its large DATA frame: the flush writes both at once.
        flush(&mut c, &mut cx);
        assert_eq!(c.io.writes, [129, 5_100]);
        assert_eq!(wakes.0.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn large_frames_are_written_together_at_the_first_flush_after_a_small_write_or_none() {
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut c = Coalesce::new(Recorder::default());
        for _ in 0..3 {
            write(&mut c, &mut cx, 9 + 16_384);
            flush(&mut c, &mut cx);
        }
        assert!(c.io.writes.is_empty(), "put off while frames keep coming");
        assert_eq!(wakes.0.load(Ordering::Relaxed), 3, "each put-off flush has the task polled again");
        flush(&mut c, &mut cx);
        assert_eq!(c.io.writes, [3 * (9 + 16_384)]);

        // A full buffer is written without waiting for a flush.
        for _ in 0..5 {
            write(&mut c, &mut cx, 9 + 16_384);
            flush(&mut c, &mut cx);
        }
        assert_eq!(c.io.writes[1..], [4 * (9 + 16_384)]);
        assert_eq!(c.pending(), 9 + 16_384);
    }

    #[test]
    fn the_next_read_writes_a_put_off_flush() {
        let waker = Waker::from(Arc::new(Wakes::default()));
        let mut cx = Context::from_waker(&waker);
        let mut c = Coalesce::new(Recorder::default());
        write(&mut c, &mut cx, 10_000);
        flush(&mut c, &mut cx);
        assert!(c.io.writes.is_empty());
        let mut space = [0u8; 16];
        let mut read = ReadBuf::new(&mut space);
        assert!(Pin::new(&mut c).poll_read(&mut cx, &mut read).is_pending());
        assert_eq!(c.io.writes, [10_000]);
        assert_eq!(c.buf.capacity(), 0, "the gathering buffer is given back");
    }
}
