//! The RaftKV server: configuration, startup, the gRPC services (client API,
//! admin, debug) and the peer transport, all on one port.
//!
//! This crate wires things together; it holds no consensus logic (that is
//! `raftkv-replica`) and no storage format (that is `raftkv-storage`).

mod address;
mod admin_service;
mod auth;
pub mod auth_token;
mod auto_compaction;
pub mod backup;
pub mod config;
mod corruption;
mod deadline;
pub mod errors;
mod etcd_auth;
mod etcd_cluster;
mod etcd_kv;
mod etcd_lease;
mod etcd_lock;
mod etcd_watch;
mod force_new_cluster;
mod http;
mod join;
mod kv_service;
mod membership;
pub mod metrics;
pub mod net_faults;
mod peer_service;
pub mod slow;
mod streams;
mod tls_policy;
mod transport;
pub mod units;

use std::future::Future;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use raftkv_proto::etcdserverpb::cluster_server::ClusterServer as EtcdClusterServer;
use raftkv_proto::etcdserverpb::kv_server::KvServer as EtcdKvServer;
use raftkv_proto::etcdserverpb::lease_server::LeaseServer;
use raftkv_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use raftkv_proto::etcdserverpb::watch_server::WatchServer;
use raftkv_proto::v1::cluster_server::ClusterServer;
use raftkv_proto::v1::debug_server::DebugServer;
use raftkv_proto::v1::kv_server::KvServer;
use raftkv_proto::v1::peer_server::PeerServer;
use raftkv_proto::v3electionpb::election_server::ElectionServer;
use raftkv_proto::v3lockpb::lock_server::LockServer;
use raftkv_replica::{
    bootstrap_membership, ClusterIds, FileStorage, NodeIdentity, Replica, ReplicaConfig,
    SnapshotStore, StorageError, StorageOptions,
};
use tonic::transport::server::TcpIncoming;

pub use config::{bootstrap_id_of, parse_peers, ConfigFile, ServerConfig};

/// What the node's own connections to other members (raft messages,
/// snapshots, forwarded requests, joins) present and trust; `None`:
/// plaintext.
pub type OutgoingTls = Option<Arc<raftkv_net::tls::ClientTls>>;
pub use kv_service::{DEFAULT_SCAN_LIMIT, MAX_KEY_BYTES, MAX_SCAN_LIMIT};

use crate::admin_service::AdminService;
use crate::kv_service::KvService;
use crate::peer_service::PeerService;
use crate::transport::GrpcTransport;

/// How long in-flight requests get to finish after a shutdown signal.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// gRPC messages (not values: large values are streamed) up to this size.
const MAX_GRPC_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Opens the data dir, bootstrapping a fresh one: the stored identity and
/// membership win over flags on restart (docs/REFERENCE.md §1).
async fn open_storage(config: &ServerConfig, tls: &OutgoingTls) -> anyhow::Result<FileStorage> {
    let options = StorageOptions {
        wal_segment_size_bytes: config.wal_segment_size_bytes,
        ..Default::default()
    };
    let existed = config.data_dir.exists();
    let shown = std::path::absolute(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone());
    let mut storage = FileStorage::open(&config.data_dir, options).map_err(|e| match e {
        // The message names the dir and the holder already.
        StorageError::Locked { .. } => anyhow::Error::new(e),
        e => anyhow::Error::new(e).context(format!(
            "cannot open data dir {}",
            config.data_dir.display()
        )),
    })?;
    if let Some(identity) = storage.identity() {
        tracing::info!(
            "opened data dir {} (node {}, applied data kept)",
            shown.display(),
            identity.node_id
        );
        if let Some(id) = config.id {
            if id != identity.node_id {
                bail!(
                    "data dir {} belongs to node {}, not --id {id}; start it without --id \
                     or with --id {}",
                    config.data_dir.display(),
                    identity.node_id,
                    identity.node_id
                );
            }
        }
        if !storage.is_initialized()
            && config.join.is_empty()
            && join::load_seed_peers(&config.data_dir).is_none()
        {
            bail!(
                "data dir {} belongs to node {} that joined a cluster but has not received \
                 its first snapshot yet; start it again with --join",
                config.data_dir.display(),
                identity.node_id
            );
        }
        return Ok(storage);
    }
    // Loud: a server started from another working directory than before
    // lands here with a relative --data-dir, and starts empty.
    tracing::warn!(
        "{} data dir {}: this node starts with no data",
        if existed { "empty" } else { "created a new" },
        shown.display()
    );
    if !config.join.is_empty() {
        // Filled by `join::join_as_learner` and the leader's snapshot.
        return Ok(storage);
    }
    let id = config.id.unwrap_or(1);
    let peers = match &config.peers {
        Some(peers) => peers.clone(),
        None => config.only_member(id),
    };
    if !peers.addresses.contains_key(&id) {
        bail!("--peers does not list this node's id {id}");
    }
    // The cluster's id is chosen by its first leader and adopted through the
    // log; until then the node goes by the hash of its member list.
    let identity = NodeIdentity {
        node_id: id,
        cluster_id: 0,
        bootstrap_id: bootstrap_id_of(&peers),
    };
    refuse_if_wiped(&peers.addresses, identity, tls).await?;
    storage
        .bootstrap(
            identity,
            bootstrap_membership(&peers.addresses, &peers.peer_listeners),
        )
        .with_context(|| format!("cannot initialize data dir {}", config.data_dir.display()))?;
    tracing::info!(
        "initialized data dir {} as node {id} of a new cluster (bootstrap {:016x}) with \
         members {:?}{}",
        config.data_dir.display(),
        identity.bootstrap_id,
        peers.addresses,
        if peers.peer_listeners.is_empty() {
            String::new()
        } else {
            format!(" (peer listeners {:?})", peers.peer_listeners)
        }
    );
    Ok(storage)
}

