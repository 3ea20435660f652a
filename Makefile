# promptviz: `make test` and `make demo` are all a fresh machine needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The oldest open_clip_torch promptviz supports (pyproject.toml says why; a test checks
# that the two agree). `make test` runs tests/test_backbone.py against it once more,
# from a copy installed beside the venv (no dependencies: they are the venv's).
OPEN_CLIP_FLOOR := 3.1.0
FLOOR       := $(VENV)/floor
FLOOR_STAMP := $(FLOOR)/.open_clip-$(OPEN_CLIP_FLOOR)-stamp

.PHONY: install test test-floor test-browser lint demo notebooks student clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check promptviz tests

# tests/ on CPU (tests/browser included: it needs Chromium, which it apt-get installs as
# root; elsewhere `make test PYTEST_ARGS='-m "not browser"'` leaves it out), then every
# notebook re-executed and compared by nbval (lax mode: the cells tagged
# nbval-check-output must print what the committed notebook shows).
PYTEST_ARGS ?=
test: $(STAMP) lint
	PATH="$(CURDIR)/$(BIN):$$PATH" PROMPTVIZ_PROGRESS=0 $(BIN)/python -m pytest -q \
	    -p no:cacheprovider tests notebooks --nbval-lax --sanitize-with notebooks/sanitize.cfg \
	    $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory test-floor

# The backbone and hook-point tests on the oldest supported open_clip_torch (part of
# `make test`, ~30 s): the hook points run open_clip's blocks part by part.
$(FLOOR_STAMP): | $(STAMP)
	rm -rf $(FLOOR)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps \
	    --target $(FLOOR) open_clip_torch==$(OPEN_CLIP_FLOOR)
	@touch $@

test-floor: $(FLOOR_STAMP)
	PYTHONPATH=$(FLOOR) $(BIN)/python -c "import open_clip, sys; \
	    print('open_clip', open_clip.__version__, 'from', open_clip.__file__); \
	    sys.exit(open_clip.__version__ != '$(OPEN_CLIP_FLOOR)')"
	PYTHONPATH=$(FLOOR) PROMPTVIZ_OPEN_CLIP_FLOOR=$(OPEN_CLIP_FLOOR) PROMPTVIZ_PROGRESS=0 \
	    $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_backbone.py tests/test_hooks.py

# Only the browser tests (also part of `make test`): JupyterLab and the standalone HTML
# exports in headless Chromium via Playwright. They apt-get install chromium when it is
# missing and we are root; screenshots go to runs/browser/.
test-browser: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" PROMPTVIZ_PROGRESS=0 $(BIN)/python -m pytest -q \
	    -p no:cacheprovider tests/browser --durations=5

# Re-execute the notebooks in place (after a library change that alters what they print).
notebooks: $(STAMP)
	cd notebooks && for nb in *.ipynb; do PROMPTVIZ_PROGRESS=0 ../$(BIN)/jupyter nbconvert \
	    --to notebook --execute --inplace --ExecutePreprocessor.timeout=600 $$nb || exit 1; done
	$(BIN)/python notebooks/colab.py   # the Colab cells as written (executing stamps them)

demo: $(STAMP)
	$(BIN)/promptviz demo

# Your own copies of the notebooks in student/ (not tracked by git): run and edit them
# there, and notebooks/ stays as committed. Copies you already have are never replaced;
# student/studies links to the shipped studies, so every relative path still holds.
student:
	@mkdir -p student
	@for nb in notebooks/*.ipynb; do test -e student/$${nb#notebooks/} || cp $$nb student/; done
	@ln -sfn ../notebooks/studies student/studies
	@echo "student/ holds your copies: cd student && ../$(BIN)/jupyter lab"

clean:
	rm -rf runs .pytest_cache
