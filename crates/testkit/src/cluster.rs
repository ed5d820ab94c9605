//! [`TestCluster`]: N real `raftkv server` processes forming a static cluster.
//!
//! Node `i` (ids 1..=N) runs
//! `raftkv server --id i --data-dir DIR/node-i/data --listen 127.0.0.1:PORT_i
//!  --peers 1=..,2=.. --election-timeout 1s --heartbeat-interval 100ms [extra]`
//! with stdout and stderr appended to `DIR/node-i/server.log`; a restart runs the
//! same command on the same data dir and port. The kit learns about the cluster
//! only through `raftkv status --json`, as a user would. Every wait has a
//! deadline, and a failed wait panics with each node's state and log tail.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::cli::{run_cli, run_cli_bounded, run_cli_with_stdin, CliOutput};
use crate::limit::ClusterPermit;
use crate::ports::free_ports;
use crate::process::ServerProcess;
use crate::status::NodeStatus;
use crate::wait::poll_until;

/// How long [`TestCluster::start`] and [`TestCluster::leader`] wait for a leader.
pub const LEADER_WAIT: Duration = Duration::from_secs(20);

/// How long a (re)started node has to answer `status`.
const NODE_ANSWER_WAIT: Duration = Duration::from_secs(20);

/// `--timeout` of each `status` probe: short, so one stuck node does not
/// stall a whole poll round.
const STATUS_PROBE_TIMEOUT: &str = "1s";

/// Pause between poll rounds.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How much of each node's log goes into a failure message.
const LOG_TAIL_BYTES: u64 = 8 * 1024;

/// What [`TestCluster::start_prepared`] calls for each node before its first
/// start: (id, data dir, `--peers` list).
pub type Prepare<'a> = dyn FnMut(u64, &Path, &str) + 'a;

/// Set this variable to keep the temp dirs (data and logs) of failed tests.
const KEEP_DIRS_ENV: &str = "RAFTKV_KEEP_TEST_DIRS";

struct Node {
    id: u64,
    port: u16,
    /// The port of its separate peer listener (`--listen-peer`), if any.
    peer_port: Option<u16>,
    dir: PathBuf,
    /// `Some` for a node added with `--join`: the first run joins through
    /// this address; later runs need only `--data-dir` and `--listen`.
    join: Option<JoinArgs>,
    /// Removed from the cluster: left running if it was, but no longer
    /// among the live nodes, endpoints or leader checks.
    removed: bool,
    /// Flags for its next start only (see [`TestCluster::restart_with`]).
    next_start_args: Vec<String>,
    /// Environment for every later start (see [`TestCluster::set_node_env`]).
    env: Vec<(String, std::ffi::OsString)>,
    /// Its whole command line, made outside the kit (see
    /// [`TestCluster::start_commands`]); `None`: the kit's.
    argv: Option<Vec<String>>,
    /// `None` while killed. Behind a mutex so `&self` methods can notice a
    /// process that exited on its own.
    process: Mutex<Option<ServerProcess>>,
}

impl Node {
    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn peer_address(&self) -> Option<String> {
        self.peer_port.map(|port| format!("127.0.0.1:{port}"))
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// The rules file of the server's test-only network fault layer.
    fn net_faults_path(&self) -> PathBuf {
        self.dir.join("net-faults")
    }

    /// The file of the server's test-only corruption hook.
    fn corrupt_hook_path(&self) -> PathBuf {
        self.dir.join("corrupt")
    }

    /// The rules file of the storage's test-only disk fault hook.
    fn disk_faults_path(&self) -> PathBuf {
        self.dir.join("disk-faults")
    }

    fn process(&self) -> std::sync::MutexGuard<'_, Option<ServerProcess>> {
        self.process.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A member, running and not paused: expected to answer requests.
    fn is_live(&self) -> bool {
        !self.removed && self.process().as_ref().is_some_and(|p| !p.is_paused())
    }

    /// One line describing the process, for failure messages.
    fn describe_process(&self) -> String {
        match self.process().as_mut() {
            None => "killed".to_string(),
            Some(p) => match p.exited() {
                Some(status) => format!("EXITED on its own ({status})"),
                None if p.is_paused() => format!("paused (pid {})", p.pid()),
                None => format!("running (pid {})", p.pid()),
            },
        }
    }
}

#[derive(Clone, Debug)]
struct JoinArgs {
    via: String,
    learner: bool,
    /// The first run happened (it joined); restarts do not pass `--join`.
    joined: bool,
}

/// Pause between checks of a node expected to exit at start.
const EXIT_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// What [`TestCluster::start_expecting_failure`] saw.
#[derive(Debug, Clone)]
pub struct FailedStart {
    /// The exit code, if the process exited on its own with one; `None` if it
    /// was still running at the deadline (then the kit killed it) or ended by
    /// a signal.
    pub code: Option<i32>,
    /// Whether it exited on its own before the deadline.
    pub exited: bool,
    /// How long it ran (until exit, or until the deadline).
    pub elapsed: Duration,
    /// Its log for this run only (stdout and stderr, from the kit's marker line).
    pub log: String,
}

/// A node's whole command line, made outside the kit (say by the
/// deployment files' generator): see [`TestCluster::start_commands`].
#[derive(Clone, Debug)]
pub struct NodeCommand {
    /// Node ids are 1..=N, in order.
    pub id: u64,
    /// The arguments after the binary (`server ...`).
    pub argv: Vec<String>,
    /// The port clients reach it on, at 127.0.0.1.
    pub client_port: u16,
}

/// A static cluster of real server processes; killed and reaped on drop.
pub struct TestCluster {
    bin: PathBuf,
    peers: String,
    extra_args: Vec<String>,
    extra_env: Vec<(String, std::ffi::OsString)>,
    /// What the kit's own clients (CLI and library) present to a TLS
    /// cluster.
    client_tls: Option<ClientCreds>,
    /// Every node has a separate peer listener.
    peer_listeners: bool,
    nodes: Vec<Node>,
    /// Ports set aside for nodes that will join later, in join order.
    reserved_ports: Vec<u16>,
    /// Dropped after the processes are killed (see `Drop`).
    dir: Option<TempDir>,
    /// Dropped last: the permit is held until every process is gone.
    _permit: ClusterPermit,
}

impl TestCluster {
    /// Starts `nodes` servers and waits until all of them agree on a leader.
    pub fn start(bin: impl AsRef<Path>, nodes: usize) -> TestCluster {
        TestCluster::start_with(bin, nodes, &[])
    }

