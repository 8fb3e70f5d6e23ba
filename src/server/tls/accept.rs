//! Accepting TLS connections on the gRPC listener. Every handshake runs in its own task with
//! a deadline, and only so many run at once, so a slow or silent client never holds up the
//! others. Each connection takes the configuration that is current when it arrives; where
//! that configuration comes from is `reload`'s business.

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use rustls::ServerConfig;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
    task::JoinSet,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;

/// A handshake not finished within this long is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; beyond, connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 1024;
/// Established connections waiting for the server to take them.
const ESTABLISHED_QUEUE: usize = 64;
/// After a failed accept (out of file descriptors, say), wait this long before the next.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Bounds on the handshakes in progress.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HandshakeLimits {
    /// Deadline of one handshake.
    pub timeout: Duration,
    /// Handshakes in progress at once.
    pub max_in_progress: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        Self {
            timeout: HANDSHAKE_TIMEOUT,
            max_in_progress: MAX_HANDSHAKES,
        }
    }
}

/// Connections that finished their handshake, for tonic's `serve_with_incoming_shutdown`.
#[derive(Debug)]
pub struct TlsIncoming(mpsc::Receiver<TlsStream<TcpStream>>);

impl Stream for TlsIncoming {
    type Item = Result<TlsStream<TcpStream>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|stream| stream.map(Ok))
    }
}

/// The accept loop: TCP connections in, TLS connections out.
pub(crate) struct Acceptor {
    listener: TcpListener,
    configs: watch::Receiver<Arc<ServerConfig>>,
    limits: HandshakeLimits,
    established: mpsc::Sender<TlsStream<TcpStream>>,
}

impl Acceptor {
    /// Accepts on `listener` with the latest of `configs`; established connections come out
    /// of the returned stream.
    pub(crate) fn new(
        listener: TcpListener,
        configs: watch::Receiver<Arc<ServerConfig>>,
        limits: HandshakeLimits,
    ) -> (Self, TlsIncoming) {
        let (established, incoming) = mpsc::channel(ESTABLISHED_QUEUE);
        let acceptor = Self {
            listener,
            configs,
            limits,
            established,
        };
        (acceptor, TlsIncoming(incoming))
    }

    /// Accepts until `shutdown`; handshakes still in progress then are abandoned.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut handshakes = JoinSet::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
                accepted = self.listener.accept(),
                    if handshakes.len() < self.limits.max_in_progress =>
                {
                    match accepted {
                        Ok((tcp, peer)) => {
                            handshakes.spawn(self.handshake(tcp, peer));
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "cannot accept a connection");
                            tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        }
                    }
                }
            }
        }
    }

    fn handshake(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> impl Future<Output = ()> + Send + 'static {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %err, "cannot set TCP_NODELAY");
        }
        let acceptor = TlsAcceptor::from(Arc::clone(&self.configs.borrow()));
        let established = self.established.clone();
        let timeout = self.limits.timeout;
        async move {
            match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    // Fails only once the server has stopped taking connections.
                    let _ = established.send(stream).await;
                }
                Ok(Err(err)) => tracing::debug!(%peer, error = %err, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, ?timeout, "TLS handshake timed out"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rcgen::CertifiedKey;
    use rustls::{
        ClientConfig, RootCertStore,
        pki_types::{PrivatePkcs8KeyDer, ServerName},
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::TlsConnector;
    use tokio_stream::StreamExt;

    use super::*;

    struct Running {
        addr: SocketAddr,
        incoming: TlsIncoming,
        client: TlsConnector,
        _shutdown: tokio_util::sync::DropGuard,
    }

    async fn start(limits: HandshakeLimits) -> Running {
        let CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivatePkcs8KeyDer::from(signing_key.serialize_der()).into(),
            )
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_configs, receiver) = watch::channel(Arc::new(server));
        let (acceptor, incoming) = Acceptor::new(listener, receiver, limits);
        let shutdown = CancellationToken::new();
        tokio::spawn(acceptor.run(shutdown.clone()));
        Running {
            addr,
            incoming,
            client: TlsConnector::from(Arc::new(client)),
            _shutdown: shutdown.drop_guard(),
        }
    }

    impl Running {
        /// A connection that starts a TLS record and never finishes it.
        async fn silent_client(&self) -> TcpStream {
            let mut tcp = TcpStream::connect(self.addr).await.unwrap();
            tcp.write_all(&[0x16, 0x03, 0x01, 0x00, 0x80])
                .await
                .unwrap();
            tcp
        }

        async fn handshake(&self) {
            let tcp = TcpStream::connect(self.addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            self.client.connect(name, tcp).await.expect("handshake");
        }
    }

    #[tokio::test]
    async fn a_silent_client_is_dropped_at_the_deadline() {
        let running = start(HandshakeLimits {
            timeout: Duration::from_millis(100),
            max_in_progress: 8,
        })
        .await;
        let mut silent = running.silent_client().await;
        let read = silent.read(&mut [0; 16]).await;
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "connection closed: {read:?}"
        );
    }

    #[tokio::test]
    async fn a_silent_client_does_not_hold_up_the_next_handshake() {
        let mut running = start(HandshakeLimits::default()).await;
        let silent = running.silent_client().await;
        running.handshake().await;
        let established = running.incoming.next().await;
        assert!(matches!(established, Some(Ok(_))));
        // The silent client is still in its handshake: the server has not given up on it.
        let mut buf = [0; 16];
        assert_eq!(
            silent.try_read(&mut buf).map_err(|err| err.kind()),
            Err(std::io::ErrorKind::WouldBlock)
        );
    }

    #[tokio::test]
    async fn handshakes_beyond_the_limit_wait_for_a_free_slot() {
        let running = start(HandshakeLimits {
            timeout: HANDSHAKE_TIMEOUT,
            max_in_progress: 1,
        })
        .await;
        let silent = running.silent_client().await;
        let waiting = tokio::time::timeout(Duration::from_millis(300), running.handshake()).await;
        assert!(waiting.is_err(), "the only slot is taken");
        drop(silent);
        running.handshake().await;
    }
}