/// A static node starting on an empty data dir may be new, or may have been
/// wiped: then it forgot its votes and log, and must not take its old place
/// (docs/REFERENCE.md §4). Best effort: if the leader of the running cluster says
/// this id already acknowledged entries, the start is refused. (A leader
/// elected since the wipe knows no such thing; then nothing tells a wiped
/// node from one never started.)
async fn refuse_if_wiped(
    peers: &std::collections::BTreeMap<u64, String>,
    identity: NodeIdentity,
    tls: &OutgoingTls,
) -> anyhow::Result<()> {
    let others: Vec<String> = peers
        .iter()
        .filter(|(id, _)| **id != identity.node_id)
        .map(|(_, address)| address.clone())
        .collect();
    if others.is_empty() {
        return Ok(());
    }
    let options = raftkv_client::ClientOptions {
        timeout: std::time::Duration::from_secs(2),
        connect_timeout: std::time::Duration::from_millis(500),
        tls: tls.clone(),
        credentials: None,
    };
    let Ok(client) = raftkv_client::Client::with_options(&others, options) else {
        return Ok(());
    };
    let Ok(members) = client.leader_members().await else {
        return Ok(()); // nobody up: a fresh cluster starting
    };
    let acknowledged = members
        .members
        .iter()
        .find(|m| m.id == identity.node_id)
        .is_some_and(|m| m.match_index > 1);
    if members.bootstrap_id == identity.bootstrap_id && acknowledged {
        bail!(
            "node {} starts with an empty data dir, but the running cluster's leader has \
             entries this node acknowledged before: its data dir was wiped, and it has \
             forgotten its votes and log. Remove it (`raftkv cluster remove {}`) and start it \
             empty with --join to add it as a new member.",
            identity.node_id,
            identity.node_id
        );
    }
    Ok(())
}

/// Logs, once at start, every fault-injection test hook whose variable is
/// set: a node slowed or failed on purpose must say so.
fn announce_test_hooks() {
    for (name, what) in [
        (
            "RAFTKV_DISK_FAULTS",
            "disk faults (free space, fsync errors and delays) are read from",
        ),
        (
            "RAFTKV_NET_FAULTS",
            "network faults (drops, delays, partitions) are read from",
        ),
        (
            "RAFTKV_TEST_CORRUPT",
            "state corruption (test only) is read from",
        ),
    ] {
        if let Some(value) = std::env::var_os(name) {
            tracing::warn!(
                "test hook {name}: {what} {}",
                std::path::Path::new(&value).display()
            );
        }
    }
}

