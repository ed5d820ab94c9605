#!/usr/bin/env python3
"""The one source of a RaftKV node's command line, and the deployment files
made from it.

`server_argv()` returns the arguments of `raftkv server` for one node;
every deployment file below embeds what it returns, and `local` prints it
for a cluster on 127.0.0.1, so that a test that starts those command lines
and sees the cluster form and serve proves the manifests' command line too.

    python3 deploy/gen.py            (re)write every generated file
    python3 deploy/gen.py --check    exit 1, with a diff, if one differs
    python3 deploy/gen.py local --nodes 3 --base-dir DIR --ports P1,P2,...

`local` prints a JSON list, one object per node:

    [{"id": 1, "argv": ["server", ...], "client": "127.0.0.1:P1",
      "peer": "127.0.0.1:P2", "metrics": "127.0.0.1:P3",
      "data_dir": "/abs/DIR/node1"}, ...]

--ports takes three ports per node, node by node: node 1's client port,
peer port and metrics port, then node 2's, and so on (3 x --nodes ports).
`argv` leaves out the binary: run it as `raftkv *argv`. /livez, /readyz,
/health and /metrics are on the `metrics` address (--metrics-listen), not
on the client port.

Standard library only; the YAML is written as text.
"""

import argparse
import difflib
import json
import os
import re
import shlex
import sys
from collections import namedtuple

HERE = os.path.dirname(os.path.abspath(__file__))

# ---------------------------------------------------------------------------
# Settings every deployment shares.

# One port each for clients (and what members do as clients: forwarded etcd
# requests, joins, address changes), for raft traffic between members
# (--listen-peer), and for /metrics, /health, /livez and /readyz in
# plaintext (--metrics-listen): the probes work whatever the TLS flags.
Ports = namedtuple("Ports", "client peer metrics")
PORTS = Ports(client=7379, peer=7380, metrics=7381)

NODES = 3
IMAGE = "raftkv:latest"
# Inside the image (and the pods): the volume is /var/lib/raftkv and the data
# dir a directory in it, so that `--force-new-cluster` can keep the old dir
# beside it and `snapshot restore` can write a new one.
VOLUME = "/var/lib/raftkv"
DATA_DIR = VOLUME + "/data"

# Flags added to every generated command line, after the ones below (TLS
# files, timing): e.g. ["--election-timeout", "2s"]. Every voter must run
# with the same --election-timeout and --heartbeat-interval. Regenerate after
# a change.
EXTRA_ARGS = []

# Kubernetes names.
K8S_APP = "raftkv"
K8S_PEER_SERVICE = "raftkv-peer"
K8S_CLUSTER_DOMAIN = "cluster.local"
K8S_STORAGE = "10Gi"

# Seconds a stopping node may take: SIGTERM makes a leader hand leadership
# over (at most two election timeouts, 2 s with the default 1 s), then the
# node stops serving (at most 2 s more). Kubernetes also counts the preStop
# sleep in it.
STOP_GRACE_SECONDS = 30
PRESTOP_SLEEP_SECONDS = 5

# The systemd example's machines.
SYSTEMD_EXAMPLE_HOSTS = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]

# ---------------------------------------------------------------------------
# The node command line.

Member = namedtuple("Member", "id host ports")


def address(host, port):
    """HOST:PORT (an IPv6 address in brackets)."""
    if ":" in host and not host.startswith("["):
        host = "[" + host + "]"
    return "%s:%d" % (host, port)


def peers_value(members):
    """The value of --peers: every member as ID=HOST:PORT/PEER_HOST:PORT
    (its client address, then its separate peer listener), the same string on
    every member. A node's own entry must be exactly its --advertise and
    --advertise-peer (the server compares the text)."""
    return ",".join(
        "%s=%s/%s"
        % (m.id, address(m.host, m.ports.client), address(m.host, m.ports.peer))
        for m in members
    )


def static_cluster(members):
    """Cluster arguments of a member of a static cluster's first start."""
    return ["--peers", peers_value(members)]


def join_cluster(addresses):
    """Cluster arguments of a node added to a running cluster: any members'
    client addresses."""
    return ["--join", ",".join(addresses)]


