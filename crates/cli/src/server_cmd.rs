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
    if let Some(v) = &args.peers {
        config.peers = Some(parse_peers(v).map_err(usage)?);
    }
    if let Some(v) = args.join {
        config.join = v;
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
    config.validate().map_err(usage)?;
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

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
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

pub async fn playground(args: PlaygroundArgs) -> Result<(), Failure> {
    let exe = std::env::current_exe()?;
    let addresses: Vec<String> = (0..args.nodes)
        .map(|i| format!("127.0.0.1:{}", u64::from(args.base_port) + i))
        .collect();
    let peers = addresses
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    std::fs::create_dir_all(&args.data_dir)?;
    let mut children = Vec::new();
    for (i, address) in addresses.iter().enumerate() {
        let child = spawn_node(&exe, &args.data_dir, i as u64 + 1, address, &peers)?;
        println!(
            "node {} pid {} on {address} (log {}/n{}/server.log)",
            i + 1,
            child.id(),
            args.data_dir.display(),
            i + 1
        );
        children.push(child);
    }
    let endpoints = addresses.join(",");
    println!("\ncluster of {} nodes running; try:", args.nodes);
    println!("  raftkv --endpoints {endpoints} put hello world");
    println!("  raftkv --endpoints {endpoints} get hello");
    println!("  raftkv --endpoints {endpoints} status --cluster");
    println!("Ctrl-C stops every node.");
    let mut exited = tokio::time::interval(Duration::from_millis(500));
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let result = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            _ = exited.tick() => {
                for (i, child) in children.iter_mut().enumerate() {
                    if let Ok(Some(status)) = child.try_wait() {
                        eprintln!("node {} exited ({status}); see its log", i + 1);
                    }
                }
                children.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
                if children.is_empty() {
                    break Err(Failure::Other("every node has exited".into()));
                }
            }
        }
    };
    for child in &mut children {
        // SIGTERM first: nodes shut down cleanly.
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    for child in &mut children {
        let _ = child.wait();
    }
    println!("playground stopped");
    result
}
