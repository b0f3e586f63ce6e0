"""dakd bench: the evidence - DAKD's Table 1 in kind (`results`) and the performance suite (`perf`)."""

from __future__ import annotations

NAME = "bench"
HELP = ("reproduce DAKD's results table on the built-in domain pair (results) or measure every "
        "performance ratio side by side (perf)")


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="bench", required=True, metavar="{results,perf,realtime}")
    r = sub.add_parser("results", help="teacher/student source-only and adapted, paradigms a-d, ablations; "
                                       "writes results.json and results.md")
    r.add_argument("--size", default="results", help="preset: tiny, demo or results (default results)")
    r.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    r.add_argument("--jobs", type=int, default=1, help="seeds trained in parallel processes (default 1); "
                   "with more processes than cores, one stage per core computes at a time")
    r.add_argument("--out", default=".dakd/bench_results", help="work directory (data, store, checkpoints)")
    r.add_argument("--docs", default="docs", help="directory receiving results.md and img/results_*.png")
    r.add_argument("--json", default="docs/results.json", help="results JSON path (default docs/results.json)")
    r.add_argument("--device", default="cpu", help="torch device (default cpu)")
    from dakd_core.bench.rows import GROUPS

    r.add_argument("--groups", default=None,
                   help="comma-separated row groups to run besides the baselines "
                        f"({', '.join(g for g in GROUPS if g != 'baseline')}; default all); a group that "
                        "distils also trains every teacher candidate")
    f = sub.add_parser("perf", help="every stage's performance ratio with its goal, in one table")
    f.add_argument("--quick", action="store_true", help="tiny inputs (a smoke run; ratios are not meaningful)")
    f.add_argument("--out", default="docs/performance.md", help="Markdown report path (default docs/performance.md)")
    f.add_argument("--json", default=None, help="also write the measurements as JSON here")
    # prefix_chars="+": every "--flag" is left for the script's own parser (--help included).
    rt = sub.add_parser("realtime", add_help=False, prefix_chars="+",
                        help="students/teachers throughput (FP32/FP16, training res + 1080x1920) and the "
                             "latency-vs-mIoU plot; arguments of benchmarks/bench_realtime.py (--help there)")
    rt.add_argument("args", nargs="...", help="passed to benchmarks/bench_realtime.py")


def run(args) -> int:
    import shlex
    import sys
    from pathlib import Path

    from dakd_core.cli._config_args import require_output_path
    from dakd_core.errors import ConfigError

    command = "dakd " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["bench"] else None
    # everything a bench run would refuse after minutes of work is refused here, before it starts
    for flag in ("out", "docs", "json"):
        if getattr(args, flag, None) is not None:
            require_output_path(getattr(args, flag), f"--{flag}")
    if args.bench == "results":
        from dakd_core.train.engine import resolve_device

        for flag, value in (("--seeds", args.seeds), ("--jobs", args.jobs)):
            if value < 1:
                raise ConfigError(f"{flag}: must be >= 1, got {value}")
        resolve_device(args.device, "--device")
    if args.bench == "results":
        from dakd_core.bench.results import ResultsRun, run_results

        doc = run_results(ResultsRun(
            size=args.size, seeds=args.seeds, out=Path(args.out), docs=Path(args.docs), json_path=Path(args.json),
            command=command or f"dakd bench results --size {args.size} --seeds {args.seeds} --jobs {args.jobs}",
            device=args.device, jobs=args.jobs,
            groups=tuple(g.strip() for g in args.groups.split(",") if g.strip()) if args.groups else None))
        from dakd_core.bench.report import markdown_main_table

        print(markdown_main_table(doc))
        print(f"wrote {args.json} and {Path(args.docs) / 'results.md'}")
        return 0
    if args.bench == "realtime":
        from dakd_core.bench.perf import load_benchmark

        load_benchmark("bench_realtime").main(args.args)
        return 0
    from dakd_core.bench.perf import run_perf

    run_perf(quick=args.quick, out=Path(args.out), json_path=Path(args.json) if args.json else None,
             command=command or ("dakd bench perf" + (" --quick" if args.quick else "")))
    return 0
