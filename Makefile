# Set-up and the main job. `make demo` detects faces in the tracked photo data/friends.jpg;
# `make test` runs the tests. Models, more photos and WIDER FACE come from SHARED when it exists
# (this repository's CI and development machines); elsewhere the model is downloaded from
# InsightFace's release, or from the mirror named by SCRFD_MODEL_URL (a folder URL holding
# buffalo_sc.zip), and checked against its sha256.
PYTHON ?= python3
VENV ?= .venv
INFERENCE_VENV ?= .venv-inference
SHARED ?= ../shared
MODELS_SRC ?= $(SHARED)/models
WIDER_SRC ?= $(SHARED)/widerface
HW ?= 480,640
BIN := $(VENV)/bin
RUN := $(BIN)/python
comma := ,
HW_NAME := $(subst $(comma),x,$(HW))
DEMO_MODEL := models/scrfd500m_$(HW_NAME)_float32.tflite

.PHONY: demo setup test test-readme test-inference data docs exports compare clean mediapipe-check
.DEFAULT_GOAL := demo

demo: setup $(DEMO_MODEL)
	$(RUN) scrfd.py --image data/friends.jpg --model $(DEMO_MODEL) --out results

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-peers.txt requirements-mobile.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-peers.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-mobile.txt
	touch $@

models/det_500m.onnx: | setup
	@mkdir -p models
	if [ -f "$(MODELS_SRC)/det_500m.onnx" ]; then cp "$(MODELS_SRC)/det_500m.onnx" $@; \
	else $(RUN) export_modified_onnx.py --download buffalo_sc; fi

models/det_500m_$(HW_NAME).onnx: models/det_500m.onnx
	$(RUN) export_modified_onnx.py --model $< --hw $(HW)

$(DEMO_MODEL): models/det_500m_$(HW_NAME).onnx
	$(RUN) export_tflite.py --onnx $<

# WIDER FACE (calibration, evaluation), the sample photos and videos, the peer detectors:
# linked from SHARED, never copied. Elsewhere: docs/data.md says where to get each.
SAMPLES_SRC ?= $(SHARED)/samples
PEERS_SRC ?= $(MODELS_SRC)/peers
data:
	@for d in WIDER_val ground_truth wider_face_split dev_images.txt; do \
	  [ -e data/$$d ] || [ ! -e "$(WIDER_SRC)/$$d" ] || ln -s "$$(cd "$(WIDER_SRC)" && pwd)/$$d" data/$$d; done
	@[ -e data/samples ] || [ ! -d "$(SAMPLES_SRC)" ] || ln -s "$$(cd "$(SAMPLES_SRC)" && pwd)" data/samples
	@mkdir -p models; [ -e models/peers ] || [ ! -d "$(PEERS_SRC)" ] || ln -s "$$(cd "$(PEERS_SRC)" && pwd)" models/peers
	@ls data

# The README's pictures, made by scrfd.py from the demo photo: annotated, blurred, aligned crops.
docs: demo
	$(RUN) scrfd.py --image data/friends.jpg --model $(DEMO_MODEL) --out docs --format png \
	  --json results/docs/faces.jsonl
	$(RUN) scrfd.py --image data/friends.jpg --model $(DEMO_MODEL) --out docs/blurred --blur \
	  --json results/docs/blurred.jsonl
	$(RUN) scrfd.py --image data/friends.jpg --model $(DEMO_MODEL) --out results/docs \
	  --crops docs/crops

