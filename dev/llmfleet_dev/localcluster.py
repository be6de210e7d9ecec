"""A real, local Kubernetes control plane with simulated GPU nodes.

Starts etcd, kube-apiserver (RBAC, ServiceAccount tokens, PodSecurity admission),
kube-controller-manager, kube-scheduler and kwok as host processes on free loopback ports,
and registers kwok nodes that advertise ``nvidia.com/gpu`` capacity. The scheduler really
places pods and really leaves them Pending when GPUs run out; kwok marks scheduled pods
Running and Ready, except pods annotated ``sim.llmfleet.io/never-ready: "true"`` (Running,
never Ready) and ``sim.llmfleet.io/backed: "true"`` (Running, not Ready until the pod backer,
``llmfleet_dev.podbacker``, sees the real worker behind the pod answer ``/ready``).

Standard library only (plus the ``openssl`` command for certificates), so it runs before any
virtual environment exists. Used by ``make cluster-up``/``cluster-down`` and by the pytest
fixtures in ``tests/``.

    PYTHONPATH=dev python3 -m llmfleet_dev.localcluster up [--dir .cluster] [--gpu-nodes 4] ...
    PYTHONPATH=dev python3 -m llmfleet_dev.localcluster down [--dir .cluster]
    PYTHONPATH=dev python3 -m llmfleet_dev.localcluster status [--dir .cluster]

(``PYTHONPATH=dev`` only outside the virtual environment, whose editable install has it.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llmfleet_dev.net import free_port
from llmfleet_dev.wait import WaitTimeoutError, wait_for

if TYPE_CHECKING:
    from llmfleet_dev.realnode import RealNode

ROOT = Path(__file__).resolve().parents[2]
HACK = ROOT / "hack"

GPU_RESOURCE = "nvidia.com/gpu"
NEVER_READY_ANNOTATION = "sim.llmfleet.io/never-ready"
#: A pod the pod backer backs with a real worker: its Ready condition follows that worker's
#: /ready instead of being set by kwok at scheduling (hack/kwok/stages.yaml).
BACKED_ANNOTATION = "sim.llmfleet.io/backed"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
# Order matters: started in this order, stopped in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
SERVICE_CIDR = "10.96.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"


class ClusterError(RuntimeError):
    """The cluster could not be started, reached or stopped."""


@dataclass
class Topology:
    """The simulated nodes: GPU nodes as a GPU node pool has them, plus plain CPU nodes."""

    gpu_nodes: int = 4
    gpus_per_node: int = 8
    cpu_nodes: int = 1
    gpu_product: str = "NVIDIA-H100-80GB-HBM3"
    #: Real kubelet nodes (:mod:`llmfleet_dev.realnode`): pods on them are real containers.
    #: They carry the GPU labels and taint of the kwok GPU nodes, ``real_node_gpus`` fake
    #: ``nvidia.com/gpu``, and the taint :data:`~llmfleet_dev.realnode.REAL_NODE_TAINT`, so only
    #: pods that ask for a real node land there.
    real_nodes: int = 0
    real_node_gpus: int = 4

    def node_manifests(self) -> list[dict[str, object]]:
        """Node objects for kwok to manage (capacity lives in the created status)."""
        nodes: list[dict[str, object]] = []
        for i in range(self.gpu_nodes):
            name = f"gpu-node-{i}"
            nodes.append(
                _node(
                    name,
                    labels={
                        "nvidia.com/gpu.present": "true",
                        "nvidia.com/gpu.product": self.gpu_product,
                        "nvidia.com/gpu.count": str(self.gpus_per_node),
                        "node.kubernetes.io/instance-type": f"sim-gpu-{self.gpus_per_node}x",
                    },
                    taints=[{"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}],
                    capacity={
                        "cpu": "96",
                        "memory": "1Ti",
                        "pods": "110",
                        GPU_RESOURCE: str(self.gpus_per_node),
                    },
                )
            )
        for i in range(self.cpu_nodes):
            nodes.append(
                _node(
                    f"cpu-node-{i}",
                    labels={"node.kubernetes.io/instance-type": "sim-cpu"},
                    taints=[],
                    capacity={"cpu": "32", "memory": "128Gi", "pods": "110"},
                )
            )
        return nodes


def _node(
    name: str,
    labels: dict[str, str],
    taints: list[dict[str, str]],
    capacity: dict[str, str],
) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                **labels,
            },
        },
        "spec": {"taints": taints},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def model_volume(namespace: str, claim: str = "models") -> list[dict[str, object]]:
    """A bound read-only volume holding models, as a platform team provides it.

    The real scheduler will not place a pod whose PersistentVolumeClaim does not exist or is
    unbound, so every namespace that runs ``pvc://`` LLMDeployments needs one. The PV is
    pre-bound to the claim (``claimRef``), so the controller manager binds them at once.
    """
    pv_name = f"{namespace}-{claim}"[:63]
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv_name, "labels": {"llmfleet.io/test-volume": "true"}},
            "spec": {
                "capacity": {"storage": "100Gi"},
                "accessModes": ["ReadOnlyMany"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": "",
                "hostPath": {"path": f"/var/lib/llmfleet/models/{pv_name}"},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": namespace},
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "volumeName": pv_name,
                "resources": {"requests": {"storage": "100Gi"}},
            },
        },
    ]


CRD_FILE = ROOT / "crds" / "llmfleet.io_llmdeployments.yaml"


def operator_command(
    *flags: str, health_port: int | None = None, metrics_port: int | None = None
) -> list[str]:
    """``llmfleet-operator run`` for a local run: loopback ports, plain logs, ``flags`` last
    (every namespace unless a ``--namespace`` is among them)."""
    cmd = [
        sys.executable, "-m", "llmfleet_operator", "run",
        f"--health-port={health_port or free_port()}",
        f"--metrics-port={metrics_port or free_port()}",
        "--bind-address=127.0.0.1", "--log-format=plain", *flags,
    ]  # fmt: skip
    if not any(f.startswith(("--namespace", "-n")) for f in flags):
        cmd.append("--all-namespaces")
    return cmd


def tiny_llmdeployment(
    name: str, namespace: str, *, backed: bool = False, **autoscaling: object
) -> dict[str, object]:
    """An LLMDeployment of the tiny model on one GPU, autoscaled by the operator (Builtin),
    for the demo and the benchmarks; ``autoscaling`` overrides the small defaults.

    ``backed``: its pods carry :data:`BACKED_ANNOTATION`, so they are Ready only while the
    pod backer's worker behind them is (set it where a pod backer runs for the namespace;
    without one such pods never become Ready)."""
    worker: dict[str, object] = {"resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"}}
    if backed:
        worker["podAnnotations"] = {BACKED_ANNOTATION: "true"}
    return {
        "apiVersion": "llmfleet.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"uri": "pvc://models/tiny"},
            "worker": worker,
            "autoscaling": {
                "minReplicas": 1,
                "maxReplicas": 4,
                "targetQueueDepthPerReplica": 2,
                **autoscaling,
            },
        },
    }


@dataclass
class State:
    """What a running cluster left on disk: ports and process ids."""

    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    bin_dir: str = ""
    topology: dict[str, object] = field(default_factory=dict)
    #: Processes started beside the cluster (the demo's operator); stopped first by down().
    extras: dict[str, int] = field(default_factory=dict)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def stop_process_group(pid: int, timeout: float) -> bool:
    """SIGTERM the process group ``pid`` leads, SIGKILL it after ``timeout``; False when it
    was not running."""
    if not pid_alive(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        while pid_alive(pid):
            time.sleep(0.05)
    # Reap it if it is our own child (the pytest fixture starts it in-process).
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return True


def apply_crd(
    kubectl: Callable[..., object], *, field_manager: str | None = None, wait: bool = False
) -> None:
    """Server-side apply the committed LLMDeployment CRD with ``kubectl`` (a callable taking
    kubectl's arguments: :meth:`LocalCluster.kubectl`, ``llmfleet_dev.kube.Kubectl``).
    Idempotent; takes over fields another manager, a Helm install, may own. ``wait``: until
    the CRD is Established (served)."""
    manager = [f"--field-manager={field_manager}"] if field_manager else []
    kubectl("apply", "--server-side", "--force-conflicts", *manager, "-f", str(CRD_FILE))
    if wait:
        kubectl("wait", "--for=condition=Established", "crd/llmdeployments.llmfleet.io")


def _wait(what: str, check: Callable[[], bool], timeout: float, on_fail: str = "") -> None:
    """:func:`~llmfleet_dev.wait.wait_for` ``check`` (backing off from 0.05 to 0.5s). An
    exception from ``check`` ends the wait at once; a timeout raises ClusterError (``on_fail``
    appended)."""
    try:
        wait_for(what, check, timeout, 0.05, backoff=1.5, max_interval=0.5, give_up=(Exception,))
    except WaitTimeoutError:
        raise ClusterError(
            f"timed out after {timeout:.0f}s waiting for {what}. {on_fail}".strip()
        ) from None


class LocalCluster:
    """One local cluster whose files live in ``state_dir``."""

    def __init__(
        self,
        state_dir: Path,
        topology: Topology | None = None,
        bin_dir: Path | None = None,
        tie_to_parent: bool = False,
        audit: bool = False,
    ) -> None:
        self.dir = state_dir.resolve()
        self.topology = topology or Topology()
        self._bin_dir = bin_dir
        # Tests set this so that a killed pytest takes its cluster down with it.
        self._tie_to_parent = tie_to_parent
        # Metadata-level audit log of every request (benchmarks count requests per user).
        self.audit = audit
        # Popen objects of processes we started, kept so they are reaped, not leaked.
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        state = self.load_state()
        if self._bin_dir is None and state is not None and state.bin_dir:
            self._bin_dir = Path(state.bin_dir)

    # --- paths -----------------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (group system:masters)."""
        return self.dir / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.dir / "pki"

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    def bin(self, tool: str) -> str:
        """Absolute path of a cluster tool."""
        assert self._bin_dir is not None
        return str(self._bin_dir / tool)

    def load_state(self) -> State | None:
        if not self.state_file.exists():
            return None
        return State(**json.loads(self.state_file.read_text()))

    def _save_state(self, state: State) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state), indent=2))
        tmp.replace(self.state_file)

    # --- lifecycle -------------------------------------------------------------------------
    def running(self) -> bool:
        """True when a cluster started from this directory still has its API server."""
        state = self.load_state()
        return bool(state and pid_alive(state.pids.get("kube-apiserver", -1)))

    def up(self, timeout: float = 120.0, *, with_real_nodes: bool = True) -> State:
        """Start every component and wait until nodes are Ready. Idempotent."""
        if self.running():
            raise AlreadyRunningError(f"a cluster is already running from {self.dir}")
        for attempt in range(3):
            try:
                return self._up_once(timeout, with_real_nodes)
            except ClusterError as e:
                # A free port is free when picked, not when bound: another process on the
                # machine may take it in between. Pick new ones.
                if "address already in use" not in str(e) or attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _up_once(self, timeout: float, with_real_nodes: bool) -> State:
        if self.load_state() is not None:
            self.down()  # leftovers of a crashed cluster
        if self._bin_dir is None:
            self._bin_dir = ensure_tools()
        if self.dir.exists():
            shutil.rmtree(self.dir)
        for d in (self.dir, self.pki, self.logs, self.dir / "etcd"):
            d.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        state = State(bin_dir=str(self._bin_dir), topology=asdict(self.topology))
        state.ports = {
            "etcd": free_port(),
            "etcd-peer": free_port(),
            "kube-apiserver": free_port(),
            "kube-controller-manager": free_port(),
            "kube-scheduler": free_port(),
            "kwok": free_port(),
        }
        self._save_state(state)
        try:
            self._make_pki()
            self._write_kubeconfigs(state.ports["kube-apiserver"])
            for component in COMPONENTS:
                state.pids[component] = self._start(component, state)
                self._save_state(state)
                self._wait_component(component, state, timeout)
            self._register_nodes()
            self._wait_nodes_ready(timeout)
            if with_real_nodes:
                self.start_real_nodes(timeout)
        except BaseException:
            self.down()
            raise
        return state

    def start_real_nodes(self, timeout: float = 120.0) -> list[RealNode]:
        """Start the topology's real nodes in the running cluster (``up`` does unless told
        not to: the tests start them only when a test asks for one, so a machine that cannot
        run one fails those tests alone)."""
        nodes = self.real_nodes()
        for node in nodes:
            node.up(timeout=max(timeout, 600.0))  # the first image import takes minutes
        return nodes

    def down(self, timeout: float = 20.0) -> list[str]:
        """Stop every process this cluster started; return the names stopped."""
        state = self.load_state()
        if state is None:
            return []
        stopped = []
        for name, pid in state.extras.items():
            if self._stop_pid(pid, timeout):
                stopped.append(name)
        for node in self.real_nodes(on_disk=True):
            stopped += [f"{node.name}/{p}" for p in node.down()]
        for component in reversed(COMPONENTS):
            pid = state.pids.get(component)
            if pid and self._stop_pid(pid, timeout):
                stopped.append(component)
        self.state_file.unlink(missing_ok=True)
        return stopped

    def restart(self, component: str, timeout: float = 60.0) -> None:
        """Stop and start one component (tests use it for API server restarts)."""
        state = self.load_state()
        if state is None:
            raise ClusterError("cluster is not running")
        self._stop_pid(state.pids[component], 20.0)
        state.pids[component] = self._start(component, state)
        self._save_state(state)
        self._wait_component(component, state, timeout)

    def real_nodes(self, *, on_disk: bool = False) -> list[RealNode]:
        """The topology's real nodes, or (``on_disk``) those whose files are under ``nodes/``
        (what ``down`` stops, whatever topology this object was made with)."""
        from llmfleet_dev.realnode import RealNode

        if on_disk:
            names = sorted(p.parent.name for p in (self.dir / "nodes").glob("*/state.json"))
        else:
            names = [f"real-node-{i}" for i in range(self.topology.real_nodes)]
        state = self.load_state()
        return [
            RealNode(
                name,
                self.dir / "nodes" / name,
                bin_dir=Path(state.bin_dir if state else str(self._bin_dir)),
                pki=self.pki,
                apiserver_port=state.ports.get("kube-apiserver", 0) if state else 0,
                issue=self._issue,
                kubectl=self.kubectl,
                gpus=self.topology.real_node_gpus,
                tie_to_parent=_die_with_parent if self._tie_to_parent else None,
                procs=self._procs,
            )
            for name in names
        ]

    def install_crd(self) -> None:
        """Apply the generated LLMDeployment CRD and wait until it is served."""
        apply_crd(self.kubectl, wait=True)

    def prepare_namespace(self, namespace: str) -> None:
        """Create ``namespace`` (if missing) with a bound ``models`` volume in it."""
        if self.kubectl("get", "namespace", namespace, check=False).returncode != 0:
            self.kubectl("create", "namespace", namespace)
        volume = {"apiVersion": "v1", "kind": "List", "items": model_volume(namespace)}
        self.kubectl("apply", "-f", "-", stdin=json.dumps(volume))

    def register_extra(self, name: str, pid: int) -> None:
        """Have ``down`` stop this process too (it must lead its own process group)."""
        state = self.load_state()
        if state is None:
            raise ClusterError("cluster is not running")
        state.extras[name] = pid
        self._save_state(state)

    def stop_component(self, component: str) -> None:
        """Stop one component and leave it stopped (for fault-injection tests)."""
        state = self.load_state()
        if state is None:
            raise ClusterError("cluster is not running")
        self._stop_pid(state.pids[component], 20.0)

    def _stop_pid(self, pid: int, timeout: float) -> bool:
        stopped = self._kill(pid, timeout)
        proc = self._procs.pop(pid, None)
        if proc is not None:
            proc.wait()
        return stopped

    @staticmethod
    def _kill(pid: int, timeout: float) -> bool:
        return stop_process_group(pid, timeout)

    # --- certificates and kubeconfigs --------------------------------------------------------
    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=self.pki)

    def _make_pki(self) -> None:
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        self._openssl(
            "req",
            "-x509",
            *ec,
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "3650",
            "-subj",
            "/CN=llmfleet-local-ca",
        )
        self._openssl(
            "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key"
        )
        self._openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub")
        san = (
            "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,"
            "DNS:kubernetes.default,DNS:kubernetes.default.svc,"
            "DNS:kubernetes.default.svc.cluster.local"
        )
        leaves = {
            "apiserver": ("/CN=kube-apiserver", f"{san}\nextendedKeyUsage=serverAuth"),
            "admin": ("/O=system:masters/CN=llmfleet-admin", "extendedKeyUsage=clientAuth"),
            "controller-manager": (
                "/CN=system:kube-controller-manager",
                "extendedKeyUsage=clientAuth",
            ),
            "scheduler": ("/CN=system:kube-scheduler", "extendedKeyUsage=clientAuth"),
            "kwok": ("/O=system:masters/CN=kwok", "extendedKeyUsage=clientAuth"),
            # What the API server shows a real node's kubelet (logs, exec, port-forward).
            "apiserver-kubelet-client": (
                "/O=system:masters/CN=kube-apiserver-kubelet-client",
                "extendedKeyUsage=clientAuth",
            ),
        }
        for name, (subject, ext) in leaves.items():
            self._issue(name, subject, ext)
        for key in self.pki.glob("*.key"):
            key.chmod(0o600)

    def _issue(self, name: str, subject: str, ext: str) -> None:
        """A key and a certificate signed by the cluster CA."""
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        (self.pki / f"{name}.ext").write_text(ext + "\n")
        self._openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject)
        self._openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "3650",
            "-out",
            f"{name}.crt",
            "-extfile",
            f"{name}.ext",
        )
        (self.pki / f"{name}.key").chmod(0o600)

    def _write_kubeconfig(self, path: Path, cert: str, port: int) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "llmfleet-local",
                    "cluster": {
                        "server": f"https://127.0.0.1:{port}",
                        "certificate-authority": str(self.pki / "ca.crt"),
                    },
                }
            ],
            "users": [
                {
                    "name": cert,
                    "user": {
                        "client-certificate": str(self.pki / f"{cert}.crt"),
                        "client-key": str(self.pki / f"{cert}.key"),
                    },
                }
            ],
            "contexts": [
                {"name": "llmfleet-local", "context": {"cluster": "llmfleet-local", "user": cert}}
            ],
            "current-context": "llmfleet-local",
        }
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)

    def _write_kubeconfigs(self, port: int) -> None:
        for user in ("admin", "controller-manager", "scheduler", "kwok"):
            path = self.kubeconfig if user == "admin" else self.dir / f"{user}.kubeconfig"
            self._write_kubeconfig(path, user, port)

    def kubeconfig_for(self, user: str, groups: tuple[str, ...] = ()) -> Path:
        """A kubeconfig for a client-certificate user (e.g. to tell the operator's requests
        apart in the audit log, or to test RBAC as a plain user)."""
        state = self.load_state()
        if state is None:
            raise ClusterError("cluster is not running")
        name = f"user-{user}"
        subject = "".join(f"/O={g}" for g in groups) + f"/CN={user}"
        self._issue(name, subject, "extendedKeyUsage=clientAuth")
        path = self.dir / f"{name}.kubeconfig"
        self._write_kubeconfig(path, name, state.ports["kube-apiserver"])
        return path

    # --- processes ---------------------------------------------------------------------------
    def _command(self, component: str, state: State) -> list[str]:
        p, pki = state.ports, self.pki
        etcd_url = f"http://127.0.0.1:{p['etcd']}"
        if component == "etcd":
            peer = f"http://127.0.0.1:{p['etcd-peer']}"
            return [
                self.bin("etcd"),
                "--name=local",
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=local={peer}",
                "--unsafe-no-fsync",
                "--quota-backend-bytes=4294967296",
                "--log-level=warn",
            ]
        if component == "kube-apiserver":
            return [
                self.bin("kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={p['kube-apiserver']}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--service-account-issuer={SA_ISSUER}",
                f"--api-audiences={SA_ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--authorization-mode=RBAC",
                # On top of the defaults: OpenShift and hardened clusters run it, and it refuses
                # blockOwnerDeletion from anyone who may not update the owner's finalizers.
                "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # Privileged pods are allowed cluster-wide so that Pod Security admission,
                # not this flag, is what rejects them in restricted namespaces.
                "--allow-privileged=true",
                # A loopback advertise address can't be an Endpoints address.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                "--kubelet-preferred-address-types=InternalIP",
                *self._audit_flags(),
                "--v=0",
            ]
        if component in ("kube-controller-manager", "kube-scheduler"):
            kc = self.dir / (
                "controller-manager.kubeconfig"
                if component == "kube-controller-manager"
                else "scheduler.kubeconfig"
            )
            cmd = [
                self.bin(component),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={p[component]}",
                f"--cert-dir={self.dir / component}",
                "--leader-elect=false",
                "--v=0",
            ]
            if component == "kube-controller-manager":
                cmd += [
                    f"--service-account-private-key-file={pki / 'sa.key'}",
                    f"--root-ca-file={pki / 'ca.crt'}",
                    "--use-service-account-credentials=true",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--controllers=*",
                    # Fast garbage collection and rollouts keep tests short.
                    "--concurrent-gc-syncs=20",
                    "--concurrent-deployment-syncs=10",
                    "--concurrent-replicaset-syncs=10",
                ]
            return cmd
        if component == "kwok":
            return [
                self.bin("kwok"),
                f"--kubeconfig={self.dir / 'kwok.kubeconfig'}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                f"--config={HACK / 'kwok' / 'stages.yaml'}",
                "--node-lease-duration-seconds=40",
                "--cidr=10.244.0.0/16",
                "--node-ip=10.240.0.1",
                f"--server-address=127.0.0.1:{p['kwok']}",
            ]
        raise ClusterError(f"unknown component {component}")

    @property
    def audit_log(self) -> Path:
        """Where the API server writes its audit log (when started with ``audit=True``)."""
        return self.logs / "audit.jsonl"

    def _audit_flags(self) -> list[str]:
        if not self.audit:
            return []
        policy = self.dir / "audit-policy.json"
        policy.write_text(
            json.dumps(
                {
                    "apiVersion": "audit.k8s.io/v1",
                    "kind": "Policy",
                    "omitStages": ["RequestReceived"],
                    "rules": [{"level": "Metadata"}],
                }
            )
        )
        return [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-mode=batch",
            "--audit-log-batch-max-wait=1s",
        ]

    def _start(self, component: str, state: State) -> int:
        log = (self.logs / f"{component}.log").open("ab")
        proc = subprocess.Popen(
            self._command(component, state),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.dir,
            start_new_session=True,  # its own process group: down() kills the whole group
            preexec_fn=_die_with_parent if self._tie_to_parent else None,
            env={**os.environ, "HOME": str(self.dir)},
        )
        log.close()
        self._procs[proc.pid] = proc
        return proc.pid

    def _log_tail(self, component: str, lines: int = 15) -> str:
        path = self.logs / f"{component}.log"
        if not path.exists():
            return ""
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        return f"last lines of {path}:\n" + "\n".join(tail)

    def _https_ok(self, port: int, path: str, client_cert: bool) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        if client_cert:
            ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        else:  # controller-manager and scheduler serve self-signed certificates
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        try:
            with urllib.request.urlopen(
                f"https://127.0.0.1:{port}{path}", context=ctx, timeout=2
            ) as r:
                return int(r.status) == 200
        except OSError:
            return False

    def _wait_component(self, component: str, state: State, timeout: float) -> None:
        pid = state.pids[component]

        def healthy() -> bool:
            if not pid_alive(pid):
                raise ClusterError(
                    f"{component} exited during start-up. {self._log_tail(component)}"
                )
            port = state.ports[component]
            if component == "etcd":
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                        return b'"true"' in r.read()
                except OSError:
                    return False
            if component == "kube-apiserver":
                return self._https_ok(port, "/readyz", client_cert=True)
            if component == "kwok":
                return _port_open(port)
            return self._https_ok(port, "/healthz", client_cert=False)

        _wait(f"{component} to become healthy", healthy, timeout, self._log_tail(component))

    # --- nodes -------------------------------------------------------------------------------
    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run our kubectl against this cluster as admin."""
        return subprocess.run(
            [self.bin("kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def _register_nodes(self) -> None:
        items = self.topology.node_manifests()
        self.kubectl(
            "create",
            "-f",
            "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}),
        )

    def _wait_nodes_ready(self, timeout: float) -> None:
        want = self.topology.gpu_nodes + self.topology.cpu_nodes

        def ready() -> bool:
            out = self.kubectl(
                "get",
                "nodes",
                "-o",
                "jsonpath={range .items[*]}{.status.conditions[?(@.type=='Ready')].status}"
                "{'\\n'}{end}",
                check=False,
            ).stdout.split()
            # The default ServiceAccount shows the controller manager's token controllers work.
            sa = (
                self.kubectl(
                    "get", "serviceaccount", "default", "-n", "default", check=False
                ).returncode
                == 0
            )
            return sa and out.count("True") == want

        _wait(
            f"{want} nodes Ready and the default ServiceAccount",
            ready,
            timeout,
            self._log_tail("kwok"),
        )


class AlreadyRunningError(ClusterError):
    """``up`` was asked for while a cluster from the same directory is running."""


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies (Linux prctl)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def ensure_tools() -> Path:
    """Build (first time) or locate the pinned cluster tools; return their directory."""
    out = (
        subprocess.run(
            ["bash", str(HACK / "tools.sh")], check=True, stdout=subprocess.PIPE, text=True
        )
        .stdout.strip()
        .splitlines()
    )
    return Path(out[-1])


@contextlib.contextmanager
def running_cluster(state_dir: Path, topology: Topology | None = None) -> Iterator[LocalCluster]:
    """Start a cluster for the duration of a ``with`` block."""
    cluster = LocalCluster(state_dir, topology)
    cluster.up()
    try:
        yield cluster
    finally:
        cluster.down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("action", choices=["up", "down", "status", "restart"])
    parser.add_argument("component", nargs="?", choices=COMPONENTS)
    parser.add_argument("--dir", type=Path, default=ROOT / ".cluster")
    parser.add_argument(
        "--gpu-nodes", type=int, default=int(os.environ.get("LLMFLEET_GPU_NODES", "4"))
    )
    parser.add_argument(
        "--gpus-per-node", type=int, default=int(os.environ.get("LLMFLEET_GPUS_PER_NODE", "8"))
    )
    parser.add_argument(
        "--cpu-nodes", type=int, default=int(os.environ.get("LLMFLEET_CPU_NODES", "1"))
    )
    parser.add_argument(
        "--real-nodes",
        type=int,
        default=int(os.environ.get("LLMFLEET_REAL_NODES", "0")),
        help="real kubelet nodes beside the kwok ones (needs `make images`)",
    )
    args = parser.parse_args(argv)
    cluster = LocalCluster(
        args.dir,
        Topology(args.gpu_nodes, args.gpus_per_node, args.cpu_nodes, real_nodes=args.real_nodes),
    )
    if args.action == "up":
        try:
            start = time.monotonic()
            state = cluster.up()
        except AlreadyRunningError as e:
            print(f"{e}; `make cluster-down` stops it.")
            return 0
        except ClusterError as e:
            print(f"cluster-up failed: {e}", file=sys.stderr)
            return 1
        print(
            f"cluster up in {time.monotonic() - start:.1f}s: "
            f"API server https://127.0.0.1:{state.ports['kube-apiserver']}, "
            f"{args.gpu_nodes} GPU nodes x {args.gpus_per_node} {GPU_RESOURCE}, "
            f"{args.cpu_nodes} CPU nodes, {args.real_nodes} real nodes"
        )
        print(f"export KUBECONFIG={cluster.kubeconfig}")
        return 0
    if args.action == "down":
        stopped = cluster.down()
        print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
        return 0
    if args.action == "restart":
        if not args.component:
            parser.error("restart needs a component")
        cluster.restart(args.component)
        return 0
    state = cluster.load_state()
    if state is None or not cluster.running():
        print("no cluster running")
        return 1
    for name in COMPONENTS:
        alive = "running" if pid_alive(state.pids.get(name, -1)) else "STOPPED"
        print(f"{name:26} pid {state.pids.get(name)}  {alive}")
    for node in cluster.real_nodes(on_disk=True):
        node_state = node.load_state()
        for name, pid in (node_state.pids if node_state else {}).items():
            alive = "running" if pid_alive(pid) else "STOPPED"
            print(f"{node.name + '/' + name:26} pid {pid}  {alive}")
    print(f"KUBECONFIG={cluster.kubeconfig}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
