# The two promises of the README:
#   make demo   set up .venv, then train, quantize, test (4 columns), export and run C on LeNet/MNIST
#   make test   set up .venv, then run every test
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODEL ?= lenet

.PHONY: demo test venv c bench bench-setup vnni-peak clean-venv

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

c:
	$(MAKE) -C c

demo: venv c
	$(PY) train_model.py --model=$(MODEL)
	$(PY) quant_model.py --model=$(MODEL)
	$(PY) test_model.py --model=$(MODEL)
	$(PY) export_quant_model.py --model=$(MODEL)
	./c/inference --model $(MODEL)

test: venv c
	$(PY) -m pytest -q tests

# C INT8 against PyTorch fp32/INT8 and ONNX Runtime INT8 (benchmarks/requirements.txt)
bench-setup: venv
	$(PY) -m pip install --quiet --disable-pip-version-check -r benchmarks/requirements.txt

bench: bench-setup c
	$(PY) benchmarks/bench_inference.py --model=$(MODEL) --json=benchmarks/results/$(MODEL).json

# one core's int8 multiply-accumulate ceiling (AVX-512 VNNI): what the C engine's GMAC/s reads against
vnni-peak:
	mkdir -p build
	$(CC) -O2 -march=native -Wall -Wextra -o build/vnni_peak benchmarks/vnni_peak.c
	./build/vnni_peak

clean-venv:
	rm -rf $(VENV)
