"""Pure builders: one LLMDeployment -> the children it owns (as plain dicts).

One function per child kind, no client in sight (as KubeAI's ``engine_vllm.go``). The
pods pass Pod Security "restricted": non-root, no privilege escalation, every capability
dropped, RuntimeDefault seccomp, read-only root filesystem with emptyDirs where the worker
writes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Final

from llmfleet_operator.api import (
    API_VERSION,
    CANARY_TRACK,
    KIND,
    LABEL_DEPLOYMENT,
    LABEL_REVISION,
    LABEL_TRACK,
    STABLE_TRACK,
    AutoscalingMode,
    Engine,
    LLMDeploymentSpec,
    ServiceType,
)

LABEL_COMPONENT: Final = "app.kubernetes.io/component"
WORKER_PORT_NAME: Final = "http"
MODEL_MOUNT: Final = "/models"
HF_HOME: Final = "/var/cache/huggingface"
#: The worker image's USER (Dockerfile.worker). vLLM's image runs as root unless told
#: otherwise; it runs as any UID with a writable HOME (an emptyDir), so its pods get this too.
WORKER_UID: Final = 65532
#: Seconds the worker gets to finish in-flight requests after SIGTERM.
DRAIN_SECONDS: Final = 120
#: preStop pause so that endpoints stop routing to the pod before it stops admitting.
PRESTOP_SECONDS: Final = 5
#: Startup probe budget for model loading: period * failureThreshold = 30 minutes.
STARTUP_PERIOD: Final = 10
STARTUP_FAILURES: Final = 180
GPU_TOLERATION_EFFECT: Final = "NoSchedule"
#: engine vllm: the server the pod runs (the vllm/vllm-openai image's own entrypoint).
VLLM_COMMAND: Final = ("vllm", "serve")
#: engine vllm: --max-num-seqs when worker.maxNumSeqs is unset (vLLM's own default depends
#: on the device it finds, so the operator always says it: the autoscaler counts on it).
VLLM_DEFAULT_MAX_NUM_SEQS: Final = 256
#: engine vllm: HOME (vLLM's config and compile caches, ~/.cache and ~/.config), an emptyDir
#: because the root filesystem is read-only.
VLLM_HOME: Final = "/home/vllm"
#: On the stable Deployment: the spec its pod template was built from, written with the
#: template itself (no write of its own). Once ``status.currentRevision`` names the template's
#: revision, this is the rollback target.
ANNOTATION_TEMPLATE_SPEC: Final = "llmfleet.io/template-spec"
#: On the stable Deployment while its template runs another revision (a rollout under way, or
#: one that rolled back): the last revision that was fully Ready and the spec that built it,
#: so that a rollback can rebuild its pods after the spec and the template have moved on.
#: Written in the same apply that moves the template.
ANNOTATION_STABLE_REVISION: Final = "llmfleet.io/stable-revision"
ANNOTATION_STABLE_SPEC: Final = "llmfleet.io/stable-spec"
#: The label every namespace carries with its own name (Kubernetes sets it).
NAMESPACE_NAME_LABEL: Final = "kubernetes.io/metadata.name"
#: The operator's default for the namespace Prometheus scrapes worker metrics from.
DEFAULT_MONITORING_NAMESPACE: Final = "monitoring"


@dataclass(frozen=True)
class Owner:
    """The identity of the LLMDeployment that owns the children."""

    name: str
    namespace: str
    uid: str
    generation: int = 0

    @classmethod
    def of(cls, body: dict[str, Any]) -> Owner:
        """From an LLMDeployment object as the API server returns it."""
        meta = body["metadata"]
        return cls(meta["name"], meta["namespace"], meta["uid"], int(meta.get("generation", 0)))


def owner_reference(owner: Owner) -> dict[str, Any]:
    """Makes the child garbage-collected with its owner; controller=true marks us."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


_LATER_WORKER_FIELDS: Final = ("max_num_seqs",)


def revision_of(spec: LLMDeploymentSpec) -> str:
    """A short hash of everything that changes the worker pods; a new one rolls out.

    Replica counts, autoscaling and rollout settings are not part of it: changing them must
    not restart pods.
    """
    # Fields added after v0.1, while unset, are left out: an upgraded operator must not
    # restart every worker of a spec that does not use them.
    later = {name for name in _LATER_WORKER_FIELDS if getattr(spec.worker, name) is None}
    relevant = {
        "model": spec.model.model_dump(mode="json", by_alias=True),
        "worker": spec.worker.model_dump(mode="json", by_alias=True, exclude=later),
        "auth": spec.auth.model_dump(mode="json", by_alias=True),
        "port": spec.service.port,
    }
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()
    return digest[:10]


