#!/usr/bin/env python3
"""The chaos suite: a trackwire fleet on separate hosts, and what it survives.

Hosts are Linux network namespaces, each with its own addresses, joined by
three bridges in a switch namespace of their own (no uplink; addresses from
the benchmarking range 198.18.0.0/15, never contacted from the root
namespace):

  store 198.18.2.0/24  etcd1-3, cp1-2, ops
  ctl   198.18.0.0/24  cp1-2, agent1-3, proxy1-2, ops
  data  198.18.1.0/24  agent1-3, proxy1-2, be1-3, client, ops

3 etcd members, 2 control-plane replicas, 3 probe agents in two zones, 2
proxies, 3 backends (Python, backend.py) and a client driving steady load
through both proxies (client.py), all trackwire links over mutual TLS.
`ops` is the operator's host: admin commands and metric reads run there.

Run one scenario (as root): fleet.py --bin target/debug/trackwire --scenario 1
It prints connections attempted / failed and convergence times, exits 0
when the scenario's promises held, and deletes every namespace it made,
also when it fails. cli/tests/chaos.rs runs every scenario.
"""

import argparse
import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
NETS = {"ctl": "198.18.0.", "data": "198.18.1.", "store": "198.18.2."}
HOSTS = {
    "etcd1": (11, ["store"]),
    "etcd2": (12, ["store"]),
    "etcd3": (13, ["store"]),
    "cp1": (21, ["store", "ctl"]),
    "cp2": (22, ["store", "ctl"]),
    "agent1": (31, ["ctl", "data"]),
    "agent2": (32, ["ctl", "data"]),
    "agent3": (33, ["ctl", "data"]),
    "proxy1": (41, ["ctl", "data"]),
    "proxy2": (42, ["ctl", "data"]),
    "be1": (51, ["data"]),
    "be2": (52, ["data"]),
    "be3": (53, ["data"]),
    "client": (61, ["data"]),
    "ops": (71, ["store", "ctl", "data"]),
}
ZONES = {"agent1": "zone-a", "agent2": "zone-a", "agent3": "zone-b"}
BACKENDS = ["be1", "be2", "be3"]
PROXIES = ["proxy1", "proxy2"]
# The check: interval 1 s, fall 3, rise 2 (DESIGN.md defaults but faster).
INTERVAL, FALL, RISE = 1.0, 3, 2
AGENT_TTL = 4  # seconds; etcd raises leases below 1.5 x its election timeout


def ip(host, net):
    return NETS[net] + str(HOSTS[host][0])


def proxy_addr(p):
    return f"{ip(p, 'data')}:8080"


def log(*a):
    print(*a, flush=True)


def sh(*argv, check=True, capture=False, timeout=30):
    r = subprocess.run(
        argv,
        check=False,
        stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=timeout,
    )
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")
    return r.stdout if capture else r.returncode


def wait(what, secs, cond, every=0.1):
    """cond() until true; the seconds it took. Fails the scenario after `secs`."""
    start = time.time()
    while True:
        v = cond()
        if v:
            return time.time() - start
        if time.time() - start > secs:
            raise AssertionError(f"timed out after {secs}s waiting for {what}")
        time.sleep(every)


class Proc:
    def __init__(self, name, ns, argv, logpath, stdin=False, stdout=None):
        self.name, self.ns, self.argv, self.logpath = name, ns, argv, logpath
        self.log = open(logpath, "ab")
        self.p = subprocess.Popen(
            ["ip", "netns", "exec", ns] + argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=stdout if stdout else self.log,
            stderr=self.log,
            start_new_session=True,
        )

    def send(self, sig):
        if self.p.poll() is None:
            os.kill(self.p.pid, sig)

    def stop(self, sig=signal.SIGKILL, timeout=10):
        self.send(signal.SIGCONT)
        self.send(sig)
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.send(signal.SIGKILL)
            self.p.wait(5)

    def alive(self):
        return self.p.poll() is None


