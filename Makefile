# The two promises of the README:
#   make demo   set up .venv, then train, quantize, test (4 columns), export and run C on LeNet/MNIST,
#               all under runs/demo/ (the shipped files untouched)
#   make test   set up .venv, then run every test
#   make test-fast  the C engine and integer-engine tests only (under a minute on 2 cores)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODEL ?= lenet

.PHONY: demo test test-fast test-models venv c bench vnni-peak amx-peak clean-venv

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt tests/requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r tests/requirements.txt
	touch $@

c:
	$(MAKE) -C c

# the demo writes under DEMO (runs/ is git-ignored): the shipped models, exports and results stay as
# they are, and `git status` stays clean; TRAIN_FLAGS for a quicker run, e.g. --epochs=1
DEMO ?= runs/demo
DEMO_DIRS = --pretrained_dir=$(DEMO)/pretrained --quant_dir=$(DEMO)/quantization
demo: venv c
	$(PY) train_model.py --model=$(MODEL) --pretrained_dir=$(DEMO)/pretrained $(TRAIN_FLAGS)
	$(PY) quant_model.py --model=$(MODEL) $(DEMO_DIRS)
	$(PY) test_model.py --model=$(MODEL) $(DEMO_DIRS)
	$(PY) export_quant_model.py --model=$(MODEL) $(DEMO_DIRS) --export_dir=$(DEMO)/export_model
	./c/inference --dir $(DEMO)/export_model --model $(MODEL)
	@echo "demo: everything it made is under $(DEMO)/"

test: venv c
	$(PY) -m pytest -q tests

# the engines and their files: C (every build), numpy, torch, the golden LeNet, model.bin
FAST_TESTS := c_engine c_kernels engines narrow_clamps golden export qmath op_table
test-fast: venv c
	$(PY) -m pytest -q $(FAST_TESTS:%=tests/test_%.py)

# the slow acceptance cases: torchvision networks (random weights) bit-exact in numpy, torch and C;
# each shipped model's whole test set identical in every ISA build, batch and thread count
test-models: venv c
	$(PY) -m pytest -q -m models tests/test_torchvision_models.py tests/test_shipped_models.py

# C INT8 against PyTorch fp32/INT8 and ONNX Runtime INT8 (onnx and onnxruntime: the venv's)
bench: venv c
	$(PY) benchmarks/bench_inference.py --model=$(MODEL) --json=benchmarks/results/$(MODEL).json

# one core's int8 multiply-accumulate ceiling (AVX-512 VNNI): what the C engine's GMAC/s reads against
vnni-peak:
	mkdir -p build
	$(CC) -O2 -march=native -Wall -Wextra -o build/vnni_peak benchmarks/vnni_peak.c
	./build/vnni_peak

# one core's AMX-INT8 ceiling (tdpbusd): what the C engine's AMX build reads against
amx-peak:
	mkdir -p build
	$(CC) -O2 -mamx-tile -mamx-int8 -Wall -Wextra -o build/amx_peak benchmarks/amx_peak.c
	./build/amx_peak

clean-venv:
	rm -rf $(VENV)

# every table of figures in README.md and docs/*.md, rewritten from the results files (docs/tables.py;
# `python docs/tables.py --check` compares without writing: tests/test_docs.py)
docs: venv
	$(PY) docs/tables.py

.PHONY: docs
