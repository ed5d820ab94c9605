//! TLS for the node's port and for every outgoing connection, with rustls
//! (ring; no OpenSSL), on the flag model of etcd.
//!
//! One port serves clients and peers. A connection's first byte tells a
//! TLS handshake (0x16) from plaintext, so one listener takes both; which
//! services a connection may call is decided afterwards, per request, by the
//! server's policy from [`ConnInfo`] (so a refused client gets a gRPC error
//! saying why instead of a reset connection).
//!
//! Which certificate the node presents: a connection that offers the ALPN
//! token [`PEER_ALPN`] (only RaftKV members do) gets the peer certificate,
//! any other the client-facing one (either stands in when only one is
//! configured). Client certificates are verified against the union of the
//! client and peer CAs during the handshake (an unknown CA, an expired or a
//! not-yet-valid certificate fails it); whether the certificate chains to
//! the peer CA is checked once more, alone, to mark the connection as a
//! member's ([`ConnInfo::peer`]).
//!
//! Certificates and keys are read again when their files change (checked
//! at each new connection: a few `stat`s), so rotation needs no restart;
//! connections already open keep the certificate they started with. A
//! change that does not load (a key that does not match, a file half
//! written) is logged and the previous material kept.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The ALPN token with which a member asks for the peer certificate.
pub const PEER_ALPN: &[u8] = b"raftkv-peer";
/// A TLS handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// A certificate (chain, PEM) and its private key (PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The node's TLS settings (etcd's flags).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// `--cert-file`/`--key-file`: what clients are shown; with it, client
    /// requests need TLS.
    pub client: Option<CertFiles>,
    /// `--trusted-ca-file`: the CA of client certificates.
    pub trusted_ca: Option<PathBuf>,
    /// `--client-cert-auth`: client requests need a certificate from
    /// `trusted_ca` (or a member's).
    pub client_cert_auth: bool,
    /// `--peer-cert-file`/`--peer-key-file`: what members are shown and
    /// show; with it, peer traffic needs TLS and a peer certificate.
    pub peer: Option<CertFiles>,
    /// `--peer-trusted-ca-file`: the CA of members' certificates.
    pub peer_trusted_ca: Option<PathBuf>,
    /// `--peer-cert-allowed-cn`: a member's certificate must also have this
    /// CN (for a peer CA that signs other certificates too).
    pub peer_allowed_cn: Option<String>,
}

impl ServerTlsFiles {
    pub fn client_tls(&self) -> bool {
        self.client.is_some()
    }

    pub fn peer_tls(&self) -> bool {
        self.peer.is_some()
    }

    /// The settings of a separate peer listener (`--listen-peer`): the peer
    /// certificate and CA alone (no client TLS), so the handshake takes
    /// only members' certificates' CA.
    pub fn peer_only(&self) -> ServerTlsFiles {
        ServerTlsFiles {
            peer: self.peer.clone(),
            peer_trusted_ca: self.peer_trusted_ca.clone(),
            peer_allowed_cn: self.peer_allowed_cn.clone(),
            ..Default::default()
        }
    }

