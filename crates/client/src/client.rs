//! `Client`: routing (leader for writes and linearizable reads, the first
//! endpoint for stale reads and status), retries, and the KV operations.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use raftkv_proto::v1 as pb;
use raftkv_proto::v1::cluster_client::ClusterClient;
use raftkv_proto::v1::kv_client::KvClient;
use tokio::time::Instant;
use tonic::transport::Endpoint;
use tonic::Status;

use crate::auth::{Channel, Credentials, Token};
use crate::deadline::Deadline;
use crate::error::{Error, Unreachable};
use crate::session::Session;

/// Values above this go through the streaming RPCs, in chunks.
const STREAM_VALUE_ABOVE_BYTES: usize = 1024 * 1024;
const VALUE_CHUNK_BYTES: usize = 1024 * 1024;
/// gRPC messages the client accepts (scan pages, inline values).
const MAX_GRPC_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// A write is not sent again later than this after its first attempt. The
/// state machine never drops a session active within the last two minutes of
/// log time (`SessionLimits::min_idle_before_eviction_ms`), so every retry
/// still finds the session of a write that was applied: it cannot apply twice.
pub const WRITE_RETRY_WINDOW: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
/// Retries while no leader serves are at most this far apart, so a client
/// notices a new leader within ~100 ms of its election.
const MAX_BACKOFF: Duration = Duration::from_millis(100);

/// Read consistency (docs/REFERENCE.md §2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// ReadIndex through the leader (the default).
    #[default]
    Linearizable,
    /// Leader lease read; the server falls back to ReadIndex when unsure.
    Lease,
    /// The first endpoint's local state; may be stale.
    Stale,
}

impl Consistency {
    fn to_proto(self) -> i32 {
        match self {
            Consistency::Linearizable => pb::Consistency::Linearizable as i32,
            Consistency::Lease => pb::Consistency::Lease as i32,
            Consistency::Stale => pb::Consistency::Stale as i32,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Overall deadline of one operation, retries included.
    pub timeout: Duration,
    /// Deadline of one TCP connect.
    pub connect_timeout: Duration,
    /// TLS to every endpoint (`https://`): the CA to trust and the client's
    /// certificate, if any. `None`: plaintext.
    pub tls: Option<Arc<raftkv_net::tls::ClientTls>>,
    /// Log in as this user before the first call (auth on).
    pub credentials: Option<Credentials>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            tls: None,
            credentials: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ScanOptions {
    /// Keys per page (server default 1000, at most 10000).
    pub limit: u32,
    /// Matches to skip.
    pub offset: u64,
    /// Exclusive start key (cursor from the previous page).
    pub after: Option<Bytes>,
    pub keys_only: bool,
    pub consistency: Consistency,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            limit: 1000,
            offset: 0,
            after: None,
            keys_only: false,
            consistency: Consistency::Linearizable,
        }
    }
}

/// A key's revisions (etcd's meaning): the store revision that created the
/// key's current generation, the one that last wrote it, and the puts since
/// it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyRevisions {
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
    /// The lease the key is attached to (0: none).
    pub lease: u64,
}

impl KeyRevisions {
    fn from_proto(revisions: Option<pb::Revisions>) -> KeyRevisions {
        let r = revisions.unwrap_or_default();
        KeyRevisions {
            create_revision: r.create_revision,
            mod_revision: r.mod_revision,
            version: r.version,
            lease: r.lease,
        }
    }
}

/// One page of a scan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanPage {
    pub pairs: Vec<(Bytes, Bytes)>,
    /// The revisions of each pair's key, in the same order.
    pub revisions: Vec<KeyRevisions>,
    /// More keys with the prefix follow.
    pub more: bool,
    /// Cursor for the next page (`ScanOptions::after`).
    pub next_after: Option<Bytes>,
}

struct Inner {
    endpoints: Vec<String>,
    options: ClientOptions,
    channels: Mutex<HashMap<String, Channel>>,
    /// Where the last leader-routed call succeeded.
    leader: Mutex<Option<String>>,
    /// Shared by clones; replaced when the cluster says it expired (writes in
    /// flight keep the one they started with).
    session: Mutex<Arc<Session>>,
    /// What every request carries once logged in.
    token: Token,
    /// One login at a time.
    login: tokio::sync::Mutex<()>,
}

