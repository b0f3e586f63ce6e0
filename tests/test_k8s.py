"""k8s/: every kustomization renders offline and every resource validates against the Kubernetes
schemas; no YAML holds a credential; remote bases are pinned to a release."""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest
import yaml
from _k8s_render import render as _render

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"

# Kustomizations rendered offline (k8s/kfp pulls a remote base and is checked for its pin only).
LOCAL_KUSTOMIZATIONS = ["k8s", "k8s/base", "k8s/mlflow", "k8s/object-store", "k8s/runner"]
# Where pipeline pods run (KFP standalone): the runner's RBAC and the pipeline's secrets go there.
PIPELINE_NAMESPACE = "kubeflow"


def _validate(docs: list[dict]) -> None:
    import kubernetes_validate

    for doc in docs:
        # strict: unknown fields (typos like `containerport`) are errors too
        kubernetes_validate.validate(doc, "1.37.0", strict=True)


@pytest.mark.parametrize("path", LOCAL_KUSTOMIZATIONS)
def test_kustomization_renders_and_validates(path):
    docs = _render(path)
    assert docs, f"{path} rendered nothing"
    _validate(docs)
    for doc in docs:
        if doc["kind"] != "Namespace":
            runner = doc["metadata"]["name"] == "dakd-runner"
            expected = PIPELINE_NAMESPACE if runner else "dakd"
            assert doc["metadata"].get("namespace") == expected, doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "dakd"


def test_full_render_has_the_services_the_pipeline_needs():
    docs = _render("k8s")
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for expected in [
        ("Namespace", "dakd"),
        ("ServiceAccount", "dakd-runner"),
        ("RoleBinding", "dakd-runner"),
        ("Deployment", "mlflow"),
        ("Service", "mlflow"),
        ("StatefulSet", "mlflow-postgres"),
        ("Job", "dakd-create-bucket"),
    ]:
        assert expected in kinds
    mlflow = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow")
    container = mlflow["spec"]["template"]["spec"]["containers"][0]
    args = container["command"]
    assert "--serve-artifacts" in args
    assert any(a.startswith("--artifacts-destination=s3://") for a in args)
    assert "--app-name=basic-auth" in args
    # no credential on the command line: libpq reads PGUSER / PGPASSWORD from secret env vars
    assert "--backend-store-uri=postgresql+psycopg2://mlflow-postgres:5432/mlflow" in args
    assert not any("$(" in a or "@" in a for a in args)
    env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in container["env"]}
    assert env["PGUSER"] == {"name": "dakd-mlflow-db", "key": "username"}
    assert env["PGPASSWORD"] == {"name": "dakd-mlflow-db", "key": "password"}
    assert {"secretRef": {"name": "dakd-mlflow-server"}} in container["envFrom"]
    assert container["image"] == "ghcr.io/dakd/dakd:0.1.0-mlflow"  # the images: transformer applied
    # no Secret objects are deployed by kustomize: they come from the templates + env
    assert not [d for d in docs if d["kind"] == "Secret"]


def test_runner_rbac_is_where_the_pipeline_pods_run_and_covers_the_pipeline_secrets():
    from dakd_core.orchestration.kfp_client import DEFAULT_SERVICE_ACCOUNT

    docs = {d["kind"]: d for d in _render("k8s/runner")}
    assert set(docs) == {"ServiceAccount", "Role", "RoleBinding"}
    # `dakd submit` runs pods as this account, in the namespace the secrets README fills
    assert docs["ServiceAccount"]["metadata"]["name"] == DEFAULT_SERVICE_ACCOUNT
    assert {d["metadata"]["namespace"] for d in docs.values()} == {PIPELINE_NAMESPACE}
    assert f"kubectl -n {PIPELINE_NAMESPACE} apply" in (K8S / "secrets" / "README.md").read_text()
    assert docs["RoleBinding"]["subjects"] == [
        {"kind": "ServiceAccount", "name": DEFAULT_SERVICE_ACCOUNT, "namespace": PIPELINE_NAMESPACE}]
    assert docs["RoleBinding"]["roleRef"]["name"] == docs["Role"]["metadata"]["name"]
    # every secret the compiled pipeline mounts as env can be read by the account
    wanted = set(re.findall(r"secretName: ([a-z0-9-]+)", (ROOT / "pipelines" / "dakd_pipeline.yaml").read_text()))
    readable = {name for rule in docs["Role"]["rules"] if "secrets" in rule["resources"]
                for name in rule.get("resourceNames", [])}
    assert wanted and wanted <= readable


def test_broken_resource_is_rejected_by_the_validator():
    # The validation above must be able to fail: a misspelt field is an error in strict mode.
    import kubernetes_validate

    doc = next(d for d in _render("k8s/mlflow") if d["kind"] == "Service")
    doc["spec"]["portz"] = doc["spec"].pop("ports")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, "1.37.0", strict=True)


def test_secret_templates_are_placeholders_only_and_valid_when_filled():
    templates = sorted((K8S / "secrets").glob("*.template.yaml"))
    assert len(templates) == 4
    for path in templates:
        text = path.read_text()
        doc = yaml.safe_load(text)
        assert doc["kind"] == "Secret"
        for key, value in doc["stringData"].items():
            assert re.fullmatch(r"\$\{[A-Z_]+\}", value), f"{path.name}:{key} is not a placeholder"
        filled = string.Template(text).substitute(
            {name: "x" for name in re.findall(r"\$\{([A-Z_]+)\}", text)}
        )
        _validate([yaml.safe_load(filled)])


def test_no_credentials_in_any_yaml():
    suspicious = re.compile(
        r"(AKIA[0-9A-Z]{16}|minio123|password\s*[:=]\s*[\"']?[A-Za-z0-9]{4,}|"
        r"aws_secret_access_key\s*[:=]\s*[\"']?[A-Za-z0-9/+]{8,})",
        re.IGNORECASE,
    )
    files = [p for p in ROOT.glob("k8s/**/*.yaml")] + [ROOT / "pipelines" / "dakd_pipeline.yaml"]
    for path in files:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            if "${" in line or "secretKeyRef" in line:
                continue
            assert not suspicious.search(line), f"{path.relative_to(ROOT)}: {line.strip()}"


def test_remote_kfp_base_is_pinned_to_the_sdk_release():
    kfp_version = re.search(r"^kfp==(\S+)", (ROOT / "requirements/kfp.txt").read_text(), re.M)[1]
    doc = yaml.safe_load((K8S / "kfp" / "kustomization.yaml").read_text())
    assert doc["resources"], "k8s/kfp lists no resources"
    for res in doc["resources"]:
        assert res.startswith("github.com/kubeflow/pipelines/"), res
        assert res.endswith(f"?ref={kfp_version}"), f"{res} is not pinned to {kfp_version}"
