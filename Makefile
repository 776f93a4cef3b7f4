# Two commands from a fresh clone:  `make run` (execute the notebooks)  and  `make test` (the test suite).
# Each creates the virtual environment from requirements.txt on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= quick
ifneq ($(wildcard ../shared/data),)
export METALIB_DATA_DIR ?= $(abspath ../shared/data)
endif

.PHONY: venv run test lab demo baselines book clean

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name metalib --display-name "Python (metalib)" >/dev/null
	touch $@

venv: $(VENV)/.installed

run: venv            ## execute the notebooks with papermill into output/$(PROFILE)/ (PROFILE=full, ARGS="--only 02 --jobs 2")
	$(PY) -m metalib.runner run --profile $(PROFILE) $(ARGS)

test: venv           ## the whole test suite, notebook regression tests included
	$(PY) -m pytest -q --durations=20

lab: venv            ## open the collection in JupyterLab with the project's kernel (also as root, as in containers)
	$(VENV)/bin/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

demo: venv           ## a short meta-train + evaluate demo without notebooks
	$(PY) -m metalib.demo

book: venv           ## the executed notebooks as an HTML site in output/book/html/ (after `make run`)
	$(PY) -m metalib.runner book $(ARGS)

baselines: venv      ## re-record the notebook metric baselines in tests/baselines/
	$(PY) -m metalib.runner run --profile quick --update-baselines $(ARGS)

clean:
	rm -rf output/ .pytest_cache build/ dist/
