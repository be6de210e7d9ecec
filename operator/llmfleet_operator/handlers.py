"""Thin kopf wiring: watch events feed the cache and the work queue; nothing else here.

Only ``on.event`` handlers are used, all ``async`` (kopf runs plain functions in a thread
pool, and the cache and the work queue belong to the event loop). The reconcile is
level-based (it looks at the whole state each time), so kopf needs no finalizers, no
progress annotations and no diff-base on our objects, and GitOps tools see no
operator-written metadata. Kopf's storage settings still
point at the ``llmfleet.io/`` prefix so nothing under ``kopf.zalando.org`` ever appears.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf

from llmfleet_operator import login, metrics
from llmfleet_operator.analysis_loop import AnalysisLoop
from llmfleet_operator.api import GROUP, LABEL_DEPLOYMENT, PLURAL, VERSION
from llmfleet_operator.autoscale_loop import AutoscaleLoop
from llmfleet_operator.cache import Cache, Key
from llmfleet_operator.free_gpus import FreeGpus
from llmfleet_operator.k8s import Kube
from llmfleet_operator.leader import LeaderDuties, LeaderElector, default_identity, own_namespace
from llmfleet_operator.priming import prime
from llmfleet_operator.reconciler import Reconciler
from llmfleet_operator.settings import OperatorSettings
from llmfleet_operator.workqueue import WorkQueue

log = logging.getLogger("llmfleet.operator")
OWNED = {LABEL_DEPLOYMENT: kopf.PRESENT}
#: Seconds a child's change waits for the rest of its burst before the fleet is reconciled.
CHILD_EVENT_DELAY = 1.0


def _source(memo: kopf.Memo) -> login.Source:
    config: OperatorSettings = memo.config
    return login.Source(kubeconfig=config.kubeconfig, context=config.context)


@kopf.on.login()
async def authenticate(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """kopf's watches log in from the same configuration as our client: one user for both
    (kopf calls this again when the credentials expire or are refused)."""
    try:
        creds = await login.load(_source(memo))
    except login.LoginError as e:
        raise kopf.LoginError(str(e)) from e
    return kopf.ConnectionInfo(
        server=creds.server,
        ca_path=creds.ca_path,
        insecure=creds.insecure,
        scheme=creds.scheme,
        token=creds.token,
        certificate_path=creds.certificate_path,
        private_key_path=creds.private_key_path,
        proxy_url=creds.proxy_url,
        expiration=creds.expires,
    )


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Configure kopf and start the reconcile workers."""
    config: OperatorSettings = memo.config
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.enabled = False  # we post our own, meaningful Events
    settings.scanning.disabled = True  # no cluster-wide CRD/namespace listing needed
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    # Only the fleets' pods, filtered by the API server: kopf would otherwise stream (and
    # keep a memory of) every pod in the cluster. GPU accounting watches bound pods itself.
    settings.watching.label_selectors["v1", "pods"] = LABEL_DEPLOYMENT

    source = _source(memo)
    try:
        credentials = await login.load(source)
    except login.LoginError as e:
        raise kopf.PermanentError(str(e)) from e
    kube = Kube(credentials, relogin=lambda: login.load(source))
    cache = Cache()
    # Nodes and device-holding pods, watched cluster-wide (unless the install may not).
    free_gpus = FreeGpus(kube, enabled=config.gpu_capacity_view == "cluster")
    # The loops only read the cache and enqueue; the reconciler reads their views. Nothing
    # holds a reference back.
    autoscaler = AutoscaleLoop(
        cache,
        enqueue=lambda key: queue.add(key),
        kube=kube,
        prometheus_url=config.prometheus_url,
        interval=config.autoscale_interval_seconds,
        rate_window=config.rate_window,
        capacity=free_gpus.for_spec,
        allowed_urls=config.allowed_prometheus_urls,
    )
    analysis = AnalysisLoop(
        cache,
        enqueue=lambda key: queue.add(key),
        prometheus_url=config.prometheus_url,
        min_window_seconds=config.analysis_min_window_seconds,
        allowed_urls=config.allowed_prometheus_urls,
    )
    reconciler = Reconciler(
        kube,
        cache,
        scaling=autoscaler,
        analysis=analysis,
        free_gpus=free_gpus,
        monitoring_namespace=config.monitoring_namespace,
    )

    async def handle(key: Key) -> None:
        result = await reconciler.reconcile(key)
        metrics.QUEUE_DEPTH.set(len(queue))
        if result.requeue_after:
            queue.add_after(key, result.requeue_after)

    queue: WorkQueue[Key] = WorkQueue(handle, workers=config.workers)
    memo.kube, memo.cache, memo.reconciler, memo.queue = kube, cache, reconciler, queue
    # GPU accounting lists, then watches, while the cache primes (every replica: read-only).
    memo.free_gpus = free_gpus
    free_gpus.start()
    # No reconcile before one full LIST of every kind: a half-filled cache would write a
    # healthy fleet as not ready. Every primed LLMDeployment gets its first reconcile.
    await prime(kube, cache, config.namespaces)
    # Bounded: a slow or refused view only makes the first messages say "unknown".
    await free_gpus.wait_synced(within=30.0)
    memo.autoscaler, memo.analysis = autoscaler, analysis
    duties = LeaderDuties(queue, analysis, autoscaler, cache)
    memo.duties = duties
    # Per-fleet and GPU gauges, computed at scrape time; the leader's only.
    metrics.install(
        metrics.FleetCollector(
            cache, lambda: duties.leading, autoscaler.last_signals, free_gpus.totals
        )
    )
    memo.autoscaler_task = asyncio.create_task(autoscaler.run(), name="llmfleet-autoscaler")
    if config.leader_election:
        autoscaler.active = False  # a standby until the Lease is ours
        metrics.LEADER.set(0)
        elector = LeaderElector(
            kube,
            config.leader_election_namespace or own_namespace(),
            config.leader_election_id,
            config.identity or default_identity(),
        )
        memo.elector = elector
        memo.election_task = asyncio.create_task(
            elector.run(duties.start, duties.stop), name="llmfleet-leader-election"
        )
    else:
        metrics.LEADER.set(1)
        await duties.start()
    log.info(
        "operator started",
        extra={
            "namespaces": list(config.namespaces) or "all",
            "leader_election": config.leader_election,
        },
    )


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop the workers, hand the Lease back and close the API client."""
    for name in ("election_task", "autoscaler_task"):
        task: asyncio.Task[None] | None = memo.get(name)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    free_gpus: FreeGpus | None = memo.get("free_gpus")
    if free_gpus is not None:
        await free_gpus.stop()
    duties: LeaderDuties | None = memo.get("duties")
    if duties is not None:
        await duties.stop()
    elector: LeaderElector | None = memo.get("elector")
    if elector is not None:
        await elector.release()  # after the last write: the next leader starts at once
    kube: Kube | None = memo.get("kube")
    if kube is not None:
        await kube.close()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def llmdeployment_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """An LLMDeployment changed: remember it and reconcile it."""
    key = memo.cache.observe_llmd(type, body)
    metrics.MANAGED.set(len(memo.cache.llmds))
    if type == "DELETED":
        memo.queue.forget(key)
        memo.autoscaler.forget(key)
        memo.analysis.forget(key)
        metrics.forget_fleet(key)
        memo.cache.children.pop(key, None)
        memo.cache.pods.pop(key, None)
        return
    memo.queue.add(key)


def _child_event(type_: str | None, body: kopf.Body, memo: kopf.Memo) -> None:
    key = memo.cache.observe_child(type_, body)
    if key is None:
        # Not a fleet's: if it holds (or held) the name of a child we want, that fleet looks
        # again (its creation waits for this name to be free).
        name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
        key = (namespace, name.removesuffix("-canary"))
    if key in memo.cache.llmds:
        # A fleet's children change in bursts (a Deployment's replicas, updated, ready and
        # available counts; each pod's phases): one reconcile, and one status write, for
        # what a burst says. Changes to the LLMDeployment itself are acted on at once.
        memo.queue.add_after(key, CHILD_EVENT_DELAY)


@kopf.on.event("apps", "v1", "deployments")
async def deployment_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A worker Deployment changed (scaled, rolled, edited, deleted)."""
    _child_event(type, body, memo)


@kopf.on.event("", "v1", "services")
async def service_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A worker Service changed."""
    _child_event(type, body, memo)


@kopf.on.event("policy", "v1", "poddisruptionbudgets")
async def pdb_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A worker PodDisruptionBudget changed."""
    _child_event(type, body, memo)


@kopf.on.event("networking.k8s.io", "v1", "networkpolicies")
async def network_policy_event(
    type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    """A worker NetworkPolicy changed (edited, deleted)."""
    _child_event(type, body, memo)


@kopf.on.event("", "v1", "pods", labels=OWNED)
async def pod_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A worker pod changed (scheduled, ready, Pending for GPUs, gone)."""
    _child_event(type, body, memo)