def selector_labels(owner: Owner) -> dict[str, str]:
    """What the Service and ``status.selector`` select: every worker pod of the owner."""
    return {LABEL_DEPLOYMENT: owner.name}


def selector_string(owner: Owner) -> str:
    """``status.selector`` in label-selector syntax (for the scale subresource)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(owner).items()))


def common_labels(owner: Owner) -> dict[str, str]:
    """Labels on every child object."""
    return {
        "app.kubernetes.io/name": "llmfleet-worker",
        "app.kubernetes.io/instance": owner.name,
        "app.kubernetes.io/managed-by": "llmfleet-operator",
        LABEL_DEPLOYMENT: owner.name,
    }


def _meta(owner: Owner, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(owner)],
    }


def served_model_name(owner: Owner, spec: LLMDeploymentSpec) -> str:
    """The id clients send as ``model``."""
    return spec.model.served_name(owner.name)


def model_location(
    spec: LLMDeploymentSpec,
) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """(what the worker's ``--model`` gets, volumes, volume mounts) for ``spec.model.uri``."""
    uri = spec.model.uri
    if uri.startswith("pvc://"):
        claim, _, sub = uri.removeprefix("pvc://").partition("/")
        volume = {"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        mount = {"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True}
        return f"{MODEL_MOUNT}/{sub}".rstrip("/"), [volume], [mount]
    if uri.startswith("hf://"):
        revision = f"@{spec.model.revision}" if spec.model.revision else ""
        return f"{uri}{revision}", [], []
    return uri.removeprefix("file://"), [], []


def _secret_env(name: str, ref: Any) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def worker_env(owner: Owner, spec: LLMDeploymentSpec, model_arg: str) -> list[dict[str, Any]]:
    """The worker's settings; secrets only by reference, never inline."""
    env: list[dict[str, Any]] = [
        {"name": "LLMFLEET_MODEL", "value": model_arg},
        {"name": "LLMFLEET_SERVED_MODEL_NAME", "value": served_model_name(owner, spec)},
        {"name": "LLMFLEET_DTYPE", "value": str(spec.model.dtype)},
        {"name": "LLMFLEET_QUANTIZATION", "value": str(spec.model.quantization)},
        {"name": "LLMFLEET_HOST", "value": "0.0.0.0"},  # noqa: S104 - the pod's own interface
        {"name": "LLMFLEET_PORT", "value": str(spec.service.port)},
        {"name": "LLMFLEET_DRAIN_TIMEOUT", "value": str(DRAIN_SECONDS)},
        {"name": "HF_HOME", "value": HF_HOME},
    ]
    if spec.worker.resources.gpus > 0:
        # The worker lays the model over exactly these, and refuses to start seeing fewer.
        env.append({"name": "LLMFLEET_NUM_GPUS", "value": str(spec.worker.resources.gpus)})
    if spec.model.max_model_len is not None:
        # Only when the user chose one: otherwise the worker takes the model's own length.
        env.append({"name": "LLMFLEET_MAX_MODEL_LEN", "value": str(spec.model.max_model_len)})
    if spec.worker.max_num_seqs is not None:
        env.append({"name": "LLMFLEET_MAX_NUM_SEQS", "value": str(spec.worker.max_num_seqs)})
    return env + _secrets_and_user_env(spec, api_key_env="LLMFLEET_API_KEY")


def max_num_seqs(spec: LLMDeploymentSpec) -> int | None:
    """The --max-num-seqs a worker runs with, when the operator knows it without asking the
    worker: the autoscaler's capacity of one worker. None for engine llmfleet with
    maxNumSeqs unset (the worker exports what it runs with)."""
    if spec.worker.engine is Engine.VLLM:
        return spec.worker.max_num_seqs or VLLM_DEFAULT_MAX_NUM_SEQS
    return spec.worker.max_num_seqs


def vllm_args(owner: Owner, spec: LLMDeploymentSpec) -> list[str]:
    """``vllm serve`` flags for the spec, then ``worker.args`` (which may not repeat them)."""
    m = spec.model
    uri = m.uri
    if uri.startswith("hf://"):
        model = uri.removeprefix("hf://")
    else:
        model, _, _ = model_location(spec)
    args = [
        "--model", model,
        "--served-model-name", served_model_name(owner, spec),
        "--host", "0.0.0.0",  # noqa: S104 - the pod's own interface
        "--port", str(spec.service.port),
        "--dtype", str(m.dtype),  # auto | bfloat16 | float16 | float32: vLLM's names too
        "--tensor-parallel-size", str(max(spec.worker.resources.gpus, 1)),
        "--max-num-seqs", str(max_num_seqs(spec)),
    ]  # fmt: skip
    if uri.startswith("hf://") and m.revision:
        # A Hugging Face revision (branch, tag or commit); for pvc:// and file:// the
        # revision is our label only. vLLM takes the tokenizer's from it too.
        args += ["--revision", m.revision]
    if m.max_model_len is not None:
        args += ["--max-model-len", str(m.max_model_len)]
    # quantization none: no flag, so vLLM serves a pre-quantized checkpoint by its config's
    # method; int8 has no vLLM equivalent and is refused at admission (api.VLLM_INT8_MESSAGE).
    return [*args, *spec.worker.args]


def vllm_env(spec: LLMDeploymentSpec) -> list[dict[str, Any]]:
    """vLLM's environment: writable caches, no usage reporting, secrets by reference."""
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": VLLM_HOME},
        {"name": "HF_HOME", "value": HF_HOME},
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
        {"name": "DO_NOT_TRACK", "value": "1"},
    ]
    # vLLM checks the key on /v1/*; /health and /metrics stay open to probes and Prometheus.
    return env + _secrets_and_user_env(spec, api_key_env="VLLM_API_KEY")