    /// Like [`start`](Self::start), with `extra_args` added to every server.
    pub fn start_with(bin: impl AsRef<Path>, nodes: usize, extra_args: &[&str]) -> TestCluster {
        TestCluster::start_with_env(bin, nodes, extra_args, &[])
    }

    /// Like [`start_with`](Self::start_with), with environment variables (test
    /// hooks such as `RAFTKV_TEST_SESSION_LIMITS`) set for every server.
    pub fn start_with_env(
        bin: impl AsRef<Path>,
        nodes: usize,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> TestCluster {
        TestCluster::start_inner(bin, nodes, extra_args, env, None, false, None)
    }

    /// Like [`start`](Self::start), but `prepare(id, data_dir, peers)` fills
    /// each node's data dir before its first start (say with `raftkv
    /// snapshot restore --peers PEERS`); `peers` is the `--peers` list of the
    /// cluster's ports.
    pub fn start_prepared(
        bin: impl AsRef<Path>,
        nodes: usize,
        prepare: &mut Prepare<'_>,
    ) -> TestCluster {
        TestCluster::start_inner(bin, nodes, &[], &[], None, false, Some(prepare))
    }

    /// Like [`start_with`](Self::start_with) for a cluster whose servers
    /// take TLS flags in `extra_args`: the kit's CLI calls and clients
    /// present `client` (https:// endpoints).
    pub fn start_tls(
        bin: impl AsRef<Path>,
        nodes: usize,
        extra_args: &[&str],
        client: ClientCreds,
    ) -> TestCluster {
        TestCluster::start_inner(bin, nodes, extra_args, &[], Some(client), false, None)
    }

    /// Like [`start_tls`](Self::start_tls) (plaintext with `client`
    /// `None`), every node with a separate peer listener (`--listen-peer`
    /// on a port of its own, listed in `--peers` as `ID=ADDR/PEER_ADDR`);
    /// nodes that join later get one too.
    pub fn start_with_peer_listeners(
        bin: impl AsRef<Path>,
        nodes: usize,
        extra_args: &[&str],
        client: Option<ClientCreds>,
    ) -> TestCluster {
        TestCluster::start_inner(bin, nodes, extra_args, &[], client, true, None)
    }

    /// Starts servers whose command lines were made elsewhere (the
    /// deployment files' generator), used as they are, and waits until they
    /// agree on a leader. The kit still keeps each node's log and fault-hook
    /// files in a temp dir of its own; the data dirs are wherever the
    /// command lines put them.
    pub fn start_commands(bin: impl AsRef<Path>, commands: &[NodeCommand]) -> TestCluster {
        assert!(
            (1..=9).contains(&commands.len()),
            "a test cluster has 1 to 9 nodes, not {}",
            commands.len()
        );
        let mut cluster = TestCluster::empty(bin, &[], &[], None, false);
        for (i, command) in commands.iter().enumerate() {
            assert_eq!(command.id, i as u64 + 1, "node ids are 1..=N in order");
            cluster.add_node(
                command.id,
                command.client_port,
                None,
                Some(command.argv.clone()),
            );
        }
        cluster.spawn_all(" from given command lines")
    }

    fn start_inner(
        bin: impl AsRef<Path>,
        nodes: usize,
        extra_args: &[&str],
        env: &[(&str, &str)],
        client_tls: Option<ClientCreds>,
        peer_listeners: bool,
        prepare: Option<&mut Prepare<'_>>,
    ) -> TestCluster {
        assert!(
            (1..=9).contains(&nodes),
            "a test cluster has 1 to 9 nodes, not {nodes}"
        );
        let mut cluster = TestCluster::empty(bin, extra_args, env, client_tls, peer_listeners);
        let ports = free_ports(nodes);
        let peer_ports: Vec<Option<u16>> = if peer_listeners {
            free_ports(nodes).into_iter().map(Some).collect()
        } else {
            vec![None; nodes]
        };
        cluster.peers = ports
            .iter()
            .zip(&peer_ports)
            .enumerate()
            .map(|(i, (port, peer_port))| match peer_port {
                Some(peer_port) => format!("{}=127.0.0.1:{port}/127.0.0.1:{peer_port}", i + 1),
                None => format!("{}=127.0.0.1:{port}", i + 1),
            })
            .collect::<Vec<_>>()
            .join(",");
        for (i, &port) in ports.iter().enumerate() {
            cluster.add_node(i as u64 + 1, port, peer_ports[i], None);
        }
        if let Some(prepare) = prepare {
            for node in &cluster.nodes {
                prepare(node.id, &node.data_dir(), &cluster.peers);
            }
        }
        cluster.spawn_all("")
    }

    /// A cluster with no nodes yet (its temp dir made, its permit held).
    fn empty(
        bin: impl AsRef<Path>,
        extra_args: &[&str],
        env: &[(&str, &str)],
        client_tls: Option<ClientCreds>,
        peer_listeners: bool,
    ) -> TestCluster {
        let permit = ClusterPermit::acquire();
        let dir = tempfile::Builder::new()
            .prefix("raftkv-test-")
            .tempdir()
            .expect("create temp dir");
        TestCluster {
            bin: bin.as_ref().to_path_buf(),
            peers: String::new(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            extra_env: env
                .iter()
                .map(|(name, value)| (name.to_string(), value.into()))
                .collect(),
            client_tls,
            peer_listeners,
            nodes: Vec::new(),
            reserved_ports: Vec::new(),
            dir: Some(dir),
            _permit: permit,
        }
    }

    /// Adds node `id` (not started) on `port`, in a directory of its own.
    fn add_node(&mut self, id: u64, port: u16, peer_port: Option<u16>, argv: Option<Vec<String>>) {
        let dir = self.dir().join(format!("node-{id}"));
        fs::create_dir_all(&dir).expect("create node dir");
        self.nodes.push(Node {
            id,
            port,
            peer_port,
            dir,
            join: None,
            removed: false,
            next_start_args: Vec::new(),
            env: Vec::new(),
            argv,
            process: Mutex::new(None),
        });
    }

    /// Starts every node and waits until all of them agree on a leader.
    fn spawn_all(mut self, how: &str) -> TestCluster {
        for id in self.ids() {
            self.spawn(id);
        }
        let started = Instant::now();
        let leader = self.wait_leader_inner(LEADER_WAIT, true);
        eprintln!(
            "testkit: {} node(s){how} in {} elected leader {leader} in {:?}",
            self.nodes.len(),
            self.dir().display(),
            started.elapsed()
        );
        self
    }

    // ---- Addresses and places -------------------------------------------------

    /// All node ids, 1..=N.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Nodes that are running and not paused.
    pub fn live_ids(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.is_live())
            .map(|n| n.id)
            .collect()
    }

    /// `127.0.0.1:PORT` of node `id`.
    pub fn address(&self, id: u64) -> String {
        self.node(id).address()
    }

    /// `127.0.0.1:PORT` of node `id`'s separate peer listener, if it has
    /// one (see [`start_with_peer_listeners`](Self::start_with_peer_listeners)).
    pub fn peer_address(&self, id: u64) -> Option<String> {
        self.node(id).peer_address()
    }

    /// Every member's address, in id order (removed nodes left out).
    pub fn endpoint_list(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| !n.removed)
            .map(Node::address)
            .collect()
    }

