//! etcd's v3 `Watch` service: a bidirectional stream on which a client
//! creates watchers on a key or a range from a revision, cancels them and
//! asks for progress.
//!
//! Every member serves its watchers from its own applied state: a watcher
//! is a position in the history window (`KvState::changes_since`) and a
//! task that wakes when the store revision moves, reads the changes after
//! its position and sends them — whole revisions in order, each change
//! once. Nothing is queued per watcher beyond the one batch being sent: a
//! slow client blocks only its own watchers (never a write), and a watcher
//! that falls behind the window is cancelled with the compacted revision,
//! as etcd cancels a watcher whose start was compacted. A client resumes
//! from the last revision it saw + 1, on any member.
//!
//! Progress: a progress request is answered with the highest revision
//! through which every watcher of the stream has been sent its events (so
//! a client may treat its cache as current at that revision), and a
//! watcher created with `progress_notify` gets such a response of its own
//! after each quiet interval (etcd's
//! `--experimental-watch-progress-notify-interval`, 10 minutes by default).
//! A watcher created with `fragment` has a revision larger than
//! `--max-request-bytes` + 512 KiB split into responses marked `fragment`,
//! as etcd splits them; without it a revision always goes in one response.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::auth::{caller_of, may_read, may_read_any};
use bytes::Bytes;
use futures::Stream;
use raftkv_kv::etcd::key_value;
use raftkv_kv::{Event, KeyRange, RevisionError};
use raftkv_proto::etcdserverpb::watch_create_request::FilterType;
use raftkv_proto::etcdserverpb::watch_server::Watch;
use raftkv_proto::etcdserverpb::{watch_request, WatchCreateRequest, WatchRequest, WatchResponse};
use raftkv_proto::mvccpb;
use raftkv_replica::Caller;
use raftkv_replica::Replica;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status, Streaming};

use crate::etcd_kv::etcd_header;
use crate::metrics::Metrics;
use raftkv_proto::etcdserverpb::ResponseHeader;

/// Responses queued per stream (each at most about `BATCH_BYTES`).
const QUEUED_RESPONSES: usize = 16;
/// A response is cut at a revision boundary past this many bytes.
const BATCH_BYTES: usize = 256 * 1024;
/// etcd's allowance for gRPC framing over `--max-request-bytes`, also the
/// margin it adds before it fragments a watch response.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const DUPLICATE_ID: &str = "etcdserver: duplicate watch ID provided on the WatchStream";

pub struct EtcdWatch {
    pub replica: Replica,
    pub metrics: Arc<Metrics>,
    /// A stream that asked for a leader (etcd's `hasleader` metadata) ends
    /// with "no leader" once this member has had none for this long (etcd:
    /// three election timeouts), so its client resumes on another member.
    pub no_leader_after: Duration,
    /// How long a `progress_notify` watcher may go without a response
    /// before it is sent one with the revision it is current at.
    pub progress_notify_interval: Duration,
    /// `--max-request-bytes`: a `fragment` watcher's revision is split past
    /// it and gRPC's allowance (etcd's 512 KiB), as etcd splits it.
    pub max_request_bytes: usize,
}

/// What every watcher of a stream shares with the stream: how a watcher
/// responds on its own.
#[derive(Clone)]
struct Settings {
    metrics: Arc<Metrics>,
    progress_notify_interval: Duration,
    /// A `fragment` watcher's revision larger than this is split.
    fragment_bytes: usize,
}

/// etcd's metadata key: "true" when the client wants its watch streams
/// closed on a member that lost its leader (clientv3's `WithRequireLeader`).
const REQUIRE_LEADER: &str = "hasleader";
const NO_LEADER: &str = "etcdserver: no leader";

type Sender = mpsc::Sender<Result<WatchResponse, Status>>;

