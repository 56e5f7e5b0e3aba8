# The two promises of the README:
#   make demo   set up .venv, then quantize the shipped LeNet, test it (4 columns), export it and run
#               the C engine, all under runs/demo/ (the shipped files untouched), and print a summary
#   make test   set up .venv, then run every test
#   make demo-train  the same, retraining LeNet first (the whole pipeline)
#   make test-fast   the engines' and files' tests, under 3 minutes on 2 cores (what it leaves out: below)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODEL ?= lenet

.PHONY: demo demo-train test test-fast test-models venv c bench vnni-peak amx-peak avx2-peak clean-venv

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt tests/requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r tests/requirements.txt
	touch $@

NPROC := $(shell nproc 2>/dev/null || echo 1)
c:
	$(MAKE) -C c -j$(NPROC)

# the demo writes under DEMO (runs/ is git-ignored): the shipped models, exports and results stay as
# they are, and `git status` stays clean. $(call demo_pipeline,FOLDER): from FOLDER's checkpoint,
# quantize -> test (4 columns) -> export -> the C engine on its own -> one summary table
DEMO ?= runs/demo
define demo_pipeline
	$(PY) quant_model.py --model=$(MODEL) --pretrained_dir=$(1) --quant_dir=$(DEMO)/quantization
	$(PY) test_model.py --model=$(MODEL) --pretrained_dir=$(1) --quant_dir=$(DEMO)/quantization \
		--test_batch=256 --json=$(DEMO)/test.json
	$(PY) export_quant_model.py --model=$(MODEL) --pretrained_dir=$(1) --quant_dir=$(DEMO)/quantization \
		--export_dir=$(DEMO)/export_model
	./c/inference --dir $(DEMO)/export_model --model $(MODEL)
	$(PY) tools/demo_summary.py $(DEMO) $(MODEL)
endef

demo: venv c
	$(call demo_pipeline,pretrained)

# TRAIN_FLAGS for a quicker run, e.g. --epochs=1
demo-train: venv c
	$(PY) train_model.py --model=$(MODEL) --pretrained_dir=$(DEMO)/pretrained $(TRAIN_FLAGS)
	$(call demo_pipeline,$(DEMO)/pretrained)

# the C binaries the tests run, made in parallel first (each test module's fixture then finds them made)
C_TESTED := inference inference_portable inference_omp inference_asan inference_asan_portable
test: venv
	$(MAKE) -C c -j$(NPROC) $(C_TESTED) inference_asan_omp inference_valgrind
	$(PY) -m pytest -q tests

# the engines and their files in under 3 minutes on 2 cores: C (the x86-64 builds, under ASan/UBSan
# too), numpy, torch, the golden LeNet, model.bin and txt, on every core (pytest-xdist; the binaries
# are made first, so no two workers build one). Left out, `make test` runs them: aarch64 under qemu
# and valgrind (-k below); training, the stage scripts' options and error lines, user models, hostile
# inputs, the work cap, batches and threads, golden vectors, ONNX, the report, firmware under QEMU,
# fuzzing, the docs' tables
FAST_TESTS := c_engine c_kernels engines narrow_clamps golden export qmath op_table
test-fast: venv
	$(MAKE) -C c -j$(NPROC) $(C_TESTED)
	$(PY) -m pytest -q -n $(NPROC) $(FAST_TESTS:%=tests/test_%.py) -k "not aarch64 and not cpu_lacks"

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

# one core's AVX2 ceilings, the u8-pair (vpmaddubsw) and int16 (vpmaddwd) steps of the C engine's avx2 build
avx2-peak:
	mkdir -p build
	$(CC) -O2 -mavx2 -Wall -Wextra -o build/avx2_peak benchmarks/avx2_peak.c
	./build/avx2_peak

# one core's AMX-INT8 ceiling (tdpbusd): what the C engine's AMX build reads against
amx-peak:
	mkdir -p build
	$(CC) -O2 -mamx-tile -mamx-int8 -Wall -Wextra -o build/amx_peak benchmarks/amx_peak.c
	./build/amx_peak

# Peers on the same work (issue 27 item 8): Brevitas's post-training quantization on the shipped
# checkpoints, for comparison only. Its own venv (.venv-peers, git-ignored) with the same torch;
# brevitas is not a dependency of FPGAI (not in requirements.txt). PEERS_FLAGS e.g. --limit=10000
PEERS_VENV := .venv-peers
PEERS_PINS := torch==2.14.1 torchvision==0.29.1 numpy==2.4.6 brevitas==0.13.4 dependencies==2.0.1 \
	unfoldNd==0.2.3 setuptools==80.10.2 sympy==1.14.0 packaging==26.4 typing_extensions==4.16.0 tqdm==4.70.1
peers-venv: $(PEERS_VENV)/.installed

$(PEERS_VENV)/.installed:
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check $(PEERS_PINS)
	touch $@

peers: peers-venv
	$(PEERS_VENV)/bin/python benchmarks/peer_ptq.py --json=results/peers/brevitas.json $(PEERS_FLAGS)

.PHONY: peers peers-venv

clean-venv:
	rm -rf $(VENV)

# every table of figures in README.md and docs/*.md, rewritten from the results files (docs/tables.py;
# `python docs/tables.py --check` compares without writing: tests/test_docs.py)
docs: venv
	$(PY) docs/tables.py

.PHONY: docs

# the RTL engine (docs/fpga.md) for TARGET (up5k or ecp5): Verilator logits of the first N test images
# (LOGITS=FILE, --logits format; DUMP=DIR: every op's outputs as golden vectors) and the cycles per image;
# the bitstream and results/fpga/MODEL_TARGET.json
rtl-sim: venv
	$(MAKE) -C c rtl-sim MODEL=$(MODEL) N=$(or $(N),1000) TARGET=$(or $(TARGET),up5k) \
	    $(if $(LOGITS),LOGITS=$(abspath $(LOGITS))) $(if $(DUMP),DUMP=$(abspath $(DUMP)))

fpga: venv
	$(MAKE) -C c fpga MODEL=$(MODEL) TARGET=$(or $(TARGET),up5k)

.PHONY: rtl-sim fpga
