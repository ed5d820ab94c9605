//! Server configuration: defaults of docs/REFERENCE.md §1, the TOML file of
//! `--config` (same keys as the flags), and validation with clear messages.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::units::{parse_duration, parse_size};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7379";
pub const DEFAULT_DATA_DIR: &str = "raftkv-data";
/// etcd's upper bound on `--election-timeout` (50 s).
pub const MAX_ELECTION_TIMEOUT: Duration = Duration::from_secs(50);

/// A resolved server configuration.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Node id for a fresh data dir (default 1); must match a stored one.
    pub id: Option<u64>,
    pub data_dir: PathBuf,
    pub listen: String,
    /// Address peers and clients use to reach this node (default: listen).
    pub advertise: Option<String>,
    /// A separate listener for peer traffic (raft messages, snapshots):
    /// then `listen` takes clients only.
    pub listen_peer: Option<String>,
    /// Address peers use to reach `listen_peer` (default: listen_peer).
    pub advertise_peer: Option<String>,
    /// Initial members of a static cluster (fresh data dir only).
    pub peers: Option<Peers>,
    pub join: Vec<String>,
    pub learner: bool,
    /// etcd's `--force-new-cluster`: make this surviving member's data dir
    /// a one-member cluster (disaster recovery; see `force_new_cluster.rs`).
    pub force_new_cluster: bool,
    pub snapshot_entries: u64,
    pub wal_segment_size_bytes: u64,
    pub max_value_bytes: u64,
    pub election_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub lease_read: bool,
    pub metrics_listen: Option<String>,
    /// etcd's automatic compaction (off by default, as etcd's).
    pub auto_compaction: AutoCompaction,
    /// etcd's `--max-request-bytes`: the largest request on the etcd API.
    pub max_request_bytes: u64,
    /// etcd's `--quota-backend-bytes`: the state and its history may take
    /// this much before writes are refused (NOSPACE); 0: no quota.
    pub quota_bytes: u64,
    /// etcd's `--experimental-watch-progress-notify-interval`: how long a
    /// watcher created with `progress_notify` waits, quiet, for a progress
    /// response.
    pub watch_progress_notify_interval: Duration,
    /// How often the leader compares every member's state hash (zero: never;
    /// see `corruption.rs`).
    pub corruption_check_interval: Duration,
    /// A client request that takes longer is logged with where its time went
    /// (zero: never; see `slow.rs`).
    pub slow_request_threshold: Duration,
    /// etcd's `--auth-token-ttl`: how long a token from `Authenticate` is
    /// good.
    pub auth_token_ttl: Duration,
    /// Connections one client (IP address) may hold open; 0: no limit.
    pub max_connections_per_client: usize,
    /// etcd's `--max-concurrent-streams`: HTTP/2 streams per connection
    /// (`None`: no limit, etcd's default); a client past it waits.
    pub max_concurrent_streams: Option<u32>,
    /// TLS (etcd's flags; see [`ServerConfig::tls_files`]).
    pub tls: TlsSettings,
}

/// etcd's TLS flags as given; paired up and checked by
/// [`ServerConfig::tls_files`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
    pub peer_cert_file: Option<PathBuf>,
    pub peer_key_file: Option<PathBuf>,
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// etcd's `--peer-cert-allowed-cn`.
    pub peer_cert_allowed_cn: Option<String>,
}

/// etcd's `--auto-compaction-mode` and `--auto-compaction-retention`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AutoCompaction {
    #[default]
    Off,
    /// Keep the last N revisions.
    Revisions(u64),
    /// Keep the revisions of the last period.
    Period(Duration),
}

