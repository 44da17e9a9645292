"""A real node for the sandbox: containerd, runc, a CNI bridge and kubelet v1.36.

The kubelet's own pulls, back-off, status and Events are what pullmedic reads in
production; the emulator is only our reading of them. Everything stays on the machine:
registries and apiserver on loopback, pods on a bridge (``pullmedic0``, 10.233.0.0/24) with
no route beyond it, no masquerading, and the kubelet's node IP on that bridge.

The kubelet and containerd leave host state behind (sysctls, bind mounts, cgroups, the
bridge, container shims), so all node state lives under one fixed folder
(``PULLMEDIC_NODE_ROOT``, default ``/var/lib/pullmedic-node``) with a record of what was
changed: every start first undoes what an interrupted run left, every stop undoes its own.
One real node per machine at a time (a lock), since cgroup names and the bridge are shared.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from sandbox import paths, pki, procs
from sandbox.cluster import Cluster, write_kubeconfig

BRIDGE = "pullmedic0"
NODE_IP = "10.233.0.1"
SUBNET = "10.233.0.0/24"
CLUSTER_DNS = "10.0.0.10"
CNI_BIN = Path("/usr/lib/cni")
# Host sysctls the kubelet (setupKernelTunables) and the CNI plugins may change.
SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
)
PROGRAMS = ("containerd", "containerd-shim-runc-v2", "runc", "ip")


class NodeUnavailable(RuntimeError):
    """This machine cannot run a real node now; the message says why."""


def node_root() -> Path:
    return Path(os.environ.get("PULLMEDIC_NODE_ROOT", "/var/lib/pullmedic-node"))


def prerequisites() -> list[str]:
    """What stops a real node on this machine, as sentences (empty: it can run)."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append("not root (containerd, runc and the kubelet need root)")
    missing = [p for p in PROGRAMS if shutil.which(p) is None]
    missing += [f"{CNI_BIN}/{p}" for p in ("bridge", "host-local", "loopback")]
    missing = [m for m in missing if not (Path(m).exists() or shutil.which(m))]
    if not Path("/bin/busybox").exists():
        missing.append("/bin/busybox")
    if missing:
        problems.append(
            "missing " + ", ".join(missing) + " (Debian packages containerd runc "
            "containernetworking-plugins busybox-static; scripts/setup.sh installs them)"
        )
    cg = Path("/sys/fs/cgroup")
    if not ((cg / "cgroup.controllers").exists() or (cg / "memory").is_dir()):
        problems.append("no cgroup hierarchy at /sys/fs/cgroup (neither v2 nor v1 memory)")
    try:
        if "overlay" not in Path("/proc/filesystems").read_text():
            problems.append("the kernel has no overlay filesystem (containerd's snapshotter)")
    except OSError:
        problems.append("cannot read /proc/filesystems")
    return problems


# --- host state ------------------------------------------------------------------------


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name


def _read_sysctls() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in SYSCTLS:
        with contextlib.suppress(OSError):
            out[name] = _sysctl_path(name).read_text().strip()
    return out


def _restore_sysctls(saved: dict[str, str]) -> None:
    for name, value in saved.items():
        with contextlib.suppress(OSError):
            if _sysctl_path(name).read_text().strip() != value:
                _sysctl_path(name).write_text(value)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root).rstrip("/") + "/"
    found: list[str] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix) or point == str(root):
            found.append(point)
    return found


