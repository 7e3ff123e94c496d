# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean bench

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	# torch is pinned in the same command as everything that depends on it (keeps the CPU wheel).
	$(PY) -m pip install -q -e '.[train,runtime,test]' torch==2.13.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hcq-ros demo --out out/demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests

# docs/benchmarks.md (+ JSON and PNG): the whole grid of DESIGN.md section 8 on the shipped models; takes
# about half an hour on 2 cores and must run on an otherwise idle machine.
bench: $(STAMP)
	$(VENV)/bin/hcq-ros bench --detector engines/hcq_small.onnx --person engines/person_small.onnx \
	    --backend onnxruntime torch --threads 1 2 --sizes 256 320 384 512 --people 0 1 5 10 20 \
	    --force-people --unified-vs-separate --json docs/benchmarks.json --markdown docs/benchmarks.md \
	    --plot docs/benchmarks.png

clean:
	rm -rf $(VENV) out
