"""Real Ray clusters for the tests: one node on loopback, or several nodes, each in its own network namespace.

Every node is a ``ray start --block`` started here in its own process group; ``stop()`` ends that
group (SIGTERM, then SIGKILL after a grace period: ``ray start`` ignores SIGTERM for a while) and
any process it left behind. Nothing else is touched (never ``ray stop``). Network traffic stays on
loopback (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps Ray from moving to the interface address)
or inside the namespaces made here (a veth pair 10.211.0.1 <-> 10.211.0.2, removed by ``stop()``).
The nodes run with a private ``HOME`` (no stale ``~/.ray/auth_token``) and ``RAY_AUTH_MODE=disabled``.
Namespace and veth names are random per run; the subnet and ports are the same in every run but
exist only inside that run's own namespaces (nothing is addressed in the root namespace), so two
runs at once do not collide. ``dashboard_only`` gives a client a namespace whose only way out is
one forwarded port to the dashboard (a client that provably cannot reach the GCS).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

TESTS = Path(__file__).parent
OBJECT_STORE = 100 * 2**20
START_TIMEOUT = 120.0
NETNS_SUBNET = "10.211.0"
NETNS_IFNAME = "tjeth"  # the same name in every namespace, so GLOO_SOCKET_IFNAME is one value


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def node_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a Ray node (and so of every job process on it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TRAINJOB_"))}
    env.update(
        {
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),  # the nodes' `python`
        }
    )
    env.update(extra or {})
    return env


@dataclass
class RayNode:
    """One ``ray start --block`` process (and everything it spawned)."""

    proc: subprocess.Popen
    log: Path
    ip: str
    netns: str | None = None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, grace: float = 8.0) -> None:
        # psutil.Process objects, not pids: they refuse to signal a pid that was reused by another
        # process meanwhile (pid_max is 32768 here and tests start many processes).
        try:
            tree = [psutil.Process(self.proc.pid)] + psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        self._signal_own_group(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self._signal_own_group(signal.SIGKILL)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for p in tree:  # what is left of the group, and helpers Ray starts in their own sessions
            try:
                p.kill()
            except psutil.Error:
                pass

    def _signal_own_group(self, sig: int) -> None:
        """Signal the node's process group only while its leader is unreaped (its pid, the group's
        id, cannot have been given to another process yet)."""
        if self.proc.returncode is None:
            _signal_group(self.proc.pid, sig)


@dataclass
class RayCluster:
    gcs: str  # host:port of the GCS
    dashboard: str  # http://host:port
    client_port: int  # the Ray Client server (ray://)
    nodes: list[RayNode]
    home: Path  # RayBackendConfig(home=...): the job folders, on this machine's disk
    temp: Path
    netns: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)  # veth ends made in the root namespace
    auth_token: str | None = None  # started with RAY_AUTH_MODE=token and this token

    def http_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.auth_token}"} if self.auth_token else {}

    def config(self, **kw):
        from trainjob import RayBackendConfig

        return RayBackendConfig(address=kw.pop("address", self.gcs), home=kw.pop("home", str(self.home)), **kw)

    def processes(self) -> list[psutil.Process]:
        """Every live process of the cluster (the nodes and their descendants)."""
        out = []
        for node in self.nodes:
            try:
                p = psutil.Process(node.proc.pid)
                out += [p] + p.children(recursive=True)
            except psutil.NoSuchProcess:
                continue
        return out

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        for link in self.links:  # still here only if the setup failed before moving it
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        for ns in self.netns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(self.temp, ignore_errors=True)


def start_loopback(home: Path, num_cpus: int = 2, auth_token: str | None = None) -> RayCluster:
    """A one-node Ray cluster on 127.0.0.1 with a dashboard (the Jobs API) and a Ray Client server.

    ``auth_token``: start it with Ray's token authentication (``RAY_AUTH_MODE=token``) and this token.
    """
    temp = Path(tempfile.mkdtemp(prefix="tjray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    gcs_port, dash_port, client_port = free_port(), free_port(), free_port()
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": auth_token} if auth_token else {}
    env = node_env({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "GLOO_SOCKET_IFNAME": "lo", "HOME": str(temp / "home"), **auth})
    (temp / "home").mkdir()
    argv = [
        "ray", "start", "--head", "--block", f"--port={gcs_port}", "--node-ip-address=127.0.0.1",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
        f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={client_port}",
        f"--num-cpus={num_cpus}", f"--object-store-memory={OBJECT_STORE}", "--disable-usage-stats", f"--temp-dir={temp / 'r'}",
    ]  # fmt: skip
    node = _spawn(argv, env, temp / "head.log", "127.0.0.1")
    cluster = RayCluster(f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dash_port}", client_port, [node], home, temp, auth_token=auth_token)
    try:
        _wait_ready(cluster, 1)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def netns_unavailable() -> str | None:
    """Why a multi-node cluster in network namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces (ip netns add)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"tjprobe{secrets.token_hex(3)}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"`ip netns add` failed: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def start_netns(home: Path, nodes: int = 2, num_cpus: int = 2) -> RayCluster:
    """``nodes`` Ray nodes, node i in namespace ``<tag>i`` at 10.211.0.(i+1), joined by veth pairs to the head's namespace.

    Two nodes: one veth pair between them. More: every worker namespace gets a pair to the head's.
    """
    if nodes != 2:
        raise ValueError("start_netns makes exactly 2 nodes (one veth pair)")
    tag = f"tj{secrets.token_hex(2)}"
    names = [f"{tag}n{i}" for i in range(nodes)]
    temp = Path(tempfile.mkdtemp(prefix="tjray-", dir="/tmp"))
    cluster = RayCluster(f"{NETNS_SUBNET}.1:6390", f"http://{NETNS_SUBNET}.1:8265", 10001, [], home, temp, netns=[])
    try:
        for ns in names:
            _ip("netns", "add", ns)
            cluster.netns.append(ns)
        cluster.links.append(f"{tag}a")
        _ip("link", "add", f"{tag}a", "type", "veth", "peer", "name", f"{tag}b")
        for i, (ns, end) in enumerate(zip(names, (f"{tag}a", f"{tag}b"))):
            _ip("link", "set", end, "netns", ns)
            _ip("-n", ns, "link", "set", end, "name", NETNS_IFNAME)
            _ip("-n", ns, "addr", "add", f"{NETNS_SUBNET}.{i + 1}/24", "dev", NETNS_IFNAME)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", NETNS_IFNAME, "up")
        (temp / "home").mkdir()
        env = node_env({"GLOO_SOCKET_IFNAME": NETNS_IFNAME, "HOME": str(temp / "home")})
        head_ip = f"{NETNS_SUBNET}.1"
        head = [
            "ip", "netns", "exec", names[0], "ray", "start", "--head", "--block", "--port=6390", f"--node-ip-address={head_ip}",
            "--include-dashboard=true", f"--dashboard-host={head_ip}", "--dashboard-port=8265",
            f"--num-cpus={num_cpus}", f"--object-store-memory={OBJECT_STORE}", "--disable-usage-stats", f"--temp-dir={temp / 'r0'}",
        ]  # fmt: skip
        cluster.nodes.append(_spawn(head, env, temp / "node0.log", head_ip, names[0]))
        _wait_log(cluster.nodes[0])
        for i in range(1, nodes):
            ip = f"{NETNS_SUBNET}.{i + 1}"
            argv = [
                "ip", "netns", "exec", names[i], "ray", "start", "--block", f"--address={head_ip}:6390", f"--node-ip-address={ip}",
                f"--num-cpus={num_cpus}", f"--object-store-memory={OBJECT_STORE}", "--disable-usage-stats", f"--temp-dir={temp / f'r{i}'}",
            ]  # fmt: skip
            cluster.nodes.append(_spawn(argv, env, temp / f"node{i}.log", ip, names[i]))
        _wait_ready(cluster, nodes, netns=names[0])
    except BaseException:
        cluster.stop()
        raise
    return cluster


