# The two commands: `make demo` runs the main job, `make test` runs the whole test suite.
# Each sets itself up: a virtualenv in .venv with the project and its test dependencies, and
# redis-server (installed with apt-get when it is missing and we are root).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast bench bench-run bench-cluster cluster redis-server clean

demo: $(VENV)/.installed redis-server
	$(BIN)/shopstream demo

test: $(VENV)/.installed redis-server
	$(BIN)/pytest

# The edit loop (under 20 s): pure Python and the Lua scripts on fakeredis; `make test` runs everything.
test-fast: $(VENV)/.installed
	$(BIN)/pytest -m "not integration and not cluster and not slow" --ignore-glob="tests/test_lake_*"

# Issue 15's targets on mixed traffic (about 8 min): 3 transport/engine pairs, latency per rule at
# 1M events/min, memory, the floor, the rule set's cost (issue 16), and 3 timed `shopstream run`s.
bench: $(VENV)/.installed redis-server
	$(BIN)/shopstream bench --run-rounds 3 --rules-share

# Only the whole-process time of `shopstream run` on the 1M-event clickstream file (20k users, 6 h;
# written once to $$TMPDIR/shopstream-bench/), 3 rounds: the comparison with Flink of issue 15.
bench-run: $(VENV)/.installed redis-server
	$(BIN)/shopstream bench --run-only --run-rounds 3

# One redis-server against a 3-master Redis Cluster on the same machine: throughput, and detection
# latency at 1M events/min per rule (one Redis runs its scripts on one core; a cluster uses more).
bench-cluster: $(VENV)/.installed redis-server
	$(BIN)/shopstream bench --cluster 3 --runs 3

# A local Redis Cluster (3 masters + 3 replicas on ports 7000-7005) in the foreground; it prints the
# REDIS_URL to use with every other command. Ctrl-C stops it.
cluster: $(VENV)/.installed redis-server
	$(BIN)/shopstream cluster

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,lake]'
	touch $@

redis-server:
	@if [ -z "$$REDIS_URL" ] && ! command -v redis-server >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "redis-server is missing: installing it with apt-get"; \
	    apt-get install -y -q redis-server >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null; }; \
	  else \
	    echo "redis-server is missing. Install it (Debian/Ubuntu: sudo apt-get install -y redis-server;"; \
	    echo "macOS: brew install redis), or set REDIS_URL to a Redis you run."; exit 1; \
	  fi; \
	fi

clean:
	rm -rf $(VENV) out *.egg-info