/// Test hook: `RAFTKV_TEST_NEXT_LOG_VERSION=1` makes this build stand for the
/// next release in the mixed-version test: it applies log entries one
/// version newer than today's build, and proposes its test-only entry kind
/// for puts under `test-next-kind/` (see the replica's `log_version.rs`).
fn test_next_log_version() -> u32 {
    if std::env::var_os("RAFTKV_TEST_NEXT_LOG_VERSION").is_some_and(|v| v == "1") {
        tracing::warn!(
            "test hook RAFTKV_TEST_NEXT_LOG_VERSION: this node applies log version {} and \
             proposes the test-only entry kind",
            raftkv_kv::RULES_TEST_NEXT
        );
        raftkv_kv::RULES_TEST_NEXT
    } else {
        raftkv_kv::CURRENT_RULES
    }
}

/// Test hook: `RAFTKV_TEST_SESSION_LIMITS="max_sessions=N,min_idle_ms=N,ttl_ms=N"`
/// shrinks the state machine's client session table, so tests can make it
/// drop sessions. Every node of a cluster must get the same value.
fn test_session_limits() -> anyhow::Result<Option<raftkv_replica::SessionLimits>> {
    let Ok(text) = std::env::var("RAFTKV_TEST_SESSION_LIMITS") else {
        return Ok(None);
    };
    let mut limits = raftkv_replica::SessionLimits::default();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, value) = item
            .split_once('=')
            .with_context(|| format!("RAFTKV_TEST_SESSION_LIMITS: {item:?} is not NAME=VALUE"))?;
        let value: u64 = value
            .parse()
            .with_context(|| format!("RAFTKV_TEST_SESSION_LIMITS: {item:?}"))?;
        match name {
            "max_sessions" => limits.max_sessions = value as usize,
            "min_idle_ms" => limits.min_idle_before_eviction_ms = value,
            "ttl_ms" => limits.ttl_ms = value,
            other => bail!("RAFTKV_TEST_SESSION_LIMITS: unknown setting {other:?}"),
        }
    }
    Ok(Some(limits))
}

/// A node bootstrapping a static cluster must be at the address `--peers`
/// gives it, or its peers would never reach it. (On a data dir already in
/// use the stored membership wins, and a new address is recorded through the
/// log: see `address.rs`.) Checked before the data dir is touched; it is
/// only read here. (The CLI checks it with the flags, as a usage error.)
pub fn check_bootstrap_address(config: &ServerConfig) -> anyhow::Result<()> {
    let Some(peers) = &config.peers else {
        return Ok(());
    };
    if config
        .data_dir
        .join(raftkv_storage::IDENTITY_FILE_NAME)
        .exists()
    {
        return Ok(());
    }
    let id = config.id.unwrap_or(1);
    match peers.addresses.get(&id) {
        Some(listed) if listed != config.advertise_address() => bail!(
            "--peers gives node {id} the address {listed}, but it listens at {} (and \
             advertises that); give it --listen {listed}, or --advertise {listed} if that \
             address reaches this --listen",
            config.advertise_address()
        ),
        _ => {}
    }
    match (
        peers.peer_listeners.get(&id),
        config.advertise_peer_address(),
    ) {
        (Some(listed), Some(own)) if listed != own => bail!(
            "--peers gives node {id} the peer listener {listed}, but its peer listener is \
             at {own}; give it --listen-peer {listed}, or --advertise-peer {listed} if that \
             address reaches its --listen-peer"
        ),
        (Some(listed), None) => bail!(
            "--peers gives node {id} a peer listener at {listed}, but it has none; give it \
             --listen-peer {listed}"
        ),
        (None, Some(own)) => bail!(
            "node {id} has a peer listener ({own}), but --peers does not list it: write its \
             entry as {id}={}/{own}, the same on every node",
            config.advertise_address()
        ),
        _ => Ok(()),
    }
}

