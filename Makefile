# carla-safe: `make run` and `make test` install what they need on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# pytest workers: both cores by default; `make test PYTEST_WORKERS=0` runs serially.
PYTEST_WORKERS ?= 2

.PHONY: install run demo test bench lint maps clean

install: $(STAMP)

# Re-installs only when the project's dependency list changes (idempotent).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first, from the versions this machine serves locally (a CPU-capable build).
	$(PIP) install --quiet torch==2.14.1 torchvision==0.29.1
	$(PIP) install --quiet -e ".[all,dev]"
	# OSRL's baselines: osrl-lib and fast-safe-rl without their old pins (the `osrl` extra
	# above installs what they import; dsrl, tianshou, bullet-safety-gym are left out)
	$(PIP) install --quiet --no-deps osrl-lib==0.1.0 fast-safe-rl==0.1.0
	touch $(STAMP)

# The smoke grid (9 models x 4 tasks, tiny budgets, two cells at a time), then its table
# beside the published one (runs/smoke/table.md, .csv, .tex and the plots).
run: $(STAMP)
	$(PY) -m benchmarks run --preset smoke --out runs/smoke --workers 2

# The expert driver on every task (3 episodes each), one BEV video per task in runs/.
demo: $(STAMP)
	$(PY) -m carla_safe_envs.expert --all-tasks --episodes 3 --seed 0 --video-dir runs

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -n $(PYTEST_WORKERS) -q

bench: $(STAMP)
	$(PY) -m benchmarks speed

lint: $(STAMP)
	$(PY) -m ruff check .

# Recompile the shipped lane geometry from the OpenDRIVE files (needs the `carla` wheel).
maps: $(STAMP)
	$(PY) -m carla_safe_envs.maps.compile

clean:
	rm -rf $(VENV) runs .pytest_cache