class Fleet:
    def __init__(self, bin_path, tag, workdir):
        self.bin = bin_path
        self.tag = tag
        self.dir = workdir
        self.procs = {}
        self.namespaces = []
        self.sw = self.ns("sw")
        self.client = None

    def ns(self, host):
        return f"tw{self.tag}-{host}"

    # -- hosts ---------------------------------------------------------------

    def build(self):
        sh("ip", "netns", "add", self.sw)
        self.namespaces.append(self.sw)
        sh("ip", "-n", self.sw, "link", "set", "lo", "up")
        for net in NETS:
            sh("ip", "-n", self.sw, "link", "add", f"br-{net}", "type", "bridge")
            sh("ip", "-n", self.sw, "link", "set", f"br-{net}", "up")
        for host, (_, nets) in HOSTS.items():
            ns = self.ns(host)
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            for net in nets:
                veth = f"{host}-{net}"
                sh("ip", "-n", self.sw, "link", "add", veth, "type", "veth",
                   "peer", "name", net, "netns", ns)
                sh("ip", "-n", self.sw, "link", "set", veth, "master", f"br-{net}")
                sh("ip", "-n", self.sw, "link", "set", veth, "up")
                sh("ip", "-n", ns, "addr", "add", f"{ip(host, net)}/24", "dev", net)
                sh("ip", "-n", ns, "link", "set", net, "up")
        for p in PROXIES:
            # Queued connections move to the new process on a handover.
            sh("ip", "netns", "exec", self.ns(p), "sh", "-c",
               "echo 1 > /proc/sys/net/ipv4/tcp_migrate_req")

    def link(self, host, net, up):
        """Takes `host`'s link to `net` down or up (at the switch end)."""
        sh("ip", "-n", self.sw, "link", "set", f"{host}-{net}", "up" if up else "down")

    def destroy(self):
        for p in list(self.procs.values()):
            try:
                p.stop()
            except Exception:
                pass
        if self.client:
            self.client.stop()
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
        self.namespaces = []

    # -- processes -----------------------------------------------------------

    def start(self, name, host, argv, **kw):
        p = Proc(name, self.ns(host), argv, os.path.join(self.dir, f"{name}.log"), **kw)
        self.procs[name] = p
        return p

    def tls(self, role, name):
        pki = os.path.join(self.dir, "pki")
        return ["--tls-ca", f"{pki}/ca.crt", "--tls-cert", f"{pki}/{role}-{name}.crt",
                "--tls-key", f"{pki}/{role}-{name}.key"]

    def in_ns(self, host, *argv, timeout=20):
        return subprocess.run(["ip", "netns", "exec", self.ns(host)] + list(argv),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=timeout)

    def get(self, url, host="ops"):
        """GET `url` from `host`: the body, or None."""
        code = ("import sys, urllib.request\n"
                "try:\n"
                "  print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())\n"
                "except Exception as e:\n"
                "  sys.exit(1)\n")
        r = self.in_ns(host, "python3", "-c", code, url)
        return r.stdout if r.returncode == 0 else None

    def metric(self, url, name, host="ops"):
        """Sum of the samples of `name` (exact name or name{...}) at `url`."""
        text = self.get(url, host) or ""
        total, seen = 0.0, False
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
                seen = True
        return total if seen else None

    def cp_url(self, cp):
        return f"https://{ip(cp, 'ctl')}:7400"

    def cp_metrics(self, cp):
        return f"http://{ip(cp, 'ctl')}:7401/metrics"

    def admin(self, *args, cp=None, timeout=20):
        cps = [cp] if cp else ["cp1", "cp2"]
        urls = ",".join(self.cp_url(c) for c in cps)
        return self.in_ns("ops", self.bin, *args, "--control-plane", urls,
                          *self.tls("admin", "ops"), timeout=timeout)

    def etcd_cmd(self, n):
        peers = ",".join(f"etcd{i}=http://{ip(f'etcd{i}', 'store')}:2380" for i in (1, 2, 3))
        a = ip(f"etcd{n}", "store")
        return ["etcd", "--name", f"etcd{n}", "--data-dir", os.path.join(self.dir, f"etcd{n}"),
                "--listen-peer-urls", f"http://{a}:2380",
                "--initial-advertise-peer-urls", f"http://{a}:2380",
                "--listen-client-urls", f"http://{a}:2379",
                "--advertise-client-urls", f"http://{a}:2379",
                "--initial-cluster", peers, "--initial-cluster-state", "new",
                "--initial-cluster-token", f"tw{self.tag}",
                "--heartbeat-interval", "100", "--election-timeout", "1000"]

    def start_etcd(self, n):
        self.start(f"etcd{n}", f"etcd{n}", self.etcd_cmd(n))

    def etcd_status(self, n):
        """(member id, leader id) as etcd{n} reports them, or None."""
        code = ("import sys, json, urllib.request\n"
                "r = urllib.request.Request(sys.argv[1], data=b'{}', method='POST')\n"
                "print(urllib.request.urlopen(r, timeout=2).read().decode())\n")
        r = self.in_ns("ops", "python3", "-c", code,
                       f"http://{ip(f'etcd{n}', 'store')}:2379/v3/maintenance/status")
        if r.returncode != 0:
            return None
        j = json.loads(r.stdout)
        return j["header"]["member_id"], j.get("leader")

    def etcd_leader(self):
        """The number of the member that leads, per a live member."""
        for n in (1, 2, 3):
            if not self.procs[f"etcd{n}"].alive():
                continue
            s = self.etcd_status(n)
            if s and s[1]:
                for m in (1, 2, 3):
                    t = self.etcd_status(m) if self.procs[f"etcd{m}"].alive() else None
                    if t and t[0] == s[1]:
                        return m
        return None

    def cp_cmd(self, cp, config=True):
        etcd = ",".join(f"http://{ip(f'etcd{i}', 'store')}:2379" for i in (1, 2, 3))
        a = ip(cp, "ctl")
        cmd = [self.bin, "control-plane", "--etcd", etcd, "--grpc-bind", f"{a}:7400",
               "--http-bind", f"{a}:7401", "--agent-ttl", f"{AGENT_TTL}s",
               *self.tls("control-plane", cp)]
        if config:
            cmd += ["--config", os.path.join(self.dir, "fleet.toml")]
        return cmd

    def agent_cmd(self, agent):
        return [self.bin, "probe-agent", "--control-plane",
                ",".join(self.cp_url(c) for c in ("cp1", "cp2")),
                "--zone", ZONES[agent], "--state-dir", os.path.join(self.dir, f"{agent}-state"),
                "--http-bind", f"{ip(agent, 'ctl')}:7402", "--heartbeat", "1s",
                *self.tls("agent", agent)]

    def proxy_cmd(self, proxy, http_port=7403):
        return [self.bin, "data-plane", "--config", os.path.join(self.dir, "fleet.toml"),
                "--control-plane", ",".join(self.cp_url(c) for c in ("cp1", "cp2")),
                "--state-dir", os.path.join(self.dir, f"{proxy}-state"),
                "--http-bind", f"0.0.0.0:{http_port}", "--workers", "1",
                "--drain-grace", "5s", *self.tls("proxy", proxy)]

    def write_config(self):
        backends = "".join(
            f'\n[[pool.backend]]\nname = "{b}"\naddress = "{ip(b, "data")}:8080"\n'
            for b in BACKENDS)
        tcp_backends = "".join(
            f'\n[[pool.backend]]\nname = "{b}"\naddress = "{ip(b, "data")}:9000"\n'
            for b in BACKENDS)
        text = f"""# The chaos fleet's pools (written by cli/tests/chaos/fleet.py).
[[pool]]
name = "web"
initial_state = "up"
zone_spread = true

[pool.check]
kind = "http"
path = "/readyz"
interval = "{int(INTERVAL * 1000)}ms"
fall = {FALL}
rise = {RISE}
timeout = "500ms"
{backends}
# Six backends in all, so a partitioned checker can be told apart.
[[pool]]
name = "db"
initial_state = "up"

[pool.check]
kind = "tcp"
interval = "{int(INTERVAL * 1000)}ms"
fall = {FALL}
rise = {RISE}
timeout = "500ms"
{tcp_backends}
[[listener]]
name = "web"
bind = "0.0.0.0:8080"
pool = "web"
connect_timeout = "1s"
retries = 2
"""
        with open(os.path.join(self.dir, "fleet.toml"), "w") as f:
            f.write(text)

    def certs(self):
        pki = os.path.join(self.dir, "pki")
        sh(self.bin, "certs", "init", "--dir", pki, "--trust-domain", "chaos.test")
        for cp in ("cp1", "cp2"):
            sh(self.bin, "certs", "issue", "--dir", pki, "--role", "control-plane",
               "--name", cp, "--san", ip(cp, "ctl"))
        for a in ZONES:
            sh(self.bin, "certs", "issue", "--dir", pki, "--role", "agent", "--name", a)
        for p in PROXIES:
            sh(self.bin, "certs", "issue", "--dir", pki, "--role", "proxy", "--name", p)
        sh(self.bin, "certs", "issue", "--dir", pki, "--role", "admin", "--name", "ops")

    def flag(self, backend):
        return os.path.join(self.dir, f"{backend}.notready")

    def set_ready(self, backend, ready):
        if ready:
            if os.path.exists(self.flag(backend)):
                os.remove(self.flag(backend))
        else:
            open(self.flag(backend), "w").close()

    def up(self):
        t0 = time.time()
        self.build()
        self.certs()
        self.write_config()
        for n in (1, 2, 3):
            self.start_etcd(n)
        wait("an etcd leader", 20, lambda: self.etcd_leader() is not None, every=0.2)
        for b in BACKENDS:
            self.start(b, b, ["python3", os.path.join(HERE, "backend.py"), "--name", b,
                              "--http", f"{ip(b, 'data')}:8080", "--tcp", f"{ip(b, 'data')}:9000",
                              "--flag", self.flag(b)])
        self.start("cp1", "cp1", self.cp_cmd("cp1"))
        self.start("cp2", "cp2", self.cp_cmd("cp2", config=False))
        for cp in ("cp1", "cp2"):
            wait(f"{cp} ready", 20,
                 lambda cp=cp: self.get(f"http://{ip(cp, 'ctl')}:7401/readyz") is not None)
        for a in ZONES:
            self.start(a, a, self.agent_cmd(a))
        wait("3 agents live", 20,
             lambda: self.metric(self.cp_metrics("cp2"), "trackwire_agents_live") == 3)
        wait("every backend UP with 3 votes", 20, lambda: self.all_up(votes=3))
        for p in PROXIES:
            self.start(p, p, self.proxy_cmd(p))
        for p in PROXIES:
            wait(f"{p} ready", 20,
                 lambda p=p: self.get(f"http://{ip(p, 'ctl')}:7403/readyz") is not None)
        self.client = Client(self)
        wait("load through both proxies to every backend", 20, self.all_routed)
        log(f"fleet up in {time.time() - t0:.1f}s")

    # -- what the fleet says -------------------------------------------------

    def backends(self, cp=None):
        r = self.admin("get", "backends", "-o", "json", cp=cp)
        if r.returncode != 0:
            return None
        return json.loads(r.stdout)

    def state(self, pool, backend, cp=None):
        rows = self.backends(cp) or []
        for row in rows:
            if row.get("pool") == pool and row.get("backend") == backend:
                return row
        return None

    def all_up(self, votes=None):
        rows = self.backends()
        if not rows or len(rows) != 6:
            return False
        return all(r.get("state") == "up" and (votes is None or r.get("votes") == votes)
                   for r in rows)

    def up_down_total(self, cp="cp2"):
        return self.metric(self.cp_metrics(cp), "trackwire_server_check_up_down_total")

    def all_routed(self):
        s = self.client.ask({"cmd": "stats"})
        by = s["by"]
        return all(by.get(proxy_addr(p), {}).get(b, 0) > 0 for p in PROXIES for b in BACKENDS)

    def routed_after(self, backend, t):
        """Per proxy, whether `backend` answered through it after time `t`."""
        return {p: self.client.ask({"cmd": "first_after", "proxy": proxy_addr(p),
                                    "backend": backend, "t": t})["t"] is not None
                for p in PROXIES}

    def stops_routing(self, backend, since, secs):
        """Waits until no proxy has routed to `backend` for 1.5 s; the time
        from `since` to the last connection `backend` got (0 if none after)."""
        def quiet():
            now = time.time()
            return all(v is False for v in self.routed_after(backend, now - 1.5).values())
        wait(f"every proxy to stop routing to {backend}", secs, quiet, every=0.25)
        last = 0.0
        for p in PROXIES:
            t = self.client.ask({"cmd": "last", "proxy": proxy_addr(p), "backend": backend})["t"]
            if t and t > since:
                last = max(last, t - since)
        return last

    def routes_again(self, backend, since, secs):
        """Waits until every proxy routes to `backend` again; the time from `since`."""
        wait(f"every proxy to route to {backend} again", secs,
             lambda: all(self.routed_after(backend, since).values()), every=0.2)
        first = 0.0
        for p in PROXIES:
            t = self.client.ask({"cmd": "first_after", "proxy": proxy_addr(p),
                                 "backend": backend, "t": since})["t"]
            first = max(first, t - since)
        return first