    /// Ids of the nodes not marked removed, running or not.
    pub fn member_ids(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| !n.removed)
            .map(|n| n.id)
            .collect()
    }

    // ---- Membership -----------------------------------------------------------

    /// Starts a new node (the next id) on a free port with an empty data dir
    /// and `raftkv server --id N --join ADDRESS-OF-via [--learner]`, and
    /// waits until it answers `status` (it does once the cluster added it).
    /// Restarts of it run without `--join`.
    pub fn join_node(&mut self, via: u64, learner: bool) -> u64 {
        let id = self.add_joining_node(via, learner);
        self.spawn(id);
        self.wait_answers(id, "joined");
        id
    }

    /// Sets up a new node (the next id) like [`join_node`](Self::join_node)
    /// without starting it: start it with [`restart`](Self::restart), or
    /// with [`start_expecting_failure`](Self::start_expecting_failure) when
    /// the cluster should refuse it.
    pub fn add_joining_node(&mut self, via: u64, learner: bool) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        let port = if self.reserved_ports.is_empty() {
            free_ports(1)[0]
        } else {
            self.reserved_ports.remove(0)
        };
        let dir = self.dir().join(format!("node-{id}"));
        fs::create_dir_all(&dir).expect("create node dir");
        let via = self.address(via);
        let peer_port = self.peer_listeners.then(|| free_ports(1)[0]);
        self.nodes.push(Node {
            id,
            port,
            peer_port,
            dir,
            join: Some(JoinArgs {
                via,
                learner,
                joined: false,
            }),
            removed: false,
            next_start_args: Vec::new(),
            env: Vec::new(),
            argv: None,
            process: Mutex::new(None),
        });
        id
    }

    /// Sets aside ports for the next `count` nodes to join, and returns
    /// their addresses: a client can be given them before the nodes exist.
    pub fn reserve_join_addresses(&mut self, count: usize) -> Vec<String> {
        self.reserved_ports.extend(free_ports(count));
        self.reserved_ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect()
    }

    /// Gives killed node `id` a new (free) port: its next start listens and
    /// advertises there, with the same data dir. Returns the new address.
    pub fn move_to_new_port(&mut self, id: u64) -> String {
        assert!(
            self.pid(id).is_none(),
            "move_to_new_port: node {id} is still running"
        );
        let index = self.index_of(id);
        self.nodes[index].port = free_ports(1)[0];
        let address = self.nodes[index].address();
        eprintln!("testkit: node {id} moves to {address}");
        address
    }

    /// Deletes killed node `id`'s data dir. A node that joined will join
    /// again (with `--join` and its old id) on its next start.
    pub fn wipe(&mut self, id: u64) {
        assert!(self.pid(id).is_none(), "wipe: node {id} is still running");
        let index = self.index_of(id);
        let data = self.nodes[index].data_dir();
        if data.exists() {
            fs::remove_dir_all(&data).expect("remove data dir");
        }
        if let Some(join) = &mut self.nodes[index].join {
            join.joined = false;
        }
        self.nodes[index].removed = false;
        eprintln!("testkit: wiped node {id}'s data dir");
    }

    /// Sets node `id`'s network fault rules (the server re-reads them within
    /// 50 ms): `drop 2,3`, `loss 10`, `delay 50 25`, one per line; "" heals.
    /// They apply to raft messages the node sends; see `raftkv-server`'s
    /// `net_faults` module.
    pub fn set_net_faults(&self, id: u64, rules: &str) {
        replace_file(&self.node(id).net_faults_path(), rules);
        eprintln!("testkit: node {id} network faults: {:?}", rules.trim());
    }

    /// Sets node `id`'s disk fault rules (read within 100 ms): `free BYTES`
    /// (pretend the disk has that much free), `fsync-error` (every WAL fsync
    /// fails); "" clears them. See `raftkv-storage`'s `disk` module.
    pub fn set_disk_faults(&self, id: u64, rules: &str) {
        replace_file(&self.node(id).disk_faults_path(), rules);
        eprintln!("testkit: node {id} disk faults: {:?}", rules.trim());
    }

    /// Changes `key`'s value in node `id`'s state alone, outside the log, as
    /// silent corruption would (the server's `RAFTKV_TEST_CORRUPT` hook, read
    /// within 100 ms).
    pub fn corrupt(&self, id: u64, key: &str) {
        let path = self.node(id).corrupt_hook_path();
        let mut text = fs::read_to_string(&path).unwrap_or_default();
        text.push_str(&format!("corrupt {key}\n"));
        replace_file(&path, &text);
        eprintln!("testkit: node {id}: corrupting key {key:?}");
    }

    /// Waits (at most `timeout`) for node `id` to exit on its own; returns
    /// its exit code (`Some(None)`: killed by a signal), or `None` if it is
    /// still running. An exited node is reaped and counts as killed.
    pub fn wait_exit(&mut self, id: u64, timeout: Duration) -> Option<Option<i32>> {
        let exit = poll_until(timeout, EXIT_POLL_INTERVAL, || {
            self.node(id).process().as_mut().and_then(|p| p.exited())
        });
        match exit {
            Ok(status) => {
                self.node(id).process().take();
                eprintln!("testkit: node {id} exited on its own: {status}");
                Some(status.code())
            }
            Err(_) => None,
        }
    }

    /// Cuts the cluster into `groups`: nodes in different groups drop every
    /// raft message to each other. Nodes in no group are cut from everyone.
    pub fn partition(&self, groups: &[&[u64]]) {
        for id in self.ids() {
            let own: Vec<u64> = groups
                .iter()
                .find(|g| g.contains(&id))
                .map(|g| g.to_vec())
                .unwrap_or_else(|| vec![id]);
            let others: Vec<String> = self
                .ids()
                .into_iter()
                .filter(|o| !own.contains(o))
                .map(|o| o.to_string())
                .collect();
            let rules = if others.is_empty() {
                String::new()
            } else {
                format!("drop {}\n", others.join(","))
            };
            self.set_net_faults(id, &rules);
        }
    }

    /// Cuts node `id` off from every other node; returns the others.
    pub fn isolate(&self, id: u64) -> Vec<u64> {
        let others: Vec<u64> = self.ids().into_iter().filter(|i| *i != id).collect();
        self.partition(&[&[id], &others]);
        others
    }

    /// Removes every network fault.
    pub fn heal(&self) {
        for id in self.ids() {
            self.set_net_faults(id, "");
        }
    }

    /// Marks node `id` as removed from the cluster (after `cluster remove`):
    /// it stays running if it was, but leaves the live set and endpoints.
    pub fn set_removed(&mut self, id: u64) {
        let index = self.index_of(id);
        self.nodes[index].removed = true;
    }

    /// Every node's address, comma-joined (the `--endpoints` value).
    pub fn endpoints(&self) -> String {
        self.endpoint_list().join(",")
    }

    /// All addresses with node `id`'s first: for commands that act on the
    /// first endpoint (`status`, stale reads).
    pub fn endpoints_starting_with(&self, id: u64) -> String {
        let mut list = vec![self.address(id)];
        list.extend(self.nodes.iter().filter(|n| n.id != id).map(Node::address));
        list.join(",")
    }

    /// The cluster's temp dir; tests may put their own files in it.
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("temp dir present until drop")
            .path()
    }

    /// Node `id`'s `--data-dir`.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.node(id).data_dir()
    }

    /// The PID of node `id`, if it is running.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.node(id).process().as_ref().map(ServerProcess::pid)
    }

    // ---- Faults ---------------------------------------------------------------

    /// `kill -9` node `id` and reap it.
    /// Stops node `id` as an operator would (SIGTERM) and waits for it to
    /// exit; fails the test if it has not exited within 30 s or exited
    /// with an error.
    pub fn stop(&mut self, id: u64) {
        let process = self.node(id).process().take();
        let process = process.unwrap_or_else(|| panic!("stop: node {id} is not running"));
        let pid = process.pid();
        match process.terminate(Duration::from_secs(30)) {
            Some(status) if status.success() => {
                eprintln!("testkit: stopped node {id} (pid {pid})");
            }
            Some(status) => self.fail(&format!(
                "node {id} (pid {pid}) exited with {status} on SIGTERM"
            )),
            None => self.fail(&format!(
                "node {id} (pid {pid}) did not exit within 30 s of SIGTERM"
            )),
        }
    }

    pub fn kill(&mut self, id: u64) {
        let process = self.node(id).process().take();
        let process = process.unwrap_or_else(|| panic!("kill: node {id} is not running"));
        let pid = process.pid();
        let status = process.kill();
        eprintln!("testkit: killed node {id} (pid {pid}): {status:?}");
    }

    /// SIGSTOP node `id`: it keeps its sockets open but answers nothing.
    pub fn pause(&mut self, id: u64) {
        let mut process = self.node(id).process();
        let process = process
            .as_mut()
            .unwrap_or_else(|| panic!("pause: node {id} is not running"));
        process.pause();
        eprintln!("testkit: paused node {id} (pid {})", process.pid());
    }

    /// SIGCONT node `id` after [`pause`](Self::pause).
    pub fn resume(&mut self, id: u64) {
        let mut process = self.node(id).process();
        let process = process
            .as_mut()
            .unwrap_or_else(|| panic!("resume: node {id} is not running"));
        process.resume();
        eprintln!("testkit: resumed node {id} (pid {})", process.pid());
    }

    /// Adds `args` to the next start of node `id` only (`--force-new-cluster`,
    /// say), whichever method starts it.
    pub fn next_start_with(&mut self, id: u64, args: &[&str]) {
        let index = self.index_of(id);
        self.nodes[index].next_start_args = args.iter().map(|a| a.to_string()).collect();
    }

    /// Sets environment variables (a test hook such as
    /// `RAFTKV_TEST_NEXT_LOG_VERSION`) for every later start of node `id`,
    /// replacing what an earlier call set; `&[]` clears them.
    pub fn set_node_env(&mut self, id: u64, env: &[(&str, &str)]) {
        let index = self.index_of(id);
        self.nodes[index].env = env
            .iter()
            .map(|(name, value)| (name.to_string(), value.into()))
            .collect();
    }

    /// Like [`restart`](Self::restart), with `args` added to this start only.
    pub fn restart_with(&mut self, id: u64, args: &[&str]) {
        self.next_start_with(id, args);
        self.restart(id);
    }

    /// Starts killed node `id` again with the same command and data dir, and
    /// waits until it answers `status` (not until it has caught up).
    pub fn restart(&mut self, id: u64) {
        assert!(
            self.pid(id).is_none(),
            "restart: node {id} is still running; kill it first"
        );
        self.spawn(id);
        self.wait_answers(id, "restarted");
    }

    /// Waits until node `id`, just started, answers `status`.
    fn wait_answers(&self, id: u64, what: &str) {
        let started = Instant::now();
        let answered = poll_until(NODE_ANSWER_WAIT, POLL_INTERVAL, || {
            if let Some(status) = self.node(id).process().as_mut().and_then(|p| p.exited()) {
                return Some(Err(format!("node {id} exited at start: {status}")));
            }
            self.status(id).ok().map(Ok)
        });
        match answered {
            Ok(Ok(status)) => eprintln!(
                "testkit: {what} node {id}; it answers after {:?} as {} (term {}, applied {})",
                started.elapsed(),
                status.role,
                status.term,
                status.applied_index
            ),
            Ok(Err(message)) => self.fail(&message),
            Err(waited) => self.fail(&format!(
                "{what} node {id} did not answer status in {waited:?}"
            )),
        }
    }

    /// Starts killed node `id` again with the same command and data dir,
    /// expecting it to refuse to start: waits (at most `within`) for it to
    /// exit on its own. A node still running at the deadline is killed, and
    /// reported with `exited: false`. Either way the node is left killed.
    pub fn start_expecting_failure(&mut self, id: u64, within: Duration) -> FailedStart {
        assert!(
            self.pid(id).is_none(),
            "start_expecting_failure: node {id} is still running; kill it first"
        );
        self.spawn(id);
        let started = Instant::now();
        let exit = poll_until(within, EXIT_POLL_INTERVAL, || {
            self.node(id).process().as_mut().and_then(|p| p.exited())
        });
        let elapsed = started.elapsed();
        // Reap (or, if it is still running, kill and reap) it.
        let process = self.node(id).process().take();
        if let Some(process) = process {
            process.kill();
        }
        let log = read_last_run(&self.node(id).log_path());
        match exit {
            Ok(status) => {
                eprintln!("testkit: node {id} exited at start after {elapsed:?}: {status}");
                FailedStart {
                    code: status.code(),
                    exited: true,
                    elapsed,
                    log,
                }
            }
            Err(_) => {
                eprintln!("testkit: node {id} was still running after {elapsed:?}; killed it");
                FailedStart {
                    code: None,
                    exited: false,
                    elapsed,
                    log,
                }
            }
        }
    }

    // ---- Observing ------------------------------------------------------------

    /// Node `id`'s log file (stdout and stderr of every run, with marker lines).
    pub fn log_path(&self, id: u64) -> PathBuf {
        self.node(id).log_path()
    }

    /// Node `id`'s own view (`raftkv status --json --endpoints ADDR`), one try.
    pub fn status(&self, id: u64) -> Result<NodeStatus, String> {
        let out = self.cli_at(id, &["status", "--json", "--timeout", STATUS_PROBE_TIMEOUT]);
        if out.code != 0 {
            return Err(format!("status exit {}: {}", out.code, out.stderr.trim()));
        }
        let lines: Vec<String> = out
            .stdout_lines()
            .into_iter()
            .filter(|l| !l.trim().is_empty())
            .collect();
        if lines.len() != 1 {
            return Err(format!(
                "status --json printed {} lines: {:?}",
                lines.len(),
                out.stdout_text()
            ));
        }
        let status = NodeStatus::parse(&lines[0])?;
        if status.id != id {
            return Err(format!(
                "asked node {id}, status answered for id {}",
                status.id
            ));
        }
        Ok(status)
    }

    /// Waits (at most `timeout`) until exactly one live node says it is the
    /// leader and every live node that answers names it; returns its id.
    pub fn wait_leader(&self, timeout: Duration) -> u64 {
        self.wait_leader_inner(timeout, false)
    }

    /// [`wait_leader`](Self::wait_leader) with the default [`LEADER_WAIT`].
    pub fn leader(&self) -> u64 {
        self.wait_leader(LEADER_WAIT)
    }

    /// Live nodes other than the current leader.
    pub fn followers(&self) -> Vec<u64> {
        let leader = self.leader();
        self.live_ids()
            .into_iter()
            .filter(|&id| id != leader)
            .collect()
    }

    /// Waits until the cluster is idle and caught up: every live node answers,
    /// agrees on the leader, and has applied the leader's commit index.
    /// Returns that index. Only meaningful while no writes are running.
    pub fn wait_caught_up(&self, timeout: Duration) -> u64 {
        let mut last = String::new();
        let started = Instant::now();
        let result = poll_until(timeout, POLL_INTERVAL, || {
            let (statuses, problems) = self.poll_statuses();
            last = describe_round(&statuses, &problems);
            if !problems.is_empty() {
                return None;
            }
            let leader = single_agreed_leader(&statuses)?;
            let commit = leader.commit_index;
            statuses
                .iter()
                .all(|s| s.applied_index == commit)
                .then_some(commit)
        });
        match result {
            Ok(commit) => {
                eprintln!(
                    "testkit: all live nodes applied index {commit} after {:?}",
                    started.elapsed()
                );
                commit
            }
            Err(waited) => self.fail(&format!(
                "nodes did not catch up in {waited:?}; last round:\n{last}"
            )),
        }
    }

    fn wait_leader_inner(&self, timeout: Duration, require_all_live: bool) -> u64 {
        let mut last = String::new();
        let result = poll_until(timeout, POLL_INTERVAL, || {
            let (statuses, problems) = self.poll_statuses();
            last = describe_round(&statuses, &problems);
            if require_all_live && !problems.is_empty() {
                return None;
            }
            single_agreed_leader(&statuses).map(|leader| leader.id)
        });
        result.unwrap_or_else(|waited| {
            self.fail(&format!(
                "no agreed leader after {waited:?}; last round:\n{last}"
            ))
        })
    }

    /// One `status` probe of every live node: the answers, and the failures.
    fn poll_statuses(&self) -> (Vec<NodeStatus>, Vec<String>) {
        let mut statuses = Vec::new();
        let mut problems = Vec::new();
        for id in self.live_ids() {
            match self.status(id) {
                Ok(status) => statuses.push(status),
                Err(e) => problems.push(format!("node {id}: {e}")),
            }
        }
        (statuses, problems)
    }

    // ---- Talking to the cluster -----------------------------------------------

    /// `raftkv ARGS --endpoints <all nodes>`.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        self.cli_with_endpoints(&self.endpoints(), args)
    }

    /// `raftkv ARGS --endpoints <node id only>`.
    pub fn cli_at(&self, id: u64, args: &[&str]) -> CliOutput {
        self.cli_with_endpoints(&self.address(id), args)
    }

    /// `raftkv ARGS --endpoints ENDPOINTS`.
    pub fn cli_with_endpoints(&self, endpoints: &str, args: &[&str]) -> CliOutput {
        run_cli(&self.bin, &self.with_endpoints(args, endpoints))
    }

    /// `raftkv ARGS --endpoints ENDPOINTS`, killed after `kill_after` rather
    /// than [`CLI_KILL_AFTER`](crate::CLI_KILL_AFTER): for commands that
    /// legitimately run long.
    pub fn cli_bounded(&self, endpoints: &str, args: &[&str], kill_after: Duration) -> CliOutput {
        run_cli_bounded(&self.bin, &self.with_endpoints(args, endpoints), kill_after)
    }

    /// `raftkv ARGS --endpoints <all nodes>` with `stdin` as standard input.
    pub fn cli_with_stdin(&self, args: &[&str], stdin: &[u8]) -> CliOutput {
        run_cli_with_stdin(
            &self.bin,
            &self.with_endpoints(args, &self.endpoints()),
            stdin,
        )
    }

    /// A client library handle that knows every node.
    pub fn client(&self) -> raftkv_client::Client {
        raftkv_client::Client::with_options(&self.endpoint_list(), self.client_options())
            .unwrap_or_else(|e| panic!("Client::new: {e}"))
    }

    /// The library's options for this cluster's kit clients (TLS when the
    /// cluster has it).
    pub fn client_options(&self) -> raftkv_client::ClientOptions {
        raftkv_client::ClientOptions {
            tls: self.client_tls.as_ref().map(ClientCreds::client_tls),
            ..Default::default()
        }
    }

    /// `args` with `--endpoints ENDPOINTS` and the kit's TLS flags.
    fn with_endpoints(&self, args: &[&str], endpoints: &str) -> Vec<String> {
        let mut all = with_endpoints(args, endpoints);
        if let Some(creds) = &self.client_tls {
            all.extend(creds.cli_args());
        }
        all
    }

    /// A client whose only endpoint is node `id` (stale reads see its state).
    pub fn client_at(&self, id: u64) -> raftkv_client::Client {
        raftkv_client::Client::with_options(&[self.address(id)], self.client_options())
            .unwrap_or_else(|e| panic!("Client::new: {e}"))
    }

    // ---- Failure reports ------------------------------------------------------

    /// Each node's process state and the tail of its log.
    pub fn diagnostics(&self) -> String {
        let mut report = format!("cluster dir: {}\n", self.dir().display());
        for node in &self.nodes {
            report.push_str(&format!(
                "\n----- node {} at {}: {} -----\n{}\n",
                node.id,
                node.address(),
                node.describe_process(),
                read_tail(&node.log_path(), LOG_TAIL_BYTES)
            ));
        }
        report
    }

    /// Panics with `message` and the [`diagnostics`](Self::diagnostics).
    #[track_caller]
    pub fn fail(&self, message: &str) -> ! {
        panic!("{message}\n\n{}", self.diagnostics())
    }

    fn index_of(&self, id: u64) -> usize {
        let index = usize::try_from(id).ok().and_then(|id| id.checked_sub(1));
        index
            .filter(|i| *i < self.nodes.len())
            .unwrap_or_else(|| panic!("no node {id} in a cluster of {}", self.nodes.len()))
    }

    fn node(&self, id: u64) -> &Node {
        &self.nodes[self.index_of(id)]
    }

    fn spawn(&mut self, id: u64) {
        let index = self.index_of(id);
        let node = &self.nodes[index];
        let mut args = vec![
            "server".to_string(),
            "--data-dir".to_string(),
            node.data_dir().display().to_string(),
            "--listen".to_string(),
            node.address(),
            "--election-timeout".to_string(),
            "1s".to_string(),
            "--heartbeat-interval".to_string(),
            "100ms".to_string(),
        ];
        match &node.join {
            None => args.extend([
                "--id".to_string(),
                id.to_string(),
                "--peers".to_string(),
                self.peers.clone(),
            ]),
            Some(join) if !join.joined => {
                args.extend([
                    "--id".to_string(),
                    id.to_string(),
                    "--join".to_string(),
                    join.via.clone(),
                ]);
                if join.learner {
                    args.push("--learner".to_string());
                }
            }
            Some(_) => {}
        }
        if let Some(peer_address) = node.peer_address() {
            args.extend(["--listen-peer".to_string(), peer_address]);
        }
        args.extend(self.extra_args.iter().cloned());
        if let Some(argv) = &self.nodes[index].argv {
            args = argv.clone();
        }
        args.append(&mut self.nodes[index].next_start_args);
        if let Some(join) = &mut self.nodes[index].join {
            join.joined = true;
        }
        let node = &self.nodes[index];
        let faults = node.net_faults_path();
        if !faults.exists() {
            fs::write(&faults, "").expect("create the net-faults file");
        }
        let mut env = vec![
            ("RAFTKV_NET_FAULTS", faults.into_os_string()),
            (
                "RAFTKV_DISK_FAULTS",
                node.disk_faults_path().into_os_string(),
            ),
            (
                "RAFTKV_TEST_CORRUPT",
                node.corrupt_hook_path().into_os_string(),
            ),
        ];
        env.extend(
            self.extra_env
                .iter()
                .chain(&node.env)
                .map(|(name, value)| (name.as_str(), value.clone())),
        );
        match ServerProcess::spawn(&self.bin, &args, &node.log_path(), &env) {
            Ok(process) => *node.process() = Some(process),
            Err(e) => self.fail(&format!(
                "cannot start node {id} ({}): {e}",
                self.bin.display()
            )),
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            if let Some(process) = node.process().take() {
                process.kill();
            }
        }
        if std::thread::panicking() && std::env::var_os(KEEP_DIRS_ENV).is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!(
                    "testkit: keeping {} ({KEEP_DIRS_ENV} is set)",
                    dir.keep().display()
                );
            }
        }
    }
}

