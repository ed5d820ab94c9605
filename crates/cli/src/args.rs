//! Command-line interface of `raftkv` (docs/REFERENCE.md §1), declared with clap.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "raftkv",
    version,
    about = "RaftKV: a strongly consistent, Raft-replicated key-value store",
    long_about = "RaftKV: a strongly consistent, Raft-replicated key-value store.\n\n\
        Start a single-node store with `raftkv server`, then `raftkv put KEY VALUE` and \
        `raftkv get KEY`. `raftkv playground` starts a local 3-node cluster.\n\n\
        The client options (--endpoints, --timeout, --json, --cacert, --cert, --key) go \
        before or after the command.\n\n\
        Exit codes: 0 success, 1 key not found (get), 2 usage error, 3 any other error."
)]
pub struct Cli {
    #[command(flatten)]
    pub client: TopClientArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The client options given before the command (`raftkv --endpoints A get K`).
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Client options")]
pub struct TopClientArgs {
    /// Cluster endpoints (any members), comma-separated HOST:PORT (or
    /// https://HOST:PORT, with --cacert) [env: RAFTKV_ENDPOINTS] [default: 127.0.0.1:7379].
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT,...")]
    pub endpoints: Option<Vec<String>>,
    /// Deadline of a client command, retries included (e.g. 500ms, 5s, 2m) [default: 5s].
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Machine-readable output: one compact JSON object per line (errors too, on stderr).
    #[arg(long)]
    pub json: bool,
    /// The CA (PEM) that signed the servers' certificates: talk TLS (https://)
    /// [env: RAFTKV_CACERT].
    #[arg(long, id = "tls_cacert", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// This client's certificate (PEM), for servers with --client-cert-auth
    /// [env: RAFTKV_CERT].
    #[arg(long, id = "tls_cert", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of --cert [env: RAFTKV_KEY].
    #[arg(long = "key", id = "tls_key", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Log in as this user (auth on): NAME or NAME:PASSWORD; without the
    /// password it is read from RAFTKV_PASSWORD or asked for on the terminal
    /// [env: RAFTKV_USER].
    #[arg(long, id = "auth_user", value_name = "NAME[:PASSWORD]")]
    pub user: Option<String>,
}

/// The client options given after the command (`raftkv get K --endpoints A`);
/// they win over the same options given before it.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Client options")]
pub struct ClientArgs {
    /// Cluster endpoints (any members), comma-separated HOST:PORT (or
    /// https://HOST:PORT, with --cacert) [env: RAFTKV_ENDPOINTS] [default: 127.0.0.1:7379].
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        value_name = "HOST:PORT,..."
    )]
    pub endpoints: Option<Vec<String>>,
    /// Deadline of the command, retries included (e.g. 500ms, 5s, 2m) [default: 5s].
    #[arg(long, global = true, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Machine-readable output: one compact JSON object per line (errors too, on stderr).
    #[arg(long, global = true)]
    pub json: bool,
    /// The CA (PEM) that signed the servers' certificates: talk TLS (https://)
    /// [env: RAFTKV_CACERT].
    #[arg(long, id = "tls_cacert", global = true, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// This client's certificate (PEM), for servers with --client-cert-auth
    /// [env: RAFTKV_CERT].
    #[arg(long, id = "tls_cert", global = true, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of --cert [env: RAFTKV_KEY].
    #[arg(long = "key", id = "tls_key", global = true, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Log in as this user (auth on): NAME or NAME:PASSWORD; without the
    /// password it is read from RAFTKV_PASSWORD or asked for on the terminal
    /// [env: RAFTKV_USER].
    #[arg(long, id = "auth_user", global = true, value_name = "NAME[:PASSWORD]")]
    pub user: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a RaftKV node (with no flags: a single-node store on 127.0.0.1:7379).
    Server(Box<ServerArgs>),
    /// Store a value: `put KEY VALUE`, or `put KEY --file PATH` (PATH "-" = stdin).
    Put(PutArgs),
    /// Print the value of a key (exit 1 if it does not exist).
    Get(GetArgs),
    /// Delete a key (succeeds if it does not exist).
    Delete(DeleteArgs),
    /// Print every change to a key (or a prefix) as it happens, from now or
    /// from a past revision, until interrupted: `PUT<TAB>KEY<TAB>VALUE` or
    /// `DELETE<TAB>KEY` per line (raw bytes; --json: one object per event).
    Watch(WatchArgs),
    /// Leases (etcd's): grant, keep-alive, revoke, list, ttl. Keys put with
    /// --lease are deleted when their lease expires or is revoked.
    Lease(LeaseArgs),
    /// Users (auth): add, delete, get, list, passwd, grant-role, revoke-role.
    User(UserArgs),
    /// Roles (auth) and their key permissions: add, delete, get, list,
    /// grant-permission, revoke-permission.
    Role(RoleArgs),
    /// Turn authentication on (needs user root with role root) or off, or
    /// show whether it is on.
    Auth(AuthArgs),
    /// Compact the history: revisions before REV are no longer served
    /// (reads and watches from them are refused as compacted).
    Compact(CompactArgs),
    /// List keys with a prefix, in ascending byte order.
    ///
    /// Prints KEY<TAB>VALUE per line as raw bytes, so a key or value holding a tab
    /// or a newline makes the output ambiguous: --escape escapes them, --json gives
    /// one JSON object per pair.
    Scan(ScanArgs),
    /// Show a node's view: role, term, leader, indexes, members.
    Status(StatusArgs),
    /// Membership: list, add, promote, remove, change, transfer leadership.
    Cluster(ClusterArgs),
    /// Debug views: raft state, storage, snapshots, replica hashes.
    Debug(DebugArgs),
    /// Backups: save a consistent snapshot of a live cluster to a file, check
    /// what a file holds, restore one into the data dir of a new cluster's member.
    Snapshot(SnapshotArgs),
    /// Alarms (etcd's): list them (NOSPACE: a node short of disk, or the space quota
    /// passed; CORRUPT: the corruption check found a member that differs), or disarm
    /// the space quota's NOSPACE once deletes and compaction brought the state under.
    Alarm(AlarmArgs),
    /// Measure latency and throughput against a running cluster.
    Bench(BenchArgs),
    /// Start a local cluster of several nodes in the foreground (Ctrl-C stops it).
    Playground(PlaygroundArgs),
}