# Every SCRFD configuration of the README's tables: det_500m and det_2.5g x 4 sizes x
# float32 / float16 / int8 (int8 calibrated on WIDER FACE val). Existing files are kept.
FAMILIES ?= 500m 2.5g
SIZES ?= 640,640 480,640 256,320 128,160
exports: setup data
	@set -e; for f in $(FAMILIES); do \
	  [ -f models/det_$$f.onnx ] || cp "$(MODELS_SRC)/det_$$f.onnx" models/ 2>/dev/null || \
	    $(RUN) export_modified_onnx.py --download $$( [ $$f = 500m ] && echo buffalo_sc || echo buffalo_m ); \
	  for hw in $(SIZES); do n=$$(echo $$hw | tr , x); \
	    [ -f models/det_$${f}_$$n.onnx ] || $(RUN) export_modified_onnx.py --model models/det_$$f.onnx --hw $$hw; \
	    [ -f models/scrfd$${f}_$${n}_float32.tflite ] || $(RUN) export_tflite.py --onnx models/det_$${f}_$$n.onnx; \
	    [ -f models/scrfd$${f}_$${n}_float16.tflite ] || $(RUN) export_tflite.py --onnx models/det_$${f}_$$n.onnx --fp16; \
	    [ -f models/scrfd$${f}_$${n}_int8.tflite ] || $(RUN) export_tflite.py --onnx models/det_$${f}_$$n.onnx --int8; \
	  done; done

# "How does it compare?": every peer and every SCRFD configuration on WIDER FACE val (official
# and rough protocols; runs resume where they stopped), then timed side by side.
PEERS ?= blazeface_short blazeface_full yunet haar seed_tflite thirdparty_tflite insightface
compare: exports
	@for p in $(PEERS); do $(RUN) evaluate_widerface.py --detector $$p --wider data --protocol rough \
	  --out results/compare/$$p --threads 1 || echo "skipped $$p"; done
	$(RUN) evaluate_widerface.py --grid --protocol rough --wider data --out results/compare/scrfd \
	  $(foreach f,$(FAMILIES),$(foreach hw,$(subst $(comma),x,$(SIZES)),$(foreach p,float32 float16 int8,--model models/scrfd$(f)_$(hw)_$(p).tflite)))
	$(RUN) compare_detectors.py --detectors $(PEERS) --threads 1 --eval-results 'results/compare/**/results.json'

test: setup
	SCRFD_SHARED=$(SHARED) $(RUN) -m pytest tests -q -m "not readme"

# The README's step-by-step block, as written, in a fresh clone beside SHARED (a few minutes).
test-readme: setup
	SCRFD_SHARED=$(SHARED) $(RUN) -m pytest tests -q -m readme

# The tests marked `inference` (those whose outcome depends on the inference packages' versions)
# again, in an environment made by `pip install .` alone (the package with its inference
# dependencies: no TensorFlow; current numpy, OpenCV, ONNX Runtime, LiteRT) plus Ray
# (requirements-scale.txt). Uses the exports `make test` left in .cache/tests/<key>, made by the
# same exporter code from the same model.
$(INFERENCE_VENV)/.installed: pyproject.toml requirements-scale.txt
	$(PYTHON) -m venv $(INFERENCE_VENV)
	$(INFERENCE_VENV)/bin/pip install --quiet --upgrade pip
	$(INFERENCE_VENV)/bin/pip install --quiet .
	$(INFERENCE_VENV)/bin/pip install --quiet -r requirements-scale.txt pytest==9.2.0 wheel==0.48.0
	touch $@

test-inference: $(INFERENCE_VENV)/.installed
	SCRFD_SHARED=$(SHARED) $(INFERENCE_VENV)/bin/python -m pytest tests -q -m inference

# The object-detector export in the current MediaPipe (1.2.x, its own environment: numpy 2,
# protobuf 5+), as an app loads it: the MediaPipe test of tests/test_mobile.py run there.
MEDIAPIPE_VENV ?= .venv-mediapipe
$(MEDIAPIPE_VENV)/.installed: requirements-mediapipe.txt
	$(PYTHON) -m venv $(MEDIAPIPE_VENV)
	$(MEDIAPIPE_VENV)/bin/pip install --quiet -r requirements-mediapipe.txt
	touch $@

mediapipe-check: setup $(MEDIAPIPE_VENV)/.installed
	SCRFD_SHARED=$(SHARED) SCRFD_MEDIAPIPE_PYTHON=$(MEDIAPIPE_VENV)/bin/python $(RUN) -m pytest \
	  tests/test_mobile.py -q -k mediapipe_object_detector

clean:
	rm -rf .cache results/* models/*_float32.tflite* models/*_int8.tflite* $(INFERENCE_VENV)
