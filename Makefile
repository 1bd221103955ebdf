# Two entry points (see README): `make bench` (the main job) and `make test`; `make demo` is a seconds-long look.
# Both create .venv on first use with the CPU torch pin (torch==2.13.0; an unpinned torch pulls a CUDA build).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sada-installed
export HF_HUB_OFFLINE := 1
# the main job's two micro-batches run in two processes of one torch thread each when the machine has two cores
# (accelerate launch; results are bit-identical to one process with one thread, tested in tests/test_bench.py)
BENCH_JOBS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ "$$n" -ge 2 ] && echo 2 || echo 1)

.PHONY: install test demo bench front lab-docs

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,bench,docs]"
	# the benchmark harness (benchmarks/) is not in the package: put the checkout on the venv's path for `sada bench`
	$(BIN)/python -c "import site, pathlib; pathlib.Path(site.getsitepackages()[0], 'sada-checkout.pth').write_text('$(CURDIR)\n')"
	# k-diffusion's own requirements pull torchvision and a CUDA torch: install the package alone
	$(BIN)/python -m pip install -q --no-deps k-diffusion==0.1.1.post1
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	HYPOTHESIS_PROFILE=ci $(BIN)/python -m pytest -q
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet -d $$(mktemp -d)

demo: $(STAMP)
	$(BIN)/sada demo

bench: $(STAMP)
ifeq ($(BENCH_JOBS),1)
	$(BIN)/sada bench --threads 1
else
	$(BIN)/python -m accelerate.commands.launch --multi_gpu --num_processes $(BENCH_JOBS) --num_machines 1 \
		--mixed_precision no --dynamo_backend no -m benchmarks bench --threads 1
endif

front: $(STAMP)
	$(BIN)/python -m benchmarks.regenerate_front --update docs/results/front.md

lab-docs: $(STAMP)
	$(BIN)/python -m benchmarks.lab.experiments > docs/results/lab-results.md