def _secrets_and_user_env(spec: LLMDeploymentSpec, api_key_env: str) -> list[dict[str, Any]]:
    """What every engine's container gets last: the Hugging Face token and the API key by
    Secret reference (under the name the engine reads), then ``worker.env``."""
    env: list[dict[str, Any]] = []
    if spec.model.hf_token_secret_ref is not None:
        env.append(_secret_env("HF_TOKEN", spec.model.hf_token_secret_ref))
    if spec.auth.api_key_secret_ref is not None:
        env.append(_secret_env(api_key_env, spec.auth.api_key_secret_ref))
    for var in spec.worker.env:
        env.append(var.model_dump(mode="json", by_alias=True, exclude_none=True))
    return env


def _probe(path: str, period: int, failures: int, timeout: int = 5) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": WORKER_PORT_NAME},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def pod_template(
    owner: Owner, spec: LLMDeploymentSpec, revision: str, track: str
) -> dict[str, Any]:
    """The worker pod template."""
    w = spec.worker
    model_arg, volumes, mounts = model_location(spec)
    gpus = str(w.resources.gpus)
    limits: dict[str, str] = {"memory": str(w.resources.memory)}
    if w.resources.gpus > 0:
        limits[w.resources.gpu_resource_name] = gpus
    vllm = w.engine is Engine.VLLM
    container: dict[str, Any] = {
        "name": "worker",
        "image": w.image,
        **(
            {"command": list(VLLM_COMMAND), "args": vllm_args(owner, spec)}
            if vllm
            else {"args": ["serve", *w.args]}
        ),
        "env": vllm_env(spec) if vllm else worker_env(owner, spec, model_arg),
        "ports": [
            {"name": WORKER_PORT_NAME, "containerPort": spec.service.port, "protocol": "TCP"}
        ],
        "resources": {
            "requests": {"cpu": str(w.resources.cpu), "memory": str(w.resources.memory)},
            "limits": limits,
        },
        "startupProbe": _probe("/health", STARTUP_PERIOD, STARTUP_FAILURES),
        # A worker that refuses to start (a model it cannot load, a maxModelLen the model does
        # not allow) says why in its last log lines: they become the termination message.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        # vLLM has no readiness endpoint of its own: /health answers once the engine is up.
        "readinessProbe": _probe("/health" if vllm else "/ready", 5, 2),
        "livenessProbe": _probe("/health", 10, 3),
        # Endpoints stop routing first; then SIGTERM makes the worker drain in-flight requests.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SECONDS}}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            *mounts,
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir, not the host's
            {"name": "hf-cache", "mountPath": HF_HOME},
            {"name": "dshm", "mountPath": "/dev/shm"},  # noqa: S108 - a memory emptyDir for torch
            *([{"name": "home", "mountPath": VLLM_HOME}] if vllm else []),
        ],
    }
    if w.image_pull_policy is not None:
        container["imagePullPolicy"] = str(w.image_pull_policy)
    tolerations: list[dict[str, Any]] = []
    if w.resources.gpus > 0:
        tolerations.append(
            {
                "key": w.resources.gpu_resource_name,
                "operator": "Exists",
                "effect": GPU_TOLERATION_EFFECT,
            }
        )
    tolerations += [dict(t) for t in w.tolerations]
    labels = {
        **w.pod_labels,
        **common_labels(owner),
        LABEL_COMPONENT: "worker",
        LABEL_REVISION: revision,
        LABEL_TRACK: track,
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": [
            *volumes,
            {"name": "tmp", "emptyDir": {}},
            {"name": "hf-cache", "emptyDir": {}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
            *([{"name": "home", "emptyDir": {}}] if vllm else []),
        ],
        "tolerations": tolerations,
        "terminationGracePeriodSeconds": DRAIN_SECONDS + PRESTOP_SECONDS + 15,
        # The worker never talks to the API server; don't hand it a token.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "fsGroup": WORKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if w.node_selector:
        pod_spec["nodeSelector"] = dict(w.node_selector)
    if w.affinity:
        pod_spec["affinity"] = dict(w.affinity)
    if w.priority_class_name:
        pod_spec["priorityClassName"] = w.priority_class_name
    if w.service_account_name:
        pod_spec["serviceAccountName"] = w.service_account_name
    annotations = dict(w.pod_annotations)
    return {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod_spec}


def deployment_name(owner: Owner, track: str) -> str:
    """The worker Deployment of ``track``: NAME for stable, NAME-canary for the canary."""
    return owner.name if track == STABLE_TRACK else f"{owner.name}-{track}"


def rolling_strategy(surge: bool) -> dict[str, Any]:
    """Surge: one extra pod next to the old ones (needs a free GPU). In place: one old pod
    goes before its replacement starts (never fewer than N-1 Ready)."""
    budget = {"maxSurge": 1, "maxUnavailable": 0} if surge else {"maxSurge": 0, "maxUnavailable": 1}
    return {"type": "RollingUpdate", "rollingUpdate": budget}


def worker_deployment(
    owner: Owner,
    spec: LLMDeploymentSpec,
    replicas: int,
    revision: str,
    track: str = STABLE_TRACK,
    *,
    template_spec: LLMDeploymentSpec | None = None,
    surge: bool = True,
    stable: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """The worker Deployment of one track (``stable``; ``canary`` during a canary rollout).

    ``template_spec`` builds the pods (default ``spec``: a rollback passes the stable
    revision's spec); on the stable track its JSON goes with the template. ``stable`` is
    (revision, spec JSON) of the last good revision, recorded on the stable Deployment while
    the template runs another one.
    """
    labels = {
        **common_labels(owner),
        LABEL_COMPONENT: "worker",
        LABEL_REVISION: revision,
        LABEL_TRACK: track,
    }
    meta = _meta(owner, deployment_name(owner, track), labels)
    if track == STABLE_TRACK:
        meta["annotations"] = {ANNOTATION_TEMPLATE_SPEC: spec_json(template_spec or spec)}
        if stable is not None and stable[0] != revision:
            meta["annotations"] |= {
                ANNOTATION_STABLE_REVISION: stable[0],
                ANNOTATION_STABLE_SPEC: stable[1],
            }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": replicas,
            # Immutable once created: only labels that never change for this track.
            "selector": {"matchLabels": {**selector_labels(owner), LABEL_TRACK: track}},
            "progressDeadlineSeconds": spec.rollout.progress_deadline_seconds,
            "revisionHistoryLimit": 3,
            "strategy": rolling_strategy(surge),
            "template": pod_template(owner, template_spec or spec, revision, track),
        },
    }