class Client:
    def __init__(self, fleet):
        self.proc = fleet.start(
            "client", "client",
            ["python3", os.path.join(HERE, "client.py"), "--max-seconds", "110"]
            + sum((["--proxy", proxy_addr(p)] for p in PROXIES), []),
            stdin=True, stdout=subprocess.PIPE)
        fleet.procs.pop("client")
        first = self.read()
        assert first.get("event") == "started", first

    def read(self):
        line = self.proc.p.stdout.readline()
        if not line:
            raise AssertionError("the client exited")
        return json.loads(line)

    def ask(self, req):
        self.proc.p.stdin.write((json.dumps(req) + "\n").encode())
        self.proc.p.stdin.flush()
        return self.read()

    def stop(self):
        if self.proc.alive():
            try:
                return self.ask({"cmd": "stop"})
            except Exception:
                self.proc.stop()
        return None


# -- scenarios -------------------------------------------------------------

class Result:
    def __init__(self, name):
        self.name = name
        self.figures = {}

    def fig(self, key, value):
        self.figures[key] = value
        log(f"  {key}: {value}")


def check_no_failures(f, r):
    s = f.client.ask({"cmd": "stats"})
    r.fig("connections attempted", s["attempted"])
    r.fig("connections failed", s["failed"])
    assert s["failed"] == 0, f"failed connections: {s['errors']}"


