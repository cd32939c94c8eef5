# Three commands on a fresh Debian machine:
#   make run     - set up and serve the example directory on the embedded store
#   make test    - set up, install the test peers, run everything
#   make cluster - for offices that outgrow one process: Kamailio in front of
#                  NODES engine processes sharing PostgreSQL (deploy/cluster.py)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
SIP    ?= 0.0.0.0:5060
HTTP   ?= 127.0.0.1:8080
NODES  ?= 2

.PHONY: run cluster test venv peers buildtools lint typecheck unit bench clean

$(BIN)/switchboard: pyproject.toml setup.py engine/sip/message/_speedups.c
	@$(MAKE) --no-print-directory buildtools
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/switchboard

run: venv
	$(BIN)/switchboard serve --directory examples/directory.toml --sip $(SIP) --http $(HTTP)

# Kamailio (the edge, deploy/kamailio/kamailio.cfg) on $(SIP), $(NODES) nodes on
# 127.0.0.1:5071.., one PostgreSQL database ($$DATABASE_URL, default
# postgresql://127.0.0.1:5432/switchboard; PostgreSQL is started if it is down).
cluster: venv peers
	$(BIN)/python deploy/cluster.py --nodes $(NODES) --edge $(SIP)

# A C compiler and the Python headers build the parser's C quick paths
# (engine/sip/message/_speedups.c); without them the install still works, on the
# pure-Python parser, but CI requires the extension (tests/test_speedups.py).
buildtools:
	@missing=""; \
	command -v gcc >/dev/null || missing="$$missing gcc"; \
	$(PYTHON) -c "import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
	  || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "installing build tools:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# Real peers for the tests: SIPp, baresip, Kamailio (the benchmark baseline), and
# espeak-ng (the prompt generator's test speaks with it; the prompts are committed),
# openssl (the TLS trunk test makes its certificate).
peers:
	@missing=""; \
	command -v sipp >/dev/null || missing="$$missing sip-tester"; \
	command -v baresip >/dev/null || missing="$$missing baresip"; \
	command -v kamailio >/dev/null || [ -x /usr/sbin/kamailio ] || missing="$$missing kamailio"; \
	command -v espeak-ng >/dev/null || missing="$$missing espeak-ng"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	if [ -n "$$missing" ]; then \
	  echo "installing test peers:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

unit: venv
	$(BIN)/python -m pytest -q

# The tests wait on sockets and peers far more than they compute: one pytest-xdist
# worker per core (a file stays on one worker, so its module's engine starts once)
# nearly halves the wall time. tests/conftest.py gives each worker its own ports.
# Files marked `serial` (CPU-sensitive: see pyproject.toml) run after, alone; only
# their files are collected again (collecting the whole suite takes ~20 s).
TEST_WORKERS ?= 2
SERIAL_TESTS = $(shell grep -l 'pytest.mark.serial' tests/test_*.py)

test: venv peers lint
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile -m "not serial" --durations=30
	$(BIN)/python -m pytest -q -p no:cacheprovider -m serial --durations=30 $(SERIAL_TESTS)

bench: venv peers
	$(BIN)/python benchmarks/parser.py
	$(BIN)/python benchmarks/register_rate.py

clean:
	rm -rf $(VENV) switchboard-data *.egg-info build engine/sip/message/_speedups*.so