impl AutoCompaction {
    /// From etcd's two flags: `mode` `periodic` (the default) takes a
    /// duration ("1h", "30m") or a number of hours; `revision` a number of
    /// revisions; a retention of 0 is off.
    pub fn parse(mode: Option<&str>, retention: Option<&str>) -> Result<AutoCompaction, String> {
        let retention = retention.unwrap_or("0").trim();
        match mode.unwrap_or("periodic") {
            "revision" => {
                let n: u64 = retention.parse().map_err(|_| {
                    format!("--auto-compaction-retention {retention:?}: a number of revisions")
                })?;
                Ok(if n == 0 {
                    AutoCompaction::Off
                } else {
                    AutoCompaction::Revisions(n)
                })
            }
            "periodic" => {
                let period = match retention.parse::<u64>() {
                    Ok(hours) => hours
                        .checked_mul(3600)
                        .map(Duration::from_secs)
                        .ok_or_else(|| {
                            format!("--auto-compaction-retention {retention:?}: too long")
                        })?,
                    Err(_) => parse_duration(retention)
                        .map_err(|e| format!("--auto-compaction-retention {retention:?}: {e}"))?,
                };
                Ok(if period.is_zero() {
                    AutoCompaction::Off
                } else {
                    AutoCompaction::Period(period)
                })
            }
            other => Err(format!(
                "--auto-compaction-mode {other:?}: periodic or revision"
            )),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            id: None,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            listen: DEFAULT_LISTEN.to_string(),
            advertise: None,
            listen_peer: None,
            advertise_peer: None,
            peers: None,
            join: Vec::new(),
            learner: false,
            force_new_cluster: false,
            snapshot_entries: 10_000,
            wal_segment_size_bytes: 64 << 20,
            max_value_bytes: 128 << 20,
            election_timeout: Duration::from_secs(1),
            heartbeat_interval: Duration::from_millis(100),
            lease_read: true,
            metrics_listen: None,
            auto_compaction: AutoCompaction::Off,
            max_request_bytes: crate::etcd_kv::DEFAULT_MAX_REQUEST_BYTES,
            quota_bytes: 2 << 30,
            watch_progress_notify_interval: Duration::from_secs(600),
            corruption_check_interval: Duration::from_secs(600),
            slow_request_threshold: Duration::from_millis(100),
            auth_token_ttl: Duration::from_secs(300),
            max_connections_per_client: 1024,
            max_concurrent_streams: None,
            tls: TlsSettings::default(),
        }
    }
}

impl ServerConfig {
    pub fn advertise_address(&self) -> &str {
        self.advertise.as_deref().unwrap_or(&self.listen)
    }

    /// This node as the only member of a cluster, node `id`, at its
    /// advertised addresses.
    pub fn only_member(&self, id: u64) -> Peers {
        Peers {
            addresses: [(id, self.advertise_address().to_string())].into(),
            peer_listeners: self
                .advertise_peer_address()
                .map(|peer| (id, peer.to_string()))
                .into_iter()
                .collect(),
        }
    }

    /// Where peers reach this node's separate peer listener, if it has one.
    pub fn advertise_peer_address(&self) -> Option<&str> {
        self.advertise_peer
            .as_deref()
            .or(self.listen_peer.as_deref())
    }

