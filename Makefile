# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SHARED_DATA ?= ../shared/data

.PHONY: demo test test-fast lint docs bench install install-dev clean .deb-packages

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Re-install only when the project definition changes.
# The demo runs the whole loop: fine-tuning (the XGBoost learner), the label store and the HTML report.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install -q -e '.[xgboost,store,report,web]'
	touch $@

# Tests need every learner: torch from PyPI is the CUDA build (a few GB), installed here and only here. The docs
# extra (MkDocs) too: the tests build the docs site.
$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PIP) install -q -e '.[dev,docs,xgboost,torch,kafka,segments,report,web,store,spark]'
	touch $@ $(VENV)/.installed

# The Kafka broker's jars, resolved from Maven Central once (not committed).
KAFKA_LIB := .kafka/lib
$(KAFKA_LIB)/.resolved: connectors/kafka/pom.xml
	mvn -B -q -f connectors/kafka/pom.xml dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=$(CURDIR)/$(KAFKA_LIB)
	touch $@

# A schema registry with Confluent's API (Apicurio Registry, a Java application from Maven Central), resolved once
# (not committed): the Avro and Protobuf stream tests start one.
REGISTRY_APP := .schema-registry/.resolved
$(REGISTRY_APP): connectors/schema-registry/pom.xml
	rm -rf .schema-registry/apicurio-*
	SEGSCOPE_REGISTRY_DIR=$(CURDIR)/.schema-registry connectors/schema-registry/registry resolve
	touch $@

# Debian packages the tests use: Chromium (report and analyst-page browser tests), a PostgreSQL server (label
# store tests run against a real server) and kcat (librdkafka's command-line client: tests produce with it). Installed only when missing; root or sudo needed once.
DEB_PACKAGES := chromium chromium-driver postgresql kcat
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
.deb-packages:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi

# Benchmarks need the dev set plus the `bench` extra: river (its bundled ImageSegments) and fast_hdbscan (compared).
$(VENV)/.installed-bench: $(VENV)/.installed-dev
	$(PIP) install -q -e '.[bench]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/segscope demo

lint: install-dev
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

# Everything, CI's run (.ci/run): the services the tests start need the broker's jars and the Debian packages.
test: lint $(KAFKA_LIB)/.resolved $(REGISTRY_APP) .deb-packages
	$(VENV)/bin/pytest -q

# The fast lane: no Kafka, Spark, PostgreSQL or Chromium needed, nor the slowest tests (markers set by
# tests/conftest.py from the fixtures and helpers each test uses); 4 minutes on 2 cores. Two pytest-xdist workers,
# each on one thread (two thread pools per worker on 2 cores took half as long again in contention).
FAST_THREADS := OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 POLARS_MAX_THREADS=1 NUMBA_NUM_THREADS=1
test-fast: lint
	$(FAST_THREADS) $(VENV)/bin/pytest -q -n 2 -m "not kafka and not spark and not postgres and not browser and not slow"

# The docs site (docs/, mkdocs.yml) into site/; the tests build it too (tests/test_docs.py).
docs: install-dev
	$(VENV)/bin/mkdocs build --strict

bench: $(VENV)/.installed-bench $(KAFKA_LIB)/.resolved $(REGISTRY_APP)
	$(PY) benchmarks/adbench_unsupervised.py --data $(SHARED_DATA)
	$(PY) benchmarks/adbench_label_informed.py --data $(SHARED_DATA) --learners xgboost,torch
	$(PY) benchmarks/finetune_speed.py
	$(PY) benchmarks/score_speed.py --data $(SHARED_DATA)
	$(PY) benchmarks/format_speed.py --data $(SHARED_DATA)
	$(PY) benchmarks/real_fraud.py --data $(SHARED_DATA)
	$(PY) benchmarks/spark_score.py
	$(PY) benchmarks/stream_throughput.py
	$(PY) benchmarks/entity_stream.py
	$(PY) benchmarks/packs.py --data $(SHARED_DATA)
	$(PY) benchmarks/segments_quality.py --data $(SHARED_DATA)
	$(PY) benchmarks/adbench_segments.py --data $(SHARED_DATA)
	$(PY) benchmarks/queue_quality.py --data $(SHARED_DATA)
	$(PY) benchmarks/segments_defaults.py --data $(SHARED_DATA)
	$(PY) benchmarks/segments_fit_time.py
	$(PY) benchmarks/hdbscan_choice.py --data $(SHARED_DATA)
	$(PY) benchmarks/segment_features.py --data $(SHARED_DATA)

clean:
	rm -rf $(VENV) segscope-demo site .pytest_cache .mypy_cache .ruff_cache
