"""The pod backer itself: its loop lists the backed pods and LLMDeployments, has the
supervisor run a worker for each pod that wants one, keeps one balancer per LLMDeployment,
follows the workers' readiness with pod status patches, and publishes discovery files."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import aiohttp

from llmfleet_dev.podbacker.balancer import Balancer, client_session
from llmfleet_dev.podbacker.discovery import (
    LABEL_DEPLOYMENT,
    PodView,
    Publisher,
    endpoint_map,
    file_sd_groups,
)
from llmfleet_dev.podbacker.kubeconfig import KubeClient
from llmfleet_dev.podbacker.supervisor import (
    DEFAULT_WORKER_ARGS,
    ExitedWorker,
    ReadinessPatch,
    Supervisor,
    WorkerInfo,
    WorkerProcess,
    probes_client,
    readiness_status,
)
from llmfleet_operator.k8s import ApiError

log = logging.getLogger("podbacker")

LLMD_API = "/apis/llmfleet.io/v1alpha1"


class BackerError(RuntimeError):
    """The pod backer could not start, reach the API server, or stop cleanly."""


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
        self.prestop_seconds = prestop_seconds
        self.threads_per_worker = threads_per_worker
        self.drain_timeout = drain_timeout
        self.poll_interval = poll_interval
        self.probe_interval = probe_interval
        self.sd_file = (sd_file or self.state_dir / "file_sd" / "workers.json").resolve()
        self.endpoints_file = self.state_dir / "endpoints.json"
        self.logs_dir = self.state_dir / "workers"
        self._lock = threading.Lock()
        self._supervisor = Supervisor(
            model_dir=self.model_dir,
            state_dir=self.state_dir,
            logs_dir=self.logs_dir,
            worker_command=self.worker_command,
            worker_args=self.worker_args,
            threads_per_worker=threads_per_worker,
            drain_timeout=drain_timeout,
            prestop_seconds=prestop_seconds,
            vllm_python=self.vllm_python,
            lock=self._lock,
        )
        self._balancers: dict[tuple[str, str], Balancer] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._synced = threading.Event()
        self._failure: BaseException | None = None
        self.last_error: str | None = None
        self._publisher = Publisher()
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
        self._publisher.write(self.sd_file, "[]\n")
        self._publisher.write(self.endpoints_file, "{}\n")
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
            infos = [w.info() for w in self._supervisor.workers.values()]
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
            gone = list(self._supervisor.exited)
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
            return endpoint_map({key: b.url for key, b in self._balancers.items()})

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
            self._supervisor.kill_all_now()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._kick = asyncio.Event()
        self._kube = await KubeClient.connect(self.kubeconfig)
        self._http = client_session()
        self._probes = probes_client()
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
            self._supervisor.reap()
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
        self._supervisor.reconcile({p.uid: p for p in pods if p.wants_worker})
        # One balancer per LLMDeployment that exists (or has pods); kept while it has workers.
        keys = {p.key for p in pods} | (llmds or set())
        keys |= {w.pod.key for w in self._supervisor.workers.values()}
        for key in keys - self._balancers.keys():
            balancer = Balancer(key, self._pick_for(key), self._http)
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
            worker = self._supervisor.workers.get(pod.uid)
            state = worker.state if worker is not None else "none"
            if (state == "ready") != pod.ready:
                await self._patch_readiness(pod, state == "ready", state)

    async def _patch_readiness(self, pod: PodView, ready: bool, state: str) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        status = readiness_status(pod, ready, state, now)
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

    async def _probe_loop(self) -> None:
        while True:
            try:
                if await self._supervisor.probe_all(self._probes):
                    self._publish()
                    if self._kick is not None:
                        self._kick.set()
            except Exception:  # a bug here must not stop the probing, nor the backer
                log.exception("probing workers failed")
            await asyncio.sleep(self.probe_interval)

    def _publish(self) -> None:
        groups = file_sd_groups(w for w in self._supervisor.workers.values() if w.serving)
        self._publisher.write(self.sd_file, json.dumps(groups, indent=1) + "\n")
        self._publisher.write(
            self.endpoints_file, json.dumps(self._endpoint_map(), indent=1) + "\n"
        )

    async def _shutdown(self) -> None:
        await self._unready_all()
        self._supervisor.terminate_all("the pod backer is stopping")
        self._publish()
        while self._supervisor.workers:
            self._supervisor.reap()
            await asyncio.sleep(0.05)
        for balancer in list(self._balancers.values()):
            await balancer.close()
        with self._lock:
            self._balancers.clear()
        self._publish()

    # --- balancing (loop thread only) ------------------------------------------------------
    def _pick_for(self, key: tuple[str, str]) -> Callable[[set[str], int], WorkerProcess | None]:
        """The pick function of LLMDeployment ``key``'s balancer."""
        return lambda exclude, turn: self._supervisor.pick(key, exclude, turn)