def server_argv(node_id, advertise_host, ports, data_dir, cluster,
                listen_host="0.0.0.0", extra=None):
    """The arguments of `raftkv server` (without the binary) for one node.

    node_id: the node id (1 or more), or None to leave --id out (a restart,
        where the data dir knows its id; or a join, where the leader picks).
    advertise_host: where other members and clients reach this node (an
        address or a DNS name; never 0.0.0.0).
    ports: its Ports (client, peer, metrics).
    data_dir: its data directory.
    cluster: static_cluster(...), join_cluster(...) or [] (a restart).
    listen_host: the address it binds: 0.0.0.0 on a machine of its own or in
        a container, 127.0.0.1 for a local cluster.
    extra: flags added after these (default EXTRA_ARGS).

    The id and cluster arguments come last, so that a wrapper (the Kubernetes
    script) may choose them at start time after a common head.
    """
    argv = [
        "server",
        "--data-dir", data_dir,
        "--listen", address(listen_host, ports.client),
        "--advertise", address(advertise_host, ports.client),
        "--listen-peer", address(listen_host, ports.peer),
        "--advertise-peer", address(advertise_host, ports.peer),
        "--metrics-listen", address(listen_host, ports.metrics),
    ]
    argv += list(EXTRA_ARGS if extra is None else extra)
    if node_id is not None:
        argv += ["--id", str(node_id)]
    argv += list(cluster)
    return argv


def local_cluster(nodes, base_dir, ports):
    """A cluster on 127.0.0.1: `ports` holds 3 per node (client, peer,
    metrics), node by node."""
    if nodes < 1:
        raise ValueError("--nodes must be 1 or more")
    if len(ports) != 3 * nodes:
        raise ValueError(
            "--ports needs 3 ports per node (client, peer, metrics, node by node): "
            "%d for %d nodes, got %d" % (3 * nodes, nodes, len(ports)))
    if len(set(ports)) != len(ports):
        raise ValueError("--ports lists a port twice")
    for port in ports:
        if not 1 <= port <= 65535:
            raise ValueError("port %d is not from 1 to 65535" % port)
    host = "127.0.0.1"
    members = [Member(i + 1, host, Ports(*ports[3 * i:3 * i + 3])) for i in range(nodes)]
    base_dir = os.path.abspath(base_dir)
    out = []
    for m in members:
        data_dir = os.path.join(base_dir, "node%d" % m.id)
        out.append({
            "id": m.id,
            "argv": server_argv(m.id, host, m.ports, data_dir, static_cluster(members),
                                listen_host=host),
            "client": address(host, m.ports.client),
            "peer": address(host, m.ports.peer),
            "metrics": address(host, m.ports.metrics),
            "data_dir": data_dir,
        })
    return out


# ---------------------------------------------------------------------------
# Rendering helpers.

def header(comment="#"):
    return (
        "{c} Generated by deploy/gen.py from its one node command line (server_argv);\n"
        "{c} do not edit: change deploy/gen.py and run `python3 deploy/gen.py`\n"
        "{c} (`python3 deploy/gen.py --check` tells whether this file is current).\n"
    ).format(c=comment)


def flag_lines(argv):
    """argv as lines: a flag with its value on one line."""
    lines, i = [], 0
    while i < len(argv):
        if argv[i].startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            lines.append([argv[i], argv[i + 1]])
            i += 2
        else:
            lines.append([argv[i]])
            i += 1
    return lines


SHELL_VAR = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")


def sh_word(arg):
    """One POSIX shell word: ${NAME} placeholders expand (in double quotes),
    everything else is literal."""
    if "$" in arg:
        rest = SHELL_VAR.sub("", arg)
        if any(c in rest for c in '$"\\`'):
            raise ValueError("cannot put %r in a shell word" % arg)
        return '"%s"' % arg
    return shlex.quote(arg)


def systemd_word(arg):
    """One word of a systemd ExecStart line: ${NAME} expands within it, a
    lone $NAME splits into several words (or none); %i is the instance."""
    if re.search(r'[\s"\'\\;]', arg) or re.search(r"%[^i]", arg):
        raise ValueError("cannot put %r in an ExecStart word" % arg)
    return arg


