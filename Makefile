# Quick start:  make scan   (head atlas of smollm2-135m; prints the HTML report's path)
#               make lab    (JupyterLab on notebooks/, with the workbench installed)
#               make test   (the whole test suite; installs Debian's chromium for the browser test)
#               make docs   (the documentation site into site/, offline; mkdocs build --strict)
# Both create .venv and install what is missing first. Pass extra arguments with ARGS="...".
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch goes in first: a bare `torch` requirement can pull a multi-GB CUDA build.
# On a machine without the local CPU wheel, e.g. TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
TORCH  ?= torch==2.13.0

.PHONY: install scan test lab docs chromium clean
install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

scan: $(STAMP)
	$(BIN)/workbench scan $(ARGS)

test: $(STAMP) chromium
	$(BIN)/python -m pytest $(ARGS)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict -d site

# Debian's Chromium for tests/browser (Playwright drives /usr/bin/chromium; no browser is downloaded)
# (best effort: where apt is unavailable the browser test says so and skips)
chromium:
	@test -x /usr/bin/chromium || { $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq \
	  --no-install-recommends chromium fonts-dejavu-core; } || echo "make: could not install chromium; tests/browser will skip"

clean:
	rm -rf $(VENV) runs site .pytest_cache