def _unmount_all(root: Path) -> None:
    """Detach every mount under ``root``, deepest first (shared propagation repeats them)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    for _ in range(20):
        points = _mounts_under(root)
        if not points:
            return
        for point in sorted(set(points), key=len, reverse=True):
            libc.umount2(point.encode(), 2)  # MNT_DETACH
    raise RuntimeError(f"mounts remain under {root}: {_mounts_under(root)[:5]}")


def _cgroup_dirs() -> list[Path]:
    """Every ``kubepods`` cgroup (the kubelet's, and runc's containers inside), deepest first."""
    dirs: list[Path] = []
    base = Path("/sys/fs/cgroup")
    tops = [base / "kubepods"] + [c / "kubepods" for c in base.iterdir() if c.is_dir()]
    tops += [base / "kubepods.slice"]
    for top in tops:
        # os.walk ignores cgroups that vanish meanwhile (runc removes its own as it exits).
        for here, _subdirs, _files in os.walk(top):
            dirs.append(Path(here))
    return sorted(set(dirs), key=lambda p: len(p.parts), reverse=True)


def _cgroup_pids(dirs: list[Path]) -> set[int]:
    pids: set[int] = set()
    for d in dirs:
        with contextlib.suppress(OSError):
            pids.update(int(x) for x in (d / "cgroup.procs").read_text().split())
    return pids


def _shim_pids(root: Path) -> set[int]:
    """containerd shims started by our containerd (they outlive it by design)."""
    sock = str(root / "containerd" / "containerd.sock")
    pids: set[int] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and sock.encode() in argv:
                pids.add(int(proc.name))
    return pids


def _kill_all(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _wait_gone(pids: set[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pids = {p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)}
        time.sleep(0.05)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _remove_stale_shim_sockets() -> None:
    """containerd 1.6 puts shim sockets in /run/containerd/s whatever its state dir is."""
    base = Path("/run/containerd")
    sockets = base / "s"
    if sockets.is_dir():
        in_use = {
            line.split()[-1]
            for line in Path("/proc/net/unix").read_text().splitlines()[1:]
            if len(line.split()) >= 8
        }
        for sock in sockets.iterdir():
            if str(sock) not in in_use:
                with contextlib.suppress(OSError):
                    sock.unlink()
    for d in (sockets, base / "runc" / "k8s.io", base / "runc", base):
        with contextlib.suppress(OSError):
            d.rmdir()  # only when empty: another containerd may own the rest


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


def clean_host(root: Path) -> None:
    """Undo everything a node under ``root`` may have left, whether it stopped or was killed.

    Order matters: processes first (containers hold mounts and cgroups; shims respawn
    nothing once containerd is gone), then mounts, then cgroups, bridge and sysctls, and
    only then the files (never delete through a mount).
    """
    record = root / "host-state.json"
    saved = json.loads(record.read_text()) if record.exists() else {}
    for pid in saved.get("pids", []):  # kubelet and containerd of an interrupted run
        with contextlib.suppress(ProcessLookupError, ValueError, OSError):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if str(root).encode() in cmd:
                os.kill(int(pid), signal.SIGKILL)
    for _ in range(5):
        pids = _cgroup_pids(_cgroup_dirs()) | _shim_pids(root)
        if not pids:
            break
        _kill_all(pids)
        _wait_gone(pids, 5)
    _unmount_all(root)
    for d in _cgroup_dirs():
        with contextlib.suppress(OSError):
            d.rmdir()
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        _run(["ip", "link", "del", BRIDGE], check=False)
    _restore_sysctls(saved.get("sysctls", {}))
    _remove_stale_shim_sockets()
    logs = Path("/var/log/containers")
    if logs.is_dir():
        for link in logs.iterdir():
            with contextlib.suppress(OSError):
                if link.is_symlink() and os.readlink(link).startswith(str(root)):
                    link.unlink()
    if _mounts_under(root):
        raise RuntimeError(f"refusing to delete {root}: still mounted")
    for child in root.iterdir() if root.is_dir() else []:
        if child.name not in (".lock",):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


# --- configuration ---------------------------------------------------------------------


def _containerd_config(root: Path, sandbox_image: str) -> str:
    c = root / "containerd"
    return f"""version = 2
