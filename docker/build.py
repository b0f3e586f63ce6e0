"""Build (and optionally push) the dakd images with the docker SDK.

    python docker/build.py                       # every variant, tagged by git commit
    python docker/build.py --variant cuda --push --registry ghcr.io/me
    DAKD_IMAGE=$(python docker/build.py --print-tag --variant cuda) dakd compile
    python docker/build.py --version-tag --push && dakd compile --images docker/images.lock.json

Tags: `{registry}/dakd:{commit}` (CUDA), `{registry}/dakd:{commit}-cpu` and
`{registry}/dakd:{commit}-mlflow` (the MLflow server of k8s/mlflow), where commit is the
12-character HEAD hash, suffixed `-dirty` when tracked files have uncommitted changes (so an image is
never mistaken for the commit it is not); `--version-tag` also tags the package version
(`0.1.0`, `0.1.0-cpu`, `0.1.0-mlflow`), the tags the committed pipeline YAML and k8s/ refer to.

After a push, the digest the registry returned for each tag is recorded in the lock file
(`--lock`, default docker/images.lock.json, merged with what it already holds):
{"<name>:<tag>": "<name>@sha256:..."}. `dakd compile --images <lock>` pins the pipeline to them.

The build context is a tar of the git-tracked files, built here, so .venv, demo_out, untracked
files and secrets in ignored files can never enter an image. Two folders are added to it for the
build only, under .build/ (see docker/Dockerfile.cpu): `--ca-cert FILE` (the extra CA certificates a
TLS-intercepting proxy needs; the Dockerfiles trust them in a build stage whose files never reach
the final image) and `--wheels DIR` (a local wheel folder, e.g. torch's CPU wheel).

Air-gapped (no image registry, a PyPI mirror or proxy only):

    docker/base-from-debian.sh dakd/python-base:3.11-bookworm
    python docker/build.py --no-pull --variant cpu --build-arg PYTHON_IMAGE=dakd/python-base:3.11-bookworm \
        --build-arg TORCH_INDEX_URL= --wheels /opt/wheels --ca-cert /usr/local/share/ca-certificates/proxy.crt

`--no-pull` builds on the base images already here (the engine fetches one only when it is missing).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import tempfile
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REGISTRY = "ghcr.io/dakd"
IMAGE_NAME = "dakd"
DEFAULT_LOCK = REPO / "docker" / "images.lock.json"
VARIANTS = {"cuda": ("docker/Dockerfile.cuda", ""), "cpu": ("docker/Dockerfile.cpu", "-cpu"),
            "mlflow": ("docker/Dockerfile.mlflow", "-mlflow")}
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
EXTRA_DIR = ".build"  # what build_context adds to the tracked files, for the build only


class BuildError(Exception):
    """The build could not start or the engine reported an error."""


@dataclass(frozen=True)
class ImagePlan:
    variant: str
    dockerfile: str
    tags: list[str]
    buildargs: dict[str, str]


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise BuildError(f"git {' '.join(args)} failed in {repo}: {out.stderr.strip()}")
    return out.stdout


def git_commit_tag(repo: Path = REPO) -> str:
    commit = _git(repo, "rev-parse", "--short=12", "HEAD").strip()
    dirty = _git(repo, "status", "--porcelain", "--untracked-files=no").strip()
    return f"{commit}-dirty" if dirty else commit


def package_version(repo: Path = REPO) -> str:
    text = (repo / "dakd_core" / "__init__.py").read_text()
    for line in text.splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise BuildError(f"no __version__ in {repo / 'dakd_core/__init__.py'}")


def plan(variant: str, registry: str, commit_tag: str, version: str | None,
         buildargs: dict[str, str] | None = None) -> ImagePlan:
    if variant not in VARIANTS:
        raise BuildError(f"unknown variant {variant!r}; choose from {sorted(VARIANTS)}")
    dockerfile, suffix = VARIANTS[variant]
    repo = f"{registry.rstrip('/')}/{IMAGE_NAME}"
    tags = [f"{repo}:{commit_tag}{suffix}"]
    if version:
        tags.append(f"{repo}:{version}{suffix}")
    return ImagePlan(variant, dockerfile, tags, dict(buildargs or {}))


def context_files(repo: Path = REPO) -> list[str]:
    """The git-tracked files (as they are in the work tree): what a fresh clone holds."""
    listed = _git(repo, "ls-files", "-z", "--cached")
    return sorted({p for p in listed.split("\0") if p and (repo / p).is_file()})


def build_extras(ca_certs: list[Path] = (), wheels: Path | None = None) -> dict[str, Path]:
    """{name in the context: file} for .build/: extra CA certificates and a wheel folder's wheels."""
    extras = {}
    for cert in ca_certs:
        if not cert.is_file():
            raise BuildError(f"--ca-cert {cert}: no such file")
        # update-ca-certificates' convention: one PEM file per certificate, named *.crt
        extras[f"{EXTRA_DIR}/ca/{len(extras):02d}-{cert.stem}.crt"] = cert
    if wheels is not None:
        if not wheels.is_dir():
            raise BuildError(f"--wheels {wheels}: not a directory")
        for whl in sorted(wheels.glob("*.whl")):
            extras[f"{EXTRA_DIR}/wheels/{whl.name}"] = whl
    return extras