/// The one node claiming leadership, if every answering node names it.
fn single_agreed_leader(statuses: &[NodeStatus]) -> Option<&NodeStatus> {
    let mut leaders = statuses.iter().filter(|s| s.is_leader());
    let leader = leaders.next()?;
    if leaders.next().is_some() {
        return None;
    }
    statuses
        .iter()
        .all(|s| s.id == leader.id || s.leader_id == leader.id)
        .then_some(leader)
}

fn describe_round(statuses: &[NodeStatus], problems: &[String]) -> String {
    let mut lines: Vec<String> = statuses
        .iter()
        .map(|s| {
            format!(
                "node {}: role={} term={} leader_id={} commit={} applied={}",
                s.id, s.role, s.term, s.leader_id, s.commit_index, s.applied_index
            )
        })
        .collect();
    lines.extend(problems.iter().cloned());
    lines.join("\n")
}

/// Replaces `path`'s contents atomically (a server may read it any time).
fn replace_file(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

/// `args` followed by `--endpoints ENDPOINTS` (a global client flag).
/// What a client of a TLS cluster presents: the CA it trusts and, for
/// `--client-cert-auth`, its certificate.
#[derive(Clone, Debug)]
pub struct ClientCreds {
    pub cacert: PathBuf,
    pub cert: Option<crate::pki::Issued>,
}

impl ClientCreds {
    /// `--cacert CA [--cert C --key K]`.
    pub fn cli_args(&self) -> Vec<String> {
        let mut args = vec!["--cacert".to_string(), self.cacert.display().to_string()];
        if let Some(cert) = &self.cert {
            args.push("--cert".to_string());
            args.push(cert.cert.display().to_string());
            args.push("--key".to_string());
            args.push(cert.key.display().to_string());
        }
        args
    }

    pub fn client_tls(&self) -> std::sync::Arc<raftkv_net::tls::ClientTls> {
        let files = raftkv_net::tls::ClientTlsFiles {
            trusted_ca: self.cacert.clone(),
            identity: self.cert.as_ref().map(|c| raftkv_net::tls::CertFiles {
                cert: c.cert.clone(),
                key: c.key.clone(),
            }),
            peer: false,
        };
        raftkv_net::tls::ClientTls::new(&files).unwrap_or_else(|e| panic!("client TLS: {e}"))
    }
}

fn with_endpoints(args: &[&str], endpoints: &str) -> Vec<String> {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.push("--endpoints".to_string());
    all.push(endpoints.to_string());
    all
}

/// The part of a node's log written by its latest run (from the kit's last
/// `=== testkit: starting` marker), or why it cannot be read.
fn read_last_run(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let start = text.rfind("=== testkit: starting").unwrap_or(0);
            text[start..].to_string()
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// The last `max_bytes` of a log file (lossy UTF-8), or why it cannot be read.
fn read_tail(path: &Path, max_bytes: u64) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let length = file.metadata()?.len();
        file.seek(SeekFrom::Start(length.saturating_sub(max_bytes)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    read().unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}