root = "{c / "root"}"
state = "{c / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{c / "containerd.sock"}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{c / "opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  # root here lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below ours.
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{c / "runc"}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{root / "cni"}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{c / "certs.d"}"
"""


def _cni_config(root: Path) -> dict[str, Any]:
    """A bridge on a subnet that exists only here; no gateway route, no masquerade."""
    return {
        "cniVersion": "0.4.0",
        "name": "pullmedic",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": False,
                "isDefaultGateway": False,
                "ipMasq": False,
                "hairpinMode": False,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": SUBNET, "rangeStart": "10.233.0.10"}]],
                    "dataDir": str(root / "cni-ipam"),
                },
            }
        ],
    }


def _kubelet_config(root: Path, ca: Path, port: int, healthz: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{root / 'containerd' / 'containerd.sock'}",
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        "clusterDNS": [CLUSTER_DNS],
        "clusterDomain": "cluster.local",
        "resolvConf": "",
        # A small disk must not evict the tests' pods or images.
        "evictionHard": {},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "podLogsDir": str(root / "pod-logs"),
        "rotateCertificates": False,
    }


def _write_hosts(certs_d: Path, host: str) -> None:
    """containerd talks plain http to ``host`` (a sandbox registry or proxy on loopback)."""
    d = certs_d / host
    d.mkdir(parents=True, exist_ok=True)
    # Only ``server``: a [host] entry for the same address would make containerd try it
    # twice per pull.
    (d / "hosts.toml").write_text(f'server = "http://{host}"\n')


# --- the node --------------------------------------------------------------------------


@dataclass
class RealNode:
    name: str
    root: Path
    logs: Path
    cluster: Cluster
    lock_fd: int
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    started_in: float = 0.0

    @property
    def certs_d(self) -> Path:
        return self.root / "containerd" / "certs.d"

    def trust_http(self, host: str) -> None:
        """Let the node pull from ``host`` over plain http (e.g. a test's fault proxy)."""
        _write_hosts(self.certs_d, host)

    def facts(self) -> dict[str, str]:
        v = paths.versions()
        return {
            "kind": "real",
            "name": self.name,
            "kubelet": v["KUBERNETES_VERSION"],
            "containerd": _run(["containerd", "--version"]).stdout.split()[-1],
            "runc": _run(["runc", "--version"]).stdout.splitlines()[0].split()[-1],
            "node_ip": NODE_IP,
            "pod_subnet": SUBNET,
            "root": str(self.root),
        }

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs.values())

    def stop(self) -> None:
        """Scheduler, kubelet and containerd down, then every trace of them removed."""
        for name in ("kube-scheduler", "kubelet"):
            procs.stop(self.procs.pop(name, None), timeout=10)
        # Containers go before containerd, so their shims do not linger as orphans.
        for _ in range(3):
            pids = _cgroup_pids(_cgroup_dirs()) | _shim_pids(self.root)
            if not pids:
                break
            _kill_all(pids)
            _wait_gone(pids, 5)
        procs.stop(self.procs.pop("containerd", None), timeout=10)
        try:
            clean_host(self.root)
        finally:
            os.close(self.lock_fd)