    /// The TLS settings paired up: a certificate goes with its key, peer
    /// TLS needs its CA (members always verify each other), client
    /// certificate auth needs client TLS and a CA.
    pub fn tls_files(&self) -> Result<raftkv_net::tls::ServerTlsFiles, String> {
        use raftkv_net::tls::{CertFiles, ServerTlsFiles};
        let pair = |cert: &Option<PathBuf>, key: &Option<PathBuf>, names: (&str, &str)| match (
            cert, key,
        ) {
            (Some(cert), Some(key)) => Ok(Some(CertFiles {
                cert: cert.clone(),
                key: key.clone(),
            })),
            (None, None) => Ok(None),
            _ => Err(format!(
                "{} and {} go together: give both or neither",
                names.0, names.1
            )),
        };
        let t = &self.tls;
        let peer_flags = [
            ("--peer-cert-file", t.peer_cert_file.is_some()),
            ("--peer-key-file", t.peer_key_file.is_some()),
            ("--peer-trusted-ca-file", t.peer_trusted_ca_file.is_some()),
        ];
        if peer_flags.iter().any(|(_, given)| *given) {
            let missing: Vec<&str> = peer_flags
                .iter()
                .filter(|(_, given)| !given)
                .map(|(flag, _)| *flag)
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "peer TLS needs --peer-cert-file, --peer-key-file and --peer-trusted-ca-file \
                     together (members always verify each other); missing: {}",
                    missing.join(", ")
                ));
            }
        }
        let files = ServerTlsFiles {
            client: pair(&t.cert_file, &t.key_file, ("--cert-file", "--key-file"))?,
            trusted_ca: t.trusted_ca_file.clone(),
            client_cert_auth: t.client_cert_auth,
            peer: pair(
                &t.peer_cert_file,
                &t.peer_key_file,
                ("--peer-cert-file", "--peer-key-file"),
            )?,
            peer_trusted_ca: t.peer_trusted_ca_file.clone(),
            peer_allowed_cn: t.peer_cert_allowed_cn.clone(),
        };
        if files.trusted_ca.is_some() && files.client.is_none() && files.peer.is_none() {
            return Err(
                "--trusted-ca-file verifies client certificates over TLS: give --cert-file and \
                 --key-file too"
                    .into(),
            );
        }
        files.check().map_err(|e| e.to_string())?;
        let has_others =
            self.peers.as_ref().is_some_and(|p| p.addresses.len() > 1) || !self.join.is_empty();
        if files.client.is_some()
            && files.peer.is_none()
            && files.trusted_ca.is_none()
            && has_others
        {
            return Err(
                "--cert-file without peer TLS needs --trusted-ca-file in a cluster of several \
                 members: they reach each other's client services (forwarded requests, joins) \
                 over TLS and verify each other's certificates with it (or give the --peer-* \
                 flags)"
                    .into(),
            );
        }
        Ok(files)
    }

    /// Checks what can be checked before touching the disk.
    pub fn validate(&self) -> Result<(), String> {
        self.tls_files()?;
        if self.id == Some(0) {
            return Err("--id must be 1 or more".into());
        }
        if self.auth_token_ttl.is_zero() || self.auth_token_ttl > Duration::from_secs(31_536_000) {
            return Err("--auth-token-ttl must be between 1 and 31536000 seconds".into());
        }
        if self.max_concurrent_streams == Some(0) {
            return Err("--max-concurrent-streams must be more than 0".into());
        }
        if self.watch_progress_notify_interval.is_zero() {
            return Err("--experimental-watch-progress-notify-interval must be more than 0".into());
        }
        if self.heartbeat_interval.is_zero() {
            return Err("--heartbeat-interval must be more than 0".into());
        }
        // etcd's bound on the election timeout; the heartbeat is shorter.
        if self.election_timeout > MAX_ELECTION_TIMEOUT {
            return Err(format!(
                "--election-timeout must be at most {}s (etcd's bound)",
                MAX_ELECTION_TIMEOUT.as_secs()
            ));
        }
        if self.heartbeat_interval > MAX_ELECTION_TIMEOUT {
            return Err(format!(
                "--heartbeat-interval must be at most {}s",
                MAX_ELECTION_TIMEOUT.as_secs()
            ));
        }
        if self.election_timeout < self.heartbeat_interval * 2 {
            return Err(format!(
                "--election-timeout ({:?}) must be at least twice --heartbeat-interval ({:?})",
                self.election_timeout, self.heartbeat_interval
            ));
        }
        if self.wal_segment_size_bytes < 4096 {
            return Err("--wal-segment-size must be at least 4KiB".into());
        }
        if let (Some(peers), Some(id)) = (&self.peers, self.id) {
            if !peers.addresses.contains_key(&id) {
                return Err(format!("--peers does not list this node's id {id}"));
            }
        }
        if self.force_new_cluster && !self.join.is_empty() {
            return Err(
                "--force-new-cluster makes this data dir a new one-member cluster; it cannot \
                 --join another"
                    .into(),
            );
        }
        if self.learner && self.join.is_empty() {
            return Err("--learner applies to a node that joins: give --join too".into());
        }
        if self.snapshot_entries == 0 {
            return Err("--snapshot-entries must be 1 or more".into());
        }
        if self.peers.is_some() && !self.join.is_empty() {
            return Err("--peers (static cluster) and --join cannot be used together".into());
        }
        check_address(&self.listen, "--listen")?;
        if let Some(advertise) = &self.advertise {
            check_address(advertise, "--advertise")?;
        }
        check_reachable(self.advertise_address())?;
        if let Some(address) = &self.listen_peer {
            check_address(address, "--listen-peer")?;
            if *address == self.listen {
                return Err(format!(
                    "--listen-peer {address} is --listen too: give the peer listener a port of \
                     its own, or leave --listen-peer out to take peers on --listen"
                ));
            }
        }
        match (&self.advertise_peer, &self.listen_peer) {
            (Some(_), None) => {
                return Err("--advertise-peer needs --listen-peer (the listener it names)".into())
            }
            (Some(address), Some(_)) => {
                check_address(address, "--advertise-peer")?;
            }
            _ => {}
        }
        if let Some(address) = self.advertise_peer_address() {
            if address == self.advertise_address() {
                return Err(format!(
                    "--advertise-peer {address} is where clients reach this node too: peers \
                     must reach the peer listener at an address of its own"
                ));
            }
            check_reachable(address).map_err(|_| {
                format!(
                    "{address} (\"any address\") is not an address other nodes can reach: it \
                     is only good to listen on; give --advertise-peer HOST:PORT with this \
                     machine's address"
                )
            })?;
        }
        for address in &self.join {
            check_address(address, "--join")?;
        }
        if let Some(address) = &self.metrics_listen {
            check_address(address, "--metrics-listen")?;
        }
        Ok(())
    }
}

