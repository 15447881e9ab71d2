# imgsim: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 50061
HTTP_PORT ?= 8080
SHARED ?= ../shared/data
PROTO := protos/imgsim/v1/similarity.proto
GENERATED := protos/imgsim/v1/similarity_pb2.py protos/imgsim/v1/similarity_pb2_grpc.py \
             protos/imgsim/v1/similarity_pb2.pyi

.DEFAULT_GOAL := help
.PHONY: help install generate-protos demo test check check-installs bench bench-startup bench-faces bench-scale bench-collections bench-quality study report export soak screenshots clean

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

install: $(STAMP) ## Create .venv and install the package with its pinned dependencies

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all]'
	touch $(STAMP)

generate-protos: $(STAMP) ## Regenerate the Python modules and .pyi stubs from protos/
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=protos --pyi_out=protos \
	  --grpc_python_out=protos $(PROTO)

datasets/demo/pairs.csv: datasets/pairs.py | $(STAMP)
	$(PY) -m imgsim_datasets.pairs near-dup --out datasets/demo

demo: $(STAMP) datasets/demo/pairs.csv ## Build the demo pairs, serve (gRPC + HTTP page), score them over a stream, print the AUC, write an HTML report
	@set -euo pipefail; \
	$(VENV)/bin/imgsim-server --port $(PORT) --http-port $(HTTP_PORT) --log-level WARNING & pid=$$!; \
	trap 'kill $$pid 2>/dev/null; wait $$pid 2>/dev/null' EXIT; \
	$(VENV)/bin/imgsim-client datasets/demo/pairs.csv -o results/demo_scores.csv \
	  --server 127.0.0.1:$(PORT) --timeout 120; \
	$(VENV)/bin/imgsim-client evaluate results/demo_scores.csv --out results/demo \
	  --images-root datasets/demo --group-by transform; \
	echo "HTML report: results/demo/report.html"; \
	echo "Keep a server with the page up: $(VENV)/bin/imgsim-server --http-port $(HTTP_PORT), then open http://127.0.0.1:$(HTTP_PORT)/"

test: $(STAMP) ## Run the test suite (real server on loopback, real model, real images)
	$(PY) -m pytest -q

check: $(STAMP) ## Lint with ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check imgsim_server imgsim_client imgsim_lab imgsim_verify tests datasets

check-installs: $(STAMP) ## Base and [server] installs in throwaway venvs: no torch, sizes, real scores
	bash scripts/check_installs.sh

clean: ## Remove the venv, generated demo data and caches
	rm -rf $(VENV) datasets/demo .pytest_cache .ruff_cache

bench: $(STAMP) ## Throughput/latency benchmark -> results/bench.md, results/bench.json
	$(PY) -m imgsim_lab.bench

bench-startup: $(STAMP) ## Start to ready on a cold and a warm model cache, default and --models all -> results/startup.md
	$(PY) -m imgsim_lab.startup

bench-faces: $(STAMP) ## face vs the default CNN and the baselines on ORL, the face verdict thresholds -> results/faces.md
	$(PY) -m imgsim_lab.faces

bench-scale: $(STAMP) ## Replicas, Dask, failover, memory, perf sweep, capacity -> results/scale.md
	$(PY) -m imgsim_lab.scale

bench-collections: $(STAMP) ## Near-dup F1 vs imagededup, UKBench N-S by search, FAISS vs usearch, 10k-1M scale -> results/collections.md
	$(PY) -m imgsim_lab.collections_bench

bench-quality: $(STAMP) ## Holidays (evaluation only), UKBench, rotated UKBench: descriptors, rotations, DBA/QE, Holidays through the CLI; strong near-duplicates; dedup's rule by the worst of three development sets -> results/quality.md, neardup.md, dedup_rules.md
	$(PY) -m imgsim_lab.quality
	$(PY) -m imgsim_lab.neardup
	$(PY) -m imgsim_lab.dedup_rules

study: $(STAMP) ## Model/preprocessing grid, the default's rule, thresholds; then every approach via the server -> results/study.md, models.json, ROC charts
	$(PY) -m imgsim_lab.model_study
	$(PY) -m imgsim_lab.study

screenshots: $(STAMP) ## Browser tests that also save results/web_page.png and results/report_html.jpg
	IMGSIM_SCREENSHOTS=1 $(PY) -m pytest -q tests/test_web.py

report: $(STAMP) ## Build results/report.pdf from the study's files (no server needed)
	$(PY) -m imgsim_lab.report

soak: $(STAMP) ## 16 streams x 500 pairs with 2% bad inputs, cancels, a non-reading client; then the attacks (slow HTTP, 50 MB images, every model) -> results/soak.md
	$(PY) -m imgsim_lab.soak

export: $(STAMP) ## Build the cached ONNX graphs (fp32 and int8) ahead of first use
	$(VENV)/bin/imgsim-server export
