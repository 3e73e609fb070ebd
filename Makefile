# The README's two set-up commands: `make serve` and `make test`. Each creates .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install serve test stop clean

install: $(STAMP)

# pip (not uv/poetry): on the project's machines it takes torch/torchvision from local disk.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# Until the online app exists: one edit with the default model (tiny, generated on first use).
serve: install
	$(PY) -c "from tests.helpers import random_image; random_image(320, 240).save('/tmp/qwen-edit-input.png')"
	$(PY) -m deployments.edit /tmp/qwen-edit-input.png --prompt "make the sky pink" --steps 8 --out edited.png

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest

stop:
	@true

clean:
	rm -rf $(VENV) models
