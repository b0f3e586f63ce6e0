"""`dakd submit` against a fake KFP API server (http.server, recording every request): pipeline
and version uploaded once, runs of that version in an experiment as a service account, the
parameters read from the same file as `dakd run`, no credential in any request."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from dakd_core import __version__
from dakd_core.cli import main
from dakd_core.orchestration.params import load_run_config

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipelines" / "dakd_pipeline.yaml"  # the committed, compiled pipeline


class _FakeKfp(BaseHTTPRequestHandler):
    """The v2beta1 endpoints kfp.Client uses, with the state of one server (pipelines, versions)."""

    requests: list = []
    state: dict = {}

    def _reply(self, body: dict):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _filter_name(self, query: dict) -> str | None:
        if "filter" not in query:
            return None
        return json.loads(query["filter"][0])["predicates"][0]["stringValue"]

    def do_GET(self):  # noqa: N802
        url = urlparse(self.path)
        query = parse_qs(url.query)
        self.requests.append(("GET", url.path, query, None, dict(self.headers)))
        if url.path == "/apis/v2beta1/pipelines":
            name = self._filter_name(query)
            found = [p for p in self.state["pipelines"] if p["display_name"] == name]
            self._reply({"pipelines": found} if found else {})
        elif m := re.fullmatch(r"/apis/v2beta1/pipelines/([^/]+)/versions", url.path):
            name = self._filter_name(query)
            found = [v for v in self.state["versions"] if v["pipeline_id"] == m[1] and v["display_name"] == name]
            self._reply({"pipeline_versions": found} if found else {})
        else:  # healthz, experiments (none of that name yet)
            self._reply({})

    def do_POST(self):  # noqa: N802
        url = urlparse(self.path)
        query = parse_qs(url.query)
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        multipart = self.headers["Content-Type"].startswith("multipart/")
        body = raw if multipart else json.loads(raw or b"{}")
        self.requests.append(("POST", url.path, query, body, dict(self.headers)))
        if url.path == "/apis/v2beta1/pipelines/upload":
            pipeline = {"pipeline_id": f"pl-{len(self.state['pipelines']) + 1}", "display_name": query["name"][0]}
            self.state["pipelines"].append(pipeline)
            self._reply(pipeline)
        elif url.path == "/apis/v2beta1/pipelines/upload_version":
            version = {"pipeline_id": query["pipelineid"][0], "display_name": query["name"][0],
                       "pipeline_version_id": f"v-{len(self.state['versions']) + 1}"}
            self.state["versions"].append(version)
            self._reply(version)
        elif url.path == "/apis/v2beta1/experiments":
            self._reply({"experiment_id": "exp-1", "display_name": body.get("display_name")})
        elif url.path == "/apis/v2beta1/runs":
            self.state["runs"] += 1
            self._reply({"run_id": f"run-{self.state['runs']}", "display_name": body.get("display_name")})
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_kfp():
    _FakeKfp.requests = []
    _FakeKfp.state = {"pipelines": [], "versions": [], "runs": 0}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeKfp)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _FakeKfp.requests
    server.shutdown()


def _posts(requests, path):
    return [r for r in requests if r[0] == "POST" and r[1] == path]


def _config(tmp_path, params: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"params": params, "local": {"synthetic": False, "out_dir": "x"}}))
    return path


def test_submit_uploads_pipeline_and_version_once_and_runs_that_version(fake_kfp, tmp_path, monkeypatch, capsys):
    host, requests = fake_kfp
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "another-secret")
    monkeypatch.delenv("KFP_TOKEN", raising=False)
    config = _config(tmp_path, {"distill_paradigm": "c", "pretrain_iterations": 500, "distill_lambda_target": 0.5,
                                "train_lr": 0.004})
    # `dakd run` reads the same file
    assert load_run_config(str(config)).params.pretrain_iterations == 500
    argv = ["submit", "--host", host, "--config", str(config), "--package", str(PACKAGE), "--experiment", "exp-a"]
    assert main([*argv, "--run-name", "r1"]) == 0
    assert main([*argv, "--run-name", "r2", "--service-account", "team-sa"]) == 0
    out = capsys.readouterr().out
    assert "submitted run run-1" in out and "submitted run run-2" in out

    # the version is named by package version, git commit and the spec's hash
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=True).stdout.strip()
    digest = hashlib.sha256(PACKAGE.read_bytes()).hexdigest()[:8]
    version = f"{__version__}-{commit}{'-dirty' if dirty else ''}-{digest}"
    assert f"pipeline pl-1 version {version} (v-1)" in out

    # one pipeline and one version upload for two runs; the uploads carry the compiled YAML
    uploads = _posts(requests, "/apis/v2beta1/pipelines/upload")
    versions = _posts(requests, "/apis/v2beta1/pipelines/upload_version")
    assert [u[2]["name"] for u in uploads] == [["dakd"]]
    assert [(v[2]["name"], v[2]["pipelineid"]) for v in versions] == [([version], ["pl-1"])]
    assert PACKAGE.read_bytes() in versions[0][3] and b"dshm" in versions[0][3]  # platform spec travels
    # the version carries its parameter guide as its description, which the UI shows (the form shows
    # none); the pipeline, uploaded once and never updated, a fixed summary: one guide, never stale
    from dakd_core.orchestration.kfp_client import PIPELINE_DESCRIPTION
    from dakd_core.orchestration.params import form_guide
    from pipelines.dakd_pipeline import DESCRIPTION

    assert versions[0][2]["description"] == [form_guide(DESCRIPTION)]
    assert uploads[0][2]["description"] == [PIPELINE_DESCRIPTION]
    assert "distill_paradigm" not in PIPELINE_DESCRIPTION and len(PIPELINE_DESCRIPTION) < 300

    runs = _posts(requests, "/apis/v2beta1/runs")
    assert [r[3]["display_name"] for r in runs] == ["r1", "r2"]
    for run, account in zip(runs, ["dakd-runner", "team-sa"]):
        body = run[3]
        assert body["experiment_id"] == "exp-1" and body["service_account"] == account
        assert body["pipeline_version_reference"] == {"pipeline_id": "pl-1", "pipeline_version_id": "v-1"}
        assert "pipeline_spec" not in body  # the run references the uploaded version
        # as the form takes them: train_lr (a number or the word "recipe") as its text
        assert body["runtime_config"]["parameters"] == {"distill_paradigm": "c", "pretrain_iterations": 500,
                                                        "distill_lambda_target": 0.5, "train_lr": "0.004"}
    assert _posts(requests, "/apis/v2beta1/experiments")[0][3]["display_name"] == "exp-a"
    everything = repr([r[2:] for r in requests])
    assert "very-secret-value" not in everything and "another-secret" not in everything


@pytest.mark.parametrize("text, message", [
    ("params:\n  distill_paradigm: c\n  distill_lamda_kl: 0.4\n", "distill_lamda_kl"),
    ("distill_paradigm: c\npretrain_iterations: 5\n",
     "pipeline parameters go under `params:`.*distill_paradigm, pretrain_iterations"),
    ("- a list\n", "must hold a mapping"),
])
def test_bad_config_fails_before_contacting_the_server(fake_kfp, tmp_path, capsys, text, message):
    host, requests = fake_kfp
    config = tmp_path / "run.yaml"
    config.write_text(text)
    assert main(["submit", "--host", host, "--config", str(config), "--package", str(PACKAGE)]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert requests == []


def test_submit_names_an_unreachable_server_and_a_missing_package(tmp_path, capsys):
    assert main(["submit", "--host", "http://127.0.0.1:9", "--package", str(PACKAGE)]) == 2
    assert "submitting to http://127.0.0.1:9 failed" in capsys.readouterr().err
    assert main(["submit", "--host", "http://127.0.0.1:9", "--package", str(tmp_path / "none.yaml")]) == 2
    assert "--package:" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["../other-team", "a/../../x", "a b", ".hidden"])
def test_run_name_that_would_leave_runs_folder_is_refused(bad, fake_kfp, tmp_path, capsys):
    from dakd_core.errors import ConfigError
    from dakd_core.orchestration.tasks.common import run_prefix

    with pytest.raises(ConfigError, match="run_name"):
        run_prefix("s3://dakd/store", bad)
    host, requests = fake_kfp
    assert main(["submit", "--host", host, "--config", str(_config(tmp_path, {"run_name": bad})),
                 "--package", str(PACKAGE)]) == 2
    assert "run_name" in capsys.readouterr().err and requests == []
    assert run_prefix("s3://dakd/store/", "gta5-to-acdc_v2.1") == "s3://dakd/store/runs/gta5-to-acdc_v2.1"


def _sweep_file(tmp_path, body: dict) -> Path:
    base = _config(tmp_path, {"distill_paradigm": "c", "pretrain_iterations": 500})
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": base.name, **body}, sort_keys=False))
    return path


def test_submit_sweep_starts_one_run_per_point_of_one_version_in_one_experiment(fake_kfp, tmp_path, capsys):
    host, requests = fake_kfp
    sweep = _sweep_file(tmp_path, {"grid": {"distill_paradigm": ["b", "d"], "distill_lambda_kl": [0.1, 0.4]},
                                   "points": [{"train_lr": 0.004}]})
    assert main(["submit", "--host", host, "--sweep", str(sweep), "--package", str(PACKAGE),
                 "--experiment", "grid", "--run-name", "pd"]) == 0
    out = capsys.readouterr().out
    assert "submitted run run-2 pd-2 (distill_paradigm=b, distill_lambda_kl=0.4)" in out
    assert "submitted run run-5 pd-5 (train_lr=0.004)" in out
    # one upload, one experiment, five runs of that version in it
    assert len(_posts(requests, "/apis/v2beta1/pipelines/upload")) == 1
    assert len(_posts(requests, "/apis/v2beta1/pipelines/upload_version")) == 1
    assert [e[3]["display_name"] for e in _posts(requests, "/apis/v2beta1/experiments")] == ["grid"]
    runs = [r[3] for r in _posts(requests, "/apis/v2beta1/runs")]
    assert [r["display_name"] for r in runs] == ["pd-1", "pd-2", "pd-3", "pd-4", "pd-5"]
    assert {(r["experiment_id"], r["pipeline_version_reference"]["pipeline_version_id"]) for r in runs} == {
        ("exp-1", "v-1")}
    # each run: what the base config sets, overridden by its point (the rest: the version's defaults)
    assert [r["runtime_config"]["parameters"] for r in runs] == [
        {"distill_paradigm": "b", "pretrain_iterations": 500, "distill_lambda_kl": 0.1},
        {"distill_paradigm": "b", "pretrain_iterations": 500, "distill_lambda_kl": 0.4},
        {"distill_paradigm": "d", "pretrain_iterations": 500, "distill_lambda_kl": 0.1},
        {"distill_paradigm": "d", "pretrain_iterations": 500, "distill_lambda_kl": 0.4},
        {"distill_paradigm": "c", "pretrain_iterations": 500, "train_lr": "0.004"}]


@pytest.mark.parametrize(("body", "message"), [
    ({"grid": {"distill_paradigm": ["b", "c", "e"]}}, r"sweep point 3 of 3 \(distill_paradigm=e\): .*distill_paradigm"),
    ({"points": [{"distill_paradigm": "b"}, {"distill_lambda_cwd": 1.0}]},  # only the distill stage's plan knows
     r"sweep point 2 of 2 \(distill_lambda_cwd=1.0\): stage distill_first: .*teacher_online"),
])
def test_submit_sweep_with_a_bad_point_exits_2_before_contacting_the_server(fake_kfp, tmp_path, capsys, body,
                                                                            message):
    host, requests = fake_kfp
    sweep = _sweep_file(tmp_path, body)
    assert main(["submit", "--host", host, "--sweep", str(sweep), "--package", str(PACKAGE)]) == 2
    assert re.search("(?s)" + message, capsys.readouterr().err)
    assert requests == []