def flip_and_converge(f, r, backend, label, secs=None):
    """`backend`'s /readyz fails: the time until no proxy routes to it."""
    bound = FALL * INTERVAL + 1
    f.set_ready(backend, False)
    t = time.time()
    took = f.stops_routing(backend, t, secs or 15)
    r.fig(f"{label}: {backend} /readyz 503 -> no proxy routes to it (s)", round(took, 2))
    return took, bound


def restore(f, r, backend, label):
    f.set_ready(backend, True)
    t = time.time()
    took = f.routes_again(backend, t, 15)
    r.fig(f"{label}: {backend} ready -> routed again (s)", round(took, 2))
    return took


def s1_kill_cp(f, r):
    """SIGKILL a control-plane replica: no failed connection; agents and
    proxies reconnect to the other."""
    f.procs["cp1"].stop(signal.SIGKILL)
    t = time.time()
    took = wait("3 agent sessions and 2 subscribers on cp2", 30, lambda: (
        f.metric(f.cp_metrics("cp2"), "trackwire_agent_sessions") == 3
        and f.metric(f.cp_metrics("cp2"), "trackwire_subscribers") == 2), every=0.2)
    r.fig("agents and proxies on cp2 after cp1 was killed (s)", round(took, 2))
    took, bound = flip_and_converge(f, r, "be3", "after failover")
    assert took <= bound, f"{took:.2f}s > {bound}s"
    restore(f, r, "be3", "after failover")
    check_no_failures(f, r)


