#!/usr/bin/env python3
"""Run one etcdctl (3.4, ETCDCTL_API=3) session against etcd and RaftKV and diff them.

Four fresh stores, one after the other, all on 127.0.0.1 with ports picked free
at run time and data in a temporary directory removed at the end:

  etcd1    a 1-member etcd 3.4 (Debian's etcd-server, /usr/bin/etcd)
  raftkv1  a 1-node RaftKV
  etcd3    a 3-member etcd 3.4
  raftkv3  a 3-node RaftKV (static cluster)

Each gets the same session of etcdctl commands (put/get/--prefix/--rev/-w json,
del, txn from stdin taking both branches, watch --prefix live while a writer
makes 50 changes, watch --rev from the past, leases: grant, put --lease,
keep-alive, timetolive --keys, list, revoke, expiry; compaction and reads and
watches below it; endpoint status, member list, endpoint health). On the
3-member stores every step goes to the endpoints in turn (round robin), and the
read checks go to every member. The transcripts (command, stdin, stdout,
stderr, exit code) are normalized (see Normalizer: each rule says what it hides
and why) and compared: etcd1 with raftkv1, etcd3 with raftkv3. A few checks are
also made inside each transcript (the live watch saw every event once, in
order; the member list has the right shape); their result lines are part of
the compared transcript too.

Exit status: 0 when every compared pair matches and every check passed, 1 when
something differs (a unified diff is printed), 2 when a store could not be
started or the run went over its time budget.

    scripts/etcdctl-compare.py [--raftkv PATH] [--only etcd1,raftkv1,...]
                               [--keep-output DIR] [--quiet]

--raftkv defaults to $RAFTKV or target/release/raftkv; it is copied once into
the run's temporary directory and that copy is run, so a rebuild meanwhile does
not matter. --keep-output DIR keeps the raw and
normalized transcripts and the server logs.
"""
import argparse
import difflib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
STORES = ("etcd1", "raftkv1", "etcd3", "raftkv3")
PAIRS = (("etcd1", "raftkv1"), ("etcd3", "raftkv3"))
CALL_TIMEOUT = 20  # seconds, any single etcdctl call (etcdctl's own: 2 s dial + 5 s command)
READY_TIMEOUT = 20  # seconds for every endpoint to answer `endpoint health`
WATCH_TIMEOUT = 20  # seconds a background watch may take to show what it should


class HarnessError(Exception):
    pass


def free_ports(n):
    """n distinct free loopback ports: bind to port 0, take the port, close."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def stop_procs(procs):
    """Stop the processes this script started, by their Popen objects (PIDs) only."""
    for p in procs:
        if p.poll() is None:
            try:
                p.terminate()
            except OSError:
                pass
    end = time.monotonic() + 5
    for p in procs:
        try:
            p.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


def etcdctl_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    return env


# --------------------------------------------------------------------------- stores


class Store:
    """One cluster of this run: its processes, ports and data under `root`."""

    def __init__(self, name, root, etcd_bin, etcdctl_bin, raftkv_bin):
        self.name = name
        self.kind = "etcd" if name.startswith("etcd") else "raftkv"
        self.nodes = int(name[-1])
        self.dir = os.path.join(root, name)
        os.makedirs(self.dir)
        self.etcd_bin, self.etcdctl_bin, self.raftkv_bin = etcd_bin, etcdctl_bin, raftkv_bin
        self.procs = []
        self.logs = []
        self.client_ports = []
        self.peer_ports = []  # RaftKV: the same as the client ports (one port per node)

    @property
    def endpoints(self):
        return ["127.0.0.1:%d" % p for p in self.client_ports]

    def _spawn(self, cmd, log_path):
        log = open(log_path, "wb")
        self.logs.append(log_path)
        try:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        self.procs.append(p)

    def start(self):
        n = self.nodes
        if self.kind == "etcd":
            ports = free_ports(2 * n)
            self.client_ports, self.peer_ports = ports[:n], ports[n:]
            # Members are named node-1..node-N, the names RaftKV gives its nodes
            # (node-ID), so `member list` names can be compared as they are.
            cluster = ",".join("node-%d=http://127.0.0.1:%d" % (i + 1, self.peer_ports[i]) for i in range(n))
            for i in range(n):
                c, p = self.client_ports[i], self.peer_ports[i]
                self._spawn([
                    self.etcd_bin, "--name", "node-%d" % (i + 1),
                    "--data-dir", os.path.join(self.dir, "data-%d" % (i + 1)),
                    "--listen-client-urls", "http://127.0.0.1:%d" % c,
                    "--advertise-client-urls", "http://127.0.0.1:%d" % c,
                    "--listen-peer-urls", "http://127.0.0.1:%d" % p,
                    "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % p,
                    "--initial-cluster", cluster, "--initial-cluster-state", "new",
                    "--initial-cluster-token", "etcdctl-compare-%s" % self.name,
                ], os.path.join(self.dir, "node-%d.log" % (i + 1)))
        else:
            self.client_ports = free_ports(n)
            self.peer_ports = list(self.client_ports)
            peers = ",".join("%d=127.0.0.1:%d" % (i + 1, self.client_ports[i]) for i in range(n))
            for i in range(n):
                self._spawn([
                    self.raftkv_bin, "server", "--id", str(i + 1),
                    "--data-dir", os.path.join(self.dir, "data-%d" % (i + 1)),
                    "--listen", "127.0.0.1:%d" % self.client_ports[i], "--peers", peers,
                ], os.path.join(self.dir, "node-%d.log" % (i + 1)))

    def wait_ready(self):
        """Every endpoint answers `etcdctl endpoint health` (a linearizable read)."""
        deadline = time.monotonic() + READY_TIMEOUT
        pending = list(self.endpoints)
        last = ""
        while pending:
            for p in self.procs:
                if p.poll() is not None:
                    raise HarnessError("%s: a server exited (code %s) while starting:\n%s"
                                       % (self.name, p.returncode, self.log_tails()))
            ep = pending[0]
            try:
                r = subprocess.run([self.etcdctl_bin, "--endpoints=" + ep, "--dial-timeout=1s",
                                    "--command-timeout=2s", "endpoint", "health"],
                                   env=etcdctl_env(), capture_output=True, text=True, timeout=10)
                if r.returncode == 0:
                    pending.pop(0)
                    continue
                last = (r.stdout + r.stderr).strip()
            except subprocess.TimeoutExpired:
                last = "endpoint health timed out"
            if time.monotonic() > deadline:
                raise HarnessError("%s: %s not healthy within %d s (%s)\n%s"
                                   % (self.name, ep, READY_TIMEOUT, last, self.log_tails()))
            time.sleep(0.2)

    def log_tails(self, lines=15):
        out = []
        for path in self.logs:
            try:
                with open(path, errors="replace") as f:
                    tail = f.readlines()[-lines:]
            except OSError:
                tail = []
            out.append("--- %s\n%s" % (path, "".join(tail)))
        return "\n".join(out)

    def stop(self):
        stop_procs(self.procs)


# --------------------------------------------------------------------------- running etcdctl


class Background:
    """An etcdctl that keeps running (watch, lease keep-alive), read line by line."""

    running = []  # every one started, so the finally block in main can stop them all

    def __init__(self, cmd, env):
        self.cmd = cmd
        self.p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=env, text=True, bufsize=1)
        Background.running.append(self.p)
        self.out, self.err = [], []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._read, args=(self.p.stdout, self.out), daemon=True),
                        threading.Thread(target=self._read, args=(self.p.stderr, self.err), daemon=True)]
        for t in self.threads:
            t.start()

    def _read(self, stream, sink):
        for line in stream:
            with self.lock:
                sink.append(line.rstrip("\n"))

    def lines(self):
        with self.lock:
            return list(self.out)

    def wait_for(self, enough, timeout):
        """Until enough(stdout lines) holds, the process exits, or timeout."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if enough(self.lines()):
                return "enough"
            if self.p.poll() is not None:
                time.sleep(0.1)  # let the readers drain
                return "exited"
            time.sleep(0.05)
        return "timeout"

    def connected(self, port):
        """Whether this etcdctl has an established TCP connection to `port`."""
        try:
            inodes = set()
            for fd in os.listdir("/proc/%d/fd" % self.p.pid):
                try:
                    link = os.readlink("/proc/%d/fd/%s" % (self.p.pid, fd))
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
            with open("/proc/%d/net/tcp" % self.p.pid) as f:
                for row in f.readlines()[1:]:
                    cols = row.split()
                    if cols[9] in inodes and cols[3] == "01" and int(cols[2].split(":")[1], 16) == port:
                        return True
        except OSError:
            pass
        return False

    def stop(self):
        stop_procs([self.p])
        for t in self.threads:
            t.join(timeout=2)
        return self.p.returncode


