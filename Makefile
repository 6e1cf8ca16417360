# The two README commands: `make demo` and `make test`. Both set everything up first and are idempotent.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Offline at run time: nothing may reach a model hub from the demo or the tests.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup system-deps venv demo test test-fast test-all bench docs clean

setup: system-deps venv

# Debian packages the product shells out to (ffmpeg/ffprobe, espeak-ng for demo speech, sox, curl for
# the trainers' http(s) shards), the
# CJK font of `cnas inspect`'s sheets (Chinese transcripts) and headless Chromium for the report's test.
system-deps:
	@if command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null && command -v espeak-ng >/dev/null && command -v sox >/dev/null && command -v curl >/dev/null \
	    && command -v chromium >/dev/null && command -v chromedriver >/dev/null && [ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ]; then \
	  echo "system deps present"; \
	else \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    ffmpeg espeak-ng sox curl fonts-wqy-microhei chromium chromium-driver >/dev/null; \
	fi

# The project venv. Re-installs only when a requirements file or pyproject.toml changed.
venv: $(STAMP)

$(STAMP): requirements/main.txt requirements/constraints.txt pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/install.sh
	touch $(STAMP)

demo: setup
	$(PY) -m cnas demo

# One pass on two pytest-xdist workers. Every test that starts Ray (the DAG on the session's embedded
# Ray, a `cnas ingest` subprocess, Ray Train, the two-node cluster) is in the `ray` group, run one after
# another on one worker, first; the other worker runs the rest meanwhile (tests sharing a costly fixture
# stay together: xdist_group marks set in tests/conftest.py). One Ray at a time: with two Ray instances
# side by side an ingest's actor pool once waited forever for an actor Ray had created (docs/BENCHMARKS.md).
test: setup
	$(PY) -m pytest -n 2 --dist loadgroup -m "not slow and not gpu" -q --durations=15

# The inner loop (under 2 minutes here): unit and known-answer tests; no DAG runs, no model loading.
test-fast: setup
	$(PY) -m pytest -n 2 --dist loadgroup -m "not slow and not gpu and not e2e and not models and not real" -q --durations=10

test-all: setup
	$(PY) -m pytest -q

# The doc blocks that restate code (docs/cli.md's config defaults); tests/test_docs.py fails when they are stale.
docs: setup
	$(PY) scripts/render_docs.py

bench: setup
	$(PY) benchmarks/ingest.py

clean:
	rm -rf $(VENV) demo_out
