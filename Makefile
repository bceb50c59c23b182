# Targets named for what they do. Every target installs what it needs first (make setup is idempotent).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
CHECKOV := .venv-checkov/bin/checkov
export AWS_DEFAULT_REGION ?= eu-central-1
export SAM_CLI_TELEMETRY := 0

.PHONY: setup browser test test-fast lint build demo api screenshots package-check bench bench-large clean lock

setup: $(INSTALLED)

# The test and bench room (tools/metering_testbench) is importable in this venv through a .pth file, never in the
# wheel: `pip install .` carries the operator's room only.
# The runtime packages come at the versions of the lock, the layer's requirements.txt (docs/dependencies.md): pip
# fails if a dev tool needs other versions. aws-sam-cli pins boto3 exactly, which would then choose the functions'
# boto3, so it lives in a venv of its own inside .venv, and .venv/bin/sam points to it.
LOCK := layers/metering/requirements.txt
SAM_VENV := $(VENV)/sam-cli

$(INSTALLED): pyproject.toml $(LOCK) layers/metering/requirements.in tools/requirements.in
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if v == (3, 13) else f"Python 3.13 is required (Lambda runtime python3.13), found {v[0]}.{v[1]}: install it or set PYTHON=")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --constraint $(LOCK) -e '.[dev]'
	$(BIN)/python -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()["purelib"], "metering-testbench.pth").write_text("$(CURDIR)/tools\n")'
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install --quiet aws-sam-cli==1.170.0
	ln -sfn ../sam-cli/bin/sam $(BIN)/sam
	touch $(INSTALLED)

# Re-resolves the lock from pyproject.toml, keeping its pins except those named: make lock UPGRADE="pydantic
# pydantic-core", or UPGRADE=:all: (docs/dependencies.md)
lock:
	$(PYTHON) scripts/lock_runtime.py $(if $(UPGRADE),--upgrade $(UPGRADE))

# The browser tier (tests/browser) drives Debian's Chromium through Playwright; Playwright never downloads a browser
# of its own. Installed when missing (as root, or through sudo); without it the target fails, never the tier skips.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian's chromium for the browser tier (tests/browser)"; \
		if [[ "$$(id -u)" == 0 ]]; then as_root=(); \
		elif command -v sudo >/dev/null 2>&1; then as_root=(sudo); \
		else echo "make browser: chromium is missing and installing it needs root (apt-get install chromium)" >&2; exit 1; fi; \
		"$${as_root[@]}" apt-get update -qq; \
		"$${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	}
	@command -v chromium >/dev/null 2>&1 || { echo "make browser: chromium is still not on PATH" >&2; exit 1; }

# The browser tier's tests share one worker (and so one metering serve): --dist loadgroup keeps an xdist_group
# together and spreads every other test as before.
test: setup browser
	$(BIN)/pytest -n 2 --dist loadgroup --durations=10

test-fast: setup
	$(BIN)/pytest -n 2 -m 'not slow'

# checkov pins boto3 and botocore versions that clash with aws-sam-cli's, so it lives in its own venv
$(CHECKOV):
	$(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/pip install --quiet checkov==3.3.30

lint: setup $(CHECKOV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy layers/metering/metering tools/metering_tools tools/metering_testbench functions scripts tests
	$(BIN)/sam validate --lint
	$(BIN)/cfn-lint template.yaml monitoring/template.yaml
	$(BIN)/python scripts/expand_template.py .aws-sam/lint/template.json
	$(CHECKOV) --config-file .checkov.yaml -f .aws-sam/lint/template.json

build: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/sam build

demo: setup
	$(BIN)/metering simulate events/sample-month.jsonl --now 2026-11-02T00:00:00Z --format table

# The Usage API of the sample month on 127.0.0.1:$(API_PORT) until Ctrl-C, its tokens from a local issuer whose key
# is kept in .local/ (README, "Calling the API locally"). The curl line works once the server says it listens.
API_PORT ?= 8787
API_ACCOUNT := acct-start-berlin
ISSUER_KEY := .local/issuer-key.pem
api: setup
	@token="$$($(BIN)/metering token --issuer-key $(ISSUER_KEY) --account $(API_ACCOUNT))"; \
	echo "Once it prints 'listening on http://127.0.0.1:$(API_PORT)' (a token for $(API_ACCOUNT), valid 1 h):"; \
	echo "curl -H 'Authorization: Bearer $$token' 'http://127.0.0.1:$(API_PORT)/v1/accounts/$(API_ACCOUNT)/usage?period=2026-10'"; \
	echo "and its usage page in a browser: http://127.0.0.1:$(API_PORT)/usage-page/#token=$$token&lang=de"; \
	exec $(BIN)/metering serve events/sample-month.jsonl --now 2026-11-02T00:00:00Z --port $(API_PORT) \
		--issuer-key $(ISSUER_KEY)

# The README's pictures of the usage page (docs/images/usage-page-en.png, -de.png), from the browser tier's month.
screenshots: setup browser
	USAGE_PAGE_SCREENSHOTS=docs/images $(BIN)/pytest -p no:xdist -q tests/browser -k screenshots

# A packaged install as someone without the repository has it: `pip install .` into a fresh venv outside the
# checkout, the sample month replayed from there (reading the template and handlers the package carries); its
# report must be the checkout's, byte for byte.
SAMPLE_MONTH := simulate $(CURDIR)/events/sample-month.jsonl --now 2026-11-02T00:00:00Z
package-check: setup
	scratch="$$(mktemp -d)"; trap 'rm -rf "$$scratch"' EXIT; \
	$(PYTHON) -m venv "$$scratch/venv"; \
	"$$scratch/venv/bin/pip" install --quiet "$(CURDIR)"; \
	cd "$$scratch"; \
	stack="$$(venv/bin/python -c 'from metering_tools.template import STACK_ROOT; print(STACK_ROOT)')"; \
	echo "stack files: $$stack"; \
	[[ "$$stack" == "$$scratch/venv/"* ]] || { echo "the installed package did not read its own copy" >&2; exit 1; }; \
	venv/bin/metering $(SAMPLE_MONTH) > installed.json; \
	"$(CURDIR)/$(BIN)/metering" $(SAMPLE_MONTH) > checkout.json; \
	diff checkout.json installed.json; \
	"$(CURDIR)/$(BIN)/python" -c 'import json, sys; json.load(open(sys.argv[1]))' installed.json; \
	echo "packaged install: the same report as the checkout, and nothing but the report on stdout"

# Measures and prints, never asserts (docs/design.md, Cost). bench-large adds 10,000 accounts, the 100,000-contact
# rename, the burst on one account and a close of 100,000 billed accounts (about an hour on 2 cores).
bench: setup
	$(BIN)/python scripts/bench_simulate.py
	$(BIN)/python scripts/bench_import.py
	$(BIN)/python scripts/bench_regimes.py --jobs 2
	$(BIN)/python scripts/bench_close.py --accounts 10000
	$(BIN)/python scripts/bench_api.py
	$(BIN)/python scripts/bench_projection.py --events 40000

bench-large: setup
	$(BIN)/python scripts/bench_regimes.py --jobs 2 --large --only "10000 accounts"
	$(BIN)/python scripts/bench_regimes.py --jobs 2 --large --only "hot rename"
	$(BIN)/python scripts/bench_regimes.py --jobs 2 --large --only burst
	$(BIN)/python scripts/bench_close.py --accounts 100000

clean:
	rm -rf .aws-sam .pytest_cache .mypy_cache .ruff_cache
