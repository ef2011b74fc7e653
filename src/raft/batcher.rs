//! The proposal batcher: concurrent client writes become one Raft entry.
//!
//! openraft 0.9's core waits for every log append to be flushed before it takes the next message, so one
//! `client_write` costs one fsync however the log store batches. Group commit therefore happens here:
//! while one entry is being made durable, the writes that arrive gather, and the next entry carries them
//! all. Each request inside keeps its own revision and response; only the fsync is shared. A request
//! that finds nothing in flight is proposed directly by its caller: there is nothing to wait for.
//! An entry is in flight until the state machine has applied it and answered (see `wait`).

use tokio::sync::{mpsc, oneshot};

use openraft::error::{ClientWriteError, RaftError};

use super::types::{Member, Raft, Request, Response};
use super::wait::Wait;

/// Upper bounds for one entry: enough to amortise an fsync over hundreds of writers, small enough that a
/// follower can take the entry in one message.
const MAX_BATCH_REQUESTS: usize = 512;
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug)]
pub enum ProposeError {
    /// This member is not the leader; the leader, if known.
    NotLeader(Option<(u64, Member)>),
    /// Raft stopped, or a membership error that a client request cannot cause.
    Fatal(String),
}

struct Pending {
    req: Request,
    size: usize,
    reply: oneshot::Sender<Result<(Response, u64), ProposeError>>,
}

#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::UnboundedSender<Pending>,
    raft: Raft,
    wait: std::sync::Arc<Wait>,
    /// Entries proposed and not yet answered, by the batching task or directly.
    in_flight: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    gate: std::sync::Arc<super::transfer::Gate>,
}

/// Counts an entry in flight until dropped (also when its proposer's future is dropped).
struct InFlight(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Batcher {
    /// Starts the batching task; it ends when every `Batcher` handle is dropped.
    pub fn start(
        raft: Raft,
        wait: std::sync::Arc<Wait>,
        gate: std::sync::Arc<super::transfer::Gate>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let in_flight = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        tokio::spawn(run(raft.clone(), wait.clone(), rx, in_flight.clone()));
        Batcher { tx, raft, wait, in_flight, gate }
    }

    /// Proposes `req` (of about `size` bytes encoded) and waits for its outcome, applied on this member
    /// (the leader): the response and the index of the log entry that carried it.
    pub async fn propose(&self, req: Request, size: usize) -> Result<(Response, u64), ProposeError> {
        use std::sync::atomic::Ordering;
        self.gate.pass().await;
        // Nothing in flight: nothing to batch with, so propose from here and save the two task hand-offs
        // through the batching task (a lone client's write is latency-bound).
        if self.in_flight.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            let _in_flight = InFlight(self.in_flight.clone());
            let (reply, rx) = oneshot::channel();
            submit(&self.raft, &self.wait, vec![Pending { req, size, reply }]).await;
            return rx.await.map_err(|_| ProposeError::Fatal("batcher stopped".into()))?;
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { req, size, reply })
            .map_err(|_| ProposeError::Fatal("batcher stopped".into()))?;
        rx.await.map_err(|_| ProposeError::Fatal("batcher stopped".into()))?
    }
}

async fn run(
    raft: Raft,
    wait: std::sync::Arc<Wait>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    in_flight: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let mut carry: Option<Pending> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut bytes = first.size;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_REQUESTS {
            match rx.try_recv() {
                Ok(p) if bytes + p.size > MAX_BATCH_BYTES => {
                    carry = Some(p);
                    break;
                }
                Ok(p) => {
                    bytes += p.size;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        in_flight.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let _in_flight = InFlight(in_flight.clone());
        submit(&raft, &wait, batch).await;
    }
}

async fn submit(raft: &Raft, wait: &Wait, batch: Vec<Pending>) {
    let (mut reqs, replies): (Vec<Request>, Vec<_>) = batch.into_iter().map(|p| (p.req, p.reply)).unzip();
    let request = match reqs.len() {
        1 => reqs.pop().unwrap_or(Request::Batch(Vec::new())),
        _ => Request::Batch(reqs),
    };
    let mut ticket = wait.register();
    let entry = Request::Proposed { id: ticket.id, request: Box::new(request) };
    let result = match raft.client_write_ff(entry).await {
        // The state machine answers as soon as the entry is applied; openraft answers after that, or
        // with the error when the entry is not applied here.
        Ok(mut answer) => tokio::select! {
            biased;
            Ok(done) = &mut ticket.rx => {
                wait.keep(answer);
                Ok(done)
            }
            result = &mut answer => match result {
                Ok(Ok(r)) => Ok(ticket.rx.try_recv().unwrap_or((r.data, r.log_id.index))),
                Ok(Err(e)) => Err(RaftError::APIError(e)),
                Err(_) => Err(RaftError::Fatal(openraft::error::Fatal::Stopped)),
            },
        },
        Err(fatal) => Err(RaftError::Fatal(fatal)),
    };
    drop(ticket);
    match result {
        Ok((data, index)) => match data {
            Response::Batch(responses) if replies.len() > 1 && responses.len() == replies.len() => {
                for (reply, r) in replies.into_iter().zip(responses) {
                    let _ = reply.send(Ok((r, index)));
                }
            }
            single if replies.len() == 1 => {
                for reply in replies {
                    let _ = reply.send(Ok((single.clone(), index)));
                }
            }
            other => {
                let msg = format!("batch of {} answered with {other:?}", replies.len());
                for reply in replies {
                    let _ = reply.send(Err(ProposeError::Fatal(msg.clone())));
                }
            }
        },
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(match &e {
                    RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                        ProposeError::NotLeader(f.leader_id.zip(f.leader_node.clone()))
                    }
                    other => ProposeError::Fatal(other.to_string()),
                }));
            }
        }
    }
}