/// A member recorded with a separate peer listener that is started without
/// one would move its raft traffic back to its client port, undoing a
/// firewall's separation because of a forgotten flag: refused.
fn refuse_dropping_peer_listener(
    config: &ServerConfig,
    storage: &FileStorage,
) -> anyhow::Result<()> {
    let (Some(identity), None) = (storage.identity(), &config.listen_peer) else {
        return Ok(());
    };
    match storage.membership().peer_addresses.get(&identity.node_id) {
        Some(recorded) => bail!(
            "node {} is a member with a separate peer listener at {recorded}: start it with \
             --listen-peer (that address, or another one, which is then recorded). To take \
             peer traffic on --listen again, remove the node and let it join anew",
            identity.node_id
        ),
        None => Ok(()),
    }
}

/// Runs a node until `shutdown` resolves (clean exit) or the node stops on a
/// fatal error (returned as an error, so the process exits non-zero).
pub async fn run(config: ServerConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    check_bootstrap_address(&config)?;
    // Before the data dir is touched: a port in use changes nothing there.
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let peer_listener = match &config.listen_peer {
        Some(address) => Some(
            tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on --listen-peer {address}"))?,
        ),
        None => None,
    };
    let metrics_listener = match &config.metrics_listen {
        Some(address) => Some(
            tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on --metrics-listen {address}"))?,
        ),
        None => None,
    };
    let tls_files = config.tls_files().map_err(anyhow::Error::msg)?;
    let server_tls = raftkv_net::tls::ServerTls::new(&tls_files).map_err(anyhow::Error::msg)?;
    let outgoing: OutgoingTls = match tls_files.outgoing() {
        Some(files) => Some(raftkv_net::tls::ClientTls::new(&files).map_err(anyhow::Error::msg)?),
        None => None,
    };
    if config.force_new_cluster {
        force_new_cluster::recover(&config, &outgoing).await?;
    }
    announce_test_hooks();
    let log_version = test_next_log_version();
    let sessions = test_session_limits()?;
    let join_settings = join::join_settings(&config, log_version, &sessions.unwrap_or_default());
    let mut storage = open_storage(&config, &outgoing).await?;
    refuse_dropping_peer_listener(&config, &storage)?;
    let snapshots = SnapshotStore::open(&config.data_dir)
        .with_context(|| format!("cannot open snapshots in {}", config.data_dir.display()))?;
    tokio::pin!(shutdown);
    // A node that joined (or is joining) and has no configuration yet asks
    // the cluster to add it; a restarted member skips this.
    let mut seed_peers = None;
    if !config.join.is_empty() && !storage.is_initialized() {
        let joining =
            join::join_as_learner(&mut storage, &config, join_settings.clone(), &outgoing);
        tokio::select! {
            peers = joining => seed_peers = Some(peers?),
            () = &mut shutdown => return Ok(()),
        }
    } else if !storage.is_initialized() {
        // Joined, but stopped before the first snapshot arrived: the
        // members it learned when it joined are its way back.
        seed_peers = join::load_seed_peers(&config.data_dir);
    } else if !config.join.is_empty() {
        tracing::info!("data dir already holds cluster state; --join does not add this node again");
    }
    let identity = storage.identity().context("data dir has no identity")?;

    let mut replica_config = ReplicaConfig::new(identity.node_id, identity.cluster_id);
    replica_config.bootstrap_id = identity.bootstrap_id;
    replica_config.election_timeout = config.election_timeout;
    replica_config.heartbeat_interval = config.heartbeat_interval;
    replica_config.snapshot_entries = config.snapshot_entries;
    replica_config.lease_reads = config.lease_read;
    replica_config.quota_bytes = config.quota_bytes;
    // Room for the largest entry on top of a fixed reserve.
    replica_config.min_free_bytes = config.max_value_bytes + 64 * 1024 * 1024;
    if let Some(limits) = sessions {
        tracing::warn!("test-only client session limits in force: {limits:?}");
        replica_config.sessions = limits;
    }
    replica_config.log_version = log_version;
    let metrics = Arc::new(metrics::Metrics::new());
    metrics.set_slow_request_threshold(config.slow_request_threshold);
    storage.set_sync_observer(metrics.wal_sync_observer());
    let transport = Arc::new(GrpcTransport::new(
        identity.node_id,
        ClusterIds {
            cluster_id: identity.cluster_id,
            bootstrap_id: identity.bootstrap_id,
        },
        tokio::runtime::Handle::current(),
        snapshots.clone(),
        outgoing.clone(),
        join_settings.clone(),
    ));
    let replica = Replica::start(
        storage,
        snapshots.clone(),
        replica_config,
        transport.clone(),
    )
    .map_err(|e| anyhow::anyhow!("cannot start the node: {e}"))?;
    transport.set_replica(replica.clone());
    if let Some(peers) = &seed_peers {
        raftkv_replica::Transport::update_peers(&*transport, &peers.peer_dial_addresses());
    }
    tokio::spawn(address::reach_unknown_leader(
        replica.clone(),
        transport.clone(),
        config.election_timeout,
        outgoing.clone(),
    ));
    tokio::spawn(membership::watch_for_removal(
        replica.clone(),
        config.election_timeout,
        seed_peers
            .as_ref()
            .map(|peers| peers.addresses.clone())
            .unwrap_or_default(),
        outgoing.clone(),
    ));
    if !config.join.is_empty() && !config.learner {
        tokio::spawn(join::promote_when_caught_up(
            replica.clone(),
            config.join.clone(),
            outgoing.clone(),
        ));
    }

    tokio::spawn(metrics.clone().watch_elections(replica.clone()));
    tokio::spawn(auto_compaction::run(
        replica.clone(),
        config.auto_compaction,
    ));
    let snapshots_for_http = snapshots.clone();
    let kv = KvServer::new(KvService {
        replica: replica.clone(),
        metrics: metrics.clone(),
        max_value_bytes: config.max_value_bytes,
        test_next_kind: log_version == raftkv_kv::RULES_TEST_NEXT,
    })
    .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES);
    let corruption = Arc::new(corruption::CorruptionAlarm::default());
    if !config.corruption_check_interval.is_zero() {
        tokio::spawn(corruption::run(
            replica.clone(),
            config.corruption_check_interval,
            corruption.clone(),
            metrics.clone(),
            outgoing.clone(),
        ));
    }
    tokio::spawn(corruption::test_hook(replica.clone()));
    let admin = Arc::new(AdminService {
        corruption: corruption.clone(),
        peer_tls: tls_files.peer_tls(),
        replica: replica.clone(),
        membership: membership::Membership::new(replica.clone()),
        address: config.advertise_address().to_string(),
        snapshots: snapshots.clone(),
        join_settings: join_settings.clone(),
    });
    let peer = PeerServer::new(PeerService {
        settings: join_settings.clone(),
        replica: replica.clone(),
        snapshots,
        max_message_bytes: config.max_value_bytes as usize + MAX_GRPC_MESSAGE_BYTES,
    })
    .max_decoding_message_size(2 * transport::CHUNK_BYTES);

    tracing::info!(
        "node {} serving on {}{} ({}; {})",
        identity.node_id,
        config.listen,
        match &config.listen_peer {
            Some(address) => format!(" (clients), {address} (peers)"),
            None => String::new(),
        },
        raftkv_replica::describe_cluster(replica.cluster_ids()),
        match (tls_files.client_tls(), tls_files.peer_tls()) {
            (true, true) => "client and peer TLS",
            (true, false) => "client TLS, peers in plaintext",
            (false, true) => "peer TLS, clients in plaintext",
            (false, false) => "plaintext",
        }
    );
    let same_ca = match (&tls_files.trusted_ca, &tls_files.peer_trusted_ca) {
        (Some(client), Some(peer)) => {
            client == peer || std::fs::read(client).ok() == std::fs::read(peer).ok()
        }
        _ => false,
    };
    if same_ca && tls_files.peer_allowed_cn.is_none() {
        tracing::warn!(
            "--trusted-ca-file and --peer-trusted-ca-file are the same CA: every client \
             certificate it signs is also a member's (it may join the cluster and speak raft, \
             whatever its user's roles). Give the members their own CA, or \
             --peer-cert-allowed-cn with the CN of the members' certificates"
        );
    }
    if seed_peers.is_none() {
        tokio::spawn(address::record_own_address(
            replica.clone(),
            config.advertise_address().to_string(),
            config.advertise_peer_address().map(str::to_string),
            outgoing.clone(),
        ));
    }
    let (stop_serving, serving_stopped) = tokio::sync::oneshot::channel::<()>();
    let (close_listener, listener_closed) = tokio::sync::watch::channel(false);
    let etcd_kv_service = Arc::new(etcd_kv::EtcdKv::new(
        replica.clone(),
        config.max_request_bytes,
        metrics.clone(),
        outgoing.clone(),
    ));
    let etcd_lock = LockServer::new(etcd_lock::EtcdLock {
        kv: etcd_kv_service.clone(),
    });
    let etcd_election = ElectionServer::new(etcd_lock::EtcdElection {
        kv: etcd_kv_service.clone(),
    });
    let etcd_kv = EtcdKvServer::from_arc(etcd_kv_service)
        .max_decoding_message_size(config.max_request_bytes as usize + 512 * 1024)
        .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES);
    let etcd_watch = WatchServer::new(etcd_watch::EtcdWatch {
        replica: replica.clone(),
        metrics: metrics.clone(),
        no_leader_after: config.election_timeout * 3,
        progress_notify_interval: config.watch_progress_notify_interval,
        max_request_bytes: config.max_request_bytes as usize,
    })
    .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES);
    let etcd_cluster = Arc::new(etcd_cluster::EtcdCluster::new(
        replica.clone(),
        corruption,
        outgoing.clone(),
        &tls_files,
    ));
    let auth = auth::Auth::new(replica.clone(), config.auth_token_ttl);
    let etcd_auth = raftkv_proto::etcdserverpb::auth_server::AuthServer::new(etcd_auth::EtcdAuth {
        replica: replica.clone(),
        auth: auth.clone(),
        forward: etcd_kv::Forwarder::new(replica.clone(), outgoing.clone()),
    });
    let mut routes = tonic::service::RoutesBuilder::default();
    routes
        .add_service(kv)
        .add_service(etcd_auth)
        .add_service(etcd_kv)
        .add_service(etcd_watch)
        .add_service(etcd_lock)
        .add_service(etcd_election)
        .add_service(LeaseServer::new(etcd_lease::EtcdLease::new(
            replica.clone(),
            config.election_timeout,
            outgoing.clone(),
        )))
        .add_service(EtcdClusterServer::from_arc(etcd_cluster.clone()))
        .add_service(MaintenanceServer::from_arc(etcd_cluster))
        .add_service(ClusterServer::from_arc(admin.clone()))
        .add_service(DebugServer::from_arc(admin));
    // gRPC health (grpc.health.v1), as /readyz.
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(http::report_readiness(replica.clone(), health_reporter));
    routes.add_service(health_service);
    // The peer service is on the client port unless it has a listener of
    // its own.
    let peer_server = match peer_listener {
        None => {
            routes.add_service(peer);
            None
        }
        Some(listener) => Some(peer_server(
            peer,
            listener,
            &tls_files,
            metrics.tls_refused.clone(),
            format!(
                "this is node {}'s peer listener (--listen-peer): it takes only raft traffic \
                 from members; clients use {}",
                identity.node_id,
                config.advertise_address()
            ),
            listener_closed.clone(),
        )?),
    };
    let mut routes = routes.routes();
    if let Some(address) = &config.listen_peer {
        refuse_peer_traffic(routes.axum_router_mut(), address);
    }
    let tls_policy = tls_policy::Policy::new(tls_files.clone(), metrics.tls_refused.clone());
    let http = http::routes(http::HttpState {
        replica: replica.clone(),
        metrics: metrics.clone(),
        snapshots: snapshots_for_http,
    });
    match &config.metrics_listen {
        // /metrics and /health beside gRPC, on the same port (HTTP/1.1).
        None => {
            let grpc = std::mem::replace(routes.axum_router_mut(), axum::Router::new());
            *routes.axum_router_mut() = grpc.merge(http);
        }
        Some(address) => {
            let listener = metrics_listener.expect("bound at start");
            tracing::info!("metrics on http://{address}/metrics");
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, http).await {
                    tracing::error!("metrics server failed: {e}");
                }
            });
            let grpc = std::mem::replace(routes.axum_router_mut(), axum::Router::new());
            *routes.axum_router_mut() = grpc.merge(http::moved_to(address));
        }
    }
    // Who may call what (TLS required, client certificates, members only
    // on the peer service) is decided per request from the connection.
    // Who the caller is, and whether it may call this at all (auth on).
    auth.clone().apply(routes.axum_router_mut());
    tls_policy.apply(routes.axum_router_mut());
    let serve = tonic::transport::Server::builder()
        .max_concurrent_streams(config.max_concurrent_streams)
        .tcp_nodelay(true)
        .accept_http1(true)
        .add_routes(routes)
        // Accepted sockets need TCP_NODELAY set here: the builder's own
        // setting applies only to listeners it binds itself. Without it a
        // reply of a few hundred bytes waits ~40 ms for a delayed ACK.
        //
        // Every connection coalesces its writes (raftkv-net): replies that
        // finish together go out in one syscall.
        .serve_with_incoming_shutdown(
            tls_policy::accept(
                TcpIncoming::from(listener)
                    .with_nodelay(Some(true))
                    .with_keepalive(Some(std::time::Duration::from_secs(30))),
                server_tls,
                metrics.tls_refused.clone(),
                tls_policy::ConnectionLimit::new(config.max_connections_per_client),
                listener_closed,
            ),
            async {
                let _ = serving_stopped.await;
            },
        );
    // The peer listener stops with the process: peers keep their streams
    // open, and raft messages that arrive after the replica stopped are
    // dropped.
    let peer_serve = async move {
        match peer_server {
            Some(server) => server.await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(serve);
    tokio::pin!(peer_serve);
    tokio::select! {
        result = &mut serve => {
            replica.shutdown();
            result.context("gRPC server failed")?;
            Ok(())
        }
        result = &mut peer_serve => {
            replica.shutdown();
            result.context("peer listener failed")?;
            bail!("the peer listener stopped")
        }
        () = &mut shutdown => {
            tracing::info!("node {} shutting down", identity.node_id);
            membership::hand_over_leadership(&replica, 2 * config.election_timeout).await;
            replica.shutdown();
            let _ = close_listener.send(true);
            let _ = stop_serving.send(());
            // Peers keep their streams open; do not wait for them forever.
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, &mut serve).await;
            tracing::info!("node {} shut down", identity.node_id);
            Ok(())
        }
        reason = replica.stopped() => {
            bail!("node {} stopped: {reason}", identity.node_id)
        }
    }
}