/// Checks that `address` is HOST:PORT with a port from 1 to 65535 (`what`
/// names the flag in the message); returns it trimmed.
pub fn check_address(address: &str, what: &str) -> Result<String, String> {
    let address = address.trim();
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("invalid {what} {address:?} (expected HOST:PORT)"));
    };
    let bracketed = host.starts_with('[') && host.ends_with(']');
    if host.is_empty() || (host.contains(':') && !bracketed) {
        return Err(format!("invalid {what} {address:?} (expected HOST:PORT)"));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(address.to_string()),
        _ => Err(format!(
            "invalid {what} {address:?}: the port must be a number from 1 to 65535"
        )),
    }
}

/// The address other nodes and clients are told to use must name a host they
/// can reach, not "any address".
fn check_reachable(advertise: &str) -> Result<(), String> {
    let host = advertise.rsplit_once(':').map_or("", |(host, _)| host);
    if matches!(host, "0.0.0.0" | "[::]" | "::") {
        return Err(format!(
            "{advertise} (\"any address\") is not an address other nodes can reach: it is only \
             good to listen on; give --advertise HOST:PORT with this machine's address"
        ));
    }
    Ok(())
}

/// The members of `--peers`: each one's address, and the separate peer
/// listeners (`--listen-peer`) of those that have one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peers {
    pub addresses: BTreeMap<u64, String>,
    pub peer_listeners: BTreeMap<u64, String>,
}

/// Splits a member's `HOST:PORT[/PEER_HOST:PORT]` (its address, then its
/// separate peer listener if it has one), checking both; `what` names it
/// in errors.
pub fn parse_member_address(text: &str, what: &str) -> Result<(String, Option<String>), String> {
    let (address, peer) = match text.split_once('/') {
        Some((address, peer)) => (address, Some(peer)),
        None => (text, None),
    };
    let address = check_address(address, what)?;
    let peer = peer
        .map(|peer| check_address(peer, &format!("peer listener of {what}")))
        .transpose()?;
    Ok((address, peer))
}

/// Parses `1=host:port,2=host:port,...`, where a member with a separate
/// peer listener is `ID=HOST:PORT/PEER_HOST:PORT`.
pub fn parse_peers(text: &str) -> Result<Peers, String> {
    let mut peers = Peers::default();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, address) = item.split_once('=').ok_or_else(|| {
            format!("invalid peer {item:?} in --peers (expected ID=HOST:PORT[/PEER_HOST:PORT])")
        })?;
        let id: u64 = id
            .trim()
            .parse()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| format!("invalid node id {id:?} in --peers (expected 1 or more)"))?;
        let (address, peer_listener) =
            parse_member_address(address, &format!("address for node {id} in --peers"))?;
        if peer_listener.as_ref() == Some(&address) {
            return Err(format!(
                "--peers gives node {id} the peer listener {address}, which is its address \
                 too: a separate peer listener needs a port of its own (or write the entry \
                 as {id}={address} to take peers on that address)"
            ));
        }
        check_reachable(&address)?;
        if let Some(peer_listener) = &peer_listener {
            check_reachable(peer_listener).map_err(|_| {
                format!(
                    "--peers gives node {id} the peer listener {peer_listener}, where it \
                     listens, not an address other nodes can reach; list the address of its \
                     --advertise-peer"
                )
            })?;
        }
        for address in std::iter::once(&address).chain(&peer_listener) {
            let mut taken = peers
                .addresses
                .values()
                .chain(peers.peer_listeners.values());
            if taken.any(|a| a == address) {
                return Err(format!("address {address} is listed twice in --peers"));
            }
        }
        if peer_listener.as_ref() == Some(&address) {
            return Err(format!("address {address} is listed twice in --peers"));
        }
        if peers.addresses.insert(id, address).is_some() {
            return Err(format!("node id {id} is listed twice in --peers"));
        }
        if let Some(peer_listener) = peer_listener {
            peers.peer_listeners.insert(id, peer_listener);
        }
    }
    if peers.addresses.is_empty() {
        return Err("--peers is empty".into());
    }
    Ok(peers)
}

