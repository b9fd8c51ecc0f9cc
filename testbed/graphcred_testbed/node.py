"""A real Kubernetes node for the bed: containerd + runc + kubelet, registered with a `ControlPlane(node=True)`.

Workplace rule: traffic stays on 127.0.0.1 or inside namespaces the bed makes. So the node lives in a network
namespace of its own (`ip netns add graphcred-node-<pid>-<n>`): the CNI bridge `cni0` (10.88.0.1/16, the node's
InternalIP, pods' gateway) and every pod veth are in there, nothing is added to the host's network namespace.
There is no kube-proxy: the `kubernetes` Service's ClusterIP 10.0.0.1 sits on the node namespace's `lo`, and a TCP
forwarder in this process listens there on :443 (a socket keeps the namespace it was made in) and connects to the
apiserver on host 127.0.0.1. Kubelet and pods reach the apiserver that way; `Node.forward` does the same for any
other host port (the bed's token issuer, its Graph API). The apiserver cannot reach the kubelet: no `kubectl logs`
or `exec`, `Node.logs` reads the container logs from disk instead.

containerd and kubelet also share a private mount namespace (a holder process keeps it): their mounts (overlay
root filesystems, Secret tmpfs volumes, pod network namespace files) never appear on the host and vanish with
it, and tmpfs over PRIVATE_DIRS keeps the fixed paths they write to off the host. Kubelet sets six kernel
sysctls on start (vm.overcommit_memory, kernel.panic, ...); these are host-wide, so in that mount namespace each
one that differs is covered by a file holding the value kubelet wants (it reads, finds it set, writes nothing).
All node processes (containerd, shims, kubelet, containers) are in one cgroup tree `.../graphcred-node-<pid>-<n>`
in every hierarchy: stop kills what is in it and removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import datetime as dt
import itertools
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from .binaries import node_binary, node_binary_dir
from .cluster import ControlPlane, Process
from .images import busybox_image, pause_image, write_oci_archive

log = logging.getLogger("graphcred_testbed")

NODE_NAME = "graphcred-node"
BRIDGE_MAC = "02:67:63:00:00:01"
NODE_IP = "10.88.0.1"  # the CNI bridge's address in the node namespace: pods' gateway, the node's InternalIP
POD_SUBNET = "10.88.0.0/16"
SERVICE_IP = "10.0.0.1"  # the `kubernetes` Service's ClusterIP (first address of --service-cluster-ip-range)
PAUSE_IMAGE = "graphcred.local/pause:1"
BUSYBOX_IMAGE = "graphcred.local/busybox:1"
CNI_BIN_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins

# What kubelet's setupKernelTunables (pkg/kubelet/cm/container_manager_linux.go) wants; it writes any that differ.
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": 1, "vm/panic_on_oom": 0, "kernel/panic": 10, "kernel/panic_on_oops": 1,
    "kernel/keys/root_maxkeys": 1000000, "kernel/keys/root_maxbytes": 25000000,
}
# Kept off the host inside the node's mount namespace (each gets a fresh tmpfs there): containerd's fixed
# /run/containerd paths and pod network namespace files, kubelet's /var/log/containers and device plugin socket
# (/var/lib/kubelet/device-plugins, not under its --root-dir), and libcni's result cache /var/lib/cni (containerd
# has no setting for it). A missing mount point is made on the host, and left there, empty.
PRIVATE_DIRS = ("/run", "/var/log", "/var/lib/cni", "/var/lib/kubelet")
_CLONE_NEWNET = 0x40000000
_counter = itertools.count()


# --- cgroups (v1 here; the hybrid host's cgroup2 `unified` mount is swept too) --------------------------------------
def _cgroup_mounts() -> list[tuple[Path, str]]:
    """(mount point, fs type) of every cgroup hierarchy."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" - ")
        fstype = fields[1].split()[0]
        if fstype in ("cgroup", "cgroup2"):
            mounts.append((Path(fields[0].split()[4]), fstype))
    return mounts


def _own_memory_cgroup() -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return path
    return "/"