/// The server of a separate peer listener (`--listen-peer`): the peer
/// service alone, with the peer certificate and CA alone when peer TLS is
/// on (a client certificate does not even complete the handshake); any
/// other call is answered with `not_here` (which says where clients go).
fn peer_server(
    peer: PeerServer<PeerService>,
    listener: tokio::net::TcpListener,
    tls_files: &raftkv_net::tls::ServerTlsFiles,
    refused: prometheus::IntCounterVec,
    not_here: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<impl Future<Output = Result<(), tonic::transport::Error>>> {
    let files = tls_files.peer_only();
    let server_tls = raftkv_net::tls::ServerTls::new(&files).map_err(anyhow::Error::msg)?;
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(peer);
    let mut routes = routes.routes();
    let router = std::mem::take(routes.axum_router_mut());
    *routes.axum_router_mut() = router.fallback(move |request: axum::extract::Request| {
        let why = not_here.clone();
        async move { tls_policy::refused_with(&request, tonic::Code::FailedPrecondition, why) }
    });
    tls_policy::Policy::new(files, refused.clone()).apply(routes.axum_router_mut());
    Ok(tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_routes(routes)
        .serve_with_incoming(tls_policy::accept(
            TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(std::time::Duration::from_secs(30))),
            server_tls,
            refused,
            tls_policy::ConnectionLimit::new(0),
            stop,
        )))
}

/// With a separate peer listener, raft traffic that comes to the client
/// port (a peer that has this node's old address) is refused saying where
/// it goes.
fn refuse_peer_traffic(router: &mut axum::Router, peer_address: &str) {
    let why = format!(
        "this node takes peer traffic on its peer listener ({peer_address}, --listen-peer), \
         not on its client port"
    );
    let routes = std::mem::take(router);
    *router = routes.route(
        "/raftkv.v1.Peer/{*method}",
        axum::routing::any(move |request: axum::extract::Request| {
            let why = why.clone();
            async move { tls_policy::refused_with(&request, tonic::Code::FailedPrecondition, why) }
        }),
    );
}
