//! The listeners' side: accepted connections, with TLS done here rather than by tonic, whose server
//! takes no certificate verifier but webpki's own (see `verify.rs`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{FuturesUnordered, Stream, StreamExt, TryStreamExt};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::Connected;

/// How long a client has to finish its TLS handshake before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// An accepted connection, plain or TLS.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// What a request can learn about its connection (tonic puts it in the request's extensions).
#[derive(Clone, Debug, Default)]
pub struct ConnInfo {
    certs: Option<Arc<[CertificateDer<'static>]>>,
}

impl ConnInfo {
    /// The client's own certificate, verified in the handshake (with `--client-cert-auth`).
    pub fn client_certificate(&self) -> Option<&CertificateDer<'static>> {
        self.certs.as_deref()?.first()
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        match self {
            Conn::Plain(_) => ConnInfo::default(),
            Conn::Tls(tls) => ConnInfo { certs: tls.get_ref().1.peer_certificates().map(Arc::from) },
        }
    }
}

/// The connections `listener` accepts (with TCP_NODELAY: responses written in two parts must not wait
/// for a delayed ACK), through a TLS handshake with `tls` if given. Handshakes run side by side, so a
/// slow or silent client holds up no one else; one that fails is logged and dropped, as etcd's
/// "rejected connection".
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Pin<Box<dyn Stream<Item = io::Result<Conn>> + Send>> {
    let tcp = TcpListenerStream::new(listener).map_ok(|s| {
        let _ = s.set_nodelay(true);
        s
    });
    let Some(config) = tls else {
        return Box::pin(tcp.map_ok(Conn::Plain));
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    type Handshake = Pin<Box<dyn Future<Output = Option<Conn>> + Send>>;
    let handshakes = FuturesUnordered::<Handshake>::new();
    Box::pin(futures::stream::unfold(
        (tcp, handshakes, acceptor),
        |(mut tcp, mut handshakes, acceptor)| async move {
            loop {
                tokio::select! {
                    accepted = tcp.next() => match accepted? {
                        Ok(stream) => {
                            let remote = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                            let accept = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                            handshakes.push(Box::pin(async move {
                                match accept.await {
                                    Ok(Ok(tls)) => Some(Conn::Tls(Box::new(tls))),
                                    Ok(Err(e)) => {
                                        tracing::warn!(remote, "rejected connection: {e}");
                                        None
                                    }
                                    Err(_) => {
                                        tracing::warn!(remote, "rejected connection: TLS handshake timed out");
                                        None
                                    }
                                }
                            }));
                        }
                        Err(e) => return Some((Err(e), (tcp, handshakes, acceptor))),
                    },
                    Some(done) = handshakes.next(), if !handshakes.is_empty() => {
                        if let Some(conn) = done {
                            return Some((Ok(conn), (tcp, handshakes, acceptor)));
                        }
                    }
                }
            }
        },
    ))
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
