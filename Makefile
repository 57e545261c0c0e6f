# Two commands on a fresh machine: `make train` and `make test`.
# Each creates .venv and installs the project into it when that has not been done yet.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
TEST_INSTALLED := $(VENV)/.installed-test
# Extra trainer flags, e.g. `make train ARGS="--loss=nce --epochs=2"`.
ARGS ?=
# DATA=movielens trains on MovieLens 100K (fetched and prepared on first use, see data/movielens.py);
# DATA=<dir> on a corpus made by `python -m data.prepare` (README: "Your own data").
DATA ?= builtin

.PHONY: train test test-fast install clean

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	touch $(INSTALLED)

# The tests also run the Beam data path: the optional extra [beam].
$(TEST_INSTALLED): $(INSTALLED)
	$(PY) -m pip install -e '.[test,beam]'
	touch $(TEST_INSTALLED)

install: $(INSTALLED)

train: $(INSTALLED)
	$(PY) -m trainers.train --data=$(DATA) $(ARGS)

# One worker process per core (pytest-xdist), each test file on one worker so its module fixtures run once.
test: $(TEST_INSTALLED)
	$(PY) -m pytest -ra --durations=20 -n auto --dist loadfile tests

# Everything but the multi-process tests, for a quick local loop.
test-fast: $(TEST_INSTALLED)
	$(PY) -m pytest -ra -n auto --dist loadfile -m 'not slow' tests

clean:
	rm -rf $(VENV) runs