def s2_kill_etcd(f, r):
    """SIGKILL an etcd follower, then (after it rejoined) the leader: no
    failed connection; verdicts and admin writes continue."""
    leader = f.etcd_leader()
    follower = next(n for n in (1, 2, 3) if n != leader)
    f.procs[f"etcd{follower}"].stop(signal.SIGKILL)
    r.fig("killed etcd follower", f"etcd{follower}")
    res = f.admin("drain", "web/be2", "--reason", "chaos")
    assert res.returncode == 0, res.stderr
    took, bound = flip_and_converge(f, r, "be1", "follower down")
    assert took <= bound, f"{took:.2f}s > {bound}s"
    restore(f, r, "be1", "follower down")
    f.start_etcd(follower)
    wait("the follower back", 20, lambda: f.etcd_status(follower) is not None, every=0.2)
    leader = f.etcd_leader()
    f.procs[f"etcd{leader}"].stop(signal.SIGKILL)
    r.fig("killed etcd leader", f"etcd{leader}")
    t = time.time()
    took = wait("an admin write after the leader died", 20,
                lambda: f.admin("ready", "web/be2", "--clear").returncode == 0, every=0.2)
    r.fig("admin write accepted after leader kill (s)", round(time.time() - t, 2))
    took, bound = flip_and_converge(f, r, "be1", "leader down")
    # A new leader is elected within about a second of the kill.
    assert took <= bound + 2, f"{took:.2f}s > {bound + 2}s"
    restore(f, r, "be1", "leader down")
    f.routes_again("be2", t, 15)
    check_no_failures(f, r)