    /// Whether the combination makes sense; what is missing otherwise.
    pub fn check(&self) -> Result<(), TlsError> {
        if self.client_cert_auth && self.trusted_ca.is_none() {
            return Err(TlsError(
                "--client-cert-auth needs --trusted-ca-file (the CA of client certificates)".into(),
            ));
        }
        if self.client_cert_auth && self.client.is_none() {
            return Err(TlsError(
                "--client-cert-auth needs --cert-file and --key-file (client TLS)".into(),
            ));
        }
        if self.peer.is_some() != self.peer_trusted_ca.is_some() {
            return Err(TlsError(
                "peer TLS needs --peer-cert-file, --peer-key-file and --peer-trusted-ca-file \
                 together (members always verify each other)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// What the node's own outgoing connections (raft messages, snapshots,
    /// forwarded requests, joins) present and trust: the peer material when
    /// peer TLS is on, else the client-facing one when client TLS is on.
    pub fn outgoing(&self) -> Option<ClientTlsFiles> {
        if let (Some(peer), Some(ca)) = (&self.peer, &self.peer_trusted_ca) {
            return Some(ClientTlsFiles {
                trusted_ca: ca.clone(),
                identity: Some(peer.clone()),
                peer: true,
            });
        }
        let client = self.client.as_ref()?;
        Some(ClientTlsFiles {
            trusted_ca: self.trusted_ca.clone()?,
            identity: Some(client.clone()),
            peer: false,
        })
    }
}

/// A client's TLS settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// The CA that signed the servers' certificates (`--cacert`).
    pub trusted_ca: PathBuf,
    /// The client's own certificate (`--cert`/`--key`), if any.
    pub identity: Option<CertFiles>,
    /// A member's connection: asks for the peer certificate.
    pub peer: bool,
}

/// A TLS failure already put in words (with the host it concerns), carried
/// inside the `io::Error` of a failed connect.
#[derive(Debug)]
pub struct TlsFailure(pub String);

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsFailure {}

/// A TLS setting that does not load, naming the file and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

/// ring: builds with cargo and a C compiler alone (aws-lc-rs, rustls'
/// default, would offer post-quantum key exchange, which rustls deprecates
/// ring's provider over, but needs a heavier native build).
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let failed = |e: &dyn std::fmt::Display| {
        TlsError(format!(
            "cannot read certificates from {}: {e}",
            path.display()
        ))
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| failed(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed(&e))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "no certificate (PEM \"BEGIN CERTIFICATE\") in {}",
            path.display()
        )));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        TlsError(format!(
            "cannot read a private key (PEM) from {}: {e}",
            path.display()
        ))
    })
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| TlsError(format!("bad CA certificate in {}: {e}", path.display())))?;
    }
    Ok(roots)
}

fn load_certified(
    files: &CertFiles,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    CertifiedKey::from_der(certs, key, provider)
        .map(Arc::new)
        .map_err(|e| {
            TlsError(format!(
                "the key in {} does not go with the certificate in {}: {e}",
                files.key.display(),
                files.cert.display()
            ))
        })
}

/// What a set of files looked like when last loaded: a change of any
/// (modified time, length, inode) means load again.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamps(Vec<Option<(SystemTime, u64, u64)>>);

impl Stamps {
    fn of(paths: &[PathBuf]) -> Stamps {
        use std::os::unix::fs::MetadataExt;
        Stamps(
            paths
                .iter()
                .map(|p| {
                    std::fs::metadata(p)
                        .ok()
                        .and_then(|m| Some((m.modified().ok()?, m.len(), m.ino())))
                })
                .collect(),
        )
    }
}

/// Material loaded from files, loaded again when they change.
struct Reloading<T> {
    paths: Vec<PathBuf>,
    what: &'static str,
    load: Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>,
    current: Mutex<(Stamps, T)>,
}

impl<T: Clone> Reloading<T> {
    fn new(
        paths: Vec<PathBuf>,
        what: &'static str,
        load: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Reloading<T>, TlsError> {
        let stamps = Stamps::of(&paths);
        let first = load()?;
        Ok(Reloading {
            paths,
            what,
            load: Box::new(load),
            current: Mutex::new((stamps, first)),
        })
    }

    fn get(&self) -> T {
        let stamps = Stamps::of(&self.paths);
        let mut current = self.current.lock().expect("tls reload lock");
        if stamps != current.0 {
            match (self.load)() {
                Ok(loaded) => {
                    tracing::info!("{} reloaded: its files changed", self.what);
                    *current = (stamps, loaded);
                }
                Err(e) => {
                    // Keep serving with what worked; try again next time
                    // (the files may be half written).
                    tracing::warn!("{} not reloaded, keeping the previous one: {e}", self.what);
                }
            }
        }
        current.1.clone()
    }
}

/// Picks the certificate by what the connection asks for (see the module
/// doc).
#[derive(Debug)]
struct ByAlpn {
    client: Option<Arc<CertifiedKey>>,
    peer: Option<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ByAlpn {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let member = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == PEER_ALPN));
        let (first, second) = if member {
            (&self.peer, &self.client)
        } else {
            (&self.client, &self.peer)
        };
        first.clone().or_else(|| second.clone())
    }
}

