//! The fault proxy: every directed peer link (member i dialling member j) runs through a TCP proxy of
//! its own, so that a link can be delayed, blackholed or cut without root or tc-netem.
//!
//! A TCP connection that i opens to j carries i's requests to j and j's answers back, so each direction
//! of a proxied connection obeys its own link: bytes from i to j follow link (i, j), bytes back follow
//! link (j, i). A blackholed link holds its bytes (TCP keeps them, as under an iptables DROP rule) and
//! delivers them, late, when it heals; a cut link resets its connections and refuses new ones, as a
//! REJECT rule does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
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
    names: Arc<Names>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// For proxies that learn a connection's sender from etcd's `X-Server-From` header.
#[derive(Default)]
struct Names {
    /// etcd member id → member index.
    senders: RwLock<HashMap<u64, usize>>,
    /// One always-Up link per connection whose sender was unknown; dropping them closes those.
    unnamed: Mutex<Vec<watch::Sender<Link>>>,
}

/// A proxied connection's two links: the dialler's way to the member, and back.
type Links = (watch::Receiver<Link>, watch::Receiver<Link>);

impl Net {
    fn new(n: usize) -> Net {
        let mut links = HashMap::new();
        for i in 0..n {
            for j in (0..n).filter(|&j| j != i) {
                links.insert((i, j), watch::channel(Link::Up).0);
            }
        }
        Net { links, ports: HashMap::new(), names: Arc::default(), tasks: Vec::new() }
    }

    /// For servers that cannot be told whom to dial (etcd): one proxy in front of each member, which
    /// every peer dials (its advertised peer URL), telling senders apart by the `X-Server-From` header
    /// etcd puts on every Raft request. `dial_url(i, j)` is then the same for every `i`; connections
    /// that name no sender (version checks, lease forwarding) pass untouched.
    pub async fn start_by_header(peer_ports: &[u16]) -> std::io::Result<Net> {
        let mut net = Net::new(peer_ports.len());
        for (j, &port) in peer_ports.iter().enumerate() {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let proxy_port = listener.local_addr()?.port();
            let mut inbound = HashMap::new();
            for i in (0..peer_ports.len()).filter(|&i| i != j) {
                net.ports.insert((i, j), proxy_port);
                inbound.insert(i, (net.links[&(i, j)].subscribe(), net.links[&(j, i)].subscribe()));
            }
            net.tasks.push(tokio::spawn(serve_by_header(listener, port, inbound, net.names.clone())));
        }
        Ok(net)
    }

    /// Tells the proxies which etcd member id is which member, and closes the connections opened
    /// before, whose senders they could not tell: the members dial again and are told apart.
    pub fn name_senders(&self, ids: HashMap<u64, usize>) {
        *self.names.senders.write().unwrap_or_else(|p| p.into_inner()) = ids;
        self.names.unnamed.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Starts a proxy for each ordered pair of members; `peer_ports[j]` is where member j listens.
    pub async fn start(peer_ports: &[u16]) -> std::io::Result<Net> {
        let mut net = Net::new(peer_ports.len());
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
        tokio::spawn(relay(inbound, Vec::new(), to_port, (forward.clone(), back.clone())));
    }
}

async fn serve_by_header(
    listener: TcpListener,
    to_port: u16,
    inbound: HashMap<usize, Links>,
    names: Arc<Names>,
) {
    let inbound = Arc::new(inbound);
    loop {
        let Ok((mut conn, _)) = listener.accept().await else { continue };
        let (inbound, names) = (inbound.clone(), names.clone());
        tokio::spawn(async move {
            // The request's head is read before anything is forwarded, and goes on first.
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let sender = String::from_utf8_lossy(&head).lines().find_map(|l| {
                let id = l.strip_prefix("X-Server-From: ")?;
                u64::from_str_radix(id.trim(), 16).ok()
            });
            let sender = sender
                .and_then(|id| names.senders.read().unwrap_or_else(|p| p.into_inner()).get(&id).copied());
            let links = sender.and_then(|i| inbound.get(&i).cloned()).unwrap_or_else(|| {
                let (always, up) = watch::channel(Link::Up);
                names.unnamed.lock().unwrap_or_else(|p| p.into_inner()).push(always);
                (up.clone(), up)
            });
            relay(conn, head, to_port, links).await;
        });
    }
}

/// Connects `inbound` to the member at `to_port` (sending `head` first) and carries bytes both ways,
/// each direction as its link says.
async fn relay(inbound: TcpStream, head: Vec<u8>, to_port: u16, (forward, back): Links) {
    if *forward.borrow() == Link::Cut || *back.borrow() == Link::Cut {
        return; // dropped: the dialler sees its connection reset
    }
    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", to_port)).await else { return };
    if outbound.write_all(&head).await.is_err() {
        return;
    }
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    // Whichever direction ends (EOF, error, cut) ends the connection: both sockets drop here.
    tokio::select! {
        _ = carry(in_read, out_write, forward) => {}
        _ = carry(out_read, in_write, back) => {}
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