def s3_agent_cut(f, r):
    """Cut one agent's link to the backends: no backend state changes; the
    agent is reported suspect."""
    before = f.up_down_total()
    f.link("agent3", "data", up=False)
    t = time.time()
    took = wait("agent3 reported suspect", 30, lambda: f.metric(
        f.cp_metrics("cp2"), 'trackwire_agent_suspect{agent="agent3"}') == 1, every=0.25)
    r.fig("agent3 cut off -> reported suspect (s)", round(took, 2))
    # Hold the cut a while longer: nothing may change meanwhile.
    wait("3 more check intervals", 10, lambda: time.time() - t > took + FALL * INTERVAL + 1)
    assert f.all_up(), f"a backend changed state: {f.backends()}"
    assert f.up_down_total() == before, "an UP -> DOWN transition was decided"
    r.fig("backend state changes", int(f.up_down_total() - before))
    f.link("agent3", "data", up=True)
    took = wait("agent3 no longer suspect", 30, lambda: f.metric(
        f.cp_metrics("cp2"), 'trackwire_agent_suspect{agent="agent3"}') == 0, every=0.25)
    r.fig("link back -> agent3 trusted again (s)", round(took, 2))
    check_no_failures(f, r)


def handover(f, proxy, port):
    """The documented zero-downtime restart: a new process on the same
    listener (and here the same state dir), ready, then SIGTERM the old."""
    old = f.procs[proxy]
    new = f.start(f"{proxy}-{port}", proxy, f.proxy_cmd(proxy, http_port=port))
    wait(f"the new {proxy} ready", 20,
         lambda: f.get(f"http://{ip(proxy, 'data')}:{port}/readyz") is not None)
    old.stop(signal.SIGTERM, timeout=15)
    f.procs[proxy] = new
    return port


