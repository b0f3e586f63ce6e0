"""The tiny source/target pair and source (pretrain) checkpoint the ROAD / DiGA / SFDA tests share."""

from __future__ import annotations

import shutil

import pytest

from dakd_core.config import build_config
from dakd_core.train import pretrain
from dakd_core.train.configs import AdaptConfig, PretrainConfig

from _train_data import make_split, tiny_fields


def pretrained_pair(tmp_path_factory, template_db: str) -> dict:
    """4 labelled source + 4 unlabelled target 64x32 images and a 2-step pretrain checkpoint
    (tracked in a throwaway MLflow database, never the working directory's)."""
    root = tmp_path_factory.mktemp("methods")
    store = (root / "store").as_uri()
    source = make_split(store, "src", 4, "source", seed=0)
    target = make_split(store, "tgt", 4, "target", seed=1, labelled=False)
    shutil.copyfile(template_db, root / "mlruns.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlruns.db'}")
        mp.setenv("DAKD_MLFLOW_ARTIFACT_ROOT", (root / "mlartifacts").as_uri())
        pre = pretrain.run(build_config(PretrainConfig, None, **tiny_fields(
            source_manifest=source, out=(root / "pre").as_uri(), iterations=2)))
    return {"store": store, "source": source, "target": target, "init": pre.last_checkpoint_uri}


def method_config(data: dict, out, method: str, **overrides) -> AdaptConfig:
    fields = tiny_fields(source_manifest=data["source"], target_manifest=data["target"], init=data["init"],
                         out=out.as_uri(), method=method, iterations=4)
    for name, value in overrides.items():  # None removes a field (build_config ignores None values)
        if value is None:
            fields.pop(name, None)
        else:
            fields[name] = value
    return build_config(AdaptConfig, None, **fields)
