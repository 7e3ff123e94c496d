# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean bench ship-detector

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

# docs/benchmarks.md (+ JSON and PNG): the whole grid of DESIGN.md section 8 on the shipped models (one frame at a
# time), then at the node's 320x320 one frame at a time and pipelined (detector one frame ahead on a second thread),
# fp32 (docs/benchmarks_pipelined.*) and the int8 profile (docs/benchmarks_int8.*); 29 minutes on 2 cores, on
# an otherwise idle machine.
bench: $(STAMP)
	$(VENV)/bin/hcq-ros bench --detector engines/hcq_small.onnx --person engines/person_small.onnx \
	    --backend onnxruntime torch --threads 1 2 --sizes 256 320 384 512 --people 0 1 5 10 20 \
	    --force-people --unified-vs-separate --json docs/benchmarks.json --markdown docs/benchmarks.md \
	    --plot docs/benchmarks.png
	$(VENV)/bin/hcq-ros bench --detector engines/hcq_small.onnx --person engines/person_small.onnx \
	    --backend onnxruntime --threads 1 2 --sizes 320 --people 0 1 5 10 20 --force-people \
	    --schedule sequential pipelined \
	    --json docs/benchmarks_pipelined.json --markdown docs/benchmarks_pipelined.md --plot docs/benchmarks_pipelined.png
	$(VENV)/bin/hcq-ros bench --detector engines/hcq_small.int8.onnx --person engines/person_small.int8.onnx \
	    --backend onnxruntime --threads 1 2 --sizes 320 --people 0 1 5 10 20 --force-people \
	    --schedule sequential pipelined \
	    --json docs/benchmarks_int8.json --markdown docs/benchmarks_int8.md --plot docs/benchmarks_int8.png

# Ship a trained HCQNet: weights-only snapshot of RUN's last checkpoint -> the three exports at the node's 320x320
# -> COCO AP on the held-out 500 images (seed 2000003, never trained on) -> score/tracker thresholds by IDF1 on
# separate calibration sequences (seed 3000001). Copy the printed thresholds into launch/params.yaml.
RUN ?= runs/hcq_small_v2
VAL500 := runs/heldout/hcq_val500
CALIB_SEQ := runs/heldout/seq_calib
$(VAL500): | $(STAMP)
	$(VENV)/bin/hcq-ros synth --out $@ --images 500 --size 320 --max-people 10 --seed 2000003 --no-progress
$(CALIB_SEQ): | $(STAMP)
	$(VENV)/bin/hcq-ros synth --out $@ --sequences 6 --frames 150 --identities 30 --size 320 --max-people 8 \
	    --seed 3000001 --no-progress
ship-detector: $(STAMP) | $(VAL500) $(CALIB_SEQ)
	$(PY) -m hcq_ros.train.snapshot $(RUN)/last.pt engines/hcq_small.pt
	$(VENV)/bin/hcq-ros export --model engines/hcq_small.pt --target all --size 320 320
	$(VENV)/bin/hcq-ros export --model engines/hcq_small.pt --target onnxruntime-int8 --size 320 320
	$(VENV)/bin/hcq-ros eval --model engines/hcq_small.int8.onnx --data $(VAL500) \
	    --json docs/hcq_small_int8_heldout.json
	$(VENV)/bin/hcq-ros eval --model engines/hcq_small.pt --data $(VAL500) --input-size 320 320 \
	    --json docs/hcq_small_heldout.json
	$(VENV)/bin/hcq-ros calibrate --data $(CALIB_SEQ) --json docs/hcq_small_calibration.json --no-progress

clean:
	rm -rf $(VENV) out
