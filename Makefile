# prefork — developer entry points. `make run` and `make test` work on a fresh Debian with Python 3.
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
ARGS    ?=
PYTEST_ARGS ?=
# Debian's own Python: `make test` (the whole suite, no PYTEST_ARGS) also runs the fast tests under it, beside
# the main run, when it is not the venv's interpreter (scripts/test-all.sh, scripts/test-system-python.sh).
SYSTEM_PYTHON ?= /usr/bin/python3
SYSTEM_VENV   := .venv-system

.PHONY: run test test-system-python lint bench db start reload stop status clean server-binary

$(PY):
	sh scripts/ensure-venv.sh $(PYTHON) $(VENV)

# The editable install is redone only when the package metadata changes.
$(STAMP): setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test,dev]'
	touch $@

server-binary:
	sh scripts/ensure-mariadb-binary.sh

PIDFILE := var/prefork.pid
DSN_CMD := $(PY) scripts/devdb.py ensure

# Foreground server against a database that answers (the configured DSN, else a private MariaDB).
run: $(STAMP)
	@DSN=$$($(DSN_CMD)) && exec $(VENV)/bin/prefork run --dsn "$$DSN" $(ARGS)

# Daemon mode through a pidfile; `make start` returns once the workers are serving.
start: $(STAMP)
	@mkdir -p var
	@DSN=$$($(DSN_CMD)) && $(VENV)/bin/prefork run --daemon --pidfile $(PIDFILE) --log-file var/prefork.log \
		--dsn "$$DSN" $(ARGS) && echo "prefork: started (pidfile $(PIDFILE), log var/prefork.log)"

# reload returns once the new generation serves (exit 0), or says why the reload was refused (exit 1).
reload: $(STAMP)
	$(VENV)/bin/prefork reload --wait --pidfile $(PIDFILE)

stop status: $(STAMP)
	$(VENV)/bin/prefork $@ --pidfile $(PIDFILE)

test: $(STAMP) server-binary
	sh scripts/ensure-test-packages.sh
	$(if $(PYTEST_ARGS),$(PY) -m pytest $(PYTEST_ARGS),sh scripts/test-all.sh $(SYSTEM_PYTHON) $(PY) $(SYSTEM_VENV))
	$(if $(PYTEST_ARGS),@echo "prefork: PYTEST_ARGS chose a part: not run again under $(SYSTEM_PYTHON) (make test-system-python)")

# The fast tests alone under $(SYSTEM_PYTHON), in $(SYSTEM_VENV) (the second half of `make test`).
test-system-python: $(STAMP) server-binary
	sh scripts/ensure-test-packages.sh
	sh scripts/test-system-python.sh $(SYSTEM_PYTHON) $(PY) $(SYSTEM_VENV) $(PYTEST_ARGS)

# The bench extra (matplotlib, for bench/latency.png) on top of the install above, for `make bench` alone:
# `make test` and `make run` never need it. After $(STAMP), so the two installs never run at once.
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	touch $@

# Throughput against baselines measured in the same run (bench/run.py says what each contender is);
# BENCH=shippers runs the rsyslog part alone (bench/shippers.py), BENCH=tls the cost of TLS (bench/tls.py),
# BENCH=latency ingest's latency at a quarter, half and three quarters of its maximum (bench/run.py; the full
# bench runs it too), drawn into bench/latency.png beside bench/RESULTS.md.
BENCH ?=
bench: $(BENCH_STAMP) server-binary
	sh scripts/ensure-bench-packages.sh
	$(PY) bench/run.py $(if $(BENCH),--only $(BENCH))

lint: $(STAMP)
	$(PY) -m ruff check prefork workers tests bench scripts devtools
	$(PY) -m ruff format --check prefork workers tests bench scripts devtools
	$(PY) -m mypy

# Make sure a database answers: the configured DSN, or a private MariaDB with its data under var/.
db: $(STAMP)
	$(PY) scripts/devdb.py ensure

clean:
	-$(PY) scripts/devdb.py stop 2>/dev/null
	rm -rf $(VENV) $(SYSTEM_VENV) var build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
