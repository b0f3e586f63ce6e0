"""Run the MLflow server of k8s/mlflow/mlflow.yaml locally and check its authentication.

The server command, the basic-auth configuration (the ConfigMap's basic_auth.ini) and the
credential environment come from the manifest; only what names cluster services is rewritten
(the database host, the S3 artifact destination, the allowed hosts) and one worker is used.

    python benchmarks/mlflow_auth_check.py --backend sqlite
    PYTHONPATH=<dir with psycopg2-binary> python benchmarks/mlflow_auth_check.py --backend postgres

`--backend postgres` starts a throwaway PostgreSQL (initdb / pg_ctl on PATH; as root, the server
runs as --pg-os-user) with a password-protected account, and the MLflow server reaches it the way
the manifest does: a postgresql:// URI without credentials, PGUSER / PGPASSWORD in the
environment. Checks, each printed with its result:
  - an unauthenticated REST call and a wrong password get 401; the admin gets 200
  - the MLflow client (MLFLOW_TRACKING_USERNAME / _PASSWORD) logs a run and moves `champion`
  - a second user with the default permission (READ) can read the model but not move `champion` (403)
  - the database password is on no server process's command line
Exit status 0 when every check passes.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "k8s" / "mlflow" / "mlflow.yaml"
IN_CLUSTER_DB = "mlflow-postgres:5432"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def manifest_server() -> tuple[list[str], str]:
    """(the Deployment's command, the ConfigMap's basic_auth.ini) of k8s/mlflow/mlflow.yaml."""
    docs = {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text())}
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    return container["command"], docs["ConfigMap"]["data"]["basic_auth.ini"]


def start_postgres(work: Path, os_user: str | None, db_user: str, db_password: str) -> tuple[str, callable]:
    """A PostgreSQL cluster on a free port with database `mlflow` owned by a password account."""
    data, sock = work / "pgdata", work / "pgsock"
    sock.mkdir()
    pwfile = work / "pwfile"
    pwfile.write_text(db_password + "\n")
    as_user = {"user": os_user} if os_user else {}
    if os_user:
        shutil.chown(work, os_user)
        for p in (sock, pwfile):
            shutil.chown(p, os_user)
    subprocess.run(["initdb", "-D", str(data), "-U", db_user, "--pwfile", str(pwfile), "-A", "scram-sha-256"],
                   check=True, capture_output=True, **as_user)
    port = _free_port()
    subprocess.run(["pg_ctl", "-D", str(data), "-w", "-l", str(work / "pg.log"), "-o",
                    f"-p {port} -k {sock} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True, **as_user)

    def stop():
        subprocess.run(["pg_ctl", "-D", str(data), "-m", "fast", "stop"], capture_output=True, **as_user)

    env = {**os.environ, "PGPASSWORD": db_password}
    subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", db_user, "-d", "postgres", "-c",
                    "CREATE DATABASE mlflow"], check=True, capture_output=True, env=env)
    return f"127.0.0.1:{port}", stop


def _request(base: str, path: str, auth: tuple[str, str] | None, method: str = "GET", body: dict | None = None):
    req = urllib.request.Request(base + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=120) as r:  # a busy machine answers slowly
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL after 30 s (as Kubernetes does)."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(server.pid, sig)
            server.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _healthy(base: str) -> bool:
    try:
        return _request(base, "/health", None) == 200
    except (urllib.error.URLError, TimeoutError):  # not listening, or too busy to answer, yet
        return False


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--pg-os-user", default="postgres" if os.geteuid() == 0 else None,
                   help="OS user the throwaway PostgreSQL runs as (it refuses root)")
    p.add_argument("--timeout", type=float, default=240, help="seconds to wait for the server")
    args = p.parse_args(argv)

    command, auth_ini = manifest_server()
    work = Path(tempfile.mkdtemp(prefix="mlflow-auth-"))
    admin = ("dakd", secrets.token_hex(16))
    db_user, db_password = "mlflow", secrets.token_hex(16)
    stop_db = lambda: None  # noqa: E731
    results: dict[str, object] = {"backend": args.backend}
    server = None
    try:
        if args.backend == "postgres":
            db_host, stop_db = start_postgres(work, args.pg_os_user, db_user, db_password)
            rewrite = lambda a: a.replace(IN_CLUSTER_DB, db_host)  # noqa: E731
        else:
            sqlite = f"sqlite:///{work / 'mlflow.db'}"
            rewrite = lambda a: a.replace(f"postgresql+psycopg2://{IN_CLUSTER_DB}/mlflow", sqlite)  # noqa: E731
        port = _free_port()
        argv_server = []
        for a in command:
            if a.startswith("--port="):
                a = f"--port={port}"
            elif a.startswith("--host="):
                a = "--host=127.0.0.1"
            elif a.startswith("--artifacts-destination="):
                a = f"--artifacts-destination={(work / 'artifacts').as_uri()}"
            elif a.startswith("--allowed-hosts="):
                a = f"--allowed-hosts=127.0.0.1:{port},localhost:{port}"
            argv_server.append(rewrite(a))
        argv_server[0] = str(Path(sys.executable).with_name("mlflow"))
        argv_server.append("--workers=1")
        ini = work / "basic_auth.ini"
        ini.write_text(rewrite(auth_ini))
        env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_DISABLE_TELEMETRY": "true",
               "PYTHONUNBUFFERED": "1", "MLFLOW_AUTH_ADMIN_USERNAME": admin[0], "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1],
               "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
               "PGUSER": db_user, "PGPASSWORD": db_password}
        results["server_command"] = argv_server
        started = time.monotonic()
        server = subprocess.Popen(argv_server, env=env, stdout=open(work / "server.log", "w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        while not _healthy(base):
            if server.poll() is not None or time.monotonic() - started > args.timeout:
                print((work / "server.log").read_text()[-4000:], file=sys.stderr)
                raise SystemExit("the MLflow server did not come up")
            time.sleep(0.5)
        results["server_ready_s"] = round(time.monotonic() - started, 1)

        search = "/api/2.0/mlflow/experiments/search?max_results=1"
        checks = {
            "no credentials -> 401": _request(base, search, None) == 401,
            "wrong password -> 401": _request(base, search, (admin[0], "x" * 16)) == 401,
            "admin -> 200": _request(base, search, admin) == 200,
        }
        checks.update(_client_checks(base, admin))
        cmdlines = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        checks["DB password on no command line"] = db_password not in cmdlines
        results["checks"] = checks
    finally:
        if server is not None:
            _stop(server)
        stop_db()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    return 0 if all(results["checks"].values()) else 1


def _client_checks(base: str, admin: tuple[str, str]) -> dict[str, bool]:
    """The pipeline's view: the MLflow client with the dakd-mlflow secret's variables."""
    import mlflow
    from mlflow import MlflowClient

    os.environ.update(MLFLOW_TRACKING_USERNAME=admin[0], MLFLOW_TRACKING_PASSWORD=admin[1])
    mlflow.set_tracking_uri(base)
    mlflow.set_experiment("auth-check")
    with mlflow.start_run() as run:
        mlflow.log_metric("miou", 0.5)
    client = MlflowClient(base)
    client.create_registered_model("auth-check-model")
    version = client.create_model_version("auth-check-model", f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias("auth-check-model", "champion", version.version)
    checks = {"admin client logs a run and moves champion":
              client.get_model_version_by_alias("auth-check-model", "champion").version == version.version}

    reader = ("reader", secrets.token_hex(16))
    created = _request(base, "/api/2.0/mlflow/users/create", admin, "POST",
                       {"username": reader[0], "password": reader[1]})
    alias = {"name": "auth-check-model", "alias": "champion", "version": version.version}
    checks["user created by admin"] = created == 200
    checks["READ user reads the model -> 200"] = _request(
        base, "/api/2.0/mlflow/registered-models/get?name=auth-check-model", reader) == 200
    checks["READ user moving champion -> 403"] = _request(
        base, "/api/2.0/mlflow/registered-models/alias", reader, "POST", alias) == 403
    return checks


if __name__ == "__main__":
    sys.exit(main())