/// The `--config FILE` format: TOML with the same keys as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigFile {
    pub id: Option<u64>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub advertise: Option<String>,
    pub listen_peer: Option<String>,
    pub advertise_peer: Option<String>,
    pub peers: Option<String>,
    pub join: Option<String>,
    pub learner: Option<bool>,
    pub force_new_cluster: Option<bool>,
    pub snapshot_entries: Option<u64>,
    pub wal_segment_size: Option<String>,
    pub max_value_size: Option<String>,
    pub election_timeout: Option<String>,
    pub heartbeat_interval: Option<String>,
    pub lease_read: Option<bool>,
    pub metrics_listen: Option<String>,
    pub auto_compaction_mode: Option<String>,
    pub auto_compaction_retention: Option<String>,
    pub max_request_bytes: Option<String>,
    pub experimental_watch_progress_notify_interval: Option<String>,
    pub corruption_check_interval: Option<String>,
    pub slow_request_threshold: Option<String>,
    pub quota_bytes: Option<String>,
    /// Seconds, as etcd's flag.
    pub auth_token_ttl: Option<u64>,
    pub max_connections_per_client: Option<usize>,
    pub max_concurrent_streams: Option<u32>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: Option<bool>,
    pub peer_cert_file: Option<PathBuf>,
    pub peer_key_file: Option<PathBuf>,
    pub peer_trusted_ca_file: Option<PathBuf>,
    pub peer_cert_allowed_cn: Option<String>,
}

impl ConfigFile {
    pub fn load(path: &std::path::Path) -> Result<ConfigFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("invalid config file {}: {e}", path.display()))
    }

    /// Applies the file's settings over `config` (flags are applied after).
    pub fn apply_to(&self, config: &mut ServerConfig) -> Result<(), String> {
        if let Some(v) = self.id {
            config.id = Some(v);
        }
        if let Some(v) = &self.data_dir {
            config.data_dir = v.clone();
        }
        if let Some(v) = &self.listen {
            config.listen = v.clone();
        }
        if let Some(v) = &self.advertise {
            config.advertise = Some(v.clone());
        }
        if let Some(v) = &self.listen_peer {
            config.listen_peer = Some(v.clone());
        }
        if let Some(v) = &self.advertise_peer {
            config.advertise_peer = Some(v.clone());
        }
        if let Some(v) = &self.peers {
            config.peers = Some(parse_peers(v)?);
        }
        if let Some(v) = &self.join {
            config.join = v.split(',').map(|s| s.trim().to_string()).collect();
        }
        if let Some(v) = self.learner {
            config.learner = v;
        }
        if let Some(v) = self.force_new_cluster {
            config.force_new_cluster = v;
        }
        if let Some(v) = self.snapshot_entries {
            config.snapshot_entries = v;
        }
        if let Some(v) = &self.wal_segment_size {
            config.wal_segment_size_bytes = parse_size(v)?;
        }
        if let Some(v) = &self.max_value_size {
            config.max_value_bytes = parse_size(v)?;
        }
        if let Some(v) = &self.election_timeout {
            config.election_timeout = parse_duration(v)?;
        }
        if let Some(v) = &self.heartbeat_interval {
            config.heartbeat_interval = parse_duration(v)?;
        }
        if let Some(v) = self.lease_read {
            config.lease_read = v;
        }
        if let Some(v) = &self.metrics_listen {
            config.metrics_listen = Some(v.clone());
        }
        if let Some(v) = &self.max_request_bytes {
            config.max_request_bytes = parse_size(v)?;
        }
        if let Some(v) = &self.quota_bytes {
            config.quota_bytes = parse_size(v)?;
        }
        if let Some(v) = &self.corruption_check_interval {
            config.corruption_check_interval = parse_duration(v)?;
        }
        if let Some(v) = &self.slow_request_threshold {
            config.slow_request_threshold = parse_duration(v)?;
        }
        if let Some(v) = &self.experimental_watch_progress_notify_interval {
            config.watch_progress_notify_interval = parse_duration(v)?;
        }
        if let Some(v) = self.auth_token_ttl {
            config.auth_token_ttl = Duration::from_secs(v);
        }
        if let Some(v) = self.max_connections_per_client {
            config.max_connections_per_client = v;
        }
        if let Some(v) = self.max_concurrent_streams {
            config.max_concurrent_streams = Some(v);
        }
        if self.auto_compaction_mode.is_some() || self.auto_compaction_retention.is_some() {
            config.auto_compaction = AutoCompaction::parse(
                self.auto_compaction_mode.as_deref(),
                self.auto_compaction_retention.as_deref(),
            )?;
        }
        let tls = &mut config.tls;
        for (given, setting) in [
            (&self.cert_file, &mut tls.cert_file),
            (&self.key_file, &mut tls.key_file),
            (&self.trusted_ca_file, &mut tls.trusted_ca_file),
            (&self.peer_cert_file, &mut tls.peer_cert_file),
            (&self.peer_key_file, &mut tls.peer_key_file),
            (&self.peer_trusted_ca_file, &mut tls.peer_trusted_ca_file),
        ] {
            if given.is_some() {
                setting.clone_from(given);
            }
        }
        if let Some(v) = self.client_cert_auth {
            tls.client_cert_auth = v;
        }
        if self.peer_cert_allowed_cn.is_some() {
            tls.peer_cert_allowed_cn
                .clone_from(&self.peer_cert_allowed_cn);
        }
        Ok(())
    }
}

