"""Output-space adversarial adaptation (AdaptSegNet / ADVENT) of one network from its pretrain
checkpoint."""

from __future__ import annotations

from dakd_core.orchestration.tasks.common import run_identity, tracked
from dakd_core.orchestration.tasks.pretrain import train_stage


def _method(config: str) -> str:
    import json

    return json.loads(config).get("method", "adaptsegnet")


@tracked("adapt", lambda kw: run_identity(kw["role"], method=_method(kw["config"])))
def adapt_task(*, store_uri: str, experiment: str, role: str, config: str, init: str, source_manifest: str,
               target_manifest: str) -> dict:
    from dakd_core.train import adapt
    from dakd_core.train.configs import AdaptConfig

    return train_stage("adapt", AdaptConfig, store_uri, config, adapt.run, init=init,
                       source_manifest=source_manifest, target_manifest=target_manifest)