#[derive(Clone)]
struct ServerState {
    acceptor: tokio_rustls::TlsAcceptor,
    /// Verifies against the peer CA alone.
    peer_verifier: Option<Arc<dyn ClientCertVerifier>>,
}

/// The node's side: accepts connections on its port (see the module doc).
pub struct ServerTls {
    files: ServerTlsFiles,
    state: Reloading<ServerState>,
}

impl ServerTls {
    /// Loads every file once (so a bad setting fails at start, naming the
    /// file). `None` when nothing is configured.
    pub fn new(files: &ServerTlsFiles) -> Result<Option<Arc<ServerTls>>, TlsError> {
        files.check()?;
        if !files.client_tls() && !files.peer_tls() {
            return Ok(None);
        }
        let mut paths = Vec::new();
        for certs in [&files.client, &files.peer].into_iter().flatten() {
            paths.push(certs.cert.clone());
            paths.push(certs.key.clone());
        }
        paths.extend(files.trusted_ca.iter().cloned());
        paths.extend(files.peer_trusted_ca.iter().cloned());
        let loaded = files.clone();
        let state = Reloading::new(paths, "the node's TLS certificates", move || {
            server_state(&loaded)
        })?;
        Ok(Some(Arc::new(ServerTls {
            files: files.clone(),
            state,
        })))
    }

    pub fn files(&self) -> &ServerTlsFiles {
        &self.files
    }

    /// Checks that the node's certificates name `host`, where members and
    /// clients reach it (its advertised address, given by the flags
    /// `reached_at` names): a certificate that does not would be refused by
    /// every one of them.
    pub fn check_names(&self, host: &str, reached_at: &str) -> Result<(), TlsError> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| TlsError(format!("{host:?} is not a TLS server name: {e}")))?;
        for (certs, flag) in [
            (&self.files.client, "--cert-file"),
            (&self.files.peer, "--peer-cert-file"),
        ] {
            let Some(certs) = certs else { continue };
            let chain = load_certs(&certs.cert)?;
            let parsed = rustls::server::ParsedCertificate::try_from(&chain[0])
                .map_err(|e| TlsError(format!("{flag} {}: {e}", certs.cert.display())))?;
            if rustls::client::verify_server_name(&parsed, &name).is_err() {
                let san = if host.parse::<std::net::IpAddr>().is_ok() {
                    format!("IP:{host}")
                } else {
                    format!("DNS:{host}")
                };
                return Err(TlsError(format!(
                    "{flag} {} does not name {host}, where this node is reached \
                     ({reached_at}): add {san} to its subjectAltName",
                    certs.cert.display()
                )));
            }
        }
        Ok(())
    }

    /// Accepts one connection: TLS if its first byte starts a handshake,
    /// plaintext otherwise (the server's policy decides what it may call).
    pub async fn accept(&self, stream: TcpStream) -> io::Result<(MaybeTls, ConnInfo)> {
        let remote = stream.peer_addr().ok();
        let mut first = [0u8; 1];
        let peeked = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no bytes from the client"))??;
        if peeked == 0 || first[0] != TLS_HANDSHAKE_BYTE {
            return Ok((MaybeTls::Plain(stream), ConnInfo::plain(remote)));
        }
        let state = self.state.get();
        let accepted = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            state.acceptor.accept(stream).into_fallible(),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?;
        let tls = match accepted {
            Ok(tls) => tls,
            Err((error, socket)) => {
                linger(socket);
                return Err(error);
            }
        };
        let (client_cert, peer, common_name) = match tls.get_ref().1.peer_certificates() {
            Some([leaf, intermediates @ ..]) => {
                let common_name = common_name(leaf);
                let allowed = self
                    .files
                    .peer_allowed_cn
                    .as_ref()
                    .is_none_or(|cn| common_name.as_ref() == Some(cn));
                let peer = allowed
                    && state.peer_verifier.as_ref().is_some_and(|v| {
                        v.verify_client_cert(leaf, intermediates, UnixTime::now())
                            .is_ok()
                    });
                (true, peer, common_name)
            }
            _ => (false, false, None),
        };
        Ok((
            MaybeTls::Server(Box::new(tls)),
            ConnInfo {
                remote,
                tls: true,
                client_cert,
                peer,
                common_name,
                over_limit: None,
            },
        ))
    }
}

