# vggproto: `make test` sets up a venv and runs the tests; `make demo` sets up and runs the main job.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch/torchvision pinned to the wheels that ship with this project's machines (see README).
TORCH := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: test demo demo-full paper setup proto graphviz fashion-mnist clean wheel-check

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

graphviz:
	@command -v dot >/dev/null 2>&1 || { (apt-get update -qq && apt-get install -y -qq graphviz >/dev/null) \
	  || echo "note: could not install graphviz (dot); drawing to .svg/.png needs it"; }

test: setup graphviz wheel-check
	$(VENV)/bin/ruff check vggproto tests tools
	$(VENV)/bin/pytest -q -n 2 --dist loadfile tests

# Build the wheel and install it (not editable) into a clean venv: a packaging mistake fails `make test`.
wheel-check: setup
	rm -rf build/wheel
	$(PIP) wheel -q --no-deps -w build/wheel .
	TORCH="$(TORCH)" bash tests/wheel_smoke.sh

# Debian's dataset-fashion-mnist: the full Fashion-MNIST (60,000 + 10,000 images) as idx files, offline.
fashion-mnist:
	@test -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz || \
	  { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; }

demo: setup graphviz fashion-mnist
	$(VENV)/bin/python tools/demo.py

# The long run: 8,000 iterations with the paper's step schedule (about 8 minutes on 2 cores).
demo-full: setup graphviz fashion-mnist
	$(VENV)/bin/python tools/demo.py --full --work demo-run-full

# The paper's Tables 3-6 at small scale: `vggproto reproduce` on Fashion-MNIST, six nets at widths / 8, two seeds
# (resumable in paper-run/; writes docs/paper/{TABLES.md,tables.png,results.json}; see docs/notes/reproduce.md).
paper: setup fashion-mnist
	$(VENV)/bin/python tools/paper.py

# Regenerate vggproto/caffe/proto/caffe_pb2.py from proto/caffe.proto (needs the dev extra: grpcio-tools).
proto:
	$(PIP) install -q 'grpcio-tools==1.85.1'
	$(PY) -m grpc_tools.protoc -Iproto --python_out=vggproto/caffe/proto proto/caffe.proto

clean:
	rm -rf $(VENV) build *.egg-info
