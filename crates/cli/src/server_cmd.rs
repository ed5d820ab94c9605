//! `raftkv server` (one node, in this process) and `raftkv playground`
//! (several `raftkv server` child processes on consecutive local ports).

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use raftkv_server::units::{parse_duration, parse_size};
use raftkv_server::{parse_peers, ConfigFile, ServerConfig};

use crate::args::{PlaygroundArgs, ServerArgs};
use crate::failure::Failure;

fn usage(e: String) -> Failure {
    Failure::Usage(e)
}

/// Defaults, then the config file, then flags.
fn server_config(args: ServerArgs) -> Result<ServerConfig, Failure> {
    let mut config = ServerConfig::default();
    if let Some(path) = &args.config {
        ConfigFile::load(path)
            .and_then(|file| file.apply_to(&mut config))
            .map_err(usage)?;
    }
    if let Some(v) = args.id {
        config.id = Some(v);
    }
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.advertise {
        config.advertise = Some(v);
    }
    if let Some(v) = args.listen_peer {
        config.listen_peer = Some(v);
    }
    if let Some(v) = args.advertise_peer {
        config.advertise_peer = Some(v);
    }
    if let Some(v) = &args.peers {
        config.peers = Some(parse_peers(v).map_err(usage)?);
    }
    if let Some(v) = args.join {
        config.join = v;
    }
    if args.force_new_cluster {
        config.force_new_cluster = true;
    }
    if args.learner {
        config.learner = true;
    }
    if let Some(v) = args.snapshot_entries {
        config.snapshot_entries = v;
    }
    if let Some(v) = &args.wal_segment_size {
        config.wal_segment_size_bytes =
            parse_size(v).map_err(|e| usage(format!("--wal-segment-size: {e}")))?;
    }
    if let Some(v) = &args.max_value_size {
        config.max_value_bytes =
            parse_size(v).map_err(|e| usage(format!("--max-value-size: {e}")))?;
    }
    if let Some(v) = &args.election_timeout {
        config.election_timeout =
            parse_duration(v).map_err(|e| usage(format!("--election-timeout: {e}")))?;
    }
    if let Some(v) = &args.heartbeat_interval {
        config.heartbeat_interval =
            parse_duration(v).map_err(|e| usage(format!("--heartbeat-interval: {e}")))?;
    }
    if let Some(v) = args.lease_read {
        config.lease_read = v;
    }
    if let Some(v) = args.metrics_listen {
        config.metrics_listen = Some(v);
    }
    if let Some(v) = &args.max_request_bytes {
        config.max_request_bytes =
            parse_size(v).map_err(|e| usage(format!("--max-request-bytes: {e}")))?;
    }
    if let Some(v) = &args.quota_bytes {
        config.quota_bytes = parse_size(v).map_err(|e| usage(format!("--quota-bytes: {e}")))?;
    }
    if let Some(v) = &args.corruption_check_interval {
        config.corruption_check_interval =
            parse_duration(v).map_err(|e| usage(format!("--corruption-check-interval: {e}")))?;
    }
    if let Some(v) = &args.slow_request_threshold {
        config.slow_request_threshold =
            parse_duration(v).map_err(|e| usage(format!("--slow-request-threshold: {e}")))?;
    }
    if let Some(v) = &args.experimental_watch_progress_notify_interval {
        config.watch_progress_notify_interval = parse_duration(v).map_err(|e| {
            usage(format!(
                "--experimental-watch-progress-notify-interval: {e}"
            ))
        })?;
    }
    if let Some(v) = args.auth_token_ttl {
        config.auth_token_ttl = std::time::Duration::from_secs(v);
    }
    if let Some(v) = args.max_connections_per_client {
        config.max_connections_per_client = v;
    }
    if let Some(v) = args.max_concurrent_streams {
        config.max_concurrent_streams = Some(v);
    }
    if args.auto_compaction_mode.is_some() || args.auto_compaction_retention.is_some() {
        config.auto_compaction = raftkv_server::config::AutoCompaction::parse(
            args.auto_compaction_mode.as_deref(),
            args.auto_compaction_retention.as_deref(),
        )
        .map_err(usage)?;
    }
    let tls = &mut config.tls;
    for (given, setting) in [
        (args.cert_file, &mut tls.cert_file),
        (args.key_file, &mut tls.key_file),
        (args.trusted_ca_file, &mut tls.trusted_ca_file),
        (args.peer_cert_file, &mut tls.peer_cert_file),
        (args.peer_key_file, &mut tls.peer_key_file),
        (args.peer_trusted_ca_file, &mut tls.peer_trusted_ca_file),
    ] {
        if given.is_some() {
            *setting = given;
        }
    }
    if args.client_cert_auth {
        tls.client_cert_auth = true;
    }
    if args.peer_cert_allowed_cn.is_some() {
        tls.peer_cert_allowed_cn = args.peer_cert_allowed_cn;
    }
    config.validate().map_err(usage)?;
    raftkv_server::check_bootstrap_address(&config).map_err(|e| usage(e.to_string()))?;
    // Certificates that do not load, or do not name where this node is
    // reached, are usage errors found before anything starts.
    let files = config.tls_files().map_err(usage)?;
    if let Some(tls) = raftkv_net::tls::ServerTls::new(&files).map_err(|e| usage(e.to_string()))? {
        let advertise = config.advertise_address();
        let host = advertise
            .rsplit_once(':')
            .map_or(advertise, |(host, _)| host);
        tls.check_names(host, "--advertise, else --listen")
            .map_err(|e| usage(e.to_string()))?;
    }
    // A separate peer listener may be reached by another name.
    if let (Some(peer_address), Some(tls)) = (
        config.advertise_peer_address(),
        raftkv_net::tls::ServerTls::new(&files.peer_only()).map_err(|e| usage(e.to_string()))?,
    ) {
        let host = peer_address
            .rsplit_once(':')
            .map_or(peer_address, |(host, _)| host);
        tls.check_names(host, "--advertise-peer, else --listen-peer")
            .map_err(|e| usage(e.to_string()))?;
    }
    Ok(config)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed when
/// this is called, not when the future is first polled, so a signal that
/// comes right after what the caller prints next is not lost (and does not
/// kill the process with the default action).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        match (terminate, interrupt) {
            (Ok(mut terminate), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

pub async fn server(args: ServerArgs) -> Result<(), Failure> {
    let config = server_config(args)?;
    init_logging();
    raftkv_server::run(config, shutdown_signal())
        .await
        .map_err(|e| Failure::Other(format!("{e:#}")))
}

fn spawn_node(
    exe: &Path,
    dir: &Path,
    id: u64,
    listen: &str,
    peers: &str,
) -> Result<Child, Failure> {
    let node_dir = dir.join(format!("n{id}"));
    std::fs::create_dir_all(&node_dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(node_dir.join("server.log"))?;
    std::process::Command::new(exe)
        .arg("server")
        .args(["--id", &id.to_string()])
        .arg("--data-dir")
        .arg(node_dir.join("data"))
        .args(["--listen", listen, "--peers", peers])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| Failure::Other(format!("cannot start node {id}: {e}")))
}

/// How long the playground waits for its nodes to elect a leader.
const PLAYGROUND_START: Duration = Duration::from_secs(20);

/// The last lines of a node's log, to say why it stopped.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(3)..];
    tail.iter().map(|l| format!("\n    {l}")).collect()
}

/// The playground's nodes: stopped however the playground ends (an error, a
/// closed stdout, a panic), so none is left holding its port and data dir.
struct Nodes(Vec<(u64, Child)>);

impl Drop for Nodes {
    fn drop(&mut self) {
        stop_all(&mut self.0);
    }
}

/// SIGTERM to every node (they shut down cleanly), then waits for them.
fn stop_all(children: &mut Vec<(u64, Child)>) {
    for (_, child) in children.iter_mut() {
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    for (_, child) in children.iter_mut() {
        let _ = child.wait();
    }
    children.clear();
}

/// The first node that has exited, with its status.
fn exited_node(children: &mut [(u64, Child)]) -> Option<(u64, std::process::ExitStatus)> {
    children
        .iter_mut()
        .find_map(|(id, child)| match child.try_wait() {
            Ok(Some(status)) => Some((*id, status)),
            _ => None,
        })
}

/// Waits until a node reports a leader, or a node exits, or time is up.
async fn wait_for_leader(
    children: &mut [(u64, Child)],
    addresses: &[String],
    dir: &Path,
) -> Result<u64, Failure> {
    let client = raftkv_client::Client::with_options(
        addresses,
        raftkv_client::ClientOptions {
            timeout: Duration::from_secs(1),
            ..Default::default()
        },
    )?;
    let give_up = std::time::Instant::now() + PLAYGROUND_START;
    loop {
        if let Some((id, status)) = exited_node(children) {
            let log = dir.join(format!("n{id}")).join("server.log");
            return Err(Failure::Other(format!(
                "node {id} ({}) could not start ({status}); every node is stopped. Its log {} \
                 ends with:{}",
                addresses[id as usize - 1],
                log.display(),
                log_tail(&log)
            )));
        }
        if let Ok(status) = client.status().await {
            if status.leader_id != 0 {
                return Ok(status.leader_id);
            }
        }
        if std::time::Instant::now() >= give_up {
            return Err(Failure::Other(format!(
                "no leader after {}s; every node is stopped (logs in {}/n*/server.log). A data \
                 dir from an earlier playground on other ports keeps those ports: use the \
                 same --port, or another --data-dir",
                PLAYGROUND_START.as_secs(),
                dir.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Refuses to start when a port the playground needs is taken, naming it.
fn check_ports_free(addresses: &[String]) -> Result<(), Failure> {
    for address in addresses {
        if let Err(e) = std::net::TcpListener::bind(address) {
            return Err(Failure::Other(format!(
                "cannot start the playground: {address} is not free ({e}); stop what uses it, \
                 or move the playground with --port N (node i listens on N+i-1)"
            )));
        }
    }
    Ok(())
}

pub async fn playground(args: PlaygroundArgs) -> Result<(), Failure> {
    let exe = std::env::current_exe()?;
    let last = u64::from(args.port) + args.nodes - 1;
    if args.port == 0 || last > u64::from(u16::MAX) {
        return Err(Failure::Usage(format!(
            "--port {}: the {} nodes need ports {}..={last}, within 1..=65535",
            args.port, args.nodes, args.port
        )));
    }
    let addresses: Vec<String> = (0..args.nodes)
        .map(|i| format!("127.0.0.1:{}", u64::from(args.port) + i))
        .collect();
    check_ports_free(&addresses)?;
    // From here on a signal stops the nodes too.
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let peers = addresses
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    std::fs::create_dir_all(&args.data_dir)?;
    let mut nodes = Nodes(Vec::new());
    for (i, address) in addresses.iter().enumerate() {
        let id = i as u64 + 1;
        let child = spawn_node(&exe, &args.data_dir, id, address, &peers)?;
        let pid = child.id();
        nodes.0.push((id, child));
        outln!(
            "node {id} pid {pid} on {address} (log {}/n{id}/server.log)",
            args.data_dir.display(),
        )?;
    }
    let children = &mut nodes.0;
    let leader = tokio::select! {
        started = wait_for_leader(children, &addresses, &args.data_dir) => started?,
        _ = &mut shutdown => return Err(Failure::Other("stopped before the cluster was up".into())),
    };
    let endpoints = addresses.join(",");
    outln!(
        "\ncluster of {} nodes running on {endpoints} (leader: node {leader}); try:",
        args.nodes
    )?;
    outln!("  raftkv --endpoints {endpoints} put hello world")?;
    outln!("  raftkv --endpoints {endpoints} get hello")?;
    outln!("  raftkv --endpoints {endpoints} status --cluster")?;
    outln!("(or export RAFTKV_ENDPOINTS={endpoints} once)")?;
    outln!("Ctrl-C stops every node.")?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let result = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            _ = tick.tick() => {
                while let Some((id, status)) = exited_node(children) {
                    errln!(
                        "node {id} exited ({status}); see {}/n{id}/server.log",
                        args.data_dir.display()
                    );
                    children.retain(|(other, _)| *other != id);
                }
                if children.is_empty() {
                    break Err(Failure::Other("every node has exited".into()));
                }
            }
        }
    };
    stop_all(children);
    // Standard output may be gone by now (a closed terminal); say it on stderr.
    errln!("playground stopped");
    result
}
