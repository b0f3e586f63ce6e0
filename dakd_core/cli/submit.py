"""dakd submit: compile the pipeline and start a run on a Kubeflow Pipelines server."""

from __future__ import annotations

NAME = "submit"
HELP = "compile and submit a pipeline run to a KFP API server (token, if needed, from $KFP_TOKEN)"


def add_arguments(p) -> None:
    p.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080")
    p.add_argument("--params", metavar="FILE.yaml", help="pipeline parameters to set (others keep their defaults)")
    p.add_argument("--experiment", default="dakd", help="KFP experiment (default: dakd)")
    p.add_argument("--run-name", help="KFP run name")
    p.add_argument("--namespace", help="KFP namespace (multi-user installs)")


def run(args) -> int:
    from dakd_core.orchestration.kfp_client import submit, submit_params

    result = submit(args.host, submit_params(args.params), args.experiment, args.run_name, args.namespace)
    print(f"submitted run {result['run_id']}: {result['url']}")
    return 0
