//! The fault proxy: every directed peer link (member i dialling member j) runs through a TCP proxy of
//! its own, so that a link can be delayed, blackholed or cut without root or tc-netem.
//!
//! A TCP connection that i opens to j carries i's requests to j and j's answers back, so each direction
//! of a proxied connection obeys its own link: bytes from i to j follow link (i, j), bytes back follow
//! link (j, i). A blackholed link holds its bytes (TCP keeps them, as under an iptables DROP rule) and
//! delivers them, late, when it heals; a cut link resets its connections and refuses new ones, as a
//! REJECT rule does.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Link {
    Up,
    /// Every byte arrives this much later.
    Delay(Duration),
    /// Nothing passes until the link heals; then everything held arrives.
    Blackhole,
    /// Connections are reset and refused.
    Cut,
}

/// The links between `n` members, each with its proxy listening on 127.0.0.1.
pub struct Net {
    links: HashMap<(usize, usize), watch::Sender<Link>>,
    ports: HashMap<(usize, usize), u16>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Net {
    /// Starts a proxy for each ordered pair of members; `peer_ports[j]` is where member j listens.
    pub async fn start(peer_ports: &[u16]) -> std::io::Result<Net> {
        let mut net = Net { links: HashMap::new(), ports: HashMap::new(), tasks: Vec::new() };
        let n = peer_ports.len();
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    net.links.insert((i, j), watch::channel(Link::Up).0);
                }
            }
        }
        for ((i, j), forward) in net.links.iter() {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            net.ports.insert((*i, *j), listener.local_addr()?.port());
            let back = net.links[&(*j, *i)].subscribe();
            let task = tokio::spawn(serve(listener, peer_ports[*j], forward.subscribe(), back));
            net.tasks.push(task);
        }
        Ok(net)
    }

    /// The URL member `from` dials to reach member `to`.
    pub fn dial_url(&self, from: usize, to: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[&(from, to)])
    }

    pub fn set(&self, from: usize, to: usize, link: Link) {
        if let Some(l) = self.links.get(&(from, to)) {
            l.send_replace(link);
        }
    }

    /// Cuts (or blackholes, or delays) every link between the two groups, both ways.
    pub fn split(&self, a: &[usize], b: &[usize], link: Link) {
        for &i in a {
            for &j in b {
                self.set(i, j, link);
                self.set(j, i, link);
            }
        }
    }

    pub fn heal(&self) {
        for l in self.links.values() {
            l.send_replace(Link::Up);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn serve(
    listener: TcpListener,
    to_port: u16,
    forward: watch::Receiver<Link>,
    back: watch::Receiver<Link>,
) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else { continue };
        if *forward.borrow() == Link::Cut || *back.borrow() == Link::Cut {
            continue; // dropped: the dialler sees its connection reset
        }
        let (forward, back) = (forward.clone(), back.clone());
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(("127.0.0.1", to_port)).await else { return };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            // Whichever direction ends (EOF, error, cut) ends the connection: both sockets drop here.
            tokio::select! {
                _ = carry(in_read, out_write, forward) => {}
                _ = carry(out_read, in_write, back) => {}
            }
        });
    }
}

/// Moves bytes one way, as the link says. Returns when the connection ends or the link is cut.
async fn carry(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut link: watch::Receiver<Link>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let mut write_link = link.clone();
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let state = *link.borrow_and_update();
            match state {
                Link::Cut => return,
                Link::Blackhole => {
                    if link.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
                Link::Up | Link::Delay(_) => {}
            }
            tokio::select! {
                n = from.read(&mut buf) => {
                    let n = match n { Ok(0) | Err(_) => return, Ok(n) => n };
                    let delay = match *link.borrow() { Link::Delay(d) => d, _ => Duration::ZERO };
                    if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                changed = link.changed() => if changed.is_err() { return },
            }
        }
    };
    let write = async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            // Held bytes wait out a blackhole that began after they were read.
            while *write_link.borrow_and_update() == Link::Blackhole {
                if write_link.changed().await.is_err() {
                    return;
                }
            }
            if *write_link.borrow() == Link::Cut || to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    // The reader ending (EOF, cut) closes the queue and the writer delivers what is left unless cut.
    tokio::join!(read, write);
}
