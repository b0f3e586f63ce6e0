"""Check what `make test-containers`' run left, against the two services, not against the files of
the host: exit 0 when everything holds, else 1 with one line per failed check.

    python docker/check_container_run.py OUT RUN_NAME STORE_URI [cuda|cpu]

- results.json: the six table rows with finite mIoU in [0, 1], the registry's decision `promoted`
  (the first version on a fresh server);
- the MLflow server (MLFLOW_TRACKING_URI, basic auth from the environment): the registered model's
  `champion` alias on the promoted version, and the experiment's runs (parent and stages), the GPU
  stages' run by the torch build of the image named (`cuda`: the CUDA image's; default `cpu`);
- the S3 store (AWS_* from the environment): the run's stage records and timings;
- OUT: no MLflow database or file store (a task that fell back to a local store would leave one).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

ROWS = ("teacher_source_only", "teacher_adapted", "student_source_only", "student_adapted", "student_distilled",
        "student_exported")


# The stages run by components/_base.py's gpu_component (DAKD_IMAGE) that open MLflow stage runs.
GPU_STAGES = ("pretrain", "adapt", "distill", "export", "evaluate")


def check(out: Path, run_name: str, store_uri: str, gpu_image: str = "cpu") -> list[str]:
    from mlflow import MlflowClient

    from dakd_core.storage import open_store

    failures = []
    results = json.loads((out / "results.json").read_text())
    for row in ROWS:
        miou = (results["rows"].get(row) or {}).get("miou")
        if miou is None or not math.isfinite(miou) or not 0 <= miou <= 1:
            failures.append(f"results.json: row {row} has mIoU {miou!r}")
    registry = results["registry"]
    if registry.get("decision") != "promoted":
        failures.append(f"results.json: registry decision {registry.get('decision')!r}, expected 'promoted'")

    client = MlflowClient()
    champion = client.get_model_version_by_alias(registry["name"], "champion")
    if str(champion.version) != str(registry.get("challenger")):
        failures.append(f"MLflow server: champion is v{champion.version}, the run promoted v{registry.get('challenger')}")
    experiment = client.get_experiment_by_name("dakd-containers")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    if len(runs) < 5:
        failures.append(f"MLflow server: {len(runs)} runs in experiment dakd-containers, expected the parent and stages")
    # which torch build ran each GPU stage: the CUDA image's (+cu...) when the GPU stages ran there
    builds = {r.data.tags.get("dakd.stage"): r.data.tags.get("dakd.torch", "") for r in runs
              if r.data.tags.get("dakd.stage") in GPU_STAGES}
    want = "+cu" if gpu_image == "cuda" else "+cpu"
    if not builds or any(want not in build for build in builds.values()):
        failures.append(f"MLflow server: the GPU stages' torch builds {builds}, expected {want} in each "
                        f"({'the CUDA image' if gpu_image == 'cuda' else 'the CPU image'})")

    run = open_store(store_uri).child(f"runs/{run_name}")
    for key in ("stages.json", "promote/outcome.json"):
        if not run.exists(key):
            failures.append(f"S3 store: {run.url(key)} is missing")
    if not run.list("timings/"):
        failures.append(f"S3 store: no task timings under {run.url('timings/')}")

    local_stores = [p for pattern in ("**/mlflow.db", "**/mlruns", "**/mlartifacts", "store") for p in out.glob(pattern)]
    if local_stores:
        failures.append(f"{out}: a local MLflow or object store appeared: {', '.join(map(str, local_stores))}")
    print(f"check: {len(ROWS)} rows, registry {registry['name']} v{champion.version} champion on the MLflow server, "
          f"{len(runs)} MLflow runs, GPU stages run by torch {sorted(set(builds.values()))}, stage records in {run.uri}")
    return failures


def main(argv: list[str]) -> int:
    out, run_name, store_uri = Path(argv[0]), argv[1], argv[2]
    failures = check(out, run_name, store_uri, *argv[3:4])
    for line in failures:
        print(f"check FAILED: {line}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
