#!/usr/bin/env python3
"""The operator's thin server-side-apply writer against the official client, on a real API server.

Starts a private local cluster and applies the same worker Deployments (the operator's own
manifests, 0 replicas) through three clients in one process, in interleaved rounds; every
round changes an annotation, so every apply is a real update:

- ``ours``: ``llmfleet_operator.k8s.Kube.apply`` (aiohttp, dicts in and out), credentials from
  the official client's loaders (``llmfleet_operator.login``);
- ``official-typed``: ``kubernetes_asyncio``'s ``AppsV1Api.patch_namespaced_deployment`` with
  the apply-patch content type, its answer turned back into a dict
  (``sanitize_for_serialization``), as the operator, which plans on dicts, would need;
- ``official-raw``: the same client's ``call_api`` without deserialisation
  (``_preload_content=False``), the answer parsed with ``json``.

It prints, per client, the median over rounds of the wall time and of the client process's
CPU time for N applies with C in flight, and the ratios to ``ours``.

    .venv/bin/python bench/kube_writer.py [--count 200] [--concurrency 16] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio.config import load_kube_config

from llmfleet_dev.localcluster import LocalCluster, Topology
from llmfleet_operator.api import LLMDeploymentSpec
from llmfleet_operator.k8s import FIELD_MANAGER, Kube
from llmfleet_operator.login import Source, load
from llmfleet_operator.resources import Owner, revision_of, worker_deployment

NAMESPACE = "bench"
Apply = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def deployments(client: str, count: int, round_: int) -> list[dict[str, Any]]:
    """The operator's worker Deployment for ``count`` owners, marked with the round."""
    spec = LLMDeploymentSpec.model_validate({"model": {"uri": "pvc://models/tiny"}})
    out = []
    for i in range(count):
        owner = Owner(f"{client}-{i:04d}", NAMESPACE, f"uid-{client}-{i}", 1)
        dep = worker_deployment(owner, spec, 0, revision_of(spec))
        # No owner here: the garbage collector would remove children of an absent owner.
        dep["metadata"].pop("ownerReferences", None)
        dep["metadata"]["annotations"]["bench/round"] = str(round_)
        out.append(dep)
    return out


async def run_round(apply: Apply, objects: list[dict[str, Any]], concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(obj: dict[str, Any]) -> None:
        async with gate:
            answer = await apply(obj)
            annotations = answer["metadata"]["annotations"]
            assert annotations["bench/round"] == obj["metadata"]["annotations"]["bench/round"]

    await asyncio.gather(*(one(o) for o in objects))


async def measure(
    args: argparse.Namespace, kubeconfig: Path
) -> dict[str, list[tuple[float, float]]]:
    ours = Kube(await load(Source(kubeconfig=str(kubeconfig))))
    configuration = k8s_client.Configuration()
    await load_kube_config(
        config_file=str(kubeconfig), client_configuration=configuration, persist_config=False
    )
    api_client = k8s_client.ApiClient(configuration)
    apps = k8s_client.AppsV1Api(api_client)

    async def typed(obj: dict[str, Any]) -> dict[str, Any]:
        answer = await apps.patch_namespaced_deployment(
            obj["metadata"]["name"],
            NAMESPACE,
            obj,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type="application/apply-patch+yaml",
        )
        result: dict[str, Any] = api_client.sanitize_for_serialization(answer)
        return result

    async def raw(obj: dict[str, Any]) -> dict[str, Any]:
        name = obj["metadata"]["name"]
        resp = await api_client.call_api(
            f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{name}",
            "PATCH",
            query_params=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            header_params={
                "Content-Type": "application/apply-patch+yaml",
                "Accept": "application/json",
            },
            body=obj,
            auth_settings=["BearerToken"],
            _preload_content=False,
        )
        result: dict[str, Any] = json.loads(await resp.read())
        return result

    clients: dict[str, Apply] = {"ours": ours.apply, "official-typed": typed, "official-raw": raw}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
    try:
        # Round 0 creates the objects and warms every connection pool; it is not counted.
        for round_ in range(args.rounds + 1):
            names = list(clients)
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in order:
                objects = deployments(name, args.count, round_)
                wall, cpu = time.perf_counter(), time.process_time()
                await run_round(clients[name], objects, args.concurrency)
                if round_:
                    results[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    finally:
        await ours.close()
        await api_client.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=200, help="Deployments per round")
    parser.add_argument("--concurrency", type=int, default=16, help="applies in flight")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"$ {shlex.join(sys.argv)}")
    state_dir = Path(tempfile.mkdtemp(prefix="llmfleet-bench-"))
    cluster = LocalCluster(state_dir, Topology(gpu_nodes=1, gpus_per_node=8, cpu_nodes=0))
    cluster.up(timeout=300)
    try:
        cluster.prepare_namespace(NAMESPACE)
        results = asyncio.run(measure(args, cluster.kubeconfig))
    finally:
        cluster.down()
    base_wall = statistics.median(w for w, _ in results["ours"])
    base_cpu = statistics.median(c for _, c in results["ours"])
    print(
        f"\n{args.count} server-side applies of a worker Deployment per round, "
        f"{args.concurrency} in flight, median of {args.rounds} interleaved rounds:"
    )
    print(
        f"  {'client':16} {'wall s':>8} {'x ours':>7} {'client CPU s':>13} {'x ours':>7}"
        f" {'CPU ms/apply':>13}"
    )
    for name, runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(
            f"  {name:16} {wall:8.2f} {wall / base_wall:7.2f} {cpu:13.2f} {cpu / base_cpu:7.2f}"
            f" {1000 * cpu / args.count:13.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