def spec_json(spec: LLMDeploymentSpec) -> str:
    """The spec as stored in ANNOTATION_TEMPLATE_SPEC and ANNOTATION_STABLE_SPEC (compact,
    stable key order).

    Defaults are spelled out: a later operator may default differently (the worker image
    follows the operator's version), and a rollback must rebuild the very pods that ran.
    The network policy builds no pod (it always follows the current spec), so it is left out.
    """
    return json.dumps(
        spec.model_dump(mode="json", by_alias=True, exclude={"network_policy"}),
        sort_keys=True,
        separators=(",", ":"),
    )


def service(owner: Owner, spec: LLMDeploymentSpec) -> dict[str, Any]:
    """One Service for every track: clients and Prometheus see a single endpoint."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(owner, owner.name, common_labels(owner)),
        "spec": {
            "type": str(spec.service.type),
            "selector": selector_labels(owner),
            "ports": [
                {
                    "name": WORKER_PORT_NAME,
                    "port": spec.service.port,
                    "targetPort": WORKER_PORT_NAME,
                    "protocol": "TCP",
                    "appProtocol": "http",
                }
            ],
        },
    }


def pod_disruption_budget(owner: Owner) -> dict[str, Any]:
    """Voluntary disruptions (node drains) take at most one worker at a time."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(owner, owner.name, common_labels(owner)),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(owner)},
        },
    }