class CgroupTree:
    """`<parent>/<name>` in every cgroup hierarchy, with a `daemons` child for containerd (its shims) and kubelet.

    The parent is this process's memory cgroup (the same path in every hierarchy: kubelet's cgroupRoot is one
    path), so that the node's memory is counted where the bed's own is."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = f"{_own_memory_cgroup().rstrip('/')}/{name}"  # kubelet's cgroupRoot
        mounts = _cgroup_mounts()
        self.roots = [mount / self.path.lstrip("/") for mount, _ in mounts]
        self.v1_mounts = [mount for mount, fstype in mounts if fstype == "cgroup"]
        # parents of our path that did not exist: made by create() (v1), or by runc (the hybrid host's cgroup2)
        self._made_parents = [parent for root in self.roots for parent in root.parents
                              if not parent.exists() and any(parent.is_relative_to(m) for m, _ in mounts)]

    def create(self) -> list[Path]:
        """Create the tree; return the `cgroup.procs` files a daemon writes its pid into."""
        procs = []
        for mount in self.v1_mounts:
            directory = mount
            for part in [*self.path.strip("/").split("/"), "daemons"]:
                directory = directory / part
                if directory.exists():
                    continue
                directory.mkdir()
                if (directory / "cpuset.cpus").exists():
                    # a v1 cpuset cgroup starts empty and takes no task until given the parent's cpus and mems
                    for knob in ("cpuset.cpus", "cpuset.mems"):
                        (directory / knob).write_text((directory.parent / knob).read_text())
            procs.append(directory / "cgroup.procs")
        return procs

    def pids(self) -> set[int]:
        found: set[int] = set()
        for root in self.roots:
            for directory, _, _ in os.walk(root):
                with contextlib.suppress(OSError):
                    found.update(int(p) for p in (Path(directory) / "cgroup.procs").read_text().split())
        return found

    def kill_all(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while pids := self.pids():
            if time.monotonic() > deadline:
                raise RuntimeError(f"node cgroup {self.name}: processes left after SIGKILL: {sorted(pids)}")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def remove(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        for root in self.roots:
            if not root.exists():
                continue
            for directory, _, _ in os.walk(root, topdown=False):
                while True:
                    try:
                        os.rmdir(directory)
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        # EBUSY while a killed task is still being reaped
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.1)
        # parents made for our path in other hierarchies; still in use (another bed) means not empty: left
        for parent in sorted(self._made_parents, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                parent.rmdir()

    def remove_empty_parents(self) -> None:
        """For a dead node's tree: its parents in the hierarchies where this process is not (made for it)."""
        mounts = [mount for mount, _ in _cgroup_mounts()]
        for root in self.roots:
            for parent in root.parents:
                if parent in mounts:
                    break
                with contextlib.suppress(OSError):  # not empty (this process's own cgroup, or in use): kept
                    parent.rmdir()


# --- TCP forwarding into the node's network namespace -----------------------------------------------------------
class Forwarder:
    """Listens inside a network namespace, connects from the host's: one asyncio loop on a thread for all."""

    def __init__(self, netns: Path) -> None:
        self.netns = netns
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="node-forwarder", daemon=True)
        self._thread.start()
        self._servers: list[asyncio.Server] = []

    def _listen_in_netns(self, ip: str, port: int) -> socket.socket:
        # setns switches only the calling thread; a throwaway thread makes the socket, which stays in that namespace
        result: list[socket.socket | BaseException] = []

        def make() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                with open(self.netns) as ns:
                    if libc.setns(ns.fileno(), _CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns {self.netns}")
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((ip, port))
                sock.listen(128)
                sock.setblocking(False)
                result.append(sock)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                result.append(exc)

        thread = threading.Thread(target=make, name="node-netns-listen")
        thread.start()
        thread.join()
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]

    def add(self, ip: str, port: int, target_port: int) -> None:
        sock = self._listen_in_netns(ip, port)
        server = asyncio.run_coroutine_threadsafe(self._serve(sock, target_port), self.loop).result(10)
        self._servers.append(server)

    async def _serve(self, sock: socket.socket, target_port: int) -> asyncio.Server:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
            except OSError:
                writer.close()
                return
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                writer.close()
                up_writer.close()

        return await asyncio.start_server(handle, sock=sock)

    def stop(self) -> None:
        async def close() -> None:
            for server in self._servers:
                server.close()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:  # the connections: their `finally` closes the sockets
                task.cancel()
            # let them run it before the loop stops (several turns: each pipe, their gather, the handler)
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        # half-close: a client that ends its request with EOF (nc, HTTP/1.0) still gets the answer
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        # a reset on one side: close the other too, or an upstream watch stays open until its next event
        writer.close()


