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
    p.add_argument("--experiment", default="dakd", help="KFP experiment, created if missing (default: dakd)")
    p.add_argument("--run-name", help="KFP run name (default: dakd-<timestamp>)")
    p.add_argument("--namespace", help="KFP namespace (multi-user installs)")
    p.add_argument("--service-account", default=DEFAULT_SERVICE_ACCOUNT,
                   help=f"Kubernetes service account of the run's pods (default: {DEFAULT_SERVICE_ACCOUNT}, "
                        "created by k8s/runner)")
    p.add_argument("--package", metavar="FILE.yaml", help="an already compiled pipeline (default: compile now)")


def run(args) -> int:
    import re

    from dakd_core.errors import ConfigError
    from dakd_core.orchestration.kfp_client import submit, submit_params

    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", args.host):
        raise ConfigError(f"--host {args.host!r}: expected the KFP endpoint's http(s)://HOST[:PORT]")
    for flag, name in (("--namespace", args.namespace), ("--service-account", args.service_account)):
        if name is not None and not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", name):
            raise ConfigError(f"{flag} {name!r}: not a Kubernetes name (lower-case letters, digits, '-', '.')")

    result = submit(args.host, submit_params(args.config), args.experiment, args.run_name, args.namespace,
                    args.service_account, args.package)
    print(f"pipeline {result['pipeline_id']} version {result['version']} ({result['version_id']})")
    print(f"submitted run {result['run_id']}: {result['url']}")
    return 0