impl Command {
    /// The client options given after the command (none for `server` and
    /// `playground`, which are not clients).
    pub fn client_args(&self) -> Option<&ClientArgs> {
        match self {
            Command::Server(_) | Command::Playground(_) => None,
            Command::Put(a) => Some(&a.client),
            Command::Get(a) => Some(&a.client),
            Command::Delete(a) => Some(&a.client),
            Command::Scan(a) => Some(&a.client),
            Command::Watch(a) => Some(&a.client),
            Command::Compact(a) => Some(&a.client),
            Command::Lease(a) => Some(&a.client),
            Command::User(a) => Some(&a.client),
            Command::Role(a) => Some(&a.client),
            Command::Auth(a) => Some(&a.client),
            Command::Status(a) => Some(&a.client),
            Command::Cluster(a) => Some(&a.client),
            Command::Debug(a) => Some(&a.client),
            Command::Snapshot(a) => Some(&a.client),
            Command::Alarm(a) => Some(&a.client),
            Command::Bench(a) => Some(&a.client),
        }
    }
}

#[derive(Args, Debug, Default)]
pub struct ServerArgs {
    /// Node id (fresh data dir only; default 1). Must match a stored id.
    #[arg(long)]
    pub id: Option<u64>,
    /// Data directory (default ./raftkv-data, relative to the working directory;
    /// the server logs the absolute path and whether it created or opened it).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on for clients and peers (default 127.0.0.1:7379); clients only
    /// with --listen-peer.
    #[arg(long)]
    pub listen: Option<String>,
    /// Address others use to reach this node (default: --listen).
    #[arg(long)]
    pub advertise: Option<String>,
    /// A separate listener for peer traffic (raft messages, snapshots), for a firewall
    /// that keeps it apart from clients; with peer TLS it takes only members'
    /// certificates. Without it, peers use --listen. List it in --peers as
    /// ID=HOST:PORT/PEER_HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub listen_peer: Option<String>,
    /// Address peers use to reach --listen-peer (default: --listen-peer).
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise_peer: Option<String>,
    /// Initial members of a static cluster: 1=HOST:PORT,2=HOST:PORT,... (a member with a
    /// separate peer listener: ID=HOST:PORT/PEER_HOST:PORT).
    #[arg(long)]
    pub peers: Option<String>,
    /// Join an existing cluster through any member's address (comma-separated): start empty,
    /// be added as a learner, get a snapshot, be promoted once caught up. The node asks
    /// for this itself; `raftkv cluster add` is only needed to choose its id from outside.
    #[arg(long, value_delimiter = ',')]
    pub join: Option<Vec<String>>,
    /// With --join: stay a learner instead of being promoted.
    #[arg(long)]
    pub learner: bool,
    /// Disaster recovery, once a cluster has lost its quorum for good: make this surviving
    /// member's data dir a one-member cluster (new cluster id) holding everything its log
    /// holds; the old data dir is kept beside it. Refused while another member answers as
    /// part of a live cluster. Add the others back empty with --join; leave the flag out
    /// of later starts. Logged loudly; see the docs for the risks.
    #[arg(long)]
    pub force_new_cluster: bool,
    /// Take a snapshot every N applied entries (default 10000).
    #[arg(long)]
    pub snapshot_entries: Option<u64>,
    /// Size of a WAL segment file (default 64MiB); the segment being written is
    /// preallocated to it.
    #[arg(long)]
    pub wal_segment_size: Option<String>,
    /// Largest value accepted (default 128MiB). Same on every member: a node joining with
    /// another is refused.
    #[arg(long, value_name = "SIZE")]
    pub max_value_size: Option<String>,
    /// Raft election timeout (default 1s). Same on every member: a node joining with
    /// another is refused.
    #[arg(long, value_name = "DURATION")]
    pub election_timeout: Option<String>,
    /// Raft heartbeat interval (default 100ms). Same on every member: a node joining with
    /// another is refused.
    #[arg(long, value_name = "DURATION")]
    pub heartbeat_interval: Option<String>,
    /// Serve `--consistency lease` reads from a leader lease (default true).
    #[arg(long)]
    pub lease_read: Option<bool>,
    /// etcd's automatic compaction: `periodic` (keep the revisions of the
    /// last --auto-compaction-retention, a duration or hours) or `revision`
    /// (keep the last N revisions). Default periodic.
    #[arg(long, value_name = "MODE")]
    pub auto_compaction_mode: Option<String>,
    /// What automatic compaction keeps (see --auto-compaction-mode); 0, the
    /// default, is off.
    #[arg(long, value_name = "RETENTION")]
    pub auto_compaction_retention: Option<String>,
    /// Largest request on the etcd API (default 1.5MiB, etcd's); larger
    /// values go through raftkv.v1 (up to --max-value-size).
    #[arg(long, value_name = "SIZE")]
    pub max_request_bytes: Option<String>,
    /// How long an etcd watcher created with progress_notify goes quiet
    /// before it is sent the revision it is current at (default 10m).
    #[arg(long, value_name = "DURATION")]
    pub experimental_watch_progress_notify_interval: Option<String>,
    /// Space quota (etcd's --quota-backend-bytes): once the state and its history take
    /// more, writes that add data are refused (alarm NOSPACE) until deletes and compaction
    /// bring it under and the alarm is disarmed (`raftkv alarm disarm`). Default 2GiB; 0:
    /// no quota.
    #[arg(long, value_name = "SIZE", alias = "quota-backend-bytes")]
    pub quota_bytes: Option<String>,
    /// How often the leader compares the state hash of every member at one revision and
    /// raises the CORRUPT alarm for one that differs (default 10m; 0: never).
    #[arg(long, value_name = "DURATION")]
    pub corruption_check_interval: Option<String>,
    /// Log a client request that takes longer than this, with its op, key and value sizes
    /// and where its time went (queue, propose, commit, apply, read index); counted in
    /// raftkv_slow_requests_total (default 100ms; 0: never).
    #[arg(long, value_name = "DURATION")]
    pub slow_request_threshold: Option<String>,
    /// Seconds a token from logging in (etcd's Authenticate) is good
    /// (default 300, etcd's).
    #[arg(long, value_name = "SECONDS")]
    pub auth_token_ttl: Option<u64>,
    /// Connections one client (IP address) may hold open at once; requests on
    /// more are refused, saying so (default 1024; 0: no limit).
    #[arg(long, value_name = "N")]
    pub max_connections_per_client: Option<usize>,
    /// HTTP/2 streams (concurrent calls, watches included) per connection; a
    /// client past it waits for one to end (default: no limit, as etcd's).
    #[arg(long, value_name = "N")]
    pub max_concurrent_streams: Option<u32>,
    /// Serve /metrics, /health, /livez and /readyz on this address (plaintext, whatever
    /// the TLS flags) instead of the main port, where they then answer 404 naming it.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listen: Option<String>,
    /// Client TLS: this node's certificate (PEM) for clients. With it client
    /// requests need https:// (TLS); plaintext ones are refused.
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub cert_file: Option<PathBuf>,
    /// Client TLS: the private key (PEM) of --cert-file.
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub key_file: Option<PathBuf>,
    /// The CA (PEM) that signs client certificates.
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Client requests need a certificate signed by --trusted-ca-file.
    #[arg(long, help_heading = "TLS")]
    pub client_cert_auth: bool,
    /// Peer TLS: this node's certificate (PEM) for and to the other members.
    /// With it, raft traffic needs TLS and a certificate from
    /// --peer-trusted-ca-file.
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub peer_cert_file: Option<PathBuf>,
    /// Peer TLS: the private key (PEM) of --peer-cert-file.
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub peer_key_file: Option<PathBuf>,
    /// Peer TLS: the CA (PEM) that signs members' certificates.
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Peer TLS: a member's certificate must also have this CN (give it when
    /// the peer CA signs other certificates too, e.g. one CA for everything).
    #[arg(long, value_name = "CN", help_heading = "TLS")]
    pub peer_cert_allowed_cn: Option<String>,
    /// TOML file with the same keys as these flags (flags override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PutArgs {
    /// The key: 1 byte to 4 KiB, any bytes a command line can carry.
    pub key: OsString,
    /// The value (omit when using --file).
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub value: Option<OsString>,
    /// Read the value from a file ("-" = standard input), byte for byte.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Write only if the key is at this version (puts since it was created);
    /// otherwise nothing is written and the command exits 1.
    #[arg(long, value_name = "N", conflicts_with_all = ["if_value", "if_absent"])]
    pub if_version: Option<u64>,
    /// Write only if the key holds this value (compare-and-swap).
    #[arg(long, value_name = "V", conflicts_with = "if_absent")]
    pub if_value: Option<OsString>,
    /// Write only if the key does not exist.
    #[arg(long)]
    pub if_absent: bool,
    /// Attach the key to this lease (hex id, from `raftkv lease grant`): it
    /// is deleted when the lease expires or is revoked.
    #[arg(long, value_name = "ID")]
    pub lease: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct LeaseArgs {
    #[command(subcommand)]
    pub command: LeaseCommand,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Subcommand, Debug)]