def yaml_str(text):
    """A YAML double-quoted scalar (JSON's string syntax is YAML's)."""
    return json.dumps(text)


def yaml_flow(items):
    return "[" + ", ".join(yaml_str(s) for s in items) + "]"


# ---------------------------------------------------------------------------
# docker compose: three services on one network, named raftkv1..3.

# Host ports published for clients (and, 2 above each, for /metrics and the
# probes).
COMPOSE_HOST_PORTS = [7379, 7389, 7399]


def compose_yaml():
    names = ["raftkv%d" % i for i in range(1, NODES + 1)]
    members = [Member(i + 1, names[i], PORTS) for i in range(NODES)]
    out = [header()]
    out.append(
        "#\n"
        "# A 3-node cluster on one Docker host. From the repository root:\n"
        "#   docker compose -f deploy/compose.yaml up -d --build\n"
        "#   docker compose -f deploy/compose.yaml exec raftkv1 \\\n"
        "#     raftkv --endpoints raftkv1:7379,raftkv2:7379,raftkv3:7379 status --cluster\n"
        "# Members advertise raftkv1:7379 and so on, names that resolve on this compose\n"
        "# network only: run clients there (exec, or a container on the network). The\n"
        "# client ports are also published on the host's loopback (remove \"127.0.0.1:\"\n"
        "# to publish them on every interface), but a client there that is redirected\n"
        "# to the leader by name cannot follow the redirect. Each node's /metrics and\n"
        "# probes are published 2 ports above its client port (7381, 7391, 7401).\n"
        "# The health check asks /readyz on the plaintext --metrics-listen port with\n"
        "# raftkv-probe, a bash script in the image (no curl needed).\n"
        "# SIGTERM (docker compose stop/restart) makes a leader hand leadership over\n"
        "# before it exits; stop_grace_period leaves it the time.\n"
        "name: raftkv\n"
        "services:\n")
    for i, name in enumerate(names):
        argv = server_argv(i + 1, name, PORTS, DATA_DIR, static_cluster(members))
        out.append(
            "  {name}:\n"
            "    image: {image}\n"
            "    build:\n"
            "      context: ..\n"
            "      dockerfile: deploy/Dockerfile\n"
            "    hostname: {name}\n"
            "    command:\n"
            "{command}"
            "    ports:\n"
            "      - {port}\n"
            "      - {metrics_port}\n"
            "    volumes:\n"
            "      - {volume}\n"
            "    healthcheck:\n"
            "      test: {test}\n"
            "      interval: 5s\n"
            "      timeout: 3s\n"
            "      retries: 3\n"
            "      start_period: 60s\n"
            "    stop_signal: SIGTERM\n"
            "    stop_grace_period: {grace}s\n"
            "    restart: unless-stopped\n".format(
                name=name,
                image=IMAGE,
                command="".join("      - %s\n" % yaml_str(a) for a in argv),
                port=yaml_str("127.0.0.1:%d:%d" % (COMPOSE_HOST_PORTS[i], PORTS.client)),
                metrics_port=yaml_str(
                    "127.0.0.1:%d:%d" % (COMPOSE_HOST_PORTS[i] + 2, PORTS.metrics)),
                volume=yaml_str("%s-data:%s" % (name, VOLUME)),
                test=yaml_flow(["CMD", "raftkv-probe", str(PORTS.metrics), "/readyz"]),
                grace=STOP_GRACE_SECONDS,
            ))
    out.append("volumes:\n")
    for name in names:
        out.append("  %s-data: {}\n" % name)
    return "".join(out)


# ---------------------------------------------------------------------------
# Kubernetes: a StatefulSet whose pods raftkv-0..2 are nodes 1..3.

def k8s_host(pod):
    return "%s.%s.${POD_NAMESPACE}.svc.%s" % (pod, K8S_PEER_SERVICE, K8S_CLUSTER_DOMAIN)