def run_in_netns(ns: str, code: str, timeout: float, env: dict[str, str] | None = None) -> dict:
    """Run Python ``code`` inside namespace ``ns`` (with tests/ on the path); it prints one JSON line last."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p), **(env or {})}
    full_env.pop("RAY_ADDRESS", None)
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=full_env)
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    if r.returncode != 0 or not lines:
        raise AssertionError(f"the code in namespace {ns} failed (rc={r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-6000:]}")
    return json.loads(lines[-1])


# ---- a client that reaches only the dashboard ---------------------------------------------
FORWARDER = r"""
import ctypes, os, socket, sys, threading
target, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
srv = socket.socket()
srv.bind(("127.0.0.1", 0))  # in the client's namespace (this process was started there)
srv.listen(64)
fd = os.open(target, os.O_RDONLY)
if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:  # CLONE_NEWNET: what follows connects from the cluster's side
    raise OSError(ctypes.get_errno(), "setns")
print(srv.getsockname()[1], flush=True)

def pump(a, b):
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    for s in (a, b):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

def serve(c):
    try:
        u = socket.create_connection((host, port), timeout=10)
        u.settimeout(None)
    except OSError:
        c.close()
        return
    threading.Thread(target=pump, args=(c, u), daemon=True).start()
    pump(u, c)

while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


@dataclass
class DashboardOnly:
    """A network namespace with nothing in it but loopback, where one port forwards to the cluster's
    dashboard: code run there (``run_in_netns(ns, ...)``) reaches the Jobs API at ``dashboard``
    and nothing else of the cluster (its GCS port included)."""

    netns: str
    dashboard: str  # http://127.0.0.1:<port>, inside the namespace
    forwarder: subprocess.Popen

    def stop(self) -> None:
        if self.forwarder.poll() is None:
            self.forwarder.kill()
            self.forwarder.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)


