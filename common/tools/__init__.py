"""What surrounds the pipeline but no stage needs to predict: the demo data and tiny backbone generators, the
run report (run_report, whose sections live in the report_* modules), the Kaggle bundle packager and synthetic
OOF predictions for benchmarks. The top layer: it may import any package. The Kaggle bundle ships `common/`
without it (common.tools.kaggle says what else it leaves out)."""
