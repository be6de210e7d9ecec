#!/usr/bin/env python3
"""``make demo``: the main job on the local simulated GPU cluster, end to end.

Brings the cluster up (or reuses it), installs the CRD, starts the operator, applies every
LLMDeployment in ``examples/``, waits until each is Ready (or, for the one that asks for
more GPUs than exist, Stalled with InsufficientGPU) and prints what a user would look at.
The operator keeps running in the background; ``make cluster-down`` stops it with the rest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import yaml

from localcluster import ROOT, LocalCluster, free_port, model_volume, pid_alive

NAMESPACE = "llmfleet-demo"
EXAMPLES = ROOT / "examples"
CRD = ROOT / "crds" / "llmfleet.io_llmdeployments.yaml"


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def kubectl(cluster: LocalCluster, *args: str, check: bool = True) -> str:
    result = cluster.kubectl(*args, check=False)
    if check and result.returncode != 0:
        sys.exit(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def start_operator(cluster: LocalCluster) -> int:
    """Start the operator unless one from an earlier demo still runs; return its pid."""
    pid_file = cluster.dir / "operator.pid"
    if pid_file.exists() and pid_alive(int(pid_file.read_text())):
        return int(pid_file.read_text())
    log = (cluster.logs / "operator.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmfleet_operator",
            "run",
            "--all-namespaces",
            f"--health-port={free_port()}",
            f"--metrics-port={free_port()}",
            "--bind-address=127.0.0.1",
            "--log-format=plain",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
        start_new_session=True,
    )
    pid_file.write_text(str(proc.pid))
    cluster.register_extra("operator", proc.pid)
    return proc.pid


def examples() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "LLMDeployment":
                docs.append(doc)
    return docs


def wait_settled(cluster: LocalCluster, names: list[str], timeout: float = 180) -> dict[str, str]:
    """Wait until each LLMDeployment is Ready or Stalled; return name -> outcome."""
    deadline = time.monotonic() + timeout
    outcome: dict[str, str] = {}
    while time.monotonic() < deadline:
        items = json.loads(kubectl(cluster, "get", "llmd", "-n", NAMESPACE, "-o", "json"))["items"]
        for item in items:
            conds = {c["type"]: c for c in item.get("status", {}).get("conditions", [])}
            if conds.get("Ready", {}).get("status") == "True":
                outcome[item["metadata"]["name"]] = "Ready"
            elif conds.get("Stalled", {}).get("status") == "True":
                outcome[item["metadata"]["name"]] = f"Stalled ({conds['Stalled']['reason']})"
        if all(n in outcome for n in names):
            return outcome
        time.sleep(1)
    missing = [n for n in names if n not in outcome]
    sys.exit(f"timed out waiting for {missing}; see {cluster.logs / 'operator.log'}")


def main() -> int:
    cluster = LocalCluster(ROOT / ".cluster")
    if not cluster.running():
        say("starting the local cluster (real control plane, kwok GPU nodes)")
        cluster.up()
    say("nodes: 4 simulated GPU nodes with 8 nvidia.com/gpu each, and a CPU node")
    print(kubectl(cluster, "get", "nodes", "-L", "nvidia.com/gpu.product,nvidia.com/gpu.count"))
    say("installing the LLMDeployment CRD (generated from the API models)")
    kubectl(cluster, "apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kubectl(cluster, "wait", "--for=condition=Established", "crd/llmdeployments.llmfleet.io")
    pid = start_operator(cluster)
    say(f"operator running (pid {pid}), log: {cluster.logs / 'operator.log'}")
    kubectl(cluster, "create", "namespace", NAMESPACE, check=False)
    say("a read-only model volume (PV + PVC `models`), as a platform team provides it")
    volume = json.dumps({"apiVersion": "v1", "kind": "List", "items": model_volume(NAMESPACE)})
    print(cluster.kubectl("apply", "-f", "-", stdin=volume).stdout.strip())
    docs = examples()
    say(f"applying {len(docs)} LLMDeployments from examples/")
    for doc in docs:
        result = cluster.kubectl(
            "apply", "-n", NAMESPACE, "-f", "-", stdin=json.dumps(doc), check=False
        )
        print(result.stdout.strip() or result.stderr.strip())
    names = [d["metadata"]["name"] for d in docs]
    outcome = wait_settled(cluster, names)
    say("kubectl get llmd")
    print(kubectl(cluster, "get", "llmd", "-n", NAMESPACE))
    say("worker pods on GPU nodes")
    print(
        kubectl(
            cluster,
            "get",
            "pods",
            "-n",
            NAMESPACE,
            "-o",
            "wide",
            "-L",
            "llmfleet.io/deployment,llmfleet.io/revision",
        )
    )
    stalled = [n for n, o in outcome.items() if o.startswith("Stalled")]
    for name in stalled or names[:1]:
        say(f"kubectl describe llmd/{name} (excerpt)")
        text = kubectl(cluster, "describe", "llmd", name, "-n", NAMESPACE)
        keep = text[text.find("Status:") :] if "Status:" in text else text
        print("\n".join(keep.splitlines()[:45]))
    say("summary")
    for name in names:
        print(f"  {name:12} {outcome[name]}")
    print(f"\nexport KUBECONFIG={cluster.kubeconfig}   # then: kubectl get llmd -A")
    print("make cluster-down                           # stops the cluster and the operator")
    expected_stalled = {"too-big"}
    ok = all(outcome[n] == "Ready" for n in names if n not in expected_stalled) and all(
        outcome.get(n, "").startswith("Stalled (InsufficientGPU")
        for n in expected_stalled
        if n in outcome
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