pub enum LeaseCommand {
    /// Grant a lease of TTL seconds; prints its id (hex).
    Grant { ttl: u64 },
    /// Keep a lease alive until interrupted, printing each renewal.
    KeepAlive { id: String },
    /// Revoke a lease: its keys are deleted.
    Revoke { id: String },
    /// List the leases.
    List,
    /// A lease's remaining and granted TTL (with --keys, its keys).
    Ttl {
        id: String,
        #[arg(long)]
        keys: bool,
    },
}

#[derive(Args, Debug)]
pub struct UserArgs {
    #[command(subcommand)]
    pub command: UserCommand,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add a user: NAME or NAME:PASSWORD (else the password is read from
    /// RAFTKV_NEW_PASSWORD or asked for).
    Add {
        /// NAME, or NAME:PASSWORD.
        name: String,
        /// The user logs in by its client certificate's CN only.
        #[arg(long)]
        no_password: bool,
    },
    /// Delete a user.
    Delete {
        /// The user.
        name: String,
    },
    /// A user's roles (a user may read its own).
    Get {
        /// The user.
        name: String,
    },
    /// Every user.
    List,
    /// Change a user's password (its tokens end): NAME or NAME:PASSWORD (else
    /// from RAFTKV_NEW_PASSWORD, or asked for).
    Passwd {
        /// NAME, or NAME:PASSWORD.
        name: String,
    },
    /// Give a user a role.
    GrantRole {
        /// The user.
        user: String,
        /// The role (`root`: everything).
        role: String,
    },
    /// Take a role from a user.
    RevokeRole {
        /// The user.
        user: String,
        /// The role.
        role: String,
    },
}

#[derive(Args, Debug)]
pub struct RoleArgs {
    #[command(subcommand)]
    pub command: RoleCommand,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermissionArg {
    /// Get, scan, watch.
    Read,
    /// Put, delete.
    Write,
    /// Both.
    Readwrite,
}

#[derive(Subcommand, Debug)]
pub enum RoleCommand {
    /// Add a role (no permissions yet).
    Add {
        /// The role.
        name: String,
    },
    /// Delete a role (users lose it).
    Delete {
        /// The role.
        name: String,
    },
    /// A role's permissions (a user may read its own roles').
    Get {
        /// The role.
        name: String,
    },
    /// Every role.
    List,
    /// Let a role read, write or both: KEY, the keys [KEY, RANGE_END), or
    /// with --prefix every key starting with KEY.
    GrantPermission {
        /// The role.
        role: String,
        /// What it allows.
        permission: PermissionArg,
        /// The key (or the start of the range, or the prefix).
        key: String,
        /// The end of the range (exclusive); not with --prefix.
        range_end: Option<String>,
        /// Every key starting with KEY (`--prefix ""`: every key).
        #[arg(long)]
        prefix: bool,
    },
    /// Take a permission back (the same KEY [RANGE_END] / --prefix as granted).
    RevokePermission {
        /// The role.
        role: String,
        /// The key of the permission, as granted.
        key: String,
        /// Its range end, as granted; not with --prefix.
        range_end: Option<String>,
        /// The permission was granted with --prefix.
        #[arg(long)]
        prefix: bool,
    },
}

#[derive(Args, Debug)]
pub struct AuthArgs {
    #[command(subcommand)]
    pub command: AuthCommand,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Turn authentication on: from then on every request needs a user.
    Enable,
    /// Turn it off (root only).
    Disable,
    /// Whether it is on, and the auth revision.
    Status,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsistencyArg {
    /// Through the leader, after a quorum confirms it still leads (ReadIndex):
    /// sees every write acknowledged before the read began.
    #[default]
    Linearizable,
    /// From the leader's lease, without a quorum round; falls back to
    /// linearizable whenever the leader is unsure of its lease.
    Lease,
    /// The first endpoint's own state, whatever its lag: fast, may be stale.
    Stale,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// The key to read.
    pub key: OsString,
    /// How fresh the answer must be.
    #[arg(long, value_enum, default_value_t)]
    pub consistency: ConsistencyArg,
    /// Write the exact value bytes to this file instead of printing it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Read the key as of this store revision (from the history window;
    /// linearizable).
    #[arg(long, value_name = "N", conflicts_with_all = ["consistency", "out"])]
    pub rev: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// The key to watch (with --prefix: every key starting with it).
    pub key: OsString,
    /// Watch every key that starts with KEY.
    #[arg(long)]
    pub prefix: bool,
    /// Start from this store revision (default: changes after now).
    #[arg(long, value_name = "N")]
    pub rev: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct CompactArgs {
    /// The oldest revision still served after the compaction.
    pub rev: u64,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// The key to delete.
    pub key: OsString,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct ScanArgs {
    /// Key prefix ("" for every key).
    pub prefix: OsString,
    /// Keys in one page (1..=10000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub limit: u32,
    /// Skip this many matching keys first (at most 100000: skipping walks the
    /// keys; page deeper with --after).
    #[arg(long, default_value_t = 0)]
    pub offset: u64,
    /// Start after this key (exclusive): the cursor printed by the previous page.
    #[arg(long)]
    pub after: Option<OsString>,
    /// Print keys only.
    #[arg(long)]
    pub keys_only: bool,
    /// Print keys and values escaped: backslash, tab, newline, carriage
    /// return and other control or non-UTF-8 bytes as \\, \t, \n, \r, \xNN,
    /// so every pair is exactly one line with one tab.
    #[arg(long, conflicts_with = "json")]
    pub escape: bool,
    /// How fresh the answer must be.
    #[arg(long, value_enum, default_value_t)]
    pub consistency: ConsistencyArg,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Show every endpoint given, not just the first.
    #[arg(long)]
    pub cluster: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Args, Debug)]
pub struct AlarmArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: AlarmCommand,
}

#[derive(Subcommand, Debug)]
pub enum AlarmCommand {
    /// Print every alarm raised, `memberID:N alarm:KIND` per line (etcdctl's form).
    List,
    /// Disarm the space quota's NOSPACE alarm (writes resume; a write that still finds
    /// the state over --quota-bytes raises it again).
    Disarm,
}

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Save a backup of the running cluster to FILE: a snapshot the leader takes once it
    /// has applied every write acknowledged before the save began (whichever endpoint
    /// is asked), checksummed, written to FILE.part and renamed once complete and
    /// verified. Needs root when auth is on. `etcdctl snapshot save` gets the same file.
    Save {
        /// Where to write the backup (replaced if it exists).
        file: PathBuf,
    },
    /// Check a backup file (every checksum, and the state it decodes to) and print what
    /// it holds: index and term, revision, keys, leases, size, content hash (as
    /// `debug check` compares it), the members it was taken from.
    Status {
        /// The backup file.
        file: PathBuf,
    },
    /// Write, from a backup, the data dir of one member of a new cluster: run it once
    /// per member with the same --peers (each with its own --id and --data-dir), then
    /// start every member with `raftkv server --data-dir DIR --listen ADDR`. The new
    /// cluster holds exactly the backup's keys, revisions, leases and users, under a new
    /// cluster id (the old members are not its members). Nothing else is needed of the
    /// old cluster; no endpoint is contacted.
    Restore {
        /// The backup file (from `snapshot save`).
        file: PathBuf,
        /// The new member's data dir (must not exist or be empty).
        #[arg(long)]
        data_dir: PathBuf,
        /// The new member's id (default 1).
        #[arg(long, default_value_t = 1)]
        id: u64,
        /// The new cluster's members, as `raftkv server --peers` takes them:
        /// 1=HOST:PORT,2=HOST:PORT,... Left out: a single-node cluster, whose address is
        /// taken from its first start's --listen (or --advertise).
        #[arg(long)]
        peers: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct DebugArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: DebugCommand,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// List members as the leader sees them: id, address, role, match index,
    /// lag, reachability (and whether a joint configuration is in place).
    Members,
    /// Add a node from outside: as a learner, promoted once it has caught up.
    ///
    /// The node must be running with an empty data dir and `--join` (which
    /// asks the cluster to add it by itself, so `cluster add` is needed only
    /// to choose its id or to add it as a learner from outside). A node that
    /// does not answer is not added; see `server --help` for --join.
    Add {
        /// The new node's id (unused by any member, past or present).
        id: u64,
        /// Where the members reach it: its --advertise (or --listen), HOST:PORT; with a
        /// separate peer listener HOST:PORT/PEER_HOST:PORT (its --advertise-peer).
        address: String,
        /// Keep it a learner.
        #[arg(long)]
        learner: bool,
    },
    /// Promote a learner to voter once it has caught up (within --timeout).
    Promote {
        /// The learner's id.
        id: u64,
    },
    /// Remove a node (the leader too: leadership moves first).
    Remove {
        /// The member's id.
        id: u64,
        /// Remove even if that leaves no quorum of live voters.
        #[arg(long)]
        force: bool,
    },
    /// Several changes in one joint-consensus step: nodes to add are added as
    /// learners and caught up first, then all promotions and removals happen at once.
    Change {
        /// ID=HOST:PORT of a node to add or of a learner to promote (repeatable); a node
        /// with a separate peer listener: ID=HOST:PORT/PEER_HOST:PORT.
        #[arg(long = "add", value_name = "ID=HOST:PORT")]
        add: Vec<String>,
        /// ID of a member to remove (repeatable).
        #[arg(long = "remove", value_name = "ID")]
        remove: Vec<u64>,
        /// Remove even if that leaves no quorum of live voters.
        #[arg(long)]
        force: bool,
        /// Debug: enter the joint configuration and stay in it until
        /// `cluster change --leave-joint` (normally it is left at once).
        #[arg(long, conflicts_with = "leave_joint")]
        explicit_joint: bool,
        /// Debug: leave a joint configuration entered with --explicit-joint.
        #[arg(long, conflicts_with_all = ["add", "remove"])]
        leave_joint: bool,
    },
    /// Move leadership to another voter.
    TransferLeader {
        /// The voter to lead.
        id: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum DebugCommand {
    /// Raft state of the first endpoint: term, vote, commit, applied, peer progress.
    Raft,
    /// Storage of the first endpoint: segments, first/last index, snapshot, disk bytes.
    Storage,
    /// Take a snapshot now.
    Snapshot,
    /// Compact the log up to the latest snapshot now.
    Compact,
    /// Compare the replicas: the state hash at one applied index on every member (and
    /// every endpoint given), with a verdict; exits non-zero on a mismatch, a node of
    /// another cluster, an unreachable member, or no common applied index within
    /// --timeout.
    Check,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchOp {
    Put,
    Get,
    /// Gets and puts; --read-pct sets the share of gets.
    Mixed,
    Delete,
    /// Scans of 10 keys from a random key.
    Scan,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Concurrent clients (each its own write session).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Connections the clients share (client i uses connection i mod N;
    /// each is a client of its own), like etcd's `benchmark --conns`;
    /// 0 = one per client.
    #[arg(long, default_value_t = raftkv_loadgen::DEFAULT_CONNECTIONS)]
    pub connections: usize,
    #[arg(long, value_enum, default_value = "put")]
    pub op: BenchOp,
    /// Key size in bytes.
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    /// Value size (e.g. 256, 4KiB).
    #[arg(long, default_value = "256")]
    pub value_size: String,
    /// Distinct keys used (gets read keys loaded before the run).
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    /// Run time (e.g. 10s); ignored when --ops is given.
    #[arg(long, default_value = "10s")]
    pub duration: String,
    /// Stop after this many operations instead of a time.
    #[arg(long)]
    pub ops: Option<u64>,
    /// Read consistency of gets and scans.
    #[arg(long, value_enum, default_value_t)]
    pub consistency: ConsistencyArg,
    /// With --op mixed: percent of operations that are gets (0-100).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub read_pct: u8,
    /// Load run before measuring (e.g. 2s); not counted.
    #[arg(long, default_value = "0s")]
    pub warmup: String,
    /// Open loop: send this many operations per second in total, on a fixed
    /// schedule; latency counts from the scheduled send time. Without it
    /// each client sends its next operation when the last one returns.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Keys per operation: puts go as one atomic Batch, gets as one
    /// BatchGet; throughput is also reported in keys/s.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10000))]
    pub batch: u64,
    /// Prefix of the keys it writes and reads [default: bench/ followed by a
    /// run id, printed at the start].
    #[arg(long)]
    pub prefix: Option<String>,
    /// Delete the keys it wrote when it is done.
    #[arg(long)]
    pub cleanup: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct PlaygroundArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
    pub nodes: u64,
    /// Directory for the nodes' data and logs.
    #[arg(long, default_value = "raftkv-playground")]
    pub data_dir: PathBuf,
    /// Port of node 1; node i listens on PORT+i-1 of 127.0.0.1.
    #[arg(long, alias = "base-port", default_value_t = 7379)]
    pub port: u16,
}