/// `error` with the flags it is about in front.
fn about(flags: &str) -> impl Fn(TlsError) -> TlsError + '_ {
    move |e| TlsError(format!("{flags}: {}", e.0))
}

/// Closes a socket whose handshake failed without resetting it: the alert
/// saying why (written by the handshake) must reach the client before
/// anything else. Dropping a socket with the client's next bytes unread
/// sends a reset, which can overtake the alert (TLS 1.3 clients send
/// requests before they hear the server refused their certificate); so the
/// write side is shut and what arrives is read and dropped for a moment.
fn linger(mut socket: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::spawn(async move {
        let _ = socket.shutdown().await;
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    });
}

fn server_state(files: &ServerTlsFiles) -> Result<ServerState, TlsError> {
    let provider = provider();
    let client = files
        .client
        .as_ref()
        .map(|f| load_certified(f, &provider).map_err(about("--cert-file/--key-file")))
        .transpose()?;
    let peer = files
        .peer
        .as_ref()
        .map(|f| load_certified(f, &provider).map_err(about("--peer-cert-file/--peer-key-file")))
        .transpose()?;
    let client_roots = files
        .trusted_ca
        .as_deref()
        .map(|ca| load_roots(ca).map_err(about("--trusted-ca-file")))
        .transpose()?;
    let peer_roots = files
        .peer_trusted_ca
        .as_deref()
        .map(|ca| load_roots(ca).map_err(about("--peer-trusted-ca-file")))
        .transpose()?;
    // Client certificates verify against either CA.
    let mut either = RootCertStore::empty();
    for roots in client_roots.iter().chain(&peer_roots) {
        either.roots.extend(roots.roots.iter().cloned());
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(|e| TlsError(format!("TLS setup: {e}")))?;
    let builder = if either.is_empty() {
        builder.with_no_client_auth()
    } else {
        // Certificates are optional at the handshake: the policy refuses,
        // with a message, what needs one and came without.
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(either), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError(format!("client certificate verifier: {e}")))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut config = builder.with_cert_resolver(Arc::new(ByAlpn { client, peer }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let peer_verifier = match peer_roots {
        Some(roots) => Some(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError(format!("peer certificate verifier: {e}")))?,
        ),
        None => None,
    };
    Ok(ServerState {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        peer_verifier,
    })
}

/// What the server knows of a connection, for its policy: in each request's
/// extensions (tonic's connect info).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// Over TLS.
    pub tls: bool,
    /// With a client certificate, verified against the client or peer CA.
    pub client_cert: bool,
    /// With a certificate that chains to the peer CA: a member.
    pub peer: bool,
    /// The subject CN of the verified client certificate, if it has one
    /// (etcd takes it as the user when a request carries no token).
    pub common_name: Option<String>,
    /// `Some((open, limit))`: its client had more connections open than it
    /// may when this one came (its requests are refused, saying so).
    pub over_limit: Option<(usize, usize)>,
}

impl ConnInfo {
    /// The user a verified client certificate names: never a member's
    /// certificate (a peer certificate is not a user identity).
    pub fn certificate_user(&self) -> Option<&str> {
        if self.peer || !self.client_cert {
            return None;
        }
        self.common_name.as_deref().filter(|cn| !cn.is_empty())
    }
}

/// The subject common name of a DER certificate (first one), if any.
fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

impl ConnInfo {
    pub fn plain(remote: Option<SocketAddr>) -> ConnInfo {
        ConnInfo {
            remote,
            ..ConnInfo::default()
        }
    }
}

/// The client's side: what outgoing connections present and trust.
pub struct ClientTls {
    files: ClientTlsFiles,
    config: Reloading<Arc<ClientConfig>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("files", &self.files)
            .finish()
    }
}