/// A RaftKV client. Cheap to clone; clones share connections and session.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// A client for a cluster reachable at any of `endpoints` (HOST:PORT).
    /// Connections are made lazily.
    pub fn new(endpoints: &[String]) -> Result<Client, Error> {
        Client::with_options(endpoints, ClientOptions::default())
    }

    pub fn with_options(endpoints: &[String], options: ClientOptions) -> Result<Client, Error> {
        if options.tls.is_none() {
            if let Some(https) = endpoints.iter().find(|e| e.trim().starts_with("https://")) {
                return Err(Error::InvalidArgument(format!(
                    "endpoint {https}: https:// needs the CA that signed the servers' \
                     certificates (--cacert)"
                )));
            }
        }
        let endpoints: Vec<String> = endpoints
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
            .map(parse_endpoint)
            .collect::<Result<_, _>>()?;
        if endpoints.is_empty() {
            return Err(Error::InvalidArgument("no endpoints given".into()));
        }
        let token = Token::new(options.credentials.is_some());
        Ok(Client {
            inner: Arc::new(Inner {
                endpoints,
                options,
                channels: Mutex::new(HashMap::new()),
                leader: Mutex::new(None),
                session: Mutex::new(Arc::new(Session::new())),
                token,
                login: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The options this client was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// A (lazily connected) channel to `address`.
    pub fn channel(&self, address: &str) -> Result<Channel, Error> {
        let mut channels = self.inner.channels.lock().expect("channels lock");
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| Error::InvalidArgument(format!("invalid endpoint {address:?}: {e}")))?
            .connect_timeout(self.inner.options.connect_timeout);
        // TCP_NODELAY, and writes coalesced: requests sent together go out
        // in one syscall (raftkv-net); TLS when the options have it.
        let channel = endpoint
            .connect_with_connector_lazy(raftkv_net::connector(self.inner.options.tls.clone()));
        let channel = Channel::new(channel, self.inner.token.clone());
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    /// What this client's requests carry once logged in (for channels made
    /// outside the client, e.g. to the etcd API).
    pub fn token(&self) -> Token {
        self.inner.token.clone()
    }

    /// Logs in with the options' credentials if not logged in yet.
    pub async fn ensure_login(&self) -> Result<(), Error> {
        if self.inner.options.credentials.is_none() || self.inner.token.is_fresh() {
            return Ok(());
        }
        self.login(false).await
    }

    /// Asks the cluster for a token for the options' credentials (any
    /// member answers; the endpoints are tried in turn); `again`: the last
    /// token was refused.
    async fn login(&self, again: bool) -> Result<(), Error> {
        let Some(credentials) = self.inner.options.credentials.clone() else {
            return Ok(());
        };
        let _one = self.inner.login.lock().await;
        if again {
            self.inner.token.set(None);
        } else if self.inner.token.is_fresh() {
            return Ok(());
        }
        let deadline = Deadline::new(self.inner.options.timeout);
        let mut backoff = FIRST_BACKOFF;
        // Every endpoint in turn, again until the deadline while what they
        // answer may change (a leader being elected, a node restarting).
        loop {
            let mut last = None;
            for endpoint in &self.inner.endpoints {
                let mut auth = raftkv_proto::etcdserverpb::auth_client::AuthClient::new(
                    self.channel(endpoint)?,
                );
                let request = with_deadline(
                    raftkv_proto::etcdserverpb::AuthenticateRequest {
                        name: credentials.user.clone(),
                        password: credentials.password.clone(),
                    },
                    &deadline,
                );
                match deadline.run(auth.authenticate(request)).await {
                    Some(Ok(reply)) => {
                        self.inner.token.set(Some(&reply.into_inner().token));
                        return Ok(());
                    }
                    Some(Err(status)) => {
                        let text = status.message();
                        if text.contains("authentication is not enabled") {
                            // Nothing to log in to: every request is allowed.
                            return Ok(());
                        }
                        if text.contains("authentication failed") {
                            return Err(Error::Unauthenticated(format!(
                                "authentication failed: wrong password for user {} (or no \
                                 such user)",
                                credentials.user
                            )));
                        }
                        last = Some(Error::from_status_at(endpoint, &status));
                    }
                    None => return Err(Error::Timeout(deadline.timeout())),
                }
            }
            let error =
                last.unwrap_or_else(|| Error::Unavailable("no endpoint to log in at".into()));
            if !error.is_retryable() || Instant::now() + backoff >= deadline.expires_at() {
                return Err(error);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn kv(&self, address: &str) -> Result<KvClient<Channel>, Error> {
        Ok(kv_client(self.channel(address)?))
    }

    /// Runs `attempt` against the leader, finding it, following redirects
    /// and retrying retryable errors until `deadline` (which data transfer
    /// may push back).
    async fn call_leader_until<T, F, Fut>(
        &self,
        deadline: &Deadline,
        mut attempt: F,
    ) -> Result<T, Error>
    where
        F: FnMut(KvClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.route_to_leader(deadline, Retry::AnyRetryable, |channel| {
            attempt(kv_client(channel))
        })
        .await
    }

    /// Runs `attempt` on the leader: follows redirects, and retries what
    /// `retry` allows (on the other endpoints in turn) until `deadline`.
    async fn route_to_leader<T, F, Fut>(
        &self,
        deadline: &Deadline,
        retry: Retry,
        mut attempt: F,
    ) -> Result<T, Error>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.ensure_login().await?;
        let mut logged_in_again = false;
        let endpoints = &self.inner.endpoints;
        let mut next_endpoint = 0;
        let mut target = self
            .inner
            .leader
            .lock()
            .expect("leader lock")
            .clone()
            .unwrap_or_else(|| endpoints[0].clone());
        let mut backoff = FIRST_BACKOFF;
        // Endpoints in a row that refused for themselves only (removed).
        let mut refused_here = 0;
        let mut reach = Reachability::default();
        loop {
            let channel = self.channel(&target)?;
            let result = match deadline.run(attempt(channel)).await {
                Some(result) => result,
                None => {
                    let write = matches!(retry, Retry::WriteUntil(_));
                    return Err(reach.deadline_in_flight(deadline, &target, write));
                }
            };
            let (error, from_server, elsewhere) = match result {
                Ok(value) => {
                    *self.inner.leader.lock().expect("leader lock") = Some(target);
                    return Ok(value);
                }
                Err(status) => {
                    reach.record(&target, &status);
                    (
                        Error::from_status(&status),
                        !status.details().is_empty(),
                        Error::refused_here_only(&status),
                    )
                }
            };
            if matches!(error, Error::Unauthenticated(_))
                && self.inner.options.credentials.is_some()
                && !logged_in_again
            {
                // The token expired (or the cluster forgot it): once more
                // with a new one.
                logged_in_again = true;
                self.login(true).await?;
                continue;
            }
            if reach.none_reachable(endpoints) {
                return Err(reach.unreachable_error(endpoints));
            }
            refused_here = if elsewhere { refused_here + 1 } else { 0 };
            let retryable = match (retry, &error) {
                (Retry::WriteUntil(until), _) if Instant::now() >= until => false,
                (_, Error::NotLeader { .. }) => true,
                // Another endpoint may serve it, if any is left to ask.
                _ if elsewhere => refused_here <= endpoints.len(),
                (Retry::AnyRetryable | Retry::WriteUntil(_), e) => e.is_retryable(),
                // The server's own refusal ("a change is in progress", "not
                // caught up yet") is the answer; only reaching it is retried.
                (Retry::RedirectsOnly, e) => !from_server && e.is_retryable(),
            };
            match &error {
                Error::NotLeader { leader_address, .. }
                    if retryable && !leader_address.is_empty() && *leader_address != target =>
                {
                    target = leader_address.clone();
                    continue;
                }
                e if retryable => {
                    tracing::debug!("retrying after {e} from {target}");
                    // Try the other endpoints in turn.
                    target = endpoints[next_endpoint % endpoints.len()].clone();
                    next_endpoint += 1;
                }
                _ => return Err(error),
            }
            if Instant::now() + backoff >= deadline.expires_at() {
                return Err(reach.give_up(deadline, error));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Runs `attempt` once against the first endpoint (its own view).
    async fn call_first<T, F, Fut>(&self, attempt: F) -> Result<T, Error>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_first_until(&Deadline::new(self.inner.options.timeout), attempt)
            .await
    }

    async fn call_first_until<T, F, Fut>(&self, deadline: &Deadline, attempt: F) -> Result<T, Error>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.ensure_login().await?;
        let endpoint = &self.inner.endpoints[0];
        let channel = self.channel(endpoint)?;
        match deadline.run(attempt(channel)).await {
            Some(Ok(value)) => Ok(value),
            Some(Err(status)) => Err(Error::from_status_at(endpoint, &status)),
            None => Err(Error::Timeout(deadline.timeout())),
        }
    }

    /// Runs a read: stale reads once at the first endpoint (its own view),
    /// others at the leader with redirects and retries.
    async fn call_read<T, F, Fut>(&self, consistency: Consistency, attempt: F) -> Result<T, Error>
    where
        F: FnMut(KvClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Deadline::new(self.inner.options.timeout);
        self.call_read_until(&deadline, consistency, attempt).await
    }

    async fn call_read_until<T, F, Fut>(
        &self,
        deadline: &Deadline,
        consistency: Consistency,
        attempt: F,
    ) -> Result<T, Error>
    where
        F: FnMut(KvClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        if consistency == Consistency::Stale {
            let mut attempt = attempt;
            let client = self.kv(&self.inner.endpoints[0].clone())?;
            self.call_first_until(deadline, |_| attempt(client)).await
        } else {
            self.call_leader_until(deadline, attempt).await
        }
    }

    /// Runs a write under the client's session. If the state machine says the
    /// session expired (it forgot it, see `Error::SessionExpired`), later
    /// writes get a new session; the write itself is sent again under it only
    /// if that refusal answered its first attempt (then nothing of it was
    /// applied), and otherwise fails with an unknown outcome.
    async fn write_until<F, Fut>(&self, deadline: &Deadline, mut attempt: F) -> Result<(), Error>
    where
        F: FnMut(KvClient<Channel>, pb::WriteSession) -> Fut,
        Fut: Future<Output = Result<(), Status>>,
    {
        let mut renewed = false;
        loop {
            let session = self.session();
            let seq = session.begin();
            // Whether an attempt ended in a way that leaves it possibly applied.
            let maybe_applied = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let window_ends = Instant::now() + WRITE_RETRY_WINDOW;
            let retry = Retry::WriteUntil(window_ends);
            let result = self
                .route_to_leader(deadline, retry, |channel| {
                    let sent = attempt(kv_client(channel), session.for_request(seq));
                    let maybe_applied = maybe_applied.clone();
                    async move {
                        let result = sent.await;
                        if result.as_ref().is_err_and(|s| {
                            !Error::from_status(s).not_applied()
                                && !Unreachable::of(s).is_some_and(|u| u.never_sent())
                        }) {
                            maybe_applied.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        result
                    }
                })
                .await;
            session.end(seq, result.is_ok());
            let maybe_applied_here = maybe_applied.load(std::sync::atomic::Ordering::Relaxed);
            match result {
                // An attempt may have been applied before the cluster became
                // unreachable or lost its leader: not "never applied".
                Err(e @ (Error::Unavailable(_) | Error::NoLeader { .. })) if maybe_applied_here => {
                    return Err(Error::UnknownOutcome(format!(
                        "{e}; an earlier attempt of the write may have been applied"
                    )));
                }
                Err(Error::SessionExpired(message)) => {
                    self.renew_session(&session);
                    let resend = !maybe_applied_here;
                    if resend && !renewed {
                        renewed = true;
                        continue;
                    }
                    return Err(Error::UnknownOutcome(format!(
                        "{message}; an earlier attempt of the write may have been applied \
                         before the session expired"
                    )));
                }
                Err(e) if e.is_retryable() && Instant::now() >= window_ends => {
                    return Err(Error::UnknownOutcome(format!(
                        "{e}; not sent again after {}s, so it may or may not have been applied",
                        WRITE_RETRY_WINDOW.as_secs()
                    )));
                }
                other => return other,
            }
        }
    }

    /// The write session new writes use.
    fn session(&self) -> Arc<Session> {
        self.inner.session.lock().expect("session lock").clone()
    }

    /// Replaces `expired` (if it is still current) with a new session.
    fn renew_session(&self, expired: &Arc<Session>) {
        let mut current = self.inner.session.lock().expect("session lock");
        if Arc::ptr_eq(&current, expired) {
            tracing::debug!("the cluster forgot this client's session; starting a new one");
            *current = Arc::new(Session::new());
        }
    }

    /// Stores `value` under `key`.
    pub async fn put(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<(), Error> {
        let (key, value) = (key.into(), value.into());
        if value.len() > STREAM_VALUE_ABOVE_BYTES {
            return self.put_streamed(key, value).await;
        }
        let deadline = Deadline::new(self.inner.options.timeout);
        self.write_until(&deadline, |mut client, session| {
            let request = pb::PutRequest {
                key: key.clone(),
                value: value.clone(),
                session: Some(session),
            };
            // The server answers an uncommitted write at this deadline.
            let request = with_wait(request, &deadline);
            async move { client.put(request).await.map(|_| ()) }
        })
        .await
    }

    async fn put_streamed(&self, key: Bytes, value: Bytes) -> Result<(), Error> {
        let deadline = Deadline::new(self.inner.options.timeout);
        let progress = deadline.clone();
        self.write_until(&deadline, |mut client, session| {
            let progress = progress.clone();
            let chunks = value_chunks(&value)
                .into_iter()
                .enumerate()
                .map(|(i, data)| pb::PutChunk {
                    key: if i == 0 { key.clone() } else { Bytes::new() },
                    session: (i == 0).then_some(session),
                    value_size: value.len() as u64,
                    data,
                })
                .collect::<Vec<_>>();
            // Each chunk taken for sending is progress.
            let chunks = futures::StreamExt::inspect(tokio_stream::iter(chunks), move |_| {
                progress.progress()
            });
            async move { client.put_stream(chunks).await.map(|_| ()) }
        })
        .await
    }

    /// Removes `key`; succeeds if it was not there.
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<(), Error> {
        let key = key.into();
        let deadline = Deadline::new(self.inner.options.timeout);
        self.write_until(&deadline, |mut client, session| {
            let request = pb::DeleteRequest {
                key: key.clone(),
                session: Some(session),
            };
            let request = with_wait(request, &deadline);
            async move { client.delete(request).await.map(|_| ()) }
        })
        .await
    }

    /// Applies puts and deletes atomically, in order, as one log entry.
    pub async fn batch(&self, ops: Vec<pb::BatchOp>) -> Result<(), Error> {
        let deadline = Deadline::new(self.inner.options.timeout);
        self.write_until(&deadline, |mut client, session| {
            let request = pb::BatchRequest {
                ops: ops.clone(),
                session: Some(session),
            };
            let request = with_wait(request, &deadline);
            async move { client.batch(request).await.map(|_| ()) }
        })
        .await
    }

    /// Linearizable read of `key`.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Bytes, Error> {
        self.get_with(key, Consistency::Linearizable).await
    }

    /// Read of `key` at the given consistency.
    pub async fn get_with(
        &self,
        key: impl Into<Bytes>,
        consistency: Consistency,
    ) -> Result<Bytes, Error> {
        Ok(self.get_revisions(key, consistency).await?.0)
    }

    /// Read of `key` at the given consistency, with the key's revisions.
    pub async fn get_revisions(
        &self,
        key: impl Into<Bytes>,
        consistency: Consistency,
    ) -> Result<(Bytes, KeyRevisions), Error> {
        let request = pb::GetRequest {
            key: key.into(),
            consistency: consistency.to_proto(),
        };
        let deadline = Deadline::new(self.inner.options.timeout);
        let attempt = |mut client: KvClient<Channel>| {
            let request = request.clone();
            let progress = deadline.clone();
            async move {
                let reply = client.get(request.clone()).await?.into_inner();
                if !reply.use_stream {
                    return Ok((reply.value, KeyRevisions::from_proto(reply.revisions)));
                }
                fetch_streamed(client, request, &progress).await
            }
        };
        self.call_read_until(&deadline, consistency, attempt).await
    }

    /// Reads several keys at one point in time; `None` for missing keys.
    pub async fn batch_get(
        &self,
        keys: Vec<Bytes>,
        consistency: Consistency,
    ) -> Result<Vec<Option<Bytes>>, Error> {
        let request = pb::BatchGetRequest {
            keys,
            consistency: consistency.to_proto(),
        };
        let attempt = |mut client: KvClient<Channel>| {
            let request = request.clone();
            async move {
                let reply = client.batch_get(request).await?.into_inner();
                Ok(reply
                    .results
                    .into_iter()
                    .map(|r| r.found.then_some(r.value))
                    .collect())
            }
        };
        self.call_read(consistency, attempt).await
    }

    /// One page of the keys starting with `prefix`, in ascending order.
    pub async fn scan(
        &self,
        prefix: impl Into<Bytes>,
        options: ScanOptions,
    ) -> Result<ScanPage, Error> {
        let request = pb::ScanRequest {
            prefix: prefix.into(),
            limit: options.limit,
            offset: options.offset,
            after: options.after.unwrap_or_default(),
            keys_only: options.keys_only,
            consistency: options.consistency.to_proto(),
        };
        let attempt = |mut client: KvClient<Channel>| {
            let request = request.clone();
            async move {
                let reply = client.scan(request).await?.into_inner();
                let (pairs, revisions) = reply
                    .pairs
                    .into_iter()
                    .map(|kv| ((kv.key, kv.value), KeyRevisions::from_proto(kv.revisions)))
                    .unzip();
                Ok(ScanPage {
                    next_after: (!reply.next_after.is_empty()).then_some(reply.next_after),
                    more: reply.more,
                    pairs,
                    revisions,
                })
            }
        };
        self.call_read(options.consistency, attempt).await
    }

    /// Status of the first endpoint (that node's own view).
    pub async fn status(&self) -> Result<pb::StatusResponse, Error> {
        self.call_first(|channel| async move {
            Ok(ClusterClient::new(channel)
                .status(pb::StatusRequest {})
                .await?
                .into_inner())
        })
        .await
    }

    /// Members as the first endpoint sees them.
    pub async fn members(&self) -> Result<pb::MembersResponse, Error> {
        self.call_first(|channel| async move {
            Ok(ClusterClient::new(channel)
                .members(pb::MembersRequest {})
                .await?
                .into_inner())
        })
        .await
    }

    /// Members as the leader sees them (match index and lag are only known
    /// there): asks the endpoints in order until one answers, then the
    /// leader it names; that endpoint's own view if the leader does not
    /// answer.
    pub async fn leader_members(&self) -> Result<pb::MembersResponse, Error> {
        let deadline = Deadline::new(self.inner.options.timeout);
        let mut first = Err(Error::Unavailable("no endpoint answered".into()));
        for endpoint in &self.inner.endpoints {
            let channel = self.channel(endpoint)?;
            first = match deadline
                .run(ClusterClient::new(channel).members(pb::MembersRequest {}))
                .await
            {
                Some(Ok(reply)) => Ok(reply.into_inner()),
                Some(Err(status)) => Err(Error::from_status_at(endpoint, &status)),
                None => Err(Error::Timeout(deadline.timeout())),
            };
            if first.is_ok() {
                break;
            }
        }
        let first = first?;
        let own_id = first.header.as_ref().map_or(0, |h| h.node_id);
        let Some(leader) = first
            .members
            .iter()
            .find(|m| m.role == "leader" && m.id != own_id && !m.address.is_empty())
        else {
            return Ok(first);
        };
        let channel = self.channel(&leader.address)?;
        let asked = deadline
            .run(ClusterClient::new(channel).members(pb::MembersRequest {}))
            .await;
        Ok(match asked {
            Some(Ok(reply)) => reply.into_inner(),
            _ => first,
        })
    }

    /// Runs a membership call on the leader, with the remaining deadline
    /// sent along so the server bounds its waiting (catch-up, leaving the
    /// joint configuration) by it.
    async fn change_on_leader<Req, F, Fut>(
        &self,
        request: Req,
        call: F,
    ) -> Result<pb::MembersResponse, Error>
    where
        Req: Clone,
        F: Fn(ClusterClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<pb::MembersResponse>, Status>>,
    {
        let deadline = Deadline::new(self.inner.options.timeout);
        self.route_to_leader(&deadline, Retry::RedirectsOnly, |channel| {
            let request = with_deadline(request.clone(), &deadline);
            let future = call(ClusterClient::new(channel), request);
            async move { Ok(future.await?.into_inner()) }
        })
        .await
    }

    /// Adds node `id` at `address` as a learner, then (unless `learner`)
    /// promotes it once it has caught up. `id` 0 lets the leader pick one.
    pub async fn add_node(
        &self,
        id: u64,
        address: &str,
        peer_address: Option<&str>,
        learner: bool,
    ) -> Result<pb::MembersResponse, Error> {
        let request = pb::AddNodeRequest {
            id,
            address: address.to_string(),
            learner,
            empty: false,
            peer_address: peer_address.unwrap_or_default().to_string(),
            settings: None,
        };
        self.change_on_leader(request, |mut c, r| async move { c.add_node(r).await })
            .await
    }

    /// What a node starting with an empty data dir sends to join: add it
    /// as a learner (refused if that id already received data: a wiped node
    /// must be removed first). `id` 0 lets the leader pick one.
    /// `peer_address`: its separate peer listener, if it has one;
    /// `settings`: what the leader checks against the cluster's.
    pub async fn join(
        &self,
        id: u64,
        address: &str,
        peer_address: Option<&str>,
        settings: Option<pb::JoinSettings>,
    ) -> Result<pb::MembersResponse, Error> {
        let request = pb::AddNodeRequest {
            id,
            address: address.to_string(),
            learner: true,
            empty: true,
            peer_address: peer_address.unwrap_or_default().to_string(),
            settings,
        };
        self.change_on_leader(request, |mut c, r| async move { c.add_node(r).await })
            .await
    }

    /// Promotes learner `id` to voter once it has caught up.
    pub async fn promote_node(&self, id: u64) -> Result<pb::MembersResponse, Error> {
        let request = pb::PromoteNodeRequest { id };
        self.change_on_leader(request, |mut c, r| async move { c.promote_node(r).await })
            .await
    }

    /// Removes node `id` (leadership moves first if it leads); `force`
    /// allows leaving fewer live voters than a quorum.
    pub async fn remove_node(&self, id: u64, force: bool) -> Result<pb::MembersResponse, Error> {
        let request = pb::RemoveNodeRequest { id, force };
        self.change_on_leader(request, |mut c, r| async move { c.remove_node(r).await })
            .await
    }

    /// Records that member `id` is now reached at `address`, and its peer
    /// listener (if it has one) at `peer_address` (a member restarted at
    /// another address asks this itself); `cluster`: the sender's cluster id
    /// and bootstrap id, which must be the cluster's.
    pub async fn set_member_address(
        &self,
        id: u64,
        address: &str,
        peer_address: Option<&str>,
        cluster: (u64, u64),
    ) -> Result<pb::MembersResponse, Error> {
        let request = pb::SetMemberAddressRequest {
            id,
            address: address.to_string(),
            peer_address: peer_address.unwrap_or_default().to_string(),
            cluster_id: cluster.0,
            bootstrap_id: cluster.1,
        };
        self.change_on_leader(
            request,
            |mut c, r| async move { c.set_member_address(r).await },
        )
        .await
    }

    /// Several changes in one joint-consensus step.
    pub async fn change_membership(
        &self,
        request: pb::ChangeMembershipRequest,
    ) -> Result<pb::MembersResponse, Error> {
        self.change_on_leader(
            request,
            |mut c, r| async move { c.change_membership(r).await },
        )
        .await
    }

    /// Moves leadership to voter `id`.
    pub async fn transfer_leader(&self, id: u64) -> Result<pb::MembersResponse, Error> {
        let request = pb::TransferLeaderRequest { id };
        self.change_on_leader(
            request,
            |mut c, r| async move { c.transfer_leader(r).await },
        )
        .await
    }

    /// Runs a call against the first endpoint with the client's deadline
    /// (for the admin and debug services).
    pub async fn call_first_endpoint<T, F, Fut>(&self, attempt: F) -> Result<T, Error>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_first(attempt).await
    }
}

/// What one leader-routed call learnt about reaching the endpoints: to fail
/// fast when none can be reached at all, and to say why it gave up.
#[derive(Default)]
struct Reachability {
    /// Per address: attempts that could not connect in a row, and why.
    unreachable: HashMap<String, (u32, Unreachable)>,
    /// When the current run of failures to connect began.
    failing_since: Option<Instant>,
    /// The last answer was "no leader is known", with the server's account.
    no_leader: Option<(String, String)>,
}

impl Reachability {
    /// Attempts each endpoint gets before the call gives up on reaching any
    /// (a node restarting binds its port before anything else).
    const ATTEMPTS_BEFORE_GIVING_UP: u32 = 2;
    /// ... and this long must have passed since the first of them: a node
    /// that restarts is back within it, so a restart is ridden out.
    const FAILING_BEFORE_GIVING_UP: Duration = Duration::from_millis(500);

    fn record(&mut self, address: &str, status: &Status) {
        match Unreachable::of(status) {
            Some(cause) => {
                self.failing_since.get_or_insert_with(Instant::now);
                let entry = self
                    .unreachable
                    .entry(address.to_string())
                    .or_insert((0, cause.clone()));
                entry.0 += 1;
                entry.1 = cause;
            }
            None => {
                self.unreachable.remove(address);
                if self.unreachable.is_empty() {
                    self.failing_since = None;
                }
                self.no_leader = match Error::from_status(status) {
                    Error::NotLeader { leader_id: 0, .. } => Some((
                        address.to_string(),
                        status
                            .message()
                            .trim_start_matches("not leader; ")
                            .trim_start_matches("no leader is known: ")
                            .to_string(),
                    )),
                    _ => None,
                };
            }
        }
    }

    /// Every endpoint failed to connect, each more than once in a row.
    fn none_reachable(&self, endpoints: &[String]) -> bool {
        let long_enough = self
            .failing_since
            .is_some_and(|since| since.elapsed() >= Self::FAILING_BEFORE_GIVING_UP);
        long_enough
            && endpoints.iter().all(|e| {
                self.unreachable
                    .get(e)
                    .is_some_and(|(n, _)| *n >= Self::ATTEMPTS_BEFORE_GIVING_UP)
            })
    }

    /// Every endpoint and why it could not be reached (called once
    /// [`none_reachable`](Self::none_reachable) holds, so each has a cause).
    fn unreachable_error(&self, endpoints: &[String]) -> Error {
        let cause = |e: &String| self.unreachable.get(e).map(|(_, cause)| cause);
        if let [endpoint] = endpoints {
            if let Some(cause) = cause(endpoint) {
                return Error::Unavailable(cause.describe(endpoint));
            }
        }
        let causes: Vec<String> = endpoints
            .iter()
            .map(|e| cause(e).map_or_else(|| e.clone(), |cause| cause.at(e)))
            .collect();
        Error::Unavailable(format!("cannot reach any endpoint: {}", causes.join("; ")))
    }

    /// The error of a call whose deadline came while an attempt on `target`
    /// was in flight. If `target` last said it knows no leader, that is the
    /// likely reason (for a write the attempt may still have been applied:
    /// its outcome is unknown); otherwise earlier answers say nothing about
    /// this one, and it is a plain timeout.
    fn deadline_in_flight(&self, deadline: &Deadline, target: &str, write: bool) -> Error {
        match &self.no_leader {
            Some((at, detail)) if at == target => {
                let error = Error::NoLeader {
                    waited: deadline.timeout(),
                    detail: detail.clone(),
                };
                if write {
                    Error::UnknownOutcome(format!(
                        "{error}; the last attempt was still waiting when the deadline came"
                    ))
                } else {
                    error
                }
            }
            _ => Error::Timeout(deadline.timeout()),
        }
    }

    /// The error of a call whose deadline came: a write the server could not
    /// settle says so; no leader says what the nodes saw.
    fn give_up(&self, deadline: &Deadline, last: Error) -> Error {
        match (last, &self.no_leader) {
            (error @ Error::UnknownOutcome(_), _) => error,
            (_, Some((_, detail))) => Error::NoLeader {
                waited: deadline.timeout(),
                detail: detail.clone(),
            },
            _ => Error::Timeout(deadline.timeout()),
        }
    }
}

/// Which failures a leader-routed call retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retry {
    /// Every retryable error (reads).
    AnyRetryable,
    /// Every retryable error, and redirects, until the instant given: a
    /// write is never sent again after its session's retry window
    /// (`WRITE_RETRY_WINDOW`), however long the caller's deadline.
    WriteUntil(Instant),
    /// Redirects and failures to reach a server (membership changes: the
    /// server's refusals are answers for the operator).
    RedirectsOnly,
}

/// An endpoint as given (`HOST:PORT`, or `http://HOST:PORT` as etcd
/// clients write it) in the `HOST:PORT` form the client dials.
pub fn parse_endpoint(given: &str) -> Result<String, Error> {
    let invalid = |why: &str| {
        Error::InvalidArgument(format!(
            "invalid endpoint {given:?}: {why} (expected HOST:PORT, e.g. 127.0.0.1:7379)"
        ))
    };
    // The scheme says nothing more: TLS is on when the client has a CA.
    let address = given
        .strip_prefix("https://")
        .or_else(|| given.strip_prefix("http://"))
        .unwrap_or(given);
    let address = address.strip_suffix('/').unwrap_or(address);
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(invalid("no port"));
    };
    if host.is_empty() || host.contains('/') || host.contains("://") {
        return Err(invalid("no host"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(invalid("an IPv6 address goes in brackets, [::1]:7379"));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(address.to_string()),
        _ => Err(invalid(&format!("bad port {port:?}"))),
    }
}

fn kv_client(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel)
        .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES)
}

/// `message` as a request whose `grpc-timeout` is what is left of
/// `deadline`, so the server bounds its own waiting by it.
fn with_deadline<M>(message: M, deadline: &Deadline) -> tonic::Request<M> {
    let mut request = tonic::Request::new(message);
    let left = deadline
        .expires_at()
        .saturating_duration_since(Instant::now());
    request.set_timeout(left.max(Duration::from_millis(1)));
    request
}

/// `message` as a request that tells the server how long this client waits
/// (`raftkv-wait`, what is left of `deadline`): a write not committed by then
/// is answered as of unknown outcome. Not `grpc-timeout`, for which the server
/// would arm a timer of its own on every request.
fn with_wait<M>(message: M, deadline: &Deadline) -> tonic::Request<M> {
    let mut request = tonic::Request::new(message);
    let left = deadline
        .expires_at()
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    if let Ok(value) = format!("{}m", left.as_millis()).parse() {
        request.metadata_mut().insert("raftkv-wait", value);
    }
    request
}

fn value_chunks(value: &Bytes) -> Vec<Bytes> {
    if value.is_empty() {
        return vec![Bytes::new()];
    }
    (0..value.len())
        .step_by(VALUE_CHUNK_BYTES)
        .map(|start| value.slice(start..(start + VALUE_CHUNK_BYTES).min(value.len())))
        .collect()
}

async fn fetch_streamed(
    mut client: KvClient<Channel>,
    request: pb::GetRequest,
    deadline: &Deadline,
) -> Result<(Bytes, KeyRevisions), Status> {
    let mut stream = client.get_stream(request).await?.into_inner();
    let mut value = bytes::BytesMut::new();
    let mut revisions = KeyRevisions::default();
    while let Some(chunk) = stream.message().await? {
        deadline.progress();
        if chunk.revisions.is_some() {
            revisions = KeyRevisions::from_proto(chunk.revisions);
        }
        if value.is_empty() {
            value.reserve(chunk.value_size as usize);
        }
        value.extend_from_slice(&chunk.data);
    }
    Ok((value.freeze(), revisions))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_validated() {
        assert!(Client::new(&[]).is_err());
        assert!(Client::new(&["localhost".to_string()]).is_err());
        assert!(Client::new(&["127.0.0.1:7379".to_string()]).is_ok());
        for bad in [
            "127.0.0.1",
            "127.0.0.1:",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            ":7379",
            "::1:7379",
            "https://127.0.0.1",
            "grpc://127.0.0.1:7379",
        ] {
            let error = parse_endpoint(bad).unwrap_err().to_string();
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
        assert_eq!(
            parse_endpoint("http://127.0.0.1:7379/").unwrap(),
            "127.0.0.1:7379"
        );
        assert_eq!(
            parse_endpoint("https://127.0.0.1:7379").unwrap(),
            "127.0.0.1:7379"
        );
        let error = Client::new(&["https://127.0.0.1:7379".to_string()])
            .err()
            .expect("https:// without a CA")
            .to_string();
        assert!(error.contains("--cacert"), "{error}");
        assert_eq!(parse_endpoint("[::1]:7379").unwrap(), "[::1]:7379");
        assert_eq!(parse_endpoint("localhost:7379").unwrap(), "localhost:7379");
    }

    #[test]
    fn value_chunks_cover_the_value() {
        let value = Bytes::from(vec![7u8; 2 * VALUE_CHUNK_BYTES + 5]);
        let chunks = value_chunks(&value);
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks.iter().map(Bytes::len).sum::<usize>(), value.len());
        assert_eq!(value_chunks(&Bytes::new()).len(), 1);
    }
}
