//! Who may call what on the node's one port, decided per request from the
//! connection it came on (raftkv-net's `tls` tells a TLS connection from a
//! plaintext one, and a member's certificate from a client's):
//!
//! - a connection with a member's certificate (peer CA) may call anything;
//! - the peer service (`raftkv.v1.Peer`: raft messages, snapshots) needs a
//!   member's certificate once peer TLS is on, so nothing else reaches raft;
//! - with client TLS on (`--cert-file`), every other request needs TLS, and
//!   with `--client-cert-auth` a client certificate too.
//!
//! A refused request gets an error saying what is missing (a gRPC status
//! for gRPC, a plain 403 for HTTP), not a dropped connection.

use std::io;
use std::sync::Arc;

use futures::Stream;
use raftkv_net::tls::{Accepted, ConnInfo, MaybeTls, ServerTls, ServerTlsFiles};
use raftkv_net::CoalescingIo;
use tokio::net::TcpStream;

/// The gRPC path prefix of the peer service.
const PEER_SERVICE: &str = "/raftkv.v1.Peer/";
/// Connections accepted but not yet handed to the server (handshakes
/// finished meanwhile wait here).
const ACCEPTED_BACKLOG: usize = 64;

#[derive(Clone)]
pub struct Policy {
    files: Arc<ServerTlsFiles>,
    /// `raftkv_tls_refused_total`.
    refused: prometheus::IntCounterVec,
}

/// Why a request was refused: the metric's reason and the caller's message.
type Refusal = (&'static str, String);

impl Policy {
    pub fn new(files: ServerTlsFiles, refused: prometheus::IntCounterVec) -> Policy {
        Policy {
            files: Arc::new(files),
            refused,
        }
    }

    /// Why a request for `path` on this connection is refused, if it is.
    fn refusal(&self, connection: &ConnInfo, path: &str) -> Option<Refusal> {
        if connection.peer {
            return None;
        }
        if path.starts_with(PEER_SERVICE) {
            return self.files.peer_tls().then(|| {
                (
                    "not_a_member",
                    "peer traffic needs TLS with a member's certificate (signed by the peer \
                     CA, --peer-trusted-ca-file)"
                        .to_string(),
                )
            });
        }
        if !self.files.client_tls() {
            return None;
        }
        if !connection.tls {
            return Some((
                "plaintext",
                "TLS required (server has --cert-file): use https:// endpoints and --cacert"
                    .to_string(),
            ));
        }
        if self.files.client_cert_auth && !connection.client_cert {
            return Some((
                "no_client_cert",
                "client certificate required (server has --client-cert-auth): give --cert and \
                 --key"
                    .to_string(),
            ));
        }
        None
    }

    /// Puts the policy in front of every route of `router`.
    pub fn apply(self, router: &mut axum::Router) {
        if !self.files.client_tls() && !self.files.peer_tls() {
            return;
        }
        let routes = std::mem::take(router);
        *router = routes.layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let policy = self.clone();
                async move {
                    let connection = request
                        .extensions()
                        .get::<ConnInfo>()
                        .cloned()
                        .unwrap_or_default();
                    match policy.refusal(&connection, request.uri().path()) {
                        None => next.run(request).await,
                        Some((reason, why)) => {
                            policy.refused.with_label_values(&[reason]).inc();
                            refused(&request, why)
                        }
                    }
                }
            },
        ));
    }
}

fn refused(request: &axum::extract::Request, why: String) -> axum::response::Response {
    refused_with(request, tonic::Code::Unauthenticated, why)
}

/// A refusal saying `why`: a gRPC status with `code` to a gRPC request, a
/// plain 403 to any other.
pub fn refused_with(
    request: &axum::extract::Request,
    code: tonic::Code,
    why: String,
) -> axum::response::Response {
    let grpc = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        tonic::Status::new(code, why).into_http::<axum::body::Body>()
    } else {
        let mut response = axum::response::Response::new(axum::body::Body::from(why + "\n"));
        *response.status_mut() = axum::http::StatusCode::FORBIDDEN;
        response
    }
}

