"""What kfp.local (2.17.3) lacks for the pipeline `dakd run` executes.

`dsl.OneOf` over artifacts (paradigm d's branches hand on the distilled student's Model): the
compiled DAG output lists one artifact selector per branch, and kfp.local's
`OrchestratorUtils.get_dag_output_artifacts` refuses more than one ("Expected 1 artifact in
ArtifactSelectorSpec"), although its parameter counterpart picks the branch that ran. The KFP
backend resolves both kinds the same way (its driver tests run an artifact OneOf); here the
artifact selectors are resolved as kfp.local resolves parameter ones, for the run only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


def _dag_output_artifacts(cls, dag_outputs_spec, io_store) -> dict:
    outputs = {}
    for key, spec in dag_outputs_spec.artifacts.items():
        found = []
        for selector in spec.artifact_selectors:
            try:
                found.append(io_store.get_task_output(selector.producer_subtask, selector.output_artifact_key))
            except (KeyError, ValueError):
                continue  # a branch that did not run
        if len(found) != 1:
            raise ValueError(f"dsl.OneOf output '{key}': {len(found)} of its branches produced an artifact, "
                             "expected exactly one")
        outputs[key] = found[0]
    return outputs


@contextlib.contextmanager
def artifact_oneof() -> Iterator[None]:
    """Resolve multi-selector (OneOf) DAG output artifacts while the block runs."""
    from kfp.local.orchestrator.orchestrator_utils import OrchestratorUtils

    saved = OrchestratorUtils.__dict__["get_dag_output_artifacts"]
    OrchestratorUtils.get_dag_output_artifacts = classmethod(_dag_output_artifacts)
    try:
        yield
    finally:
        OrchestratorUtils.get_dag_output_artifacts = saved
