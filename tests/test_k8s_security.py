"""k8s/ under the "restricted" Pod Security Standard: the namespace enforces it, every pod template
that k8s/ renders passes the checker of tests/_pss.py, and the checker rejects a pod that breaks
any one of the profile's controls. Pipeline pods: every task asks for the images' non-root user."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from _k8s_render import render
from _pss import pod_templates, restricted_violations

ROOT = Path(__file__).resolve().parents[1]
IMAGE_UID = 1000  # docker/Dockerfile.*: USER 1000


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return render("k8s")


def test_namespace_enforces_warns_and_audits_restricted(rendered):
    ns = next(d for d in rendered if d["kind"] == "Namespace")
    labels = ns["metadata"]["labels"]
    for mode in ("enforce", "warn", "audit"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted", mode


def test_every_pod_template_passes_the_restricted_profile(rendered):
    templates = dict(pod_templates(rendered))
    assert set(templates) == {"Deployment/mlflow", "StatefulSet/mlflow-postgres", "Job/dakd-create-bucket"}
    for name, template in templates.items():
        assert restricted_violations(template) == [], name


def test_containers_have_read_only_roots_and_no_api_token(rendered):
    for name, template in pod_templates(rendered):
        spec = template["spec"]
        # none of them talks to the Kubernetes API: no token to steal
        assert spec["automountServiceAccountToken"] is False, name
        empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for c in spec["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, name
            writable = {m["mountPath"] for m in c.get("volumeMounts", []) if m["name"] in empty_dirs}
            if c["name"] != "create-bucket":  # a boto3 one-liner writes nothing
                assert "/tmp" in writable, name


def test_postgres_runs_as_the_image_user_with_data_in_a_volume_subdirectory(rendered):
    (template,) = [t for n, t in pod_templates(rendered) if n == "StatefulSet/mlflow-postgres"]
    sc = template["spec"]["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"], sc["fsGroup"]) == (999, 999, 999)  # postgres in the image
    (c,) = template["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    data = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "data")
    assert Path(env["PGDATA"]).parent == Path(data)
    assert "/var/run/postgresql" in {m["mountPath"] for m in c["volumeMounts"]}


# ---------------------------------------------------------------- the checker can fail


def _compliant_pod() -> dict:
    return {
        "metadata": {"name": "p"},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "initContainers": [{"name": "init", "image": "i", "securityContext": _container_sc()}],
            "containers": [{"name": "main", "image": "i", "ports": [{"containerPort": 80}],
                            "securityContext": _container_sc()}],
            "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "data", "persistentVolumeClaim": {"claimName": "c"}},
                        {"name": "cfg", "configMap": {"name": "m"}}, {"name": "s", "secret": {"secretName": "s"}}],
        },
    }


def _container_sc() -> dict:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _main(pod):
    return pod["spec"]["containers"][0]["securityContext"]


# (what the pod does wrong, how, a part of the expected message)
VIOLATIONS = [
    ("host network", lambda p: p["spec"].update(hostNetwork=True), "spec.hostNetwork"),
    ("host PID", lambda p: p["spec"].update(hostPID=True), "spec.hostPID"),
    ("host IPC", lambda p: p["spec"].update(hostIPC=True), "spec.hostIPC"),
    ("HostProcess", lambda p: p["spec"]["securityContext"].update(windowsOptions={"hostProcess": True}), "hostProcess"),
    ("privileged", lambda p: _main(p).update(privileged=True), "containers[main].securityContext.privileged"),
    ("host port", lambda p: p["spec"]["containers"][0]["ports"][0].update(hostPort=8080), "hostPort 8080"),
    ("hostPath volume", lambda p: p["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
     "volumes[h]: volume type ['hostPath']"),
    ("nfs volume", lambda p: p["spec"]["volumes"].append({"name": "n", "nfs": {"server": "s", "path": "/"}}),
     "volume type ['nfs']"),
    ("privilege escalation unset", lambda p: _main(p).pop("allowPrivilegeEscalation"), "allowPrivilegeEscalation"),
    ("privilege escalation on", lambda p: _main(p).update(allowPrivilegeEscalation=True), "allowPrivilegeEscalation"),
    ("runAsNonRoot unset", lambda p: p["spec"]["securityContext"].pop("runAsNonRoot"),
     "runAsNonRoot must be true"),
    ("runAsNonRoot false on the pod", lambda p: p["spec"]["securityContext"].update(runAsNonRoot=False),
     "spec.securityContext.runAsNonRoot"),
    ("runAsNonRoot false in a container", lambda p: _main(p).update(runAsNonRoot=False), "containers[main]"),
    ("root uid on the pod", lambda p: p["spec"]["securityContext"].update(runAsUser=0),
     "spec.securityContext.runAsUser"),
    ("root uid in a container", lambda p: _main(p).update(runAsUser=0), "containers[main].securityContext.runAsUser"),
    ("seccomp unset", lambda p: p["spec"]["securityContext"].pop("seccompProfile"), "seccompProfile"),
    ("seccomp unconfined", lambda p: p["spec"]["securityContext"].update(seccompProfile={"type": "Unconfined"}),
     "not Unconfined"),
    ("container seccomp unconfined", lambda p: _main(p).update(seccompProfile={"type": "Unconfined"}),
     "not Unconfined"),
    ("capabilities kept", lambda p: _main(p).pop("capabilities"), "capabilities.drop must include ALL"),
    ("capability added", lambda p: _main(p)["capabilities"].update(add=["SYS_ADMIN"]), "SYS_ADMIN"),
    ("baseline capability added", lambda p: _main(p)["capabilities"].update(add=["CHOWN"]), "CHOWN"),
    ("SELinux type", lambda p: _main(p).update(seLinuxOptions={"type": "spc_t"}), "seLinuxOptions.type"),
    ("SELinux user", lambda p: p["spec"]["securityContext"].update(seLinuxOptions={"user": "root"}),
     "seLinuxOptions.user"),
    ("proc mount", lambda p: _main(p).update(procMount="Unmasked"), "procMount"),
    ("unsafe sysctl", lambda p: p["spec"]["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
     "kernel.msgmax"),
    ("AppArmor unconfined", lambda p: _main(p).update(appArmorProfile={"type": "Unconfined"}), "appArmorProfile"),
    ("AppArmor annotation", lambda p: p["metadata"].update(
        annotations={"container.apparmor.security.beta.kubernetes.io/main": "unconfined"}), "AppArmor"),
    ("init container unhardened", lambda p: p["spec"]["initContainers"][0].pop("securityContext"),
     "initContainers[init].securityContext.allowPrivilegeEscalation"),
]


def test_the_compliant_pod_passes_and_allowed_variants_do_too():
    pod = _compliant_pod()
    assert restricted_violations(pod) == []
    allowed = copy.deepcopy(pod)
    _main(allowed)["capabilities"]["add"] = ["NET_BIND_SERVICE"]  # the one capability restricted allows
    _main(allowed)["seccompProfile"] = {"type": "Localhost", "localhostProfile": "p.json"}
    allowed["spec"]["securityContext"]["sysctls"] = [{"name": "net.ipv4.ip_local_port_range", "value": "1 2"}]
    assert restricted_violations(allowed) == []
    # runAsNonRoot and seccomp on every container instead of the pod
    per_container = copy.deepcopy(pod)
    pod_sc = per_container["spec"]["securityContext"]
    del pod_sc["runAsNonRoot"], pod_sc["seccompProfile"]
    for c in per_container["spec"]["initContainers"] + per_container["spec"]["containers"]:
        c["securityContext"].update(runAsNonRoot=True, seccompProfile={"type": "RuntimeDefault"})
    assert restricted_violations(per_container) == []


@pytest.mark.parametrize("what,mutate,message", VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
def test_the_checker_rejects_a_pod_breaking_one_control(what, mutate, message):
    pod = _compliant_pod()
    mutate(pod)
    found = restricted_violations(pod)
    assert any(message in v for v in found), (what, found)


def test_workload_kinds_are_all_inspected():
    pod = _compliant_pod()
    docs = [
        {"kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": pod}},
        {"kind": "CronJob", "metadata": {"name": "c"}, "spec": {"jobTemplate": {"spec": {"template": pod}}}},
        {"kind": "Pod", "metadata": {"name": "p"}, "spec": pod["spec"]},
        {"kind": "Service", "metadata": {"name": "s"}, "spec": {}},
    ]
    assert [name for name, _ in pod_templates(docs)] == ["Deployment/d", "CronJob/c", "Pod/p"]


# ---------------------------------------------------------------- pipeline pods


def test_every_pipeline_task_runs_as_the_images_non_root_user():
    """KFP >= 2.16 hardens the rest of a task's pod itself (seccomp RuntimeDefault, no privilege
    escalation, all capabilities dropped); runAsNonRoot is the task's to ask for (docs/cluster.md)."""
    docs = list(yaml.safe_load_all((ROOT / "pipelines" / "dakd_pipeline.yaml").read_text()))
    pipeline = docs[0]
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == set(pipeline["deploymentSpec"]["executors"])
    for name, platform in executors.items():
        assert platform["securityContext"] == {"runAsUser": str(IMAGE_UID), "runAsGroup": str(IMAGE_UID),
                                               "runAsNonRoot": True}, name
