"""A real kubelet node beside the kwok ones: kubelet + containerd + runc, pods as containers.

Each node lives in a network namespace of its own (``llmfleet-nodeK``), joined to the host by
a veth pair whose host end has no address: the host reaches the node (10.250.K.2) and its pods
(10.251.K.0/24, a CNI bridge inside the namespace) through routes, so all test traffic goes to
loopback or into namespaces this module made. The node reaches the API server, which listens on
the host's loopback only, through a relay: a TCP listener on the node's own 127.0.0.1:6443 and
10.250.K.2:6443 forwards over a Unix socket (which crosses network namespaces) to the API
server. Pods reach it as in-cluster clients do, at the ``kubernetes`` Service's ClusterIP
(10.96.0.1:443), which a DNAT rule in the namespace sends to that relay: the one Service rule
kube-proxy would have made that the tests need.

kubelet and containerd run in the host's mount namespace (``nsenter --net``, not ``ip netns
exec``, which remounts /sys and would hide the cgroup hierarchy), with their own cgroup root,
so several nodes and clusters can share the machine. containerd's store is cached per slot
(``$LLMFLEET_CACHE/realnode/slot-K``) so images are imported once, not per cluster; a slot
belongs to the containerd whose pid ``slot-K.owner`` names, and is free once that process
is gone.

Standard library only, like :mod:`llmfleet_dev.localcluster`, which starts these nodes
(``Topology.real_nodes``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmfleet_dev.localcluster import pid_alive, stop_process_group

#: A real node's label and taint (value "true") beside the GPU ones: pods land there only
#: when they select and tolerate it, so tests written for the kwok topology never see it.
REAL_NODE_LABEL = "llmfleet.io/real-node"
REAL_NODE_TAINT = {"key": REAL_NODE_LABEL, "value": "true", "effect": "NoSchedule"}
SLOTS = 4
RELAY_PORT = 6443
KUBERNETES_SERVICE_IP = "10.96.0.1"
CNI_BIN = Path("/usr/lib/cni")
RUNC = "/usr/sbin/runc"


#: Each node image's id and size in bytes, by name.
ImageIds = dict[str, tuple[str, int]]


class NodeError(RuntimeError):
    """A real node could not be started or stopped."""


def cache_dir() -> Path:
    return Path(os.environ.get("LLMFLEET_CACHE", Path.home() / ".cache" / "llmfleet"))


@dataclass
class NodeState:
    """What a running node left on disk: enough for ``down`` from another process."""

    name: str
    slot: int
    pids: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Addresses:
    """The node's network, derived from its slot."""

    slot: int

    @property
    def netns(self) -> str:
        return f"llmfleet-node{self.slot}"

    @property
    def host_veth(self) -> str:
        return f"lfnode{self.slot}"

    @property
    def node_ip(self) -> str:
        return f"10.250.{self.slot}.2"

    @property
    def pod_cidr(self) -> str:
        return f"10.251.{self.slot}.0/24"

    @property
    def pod_gateway(self) -> str:
        return f"10.251.{self.slot}.1"

    @property
    def cgroup_root(self) -> str:
        return f"/llmfleet-node{self.slot}"


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=60)


def in_netns(netns: str, *cmd: str) -> list[str]:
    """``cmd`` joined to ``netns``'s network only (see the module docstring)."""
    return ["nsenter", f"--net=/run/netns/{netns}", *cmd]