def s4_proxy_cut(f, r):
    """Cut a proxy off from both control-plane replicas: it keeps routing;
    restarted while cut off, it starts from its disk cache and keeps routing."""
    f.link("proxy1", "ctl", up=False)
    url = f"http://{ip('proxy1', 'data')}:7403/metrics"
    took = wait("proxy1 fail static", 30,
                lambda: f.metric(url, "trackwire_proxy_fail_static") == 1, every=0.25)
    r.fig("cut off -> proxy1 fail static (s)", round(took, 2))
    t = time.time()
    wait("load through proxy1 meanwhile", 10, lambda: all(
        f.routed_after(b, t)["proxy1"] for b in BACKENDS))
    port = handover(f, "proxy1", 7404)
    url = f"http://{ip('proxy1', 'data')}:{port}/metrics"
    assert f.metric(url, "trackwire_proxy_fail_static") == 1, "the new proxy has a stream?"
    t = time.time()
    wait("the restarted proxy1 routes to every backend from its cache", 10,
         lambda: all(f.routed_after(b, t)["proxy1"] for b in BACKENDS))
    r.fig("restarted while cut off: routing from its disk cache", True)
    f.link("proxy1", "ctl", up=True)
    took = wait("proxy1 back on the stream", 30,
                lambda: f.metric(url, "trackwire_proxy_stream_connected") == 1, every=0.25)
    r.fig("link back -> stream connected (s)", round(took, 2))
    check_no_failures(f, r)


def s5_rolling_restart(f, r):
    """Rolling restart of both proxies under load: no refused connection."""
    start = time.time()
    for p in PROXIES:
        handover(f, p, 7404)
        t = time.time()
        # Two seconds of load through the new process before the next one.
        wait(f"load through the new {p} to every backend", 10, lambda p=p: (
            time.time() - t > 2 and all(f.routed_after(b, t)[p] for b in BACKENDS)))
    r.fig("proxies restarted", len(PROXIES))
    r.fig("rolling restart took (s)", round(time.time() - start, 1))
    check_no_failures(f, r)


def s6_backend_failure(f, r):
    """A real backend failure: every proxy stops sending it new connections
    within fall x interval + 1 s; it comes back after rise."""
    took, bound = flip_and_converge(f, r, "be2", "failure")
    assert took <= bound, f"{took:.2f}s > fall x interval + 1 s = {bound}s"
    took = restore(f, r, "be2", "recovery")
    assert took <= RISE * INTERVAL + 1.5, f"{took:.2f}s"
    check_no_failures(f, r)


def s7_store_partition(f, r):
    """Partition both control-plane replicas from etcd: proxies keep routing
    on the last map; healed, the map converges to the truth without a restart."""
    for cp in ("cp1", "cp2"):
        f.link(cp, "store", up=False)
    wait("the replicas notice the store is gone", 20, lambda: all(
        f.metric(f.cp_metrics(cp), "trackwire_store_up") == 0 for cp in ("cp1", "cp2")),
        every=0.25)
    # The truth changes meanwhile: be3 fails.
    f.set_ready("be3", False)
    t = time.time()
    wait("5 s of partition", 10, lambda: time.time() - t > 5)
    s = f.client.ask({"cmd": "stats"})
    assert s["failed"] == 0, s["errors"]
    r.fig("routing during the partition", "kept")
    for cp in ("cp1", "cp2"):
        f.link(cp, "store", up=True)
    healed = time.time()
    took = f.stops_routing("be3", healed, 30)
    r.fig("healed -> be3 out of every proxy (s)", round(took, 2))
    restore(f, r, "be3", "after the partition")
    check_no_failures(f, r)


