"""`dakd run --sweep FILE`: one local run per point of a grid or list of parameter overrides over
one base config (issue 32 item 3); `dakd submit --sweep FILE`: one KFP run per point, in one
experiment (orchestration/kfp_client.py: sweep_params, submit).

    base: configs/demo.yaml              # the `dakd run --config` file the points override
    grid:                                # every combination, in the order written
      distill_paradigm: [b, c, d]
    points:                              # and/or listed points
      - {distill_paradigm: d, distill_lambda_target: 0.5}

Every point is planned before anything runs (its parameters validated, every stage config built:
plan.checked_plan), so a bad point exits 2 naming the point and the field. The points then run
one after another into one output folder, as `<name>-<k>`: a stage whose settings and inputs a
point shares with an earlier one returns that one's outputs (reuse.py), so a sweep over paradigms
trains pretrain, adapt and the teacher cache once. At the end, one table of the points' pipeline
parent runs (compare.py), also logged to MLflow.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from pydantic import Field

from dakd_core.config import StrictConfig, build_config
from dakd_core.errors import ConfigError
from dakd_core.orchestration.params import RunConfig, load_run_config


class SweepConfig(StrictConfig):
    base: str | None = Field(None, min_length=1, description="the RunConfig YAML the points override "
                             "(relative to the sweep file; default: dakd run --config)")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="parameter -> values: every combination")
    points: list[dict[str, Any]] = Field(default_factory=list, description="listed points: parameter -> value")


def overrides(sweep: SweepConfig, path: str) -> list[dict]:
    """The points' parameter overrides: the grid's combinations, then the listed points."""
    empty = [name for name, values in sweep.grid.items() if not values]
    if empty:
        raise ConfigError(f"{path}: grid field '{empty[0]}' has no values")
    grid = [dict(zip(sweep.grid, values)) for values in itertools.product(*sweep.grid.values())] if sweep.grid else []
    found = grid + list(sweep.points)
    if not found:
        raise ConfigError(f"{path}: no points (set `grid:` and/or `points:`)")
    return found


def describe(point: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items()) or "the base config"


def plan_points(base: RunConfig, points: list[dict]) -> list[RunConfig]:
    """Every point's RunConfig, each planned (every stage config built); the first bad point is a
    ConfigError naming it and the field, before any point runs."""
    from dakd_core.orchestration.params import PipelineParams
    from dakd_core.orchestration.plan import checked_plan

    planned = []
    for k, point in enumerate(points, 1):
        try:
            params = build_config(PipelineParams, **{**base.params.model_dump(), **point})
            checked_plan(params)
        except ConfigError as e:
            raise ConfigError(f"sweep point {k} of {len(points)} ({describe(point)}): {e}") from None
        planned.append(RunConfig(params=params, local=base.local))
    return planned


def read_sweep(path: str, config: str | None) -> tuple[str | None, list[dict]]:
    """The sweep file's base config (its `base`, relative to it, else `config`) and its points."""
    sweep = build_config(SweepConfig, path)
    return (str(Path(path).parent / sweep.base) if sweep.base else config), overrides(sweep, path)


def load_sweep(path: str, config: str | None, out_dir: str | None) -> tuple[list[dict], list[RunConfig]]:
    """The sweep file's points and their planned RunConfigs."""
    base_path, points = read_sweep(path, config)
    return points, plan_points(load_run_config(base_path, out_dir=out_dir), points)


def run_sweep(path: str, config: str | None, out_dir: str | None, name: str, reuse: bool) -> str:
    """Run every point (see the module doc); returns the comparison table of their pipeline runs."""
    from dakd_core.orchestration.compare import compare
    from dakd_core.orchestration.context import environ
    from dakd_core.orchestration.local import format_summary, run_local, tracking_uri_for

    points, planned = load_sweep(path, config, out_dir)
    print(f"dakd run --sweep {path}: {len(points)} points, each planned (every stage config built)", flush=True)
    names = []
    for k, (point, cfg) in enumerate(zip(points, planned), 1):
        names.append(f"{name}-{k}")
        print(f"== point {k}/{len(points)}: {describe(point)} (run {names[-1]})", flush=True)
        print(format_summary(run_local(cfg, run_name=names[-1], reuse=reuse)), flush=True)
    tracking, _ = tracking_uri_for(Path(planned[0].local.out_dir).resolve())
    with environ({"MLFLOW_TRACKING_URI": tracking}):
        table, logged = compare(planned[0].params.mlflow_experiment, names)
    return f"dakd run --sweep {path}: the {len(points)} points\n\n{table}\n\nlogged to MLflow run {logged} " \
           "(compare.md, compare.png)"