def network_policy(
    owner: Owner, spec: LLMDeploymentSpec, monitoring_namespace: str = DEFAULT_MONITORING_NAMESPACE
) -> dict[str, Any]:
    """Ingress to the worker pods (both tracks): the API port, from the peers the spec names
    (unset: the LLMDeployment's namespace; anywhere for a NodePort or LoadBalancer Service,
    whose clients are outside the cluster), and from ``monitoring_namespace`` (Prometheus;
    ``/metrics`` is served on the API port). Nothing else: other ports and sources are denied.

    The port is the container port's name: during a rollout that changes the port, old and
    new pods each listen on their own number, as the Service's ``targetPort`` does.
    """

    def ports() -> list[dict[str, Any]]:
        return [{"port": WORKER_PORT_NAME, "protocol": "TCP"}]

    clients: dict[str, Any] = {"ports": ports()}
    peers = spec.network_policy.from_
    if peers is not None:
        clients["from"] = [
            p.model_dump(mode="json", by_alias=True, exclude_defaults=True) for p in peers
        ]
    elif spec.service.type == ServiceType.CLUSTER_IP:
        clients["from"] = [{"podSelector": {}}]  # every pod of this namespace
    ingress = [clients]
    if monitoring_namespace:
        selector = {"matchLabels": {NAMESPACE_NAME_LABEL: monitoring_namespace}}
        ingress.append({"ports": ports(), "from": [{"namespaceSelector": selector}]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(owner, owner.name, common_labels(owner)),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(owner)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def endpoint(owner: Owner, spec: LLMDeploymentSpec) -> str:
    """The in-cluster OpenAI base URL."""
    return f"http://{owner.name}.{owner.namespace}.svc:{spec.service.port}/v1"


def desired_replicas(
    spec: LLMDeploymentSpec, current: int | None, autoscaler_wants: int | None
) -> int:
    """How many workers the Deployment should have now.

    ``suspend`` wins; Manual and External modes follow ``spec.replicas`` (set by a human,
    ``kubectl scale``, HPA or KEDA through the scale subresource); Builtin mode follows the
    autoscaler's last decision, else keeps the current size, always inside the bounds.
    """
    if spec.suspend:
        return 0
    a = spec.autoscaling
    if a.mode != AutoscalingMode.BUILTIN:
        return spec.replicas if spec.replicas is not None else a.min_replicas
    wanted = autoscaler_wants if autoscaler_wants is not None else current
    if wanted is None:
        wanted = a.min_replicas
    return max(a.min_replicas, min(a.max_replicas, wanted))


MANAGED_KINDS: Final = (
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("policy/v1", "PodDisruptionBudget"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
)


def desired_children(
    owner: Owner,
    spec: LLMDeploymentSpec,
    replicas: int,
    revision: str,
    *,
    template_spec: LLMDeploymentSpec | None = None,
    surge: bool = True,
    stable: tuple[str, str] | None = None,
    canary: tuple[int, str] | None = None,
    monitoring_namespace: str = DEFAULT_MONITORING_NAMESPACE,
) -> list[dict[str, Any]]:
    """Everything one LLMDeployment owns: the stable Deployment (``replicas`` pods of
    ``revision``, built from ``template_spec`` or ``spec``), during a canary the canary
    Deployment (``canary`` = (replicas, revision), built from ``spec``), the Service in front
    of both, a PodDisruptionBudget once more than one pod runs, and the NetworkPolicy unless
    ``spec.networkPolicy.enabled`` is false."""
    children = [
        worker_deployment(
            owner,
            spec,
            replicas,
            revision,
            template_spec=template_spec,
            surge=surge,
            stable=stable,
        ),
        service(owner, spec),
    ]
    total = replicas
    if canary is not None:
        children.insert(1, worker_deployment(owner, spec, canary[0], canary[1], CANARY_TRACK))
        total += canary[0]
    if total > 1:
        children.append(pod_disruption_budget(owner))
    if spec.network_policy.enabled:
        children.append(network_policy(owner, spec, monitoring_namespace))
    return children