def k8s_script():
    """The container's `sh -c` script: the node id is the pod ordinal + 1; a
    restart leaves --id and --peers to the data dir; RAFTKV_JOIN, when set,
    makes a pod with an empty data dir join instead (a member that lost its
    volume comes back as a new member)."""
    members = [Member(i + 1, k8s_host("%s-%d" % (K8S_APP, i)), PORTS) for i in range(NODES)]
    me = k8s_host("${POD_NAME}")
    restart = server_argv(None, me, PORTS, DATA_DIR, [])
    join = server_argv(None, me, PORTS, DATA_DIR, join_cluster(["${RAFTKV_JOIN}"]))
    first = server_argv("${id}", me, PORTS, DATA_DIR, static_cluster(members))
    head = len(restart)
    assert join[:head] == restart and first[:head] == restart

    def tail(argv):
        return " \\\n    ".join(" ".join(sh_word(w) for w in line)
                                for line in flag_lines(argv[head:]))

    lines = [
        "set -eu",
        "if [ -e %s/raftkv.id ]; then" % sh_word(DATA_DIR),
        "  # A restart: the data dir holds the node's id and the members.",
        "  set --",
        'elif [ -n "${RAFTKV_JOIN:-}" ]; then',
        "  # An empty data dir joins the running cluster (the leader picks the id).",
        "  set -- " + tail(join),
        "else",
        "  # The cluster's first start: node id = pod ordinal + 1.",
        '  id=$((${POD_NAME##*-} + 1))',
        "  set -- " + tail(first),
        "fi",
        "exec raftkv " + " \\\n  ".join(" ".join(sh_word(w) for w in line)
                                         for line in flag_lines(restart)) + ' \\\n  "$@"',
    ]
    return "\n".join(lines) + "\n"


def k8s_yaml():
    labels = "app.kubernetes.io/name: %s" % K8S_APP
    script = "".join("              %s\n" % line if line else "\n"
                     for line in k8s_script().splitlines())
    return header() + """\
#
# A 3-node RaftKV cluster: kubectl apply -f deploy/k8s/raftkv.yaml (in any namespace).
# Pod raftkv-N is node N+1 and advertises raftkv-N.{peer}.NAMESPACE.svc.{domain};
# the headless Service {peer} publishes those names before the pods are ready, so
# the members find each other. Clients use the Service {app} (ready pods only).
# Probes and /metrics are on the plaintext metrics port (--metrics-listen). On
# deletion a pod sleeps {prestop}s (preStop) while the endpoints drop it, then gets
# SIGTERM: a leader hands leadership over, then exits.
# A pod whose volume was lost comes back only as a new member: see docs/DEPLOYMENT.md.
---
apiVersion: v1
kind: Service
metadata:
  name: {peer}
  labels:
    {labels}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector:
    {labels}
  ports:
    - name: client
      port: {client}
      targetPort: client
    - name: peer
      port: {peerport}
      targetPort: peer
    - name: metrics
      port: {metrics}
      targetPort: metrics
---
apiVersion: v1
kind: Service
metadata:
  name: {app}
  labels:
    {labels}
spec:
  type: ClusterIP
  selector:
    {labels}
  ports:
    - name: client
      port: {client}
      targetPort: client
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {app}
  labels:
    {labels}
spec:
  maxUnavailable: 1
  selector:
    matchLabels:
      {labels}
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {app}
  labels:
    {labels}
spec:
  serviceName: {peer}
  replicas: {nodes}
  podManagementPolicy: Parallel
  updateStrategy:
    type: RollingUpdate
  selector:
    matchLabels:
      {labels}
  template:
    metadata:
      labels:
        {labels}
    spec:
      terminationGracePeriodSeconds: {grace}
      enableServiceLinks: false
      securityContext:
        runAsNonRoot: true
        runAsUser: 10001
        runAsGroup: 10001
        fsGroup: 10001
        fsGroupChangePolicy: OnRootMismatch
        seccompProfile:
          type: RuntimeDefault
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 100
              podAffinityTerm:
                topologyKey: kubernetes.io/hostname
                labelSelector:
                  matchLabels:
                    {labels}
      containers:
        - name: raftkv
          image: {image}
          imagePullPolicy: IfNotPresent
          command:
            - /bin/sh
            - "-c"
            - |
{script}\
          env:
            - name: POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            - name: POD_NAMESPACE
              valueFrom:
                fieldRef:
                  fieldPath: metadata.namespace
            - name: RAFTKV_JOIN
              value: ""
          ports:
            - name: client
              containerPort: {client}
            - name: peer
              containerPort: {peerport}
            - name: metrics
              containerPort: {metrics}
          startupProbe:
            httpGet:
              path: /livez
              port: metrics
            periodSeconds: 2
            failureThreshold: 300
          readinessProbe:
            httpGet:
              path: /readyz
              port: metrics
            periodSeconds: 2
            timeoutSeconds: 2
            failureThreshold: 2
          livenessProbe:
            httpGet:
              path: /livez
              port: metrics
            periodSeconds: 10
            timeoutSeconds: 5
            failureThreshold: 6
          lifecycle:
            preStop:
              exec:
                command: ["sleep", "{prestop}"]
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities:
              drop: ["ALL"]
          volumeMounts:
            - name: data
              mountPath: {volume}
  volumeClaimTemplates:
    - metadata:
        name: data
        labels:
          {labels}
      spec:
        accessModes: ["ReadWriteOnce"]
        resources:
          requests:
            storage: {storage}
""".format(
        app=K8S_APP,
        peer=K8S_PEER_SERVICE,
        domain=K8S_CLUSTER_DOMAIN,
        labels=labels,
        client=PORTS.client,
        peerport=PORTS.peer,
        metrics=PORTS.metrics,
        nodes=NODES,
        grace=STOP_GRACE_SECONDS,
        prestop=PRESTOP_SLEEP_SECONDS,
        image=IMAGE,
        script=script,
        volume=VOLUME,
        storage=K8S_STORAGE,
    )