/// What one watcher asked for.
struct Watcher {
    id: i64,
    settings: Settings,
    range: KeyRange,
    next: u64,
    /// The revision through which every event has been queued on the
    /// stream (`next - 1` once sent), read by progress requests.
    sent: Arc<AtomicU64>,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    progress_notify: bool,
    fragment: bool,
    /// Whose watcher it is: sent only the keys the caller may read when
    /// each event goes out (a permission revoked meanwhile holds).
    caller: Caller,
}

/// One watcher in `raftkv_watchers` for as long as it lives: a watcher's
/// task is aborted when it is cancelled or its stream ends, so the count is
/// taken back on drop, not at the end of the task's future.
struct Counted(Arc<Metrics>);

impl Counted {
    fn new(metrics: Arc<Metrics>) -> Counted {
        metrics.watchers.inc();
        Counted(metrics)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.watchers.dec();
    }
}

fn event_of(event: &Event, prev_kv: bool) -> mvccpb::Event {
    let (kind, kv) = match &event.record {
        Some(record) => (
            mvccpb::event::EventType::Put,
            key_value(&event.key, record, false),
        ),
        None => (
            mvccpb::event::EventType::Delete,
            mvccpb::KeyValue {
                key: event.key.clone(),
                mod_revision: event.revision as i64,
                ..Default::default()
            },
        ),
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(kv),
        prev_kv: event
            .prev
            .as_ref()
            .filter(|_| prev_kv)
            .map(|p| key_value(&event.key, p, false)),
    }
}

impl Watcher {
    fn wanted(&self, event: &Event) -> bool {
        match event.record {
            Some(_) => !self.no_put,
            None => !self.no_delete,
        }
    }

    /// Sends what happened since its position, then waits for the next
    /// revision, until cancelled, compacted past, or the stream ends.
    async fn run(self, replica: Replica, tx: Sender) {
        let _counted = Counted::new(self.settings.metrics.clone());
        self.watch(replica, tx).await;
    }

    async fn watch(mut self, replica: Replica, tx: Sender) {
        let mut revisions = replica.subscribe_revision();
        let quiet = self.settings.progress_notify_interval;
        let mut notify_at = tokio::time::Instant::now() + quiet;
        loop {
            revisions.borrow_and_update();
            let (current, changes) = {
                let kv = replica.kv();
                let current = kv.revision();
                if self.next > current {
                    (current, Ok(Vec::new()))
                } else {
                    (current, kv.changes_since(&self.range, self.next))
                }
            };
            match changes {
                Err(RevisionError::Compacted { compact_revision }) => {
                    self.settings.metrics.watchers_compacted.inc();
                    let _ = tx
                        .send(Ok(WatchResponse {
                            // etcd's cancel for compaction has no revision.
                            header: Some(ResponseHeader {
                                revision: 0,
                                ..etcd_header(&replica, None)
                            }),
                            watch_id: self.id,
                            canceled: true,
                            compact_revision: compact_revision as i64,
                            cancel_reason: COMPACTED.into(),
                            ..Default::default()
                        }))
                        .await;
                    return;
                }
                Err(RevisionError::Future { .. }) => {}
                Ok(changes) => {
                    match self.send(&replica, &tx, &changes).await {
                        None => return,
                        Some(true) => notify_at = tokio::time::Instant::now() + quiet,
                        Some(false) => {}
                    }
                    self.next = self.next.max(current + 1);
                    self.sent.store(self.next - 1, Ordering::Release);
                }
            }
            loop {
                tokio::select! {
                    changed = revisions.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        break;
                    }
                    () = tokio::time::sleep_until(notify_at), if self.progress_notify => {
                        // etcd's progress notification: no events, the
                        // revision every event up to which was sent.
                        let revision = replica.kv().revision().min(self.next - 1);
                        let progress = WatchResponse {
                            header: Some(etcd_header(&replica, Some(revision))),
                            watch_id: self.id,
                            ..Default::default()
                        };
                        if tx.send(Ok(progress)).await.is_err() {
                            return;
                        }
                        notify_at = tokio::time::Instant::now() + quiet;
                    }
                }
            }
        }
    }

    /// Sends `changes` in responses of whole revisions (a `fragment`
    /// watcher's revision over `--max-request-bytes` in fragments); `None`
    /// once the stream is gone, else whether anything was sent.
    async fn send(&self, replica: &Replica, tx: &Sender, changes: &[Event]) -> Option<bool> {
        let limit = self.settings.fragment_bytes;
        let mut sent = false;
        let mut events = Vec::new();
        let mut bytes = 0;
        for (i, change) in changes.iter().enumerate() {
            if self.wanted(change) && may_read(replica, &self.caller, &change.key) {
                bytes += change.key.len()
                    + change.record.as_ref().map_or(0, |r| r.value.len())
                    + if self.prev_kv {
                        change.prev.as_ref().map_or(0, |r| r.value.len())
                    } else {
                        0
                    };
                events.push(event_of(change, self.prev_kv));
            }
            let revision_ends = changes
                .get(i + 1)
                .is_none_or(|next| next.revision != change.revision);
            let last = i + 1 == changes.len();
            let whole = revision_ends && (bytes >= BATCH_BYTES || last);
            let fragment = self.fragment && !revision_ends && bytes >= limit;
            if !events.is_empty() && (whole || fragment) {
                self.settings
                    .metrics
                    .watch_events_sent
                    .inc_by(events.len() as u64);
                let response = WatchResponse {
                    header: Some(etcd_header(replica, Some(change.revision))),
                    watch_id: self.id,
                    events: std::mem::take(&mut events),
                    fragment,
                    ..Default::default()
                };
                bytes = 0;
                if tx.send(Ok(response)).await.is_err() {
                    return None;
                }
                sent = true;
            }
        }
        Some(sent)
    }
}