def dashboard_only(cluster: RayCluster) -> DashboardOnly:
    """The cluster's dashboard, and only it, for a client in a namespace of its own.

    The forwarder listens inside the new namespace, then moves itself (``setns``) into the
    cluster's: the head's namespace for a netns cluster, this process's for a loopback one.
    """
    ns = f"tjc{secrets.token_hex(3)}"
    _ip("netns", "add", ns)
    try:
        _ip("-n", ns, "link", "set", "lo", "up")
        target = f"/var/run/netns/{cluster.netns[0]}" if cluster.netns else f"/proc/{os.getpid()}/ns/net"
        dash = urllib.parse.urlparse(cluster.dashboard)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", FORWARDER, target, dash.hostname, str(dash.port)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True, text=True,
        )  # fmt: skip
        port = int(proc.stdout.readline().strip())
    except BaseException:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        raise
    return DashboardOnly(ns, f"http://127.0.0.1:{port}", proc)


# ---- helpers -----------------------------------------------------------------------------
def _spawn(argv: list[str], env: dict[str, str], log: Path, ip: str, netns: str | None = None) -> RayNode:
    with open(log, "wb") as f:
        proc = subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    return RayNode(proc, log, ip, netns)


def _wait_log(node: RayNode, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "Ray runtime started" in node.log.read_text(errors="replace"):
            return
        if node.proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {node.proc.returncode}:\n{node.log_tail()}")
        time.sleep(0.3)
    raise TimeoutError(f"ray start did not start within {timeout:g}s:\n{node.log_tail()}")


def _wait_ready(cluster: RayCluster, nodes: int, netns: str | None = None, timeout: float = START_TIMEOUT) -> None:
    """Until the dashboard lists ``nodes`` alive nodes and the Jobs API answers."""
    for node in cluster.nodes:
        _wait_log(node, timeout)
    deadline = time.monotonic() + timeout
    probe = (
        "import json,urllib.request as u;"
        f"n=json.load(u.urlopen('{cluster.dashboard}/api/v0/nodes',timeout=5))['data']['result']['result'];"
        f"u.urlopen('{cluster.dashboard}/api/jobs/',timeout=5).read();"
        "print(json.dumps({'alive':sum(x['state']=='ALIVE' for x in n)}))"
    )
    last = None
    while time.monotonic() < deadline:
        try:
            if netns:
                alive = run_in_netns(netns, probe, timeout=30)["alive"]
            else:
                get = lambda path: urllib.request.Request(f"{cluster.dashboard}{path}", headers=cluster.http_headers())  # noqa: E731
                with urllib.request.urlopen(get("/api/v0/nodes"), timeout=5) as r:
                    alive = sum(n["state"] == "ALIVE" for n in json.load(r)["data"]["result"]["result"])
                with urllib.request.urlopen(get("/api/jobs/"), timeout=5) as r:
                    r.read()
            if alive >= nodes:
                return
            last = f"{alive} of {nodes} nodes alive"
        except Exception as e:  # noqa: BLE001 - not up yet
            last = f"{type(e).__name__}: {e}"
        for node in cluster.nodes:
            if node.proc.poll() is not None:
                raise RuntimeError(f"a Ray node exited with {node.proc.returncode}:\n{node.log_tail()}")
        time.sleep(1.0)
    raise TimeoutError(f"the Ray cluster was not ready within {timeout:g}s ({last})")


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {r.stderr.strip()}")


class TrafficWatch:
    """Samples the sockets of the cluster's processes (and of this one) while a test runs.

    An endpoint outside ``allowed`` (loopback, plus the namespaces' subnet for a multi-node
    cluster) is recorded in ``offenders``: a connection to or from the machine's interface
    address would show up there. A listener on the wildcard address is not traffic and is
    allowed (torch's rendezvous store binds to ``::``); one bound to a specific outside address
    is not.
    """

    def __init__(self, cluster: RayCluster, allowed_prefixes: tuple[str, ...] = (), interval: float = 0.3) -> None:
        import threading

        self.cluster = cluster
        self.allowed_prefixes = allowed_prefixes
        self.interval = interval
        self.offenders: dict[tuple, int] = {}
        self.samples = 0
        self.connections_seen = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic-watch", daemon=True)

    def __enter__(self) -> "TrafficWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join(timeout=10)

    def _allowed(self, ip: str) -> bool:
        import ipaddress

        ip = ip.split("%")[0]
        if ip.startswith("::ffff:"):
            ip = ip[7:]
        addr = ipaddress.ip_address(ip)
        return addr.is_loopback or addr.is_unspecified or any(ip.startswith(p) for p in self.allowed_prefixes)

    def _run(self) -> None:
        while not self._done.is_set():
            procs = [psutil.Process()] + psutil.Process().children(recursive=True) + self.cluster.processes()
            for p in {p.pid: p for p in procs}.values():
                try:
                    conns = p.net_connections(kind="inet")
                    name = p.name()
                except psutil.Error:
                    continue
                for c in conns:
                    self.connections_seen += 1
                    for addr in (c.laddr, c.raddr):
                        if addr and not self._allowed(addr.ip):
                            key = (name, c.status, addr.ip, addr.port)
                            self.offenders[key] = self.offenders.get(key, 0) + 1
            self.samples += 1
            self._done.wait(self.interval)