impl ClientTls {
    pub fn new(files: &ClientTlsFiles) -> Result<Arc<ClientTls>, TlsError> {
        let mut paths = vec![files.trusted_ca.clone()];
        if let Some(identity) = &files.identity {
            paths.push(identity.cert.clone());
            paths.push(identity.key.clone());
        }
        let loaded = files.clone();
        let config = Reloading::new(paths, "the client's TLS certificates", move || {
            client_config(&loaded)
        })?;
        Ok(Arc::new(ClientTls {
            files: files.clone(),
            config,
        }))
    }

    pub fn files(&self) -> &ClientTlsFiles {
        &self.files
    }

    /// Opens TLS over `stream` to `host` (a name or an IP address, which
    /// the server's certificate must name).
    pub async fn connect(
        &self,
        host: &str,
        stream: TcpStream,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{host:?} is not a TLS server name: {e}"),
            )
        })?;
        let connector = tokio_rustls::TlsConnector::from(self.config.get());
        let connected = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?;
        connected.map_err(|e| match describe_failure(&e) {
            Some(why) => io::Error::other(TlsFailure(why.replace("this endpoint's host", host))),
            None => e,
        })
    }
}

fn client_config(files: &ClientTlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let roots = Arc::new(load_roots(&files.trusted_ca)?);
    let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError(format!("server certificate verifier: {e}")))?;
    // With a client certificate, TLS 1.2: there the server accepts or
    // refuses the certificate before the handshake ends, so a refusal comes
    // back from the connect with its reason. Under TLS 1.3 it comes after,
    // as an alert racing the first request, and the HTTP/2 layer above
    // often reports only "operation was canceled".
    let versions: &[&rustls::SupportedProtocolVersion] = if files.identity.is_some() {
        &[&rustls::version::TLS12]
    } else {
        rustls::DEFAULT_VERSIONS
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| TlsError(format!("TLS setup: {e}")))?
        .with_webpki_verifier(verifier);
    let mut config = match &files.identity {
        Some(identity) => {
            let certified = load_certified(identity, &provider)?;
            builder
                .with_client_auth_cert(certified.cert.clone(), load_key(&identity.key)?)
                .map_err(|e| TlsError(format!("client certificate: {e}")))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    if files.peer {
        config.alpn_protocols.push(PEER_ALPN.to_vec());
    }
    Ok(Arc::new(config))
}

/// A connection, plaintext or TLS (either side).
#[derive(Debug)]
pub enum MaybeTls {
    Plain(TcpStream),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

macro_rules! each_stream {
    ($self:expr, $s:ident => $body:expr) => {
        match $self.get_mut() {
            MaybeTls::Plain($s) => {
                let $s = Pin::new($s);
                $body
            }
            MaybeTls::Client($s) => {
                let $s = Pin::new(&mut **$s);
                $body
            }
            MaybeTls::Server($s) => {
                let $s = Pin::new(&mut **$s);
                $body
            }
        }
    };
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each_stream!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each_stream!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each_stream!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Client(s) => s.is_write_vectored(),
            MaybeTls::Server(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_stream!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_stream!(self, s => s.poll_shutdown(cx))
    }
}

/// An accepted connection and what the server knows of it.
#[derive(Debug)]
pub struct Accepted {
    pub io: MaybeTls,
    pub info: ConnInfo,
    /// Held for as long as the connection lives (a per-client count).
    pub slot: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl AsyncRead for Accepted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
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

impl tonic::transport::server::Connected for Accepted {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// What went wrong with TLS in a failed call, in words a user can act on,
/// when the error (or one of its sources) is a TLS failure: the handshake's
/// own, or an alert the server sent when it refused the client's
/// certificate (TLS 1.3 sends that after the client thinks it connected).
pub fn describe_failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    use rustls::{AlertDescription as Alert, CertificateError as Cert, Error as Tls};
    let mut source = Some(error);
    while let Some(error) = source {
        let described = error.downcast_ref::<TlsFailure>().or_else(|| {
            error
                .downcast_ref::<io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<TlsFailure>())
        });
        if let Some(described) = described {
            return Some(described.0.clone());
        }
        let tls = error.downcast_ref::<Tls>().or_else(|| {
            error
                .downcast_ref::<io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<Tls>())
        });
        // h2 keeps only the text of an I/O error: an alert that ended an
        // established connection arrives as words.
        let alert = tls
            .is_none()
            .then(|| alert_in_text(&error.to_string()))
            .flatten();
        let tls = tls.or(alert.as_ref());
        if let Some(tls) = tls {
            let what = match tls {
                Tls::InvalidCertificate(Cert::UnknownIssuer | Cert::BadSignature) => {
                    "certificate signed by unknown authority: the server's certificate does \
                     not chain to --cacert"
                        .to_string()
                }
                Tls::InvalidCertificate(
                    Cert::Expired
                    | Cert::ExpiredContext { .. }
                    | Cert::NotValidYet
                    | Cert::NotValidYetContext { .. },
                ) => "the server's certificate has expired or is not valid yet".to_string(),
                Tls::InvalidCertificate(
                    Cert::NotValidForName | Cert::NotValidForNameContext { .. },
                ) => "the server's certificate does not name this endpoint's host (it needs \
                      IP:this endpoint's host, or DNS:name, in its subjectAltName)"
                    .to_string(),
                Tls::InvalidCertificate(
                    Cert::InvalidPurpose | Cert::InvalidPurposeContext { .. },
                ) => "the server's certificate is not for serving (it needs extendedKeyUsage \
                     serverAuth)"
                    .to_string(),
                Tls::InvalidCertificate(other) => {
                    format!("the server's certificate is not valid: {other:?}")
                }
                Tls::AlertReceived(Alert::UnknownCA | Alert::BadCertificate) => {
                    "the server refused this client's certificate: signed by an authority it \
                     does not trust (its --trusted-ca-file)"
                        .to_string()
                }
                Tls::AlertReceived(Alert::CertificateExpired) => {
                    "the server refused this client's certificate: it has expired".to_string()
                }
                Tls::AlertReceived(Alert::CertificateRequired) => {
                    "the server requires a client certificate: give --cert and --key".to_string()
                }
                Tls::AlertReceived(Alert::UnsupportedCertificate) => {
                    "the server refused this client's certificate: it is not for clients (it \
                     needs extendedKeyUsage clientAuth)"
                        .to_string()
                }
                Tls::AlertReceived(Alert::CertificateUnknown | Alert::CertificateRevoked) => {
                    "the server refused this client's certificate".to_string()
                }
                Tls::InvalidMessage(_) | Tls::InappropriateMessage { .. } => format!(
                    "TLS failed ({tls}): does this endpoint serve TLS (a server with --cert-file)?"
                ),
                other => format!("TLS failed: {other}"),
            };
            return Some(what);
        }
        source = error.source();
    }
    None
}

/// The alert in rustls's words for it ("received fatal alert: UnknownCA").
fn alert_in_text(text: &str) -> Option<rustls::Error> {
    use rustls::AlertDescription as Alert;
    let name = text.split("received fatal alert: ").nth(1)?;
    let name: String = name
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    let alert = [
        Alert::UnknownCA,
        Alert::BadCertificate,
        Alert::CertificateExpired,
        Alert::CertificateRequired,
        Alert::CertificateUnknown,
        Alert::CertificateRevoked,
        Alert::UnsupportedCertificate,
        Alert::HandshakeFailure,
    ]
    .into_iter()
    .find(|alert| format!("{alert:?}") == name)?;
    Some(rustls::Error::AlertReceived(alert))
}
