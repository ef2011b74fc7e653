//! The listeners' serving loop: each connection is one task, and its calls run inside that task.
//!
//! Why not tonic's `serve_with_incoming_shutdown`: it gives hyper tokio's executor, so every call is a
//! task of its own. A unary call then crosses tasks twice (connection → call when the request arrives,
//! call → connection when the response is ready), and tokio without its LIFO slot (which the many-client
//! rows need off: docs/benchmarks.md, finding 14) hands each of those to the other worker thread: a
//! wake-up across cores, 20-30 µs on this machine, on a round trip of ~200 µs at one client. Here hyper
//! gets an executor that puts the call's future in its connection's task, which polls the connection and
//! its calls in turn until neither has anything left to do.
//!
//! A call that wakes its connection, or the connection a call, while the task is running does not
//! notify tokio (which would schedule the running task again and wake the other worker to take it): the
//! wake-up only marks the task for another round (see [`Shared`]). Wake-ups from elsewhere (a Raft
//! apply, the socket) wake the task as usual.
//!
//! The price: one connection's calls share one task, so they use one core at a time, and a call that
//! computes for long holds up the others. A call's own work (decode, MVCC read, encode) is small beside
//! what Raft, the WAL and the apply do in tasks of their own; what can take long runs elsewhere: wide
//! ranges (`api/kv.rs`), hashes, snapshots, defragmentation and bcrypt on tokio's blocking pool, each
//! Watch stream in a task of its own.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::panic::AssertUnwindSafe;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures::stream::{FuturesUnordered, Stream, StreamExt};
use futures::task::AtomicWaker;
use futures::FutureExt;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tonic::body::Body;
use tonic::transport::server::Connected;
use tower::ServiceExt;

/// How a listener's connections are served.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Serve HTTP/1 requests as well as HTTP/2 (etcd's /health, /metrics and gateway).
    pub http1: bool,
    pub max_concurrent_streams: Option<u32>,
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Option<Duration>,
}

/// Rounds of polling the connection and its calls in one turn of the task before it yields to others.
const ROUNDS: usize = 32;

/// The pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

type Call = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Serves the connections `incoming` yields with `svc` until `stop` turns true, then waits for the
/// connections to finish what they have begun (hyper's graceful shutdown).
pub async fn serve<S, I, IO, E>(svc: S, incoming: I, options: Options, mut stop: watch::Receiver<bool>)
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    I: Stream<Item = Result<IO, E>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    E: std::fmt::Display,
{
    // Every connection holds a sender; the channel closes when the last one has ended.
    let (alive, mut ended) = mpsc::channel::<()>(1);
    // Boxed, not pinned in place: dropped below, it closes the listening socket at once.
    let mut incoming = Box::pin(incoming);
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            io = incoming.next() => io,
        };
        let io = match accepted {
            Some(Ok(io)) => io,
            Some(Err(e)) => {
                // Out of file descriptors, say: accepting again at once would only spin.
                tracing::warn!("accepting a connection: {e}");
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
            None => break,
        };
        let info = io.connect_info();
        let svc = svc.clone().map_request(move |req: Request<Incoming>| {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(info.clone());
            req
        });
        tokio::spawn(connection(io, svc, options.clone(), stop.clone(), alive.clone()));
    }
    drop(incoming);
    drop(alive);
    let _ = ended.recv().await;
}

