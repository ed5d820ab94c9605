//! `GET /metrics` (Prometheus text format) and `GET /health`, served on the
//! gRPC port (HTTP/1.1 next to gRPC's HTTP/2) or on `--metrics-listen`.
//!
//! Request counters and latency histograms are updated as requests finish;
//! everything else (raft, replication, storage, state machine, process) is
//! read when scraped, so a scrape always shows the current values.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use raftkv_replica::{Replica, Role};
use tonic::Status;

/// Latency buckets, in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Bytes this process's peer traffic moved, counted by the transport and
/// the peer service (one server per process).
pub struct PeerBytes {
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

pub static PEER_BYTES: PeerBytes = PeerBytes {
    sent: AtomicU64::new(0),
    received: AtomicU64::new(0),
};

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_seconds: HistogramVec,
    term: IntGauge,
    is_leader: IntGauge,
    leader_changes: IntCounter,
    election_seconds: Histogram,
    commit_index: IntGauge,
    applied_index: IntGauge,
    match_index: IntGaugeVec,
    lag_entries: IntGaugeVec,
    peer_reachable: IntGaugeVec,
    members: IntGauge,
    wal_segments: IntGauge,
    wal_bytes: IntGauge,
    log_first_index: IntGauge,
    snapshot_index: IntGauge,
    snapshot_bytes: IntGauge,
    keys: IntGauge,
    data_bytes: IntGauge,
    revision: IntGauge,
    compacted_revision: IntGauge,
    history_bytes: IntGauge,
    history_events: IntGauge,
    leases: IntGauge,
    /// etcd watchers open on this node (the watch service counts them).
    pub watchers: IntGauge,
    /// Watch events sent, and watchers cancelled for falling out of the
    /// history window.
    pub watch_events_sent: IntCounter,
    pub watchers_compacted: IntCounter,
    peer_sent_bytes: IntGauge,
    peer_received_bytes: IntGauge,
    cpu_seconds: prometheus::Gauge,
    resident_bytes: IntGauge,
    open_fds: IntGauge,
    wal_sync_seconds: Histogram,
    wal_entries_per_sync: Histogram,
    peer_rejected: IntCounterVec,
    /// Connections and requests refused by the TLS policy, by reason
    /// (handshake, plaintext, no_client_cert, not_a_member).
    pub tls_refused: IntCounterVec,
    /// 1 while this node's corruption check finds a member whose state
    /// differs (see `corruption.rs`).
    pub corruption_alarm: IntGauge,
    nospace_alarm: IntGauge,
    /// Requests slower than `slow_threshold_nanos`, logged (see `slow.rs`).
    slow_requests: IntCounterVec,
    slow_threshold_nanos: AtomicU64,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric name");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric");
    h
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "raftkv_requests_total",
                "Client requests finished, by operation and result",
            ),
            &["op", "result"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(requests.clone()))
            .expect("unique");
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "raftkv_request_duration_seconds",
                "Time to serve a client request, by operation",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["op"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(request_seconds.clone()))
            .expect("unique");
        let leader_changes = IntCounter::new(
            "raftkv_raft_leader_changes_total",
            "Times this node saw the leader change (elections)",
        )
        .expect("valid metric");
        registry
            .register(Box::new(leader_changes.clone()))
            .expect("unique");
        let election_seconds = histogram(
            &registry,
            "raftkv_raft_election_duration_seconds",
            "Time this node spent without a known leader, per election",
            &[0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0],
        );
        let cpu_seconds = prometheus::Gauge::new(
            "raftkv_process_cpu_seconds_total",
            "User and system CPU time of the server process",
        )
        .expect("valid metric");
        registry
            .register(Box::new(cpu_seconds.clone()))
            .expect("unique");
        let peer_rejected = IntCounterVec::new(
            Opts::new(
                "raftkv_peer_messages_rejected_total",
                "Raft messages from the network dropped before raft saw them, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(peer_rejected.clone()))
            .expect("unique");
        let tls_refused = IntCounterVec::new(
            Opts::new(
                "raftkv_tls_refused_total",
                "TLS handshakes failed and requests refused for their connection (plaintext, \
                 no client certificate, not a member's on the peer service), by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(tls_refused.clone()))
            .expect("unique");
        let slow_requests = IntCounterVec::new(
            Opts::new(
                "raftkv_slow_requests_total",
                "Client requests slower than --slow-request-threshold (each logged with where \
                 its time went), by operation",
            ),
            &["op"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(slow_requests.clone()))
            .expect("unique");
        let r = &registry;
        Metrics {
            slow_requests,
            slow_threshold_nanos: AtomicU64::new(100_000_000),
            nospace_alarm: gauge(
                r,
                "raftkv_nospace_alarm",
                "1 while this node refuses writes for want of space: its disk's reserve, or the \
                 space quota (--quota-bytes, until disarmed)",
            ),
            corruption_alarm: gauge(
                r,
                "raftkv_corruption_alarm",
                "1 while the corruption check finds a member whose state differs from the \
                 others' at one revision (the log names it)",
            ),
            peer_rejected,
            tls_refused,
            requests,
            request_seconds,
            term: gauge(r, "raftkv_raft_term", "Current raft term"),
            is_leader: gauge(r, "raftkv_raft_is_leader", "1 if this node is the leader"),
            leader_changes,
            election_seconds,
            commit_index: gauge(r, "raftkv_raft_commit_index", "Raft commit index"),
            applied_index: gauge(
                r,
                "raftkv_raft_applied_index",
                "Index applied to the state machine",
            ),
            match_index: gauge_vec(
                r,
                "raftkv_replication_match_index",
                "Highest log index known replicated on each peer (leader only)",
                &["peer"],
            ),
            lag_entries: gauge_vec(
                r,
                "raftkv_replication_lag_entries",
                "Entries each peer is behind the leader's log (leader only)",
                &["peer"],
            ),
            peer_reachable: gauge_vec(
                r,
                "raftkv_peer_reachable",
                "1 if the last attempt to reach the peer succeeded",
                &["peer"],
            ),
            members: gauge(r, "raftkv_cluster_members", "Members in the configuration"),
            wal_segments: gauge(r, "raftkv_wal_segments", "WAL segment files"),
            wal_bytes: gauge(
                r,
                "raftkv_wal_disk_bytes",
                "Bytes of log data in WAL segment files (the file being written is preallocated to --wal-segment-size)",
            ),
            log_first_index: gauge(r, "raftkv_log_first_index", "First index still in the log"),
            snapshot_index: gauge(r, "raftkv_snapshot_index", "Index of the latest snapshot"),
            snapshot_bytes: gauge(
                r,
                "raftkv_snapshot_bytes",
                "Size of the latest snapshot file",
            ),
            keys: gauge(r, "raftkv_keys", "Keys in the state machine"),
            revision: gauge(r, "raftkv_revision", "Store revision (etcd's)"),
            compacted_revision: gauge(
                r,
                "raftkv_compacted_revision",
                "Revision compacted to through the log (0: never)",
            ),
            history_bytes: gauge(
                r,
                "raftkv_history_bytes",
                "Bytes of keys and values the history window holds",
            ),
            history_events: gauge(r, "raftkv_history_events", "Changes in the history window"),
            leases: gauge(r, "raftkv_leases", "etcd leases granted and not yet revoked"),
            watchers: gauge(r, "raftkv_watchers", "etcd watchers open on this node"),
            watch_events_sent: counter(
                r,
                "raftkv_watch_events_sent_total",
                "Watch events sent to watchers on this node",
            ),
            watchers_compacted: counter(
                r,
                "raftkv_watchers_compacted_total",
                "Watchers cancelled because their position fell out of the history window",
            ),
            data_bytes: gauge(
                r,
                "raftkv_data_bytes",
                "Bytes of keys and values in the state machine",
            ),
            peer_sent_bytes: gauge(
                r,
                "raftkv_network_peer_sent_bytes_total",
                "Bytes of raft messages and snapshots sent to peers",
            ),
            peer_received_bytes: gauge(
                r,
                "raftkv_network_peer_received_bytes_total",
                "Bytes of raft messages and snapshots received from peers",
            ),
            cpu_seconds,
            resident_bytes: gauge(
                r,
                "raftkv_process_resident_memory_bytes",
                "Resident memory of the server process",
            ),
            open_fds: gauge(r, "raftkv_process_open_fds", "Open file descriptors"),
            wal_sync_seconds: histogram(
                r,
                "raftkv_wal_sync_duration_seconds",
                "Time to write one batch to the WAL and fdatasync it",
                LATENCY_BUCKETS,
            ),
            wal_entries_per_sync: histogram(
                r,
                "raftkv_wal_entries_per_sync",
                "Log entries made durable by one WAL write and fdatasync (group commit)",
                &[
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0,
                ],
            ),
            registry,
        }
    }

    /// What the storage calls after each WAL sync (on the node thread).
    pub fn wal_sync_observer(&self) -> impl Fn(&raftkv_storage::SyncReport) + Send + 'static {
        let (seconds, entries) = (
            self.wal_sync_seconds.clone(),
            self.wal_entries_per_sync.clone(),
        );
        move |report| {
            seconds.observe(report.duration.as_secs_f64());
            if report.entries > 0 {
                entries.observe(report.entries as f64);
            }
        }
    }

    /// Records one finished client request.
    /// Requests slower than `threshold` are logged and counted (zero: none).
    pub fn set_slow_request_threshold(&self, threshold: Duration) {
        let nanos = u64::try_from(threshold.as_nanos()).unwrap_or(u64::MAX);
        self.slow_threshold_nanos.store(nanos, Ordering::Relaxed);
    }

    /// Logs and counts a request of `op` that took `took`, if that is over
    /// the slow-request threshold.
    pub fn check_slow(&self, op: &str, took: Duration, trace: &crate::slow::Trace) {
        if self.log_if_slow(op, took, trace) {
            self.slow_requests.with_label_values(&[op]).inc();
        }
    }

    /// Logs a request of `op` that took `took` if that is over the
    /// slow-request threshold; whether it was.
    pub fn log_if_slow(&self, op: &str, took: Duration, trace: &crate::slow::Trace) -> bool {
        let threshold = Duration::from_nanos(self.slow_threshold_nanos.load(Ordering::Relaxed));
        let slow = !threshold.is_zero() && took > threshold;
        if slow {
            tracing::warn!("{}", crate::slow::describe(op, took, threshold, trace));
        }
        slow
    }

    /// Counts and times a finished request of `op`; logs it if it was slow,
    /// with what `trace` tells of it (see `slow.rs`).
    pub fn observe<T>(
        &self,
        op: &str,
        result: &Result<T, Status>,
        started: Instant,
        trace: &crate::slow::Trace,
    ) {
        let took = started.elapsed();
        self.check_slow(op, took, trace);
        let label = match result {
            Ok(_) => "ok",
            Err(status) => match status.code() {
                tonic::Code::NotFound => "not_found",
                tonic::Code::InvalidArgument => "invalid_argument",
                tonic::Code::FailedPrecondition => "not_leader",
                tonic::Code::DeadlineExceeded => "timeout",
                tonic::Code::ResourceExhausted => "no_space",
                tonic::Code::Unavailable => "unavailable",
                _ => "error",
            },
        };
        self.requests.with_label_values(&[op, label]).inc();
        self.request_seconds
            .with_label_values(&[op])
            .observe(took.as_secs_f64());
    }

    /// Counts leader changes and times elections, watching the status.
    pub async fn watch_elections(self: Arc<Self>, replica: Replica) {
        let mut last_leader = replica.status().leader_id;
        let mut leaderless_since = (last_leader == 0).then(Instant::now);
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let leader = replica.status().leader_id;
            if leader == last_leader {
                continue;
            }
            if leader == 0 {
                leaderless_since = Some(Instant::now());
            } else {
                self.leader_changes.inc();
                if let Some(since) = leaderless_since.take() {
                    self.election_seconds.observe(since.elapsed().as_secs_f64());
                }
            }
            last_leader = leader;
        }
    }

    /// The Prometheus text of every metric, current as of now.
    pub async fn render(
        &self,
        replica: &Replica,
        snapshot_bytes: impl FnOnce(u64, u64) -> u64,
    ) -> String {
        let status = replica.status();
        self.term.set(status.term as i64);
        self.is_leader.set((status.role == Role::Leader) as i64);
        self.commit_index.set(status.commit_index as i64);
        self.applied_index.set(status.applied_index as i64);
        if let Ok(members) = replica.members().await {
            self.members.set(members.members.len() as i64);
            self.match_index.reset();
            self.lag_entries.reset();
            self.peer_reachable.reset();
            for m in members.members.iter().filter(|m| m.id != status.id) {
                let peer = m.id.to_string();
                self.peer_reachable
                    .with_label_values(&[&peer])
                    .set(m.reachable as i64);
                if status.role == Role::Leader {
                    self.match_index
                        .with_label_values(&[&peer])
                        .set(m.match_index as i64);
                    self.lag_entries
                        .with_label_values(&[&peer])
                        .set(m.lag as i64);
                }
            }
        }
        if let Ok(stats) = replica.storage_stats().await {
            self.wal_segments.set(stats.segments as i64);
            self.wal_bytes.set(stats.disk_bytes as i64);
            self.log_first_index.set(stats.first_index as i64);
            self.snapshot_index.set(stats.snapshot_index as i64);
            self.snapshot_bytes
                .set(snapshot_bytes(stats.snapshot_index, stats.snapshot_term) as i64);
        }
        self.nospace_alarm.set(i64::from(replica.nospace_alarm()));
        {
            let kv = replica.kv();
            self.keys.set(kv.len() as i64);
            self.data_bytes.set(kv.data_bytes() as i64);
            self.revision.set(kv.revision() as i64);
            self.compacted_revision.set(kv.compacted_revision() as i64);
            let (history_bytes, history_events) = kv.history_size();
            self.history_bytes.set(history_bytes as i64);
            self.history_events.set(history_events as i64);
            self.leases.set(kv.leases().count() as i64);
        }
        for (reason, count) in replica.peer_rejections() {
            let counter = self.peer_rejected.with_label_values(&[reason]);
            counter.inc_by(count.saturating_sub(counter.get()));
        }
        self.peer_sent_bytes
            .set(PEER_BYTES.sent.load(Ordering::Relaxed) as i64);
        self.peer_received_bytes
            .set(PEER_BYTES.received.load(Ordering::Relaxed) as i64);
        if let Some(process) = process_stats() {
            self.cpu_seconds.set(process.cpu_seconds);
            self.resident_bytes.set(process.resident_bytes as i64);
            self.open_fds.set(process.open_fds as i64);
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding metrics into memory cannot fail");
        String::from_utf8(out).expect("Prometheus text is UTF-8")
    }
}

struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: u64,
    open_fds: usize,
}

/// CPU time, resident memory and open fds of this process, from /proc.
fn process_stats() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) in parens.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count();
    Some(ProcessStats {
        cpu_seconds: ticks / per_second,
        resident_bytes: rss_pages * page,
        open_fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_memory_and_fds() {
        let stats = process_stats().expect("/proc/self readable");
        assert!(stats.resident_bytes > 0);
        assert!(stats.open_fds > 0);
        assert!(stats.cpu_seconds >= 0.0);
    }

    #[test]
    fn request_results_are_counted_by_op_and_kind() {
        let metrics = Metrics::new();
        let trace = crate::slow::Trace::default();
        metrics.observe::<()>("get", &Err(Status::not_found("x")), Instant::now(), &trace);
        metrics.observe("get", &Ok(()), Instant::now(), &trace);
        let long_ago = Instant::now() - Duration::from_millis(150);
        metrics.observe("put", &Ok(()), long_ago, &trace);
        let text = {
            let mut out = Vec::new();
            TextEncoder::new()
                .encode(&metrics.registry.gather(), &mut out)
                .unwrap();
            String::from_utf8(out).unwrap()
        };
        assert!(
            text.contains(r#"raftkv_requests_total{op="get",result="not_found"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"raftkv_requests_total{op="get",result="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("raftkv_request_duration_seconds_bucket"),
            "{text}"
        );
        // Only the put took longer than the default threshold (100 ms).
        assert!(
            text.contains(r#"raftkv_slow_requests_total{op="put"} 1"#),
            "{text}"
        );
        assert!(
            !text.contains(r#"raftkv_slow_requests_total{op="get"}"#),
            "{text}"
        );
    }
}
