//! Who is calling, and whether they may: etcd's authentication model on
//! every API of the node's port.
//!
//! A gate in front of every route (as the TLS policy is) works out the
//! caller of each request once: the user a `token` header names (a token
//! any member can check, `auth_token.rs`), else the CN of a verified client
//! certificate (a member's certificate is never a user), else a member
//! connection under peer TLS (the node's own calls: joining, forwarding a
//! call that already carries its user's token). It puts the `Caller` in the
//! request's extensions and refuses at once what needs a user and has none,
//! and what needs root and is not. The services then check keys against
//! the caller's roles (`check`), and pass the caller with every write, which
//! is checked again when applied (`raftkv_kv::auth`).
//!
//! While auth is off every caller is `Anonymous` and everything is allowed.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use raftkv_kv::auth::{Access, AuthStore, Denied};
use raftkv_net::tls::ConnInfo;
use raftkv_proto::v1::ErrorKind;
use raftkv_replica::{Caller, Replica};
use tonic::{Request, Status};

use crate::auth_token;
use crate::errors::error_status;

/// The metadata header etcd clients send their token in.
pub const TOKEN_HEADER: &str = "token";

// etcd's texts (api/v3rpc/rpctypes), which etcd clients match on.
pub const USER_EMPTY: &str = "etcdserver: user name is empty";
pub const PERMISSION_DENIED: &str = "etcdserver: permission denied";
pub const AUTH_FAILED: &str = "etcdserver: authentication failed, invalid user ID or password";
pub const AUTH_NOT_ENABLED: &str = "etcdserver: authentication is not enabled";

/// What a raftkv.v1 caller without a user is told.
const NO_USER: &str = "authentication required: auth is enabled and the request names no user \
                       (give --user NAME, or a client certificate whose CN is a user)";

/// How long a token made for a request forwarded to the leader is good.
const FORWARD_TOKEN_TTL: Duration = Duration::from_secs(60);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a path needs of its caller while auth is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    /// Nothing (logging in, status, member lists, raft between members,
    /// HTTP health and metrics).
    Nothing,
    /// A user (the service checks its keys).
    User,
    /// The root role (or the node itself: see `member_path`).
    Root,
}

/// The calls a node makes as itself (joining, its promotion, a new
/// address, finding the cluster): on a member's connection (peer TLS) with
/// no token they are the node's. Anything else a member sends without a
/// token (a request it forwards while it still sees auth off) is no one's.
fn member_path(path: &str) -> bool {
    matches!(
        path,
        "/raftkv.v1.Cluster/AddNode"
            | "/raftkv.v1.Cluster/PromoteNode"
            | "/raftkv.v1.Cluster/SetMemberAddress"
            | "/raftkv.v1.Cluster/Members"
            | "/raftkv.v1.Cluster/Status"
            | "/etcdserverpb.Maintenance/HashKV"
    ) || path.starts_with("/raftkv.v1.Peer/")
}

/// The user a node logs in as for the membership calls it makes itself
/// (`--join`, its promotion, a new address) when auth is on and the
/// cluster has no peer TLS: RAFTKV_USER and RAFTKV_PASSWORD in the server's
/// environment (a root user). With peer TLS its certificate is enough.
pub fn node_credentials() -> Option<raftkv_client::Credentials> {
    let user = std::env::var("RAFTKV_USER")
        .ok()
        .filter(|u| !u.is_empty())?;
    let password = std::env::var("RAFTKV_PASSWORD").unwrap_or_default();
    Some(raftkv_client::Credentials { user, password })
}

fn need(path: &str) -> Need {
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return Need::Nothing;
    };
    match (service, method) {
        ("raftkv.v1.Peer", _) => Need::Nothing,
        ("etcdserverpb.Auth", "Authenticate" | "AuthStatus") => Need::Nothing,
        // Anyone may read their own user and roles (the service checks).
        ("etcdserverpb.Auth", "UserGet" | "RoleGet") => Need::User,
        ("etcdserverpb.Auth", _) => Need::Root,
        ("etcdserverpb.Maintenance", "Status") => Need::Nothing,
        ("etcdserverpb.Maintenance", _) => Need::Root,
        ("etcdserverpb.Cluster", "MemberList") => Need::Nothing,
        ("etcdserverpb.Cluster", _) => Need::Root,
        ("etcdserverpb.KV", "Compact") => Need::Root,
        ("raftkv.v1.Cluster", "Status" | "Members") => Need::Nothing,
        ("raftkv.v1.Cluster", _) => Need::Root,
        ("raftkv.v1.Debug", _) => Need::Root,
        (s, _) if s.starts_with("grpc.") => Need::Nothing,
        _ => Need::User,
    }
}