def _reproducible(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # owner and mtime must not change the image cache key
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def build_context(repo: Path = REPO, extras: dict[str, Path] | None = None) -> io.BytesIO:
    """A gzipped tar of the tracked files plus `extras` ({name: file}, under .build/, whose two
    folders always exist so the Dockerfiles can COPY them)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for folder in (EXTRA_DIR, f"{EXTRA_DIR}/ca", f"{EXTRA_DIR}/wheels"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(_reproducible(info))
        files = {rel: repo / rel for rel in context_files(repo)} | dict(extras or {})
        for rel, path in files.items():
            info = _reproducible(tar.gettarinfo(str(path), arcname=rel))
            with open(path, "rb") as f:
                tar.addfile(info, f)
    buf.seek(0)
    return buf


def build(client, image: ImagePlan, context: io.BytesIO, push: bool = False, pull: bool = True,
          network: str | None = None) -> dict[str, str | None]:
    """Build one image through a docker SDK client, printing the engine's output as it comes:
    {tag built: digest reference once pushed}. pull=False: use the base images already here;
    network: the RUN steps' network mode (None: the engine's default)."""
    context.seek(0)
    try:
        # forcerm: a failed step's container is removed too (nothing left behind)
        for chunk in client.api.build(
            fileobj=context, custom_context=True, encoding="gzip", dockerfile=image.dockerfile,
            tag=image.tags[0], buildargs=image.buildargs, rm=True, forcerm=True, pull=pull, network_mode=network,
            decode=True,
        ):
            if "stream" in chunk:
                sys.stdout.write(chunk["stream"])
                sys.stdout.flush()
            if "error" in chunk:
                raise BuildError(f"building {image.tags[0]} from {image.dockerfile} failed: {chunk['error'].strip()}")
        built = client.images.get(image.tags[0])
    except BuildError:
        raise
    except Exception as e:  # docker.errors.APIError / ImageNotFound: the message says what
        raise BuildError(f"building {image.tags[0]} from {image.dockerfile} failed: {e}") from None
    for tag in image.tags[1:]:
        repo, _, name = tag.rpartition(":")
        built.tag(repo, tag=name)
    return {tag: push_tag(client, tag) if push else None for tag in image.tags}


def push_tag(client, tag: str) -> str:
    """Push one tag; returns `name@sha256:...`, the digest the registry reported for it (the
    push stream's `aux` record), which pulls exactly these bytes whatever the tag later points to."""
    repo, _, name = tag.rpartition(":")
    digest = None
    for line in client.images.push(repo, tag=name, stream=True, decode=True):
        if "error" in line:
            raise BuildError(f"pushing {tag} failed: {line['error']}")
        digest = (line.get("aux") or {}).get("Digest") or digest
    if digest is None or not _DIGEST.fullmatch(digest):
        raise BuildError(f"pushing {tag}: the registry reported no sha256 digest (got {digest!r})")
    return f"{repo}@{digest}"


def write_lock(path: Path, digests: dict[str, str]) -> dict[str, str]:
    """Merge {tag: digest reference} into the lock file, atomically (a failed write leaves the old
    file); returns the merged content."""
    merged = {}
    if path.exists():
        try:
            merged = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise BuildError(f"{path}: existing image lock is not JSON ({e}); remove it or fix it") from None
        if not isinstance(merged, dict):
            raise BuildError(f"{path}: existing image lock is not a JSON object; remove it or fix it")
    merged.update(digests)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(dict(sorted(merged.items())), f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return merged


def main(argv: list[str] | None = None, client=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", choices=[*VARIANTS, "all"], default="all")
    p.add_argument("--registry", default=DEFAULT_REGISTRY)
    p.add_argument("--version-tag", action="store_true", help="also tag the package version")
    p.add_argument("--push", action="store_true")
    p.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="e.g. PYTHON_IMAGE=dakd/python-base:3.11-bookworm (every variant), "
                        "TORCH_INDEX_URL=URL (CPU)")
    p.add_argument("--no-pull", action="store_true",
                   help="build on the base images already here (air-gapped); the engine pulls only a missing one")
    p.add_argument("--network", metavar="MODE",
                   help="network of the build's RUN steps, e.g. host (default: the engine's)")
    p.add_argument("--ca-cert", action="append", default=[], type=Path, metavar="FILE",
                   help="an extra CA certificate (PEM) pip must trust during the build; never in the final image")
    p.add_argument("--wheels", type=Path, metavar="DIR",
                   help="a local wheel folder pip may install from (e.g. torch's CPU wheel, with "
                        "--build-arg TORCH_INDEX_URL= when PyTorch's index is unreachable)")
    p.add_argument("--print-tag", action="store_true", help="print the commit tag(s) and exit")
    p.add_argument("--lock", type=Path, default=DEFAULT_LOCK,
                   help="where --push records the pushed digests (default: docker/images.lock.json)")
    args = p.parse_args(argv)

    buildargs = {}
    for item in args.build_arg:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"--build-arg must be KEY=VALUE, got {item!r}")
        buildargs[key] = value
    variants = list(VARIANTS) if args.variant == "all" else [args.variant]
    version = package_version() if args.version_tag else None
    try:
        plans = [plan(v, args.registry, git_commit_tag(), version, buildargs) for v in variants]
        if args.print_tag:
            print("\n".join(pl.tags[0] for pl in plans))
            return 0
        if client is None:
            import docker

            try:
                client = docker.from_env()
            except docker.errors.DockerException as e:
                raise BuildError(f"no docker engine reachable: {e}") from None
        context = build_context(extras=build_extras(args.ca_cert, args.wheels))
        built = {}
        for pl in plans:
            tags = build(client, pl, context, push=args.push, pull=not args.no_pull, network=args.network)
            if args.push:  # recorded image by image: what was pushed is in the lock even if a later build fails
                write_lock(args.lock, tags)
            built.update(tags)
    except BuildError as e:
        print(f"docker/build.py: error: {e}", file=sys.stderr)
        return 2
    report = {"built": list(built), "pushed": args.push}
    if args.push:
        report.update(digests=built, lock=str(args.lock))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
