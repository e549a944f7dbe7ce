# Set-up is idempotent: each step leaves a stamp and reruns only when its inputs change.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
APT_PACKAGES := espeak-ng
# live capture: PortAudio; the tests' virtual microphone (PulseAudio, reached via ALSA's pulse plugin)
APT_PACKAGES += libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins
# MQTT tests' broker; the dashboard tests' headless browser (Debian's, driven by Playwright)
APT_PACKAGES += mosquitto chromium
# the security tests' self-signed CA and broker certificate
APT_PACKAGES += openssl
# the Ray tests' private network namespaces (ip; unshare is in util-linux)
APT_PACKAGES += iproute2
# serve's memory allocator (glibc's malloc fragments under many sessions)
APT_PACKAGES += libjemalloc2
# Two workers: much of the suite waits on real time (microphones, streams, brokers), so the
# second core fills those waits; the Ray tests share one worker (xdist_group "ray").
PYTEST_ARGS ?= -n 2 --dist loadgroup

.PHONY: setup system demo test lint bench clean
.DEFAULT_GOAL := demo

# System packages: only when one is missing (apt-get update first, as on a fresh machine).
system: $(VENV)/.system
$(VENV)/.system: Makefile
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages: $$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@mkdir -p $(VENV) && touch $@

# Python environment: torch first and pinned, so nothing pulls a CUDA build; then the package
# with exact pins from constraints.txt; then the weight-only packages without their stale deps.
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml constraints.txt requirements-nodeps.txt $(VENV)/.system
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev,ray]'
	$(PIP) install -q --no-deps -r requirements-nodeps.txt
	@touch $@

demo: setup
	$(VENV)/bin/realtime-erc replay recordings/demo --speed realtime --broker embedded

test: setup
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check realtime_erc tests scripts
	$(VENV)/bin/ruff format --check realtime_erc tests scripts

bench: setup
	$(VENV)/bin/realtime-erc bench replay --out bench-results

clean:
	rm -rf $(VENV) bench-results .pytest_cache