/// Logs something at most once a minute.
struct Seldom {
    last: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Seldom {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(60);

    fn due(&self) -> bool {
        let mut last = self.last.lock().expect("log limiter lock");
        let now = std::time::Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < Self::EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }
}

static HANDSHAKE_LOG: Seldom = Seldom {
    last: std::sync::Mutex::new(None),
};

/// How many connections one client (IP address) may hold open at once
/// (`--max-connections-per-client`; 0: no limit). A connection past the
/// limit is accepted, but its requests are refused saying why (a closed
/// socket would tell the client nothing); raft traffic is never refused.
#[derive(Clone)]
pub struct ConnectionLimit {
    per_client: usize,
    open: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
}

/// One open connection of a client, counted until dropped.
struct Slot {
    ip: std::net::IpAddr,
    open: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("connection counts lock");
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

type Admitted = (
    Option<Box<dyn std::any::Any + Send + Sync>>,
    Option<(usize, usize)>,
);

impl ConnectionLimit {
    pub fn new(per_client: usize) -> ConnectionLimit {
        ConnectionLimit {
            per_client,
            open: Default::default(),
        }
    }

    /// Counts a new connection from `remote`: its slot, and `Some((open,
    /// limit))` if that is more than its client may hold.
    fn admit(&self, remote: Option<std::net::SocketAddr>) -> Admitted {
        let Some(remote) = remote.filter(|_| self.per_client > 0) else {
            return (None, None);
        };
        let ip = remote.ip();
        let mut open = self.open.lock().expect("connection counts lock");
        let count = open.entry(ip).or_insert(0);
        *count += 1;
        let over = (*count > self.per_client).then_some((*count, self.per_client));
        let slot = Slot {
            ip,
            open: self.open.clone(),
        };
        (Some(Box::new(slot)), over)
    }
}

/// The server's connections: each accepted socket goes through the TLS
/// handshake (when TLS is configured and the client starts one) in its own
/// task, so a slow or failed handshake holds up no other connection. Once
/// `stop` is set the listener is closed: while the server finishes what is
/// in flight, a client that connects is refused at once (and tries another
/// member) instead of waiting on a connection nobody serves.
pub fn accept(
    incoming: impl Stream<Item = io::Result<TcpStream>> + Send + 'static,
    tls: Option<Arc<ServerTls>>,
    refused: prometheus::IntCounterVec,
    limit: ConnectionLimit,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> impl Stream<Item = io::Result<CoalescingIo<Accepted>>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(ACCEPTED_BACKLOG);
    tokio::spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        loop {
            let next = tokio::select! {
                next = futures::StreamExt::next(&mut incoming) => next,
                _ = stop.wait_for(|stop| *stop) => return,
            };
            let Some(next) = next else {
                return;
            };
            let stream = match next {
                Ok(stream) => stream,
                Err(e) => {
                    if sender.send(Err(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let sender = sender.clone();
            let (slot, over_limit) = limit.admit(stream.peer_addr().ok());
            match &tls {
                None => {
                    let mut info = ConnInfo::plain(stream.peer_addr().ok());
                    info.over_limit = over_limit;
                    let accepted = Accepted {
                        io: MaybeTls::Plain(stream),
                        info,
                        slot,
                    };
                    if sender.send(Ok(CoalescingIo::new(accepted))).await.is_err() {
                        return;
                    }
                }
                Some(tls) => {
                    let tls = tls.clone();
                    let refused = refused.clone();
                    tokio::spawn(async move {
                        let remote = stream.peer_addr().ok();
                        match tls.accept(stream).await {
                            Ok((io, mut info)) => {
                                info.over_limit = over_limit;
                                let accepted = Accepted { io, info, slot };
                                let _ = sender.send(Ok(CoalescingIo::new(accepted))).await;
                            }
                            Err(e) => {
                                refused.with_label_values(&["handshake"]).inc();
                                if HANDSHAKE_LOG.due() {
                                    tracing::warn!(
                                        "TLS handshake from {} failed: {e} (failures are \
                                         logged at most once a minute; all are counted in \
                                         raftkv_tls_refused_total{{reason=\"handshake\"}})",
                                        remote.map_or("?".to_string(), |a| a.to_string())
                                    );
                                }
                            }
                        }
                    });
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftkv_net::tls::CertFiles;

    fn policy(client: bool, client_cert_auth: bool, peer: bool) -> Policy {
        let refused = prometheus::IntCounterVec::new(
            prometheus::Opts::new("refused", "refused"),
            &["reason"],
        )
        .unwrap();
        Policy::new(files(client, client_cert_auth, peer), refused)
    }

    fn files(client: bool, client_cert_auth: bool, peer: bool) -> ServerTlsFiles {
        let certs = || {
            Some(CertFiles {
                cert: "c.pem".into(),
                key: "k.pem".into(),
            })
        };
        ServerTlsFiles {
            client: if client { certs() } else { None },
            trusted_ca: client_cert_auth.then(|| "ca.pem".into()),
            client_cert_auth,
            peer: if peer { certs() } else { None },
            peer_trusted_ca: peer.then(|| "peer-ca.pem".into()),
            peer_allowed_cn: None,
        }
    }

    fn connection(tls: bool, client_cert: bool, peer: bool) -> ConnInfo {
        ConnInfo {
            remote: None,
            tls,
            client_cert,
            peer,
            common_name: None,
            over_limit: None,
        }
    }

    const KV: &str = "/raftkv.v1.KV/Put";
    const RAFT: &str = "/raftkv.v1.Peer/Raft";

    #[test]
    fn client_tls_refuses_plaintext_and_missing_certificates() {
        let policy = policy(true, true, false);
        let (_, plain) = policy
            .refusal(&connection(false, false, false), KV)
            .unwrap();
        assert!(plain.starts_with("TLS required"), "{plain}");
        let (_, anonymous) = policy.refusal(&connection(true, false, false), KV).unwrap();
        assert!(anonymous.contains("--client-cert-auth"), "{anonymous}");
        assert_eq!(policy.refusal(&connection(true, true, false), KV), None);
        // Peer TLS off: raft traffic may stay plaintext.
        assert_eq!(policy.refusal(&connection(false, false, false), RAFT), None);
        assert!(policy
            .refusal(&connection(false, false, false), "/metrics")
            .is_some());
    }

    #[test]
    fn a_client_past_its_connection_limit_is_marked_until_one_closes() {
        let limit = ConnectionLimit::new(2);
        let from = |port| Some(std::net::SocketAddr::from(([10, 0, 0, 1], port)));
        let (a, over_a) = limit.admit(from(1));
        let (_b, over_b) = limit.admit(from(2));
        let (_c, over_c) = limit.admit(from(3));
        assert_eq!((over_a, over_b, over_c), (None, None, Some((3, 2))));
        // Another client has its own count.
        let other = limit.admit(Some(std::net::SocketAddr::from(([10, 0, 0, 2], 1))));
        assert_eq!(other.1, None);
        drop(a);
        drop(_c);
        assert_eq!(limit.admit(from(4)).1, None, "a slot freed on close");
        assert_eq!(
            ConnectionLimit::new(0).admit(from(5)).1,
            None,
            "0: no limit"
        );
    }

    #[test]
    fn peer_tls_admits_only_members_to_raft() {
        let policy = policy(false, false, true);
        let (reason, plain) = policy
            .refusal(&connection(false, false, false), RAFT)
            .unwrap();
        assert_eq!(reason, "not_a_member");
        assert!(plain.contains("member's certificate"), "{plain}");
        // A client's certificate is not a member's.
        assert!(policy
            .refusal(&connection(true, true, false), RAFT)
            .is_some());
        assert_eq!(policy.refusal(&connection(true, true, true), RAFT), None);
        // Client TLS off: clients may stay plaintext.
        assert_eq!(policy.refusal(&connection(false, false, false), KV), None);
    }

    #[test]
    fn members_may_call_anything() {
        let policy = policy(true, true, true);
        for path in [KV, RAFT, "/etcdserverpb.KV/Range", "/metrics"] {
            assert_eq!(policy.refusal(&connection(true, true, true), path), None);
        }
    }
}