/// The auth side of a node: who calls, what they may, tokens.
#[derive(Clone)]
pub struct Auth {
    replica: Replica,
    /// `--auth-token-ttl`.
    token_ttl: Duration,
    /// Password checks are slow on purpose: at most this many at once, so
    /// a flood of logins cannot take every core.
    hashing: Arc<tokio::sync::Semaphore>,
}

impl Auth {
    pub fn new(replica: Replica, token_ttl: Duration) -> Auth {
        Auth {
            replica,
            token_ttl,
            hashing: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// The caller of a request with these headers over this connection;
    /// `Err`: the token it carries is not good.
    fn resolve(
        &self,
        store: &AuthStore,
        path: &str,
        token: Option<&str>,
        connection: &ConnInfo,
    ) -> Result<Caller, &'static str> {
        if !store.enabled {
            return Ok(Caller::Anonymous);
        }
        if let Some(token) = token {
            let (user, since) = auth_token::verify(&store.secret, token, now_ms())?;
            // Deleted since, or its password changed: no longer good.
            if store.users.get(&user).map(|u| u.since) != Some(since) {
                return Err(auth_token::INVALID_TOKEN);
            }
            return Ok(Caller::User(user));
        }
        if connection.peer && member_path(path) {
            return Ok(Caller::Node);
        }
        Ok(match connection.certificate_user() {
            Some(user) => Caller::User(user.to_string()),
            None => Caller::Anonymous,
        })
    }

    /// Why a request for `path` from `caller` is refused before it is
    /// served, as etcd's text for etcd paths and RaftKV's for its own.
    fn refusal(&self, store: &AuthStore, path: &str, caller: &Caller) -> Option<Status> {
        if !store.enabled {
            return None;
        }
        let etcd = !path.starts_with("/raftkv.");
        let no_user = || {
            Some(if etcd {
                Status::invalid_argument(USER_EMPTY)
            } else {
                error_status(
                    ErrorKind::PermissionDenied,
                    NO_USER,
                    Default::default(),
                    false,
                )
            })
        };
        match (need(path), caller) {
            (Need::Nothing, _) | (_, Caller::Node) => None,
            (_, Caller::Anonymous) => no_user(),
            (Need::User, Caller::User(_)) => None,
            (Need::Root, Caller::User(user)) if store.is_root(user) => None,
            (Need::Root, Caller::User(user)) => Some(if etcd {
                Status::permission_denied(PERMISSION_DENIED)
            } else {
                error_status(
                    ErrorKind::PermissionDenied,
                    format!("permission denied: user {user} does not have the root role"),
                    Default::default(),
                    false,
                )
            }),
        }
    }

    /// Puts the gate in front of every route of `router`.
    pub fn apply(self, router: &mut axum::Router) {
        let routes = std::mem::take(router);
        *router = routes.layer(GateLayer(Arc::new(self)));
    }

    /// The caller of `request`, or the refusal to answer it with. Decided
    /// at once (no waiting), from the request's connection and headers.
    fn verdict(&self, request: &axum::extract::Request) -> Result<Caller, Status> {
        let connection = request
            .extensions()
            .get::<ConnInfo>()
            .cloned()
            .unwrap_or_default();
        let path = request.uri().path();
        if let Some((open, limit)) = connection.over_limit {
            if !path.starts_with("/raftkv.v1.Peer/") {
                return Err(too_many_connections(path, &connection, open, limit));
            }
        }
        let token = request
            .headers()
            .get(TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|_| need(path) != Need::Nothing);
        let kv = self.replica.kv();
        let store = kv.auth();
        match self.resolve(store, path, token, &connection) {
            Ok(caller) => match self.refusal(store, path, &caller) {
                None => Ok(caller),
                Some(status) => Err(status),
            },
            Err(text) => Err(if path.starts_with("/raftkv.") {
                error_status(
                    ErrorKind::Unauthenticated,
                    "authentication failed: the token is not valid (expired, or its user was \
                     deleted); log in again",
                    Default::default(),
                    false,
                )
            } else {
                Status::unauthenticated(text)
            }),
        }
    }

    /// A token for `user`, good for `--auth-token-ttl`.
    pub fn issue_token(&self, user: &str) -> Result<String, Status> {
        let kv = self.replica.kv();
        let store = kv.auth();
        if !store.enabled {
            return Err(Status::failed_precondition(AUTH_NOT_ENABLED));
        }
        Ok(token_for(store, user, self.token_ttl))
    }

    /// Checks `password` against `user`'s hash off the async threads; the
    /// user's name on success.
    pub async fn check_password(&self, user: &str, password: &str) -> Result<(), Status> {
        let hash = {
            let kv = self.replica.kv();
            let store = kv.auth();
            if !store.enabled {
                return Err(Status::failed_precondition(AUTH_NOT_ENABLED));
            }
            match store.users.get(user) {
                Some(u) if !u.no_password && !u.password_hash.is_empty() => u.password_hash.clone(),
                _ => return Err(Status::invalid_argument(AUTH_FAILED)),
            }
        };
        let password = password.to_string();
        let good = self
            .slowly(move || verify_password(&hash, &password))
            .await?;
        if good {
            Ok(())
        } else {
            Err(Status::invalid_argument(AUTH_FAILED))
        }
    }

    /// Hashes `password` (argon2, random salt) off the async threads.
    pub async fn hash_password(&self, password: &str) -> Result<String, Status> {
        let password = password.to_string();
        self.slowly(move || hash_password(&password)).await?
    }

    /// Runs a password hash's work on a blocking thread, one at a time.
    async fn slowly<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Status> {
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|_| Status::unavailable("shutting down"))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| Status::internal(format!("hashing the password failed: {e}")))
    }
}