def s8_frozen_agent(f, r, rounds=2):
    """Freeze an agent past its lease and thaw it: its stale verdicts never
    override fresh ones. Also the sequence of the issue: the etcd leader and
    a control-plane replica killed, an agent frozen past its lease, then a
    backend fails: every proxy must stop routing to it in time."""
    leader = f.etcd_leader()
    f.procs[f"etcd{leader}"].stop(signal.SIGKILL)
    f.procs["cp1"].stop(signal.SIGKILL)
    r.fig("killed", f"etcd{leader}, cp1")
    for i in range(rounds):
        agent = f"agent{i % 3 + 1}"
        f.procs[agent].send(signal.SIGSTOP)
        t = time.time()
        # be1 fails while the agent is frozen: the others decide DOWN.
        f.set_ready("be1", False)
        took = f.stops_routing("be1", t, 15)
        r.fig(f"round {i + 1}: {agent} frozen, be1 fails -> out (s)", round(took, 2))
        wait(f"{agent}'s lease to lapse", 15, lambda: time.time() - t > AGENT_TTL + 2)
        f.procs[agent].send(signal.SIGCONT)
        thawed = time.time()
        # Its verdict from before the failure (UP) must not bring be1 back.
        wait("the thawed agent back", 20, lambda: f.metric(
            f.cp_metrics("cp2"), "trackwire_agents_live") == 3, every=0.2)
        wait("3 intervals after the thaw", 10,
             lambda: time.time() - thawed > (FALL + 1) * INTERVAL)
        back = f.routed_after("be1", thawed + 0.5)
        assert not any(back.values()), f"be1 routed again after the thaw: {back}"
        row = f.state("web", "be1")
        assert row and row["state"] == "down", row
        restore(f, r, "be1", f"round {i + 1}")
        # The sequence of the issue: right after the thaw, a failure.
        f.procs[agent].send(signal.SIGSTOP)
        t = time.time()
        wait(f"{agent}'s lease to lapse", 15, lambda: time.time() - t > AGENT_TTL + 2)
        f.procs[agent].send(signal.SIGCONT)
        f.set_ready("be2", False)
        t = time.time()
        took = f.stops_routing("be2", t, 20)
        bound = FALL * INTERVAL + 1
        r.fig(f"round {i + 1}: {agent} thawed, be2 fails -> out (s)", round(took, 2))
        assert took <= bound + 1, f"be2 still routed {took:.2f}s after failing"
        restore(f, r, "be2", f"round {i + 1}")
    check_no_failures(f, r)


SCENARIOS = {
    1: ("SIGKILL a control-plane replica", s1_kill_cp),
    2: ("SIGKILL an etcd follower, then the leader", s2_kill_etcd),
    3: ("cut an agent off from the backends", s3_agent_cut),
    4: ("cut a proxy off from the control plane; restart it cut off", s4_proxy_cut),
    5: ("rolling restart of both proxies", s5_rolling_restart),
    6: ("a backend fails and recovers", s6_backend_failure),
    7: ("partition the control plane from etcd", s7_store_partition),
    8: ("freeze an agent past its lease (after etcd leader and cp kills)", s8_frozen_agent),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--scenario", type=int, required=True, choices=sorted(SCENARIOS))
    ap.add_argument("--tag", default=str(os.getpid() % 100000))
    ap.add_argument("--json-out")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("the chaos suite needs root (network namespaces)")
    workdir = tempfile.mkdtemp(prefix=f"tw-chaos-{a.scenario}-")
    fleet = Fleet(os.path.abspath(a.bin), a.tag, workdir)
    atexit.register(fleet.destroy)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    name, run = SCENARIOS[a.scenario]
    r = Result(name)
    ok = False
    log(f"scenario {a.scenario}: {name}")
    try:
        fleet.up()
        start = time.time()
        run(fleet, r)
        r.fig("scenario time (s)", round(time.time() - start, 1))
        ok = True
    except Exception:
        traceback.print_exc()
        a.keep = True  # the logs of a failed run are kept
        for p in ["cp1", "cp2", "agent1", "agent2", "agent3", "proxy1", "proxy2",
                  "proxy1-7404", "proxy2-7404"]:
            path = os.path.join(workdir, f"{p}.log")
            if os.path.exists(path):
                with open(path, errors="replace") as fh:
                    tail = fh.readlines()[-15:]
                log(f"--- {p}.log (last lines)\n" + "".join(tail))
    finally:
        final = fleet.client.stop() if fleet.client else None
        fleet.client = None
        fleet.destroy()
        if final:
            log(f"  client total: {final['attempted']} attempted, {final['failed']} failed")
            r.figures["client total attempted"] = final["attempted"]
            r.figures["client total failed"] = final["failed"]
            if final["failed"]:
                ok = False
                log(f"  failures: {final['errors']}")
        if a.json_out:
            with open(a.json_out, "w") as fh:
                json.dump({"scenario": a.scenario, "name": name, "ok": ok,
                           "figures": r.figures}, fh)
        if not a.keep:
            subprocess.run(["rm", "-rf", workdir])
        else:
            log(f"logs kept in {workdir}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
