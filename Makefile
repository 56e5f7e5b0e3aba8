# The two promises of the README:
#   make demo   set up .venv, then train, quantize, test (4 columns), export and run C on LeNet/MNIST
#   make test   set up .venv, then run every test
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODEL ?= lenet

.PHONY: demo test venv c clean-venv

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

clean-venv:
	rm -rf $(VENV)
