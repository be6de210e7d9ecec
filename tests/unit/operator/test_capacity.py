"""Which nodes a worker pod template may use, and how many GPUs are free there (pure)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from llmfleet_operator.api import LLMDeploymentSpec
from llmfleet_operator.capacity import (
    CapacityUnknown,
    NodeRecord,
    Placement,
    PodRecord,
    Taint,
    creating_since,
    free_capacity,
    free_gpus_text,
    is_extended_resource,
    pod_requests,
    slim_node,
    slim_pod,
    used_by_node,
    volume_failure,
)
from llmfleet_operator.free_gpus import placement_of

GPU = "nvidia.com/gpu"


def node(
    name: str = "n0",
    *,
    gpus: int = 8,
    labels: dict[str, str] | None = None,
    taints: tuple[Taint, ...] = (),
    ready: bool = True,
    unschedulable: bool = False,
) -> NodeRecord:
    return NodeRecord(name, labels or {}, taints, ready, unschedulable, {GPU: gpus} if gpus else {})


def placement(**pod_spec: Any) -> Placement:
    return Placement.of_pod_spec(pod_spec)


def affinity(*terms: dict[str, Any]) -> dict[str, Any]:
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}
        }
    }


def expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    return {"matchExpressions": [{"key": key, "operator": operator, "values": list(values)}]}


# --- slim records ------------------------------------------------------------------------------


def test_slim_node_keeps_only_what_accounting_needs() -> None:
    obj = {
        "metadata": {"name": "g0", "labels": {"pool": "a100"}, "annotations": {"big": "x" * 9999}},
        "spec": {
            "unschedulable": True,
            "taints": [
                {"key": GPU, "value": "present", "effect": "NoSchedule"},
                {"key": "soft", "effect": "PreferNoSchedule"},
                {"key": "evict", "effect": "NoExecute"},
            ],
        },
        "status": {
            "allocatable": {"cpu": "96", "memory": "1Ti", GPU: "8", "example.com/fpga": "2"},
            "conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": "True"},
            ],
            "images": [{"names": ["a" * 100]}] * 50,
        },
    }
    rec = slim_node(obj)
    assert rec == NodeRecord(
        "g0",
        {"pool": "a100"},
        (Taint(GPU, "present", "NoSchedule"), Taint("evict", "", "NoExecute")),
        ready=True,
        unschedulable=True,
        allocatable={GPU: 8, "example.com/fpga": 2},
    )
    assert not slim_node({"metadata": {"name": "x"}, "status": {}}).ready


def test_extended_resources_are_domain_names_outside_kubernetes_io() -> None:
    assert is_extended_resource("nvidia.com/gpu")
    assert is_extended_resource("amd.com/gpu")
    assert is_extended_resource("gpu.intel.com/i915")
    for standard in ("cpu", "memory", "hugepages-2Mi", "kubernetes.io/batch-cpu"):
        assert not is_extended_resource(standard)
    assert not is_extended_resource("example.kubernetes.io/thing")


def test_pod_requests_count_like_the_scheduler() -> None:
    def c(n: int, *, request: bool = False, sidecar: bool = False) -> dict[str, Any]:
        res = {"requests" if request else "limits": {GPU: str(n), "cpu": "1"}}
        out: dict[str, Any] = {"name": "c", "resources": res}
        if sidecar:
            out["restartPolicy"] = "Always"
        return out

    assert pod_requests({"containers": [c(2), c(1, request=True)]}) == {GPU: 3}
    # An init container runs alone: the pod holds the larger of it and the app containers.
    assert pod_requests({"containers": [c(1)], "initContainers": [c(4)]}) == {GPU: 4}
    assert pod_requests({"containers": [c(3)], "initContainers": [c(2)]}) == {GPU: 3}
    # A sidecar runs next to everything after it.
    assert pod_requests({"containers": [c(1)], "initContainers": [c(1, sidecar=True)]}) == {GPU: 2}
    assert pod_requests({"containers": [{"name": "x"}]}) == {}


def test_slim_pod_drops_pods_without_devices_unbound_or_finished() -> None:
    def pod(phase: str = "Running", node: str | None = "g0", gpus: int = 2) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "containers": [{"name": "w", "resources": {"limits": {GPU: str(gpus)}}}]
        }
        if node:
            spec["nodeName"] = node
        return {"metadata": {"uid": "u"}, "spec": spec, "status": {"phase": phase}}

    assert slim_pod(pod()) == PodRecord("g0", ((GPU, 2),))
    assert slim_pod(pod("Pending")) == PodRecord("g0", ((GPU, 2),))  # bound, starting
    assert slim_pod(pod(node=None)) is None
    assert slim_pod(pod("Succeeded")) is None
    assert slim_pod(pod("Failed")) is None
    assert slim_pod(pod(gpus=0)) is None


# --- eligibility -------------------------------------------------------------------------------


def test_node_selector_and_required_affinity() -> None:
    a100 = node("a", labels={"pool": "a100", "gen": "3"})
    h100 = node("h", labels={"pool": "h100", "gen": "4"})
    assert placement(nodeSelector={"pool": "a100"}).admits(a100)
    assert not placement(nodeSelector={"pool": "a100"}).admits(h100)
    assert not placement(nodeSelector={"pool": "a100", "zone": "x"}).admits(a100)

    cases: list[tuple[dict[str, Any], bool, bool]] = [
        (expr("pool", "In", "a100", "l4"), True, False),
        (expr("pool", "NotIn", "a100"), False, True),
        (expr("zone", "NotIn", "x"), True, True),  # absent label: not in
        (expr("pool", "Exists"), True, True),
        (expr("zone", "DoesNotExist"), True, True),
        (expr("pool", "DoesNotExist"), False, False),
        (expr("gen", "Gt", "3"), False, True),
        (expr("gen", "Lt", "4"), True, False),
        (expr("zone", "Gt", "1"), False, False),  # absent label: no number to compare
        (expr("pool", "Gt", "1"), False, False),  # not an integer
        (
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["h"]}]},
            False,
            True,
        ),
        (
            {"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["h"]}]},
            True,
            False,
        ),
        ({}, False, False),  # an empty term selects nothing
    ]
    for term, on_a100, on_h100 in cases:
        p = placement(affinity=affinity(term))
        assert (p.admits(a100), p.admits(h100)) == (on_a100, on_h100), term
    # Terms are ORed, the requirements of one term ANDed.
    either = placement(affinity=affinity(expr("pool", "In", "a100"), expr("gen", "In", "4")))
    assert either.admits(a100)
    assert either.admits(h100)
    both = {
        "matchExpressions": [
            {"key": "pool", "operator": "In", "values": ["a100"]},
            {"key": "gen", "operator": "In", "values": ["4"]},
        ]
    }
    assert not placement(affinity=affinity(both)).admits(a100)
    # Preferred affinity and pod (anti-)affinity do not restrict nodes.
    preferred: dict[str, Any] = {
        "nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}
    }
    assert placement(affinity=preferred).admits(a100)


def test_taints_and_tolerations() -> None:
    gpu_taint = Taint(GPU, "present", "NoSchedule")
    tainted = node(taints=(gpu_taint,))
    assert not placement().admits(tainted)
    for tol in (
        {"key": GPU, "operator": "Exists", "effect": "NoSchedule"},
        {"key": GPU, "operator": "Exists"},
        {"key": GPU, "operator": "Equal", "value": "present"},
        {"key": GPU, "value": "present", "effect": "NoSchedule"},
        {"operator": "Exists"},  # tolerates everything
    ):
        assert placement(tolerations=[tol]).admits(tainted), tol
    for tol in (
        {"key": GPU, "operator": "Equal", "value": "absent"},
        {"key": GPU, "operator": "Exists", "effect": "NoExecute"},
        {"key": "other", "operator": "Exists"},
    ):
        assert not placement(tolerations=[tol]).admits(tainted), tol
    evicting = node(taints=(Taint("maintenance", "", "NoExecute"),))
    assert not placement().admits(evicting)
    assert placement(tolerations=[{"key": "maintenance", "operator": "Exists"}]).admits(evicting)


def test_not_ready_and_cordoned_nodes_take_no_pods() -> None:
    assert placement().refusal(node(ready=False)) == "NotReady"
    assert placement().refusal(node(unschedulable=True)) == "cordoned"
    # Tolerating the unschedulable taint (as DaemonSets do) lets a pod onto a cordoned node.
    tol = {"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}
    assert placement(tolerations=[tol]).admits(node(unschedulable=True))
    assert not placement(tolerations=[{"operator": "Exists"}]).admits(node(ready=False))


def test_placement_of_a_spec_has_the_gpu_toleration_and_the_spec_constraints() -> None:
    spec = LLMDeploymentSpec.model_validate(
        {
            "model": {"uri": "pvc://models/tiny"},
            "worker": {
                "nodeSelector": {"pool": "a100"},
                "tolerations": [{"key": "team", "operator": "Equal", "value": "ml"}],
                "affinity": affinity(expr("zone", "In", "z1")),
            },
        }
    )
    p = placement_of(spec)
    gpu_node = node(
        labels={"pool": "a100", "zone": "z1"},
        taints=(Taint(GPU, "present", "NoSchedule"), Taint("team", "ml", "NoSchedule")),
    )
    assert p.admits(gpu_node)
    assert not p.admits(node(labels={"pool": "a100", "zone": "z2"}))
    assert not p.admits(
        node(labels={"pool": "a100", "zone": "z1"}, taints=(Taint("x", "", "NoExecute"),))
    )
    plain = placement_of(LLMDeploymentSpec.model_validate({"model": {"uri": "pvc://models/tiny"}}))
    assert plain.admits(node(taints=(Taint(GPU, "present", "NoSchedule"),)))


# --- capacity and messages ---------------------------------------------------------------------


def test_free_capacity_per_eligible_node_and_refusals() -> None:
    nodes = [
        node("g0", labels={"pool": "a"}),
        node("g1", labels={"pool": "a"}),
        node("g2", labels={"pool": "b"}),
        node("g3", labels={"pool": "a"}, ready=False),
        node("cpu", gpus=0),
    ]
    used = used_by_node([PodRecord("g0", ((GPU, 6),)), PodRecord("g2", ((GPU, 8),))])
    cap = free_capacity(nodes, used, GPU, placement(nodeSelector={"pool": "a"}))
    assert cap.free_per_node == {"g0": 2, "g1": 8}
    assert (cap.total, cap.free, cap.nodes, cap.largest_free_block) == (16, 10, 2, 8)
    assert cap.fits(4) == 2
    assert cap.refused == (("nodeSelector", 1), ("NotReady", 1))
    assert free_gpus_text(cap) == (
        "10 free of 16 on 2 GPU nodes (at most 8 free on one node); 2 other GPU nodes refuse "
        "these pods (1 does not match the nodeSelector, 1 is NotReady)"
    )
    none = free_capacity(nodes, used, GPU, placement(nodeSelector={"pool": "z"}))
    assert (none.nodes, none.free) == (0, 0)
    assert free_gpus_text(none) == (
        "no node with nvidia.com/gpu accepts these pods: of 4 such nodes, "
        "3 do not match the nodeSelector, 1 is NotReady"
    )
    assert free_gpus_text(free_capacity(nodes, used, "amd.com/gpu")) == "no node offers amd.com/gpu"
    assert free_gpus_text(CapacityUnknown("free GPUs unknown: because")) == (
        "free GPUs unknown: because"
    )


# --- properties --------------------------------------------------------------------------------

names = st.sampled_from(["a", "b", "c"])
values = st.sampled_from(["1", "2", "x"])
taints = st.builds(Taint, names, values, st.sampled_from(["NoSchedule", "NoExecute"]))
nodes_st = st.builds(
    NodeRecord,
    name=st.sampled_from(["n0", "n1", "n2"]),
    labels=st.dictionaries(names, values, max_size=3),
    taints=st.lists(taints, max_size=3).map(tuple),
    ready=st.booleans(),
    unschedulable=st.booleans(),
    allocatable=st.fixed_dictionaries({GPU: st.integers(0, 8)}),
)
requirement = st.fixed_dictionaries(
    {
        "key": names,
        "operator": st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]),
        "values": st.lists(values, max_size=2),
    }
)
term = st.fixed_dictionaries({"matchExpressions": st.lists(requirement, min_size=1, max_size=2)})
toleration = st.fixed_dictionaries(
    {
        "key": names,
        "operator": st.sampled_from(["Equal", "Exists"]),
        "value": values,
        "effect": st.sampled_from(["", "NoSchedule", "NoExecute"]),
    }
)
pod_specs = st.fixed_dictionaries(
    {},
    optional={
        "nodeSelector": st.dictionaries(names, values, max_size=2),
        "tolerations": st.lists(toleration, max_size=3),
        "affinity": st.lists(term, min_size=1, max_size=2).map(lambda ts: affinity(*ts)),
    },
)


@given(nodes_st)
def test_unconstrained_pods_go_to_ready_schedulable_untainted_nodes(n: NodeRecord) -> None:
    assert placement().admits(n) == (n.ready and not n.unschedulable and not n.taints)


@given(nodes_st)
def test_tolerating_everything_leaves_only_readiness(n: NodeRecord) -> None:
    everything = placement(tolerations=[{"operator": "Exists"}])
    assert everything.admits(n) == n.ready


@given(st.lists(nodes_st, max_size=4, unique_by=lambda n: n.name), pod_specs, taints)
def test_an_untolerated_taint_never_adds_capacity(
    nodes: list[NodeRecord], spec: dict[str, Any], extra: Taint
) -> None:
    p = Placement.of_pod_spec(spec)
    before = free_capacity(nodes, {}, GPU, p)
    tainted = [
        NodeRecord(n.name, n.labels, (*n.taints, extra), n.ready, n.unschedulable, n.allocatable)
        for n in nodes
    ]
    after = free_capacity(tainted, {}, GPU, p)
    assert after.free <= before.free
    assert set(after.free_per_node) <= set(before.free_per_node)
    if not p.tolerates(extra):
        assert after.free == 0


@given(
    st.lists(nodes_st, max_size=4, unique_by=lambda n: n.name),
    pod_specs,
    st.dictionaries(names, values, min_size=1, max_size=2),
)
def test_more_selector_labels_never_add_capacity(
    nodes: list[NodeRecord], spec: dict[str, Any], more: dict[str, str]
) -> None:
    loose = Placement.of_pod_spec(spec)
    # More keys only: a value that replaced one of the spec's own would be another selector,
    # not a stricter one.
    strict = Placement.of_pod_spec(
        {**spec, "nodeSelector": {**more, **spec.get("nodeSelector", {})}}
    )
    assert free_capacity(nodes, {}, GPU, strict).free <= free_capacity(nodes, {}, GPU, loose).free


@given(
    st.lists(nodes_st, max_size=4, unique_by=lambda n: n.name),
    pod_specs,
    st.lists(st.tuples(st.sampled_from(["n0", "n1", "n2"]), st.integers(0, 8)), max_size=6),
)
def test_capacity_adds_up(
    nodes: list[NodeRecord], spec: dict[str, Any], pods: list[tuple[str, int]]
) -> None:
    p = Placement.of_pod_spec(spec)
    cap = free_capacity(nodes, used_by_node(PodRecord(n, ((GPU, g),)) for n, g in pods), GPU, p)
    assert cap.free == sum(cap.free_per_node.values()) <= cap.total
    assert all(v >= 0 for v in cap.free_per_node.values())
    assert set(cap.free_per_node) == {
        n.name for n in nodes if p.admits(n) and n.allocatable.get(GPU, 0) > 0
    }
    assert cap.nodes + sum(k for _, k in cap.refused) == sum(
        1 for n in nodes if n.allocatable.get(GPU, 0) > 0
    )


def _creating_pod(phase: str = "Pending", reason: str = "ContainerCreating") -> dict[str, Any]:
    return {
        "status": {
            "phase": phase,
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "True",
                    "lastTransitionTime": "2099-01-01T00:00:00Z",
                }
            ],
            "containerStatuses": [{"name": "worker", "state": {"waiting": {"reason": reason}}}],
        }
    }


def test_a_scheduled_pod_still_creating_its_containers_is_noticed_from_when_it_was_scheduled() -> (
    None
):
    assert creating_since(_creating_pod()) == "2099-01-01T00:00:00Z"
    assert creating_since(_creating_pod(phase="Running")) is None
    assert creating_since(_creating_pod(reason="CrashLoopBackOff")) is None
    assert creating_since({"status": {"phase": "Pending"}}) is None  # not scheduled yet


def test_volume_failure_prefers_multi_attach_and_quotes_the_event() -> None:
    events = [
        {"reason": "Scheduled", "message": "assigned", "lastTimestamp": "2099-01-01T00:00:01Z"},
        {
            "reason": "FailedMount",
            "message": "Unable to attach or mount volumes: timed out",
            "lastTimestamp": "2099-01-01T00:02:00Z",
        },
        {
            "reason": "FailedAttachVolume",
            "message": 'Multi-Attach error for volume "pvc-1"',
            "lastTimestamp": "2099-01-01T00:00:10Z",
        },
    ]
    failure = volume_failure(events)
    assert failure is not None
    assert failure.reason == "VolumeAttachFailed"
    assert failure.message == 'FailedAttachVolume: Multi-Attach error for volume "pvc-1"'
    assert volume_failure(events[:2]) is not None
    assert volume_failure(events[:1]) is None
