"""`dakd bench results` over the evidence rows of issue 29: the baselines, the controls (no adversary,
no teacher, the photometric teacher recipe), the four paradigms, and (a) / (c) distilled from a cache
that labels source images with the teacher's own (target) BatchNorm statistics, the cache before
per-domain statistics. Every stage whose result.json holds the identical config is reused, so this
adds only those two rows to an earlier `--groups control,paradigm` run in the same --out.

    python benchmarks/bench_evidence_rows.py --out WORK --docs DOCS --seeds 3 --jobs 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

GROUPS = ("baseline", "control", "paradigm")


def main(argv=None) -> int:
    from dakd_core.bench import rows
    from dakd_core.bench.results import ResultsRun, run_results

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="work directory (the earlier run's --out, to reuse its stages)")
    p.add_argument("--docs", required=True, help="receives results.md, results.json and the plots")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=3)
    p.add_argument("--size", default="results")
    args = p.parse_args(argv)
    # run_results runs every row of rows.ROWS when no group is named: these rows, in table order
    rows.ROWS = tuple(r for r in rows.ROWS if r.group in GROUPS or r.key in rows.CHECKPOINT_BN_ROWS)
    docs = Path(args.docs)
    run_results(ResultsRun(size=args.size, seeds=args.seeds, out=Path(args.out), docs=docs,
                           json_path=docs / "results.json", jobs=args.jobs,
                           command=f"python benchmarks/bench_evidence_rows.py --seeds {args.seeds} --jobs {args.jobs}"))
    return 0


if __name__ == "__main__":  # spawned seed workers re-import this file: run only as the program
    raise SystemExit(main())
