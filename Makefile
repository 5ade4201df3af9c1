# ArchViz ControlNet: one venv for the add-on side (bpy module), the backend and the tests.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
OUT    ?= out

.PHONY: setup test test-blenders docs demo train-demo passes serve extension clean

# The venv is rebuilt only when the pins or the package layout change; pip's own
# cache (~/.cache/pip) makes a rebuild cheap on a machine that has done it once.
$(STAMP): requirements.txt backend/setup/requirements-nodeps.txt pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	# controlnet_aux without its declared deps (torchvision/timm would pull a CUDA torch)
	$(BIN)/pip install --quiet --no-deps -r backend/setup/requirements-nodeps.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

# The add-on in every Blender it claims: one venv per Blender holding only its bpy (and what
# bpy brings, as Blender's own Python has it), each running tests/blenders/drive.py against a
# backend served from the project venv. 4.x ships numpy 1.x like the real 4.2/4.5; 5.2 brings
# numpy 2.x. The venvs are kept between runs like the project venv (pip's cache makes a
# rebuild cheap). Python 3.13 for 5.2: python3.13 on PATH, or pyenv's.
BLENDER_VENVS := .venvs
BPY_42 := 4.2.23
BPY_45 := 4.5.15
BPY_52 := 5.2.4
PYTHON313 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3.13) $(shell command -v python3.13))

$(BLENDER_VENVS)/bpy-%/.installed:
	rm -rf $(BLENDER_VENVS)/bpy-$*
	case "$*" in 5.*) py="$(PYTHON313)"; numpy="";; *) py="$(PYTHON)"; numpy="numpy<2";; esac; \
	  test -n "$$py" || { echo "no Python 3.13 for bpy $*: install one or set PYTHON313"; exit 1; }; \
	  $$py -m venv $(BLENDER_VENVS)/bpy-$* && \
	  $(BLENDER_VENVS)/bpy-$*/bin/pip install --quiet bpy==$* $$numpy
	touch $@

test-blenders: setup $(BLENDER_VENVS)/bpy-$(BPY_42)/.installed $(BLENDER_VENVS)/bpy-$(BPY_45)/.installed \
		$(BLENDER_VENVS)/bpy-$(BPY_52)/.installed
	ARCHVIZ_BLENDER_VENVS=4.2=$(CURDIR)/$(BLENDER_VENVS)/bpy-$(BPY_42),4.5=$(CURDIR)/$(BLENDER_VENVS)/bpy-$(BPY_45),5.2=$(CURDIR)/$(BLENDER_VENVS)/bpy-$(BPY_52) \
		$(BIN)/python -m pytest -q tests/blenders

# The docs site, built strictly into site/: a broken link, a missing page or a missing image
# fails it. The command reference, the family records, the HTTP API and the doctor's findings
# are generated from the code first (docs/gen.py). The generator comes from PyPI, pinned in
# docs/requirements.txt, with the project's pins as constraints; the build itself is offline.
DOCS_STAMP := $(VENV)/.docs-installed

$(DOCS_STAMP): $(STAMP) docs/requirements.txt
	$(BIN)/pip install --quiet -r docs/requirements.txt -c requirements.txt
	touch $@

docs: $(DOCS_STAMP)
	$(BIN)/python docs/gen.py docs/generated
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --clean -f mkdocs.yml

examples/interior.blend: examples/build_interior.py $(STAMP)
	$(BIN)/python examples/build_interior.py --out $@

demo: setup examples/interior.blend
	$(BIN)/python examples/demo.py examples/interior.blend $(OUT)/demo

# Train your own ControlNet, offline: pairs from the example interior, a tiny ControlNet on
# the tiny base (random weights: it proves the loop, not image quality), then a sweep with it.
train-demo: setup examples/interior.blend
	$(BIN)/archviz dataset examples/interior.blend --views 16 --long-side 128 --out $(OUT)/train-demo/data
	rm -rf $(OUT)/train-demo/net
	$(BIN)/archviz train-controlnet --data $(OUT)/train-demo/data --base tiny --out $(OUT)/train-demo/net \
		--steps 100 --batch 4 --lr 1e-3 --validate-every 50 --val-steps 4
	$(BIN)/archviz sweep examples/interior.blend --model tiny --controls custom:$(OUT)/train-demo/net \
		--styles modern --seeds 0-1 --long-side 128 --out $(OUT)/train-demo/sweep

# Installable extension zip, built by Blender's own `extension build`
# (the bpy module carries the same command line as the Blender binary).
extension: setup
	mkdir -p dist
	$(BIN)/python "$$($(BIN)/python -c 'import bpy, os; print(os.path.join(bpy.utils.system_resource("SCRIPTS"), "addons_core/bl_pkg/cli/blender_ext.py"))')" \
		build --source-dir . --output-dir dist

clean:
	rm -rf $(VENV) $(BLENDER_VENVS) dist $(OUT) examples/interior.blend .pytest_cache site docs/generated