class RealNode:
    """One kubelet node of a :class:`~llmfleet_dev.localcluster.LocalCluster`.

    ``issue(name, subject, ext)`` makes a key and certificate in ``pki`` signed by the
    cluster CA; ``kubectl(*args, stdin=...)`` runs kubectl as admin.
    """

    def __init__(
        self,
        name: str,
        node_dir: Path,
        *,
        bin_dir: Path,
        pki: Path,
        apiserver_port: int,
        issue: Callable[[str, str, str], None],
        kubectl: Callable[..., subprocess.CompletedProcess[str]],
        gpus: int = 1,
        labels: dict[str, str] | None = None,
        tie_to_parent: Callable[[], None] | None = None,
        procs: dict[int, subprocess.Popen[bytes]] | None = None,
    ) -> None:
        self.name = name
        self.dir = node_dir
        self.bin_dir = bin_dir
        self.pki = pki
        self.apiserver_port = apiserver_port
        self._issue = issue
        self._kubectl = kubectl
        self.gpus = gpus
        self.labels = labels or {}
        self._preexec = tie_to_parent
        # The Popen objects of what we started, by pid, so they are reaped: shared with the
        # cluster that made this node, which may be another object than the one stopping it.
        self._procs = procs if procs is not None else {}

    # --- paths ---------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    def load_state(self) -> NodeState | None:
        if not self.state_file.exists():
            return None
        return NodeState(**json.loads(self.state_file.read_text()))

    def _save(self, state: NodeState) -> None:
        self.state_file.write_text(json.dumps(asdict(state)))

    @staticmethod
    def slot_dir(slot: int) -> Path:
        return cache_dir() / "realnode" / f"slot-{slot}"

    def containerd_socket(self, slot: int) -> Path:
        return self.slot_dir(slot) / "state" / "containerd.sock"

    def ctr(self, slot: int, *args: str) -> list[str]:
        return [str(self.bin_dir / "ctr"), f"--address={self.containerd_socket(slot)}", *args]

    # --- lifecycle -------------------------------------------------------------------------
    def up(self, timeout: float = 120.0) -> NodeState:
        self.dir.mkdir(parents=True, exist_ok=True)
        wanted = image_ids()  # read once: podman answers slowly
        slot = self._take_slot(wanted)
        state = NodeState(name=self.name, slot=slot)
        self._save(state)
        net = Addresses(slot)
        try:
            self._network(net)
            self._pki(net)
            state.pids["relay-host"] = self._spawn(
                "relay-host",
                [
                    "socat",
                    f"UNIX-LISTEN:{self.dir / 'api.sock'},fork,unlink-early,mode=600",
                    f"TCP:127.0.0.1:{self.apiserver_port}",
                ],
            )
            state.pids["relay-node"] = self._spawn(
                "relay-node",
                in_netns(
                    net.netns,
                    "socat",
                    f"TCP-LISTEN:{RELAY_PORT},fork,reuseaddr",
                    f"UNIX-CONNECT:{self.dir / 'api.sock'}",
                ),
            )
            state.pids["containerd"] = self._spawn(
                "containerd",
                in_netns(
                    net.netns,
                    str(self.bin_dir / "containerd"),
                    f"--config={self._containerd_config(slot, net)}",
                ),
            )
            self._own_slot(slot, state.pids["containerd"])
            self._save(state)
            self._wait(
                "containerd",
                lambda: (
                    self.containerd_socket(slot).exists()
                    and _run(*self.ctr(slot, "version"), check=False).returncode == 0
                ),
                timeout,
                state,
            )
            self._kill_containers(slot)  # an earlier node's in this slot are not ours to keep
            self._import_images(slot, wanted)
            self._make_cgroup_root(net)
            state.pids["kubelet"] = self._spawn(
                "kubelet", in_netns(net.netns, *self._kubelet_command(net))
            )
            self._save(state)
            self._wait("the node to register", self._registered, timeout, state)
            self._advertise_gpus()
            self._wait("the node to be Ready", self._ready, timeout, state)
        except BaseException:
            self.down()
            raise
        return state

    def down(self, timeout: float = 30.0) -> list[str]:
        """Stop the node's processes, its pods' containers, mounts and cgroups, and its
        network; leave the slot's image store for the next node."""
        state = self.load_state()
        if state is None:
            return []
        stopped = []
        # kubelet first, so that it restarts nothing; the containers while containerd can
        # still kill them; then the shims, which outlive containerd by design.
        for name in ("kubelet", "containerd", "relay-node", "relay-host"):
            if name == "containerd":
                self._kill_containers(state.slot)
            pid = state.pids.get(name)
            if pid and stop_process_group(pid, timeout):
                stopped.append(name)
            if pid and (proc := self._procs.pop(pid, None)) is not None:
                proc.wait()
        self._clear_slot(state.slot)
        self._unmount_under(self.dir / "kubelet")
        self._kubectl(
            "delete", "node", self.name, "--ignore-not-found", "--wait=false", check=False
        )
        self.state_file.unlink(missing_ok=True)
        return stopped

    # --- pieces ---------------------------------------------------------------------------
    @staticmethod
    def _owner_file(slot: int) -> Path:
        return cache_dir() / "realnode" / f"slot-{slot}.owner"

    def _take_slot(self, wanted: ImageIds) -> int:
        """A slot no live process owns (one already holding ``wanted`` first), owned by this
        process until containerd runs (:meth:`_own_slot`); chosen under a lock, so two
        clusters starting at once differ."""
        base = cache_dir() / "realnode"
        base.mkdir(parents=True, exist_ok=True)
        with (base / "slots.lock").open("wb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            free = free_slots()
            if not free:
                raise NodeError(f"all {SLOTS} real-node slots are taken (other clusters run them)")
            # A slot that already holds today's images saves an import of gigabytes (and the
            # disk a second copy would take).
            slot = next((k for k in free if imported_ids(k) == wanted), free[0])
            # Whatever a dead owner left behind is ours to clear now.
            self._clear_slot(slot)
            self._own_slot(slot, os.getpid())
            return slot

    def _own_slot(self, slot: int, pid: int) -> None:
        self._owner_file(slot).write_text(str(pid))

    def _clear_slot(self, slot: int) -> None:
        """Everything a node in ``slot`` runs or holds, gone, but its image store."""
        net = Addresses(slot)
        self._kill_shims(slot)
        self._remove_cgroup_root(net)  # kills what is left in the node's cgroups first
        self._unmount_under(self.slot_dir(slot) / "state")
        self._teardown_network(net)

    def _kill_shims(self, slot: int) -> None:
        """containerd's shims of ``slot`` (each names the slot's socket on its command line)."""
        socket = str(self.containerd_socket(slot))
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
                if (
                    cmdline
                    and cmdline[0].endswith(b"containerd-shim-runc-v2")
                    and any(socket.encode() in arg for arg in cmdline)
                ):
                    os.kill(int(proc.name), 9)

    def _network(self, net: Addresses) -> None:
        _run("ip", "netns", "add", net.netns)
        _run(
            "ip",
            "link",
            "add",
            net.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            net.netns,
        )
        _run("ip", "link", "set", net.host_veth, "up")
        _run("ip", "-n", net.netns, "link", "set", "lo", "up")
        _run("ip", "-n", net.netns, "addr", "add", f"{net.node_ip}/32", "dev", "eth0")
        _run("ip", "-n", net.netns, "link", "set", "eth0", "up")
        # No address on the host's end: the host reaches the node and its pods by route, and
        # the node answers whatever host address the kernel picked as the source.
        _run("ip", "route", "add", f"{net.node_ip}/32", "dev", net.host_veth)
        _run("ip", "route", "add", net.pod_cidr, "via", net.node_ip, "dev", net.host_veth, "onlink")
        _run("ip", "-n", net.netns, "route", "add", "default", "dev", "eth0")
        ns = in_netns(net.netns)
        _run(*ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # Pods reach the API server where in-cluster clients look for it.
        for chain in ("PREROUTING", "OUTPUT"):
            _run(
                *ns, "iptables", "-t", "nat", "-A", chain, "-d", KUBERNETES_SERVICE_IP,
                "-p", "tcp", "--dport", "443",
                "-j", "DNAT", "--to-destination", f"{net.node_ip}:{RELAY_PORT}",
            )  # fmt: skip

    @staticmethod
    def _cgroup_dirs(net: Addresses) -> list[Path]:
        """The node's cgroup root in every v1 hierarchy (kubelet wants them to exist)."""
        base = Path("/sys/fs/cgroup")
        return [
            d / net.cgroup_root.lstrip("/")
            for d in sorted(base.iterdir())
            if d.is_dir() and d.name != "unified" and not d.is_symlink()
        ]

    def _make_cgroup_root(self, net: Addresses) -> None:
        for d in self._cgroup_dirs(net):
            d.mkdir(exist_ok=True)
            if d.parent.name == "cpuset":  # a new cpuset has no CPUs until given its parent's
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    (d / knob).write_text((d.parent / knob).read_text())

    def _remove_cgroup_root(self, net: Addresses) -> None:
        """Remove the node's cgroups, deepest first (a cgroup goes once its tasks have)."""
        for root in self._cgroup_dirs(net):
            if not root.exists():
                continue
            for d in sorted(
                (p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
            ):
                with contextlib.suppress(OSError):
                    for pid in (d / "cgroup.procs").read_text().split():
                        os.kill(int(pid), 9)
                with contextlib.suppress(OSError):
                    d.rmdir()
            with contextlib.suppress(OSError):
                root.rmdir()

    @staticmethod
    def _teardown_network(net: Addresses) -> None:
        # Deleting the namespace deletes both ends of the veth and the routes through it.
        _run("ip", "link", "del", net.host_veth, check=False)
        _run("ip", "netns", "del", net.netns, check=False)

    def _pki(self, net: Addresses) -> None:
        # The node's identity: group system:nodes, user system:node:NAME (bound to the
        # system:node role: the cluster runs RBAC only, no Node authorizer).
        self._issue(
            f"node-{self.name}",
            f"/O=system:nodes/CN=system:node:{self.name}",
            "extendedKeyUsage=clientAuth",
        )
        self._issue(
            f"kubelet-{self.name}",
            f"/CN={self.name}",
            f"subjectAltName=IP:{net.node_ip},DNS:{self.name}\nextendedKeyUsage=serverAuth",
        )
        self._kubectl(
            "create", "clusterrolebinding", f"llmfleet-node-{self.name}",
            "--clusterrole=system:node", f"--user=system:node:{self.name}",
            check=False,
        )  # fmt: skip
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {
                        "server": f"https://127.0.0.1:{RELAY_PORT}",
                        "certificate-authority": str(self.pki / "ca.crt"),
                    },
                }
            ],
            "users": [
                {
                    "name": "node",
                    "user": {
                        "client-certificate": str(self.pki / f"node-{self.name}.crt"),
                        "client-key": str(self.pki / f"node-{self.name}.key"),
                    },
                }
            ],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "node"}}],
            "current-context": "local",
        }
        path = self.dir / "kubelet.kubeconfig"
        path.write_text(json.dumps(kubeconfig))
        path.chmod(0o600)

    def _containerd_config(self, slot: int, net: Addresses) -> Path:
        sd = self.slot_dir(slot)
        cni_conf = self.dir / "cni"
        cni_conf.mkdir(exist_ok=True)
        (cni_conf / "10-llmfleet.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "llmfleet",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": "cni0",
                            "isGateway": True,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": net.pod_cidr, "gateway": net.pod_gateway}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(self.dir / "cni-ipam"),
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                }
            )
        )
        config = f"""version = 3
root = "{sd / "root"}"
state = "{sd / "state"}"

[grpc]
  address = "{self.containerd_socket(slot)}"

[ttrpc]
  address = "{sd / "state" / "containerd.sock.ttrpc"}"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"

[plugins."io.containerd.cri.v1.runtime"]
  enable_selinux = false
  # The sandbox refuses the pause container's oom_score_adj of -998.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        SystemdCgroup = false
  # Pod network namespaces under the slot's state dir, not /run/netns: down() finds and
  # unmounts them there.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{CNI_BIN}"]
    conf_dir = "{cni_conf}"
"""
        path = self.dir / "containerd.toml"
        path.write_text(config)
        return path

    def _kubelet_command(self, net: Addresses) -> list[str]:
        root = self.dir / "kubelet"
        root.mkdir(exist_ok=True)
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # This machine's cgroups are v1 (hybrid); kubelet refuses those unless told.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": net.cgroup_root,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket(net.slot)}",
            "address": net.node_ip,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "tlsCertFile": str(self.pki / f"kubelet-{self.name}.crt"),
            "tlsPrivateKeyFile": str(self.pki / f"kubelet-{self.name}.key"),
            # The API server (logs, exec) presents a client certificate of the cluster CA.
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.pki / "ca.crt")},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "failSwapOn": False,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            # The images are imported, never pulled: never let image GC remove them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "maxPods": 30,
            # Beside the node's other files, not in the host's /var/log/pods.
            "podLogsDir": str(self.dir / "pod-logs"),
            "serializeImagePulls": False,
            "registerWithTaints": [
                {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
                REAL_NODE_TAINT,
            ],
            "nodeStatusReportFrequency": "10s",
            "resolvConf": "",
        }
        path = self.dir / "kubelet.yaml"
        path.write_text(json.dumps(config))
        labels = {
            "kubernetes.io/os": "linux",
            REAL_NODE_LABEL: "true",
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
            "nvidia.com/gpu.count": str(self.gpus),
            **self.labels,
        }
        return [
            str(self.bin_dir / "kubelet"),
            f"--config={path}",
            f"--kubeconfig={self.dir / 'kubelet.kubeconfig'}",
            f"--root-dir={root}",
            f"--hostname-override={self.name}",
            f"--node-ip={net.node_ip}",
            f"--node-labels={','.join(f'{k}={v}' for k, v in labels.items())}",
            "--v=1",
        ]

    def _import_images(self, slot: int, wanted: ImageIds) -> None:
        """Our images (and the pause image) into containerd's k8s.io namespace, each only when
        containerd lacks that exact image id (what ``slot-K.images`` says was imported under
        a name containerd still has); refused, with the numbers, where the disk cannot take it
        (a full disk would fail every other test of the run too)."""
        names = _run(*self.ctr(slot, "-n", "k8s.io", "images", "ls", "-q"), check=False).stdout
        done = {k: v for k, v in imported_ids(slot).items() if k in names.split()}
        for image in (PAUSE_IMAGE, *NODE_IMAGES):
            if image not in wanted:
                raise NodeError(f"{image} is not built: run `make images`")
            if done.get(image) == wanted[image]:
                continue
            size = wanted[image][1]
            if (shortfall := disk_shortfall(self.slot_dir(slot), size)) is not None:
                raise NodeError(f"importing {image}: {shortfall}")
            save = subprocess.Popen(
                ["podman", "save", "--format", "docker-archive", image], stdout=subprocess.PIPE
            )
            assert save.stdout is not None
            # The unpacked snapshot is what containers run from: the layer blobs need not stay.
            imported = subprocess.run(
                self.ctr(
                    slot,
                    "-n",
                    "k8s.io",
                    "images",
                    "import",
                    "--local",
                    "--discard-unpacked-layers",
                    "-",
                ),
                stdin=save.stdout,
                capture_output=True,
                text=True,
            )
            save.stdout.close()
            if save.wait() != 0 or imported.returncode != 0:
                raise NodeError(f"importing {image} failed: {imported.stderr[-2000:]}")
            done[image] = wanted[image]
            _imported_file(slot).write_text(json.dumps(done))
        self._forget_other_images(slot, wanted)

    def _forget_other_images(self, slot: int, wanted: ImageIds) -> None:
        """Remove from the slot's containerd every image record but today's: an import also
        names the image by its id, so a replaced image would keep its gigabytes forever."""
        keep = set(wanted) | {f"sha256:{image_id}" for image_id, _ in wanted.values()}
        ctr = self.ctr(slot, "-n", "k8s.io", "images")
        names = _run(*ctr, "ls", "-q", check=False).stdout.split()
        if stale := [name for name in names if name not in keep]:
            with contextlib.suppress(subprocess.TimeoutExpired):  # the space, not the start
                _run(*ctr, "rm", "--sync", *stale, check=False)

    def _kill_containers(self, slot: int) -> None:
        if not self.containerd_socket(slot).exists():
            return
        ctr = self.ctr(slot, "-n", "k8s.io")
        if _run(*self.ctr(slot, "version"), check=False).returncode != 0:
            return
        for task in _run(*ctr, "tasks", "ls", "-q", check=False).stdout.split():
            _run(*ctr, "tasks", "kill", "-s", "SIGKILL", task, check=False)
        for container in _run(*ctr, "containers", "ls", "-q", check=False).stdout.split():
            _run(*ctr, "tasks", "delete", "-f", container, check=False)
            _run(*ctr, "containers", "delete", container, check=False)

    @staticmethod
    def _unmount_under(path: Path) -> None:
        """Unmount every mount at or below ``path`` (kubelet's bind mount of its root dir onto
        itself, overlay rootfs, tmpfs volumes), deepest first."""
        top = str(path.resolve())
        mounts = [
            mount
            for line in Path("/proc/self/mounts").read_text().splitlines()
            if (mount := line.split()[1]) == top or mount.startswith(top + "/")
        ]
        for mount in sorted(mounts, key=len, reverse=True):
            _run("umount", "-l", mount, check=False)

    def _registered(self) -> bool:
        return self._kubectl("get", "node", self.name, check=False).returncode == 0

    def _ready(self) -> bool:
        out = self._kubectl(
            "get", "node", self.name, "-o",
            "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
            check=False,
        ).stdout  # fmt: skip
        return out.strip() == "True"

    def _advertise_gpus(self) -> None:
        """A fake ``nvidia.com/gpu`` capacity, as the device plugin would report it; kubelet
        keeps extended resources it does not manage across its status updates."""
        gpus = str(self.gpus)
        patch = {
            "status": {
                "capacity": {"nvidia.com/gpu": gpus},
                "allocatable": {"nvidia.com/gpu": gpus},
            }
        }
        self._kubectl(
            "patch", "node", self.name, "--subresource=status", "--type=merge",
            "-p", json.dumps(patch),
        )  # fmt: skip

    def _spawn(self, name: str, cmd: list[str], pass_fds: tuple[int, ...] = ()) -> int:
        logs = self.dir / "logs"
        logs.mkdir(exist_ok=True)
        with (logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                pass_fds=pass_fds,
                preexec_fn=self._preexec,
            )
        self._procs[proc.pid] = proc
        return proc.pid

    def _wait(self, what: str, check: Callable[[], bool], timeout: float, state: NodeState) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            for name, pid in state.pids.items():
                if not pid_alive(pid):
                    raise NodeError(f"{name} of node {self.name} exited: {self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise NodeError(f"timed out waiting for {what} of node {self.name}")
            time.sleep(0.25)

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.dir / "logs" / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


#: The sandbox image containerd runs for every pod (hack/images.sh builds it).
PAUSE_IMAGE = "localhost/llmfleet/pause:1"
#: Our images, imported into every real node (hack/images.sh builds them).
NODE_IMAGES = ("localhost/llmfleet/worker:dev", "localhost/llmfleet/operator:dev")


def leftovers(node_dir: Path, slot: int) -> list[str]:
    """What a stopped node in ``slot`` (files in ``node_dir``) should not have left behind:
    its network namespace, veth, cgroups, mounts, processes. Empty when ``down`` was clean."""
    net = Addresses(slot)
    found = []
    if Path(f"/run/netns/{net.netns}").exists():
        found.append(f"network namespace {net.netns}")
    if Path(f"/sys/class/net/{net.host_veth}").exists():
        found.append(f"interface {net.host_veth}")
    found += [f"cgroup {d}" for d in RealNode._cgroup_dirs(net) if d.exists()]
    roots = (str(node_dir.resolve()), str(RealNode.slot_dir(slot) / "state"))
    found += [
        f"mount {mount}"
        for line in Path("/proc/self/mounts").read_text().splitlines()
        if (mount := line.split()[1]).startswith(roots)
    ]
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            args = (proc / "cmdline").read_bytes().split(b"\0")
            mentions = any(r.encode() in arg for arg in args for r in roots)
            if mentions and pid_alive(int(proc.name)):
                found.append(f"process {proc.name}")
    return found


#: Free disk an image import leaves untouched, beyond twice the image (its blobs and the
#: snapshot unpacked from them exist side by side until the blobs are discarded).
DISK_HEADROOM = 4 * 2**30


def image_ids() -> ImageIds:
    """Each built node image (and the pause image): its id and size in bytes."""
    found = {}
    for image in (PAUSE_IMAGE, *NODE_IMAGES):
        out = _run(
            "podman", "image", "inspect", "--format", "{{.Id}} {{.Size}}", image, check=False
        )
        if out.returncode == 0:
            image_id, size = out.stdout.split()
            found[image] = (image_id, int(size))
    return found


def _imported_file(slot: int) -> Path:
    return cache_dir() / "realnode" / f"slot-{slot}.images"


def imported_ids(slot: int) -> ImageIds:
    """What the last import into ``slot`` recorded (empty when unknown)."""
    with contextlib.suppress(OSError, ValueError):
        return {k: (v[0], v[1]) for k, v in json.loads(_imported_file(slot).read_text()).items()}
    return {}


def free_slots() -> list[int]:
    """Slots no live process owns."""
    free = []
    for slot in range(SLOTS):
        with contextlib.suppress(FileNotFoundError, ValueError):
            if pid_alive(int(RealNode._owner_file(slot).read_text())):
                continue
        free.append(slot)
    return free


def disk_shortfall(path: Path, image_bytes: int) -> str | None:
    """Why the filesystem of ``path`` cannot take an import of ``image_bytes``, or None."""
    while not path.exists():  # a slot not made yet lives where its parent is
        path = path.parent
    free = shutil.disk_usage(path).free
    need = 2 * image_bytes + DISK_HEADROOM
    if free >= need:
        return None
    return f"{path} has {free / 2**30:.1f} GiB free, an import needs {need / 2**30:.1f} GiB"


def why_no_real_node() -> str | None:
    """Why this machine cannot run a real node now, or None when it can: root, the tools
    ``make setup`` builds and installs, the images ``make images`` builds, network namespaces,
    a free slot, and the disk an import needs where no free slot holds today's images."""
    bin_dir = cache_dir() / "bin"
    if os.geteuid() != 0:
        return "a real node needs root"
    missing = [t for t in ("kubelet", "containerd", "ctr") if not (bin_dir / t).exists()]
    missing += [t for t in ("podman", "socat", "nsenter", "iptables", RUNC) if not shutil.which(t)]
    if missing:
        return f"missing {', '.join(missing)} (`make setup` installs them)"
    wanted = image_ids()
    if unbuilt := [i for i in (PAUSE_IMAGE, *NODE_IMAGES) if i not in wanted]:
        return f"{', '.join(unbuilt)} not built (`make images`)"
    probe = f"llmfleet-probe{os.getpid()}"
    made = _run("ip", "netns", "add", probe, check=False)
    _run("ip", "netns", "del", probe, check=False)
    if made.returncode != 0:
        return f"this machine refuses network namespaces: {made.stderr.strip()}"
    free = free_slots()
    if not free:
        return f"all {SLOTS} real-node slots are taken (other clusters run them)"
    if any(imported_ids(k) == wanted for k in free):
        return None
    return disk_shortfall(RealNode.slot_dir(free[0]), sum(size for _, size in wanted.values()))