class Session:
    """The session against one store; records a transcript of blocks."""

    def __init__(self, store, deadline):
        self.s = store
        self.n = store.nodes
        self.deadline = deadline
        self.env = etcdctl_env()
        self.blocks = []
        self.rr = 0
        self.base = None  # store revision when the session starts
        self.members = {}  # member id -> endpoint index (from member list -w json)
        self.leases = []  # lease ids in the order granted
        self.failures = []  # failed checks
        self.commands = 0

    # -- plumbing

    def check_time(self):
        if time.monotonic() > self.deadline:
            raise HarnessError("%s: over the time budget" % self.s.name)

    def pick(self, ep):
        """ep: None = next endpoint round robin, an int = that endpoint, 'all' = every endpoint."""
        if ep == "all":
            return list(range(self.n))
        if ep is None:
            ep = self.rr % self.n
            self.rr += 1
        return [ep % self.n]

    def cmd(self, args, eps):
        return [self.s.etcdctl_bin, "--endpoints=" + ",".join(self.s.endpoints[i] for i in eps)] + list(args)

    def add(self, title, cmd, stdin, out, err, status, kind="text", extra=()):
        self.blocks.append({"title": title, "cmd": cmd, "stdin": stdin, "out": out, "err": err,
                            "status": status, "kind": kind, "extra": list(extra)})

    def run(self, args, ep=None, stdin=None, kind="text", title=""):
        """One etcdctl call; returns (stdout, stderr, exit code)."""
        self.check_time()
        eps = self.pick(ep)
        cmd = self.cmd(args, eps)
        self.commands += 1
        try:
            r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=self.env,
                               timeout=CALL_TIMEOUT, stdin=None if stdin is not None else subprocess.DEVNULL)
            out, err, rc = r.stdout, r.stderr, r.returncode
            status = "exit %d" % rc
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
            rc, status = None, "TIMED OUT after %d s (killed by the harness)" % CALL_TIMEOUT
        self.add(title, cmd, stdin, out, err, status, kind)
        self.learn(out)
        return out, err, rc

    def run_each(self, args, **kw):
        """The same call against every member in turn (the read checks)."""
        return [self.run(args, ep=i, **kw) for i in range(self.n)]

    def learn(self, out):
        """Remember lease ids as they are granted (for the normalizer)."""
        for m in re.finditer(r"^lease ([0-9a-f]{16}) granted with TTL", out, re.M):
            lid = int(m.group(1), 16)
            if lid not in self.leases:
                self.leases.append(lid)
        for line in out.splitlines():
            try:
                j = json.loads(line)
            except ValueError:
                continue
            if isinstance(j, dict) and "ID" in j and "TTL" in j and j["ID"] not in self.leases:
                self.leases.append(j["ID"])

    def check(self, title, ok, text):
        line = ("CHECK ok: " if ok else "CHECK FAILED: ") + text
        if not ok:
            self.failures.append("%s: %s: %s" % (self.s.name, title, text))
        self.add(title, None, None, "", "", "", "check", extra=[line])

    def header_rev(self, out):
        for line in out.splitlines():
            try:
                j = json.loads(line)
            except ValueError:
                continue
            h = j.get("header", j) if isinstance(j, dict) else {}
            if "revision" in h:
                return int(h["revision"])
        raise HarnessError("%s: no header revision in %r" % (self.s.name, out[:300]))

    def bg(self, args, ep):
        self.check_time()
        self.commands += 1
        return Background(self.cmd(args, [ep]), self.env)

    def bg_block(self, title, b, how, kind="text", extra=()):
        b.stop()
        with b.lock:
            out, err = "\n".join(b.out), "\n".join(b.err)
        status = {"enough": "stopped by the harness once the expected output was printed",
                  "timeout": "STILL RUNNING after %d s: stopped by the harness" % WATCH_TIMEOUT,
                  "exited": "exited by itself: exit %s" % b.p.returncode}[how]
        self.add(title, b.cmd, None, out + ("\n" if out else ""), err, status, kind, extra)
        self.learn(out)

    # -- the session

    def go(self):
        self.setup()
        self.kv()
        self.txn()
        self.watch()
        self.lease()
        self.compaction()
        self.lock_election()
        self.cluster()

    def setup(self):
        out, _, _ = self.run(["member", "list", "-w", "json"], ep=0, kind="json", title="setup: who is who")
        try:
            for m in json.loads(out)["members"]:
                for url in m.get("clientURLs") or []:
                    port = int(url.rsplit(":", 1)[1])
                    if port in self.s.client_ports:
                        self.members[m["ID"]] = self.s.client_ports.index(port)
        except (ValueError, KeyError) as e:
            raise HarnessError("%s: member list -w json unreadable (%s): %r" % (self.s.name, e, out[:300]))
        out, _, _ = self.run(["get", "--prefix", "s/", "-w", "json"], ep=0, kind="json",
                             title="setup: the revision at session start")
        self.base = self.header_rev(out)

    def kv(self):
        B = self.base
        t = "kv"
        for args in (["put", "foo", "bar"], ["put", "foo", "baz"], ["put", "a/1", "x"],
                     ["put", "a/2", "y"], ["put", "a/3", "z"], ["put", "b/1", "q"]):
            self.run(args, title=t)  # revisions B+1 .. B+6
        self.run_each(["get", "foo"], title=t)
        self.run_each(["get", "foo", "-w", "json"], kind="json", title=t)
        self.run_each(["get", "--prefix", "a/"], title=t)
        self.run_each(["get", "--prefix", "a/", "-w", "json"], kind="json", title=t)
        self.run(["get", "--prefix", "a/", "--limit=2", "-w", "json"], kind="json", title=t)
        self.run(["get", "--prefix", "a/", "--keys-only"], title=t)
        self.run(["get", "--prefix", "a/", "--sort-by=MODIFY", "--order=DESCEND"], title=t)
        self.run(["get", "a/", "--from-key"], title=t)
        self.run(["get", "a/1", "a/3"], title=t)
        self.run_each(["get", "foo", "--rev=%d" % (B + 1)], title=t)
        self.run_each(["get", "foo", "--rev=%d" % (B + 1), "-w", "json"], kind="json", title=t)
        self.run(["get", "--prefix", "a/", "--rev=%d" % (B + 4), "-w", "json"], kind="json", title=t)
        self.run(["get", "foo", "--rev=%d" % (B + 1000)], title=t + ": a future revision")
        self.run(["put", "--prev-kv", "foo", "qux", "-w", "json"], kind="json", title=t)  # B+7
        self.run(["del", "--prefix", "a/"], title=t)  # B+8, 3 keys
        self.run(["del", "--prefix", "a/"], title=t + ": nothing left, no new revision")
        self.run(["del", "--prev-kv", "b/1"], title=t)  # B+9
        self.run(["del", "nothing"], title=t)
        self.run_each(["get", "", "--from-key", "-w", "json"], kind="json", title=t + ": the whole keyspace")
        self.run(["put", "", "v"], title=t + ": an empty key")

    def txn(self):
        B = self.base
        t = "txn"
        self.run(["put", "t/k", "v1"], title=t)  # B+10
        cas = 'value("t/k") = "v1"\n\nput t/k "v2"\nget t/k\n\nget t/k\n\n'
        self.run(["txn"], stdin=cas, title=t + ": compare-and-swap, success branch")  # B+11
        self.run(["txn"], stdin=cas, title=t + ": the same again, failure branch")
        cas_rev = 'mod("t/k") = "%d"\n\nput t/k "v3"\n\nput t/failed "1"\n\n' % (B + 11)
        self.run(["txn", "-w", "json"], stdin=cas_rev, kind="json",
                 title=t + ": on mod revision, success branch")  # B+12
        self.run(["txn", "-w", "json"], stdin=cas_rev, kind="json",
                 title=t + ": on mod revision, failure branch (writes)")  # B+13
        self.run(["txn"], stdin='version("t/k") > "2"\ncreate("t/k") = "%d"\n\nget t/k\n\n\n' % (B + 10),
                 title=t + ": two compares, success branch with no writes")
        self.run_each(["get", "--prefix", "t/", "-w", "json"], kind="json", title=t)

    # -- watch

    @staticmethod
    def writer_ops():
        """50 changes under w/: puts, single deletes (some of absent keys), prefix deletes, a txn."""
        ops = []
        for i in range(50):
            if i == 20:
                ops.append(("txn", [("put", "w/a", "t20"), ("put", "w/b", "t20"), ("del", "w/1")]))
            elif i in (15, 35, 49):
                ops.append(("delp", "w/"))
            elif i % 6 == 5:
                ops.append(("del", "w/%d" % ((i // 6) % 7)))
            else:
                ops.append(("put", "w/%d" % (i % 7), "v%d" % i))
        return ops

    @staticmethod
    def model(ops, first_rev):
        """The events etcd's semantics give for ops: [(rev, type, key, value, prev value or None)]."""
        state, events, rev = {}, [], first_rev - 1

        def one(op, key, value, evs):
            if op == "put":
                evs.append(("PUT", key, value, state.get(key)))
                state[key] = value
            elif key in state:
                evs.append(("DELETE", key, "", state.pop(key)))

        for op in ops:
            evs = []
            if op[0] == "put":
                one("put", op[1], op[2], evs)
            elif op[0] == "del":
                one("del", op[1], None, evs)
            elif op[0] == "delp":
                for k in sorted(k for k in state if k.startswith(op[1])):
                    one("del", k, None, evs)
            else:
                for sub in op[1]:
                    one(sub[0], sub[1], sub[2] if sub[0] == "put" else None, evs)
            if evs:
                rev += 1
                events += [(rev,) + e for e in evs]
        return events

    @staticmethod
    def simple_lines(events):
        out = []
        for _, typ, key, value, _ in events:
            out += [typ, key, value]
        return out

    def watch_check(self, title, lines, expected):
        if lines == expected:
            self.check(title, True, "%d events (%d lines), each once, in order, as written"
                       % (len(expected) // 3, len(expected)))
            return
        i = next((i for i, (a, b) in enumerate(zip(lines, expected)) if a != b), min(len(lines), len(expected)))
        self.check(title, False, "watch output differs from the %d events written: %d lines, expected %d; "
                   "first difference at line %d: got %r, expected %r"
                   % (len(expected) // 3, len(lines), len(expected), i + 1,
                      lines[i] if i < len(lines) else "<end>", expected[i] if i < len(expected) else "<end>"))

    def watch(self):
        t = "watch"
        out, _, _ = self.run(["get", "--prefix", "w/", "-w", "json"], ep=0, kind="json", title=t + ": before")
        first = self.header_rev(out) + 1
        ops = self.writer_ops()
        events = self.model(ops, first)
        expected = self.simple_lines(events)

        # A live watch (from now, no --rev) on every member while the writer writes.
        watchers = [self.bg(["watch", "--prefix", "w/"], ep=i) for i in range(self.n)]
        end = time.monotonic() + 10
        while not all(w.connected(self.s.client_ports[i]) for i, w in enumerate(watchers)):
            if time.monotonic() > end or any(w.p.poll() is not None for w in watchers):
                break
            time.sleep(0.05)
        time.sleep(0.7)  # connected; give the watch-create request time to land
        log = []
        for i, op in enumerate(ops):
            self.check_time()
            if op[0] == "put":
                args, stdin = ["put", op[1], op[2]], None
            elif op[0] == "del":
                args, stdin = ["del", op[1]], None
            elif op[0] == "delp":
                args, stdin = ["del", "--prefix", op[1]], None
            else:
                args = ["txn"]
                stdin = "\n" + "".join("%s %s%s\n" % (s[0], s[1], " " + s[2] if s[0] == "put" else "")
                                       for s in op[1]) + "\n\n"
            ep = i % self.n
            self.commands += 1
            try:
                r = subprocess.run(self.cmd(args, [ep]), input=stdin, capture_output=True, text=True,
                                   env=self.env, timeout=CALL_TIMEOUT,
                                   stdin=None if stdin is not None else subprocess.DEVNULL)
                res = "%s -> %s (exit %d)%s" % (" ".join(args) + (" <<%r" % stdin if stdin else ""),
                                                " | ".join(r.stdout.strip().splitlines()), r.returncode,
                                                " stderr: " + r.stderr.strip() if r.stderr.strip() else "")
            except subprocess.TimeoutExpired:
                res = "%s -> TIMED OUT" % " ".join(args)
            log.append("[ep %d] %s" % (ep + 1, res))
        self.add(t + ": the writer (50 changes, round robin over the endpoints)", None, None, "", "", "",
                 "writer", extra=log)
        for i, w in enumerate(watchers):
            how = w.wait_for(lambda lines: len(lines) >= len(expected), WATCH_TIMEOUT)
            time.sleep(0.3)  # anything extra (a duplicate) would show up now
            title = t + ": live watch --prefix on member %d" % (i + 1)
            self.bg_block(title, w, how)
            self.watch_check(title, w.lines(), expected)

        # Watches from a past revision (the middle of the writer's changes), on every member.
        mid = events[len(events) // 2][0]
        past = [e for e in events if e[0] >= mid]
        for i in range(self.n):
            title = t + ": watch --prefix --rev from the past, member %d" % (i + 1)
            b = self.bg(["watch", "--prefix", "w/", "--rev=%d" % mid], ep=i)
            exp = self.simple_lines(past)
            how = b.wait_for(lambda lines: len(lines) >= len(exp), WATCH_TIMEOUT)
            time.sleep(0.2)
            self.bg_block(title, b, how)
            self.watch_check(title, b.lines(), exp)
        for i in range(self.n):
            title = t + ": watch --prefix --rev from the past, -w json, member %d" % (i + 1)
            b = self.bg(["watch", "--prefix", "w/", "--rev=%d" % mid, "-w", "json"], ep=i)
            how = b.wait_for(lambda lines: count_events(lines) >= len(past), WATCH_TIMEOUT)
            time.sleep(0.2)
            self.bg_block(title, b, how, kind="watchjson")
        key = [e for e in events if e[2] == "w/3"]
        b = self.bg(["watch", "w/3", "--rev=%d" % first, "--prev-kv", "-w", "json"], ep=self.pick(None)[0])
        how = b.wait_for(lambda lines: count_events(lines) >= len(key), WATCH_TIMEOUT)
        time.sleep(0.2)
        self.bg_block(t + ": one key from the writer's first revision, --prev-kv -w json", b, how, kind="watchjson")
        got = [(ev.get("type", 0), ev.get("prev_kv", {}).get("value")) for ev in json_events(b.lines())]
        want = [(0 if e[1] == "PUT" else 1, b64(e[4]) if e[4] is not None else None) for e in key]
        self.check(t + ": --prev-kv", got == want,
                   "w/3 watched from the writer's first revision: %d events with the previous values as written%s"
                   % (len(want), "" if got == want else "; got %r, expected %r" % (got, want)))

    # -- leases

    def lease(self):
        t = "lease"
        self.run(["lease", "grant", "60"], title=t)
        self.run(["lease", "grant", "1"], title=t + ": a TTL below the minimum is raised to it")
        if len(self.leases) < 2:
            raise HarnessError("%s: lease grant printed no lease id" % self.s.name)
        l1, l2 = ("%016x" % x for x in self.leases[:2])
        self.run(["put", "--lease=" + l1, "l/1", "v1"], title=t)
        self.run(["put", "--lease=" + l1, "l/2", "v2"], title=t)
        self.run(["put", "--lease=" + l2, "x/short", "v"], title=t + ": a key on the short lease")
        self.run_each(["get", "--prefix", "l/", "-w", "json"], kind="json", title=t)
        self.run_each(["lease", "timetolive", "--keys", l1], title=t)
        self.run(["lease", "timetolive", "--keys", l1, "-w", "json"], kind="json", title=t)
        self.run(["lease", "keep-alive", "--once", l1], title=t)
        b = self.bg(["lease", "keep-alive", l1], ep=self.pick(None)[0])
        how = b.wait_for(lambda lines: len(lines) >= 1, 10)
        time.sleep(1.0)  # the next keep-alive is TTL/3 = 20 s away: nothing more should come
        self.bg_block(t + ": keep-alive (streaming), stopped after its first answer", b, how)
        # The short lease expires by itself: wait until its key is gone.
        end, gone, polls = time.monotonic() + 15, False, 0
        while time.monotonic() < end:
            self.check_time()
            polls += 1
            r = subprocess.run(self.cmd(["get", "x/short"], [0]), capture_output=True, text=True,
                               env=self.env, timeout=CALL_TIMEOUT, stdin=subprocess.DEVNULL)
            if r.returncode == 0 and not r.stdout.strip():
                gone = True
                break
            time.sleep(0.25)
        self.commands += polls
        self.check(t + ": expiry", gone, "the key on the 2 s lease %s" % (
            "is gone once the lease expired" if gone else "is still there 15 s later"))
        self.run_each(["get", "x/short", "-w", "json"], kind="json", title=t + ": after the expiry")
        self.run(["lease", "timetolive", l2], title=t + ": the expired lease")
        self.run(["lease", "list"], title=t)
        self.run(["lease", "list", "-w", "json"], kind="json", title=t)
        self.run(["lease", "revoke", l1], title=t)
        self.run_each(["get", "--prefix", "l/"], title=t + ": the revoked lease's keys are gone")
        self.run(["get", "--prefix", "l/", "-w", "json"], kind="json", title=t)
        self.run(["lease", "timetolive", "--keys", l1], title=t + ": the revoked lease")
        self.run(["lease", "revoke", l1], title=t + ": revoked twice")
        self.run(["lease", "keep-alive", "--once", l1], title=t + ": keep-alive of a revoked lease")
        self.run(["put", "--lease=" + l1, "l/3", "v3"], title=t + ": put with a revoked lease")
        self.run(["lease", "grant", "30", "-w", "json"], kind="json", title=t)
        if len(self.leases) >= 3:
            self.run(["lease", "revoke", "%016x" % self.leases[2]], title=t + ": a lease without keys")
        self.run(["get", "foo", "-w", "json"], kind="json", title=t + ": the revision now")

    # -- compaction

    def compaction(self):
        t = "compaction"
        out, _, _ = self.run(["get", "foo", "-w", "json"], kind="json", title=t + ": the revision now")
        cur = self.header_rev(out)
        c = cur - 3
        self.run(["compaction", str(c)], title=t)
        self.run_each(["get", "foo", "--rev=%d" % (c - 1)], title=t + ": a compacted revision")
        self.run(["get", "foo", "--rev=%d" % (c - 1), "-w", "json"], title=t + ": a compacted revision")
        self.run_each(["get", "foo", "--rev=%d" % c, "-w", "json"], kind="json",
                      title=t + ": the compaction revision itself")
        self.run(["compaction", str(c - 1)], title=t + ": an older revision again")
        self.run(["compaction", str(cur + 1000)], title=t + ": a future revision")
        self.run_each(["watch", "--prefix", "w/", "--rev=%d" % (c - 1)], title=t + ": watch from a compacted revision")
        self.run(["watch", "--prefix", "w/", "--rev=%d" % (c - 1), "-w", "json"], kind="json",
                 title=t + ": watch from a compacted revision")

    # -- lock and election (the sessions' lease ids are etcdctl's own: rule R13)

    def lock_election(self):
        t = "lock and election"
        self.run(["lock", "mylock", "echo", "held"], title=t + ": run a command holding the lock")
        self.run(["lock", "mylock", "--", "sh", "-c", 'echo "key=$ETCD_LOCK_KEY lock-rev=$ETCD_LOCK_REV"'],
                 title=t + ": the lock's key and revision as the command sees them")
        b = self.bg(["lock", "mylock"], ep=self.pick(None)[0])
        how = b.wait_for(lambda lines: len(lines) >= 1, 10)
        self.bg_block(t + ": hold the lock (until stopped)", b, how)
        b1 = self.bg(["elect", "myel", "p1"], ep=self.pick(None)[0])
        how1 = b1.wait_for(lambda lines: len(lines) >= 2, 10)
        b2 = self.bg(["elect", "-l", "myel"], ep=self.pick(None)[0])
        how2 = b2.wait_for(lambda lines: len(lines) >= 2, 10)
        self.bg_block(t + ": observe the election (until stopped)", b2, how2)
        self.bg_block(t + ": campaign and lead (until stopped)", b1, how1)
        self.run_each(["get", "--prefix", "my", "--keys-only"], title=t + ": what is left")
        self.run(["get", "foo", "-w", "json"], kind="json", title=t + ": the revision now")

    # -- cluster

    def cluster(self):
        t = "cluster"
        self.run(["endpoint", "status"], ep="all", kind="status", title=t)
        self.run(["endpoint", "status", "-w", "json"], ep="all", kind="statusjson", title=t)
        self.run_each(["endpoint", "health"], title=t)
        self.run(["endpoint", "health", "-w", "json"], kind="json", title=t)
        outs = self.run_each(["member", "list"], kind="members", title=t)
        out, _, _ = self.run(["member", "list", "-w", "json"], kind="json", title=t)
        # Shape of the member list: one row per node, all started, named, each
        # member's client URL one of our endpoints and its peer URL its peer port.
        problems = []
        try:
            ms = json.loads(out)["members"]
        except (ValueError, KeyError):
            ms = []
            problems.append("member list -w json unreadable")
        if len(ms) != self.n:
            problems.append("%d members, expected %d" % (len(ms), self.n))
        ports = set()
        for m in ms:
            if not m.get("name"):
                problems.append("member %x has no name (not started)" % m.get("ID", 0))
            cu = [int(u.rsplit(":", 1)[1]) for u in m.get("clientURLs") or []]
            pu = [int(u.rsplit(":", 1)[1]) for u in m.get("peerURLs") or []]
            if len(cu) != 1 or cu[0] not in self.s.client_ports:
                problems.append("member %x client URLs %s" % (m.get("ID", 0), m.get("clientURLs")))
                continue
            ports.add(cu[0])
            if pu != [self.s.peer_ports[self.s.client_ports.index(cu[0])]]:
                problems.append("member %x peer URLs %s" % (m.get("ID", 0), m.get("peerURLs")))
        if len(ports) != self.n:
            problems.append("client URLs do not cover the %d endpoints" % self.n)
        for i, (o, _, _) in enumerate(outs):
            rows = [r for r in o.splitlines() if r.strip()]
            if len(rows) != self.n or not all(", started, " in r for r in rows):
                problems.append("member list on member %d: %d rows, started: %s"
                                % (i + 1, len(rows), [", started, " in r for r in rows]))
        self.check(t + ": member list shape", not problems,
                   "%d members, all started and named, URLs on our ports, the same list from every member%s"
                   % (self.n, "" if not problems else ": " + "; ".join(problems)))


def json_lines(lines):
    for line in lines:
        try:
            j = json.loads(line)
        except ValueError:
            continue
        if isinstance(j, dict):
            yield j


def json_events(lines):
    for j in json_lines(lines):
        for ev in j.get("Events") or []:
            yield ev


def count_events(lines):
    return sum(1 for _ in json_events(lines))


def b64(s):
    import base64
    return base64.b64encode(s.encode()).decode()


# --------------------------------------------------------------------------- normalizing


class Normalizer:
    """Turns one session's transcript into text that may be compared across stores.

    Every rule hides something that legitimately differs between two stores,
    or between two runs of the same store, and nothing else:

    R1  ports: 127.0.0.1:PORT -> <EPi> (member i's client port) or <PEERi> (its
        peer port). Ports are picked free at run time. RaftKV serves peers on
        its client port, so in peer-URL positions (member list) its port is
        written <PEERi> too: what is compared is that member i's peer URL names
        member i's peer listener.
    R2  revisions: every revision (header revision, create/mod revision,
        compact revision, --rev=N and compaction N in commands, mod()/create()
        in txn input, "compacted revision N") is written R+k, k relative to the
        store's revision when the session started, so revision arithmetic is
        compared, not the starting point. 0 (no revision) stays 0.
    R3  member ids -> <Mi> (the member serving endpoint i; the ids are random in
        etcd, 1..N in RaftKV); cluster ids -> <cluster-id> (random).
    R4  lease ids -> <L1>, <L2>, ... in the order granted (random in both).
    R5  raft term, raft index, applied index -> <term>/<index>: raft log
        positions depend on each implementation's internal entries (elections,
        config changes, lease bookkeeping).
    R6  endpoint status: server version -> <server-version> (etcd 3.4.23 vs the
        API version RaftKV reports) and db size / db size in use -> <db-size>
        (different storage engines).
    R7  `took = ...` in endpoint health -> <duration> (timing).
    R8  lease remaining TTL (timetolive) -> <granted-5s..granted-1s> when it
        is from 5 s to 1 s below the granted TTL (time passes between grant and
        ask); left as it is otherwise. etcd truncates the remaining time to
        whole seconds, so a lease asked about after any time at all shows at
        most granted-1: a remaining equal to the granted TTL is left visible.
    R9  etcdctl's client-side warning lines (JSON on stderr): the timestamp and
        the client's random UUID in "target" are hidden; the gRPC error inside
        ("error": code and text as the server sent them) is kept.
    R10 order only where the order is random: member list rows and members
        (ordered by random member id), lease list rows (etcd orders by expiry,
        RaftKV by id, both random ids), a lease's attached keys (etcd: Go map
        order, random run to run).
    R11 3 members, endpoint status: which member won the election is chance, so
        the leader's <Mi>/<EPi> become <M-leader>/<EP-leader>, the others
        <M-follower>/<EP-follower>, and rows are sorted. Exactly one row still
        has to say it is the leader.
    R12 watch -w json with events: one line per event, the responses' grouping
        and header dropped. How many events one WatchResponse carries and the
        header revision (the store's revision when it was sent) depend on
        timing, in etcd itself. A revision split across two responses is
        reported (etcd never splits one). Responses without events (a cancel)
        are kept whole.
    R13 lock and election keys NAME/LEASE: the lease is the one etcdctl's
        concurrency session grants itself (random id) -> NAME/<session-lease>.
    """

    REV_KEYS = {"revision", "create_revision", "mod_revision", "compact_revision", "CompactRevision"}
    ID_KEYS = {"ID", "id", "member_id", "leader", "lease"}

    def __init__(self, session):
        self.ses = session
        st = session.s
        self.base = session.base or 0
        self.ports = {}
        for i, p in enumerate(st.client_ports):
            self.ports[p] = "<EP%d>" % (i + 1)
        self.peer_ports = {p: "<PEER%d>" % (i + 1) for i, p in enumerate(st.peer_ports)}
        for p, tok in self.peer_ports.items():
            self.ports.setdefault(p, tok)
        self.ids = {mid: "<M%d>" % (i + 1) for mid, i in session.members.items()}
        for n, lid in enumerate(session.leases):
            self.ids.setdefault(lid, "<L%d>" % (n + 1))
        self.lease_hex = {"%016x" % lid: "<L%d>" % (n + 1) for n, lid in enumerate(session.leases)}

    # R2
    def rel(self, v):
        v = int(v)
        if v <= 0:
            return str(v)
        k = v - self.base
        return "R+%d" % k if k >= 0 else "R-%d" % -k

    # R3 R4
    def id_token(self, v):
        if v == 0:
            return 0
        return self.ids.get(v, "<unknown id %x>" % v)

    # R1
    def port_text(self, s, peer=False):
        def sub(m):
            p = int(m.group(1))
            if peer and p in self.peer_ports:
                return self.peer_ports[p]
            return self.ports.get(p, "127.0.0.1:<port ?>")
        return re.sub(r"127\.0\.0\.1:(\d+)", sub, s)

    def text(self, s):
        """The rules for plain text: R1, R2 (compacted revision N), R4, R7, R8."""
        s = self.port_text(s)
        s = re.sub(r"compacted revision (\d+)", lambda m: "compacted revision " + self.rel(m.group(1)), s)
        for h, tok in self.lease_hex.items():
            s = s.replace(h, tok)
        s = re.sub(r"took = \S+", "took = <duration>", s)
        s = re.sub(r"\b(mylock|myel)/[0-9a-f]+", r"\1/<session-lease>", s)  # R13
        s = re.sub(r"lock-rev=(\d+)", lambda m: "lock-rev=" + self.rel(m.group(1)), s)  # R2

        def ttl(m):
            granted, left = int(m.group(1)), int(m.group(2))
            if granted - 5 <= left < granted:
                return "granted with TTL(%ds), remaining(<granted-5s..granted-1s>)" % granted
            return m.group(0)
        s = re.sub(r"granted with TTL\((\d+)s\), remaining\((-?\d+)s\)", ttl, s)
        s = re.sub(r"attached keys\(\[([^\]]*)\]\)",  # R10
                   lambda m: "attached keys([%s])" % " ".join(sorted(m.group(1).split())), s)
        return s

    def walk(self, v, key=None, parent=None):
        """The rules for JSON: R1..R8, R10 on the values under the named keys."""
        if isinstance(v, dict):
            return {k: self.walk(x, k, v) for k, x in v.items()}
        if isinstance(v, list):
            if key == "peerURLs":
                return [self.port_text(u, peer=True) for u in v]
            if key == "keys":  # R10: a lease's keys, Go map order in etcd
                return sorted(v)
            items = [self.walk(x, key, v) for x in v]
            if key in ("members", "leases"):  # R10: ordered by random ids
                items.sort(key=lambda x: json.dumps(x, sort_keys=True))
            return items
        if key == "cluster_id":
            return "<cluster-id>"
        if key in self.ID_KEYS and isinstance(v, int) and not isinstance(v, bool):
            return self.id_token(v)
        if key in self.REV_KEYS and isinstance(v, int):
            return self.rel(v) if v > 0 else v
        if key in ("raft_term", "raftTerm"):
            return "<term>"
        if key in ("raftIndex", "raftAppliedIndex"):
            return "<index>"
        if key in ("dbSize", "dbSizeInUse"):
            return "<db-size>"
        if key == "version" and isinstance(v, str):
            return "<server-version>"
        if key == "took":
            return "<duration>"
        if key == "ttl" and isinstance(parent, dict) and "granted-ttl" in parent and isinstance(v, int):
            g = parent["granted-ttl"]
            return "<granted-5s..granted-1s>" if g - 5 <= v < g else v
        if isinstance(v, str):
            return self.port_text(v)
        return v

    def json_text(self, line):
        try:
            j = json.loads(line)
        except ValueError:
            return None
        return json.dumps(self.walk(j), indent=1)

    def members_row(self, row):
        cols = row.split(", ")
        if len(cols) < 6:
            return self.text(row)
        try:
            cols[0] = self.id_token(int(cols[0], 16))
        except ValueError:
            pass
        cols[3] = self.port_text(cols[3], peer=True)
        return self.text(", ".join(str(c) for c in cols))

    def status_row(self, row):
        cols = row.split(", ")
        if len(cols) < 9:
            return self.text(row)
        try:
            cols[1] = self.id_token(int(cols[1], 16))
        except ValueError:
            pass
        cols[2] = "<server-version>"  # R6
        cols[3] = "<db-size>"  # R6
        cols[6] = "<term>"  # R5
        cols[7] = cols[8] = "<index>"  # R5
        return self.text(", ".join(str(c) for c in cols))

    def leader_rewrite(self, s, leader):  # R11
        s = re.sub(r"<M(\d+)>", lambda m: "<M-leader>" if int(m.group(1)) == leader else "<M-follower>", s)
        return re.sub(r"<EP(\d+)>", lambda m: "<EP-leader>" if int(m.group(1)) == leader else "<EP-follower>", s)

    def stdout(self, kind, out):
        lines = out.splitlines()
        if kind == "members":
            return sorted(self.members_row(r) for r in lines)  # R10
        if kind == "status":
            rows = [self.status_row(r) for r in lines]
            if self.ses.n > 1:
                lead = [r for r in rows if r.split(", ")[4:5] == ["true"]]
                m = re.match(r"<EP(\d+)>", lead[0]) if len(lead) == 1 else None
                if m:
                    rows = sorted(self.leader_rewrite(r, int(m.group(1))) for r in rows)
            return rows
        if kind == "statusjson" and self.ses.n > 1:
            try:
                arr = self.walk(json.loads(out))
                leaders = {e["Status"]["leader"] for e in arr}
                m = re.match(r"<M(\d+)>", next(iter(leaders))) if len(leaders) == 1 else None
                if m:
                    texts = sorted(self.leader_rewrite(json.dumps(e), int(m.group(1))) for e in arr)
                    return json.dumps([json.loads(x) for x in texts], indent=1).splitlines()
            except (ValueError, KeyError, TypeError, StopIteration):
                pass
        if kind == "watchjson":
            return self.watch_json(lines)
        res = []
        for line in lines:
            j = self.json_text(line) if kind in ("json", "statusjson") else None
            if j is not None:
                res += j.splitlines()
            else:
                res.append(self.text(line))
        if kind == "text" and lines[:1] and re.match(r"found \d+ leases", lines[0]):
            res = res[:1] + sorted(res[1:])  # R10
        return res

    def watch_json(self, lines):  # R12
        res, seen = [], {}
        for n, line in enumerate(lines):
            try:
                j = json.loads(line)
            except ValueError:
                res.append(self.text(line))
                continue
            evs = j.get("Events") or [] if isinstance(j, dict) else []
            if not evs:
                res += json.dumps(self.walk(j), indent=1).splitlines()
                continue
            for ev in evs:
                rev = ev.get("kv", {}).get("mod_revision")
                if rev in seen and seen[rev] != n:
                    res.append("NOTE: revision %s split across two watch responses" % self.rel(rev))
                seen[rev] = n
                res.append("event " + json.dumps(self.walk(ev), sort_keys=True))
        return res

    def stderr(self, err):
        res = []
        for line in err.splitlines():
            try:
                j = json.loads(line)
            except ValueError:
                j = None
            if isinstance(j, dict) and "ts" in j:  # R9
                j["ts"] = "<ts>"
                if "target" in j:
                    j["target"] = re.sub(r"client-[0-9a-f-]+", "client-<uuid>", j["target"])
                line = json.dumps(j)
            res.append(self.text(line))
        return res

    def command(self, cmd):
        s = shlex.join(["etcdctl"] + cmd[1:])
        s = re.sub(r"--rev=(\d+)", lambda m: "--rev=" + self.rel(m.group(1)), s)  # R2
        s = re.sub(r"\bcompaction (\d+)", lambda m: "compaction " + self.rel(m.group(1)), s)  # R2
        return self.text(s)

    def stdin(self, text):
        text = re.sub(r'((?:mod|create)\("[^"]*"\) [=<>!]+ )"(\d+)"',
                      lambda m: '%s"%s"' % (m.group(1), self.rel(m.group(2))), text)  # R2
        return self.text(text)

    def block(self, b, raw=False):
        out = ["### " + b["title"]] if b["title"] else []
        if b["cmd"]:
            out.append("$ " + (shlex.join(["etcdctl"] + b["cmd"][1:]) if raw else self.command(b["cmd"])))
        if b["stdin"] is not None:
            out += ["stdin> " + line for line in (b["stdin"] if raw else self.stdin(b["stdin"])).split("\n")]
        if b["kind"] == "writer":
            out += [self.port_text(x) for x in b["extra"]]  # writer lines carry no ids
            return out
        out += b["out"].splitlines() if raw else self.stdout(b["kind"], b["out"])
        out += ["stderr| " + x for x in (b["err"].splitlines() if raw else self.stderr(b["err"]))]
        if b["status"]:
            out.append("=> " + b["status"])
        out += b["extra"]
        return out

    def transcript(self, raw=False):
        lines = []
        for b in self.ses.blocks:
            lines += self.block(b, raw)
            lines.append("")
        return lines


# --------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raftkv", default=os.environ.get("RAFTKV") or os.path.join(REPO, "target/release/raftkv"),
                    help="the raftkv binary (default: $RAFTKV or target/release/raftkv); a copy is run")
    ap.add_argument("--etcd", default="/usr/bin/etcd")
    ap.add_argument("--etcdctl", default="/usr/bin/etcdctl")
    ap.add_argument("--only", default=",".join(STORES),
                    help="comma-separated stores to run: etcd1,raftkv1,etcd3,raftkv3 "
                         "(etcd = etcd1,etcd3; raftkv = raftkv1,raftkv3); pairs missing a side are not compared")
    ap.add_argument("--keep-output", metavar="DIR", help="keep transcripts and server logs here")
    ap.add_argument("--budget", type=float, default=110, help="seconds for the whole run (default 110)")
    ap.add_argument("--quiet", action="store_true", help="do not list the commands run")
    args = ap.parse_args()

    only = []
    for x in args.only.split(","):
        x = x.strip()
        names = {"etcd": ["etcd1", "etcd3"], "raftkv": ["raftkv1", "raftkv3"]}.get(x, [x])
        for nm in names:
            if nm not in STORES:
                ap.error("unknown store %r (etcd1, raftkv1, etcd3, raftkv3, etcd, raftkv)" % nm)
            if nm not in only:
                only.append(nm)
    only = [s for s in STORES if s in only]
    for b in (args.etcd, args.etcdctl):
        if not os.access(b, os.X_OK):
            print("error: %s not found (apt-get install -y etcd-server etcd-client)" % b, file=sys.stderr)
            return 2
    if any(s.startswith("raftkv") for s in only):
        if not os.access(args.raftkv, os.X_OK):
            print("error: raftkv binary %s not found (--raftkv, $RAFTKV)" % args.raftkv, file=sys.stderr)
            return 2

    t0 = time.monotonic()
    deadline = t0 + args.budget
    root = tempfile.mkdtemp(prefix="etcdctl-compare-")
    bin_copy = os.path.join(root, "raftkv")
    if any(s.startswith("raftkv") for s in only):
        shutil.copy2(args.raftkv, bin_copy)
    sessions, errors, stores = {}, [], []
    try:
        for name in only:
            st = Store(name, root, args.etcd, args.etcdctl, bin_copy)
            stores.append(st)
            t1 = time.monotonic()
            ses = Session(st, deadline)
            try:
                if time.monotonic() > deadline:
                    raise HarnessError("%s: not started, over the time budget" % name)
                st.start()
                st.wait_ready()
                ready = time.monotonic() - t1
                ses.go()
                sessions[name] = ses
                print("== %s: %d member(s) ready in %.1f s; %d etcdctl calls in %.1f s; %d check(s) failed"
                      % (name, st.nodes, ready, ses.commands, time.monotonic() - t1 - ready, len(ses.failures)),
                      flush=True)
            except HarnessError as e:
                errors.append(str(e))
                print("== %s: HARNESS ERROR: %s" % (name, e), flush=True)
            finally:
                stop_procs(Background.running)
                st.stop()
            if args.keep_output and ses.base is not None:
                os.makedirs(args.keep_output, exist_ok=True)
                nz = Normalizer(ses)
                for suffix, raw in (("raw", True), ("normalized", False)):
                    with open(os.path.join(args.keep_output, "%s.%s.txt" % (name, suffix)), "w") as f:
                        f.write("\n".join(nz.transcript(raw)) + "\n")
                for i, log in enumerate(st.logs):
                    shutil.copy(log, os.path.join(args.keep_output, "%s.node-%d.log" % (name, i + 1)))

        texts = {name: Normalizer(ses).transcript() for name, ses in sessions.items()}
        if not args.quiet:
            shown = {}
            for name, ses in sessions.items():
                nz = Normalizer(ses)
                ran = []
                for b in ses.blocks:
                    if b["cmd"]:
                        ran.append("  " + nz.command(b["cmd"]) + ("   (stdin)" if b["stdin"] is not None else "")
                                   + ("   [background]" if b["status"].startswith(("stopped", "STILL", "exited"))
                                      else ""))
                    elif b["kind"] == "writer":
                        ran.append("  (the writer: %d etcdctl put/del/txn calls, round robin)" % len(b["extra"]))
                    elif b["kind"] == "check":
                        ran.append("  (check: %s)" % b["title"])
                key = "\n".join(ran)
                if key in shown:
                    print("\n== %s: ran the same %d steps as %s" % (name, len(ran), shown[key]))
                    continue
                shown[key] = name
                print("\n== %s: what was run (normalized; full transcripts with --keep-output)" % name)
                print(key)
        differ = []
        for a, b in PAIRS:
            if a in texts and b in texts:
                d = list(difflib.unified_diff(texts[a], texts[b], a + " (normalized)", b + " (normalized)",
                                              n=4, lineterm=""))
                print("\n== %s vs %s: %s" % (a, b, "%d diff lines" % len(d) if d else "same"))
                if d:
                    differ.append((a, b))
                    print("\n".join(d))
        failures = [f for ses in sessions.values() for f in ses.failures]
        for f in failures:
            print("check failed: " + f)
        for e in errors:
            print("harness error: " + e)
        if args.keep_output:
            print("transcripts and logs kept in %s" % args.keep_output)
        elapsed = time.monotonic() - t0
        if errors:
            verdict, code = "ERROR (the harness could not run everything)", 2
        elif differ or failures:
            verdict, code = "DIFFERENT: %s%s" % (", ".join("%s vs %s" % p for p in differ) or "no diff",
                                                 "; %d failed check(s)" % len(failures) if failures else ""), 1
        else:
            pairs = ", ".join("%s vs %s" % p for p in PAIRS if p[0] in texts and p[1] in texts)
            verdict = ("SAME (%s)" % pairs) if pairs else "nothing compared (no etcd/RaftKV pair ran); checks passed"
            code = 0
        print("\n== verdict after %.1f s: %s" % (elapsed, verdict))
        return code
    finally:
        stop_procs(Background.running)
        for st in stores:
            st.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