/// The user whose permissions `caller` has while auth is on: `None` for
/// the node itself (it may do anything); an anonymous caller is the user
/// with no name, who may do nothing (a stream opened before auth was turned
/// on gets nothing more once it is).
fn user_of(caller: &Caller) -> Option<&str> {
    match caller {
        Caller::User(user) => Some(user),
        Caller::Anonymous => Some(""),
        Caller::Node => None,
    }
}

/// Whether `caller` may `access` `[key, range_end)` now.
pub fn check(
    replica: &Replica,
    caller: &Caller,
    access: Access,
    key: &[u8],
    range_end: &[u8],
) -> Result<(), Denied> {
    match user_of(caller).filter(|_| replica.auth_enabled()) {
        Some(user) => replica.kv().auth().check(user, access, key, range_end),
        None => Ok(()),
    }
}

/// Whether `caller` may run `txn` now.
pub fn check_txn(
    replica: &Replica,
    caller: &Caller,
    txn: &raftkv_proto::etcdserverpb::TxnRequest,
) -> Result<(), Denied> {
    match user_of(caller).filter(|_| replica.auth_enabled()) {
        Some(user) => replica.kv().auth().check_txn(user, txn),
        None => Ok(()),
    }
}

/// Whether `caller` may read any key of `[key, range_end)` now (a watch it
/// may read nothing of is refused).
pub fn may_read_any(replica: &Replica, caller: &Caller, key: &[u8], range_end: &[u8]) -> bool {
    match user_of(caller).filter(|_| replica.auth_enabled()) {
        Some(user) => replica.kv().auth().may_read_any(user, key, range_end),
        None => true,
    }
}

/// Whether `caller` may read `key` now (a watcher gets only these).
pub fn may_read(replica: &Replica, caller: &Caller, key: &[u8]) -> bool {
    check(replica, caller, Access::Read, key, &[]).is_ok()
}

/// The gate as a tower layer: decided synchronously, so a request that
/// passes costs no extra allocation (while auth is off and the connection
/// within its limit, one atomic load).
#[derive(Clone)]
struct GateLayer(Arc<Auth>);

impl<S> tower_layer::Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Gate<S> {
        Gate {
            inner,
            auth: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct Gate<S> {
    inner: S,
    auth: Arc<Auth>,
}

type Refused<E> = std::future::Ready<Result<axum::response::Response, E>>;

impl<S> tower_service::Service<axum::extract::Request> for Gate<S>
where
    S: tower_service::Service<axum::extract::Request, Response = axum::response::Response>,
{
    type Response = axum::response::Response;
    type Error = S::Error;
    type Future = futures::future::Either<S::Future, Refused<S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: axum::extract::Request) -> Self::Future {
        let over_limit = request
            .extensions()
            .get::<ConnInfo>()
            .is_some_and(|c| c.over_limit.is_some());
        if !self.auth.replica.auth_enabled() && !over_limit {
            // Auth off: no caller to find (`caller_of` says `Anonymous`;
            // writes are checked again when applied, should it come on
            // meanwhile).
            return futures::future::Either::Left(self.inner.call(request));
        }
        match self.auth.verdict(&request) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                futures::future::Either::Left(self.inner.call(request))
            }
            Err(status) => futures::future::Either::Right(std::future::ready(Ok(status
                .into_http::<axum::body::Body>(
            )))),
        }
    }
}

