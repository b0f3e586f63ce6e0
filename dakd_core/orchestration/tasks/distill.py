"""DAKD distillation of the adapted student from the cached adapted teacher.

Paradigm d is b started from a paradigm-c checkpoint, so the pipeline runs this task twice for d:
the plan's `distill_first` settings train c (or the chosen a/b/c), `distill_second` d from it."""

from __future__ import annotations

import json

from dakd_core.orchestration.tasks.common import run_identity, tracked
from dakd_core.orchestration.tasks.pretrain import train_stage


def _identity(kw: dict) -> tuple[str, dict]:
    """distill-student-c / distill-student-d, with the student's own adversarial DA method."""
    settings = json.loads(kw["config"])
    paradigm = settings.get("paradigm", "")
    label, tags = run_identity("student", method="dakd", paradigm=paradigm, label=f"student-{paradigm}")
    return label, {**tags, "dakd.adversarial_method": settings.get("method", "adaptsegnet")}


@tracked("distill", _identity)
def distill_task(*, store_uri: str, experiment: str, config: str, teacher: str, cache_index: str, init: str,
                 source_manifest: str, target_manifest: str) -> dict:
    from dakd_core.train import distill
    from dakd_core.train.distill_config import DistillConfig

    out = train_stage("distill", DistillConfig, store_uri, config, distill.run, teacher=teacher,
                      teacher_cache=cache_index, init=init, source_manifest=source_manifest,
                      target_manifest=target_manifest)
    return {**out, "paradigm": json.loads(config)["paradigm"]}