# ---------------------------------------------------------------------------
# systemd: raftkv@ID.service, one per machine, settings in /etc/raftkv/ID.env.

SYSTEMD_BINARY = "/usr/local/bin/raftkv"
SYSTEMD_DATA_DIR = "/var/lib/raftkv/%i/data"


def systemd_unit():
    argv = server_argv("%i", "${RAFTKV_HOST}", PORTS, SYSTEMD_DATA_DIR,
                       ["$RAFTKV_CLUSTER"], extra=list(EXTRA_ARGS) + ["$RAFTKV_EXTRA_ARGS"])
    lines = flag_lines(argv)
    lines[0] = [SYSTEMD_BINARY] + lines[0]
    exec_start = " \\\n    ".join(" ".join(systemd_word(w) for w in line) for line in lines)
    return header() + """\
#
# One RaftKV node per machine: the instance name is the node id.
#   useradd --system --home-dir /var/lib/raftkv --shell /usr/sbin/nologin raftkv
#   install -m 0755 raftkv /usr/local/bin/raftkv
#   install -D -m 0600 example-node.env /etc/raftkv/1.env   (edit it)
#   cp raftkv@.service /etc/systemd/system/ && systemctl daemon-reload
#   systemctl enable --now raftkv@1
# Data: /var/lib/raftkv/ID/data (StateDirectory). Logs: journalctl -u raftkv@1.
# `systemctl stop` sends SIGTERM: a leader hands leadership over, then exits.

[Unit]
Description=RaftKV node %i
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User=raftkv
Group=raftkv
EnvironmentFile=/etc/raftkv/%i.env
StateDirectory=raftkv/%i
StateDirectoryMode=0750
WorkingDirectory=/var/lib/raftkv/%i
# Without RAFTKV_CLUSTER a new node would start as a one-member cluster of its own.
ExecStartPre=/bin/sh -c 'test -n "$$RAFTKV_HOST" && test -n "$$RAFTKV_CLUSTER" || {{ echo "set RAFTKV_HOST and RAFTKV_CLUSTER in /etc/raftkv/%i.env" >&2; exit 1; }}'
ExecStart={exec_start}
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec={grace}s
Restart=on-failure
RestartSec=2s
LimitNOFILE=65536
UMask=0027
# Hardening: the node needs its state directory, the network and nothing else.
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
""".format(exec_start=exec_start, grace=STOP_GRACE_SECONDS)


