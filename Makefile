# The README's two set-up commands: `make serve` and `make test`. Each creates .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install system-packages serve test stop clean

install: $(STAMP)

# pip (not uv/poetry): on the project's machines it takes torch/torchvision from local disk.
# constraints.txt holds the versions the suite last passed with.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --constraint constraints.txt -e '.[test]'
	touch $@

# The online cluster in the foreground at http://127.0.0.1:$${PORT:-8000}, until Ctrl-C.
# MODEL picks the checkpoint (default: the tiny one, generated on first use).
serve: install
	$(PY) -m serve

test: install system-packages
	HF_HUB_OFFLINE=1 $(PY) -m pytest

# Debian packages the tests run for real: a Prometheus server scraping the test cluster, and a
# headless Chromium (driven through chromedriver) for the editing page.
SYSTEM_PACKAGES := prometheus chromium chromium-driver
system-packages:
	@command -v prometheus >/dev/null && command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null 2>&1 || \
		{ apt-get update -qq && apt-get install -y --no-install-recommends $(SYSTEM_PACKAGES); }; }

# Ends whatever a killed `make serve` left behind (it stops everything Ray on this machine).
stop:
	-$(VENV)/bin/ray stop --force

clean:
	rm -rf $(VENV) models