/// One client stream: its watchers by id.
struct Session {
    replica: Replica,
    settings: Settings,
    tx: Sender,
    /// Each watcher's task and the revision it has been sent through.
    watchers: HashMap<i64, (JoinHandle<()>, Arc<AtomicU64>)>,
    next_id: i64,
    /// `Some(after)`: end the stream once leaderless for `after`.
    require_leader: Option<Duration>,
    caller: Caller,
}

impl Session {
    async fn reply(&self, response: WatchResponse) -> bool {
        self.tx.send(Ok(response)).await.is_ok()
    }

    fn header(&self) -> Option<raftkv_proto::etcdserverpb::ResponseHeader> {
        Some(etcd_header(&self.replica, None))
    }

    async fn create(&mut self, create: WatchCreateRequest) -> bool {
        self.watchers.retain(|_, (task, _)| !task.is_finished());
        let id = if create.watch_id != 0 {
            if self.watchers.contains_key(&create.watch_id) {
                return self
                    .reply(WatchResponse {
                        header: self.header(),
                        watch_id: -1,
                        created: true,
                        canceled: true,
                        cancel_reason: DUPLICATE_ID.into(),
                        ..Default::default()
                    })
                    .await;
            }
            create.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        self.next_id = self.next_id.max(id + 1);
        // etcd: an empty key watches from the first key on.
        let key = if create.key.is_empty() {
            Bytes::from_static(b"\0")
        } else {
            create.key
        };
        // A range its user may read part of is watched, and sent only the
        // keys it may read; one it may read nothing of is refused with
        // etcd's answer: created and cancelled at once, with the reason.
        if !may_read_any(&self.replica, &self.caller, &key, &create.range_end) {
            return self
                .reply(WatchResponse {
                    header: self.header(),
                    watch_id: id,
                    created: true,
                    canceled: true,
                    cancel_reason: crate::auth::PERMISSION_DENIED.into(),
                    ..Default::default()
                })
                .await;
        }
        let current = self.replica.kv().revision();
        let next = if create.start_revision > 0 {
            create.start_revision as u64
        } else {
            current + 1
        };
        let sent = Arc::new(AtomicU64::new(next - 1));
        let watcher = Watcher {
            id,
            settings: self.settings.clone(),
            range: KeyRange::from_etcd(key, create.range_end),
            next,
            sent: sent.clone(),
            no_put: create.filters.contains(&(FilterType::Noput as i32)),
            no_delete: create.filters.contains(&(FilterType::Nodelete as i32)),
            prev_kv: create.prev_kv,
            progress_notify: create.progress_notify,
            fragment: create.fragment,
            caller: self.caller.clone(),
        };
        // The created reply goes before any event of the watcher.
        let created = WatchResponse {
            header: Some(etcd_header(&self.replica, Some(current))),
            watch_id: id,
            created: true,
            ..Default::default()
        };
        if !self.reply(created).await {
            return false;
        }
        let task = tokio::spawn(watcher.run(self.replica.clone(), self.tx.clone()));
        self.watchers.insert(id, (task, sent));
        true
    }

    /// The revision through which every watcher of the stream has been
    /// sent its events (the store's revision when it has none).
    fn progress_revision(&self) -> u64 {
        let current = self.replica.kv().revision();
        self.watchers
            .values()
            .filter(|(task, _)| !task.is_finished())
            .map(|(_, sent)| sent.load(Ordering::Acquire))
            .fold(current, u64::min)
    }

    async fn handle(&mut self, request: WatchRequest) -> bool {
        match request.request_union {
            Some(watch_request::RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(watch_request::RequestUnion::CancelRequest(cancel)) => {
                let Some((task, _)) = self.watchers.remove(&cancel.watch_id) else {
                    return true;
                };
                task.abort();
                self.reply(WatchResponse {
                    header: self.header(),
                    watch_id: cancel.watch_id,
                    canceled: true,
                    ..Default::default()
                })
                .await
            }
            Some(watch_request::RequestUnion::ProgressRequest(_)) => {
                let revision = self.progress_revision();
                self.reply(WatchResponse {
                    header: Some(etcd_header(&self.replica, Some(revision))),
                    watch_id: -1,
                    ..Default::default()
                })
                .await
            }
            None => true,
        }
    }

    /// Returns once this member has had no leader for `after` (never when
    /// `after` is `None`).
    async fn leader_lost(replica: Replica, after: Option<Duration>) {
        let Some(after) = after else {
            return std::future::pending().await;
        };
        let every = (after / 4).max(Duration::from_millis(10));
        let mut leaderless_since = None;
        loop {
            tokio::time::sleep(every).await;
            if replica.status().leader_id != 0 {
                leaderless_since = None;
                continue;
            }
            let since = *leaderless_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= after {
                return;
            }
        }
    }

    async fn run(mut self, mut requests: Streaming<WatchRequest>) {
        let leader_lost = Self::leader_lost(self.replica.clone(), self.require_leader);
        tokio::pin!(leader_lost);
        loop {
            let request = tokio::select! {
                request = requests.message() => request,
                () = self.tx.closed() => break,
                () = &mut leader_lost => {
                    let _ = self.tx.send(Err(Status::unavailable(NO_LEADER))).await;
                    break;
                }
            };
            match request {
                Ok(Some(request)) => {
                    if !self.handle(request).await {
                        break;
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        for (task, _) in self.watchers.values() {
            task.abort();
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for EtcdWatch {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (tx, rx) = mpsc::channel(QUEUED_RESPONSES);
        let require_leader = request
            .metadata()
            .get(REQUIRE_LEADER)
            .is_some_and(|v| v.as_bytes() == b"true");
        let session = Session {
            replica: self.replica.clone(),
            settings: Settings {
                metrics: self.metrics.clone(),
                progress_notify_interval: self.progress_notify_interval,
                fragment_bytes: self.max_request_bytes + GRPC_OVERHEAD_BYTES,
            },
            tx,
            watchers: HashMap::new(),
            next_id: 0,
            require_leader: require_leader.then_some(self.no_leader_after),
            caller: caller_of(&request),
        };
        tokio::spawn(session.run(request.into_inner()));
        let stream: Self::WatchStream = crate::streams::until_stopped(
            &self.replica,
            tokio_stream::wrappers::ReceiverStream::new(rx),
        );
        Ok(Response::new(stream))
    }
}