def _lock(root: Path) -> int:
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise NodeUnavailable(
            f"another real node runs on this machine (pid {holder or '?'}, {root})"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def start_node(
    cluster: Cluster,
    registry_hosts: list[str],
    sandbox_image: str,
    logs: Path,
    *,
    name: str = "sandbox-node",
    timeout: float = 90.0,
    kubelet_args: Sequence[str] = (),
) -> RealNode:
    """containerd, kubelet and kube-scheduler up; returns once the node is Ready, untainted.

    ``kubelet_args``: more kubelet flags (the credential provider tests add theirs)."""
    problems = prerequisites()
    if problems:
        raise NodeUnavailable("; ".join(problems))
    t0 = time.monotonic()
    root = node_root()
    fd = _lock(root)
    node = RealNode(name, root, logs, cluster, fd)
    try:
        clean_host(root)  # an interrupted run's leftovers
        _start(node, registry_hosts, sandbox_image, timeout, kubelet_args)
    except BaseException:
        node.stop()
        raise
    node.started_in = time.monotonic() - t0
    return node


def _start(
    node: RealNode,
    registry_hosts: list[str],
    sandbox_image: str,
    timeout: float,
    kubelet_args: Sequence[str] = (),
) -> None:
    root, logs, cluster = node.root, node.logs, node.cluster
    kubelet_dir, state = root / "kubelet", root / "state"
    for d in (root / "containerd", root / "cni", kubelet_dir, state, root / "pod-logs"):
        d.mkdir(parents=True, exist_ok=True)
    (root / "host-state.json").write_text(json.dumps({"sysctls": _read_sysctls(), "pids": []}))

    _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    _run(["ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE])
    _run(["ip", "link", "set", BRIDGE, "up"])
    (root / "cni" / "10-pullmedic.conflist").write_text(json.dumps(_cni_config(root), indent=2))
    for host in registry_hosts:
        _write_hosts(node.certs_d, host)
    cfg = root / "containerd" / "config.toml"
    cfg.write_text(_containerd_config(root, sandbox_image))
    sock = root / "containerd" / "containerd.sock"
    node.procs["containerd"] = procs.spawn(
        ["containerd", "--config", str(cfg), "--log-level", "warn"], logs / "containerd.log"
    )
    procs.wait_until(
        lambda: _run(["ctr", "--address", str(sock), "version"], check=False).returncode == 0,
        "containerd",
        30,
        node.procs["containerd"],
        logs / "containerd.log",
    )

    keys = cluster.pki
    cert, key = pki.client_cert(keys, state / "pki", f"system:node:{node.name}", "system:nodes")
    kubeconfig = write_kubeconfig(
        state / "kubelet.kubeconfig",
        cluster.api_url,
        keys.ca_cert,
        cert=cert,
        key=key,
        user=f"system:node:{node.name}",
    )
    port, healthz = procs.free_port(), procs.free_port()
    kcfg = state / "kubelet-config.json"
    kcfg.write_text(json.dumps(_kubelet_config(root, keys.ca_cert, port, healthz), indent=2))
    node.procs["kubelet"] = procs.spawn(
        [
            str(paths.binary("kubelet")),
            f"--config={kcfg}",
            f"--kubeconfig={kubeconfig}",
            f"--root-dir={kubelet_dir}",
            f"--cert-dir={state / 'kubelet-pki'}",
            f"--hostname-override={node.name}",
            f"--node-ip={NODE_IP}",
            "--v=1",
            *kubelet_args,
        ],
        logs / "kubelet.log",
    )
    sched_port = procs.free_port()
    node.procs["kube-scheduler"] = procs.spawn(
        [
            str(paths.binary("kube-scheduler")),
            f"--kubeconfig={cluster.kubeconfig}",
            f"--authentication-kubeconfig={cluster.kubeconfig}",
            f"--authorization-kubeconfig={cluster.kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={sched_port}",
            "--leader-elect=false",
            "--v=1",
        ],
        logs / "kube-scheduler.log",
    )
    (root / "host-state.json").write_text(
        json.dumps(
            {
                "sysctls": json.loads((root / "host-state.json").read_text())["sysctls"],
                "pids": [p.pid for p in node.procs.values()],
            }
        )
    )
    ctx = cluster.ssl_context()
    procs.wait_until(
        lambda: _node_ready(cluster.api_url, ctx, node.name),
        f"node {node.name} Ready and untainted",
        timeout,
        node.procs["kubelet"],
        logs / "kubelet.log",
    )


def _node_ready(api_url: str, ctx: ssl.SSLContext, name: str) -> bool:
    r = httpx.get(f"{api_url}/api/v1/nodes/{name}", verify=ctx, timeout=2)
    if r.status_code != 200:
        return False
    node = r.json()
    ready = any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in node.get("status", {}).get("conditions", [])
    )
    return ready and not node.get("spec", {}).get("taints")
