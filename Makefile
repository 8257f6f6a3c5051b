# Set-up and the main job. `make demo` detects faces in the sample photo; `make test` runs the tests.
# Models, photos and WIDER FACE come from SHARED when it exists (this repository's CI and
# development machines); elsewhere the model is downloaded and the photo must be put in data/.
PYTHON ?= python3
VENV ?= .venv
SHARED ?= ../shared
MODELS_SRC ?= $(SHARED)/models
SAMPLES_SRC ?= $(SHARED)/samples
WIDER_SRC ?= $(SHARED)/widerface
HW ?= 480,640
BIN := $(VENV)/bin
RUN := $(BIN)/python
comma := ,
HW_NAME := $(subst $(comma),x,$(HW))

.PHONY: demo setup test data docs clean
.DEFAULT_GOAL := demo

demo: setup models/scrfd500m_$(HW_NAME)_float32.tflite data/friends.jpg
	$(RUN) scrfd.py --image data/friends.jpg --model models/scrfd500m_$(HW_NAME)_float32.tflite --out results

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-inference.txt requirements-peers.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-peers.txt
	touch $@

models/det_500m.onnx: | setup
	@mkdir -p models
	if [ -f "$(MODELS_SRC)/det_500m.onnx" ]; then cp "$(MODELS_SRC)/det_500m.onnx" $@; \
	else $(RUN) export_modified_onnx.py --download buffalo_sc; fi

models/det_500m_$(HW_NAME).onnx: models/det_500m.onnx | data/friends.jpg
	$(RUN) export_modified_onnx.py --model $< --hw $(HW)

models/scrfd500m_$(HW_NAME)_float32.tflite: models/det_500m_$(HW_NAME).onnx | data/friends.jpg
	$(RUN) export_tflite.py --onnx $<

data/friends.jpg:
	@mkdir -p data
	@if [ -f "$(SAMPLES_SRC)/friends.jpg" ]; then cp "$(SAMPLES_SRC)/friends.jpg" $@; \
	else echo "put a photo with faces at $@ (see README, 'Data')"; exit 1; fi

# WIDER FACE for calibration and evaluation: linked, never copied.
data: data/friends.jpg
	@for d in WIDER_val ground_truth wider_face_split; do \
	  [ -e data/$$d ] || [ ! -e "$(WIDER_SRC)/$$d" ] || ln -s "$$(cd "$(WIDER_SRC)" && pwd)/$$d" data/$$d; done

# The README's picture: made by scrfd.py from the sample photo.
docs: demo
	$(RUN) scrfd.py --image data/friends.jpg --model models/scrfd500m_$(HW_NAME)_float32.tflite \
	  --out docs --format png --json results/docs_faces.jsonl

test: setup
	SCRFD_SHARED=$(SHARED) $(RUN) -m pytest tests -q

clean:
	rm -rf .cache results/* models/*_float32.tflite* models/*_int8.tflite*