async fn connection<IO, S>(
    io: IO,
    svc: S,
    options: Options,
    mut stop: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let shared = Arc::new(Shared::default());
    let mut builder = auto::Builder::new(Executor(shared.clone()));
    if !options.http1 {
        builder = builder.http2_only();
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(options.max_concurrent_streams)
        .keep_alive_interval(options.keepalive_interval)
        .keep_alive_timeout(options.keepalive_timeout.unwrap_or(Duration::from_secs(20)));
    builder.http1().timer(TokioTimer::new());
    let mut conn = pin!(builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(svc)));
    let mut stopping = pin!(async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    let mut calls = Calls::new(shared);
    let mut shutting_down = false;
    let done = poll_fn(|cx| {
        if !shutting_down && stopping.as_mut().poll(cx).is_ready() {
            shutting_down = true;
            conn.as_mut().graceful_shutdown();
        }
        calls.poll(cx, |cx| conn.as_mut().poll(cx))
    })
    .await;
    if let Err(e) = done {
        tracing::debug!("connection: {e}");
    }
}

/// The calls of one connection, polled by its task.
struct Calls {
    shared: Arc<Shared>,
    running: FuturesUnordered<Call>,
    /// Wakes the task for the connection (its socket, or a call that has written a response).
    conn_waker: Waker,
    /// Wakes the task for a call (a request's data, an answer from Raft, a new call).
    calls_waker: Waker,
}

impl Calls {
    fn new(shared: Arc<Shared>) -> Self {
        let waker = |bit| Waker::from(Arc::new(Bit { shared: shared.clone(), bit }));
        let (conn_waker, calls_waker) = (waker(CONN), waker(CALLS));
        Calls { shared, running: FuturesUnordered::new(), conn_waker, calls_waker }
    }

    /// Polls `conn` and the calls until neither has been woken by the other (or by anything else) since
    /// it was last polled, or for [`ROUNDS`] rounds. The calls go first as long as they are woken: what
    /// they write then leaves with one write of the connection (futures' `FuturesUnordered` returns
    /// after a couple of calls woke themselves, as h2's send path does).
    fn poll<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut conn: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let state = &self.shared.state;
        self.shared.task.register(cx.waker());
        // Polled from the top: whatever woke the task is looked at.
        state.store(RUNNING | CONN | CALLS, Ordering::SeqCst);
        for _ in 0..ROUNDS {
            if state.fetch_and(!CONN, Ordering::SeqCst) & CONN != 0 {
                if let Poll::Ready(out) = conn(&mut Context::from_waker(&self.conn_waker)) {
                    state.store(IDLE, Ordering::SeqCst);
                    return Poll::Ready(out);
                }
            }
            for _ in 0..ROUNDS {
                if state.fetch_and(!CALLS, Ordering::SeqCst) & CALLS == 0 {
                    break;
                }
                self.running.extend(self.shared.take_new());
                let mut calls = Context::from_waker(&self.calls_waker);
                while let Poll::Ready(Some(())) = self.running.poll_next_unpin(&mut calls) {}
            }
            if state.compare_exchange(RUNNING, IDLE, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                return Poll::Pending;
            }
            if !tokio::task::coop::has_budget_remaining() {
                break;
            }
        }
        // Out of rounds or of tokio's budget: let the worker run other tasks, and come back.
        state.store(IDLE, Ordering::SeqCst);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

const IDLE: u8 = 0;
/// The task is inside [`Calls::poll`]: a wake-up only sets its bit.
const RUNNING: u8 = 1;
/// The connection has been woken since it was last polled.
const CONN: u8 = 2;
/// A call has been woken, or started, since the calls were last polled.
const CALLS: u8 = 4;

/// What a connection's task shares with the wakers of its calls and with hyper's executor.
#[derive(Default)]
struct Shared {
    state: AtomicU8,
    /// The task's own waker, for wake-ups that come while it is not running.
    task: AtomicWaker,
    /// Calls hyper has started since the task last looked.
    new: Mutex<Vec<Call>>,
}

impl Shared {
    fn take_new(&self) -> Vec<Call> {
        std::mem::take(&mut *self.new.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn wake(&self, bit: u8) {
        if self.state.fetch_or(bit, Ordering::SeqCst) & RUNNING == 0 {
            self.task.wake();
        }
    }
}

/// A waker that marks one part of the task as woken.
struct Bit {
    shared: Arc<Shared>,
    bit: u8,
}

impl Wake for Bit {
    fn wake(self: Arc<Self>) {
        self.shared.wake(self.bit);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.shared.wake(self.bit);
    }
}

/// hyper's executor for a connection: a call joins the connection's task.
#[derive(Clone)]
struct Executor(Arc<Shared>);

impl<F: Future<Output = ()> + Send + 'static> hyper::rt::Executor<F> for Executor {
    fn execute(&self, call: F) {
        // A call that panics ends its own stream only, as a task of its own would.
        let call = AssertUnwindSafe(call).catch_unwind().map(drop);
        self.0.new.lock().unwrap_or_else(|p| p.into_inner()).push(Box::pin(call));
        self.0.wake(CALLS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    /// The task's own waker: counts the times tokio would have been asked to schedule it.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn task() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    /// A connection's calls, and the executor hyper would start calls on.
    fn calls() -> (Calls, Executor) {
        let shared = Arc::new(Shared::default());
        (Calls::new(shared.clone()), Executor(shared))
    }

    #[test]
    fn a_call_and_its_connection_hand_off_inside_one_poll_without_waking_the_task() {
        let (count, waker) = task();
        let (mut calls, exec) = calls();
        let answered = Arc::new(AtomicBool::new(false));
        let mut polls = 0;
        // The connection starts a call that answers and wakes the connection, as hyper's h2 stream does.
        let out = calls.poll(&mut Context::from_waker(&waker), |cx| {
            polls += 1;
            if polls == 1 {
                let (answered, wake) = (answered.clone(), cx.waker().clone());
                hyper::rt::Executor::execute(&exec, async move {
                    answered.store(true, Ordering::SeqCst);
                    wake.wake();
                });
            }
            match answered.load(Ordering::SeqCst) {
                true => Poll::Ready(polls),
                false => Poll::Pending,
            }
        });
        assert_eq!(out, Poll::Ready(2));
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_wake_from_outside_wakes_the_idle_task_once_per_poll() {
        let (count, waker) = task();
        let (mut calls, _) = calls();
        let mut conn_waker = None;
        let out = calls.poll(&mut Context::from_waker(&waker), |cx| {
            conn_waker = Some(cx.waker().clone());
            Poll::<()>::Pending
        });
        assert_eq!(out, Poll::Pending);
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        let conn_waker = conn_waker.expect("the connection was polled");
        conn_waker.wake_by_ref();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        // Until the task runs again its waker has been used up: no second schedule is asked for.
        conn_waker.wake_by_ref();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_connection_that_keeps_waking_itself_yields_after_its_rounds() {
        let (count, waker) = task();
        let (mut calls, _) = calls();
        let mut polls = 0;
        let out = calls.poll(&mut Context::from_waker(&waker), |cx| {
            polls += 1;
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        });
        assert_eq!(out, Poll::Pending);
        assert_eq!(polls, ROUNDS);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_call_that_panics_ends_alone() {
        let (_count, waker) = task();
        let (mut calls, exec) = calls();
        let other = Arc::new(AtomicBool::new(false));
        hyper::rt::Executor::execute(&exec, async { panic!("a bug in one call") });
        let done = other.clone();
        hyper::rt::Executor::execute(&exec, async move { done.store(true, Ordering::SeqCst) });
        let out = calls.poll(&mut Context::from_waker(&waker), |_| Poll::<()>::Pending);
        assert_eq!(out, Poll::Pending);
        assert!(other.load(Ordering::SeqCst));
        assert!(calls.running.is_empty());
    }
}