/// The refusal of a request on a connection past its client's limit.
fn too_many_connections(path: &str, connection: &ConnInfo, open: usize, limit: usize) -> Status {
    let who = connection
        .remote
        .map_or("this client".to_string(), |a| a.ip().to_string());
    let text = format!(
        "too many connections from {who}: {open} open, at most {limit} per client \
         (--max-connections-per-client); reuse connections, or close some"
    );
    if path.starts_with("/raftkv.") {
        error_status(ErrorKind::Rejected, text, Default::default(), false)
    } else {
        Status::resource_exhausted(text)
    }
}

/// The caller the gate found for `request` (`Anonymous` if none: auth off,
/// or a request built in-process).
pub fn caller_of<T>(request: &Request<T>) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_default()
}

/// Marks `request`, about to be forwarded to the leader, with a token for
/// `caller` made with the cluster's secret, so the leader serves it as
/// that user (whatever way the user was known here).
pub fn forward_as<T>(replica: &Replica, caller: &Caller, request: &mut Request<T>) {
    let Caller::User(user) = caller else {
        return;
    };
    let token = {
        let kv = replica.kv();
        let store = kv.auth();
        if !store.enabled {
            return;
        }
        token_for(store, user, FORWARD_TOKEN_TTL)
    };
    if let Ok(value) = token.parse() {
        request.metadata_mut().insert(TOKEN_HEADER, value);
    }
}

/// A token for `user` (as of its `since`) good for `ttl` from now.
fn token_for(store: &AuthStore, user: &str, ttl: Duration) -> String {
    let since = store.users.get(user).map_or(0, |u| u.since);
    let expires = now_ms() + ttl.as_millis() as u64;
    auth_token::issue(&store.secret, user, since, expires)
}

/// etcd's status for a refused key access.
pub fn etcd_denied(_denied: Denied) -> Status {
    Status::permission_denied(PERMISSION_DENIED)
}

/// RaftKV's status for a refused key access ("permission denied: user
/// alice may not write key b/1").
pub fn denied_status(denied: Denied, header: raftkv_proto::v1::ResponseHeader) -> Status {
    crate::errors::permission_denied(denied.to_string(), header)
}

fn hash_password(password: &str) -> Result<String, Status> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| Status::internal(format!("hashing the password failed: {e}")))
}

fn verify_password(hash: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|parsed| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// Whether `hash` is a password hash this node can check (a client may
/// send one instead of the password, as etcd 3.5 allows).
pub fn is_password_hash(hash: &str) -> bool {
    argon2::password_hash::PasswordHash::new(hash).is_ok_and(|h| h.algorithm.as_str() == "argon2id")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_need_what_etcd_needs() {
        assert_eq!(need("/etcdserverpb.Auth/Authenticate"), Need::Nothing);
        assert_eq!(need("/etcdserverpb.Auth/UserAdd"), Need::Root);
        assert_eq!(need("/etcdserverpb.KV/Range"), Need::User);
        assert_eq!(need("/etcdserverpb.KV/Compact"), Need::Root);
        assert_eq!(need("/etcdserverpb.Watch/Watch"), Need::User);
        assert_eq!(need("/raftkv.v1.KV/Put"), Need::User);
        assert_eq!(need("/raftkv.v1.Cluster/RemoveNode"), Need::Root);
        assert_eq!(need("/raftkv.v1.Cluster/AddNode"), Need::Root);
        assert!(member_path("/raftkv.v1.Cluster/AddNode"));
        assert!(
            !member_path("/etcdserverpb.KV/Put"),
            "a forwarded call is a user's"
        );
        assert!(!member_path("/etcdserverpb.Auth/AuthDisable"));
        assert_eq!(need("/raftkv.v1.Debug/Compact"), Need::Root);
        assert_eq!(need("/raftkv.v1.Peer/Raft"), Need::Nothing);
        assert_eq!(need("/metrics"), Need::Nothing);
    }

    #[test]
    fn passwords_hash_with_a_salt_and_check() {
        let a = hash_password("secret").unwrap();
        let b = hash_password("secret").unwrap();
        assert_ne!(a, b, "salted");
        assert!(is_password_hash(&a));
        assert!(verify_password(&a, "secret"));
        assert!(!verify_password(&a, "Secret"));
        assert!(!verify_password("not a hash", "secret"));
    }
}
