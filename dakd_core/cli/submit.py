"""dakd submit: upload the pipeline and this code's version to Kubeflow Pipelines and start a run."""

from __future__ import annotations

NAME = "submit"
HELP = ("upload pipeline `dakd` and a version named <package version>-<git commit>-<spec hash>, then run it "
        "(token, if needed, from $KFP_TOKEN)")


def add_arguments(p) -> None:
    from dakd_core.orchestration.kfp_client import DEFAULT_SERVICE_ACCOUNT

    p.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080")
    p.add_argument("--config", metavar="FILE.yaml",
                   help="the file `dakd run --config` reads: its `params` are the run's arguments (others keep "
                        "their defaults); `local` is ignored")
    p.add_argument("--sweep", metavar="FILE.yaml",
                   help="one run per point of the file's `grid:` / `points:` of parameter overrides over its `base:` "
                        "(or --config), named <run name>-<k>, in one experiment (stages shared through KFP's cache); "
                        "every point planned before anything is submitted (the file `dakd run --sweep` reads)")
    p.add_argument("--experiment", default="dakd", help="KFP experiment, created if missing (default: dakd)")
    p.add_argument("--run-name", help="KFP run name (default: dakd-<timestamp>; a sweep's runs: <run name>-<k>)")
    p.add_argument("--namespace", help="KFP namespace (multi-user installs)")
    p.add_argument("--service-account", default=DEFAULT_SERVICE_ACCOUNT,
                   help=f"Kubernetes service account of the run's pods (default: {DEFAULT_SERVICE_ACCOUNT}, "
                        "created by k8s/runner)")
    p.add_argument("--package", metavar="FILE.yaml", help="an already compiled pipeline (default: compile now)")


def run(args) -> int:
    import re
    import time

    from dakd_core.errors import ConfigError
    from dakd_core.orchestration.kfp_client import submit, submit_params

    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", args.host):
        raise ConfigError(f"--host {args.host!r}: expected the KFP endpoint's http(s)://HOST[:PORT]")
    for flag, name in (("--namespace", args.namespace), ("--service-account", args.service_account)):
        if name is not None and not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", name):
            raise ConfigError(f"{flag} {name!r}: not a Kubernetes name (lower-case letters, digits, '-', '.')")

    run_name = args.run_name or time.strftime("dakd-%Y%m%d-%H%M%S")
    if args.sweep:
        from dakd_core.orchestration.kfp_client import sweep_params
        from dakd_core.orchestration.sweep import describe

        points = sweep_params(args.sweep, args.config)  # every point planned: a bad one exits 2 here
        runs = [(f"{run_name}-{k}", params) for k, (_, params) in enumerate(points, 1)]
        labels = [f" ({describe(point)})" for point, _ in points]
    else:
        runs, labels = [(run_name, submit_params(args.config))], [""]
    result = submit(args.host, runs, args.experiment, args.namespace, args.service_account, args.package)
    print(f"pipeline {result['pipeline_id']} version {result['version']} ({result['version_id']})")
    for run, label in zip(result["runs"], labels):
        print(f"submitted run {run['run_id']} {run['name']}{label}: {run['url']}")
    return 0