def systemd_env():
    members = [Member(i + 1, host, PORTS) for i, host in enumerate(SYSTEMD_EXAMPLE_HOSTS)]
    join = join_cluster([address(m.host, m.ports.client) for m in members])
    return header() + """\
#
# /etc/raftkv/ID.env, read by raftkv@ID.service (ID: the node id, the instance
# name). This one is node 1's of the example cluster {hosts}.
# Keep it mode 0600 if it holds a password.

# Where the other members and clients reach this machine (an IP address or a
# DNS name; not 0.0.0.0; an IPv6 address in brackets, [2001:db8::1]). Its
# --peers entry must be exactly this host.
RAFTKV_HOST={host}

# How the node finds its cluster, at its first start only (afterwards the data
# dir holds the members and this is not used). A member of the first cluster:
# the same --peers list on every one of them.
RAFTKV_CLUSTER={static}
# A node added to a running cluster instead (its id, the instance name, never
# used in the cluster before):
#RAFTKV_CLUSTER={join}

# More flags, split at spaces (TLS files, timing; the same timing on every voter):
RAFTKV_EXTRA_ARGS=

# With auth on and no peer TLS, the root user the node logs in as for its own
# membership calls (joining, its promotion, a new address):
#RAFTKV_USER=root
#RAFTKV_PASSWORD=
""".format(
        hosts=", ".join(SYSTEMD_EXAMPLE_HOSTS),
        host=SYSTEMD_EXAMPLE_HOSTS[0],
        static=" ".join(static_cluster(members)),
        join=" ".join(join),
    )


# ---------------------------------------------------------------------------

GENERATED = {
    "compose.yaml": compose_yaml,
    "k8s/raftkv.yaml": k8s_yaml,
    "systemd/raftkv@.service": systemd_unit,
    "systemd/example-node.env": systemd_env,
}


def read(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None


def write_all():
    for name, make in GENERATED.items():
        path = os.path.join(HERE, name)
        text = make()
        if read(path) == text:
            print("unchanged deploy/%s" % name)
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        print("wrote deploy/%s" % name)
    return 0


def check_all():
    stale = []
    for name, make in GENERATED.items():
        path = os.path.join(HERE, name)
        want, have = make(), read(path)
        if have == want:
            continue
        stale.append(name)
        if have is None:
            print("deploy/%s: missing" % name)
            continue
        diff = list(difflib.unified_diff(
            have.splitlines(), want.splitlines(),
            "deploy/%s (committed)" % name, "deploy/%s (generated)" % name, lineterm=""))
        print("deploy/%s: differs (%d lines of diff)" % (name, len(diff)))
        for line in diff[:40]:
            print("  " + line)
        if len(diff) > 40:
            print("  ...")
    if stale:
        print("%d generated file(s) out of date: run `python3 deploy/gen.py`" % len(stale))
        return 1
    print("every generated file is current")
    return 0


def main(args):
    if args[:1] == ["local"]:
        parser = argparse.ArgumentParser(
            prog="gen.py local",
            description="Print the command lines of a cluster on 127.0.0.1 as JSON.")
        parser.add_argument("--nodes", type=int, default=3)
        parser.add_argument("--base-dir", required=True,
                            help="data dirs are BASE_DIR/node1, BASE_DIR/node2, ...")
        parser.add_argument("--ports", required=True,
                            help="3 per node, node by node: client,peer,metrics,...")
        opts = parser.parse_args(args[1:])
        try:
            words = [p.strip() for p in opts.ports.split(",") if p.strip()]
            bad = [p for p in words if not p.isdigit() or not 0 < int(p) < 65536]
            if bad:
                raise ValueError("--ports: %s is not a port number (1-65535)" % bad[0])
            nodes = local_cluster(opts.nodes, opts.base_dir, [int(p) for p in words])
        except ValueError as e:
            parser.error(str(e))
        print(json.dumps(nodes))
        return 0
    parser = argparse.ArgumentParser(
        prog="gen.py", description="Write (or --check) the generated deployment files.",
        epilog="`gen.py local --help`: command lines of a local cluster as JSON.")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a generated file differs")
    opts = parser.parse_args(args)
    return check_all() if opts.check else write_all()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