def reap_stale_nodes() -> list[str]:
    """Remove what nodes of processes that no longer exist left (killed with SIGKILL: their containers and shims,
    which do not die with the bed, its cgroups, its network namespace). Returns their names. Only nodes whose
    cgroups are under this process's own: another machine user's nodes (in a pid namespace this one cannot see,
    so seemingly dead) are not touched."""
    reaped = []
    for netns in Path("/run/netns").glob("graphcred-node-*-*"):
        pid = int(netns.name.split("-")[2])
        cgroups = CgroupTree(netns.name)
        if Path(f"/proc/{pid}").exists() or not any(root.exists() for root in cgroups.roots):
            continue
        cgroups.kill_all()
        cgroups.remove()
        cgroups.remove_empty_parents()
        subprocess.run(["ip", "netns", "delete", netns.name], check=False, capture_output=True)
        reaped.append(netns.name)
        log.warning("removed the remains of node %s (its process is gone)", netns.name)
    return reaped


def _schedulable(node: dict[str, Any]) -> bool:
    """Ready, and without the not-ready taint kubelet registers it with (the node-lifecycle controller lifts it)."""
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))
    return ready and not node["spec"].get("taints")


# --- the node ---------------------------------------------------------------------------------------------------
class Node:
    """containerd + kubelet in a network and mount namespace of their own, registered as `graphcred-node`."""

    def __init__(self, control_plane: ControlPlane) -> None:
        if not control_plane.node:
            raise ValueError("a Node needs ControlPlane(node=True) (scheduler, controllers, Node authorizer)")
        self.control_plane = control_plane
        self.dir = control_plane.dir / "node"
        for private in PRIVATE_DIRS:
            if self.dir.resolve().is_relative_to(private):
                raise ValueError(f"the bed's directory {self.dir} is under {private}, hidden in the node's namespace")
        self.id = f"graphcred-node-{os.getpid()}-{next(_counter)}"
        self.netns = Path("/run/netns") / self.id
        self.cgroups = CgroupTree(self.id)
        self.containerd_socket = self.dir / "containerd" / "containerd.sock"
        self.pod_logs = self.dir / "pod-logs"
        self.processes: dict[str, Process] = {}
        self.forwarder: Forwarder | None = None
        self._forwards: dict[int, tuple[str, int]] = {}
        self._netns_made = False
        self.startup_seconds = 0.0

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> Node:
        t0 = time.monotonic()
        deadline = t0 + timeout
        node_binary_dir()  # builds on first use, before any namespace exists
        reap_stale_nodes()
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        try:
            self._make_netns()
            self.forwarder = Forwarder(self.netns)
            # kubelet and pods reach the apiserver at the `kubernetes` Service's ClusterIP, as in any cluster
            self.forwarder.add(SERVICE_IP, 443, self.control_plane.port)
            self._start_holder(deadline)
            procs = self.cgroups.create()
            self._start_containerd(procs, deadline)
            self.import_image(write_oci_archive(pause_image(Path(node_binary("pause"))), self.dir / "pause.tar"))
            self._start_kubelet(procs)
            self._wait_node_ready(deadline)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        log.info("node %s Ready in %.1f s", NODE_NAME, self.startup_seconds)
        return self

    def stop(self) -> None:
        # Every step runs even when one before it failed (ExitStack: last registered first; errors raised after).
        with contextlib.ExitStack() as steps:
            steps.callback(self.processes.clear)
            steps.callback(self._delete_netns)
            steps.callback(self._stop_forwarder)
            # the last process in the mount namespace: its mounts go with it
            steps.callback(self._stop_process, "namespaces")
            steps.callback(self.cgroups.remove)
            # shims and containers outlive containerd (they are reparented): the cgroup tree holds them all
            steps.callback(self.cgroups.kill_all)
            steps.callback(self._stop_process, "containerd")
            steps.callback(self._stop_process, "kubelet")

    def _stop_process(self, name: str) -> None:
        process = self.processes.get(name)
        if process is not None:
            process.stop()

    def _stop_forwarder(self) -> None:
        if self.forwarder is not None:
            forwarder, self.forwarder = self.forwarder, None
            forwarder.stop()

    def _delete_netns(self) -> None:
        if self._netns_made:
            subprocess.run(["ip", "netns", "delete", self.id], check=False, capture_output=True)
            self._netns_made = False

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- pieces ------------------------------------------------------------------------------------------------
    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.id, *args], check=True, capture_output=True, text=True)

    def _make_netns(self) -> None:
        subprocess.run(["ip", "netns", "add", self.id], check=True, capture_output=True, text=True)
        self._netns_made = True
        self._ip("link", "set", "lo", "up")
        self._ip("addr", "add", f"{SERVICE_IP}/32", "dev", "lo")
        # made here rather than by the CNI bridge plugin on the first pod: kubelet needs the node IP before any pod
        # With a MAC address of its own: a bridge without one takes its lowest port's, and changes it as pods come
        # and go; the pods' ARP entries for their gateway then point nowhere for 10-30 s (the leader lost its Lease
        # to connect timeouts when consumer pods started, CI 2026-11-26). Locally administered, fixed.
        self._ip("link", "add", "cni0", "address", BRIDGE_MAC, "type", "bridge")
        self._ip("addr", "add", f"{NODE_IP}/16", "dev", "cni0")
        self._ip("link", "set", "cni0", "up")

    def _start_holder(self, deadline: float) -> None:
        ready = self.dir / "namespaces.ready"
        ready.unlink(missing_ok=True)
        sysctl_dir = self.dir / "sysctl"
        sysctl_dir.mkdir(parents=True, exist_ok=True)
        lines = ["set -e"]
        for private in PRIVATE_DIRS:
            Path(private).mkdir(parents=True, exist_ok=True)
            lines.append(f"mount -t tmpfs -o mode=0755 {shlex.quote(self.id)} {private}")
        for key, wanted in KUBELET_SYSCTLS.items():
            real = Path("/proc/sys") / key
            if int(real.read_text().split()[0]) == wanted:
                continue
            cover = sysctl_dir / key.replace("/", ".")
            cover.write_text(f"{wanted}\n")
            lines.append(f"mount --bind {shlex.quote(str(cover))} {real}")
        lines += [f"touch {shlex.quote(str(ready))}", "exec sleep infinity"]
        # nsenter, not `ip netns exec`: that remounts /sys for the namespace, and the cgroup mounts under it with it
        holder = Process("namespaces", [
            "nsenter", f"--net={self.netns}", "unshare", "--mount", "--propagation", "private",
            "sh", "-c", "\n".join(lines),
        ], self.dir / "logs")
        self.processes["namespaces"] = holder
        holder.start()
        while not ready.exists():
            if not holder.alive():
                raise RuntimeError(f"node namespaces: holder exited:\n{holder.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError("node namespaces: holder not ready")
            time.sleep(0.05)

    def _in_namespaces(self, argv: list[str]) -> list[str]:
        holder = self.processes["namespaces"].popen
        assert holder is not None
        return ["nsenter", f"--target={holder.pid}", "--mount", "--net", "--", *argv]

    def _daemon(self, name: str, argv: list[str], procs: list[Path]) -> Process:
        # joins the node's cgroup before exec, so that everything it starts is found and killed by stop()
        script = 'echo $$ | tee "$@" >/dev/null || exit 1; exec ' + shlex.join(self._in_namespaces(argv))
        # containerd finds containerd-shim-runc-v2 on PATH
        env = {**os.environ, "PATH": f"{node_binary_dir()}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        proc = Process(name, ["sh", "-c", script, "sh", *map(str, procs)], self.dir / "logs", env)
        self.processes[name] = proc
        proc.start()
        return proc

    def _containerd_config(self) -> Path:
        base = self.dir / "containerd"
        base.mkdir(parents=True, exist_ok=True)
        (self.dir / "cni" / "net.d").mkdir(parents=True, exist_ok=True)
        (self.dir / "cni" / "net.d" / "10-graphcred.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "graphcred",
            "plugins": [{
                "type": "bridge", "bridge": "cni0", "isGateway": True, "isDefaultGateway": True,
                "ipMasq": False, "hairpinMode": True,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
                         "dataDir": str(self.dir / "cni" / "ipam")},
            }],
        }, indent=1))
        cri_runtime = 'plugins."io.containerd.cri.v1.runtime"'
        config = base / "config.toml"
        config.write_text(f"""version = 3
root = "{base / 'root'}"
state = "{base / 'state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing", "io.containerd.nri.v1.nri"]

[grpc]
  address = "{self.containerd_socket}"

[ttrpc]
  address = "{base / 'containerd.sock.ttrpc'}"

[debug]
  level = "info"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"

[{cri_runtime}]
  enable_selinux = false
  # this machine withholds CAP_SYS_RESOURCE even from root: runc's init cannot lower oom_score_adj (the sandbox's
  # -998) and dies, "can't get final child's PID from pipe: EOF"; clamp to containerd's own score instead
  restrict_oom_score_adj = true
  [{cri_runtime}.cni]
    bin_dirs = ["{CNI_BIN_DIR}"]
    conf_dir = "{self.dir / 'cni' / 'net.d'}"
    use_internal_loopback = true
  [{cri_runtime}.containerd]
    default_runtime_name = "runc"
    [{cri_runtime}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri_runtime}.containerd.runtimes.runc.options]
        BinaryName = "{node_binary('runc')}"
        Root = "{base / 'runc'}"
        SystemdCgroup = false
""")
        return config

    def _start_containerd(self, procs: list[Path], deadline: float) -> None:
        config = self._containerd_config()
        proc = self._daemon("containerd", [node_binary("containerd"), f"--config={config}"], procs)
        while not self.containerd_socket.exists() or self._ctr("version", check=False).returncode != 0:
            if not proc.alive():
                raise RuntimeError(f"containerd exited during start-up:\n{proc.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"containerd not ready:\n{proc.tail()}")
            time.sleep(0.1)

    def _ctr(self, *args: str, check: bool = True, stdin: Path | None = None) -> subprocess.CompletedProcess[str]:
        argv = self._in_namespaces([node_binary("ctr"), f"--address={self.containerd_socket}", "-n", "k8s.io", *args])
        if stdin is None:
            return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=120)
        with open(stdin, "rb") as data:
            out = subprocess.run(argv, stdin=data, capture_output=True, check=check, timeout=120)
        return subprocess.CompletedProcess(argv, out.returncode, out.stdout.decode(), out.stderr.decode())

    def _start_kubelet(self, procs: list[Path]) -> None:
        pki = self.control_plane.dir / "pki"
        client = self.control_plane.ca.issue(f"system:node:{NODE_NAME}", organization="system:nodes", client=True)
        kubeconfig = self.control_plane.write_kubeconfig(self.dir / "kubelet.kubeconfig", client, user="kubelet",
                                                         server=f"https://{SERVICE_IP}:443")
        config = self.dir / "kubelet.yaml"
        config.write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            # cgroup v1 on this machine: kubelet v1.35+ refuses it unless told
            "failCgroupV1": False, "cgroupDriver": "cgroupfs", "cgroupRoot": self.cgroups.path,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "podLogsDir": str(self.pod_logs),
            # Secret volumes are rewritten on a pod's resync: seconds, not the default minute
            "syncFrequency": "2s",
            "address": NODE_IP, "port": 10250, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(pki / "ca.crt")}},
            "authorization": {"mode": "AlwaysAllow"},  # only the node CA's client certificates get here (x509 only)
            # a shared test machine: neither evict pods nor delete the imported images when its disk fills up
            "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "nodefs.inodesFree": "1%",
                             "imagefs.available": "1%", "imagefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "failSwapOn": False, "serializeImagePulls": False,
        }, indent=1))
        self._daemon("kubelet", [
            node_binary("kubelet"), f"--config={config}", f"--kubeconfig={kubeconfig}",
            f"--root-dir={self.dir / 'kubelet'}", f"--cert-dir={self.dir / 'kubelet' / 'pki'}",
            f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}", "--v=1",
        ], procs)

    def _wait_node_ready(self, deadline: float) -> None:
        kubelet = self.processes["kubelet"]
        while time.monotonic() < deadline:
            if not kubelet.alive():
                raise RuntimeError(f"kubelet exited during start-up:\n{kubelet.tail()}")
            out = self.control_plane.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
            if out.returncode == 0 and _schedulable(json.loads(out.stdout)):
                return
            time.sleep(0.5)
        raise TimeoutError(f"node {NODE_NAME} not Ready and untainted:\n{kubelet.tail()}")

    # --- for tests ---------------------------------------------------------------------------------------------
    def import_image(self, archive: Path) -> None:
        """Import an OCI or docker image archive into the node's containerd (pods use it with IfNotPresent)."""
        # through stdin: the archive may sit where the node's mount namespace sees something else
        self._ctr("images", "import", "-", stdin=archive)

    def import_busybox(self) -> str:
        """Import the busybox test image; returns its reference."""
        self.import_image(write_oci_archive(busybox_image(BUSYBOX_IMAGE), self.dir / "busybox.tar"))
        return BUSYBOX_IMAGE

    def images(self) -> list[str]:
        return self._ctr("images", "list", "-q").stdout.split()

    def forward(self, host_port: int) -> tuple[str, int]:
        """Make host 127.0.0.1:`host_port` reachable from pods; returns the (ip, port) they connect to."""
        if host_port not in self._forwards:
            assert self.forwarder is not None, "node not started"
            self.forwarder.add(NODE_IP, host_port, host_port)
            self._forwards[host_port] = (NODE_IP, host_port)
        return self._forwards[host_port]

    def logs(self, namespace: str, pod: str, container: str) -> str:
        """The container's output (stdout and stderr, all restarts), read from kubelet's pod log directory."""
        return "\n".join(text for _, text in self.log_lines(namespace, pod, container))

    def log_lines(self, namespace: str, pod: str, container: str) -> list[tuple[dt.datetime, str]]:
        """The container's output lines with the time the runtime took each (CRI log format), oldest first."""
        lines: list[tuple[dt.datetime, str]] = []
        partial = ""
        for pod_dir in sorted(self.pod_logs.glob(f"{namespace}_{pod}_*")):
            files = sorted((pod_dir / container).glob("*.log"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0)
            for path in files:
                for raw in path.read_text(errors="replace").splitlines():
                    # CRI log format: <time> <stream> <P|F> <text>; P marks a line continued in the next entry
                    parts = raw.split(" ", 3)
                    if len(parts) < 4:
                        continue
                    partial += parts[3]
                    if parts[2] == "F":
                        lines.append((_cri_time(parts[0]), partial))
                        partial = ""
        return lines

    def bridge_mac(self) -> str:
        """The MAC address of the pods' gateway (cni0) as the node's namespace has it now."""
        out = subprocess.run(["ip", "-n", self.id, "-o", "link", "show", "cni0"], capture_output=True, text=True,
                             check=True).stdout
        return out.split("link/ether ")[1].split()[0]

    def container_pid(self, container_id: str) -> int:
        """The host PID of a running container's first process (`containerd://ID` as in a pod's status, or ID)."""
        wanted = container_id.removeprefix("containerd://")
        for line in self._ctr("tasks", "ls").stdout.splitlines()[1:]:
            task, pid, *_ = line.split()
            if task == wanted:
                return int(pid)
        raise LookupError(f"no running task {wanted}")


def _cri_time(stamp: str) -> dt.datetime:
    """RFC 3339 with nanoseconds (the CRI log's first field) to an aware datetime (microseconds)."""
    head, _, frac = stamp.partition(".")
    digits, zone = (frac[:-1], "+00:00") if frac.endswith("Z") else (frac[:-6], frac[-6:])
    if not frac:
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return dt.datetime.fromisoformat(f"{head}.{(digits + '000000')[:6]}{zone}")
