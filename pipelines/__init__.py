"""The dakd Kubeflow pipeline (dakd_pipeline.py) and its compiled, committed IR (dakd_pipeline.yaml)."""
