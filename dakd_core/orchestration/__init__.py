"""The library side of the pipeline: parameters, pinned URIs, the MLflow parent run and the local
runner behind `dakd run`. Nothing here imports kfp at import time; only the functions that run or
compile the pipeline import it, so `import dakd_core` stays light."""
