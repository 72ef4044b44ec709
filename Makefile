# The venv is made on first use; the install re-runs when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 4
LINTED := softfactory_obs tests examples bench

.PHONY: run test soak bench lint clean stack

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,lint,serve]'
	touch $(STAMP)

# The demo needs only its extra (gunicorn, webob, redis-py), not the test and lint tools.
RUN_STAMP := $(VENV)/.installed-demo
$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	touch $(RUN_STAMP)

run: $(RUN_STAMP)
	@echo "Demo shop on http://$(HOST):$(PORT) with $(WORKERS) gunicorn workers; JSON logs below. Try:"
	@echo "  curl -i http://$(HOST):$(PORT)/api/users/42"
	@echo "  curl -i http://$(HOST):$(PORT)/api/products"
	@echo "  curl -i 'http://$(HOST):$(PORT)/api/search?q=product+1'"
	@echo "  curl -i -H 'X-Request-Id: my-id-123' http://$(HOST):$(PORT)/api/slow"
	@echo "  curl -i http://$(HOST):$(PORT)/api/error"
	@echo "  curl -N http://$(HOST):$(PORT)/api/stream"
	@echo "  curl -i http://$(HOST):$(PORT)/api/download"
	@echo "  curl http://$(HOST):$(PORT)/metrics"
	@echo "  curl http://$(HOST):$(PORT)/health   (also /live, /ready)"
	@# A throwaway redis-server (when installed) so the demo shows real cache metrics; it stops with the demo.
	@if command -v redis-server >/dev/null; then \
	  redis-server --port 6391 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes >/dev/null && \
	  echo "  (cache: throwaway redis-server on 127.0.0.1:6391)"; fi
	-REDIS=$$(command -v redis-server >/dev/null && echo redis://127.0.0.1:6391/0); \
	  trap 'redis-cli -p 6391 shutdown nosave >/dev/null 2>&1 || true' EXIT INT TERM; \
	  SOFTFACTORY_OBS_REDIS_URL=$$REDIS DEMO_BIND=$(HOST):$(PORT) DEMO_WORKERS=$(WORKERS) \
	  $(BIN)/gunicorn -c examples/gunicorn.conf.py examples.demo:app

# Prometheus (:9090) and Alertmanager (:9093) from the Debian binaries, with configs/, scraping `make run`.
# Placeholder secret files stand in for the real ones; notifications will fail to deliver, by design.
stack:
	@command -v prometheus >/dev/null || { echo "install prometheus (apt-get install prometheus)"; exit 1; }
	mkdir -p .stack/secrets .stack/prometheus .stack/alertmanager
	for f in smtp_password slack_webhook_url pagerduty_routing_key webhook_token; do \
	  [ -f .stack/secrets/$$f ] || echo placeholder > .stack/secrets/$$f; done
	sed 's|/etc/alertmanager/secrets|$(CURDIR)/.stack/secrets|' configs/alertmanager.yml > .stack/alertmanager.yml
	@# Debian's Prometheus serves only the classic UI (its new one is not packaged): these pages answer.
	@echo "Prometheus: http://127.0.0.1:9090/classic/targets (is the demo up?), /classic/alerts, /classic/graph"
	@echo "Alertmanager: http://127.0.0.1:9093/#/alerts   (Ctrl-C stops both)"
	trap 'kill $$(jobs -p) 2>/dev/null' INT TERM EXIT; \
	  prometheus-alertmanager --config.file=.stack/alertmanager.yml --storage.path=.stack/alertmanager \
	    --web.listen-address=127.0.0.1:9093 --cluster.listen-address= & \
	  prometheus --config.file=configs/prometheus.yml --storage.tsdb.path=.stack/prometheus \
	    --web.listen-address=127.0.0.1:9090 --enable-feature=exemplar-storage & \
	  wait

# Tests that drive a missing binary skip (CI, with SOFTFACTORY_OBS_STRICT_TESTS=1, fails them): say so first.
TEST_BINARIES := redis-server promtool amtool prometheus prometheus-alertmanager victoria-metrics uwsgi node npm
test: $(STAMP)
	@missing=""; for b in $(TEST_BINARIES); do command -v $$b >/dev/null || missing="$$missing $$b"; done; \
	  [ -e /usr/lib/uwsgi/plugins/python3_plugin.so ] || missing="$$missing uwsgi-plugin-python3"; \
	  [ -z "$$missing" ] || echo "make test: missing$$missing; their tests will skip. As root, bash .ci/run installs them (apt-get install redis-server prometheus prometheus-alertmanager victoria-metrics uwsgi uwsgi-plugin-python3 nodejs npm)."
	$(BIN)/python -m pytest -m "not soak" --cov --cov-report=term $(PYTEST_ARGS)

soak: $(STAMP)
	$(BIN)/python -m pytest -m soak $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	@# wrk drives the gunicorn part, valgrind counts instructions; without one, its part is skipped with a message.
	@for tool in wrk valgrind; do command -v $$tool >/dev/null || [ "$$(id -u)" != 0 ] || { \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$tool || { apt-get update -qq \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$tool; }; } >/dev/null 2>&1 || true; done
	$(BIN)/python -m bench $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .stack
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