/// The bootstrap id of a static cluster: a stable hash of its initial
/// members, so every node started with the same `--peers` agrees on it and
/// a node started with a different list is refused by the others. (Not the
/// cluster's id: two clusters with the same flags share it; the cluster id
/// is chosen at random through the log, see the replica's `cluster_id.rs`.)
pub fn bootstrap_id_of(peers: &Peers) -> u64 {
    let canonical: Vec<String> = peers
        .addresses
        .iter()
        .map(|(id, a)| match peers.peer_listeners.get(id) {
            Some(peer) => format!("{id}={a}/{peer}"),
            None => format!("{id}={a}"),
        })
        .collect();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in canonical.join(",").bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash.max(1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn auto_compaction_takes_etcd_s_flags() {
        use super::AutoCompaction as A;
        assert_eq!(A::parse(None, None), Ok(A::Off));
        assert_eq!(
            A::parse(Some("revision"), Some("1000")),
            Ok(A::Revisions(1000))
        );
        assert_eq!(
            A::parse(None, Some("1")),
            Ok(A::Period(Duration::from_secs(3600)))
        );
        assert_eq!(
            A::parse(Some("periodic"), Some("30m")),
            Ok(A::Period(Duration::from_secs(1800)))
        );
        assert_eq!(A::parse(Some("revision"), Some("0")), Ok(A::Off));
        assert!(A::parse(Some("hourly"), Some("1"))
            .unwrap_err()
            .contains("periodic or revision"));
        assert!(A::parse(Some("revision"), Some("1h")).is_err());
    }

    use super::*;

    #[test]
    fn peers_parse_and_bad_lists_are_explained() {
        let peers = parse_peers("1=127.0.0.1:7379, 2=127.0.0.1:7380").unwrap();
        assert_eq!(peers.addresses[&2], "127.0.0.1:7380");
        assert!(peers.peer_listeners.is_empty());
        let peers = parse_peers("1=127.0.0.1:7379/127.0.0.1:8379,2=127.0.0.1:7380").unwrap();
        assert_eq!(peers.addresses[&1], "127.0.0.1:7379");
        assert_eq!(peers.peer_listeners[&1], "127.0.0.1:8379");
        assert!(!peers.peer_listeners.contains_key(&2));
        assert!(parse_peers("1=a:1/a:1")
            .unwrap_err()
            .contains("port of its own"));
        assert!(parse_peers("1=a:1/0.0.0.0:2")
            .unwrap_err()
            .contains("--advertise-peer"));
        assert!(parse_peers("1=a:1/b:2,2=b:2")
            .unwrap_err()
            .contains("twice"));
        assert!(parse_peers("1=a:1/nope")
            .unwrap_err()
            .contains("peer listener"));
        assert!(parse_peers("1=a:1,1=b:2").unwrap_err().contains("twice"));
        assert!(parse_peers("x=a:1").unwrap_err().contains("node id"));
        assert!(parse_peers("1=nohostport")
            .unwrap_err()
            .contains("HOST:PORT"));
        assert!(parse_peers("1=h:99999").unwrap_err().contains("port"));
        assert!(parse_peers("0=a:1").is_err());
    }

    #[test]
    fn bootstrap_id_depends_on_the_member_list_only() {
        let a = parse_peers("1=a:1,2=b:2").unwrap();
        let b = parse_peers("2=b:2,1=a:1").unwrap();
        let c = parse_peers("1=a:1,2=b:3").unwrap();
        assert_eq!(bootstrap_id_of(&a), bootstrap_id_of(&b));
        assert_ne!(bootstrap_id_of(&a), bootstrap_id_of(&c));
        let d = parse_peers("1=a:1/a:9,2=b:2").unwrap();
        assert_ne!(bootstrap_id_of(&a), bootstrap_id_of(&d));
    }

    #[test]
    fn a_peer_listener_needs_a_port_of_its_own_and_a_reachable_address() {
        let mut config = ServerConfig {
            listen_peer: Some(DEFAULT_LISTEN.into()),
            ..Default::default()
        };
        assert!(config.validate().unwrap_err().contains("port of its own"));
        config.listen_peer = Some("0.0.0.0:8379".into());
        assert!(config.validate().unwrap_err().contains("--advertise-peer"));
        config.advertise_peer = Some("10.0.0.5:8379".into());
        assert!(config.validate().is_ok());
        assert_eq!(config.advertise_peer_address(), Some("10.0.0.5:8379"));
        config.advertise = Some("10.0.0.5:8379".into());
        assert!(config.validate().unwrap_err().contains("clients reach"));
        config.advertise = None;
        config.listen_peer = None;
        assert!(config
            .validate()
            .unwrap_err()
            .contains("needs --listen-peer"));
    }

    #[test]
    fn addresses_are_checked_before_anything_is_written() {
        let mut config = ServerConfig {
            listen: "0.0.0.0:abc".into(),
            ..Default::default()
        };
        assert!(config.validate().unwrap_err().contains("port"));
        config.listen = "0.0.0.0:7379".into();
        assert!(config.validate().unwrap_err().contains("--advertise"));
        config.advertise = Some("10.0.0.5:7379".into());
        assert!(config.validate().is_ok());
        config.advertise = Some("10.0.0.5".into());
        assert!(config.validate().unwrap_err().contains("HOST:PORT"));
        for bad in ["", ":7379", "h:0", "h:70000", "a:b:1"] {
            assert!(check_address(bad, "x").is_err(), "{bad:?}");
        }
        for good in ["h:1", "[::1]:7379", "127.0.0.1:65535"] {
            assert_eq!(check_address(good, "x").as_deref(), Ok(good));
        }
        assert!(parse_peers("1=a:1,2=a:1").unwrap_err().contains("twice"));
        assert!(parse_peers("1=0.0.0.0:1").is_err());
        config.advertise = Some("10.0.0.5:7379".into());
        config.join = vec!["nohost".into()];
        assert!(config.validate().unwrap_err().contains("--join"));
    }

    #[test]
    fn config_file_uses_flag_names() {
        let file: ConfigFile = toml::from_str(
            "id = 2\nlisten = \"127.0.0.1:9000\"\nwal-segment-size = \"1MiB\"\nelection-timeout = \"2s\"\n",
        )
        .unwrap();
        let mut config = ServerConfig::default();
        file.apply_to(&mut config).unwrap();
        assert_eq!(config.id, Some(2));
        assert_eq!(config.wal_segment_size_bytes, 1 << 20);
        assert_eq!(config.election_timeout, Duration::from_secs(2));
        assert!(toml::from_str::<ConfigFile>("bogus = 1").is_err());
    }

    #[test]
    fn validation_catches_inconsistent_settings() {
        let mut config = ServerConfig {
            id: Some(3),
            peers: Some(parse_peers("1=a:1,2=b:2").unwrap()),
            ..Default::default()
        };
        assert!(config.validate().unwrap_err().contains("does not list"));
        config.peers = None;
        config.election_timeout = Duration::from_millis(150);
        assert!(config.validate().is_err());
    }
}
