"""One error contract for the whole command line (issue 31): every parameter of every `dakd`
subcommand, given one hostile value, is refused with exit status 2 and ONE line on stderr,
`dakd <command>: error: ...`, naming the value, and nothing is created before the refusal.

The parameters are walked from the real parser (`dakd_core.cli.build_parser`), so a flag added
later is covered without editing this file. The hostile value of a parameter comes from its kind:

- a choice: `bogus`; an int: `-1`; a float: `nan`; an HxW size: `0x0`;
- an output location: on the object store `ftp://127.0.0.1/x` (no such scheme), on the local
  disk a path below a regular file (it cannot become a directory);
- any other string: `../../etc`, from a working directory two levels inside the sandbox (so it
  names `<sandbox>/etc`, which does not exist, and nothing outside the sandbox is touched).

Values refused by validation must be named in the error with their field. An input path
(`../../etc`) must be refused naming a file or URI (the hostile one, or the command's other,
missing, input when the command reads that one first) or the field (a method's own field given
to another method). Calls are in-process (`main(argv)`); the whole file runs in ~10 s.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shutil
from pathlib import Path

import pytest

from dakd_core.cli import build_parser, main

# Parameters where any string is a valid value (display names, free-form tags, metric names): no
# value of theirs is hostile. The other parameters of these commands are walked.
FREE_TEXT = {
    ("submit", "--experiment"), ("submit", "--run-name"),  # KFP display names
    ("register", "--metrics-model"), ("register", "--paradigm"), ("register", "--teacher"),
    ("register", "--pipeline-run-id"), ("register", "--git-commit"),  # recorded as tags as given
    ("promote", "--metric"),  # any MLflow metric name ('select/miou' has a '/')
}
# `bench realtime` hands every argument to benchmarks/bench_realtime.py's own parser.
PASSTHROUGH = {"bench realtime"}
STORE_OUTPUTS = {"--out", "--store"}  # of commands that write to the object store
LOCAL_OUTPUT_COMMANDS = {"synth", "compile", "run", "bench results", "bench perf"}
LOCAL_OUTPUTS = {"--out", "--output", "--preview", "--docs", "--json"}

M = "S/in/manifest.parquet"  # S: the sandbox; nothing under S/in exists
BASELINE = {
    "pretrain": ["--source-manifest", M, "--out", "S/out", "--device", "cpu", "--model", "deeplabv2_tiny"],
    "adapt": ["--init", "S/in/init.pt", "--target-manifest", M, "--source-manifest", M, "--out", "S/out",
              "--device", "cpu", "--model", "deeplabv2_tiny"],
    "distill": ["--init", "S/in/init.pt", "--target-manifest", M, "--source-manifest", M, "--teacher", "S/in/t.pt",
                "--teacher-cache", "S/in/index.parquet", "--out", "S/out", "--device", "cpu", "--model", "deeplabv2_tiny"],
    "deploy": ["--model", "S/in/m.onnx", "--out", "S/out"],
    "cache-teacher": ["--teacher", "S/in/t.pt", "--manifest", M, "--store", "S/out", "--name", "c",
                      "--size", "16", "32", "--device", "cpu"],
    "evaluate": ["--model", "S/in/m.pt", "--manifest", M, "--out", "S/out", "--device", "cpu"],
    "export": ["--model", "S/in/m.pt", "--out", "S/out", "--device", "cpu"],
    "ingest": ["--format", "cityscapes", "--root", "S/in", "--split", "train", "--domain", "source",
               "--store", "S/out", "--name", "ds"],
    "register": ["--export", "S/in/export.json", "--metrics", "S/in/metrics.json", "--source", "gta5",
                 "--target", "cityscapes"],
    "promote": ["--model", "dakd-x"],
    "score": ["--pred", "S/in/pred", "--gt", "S/in/gt", "--gt-format", "cityscapes", "--out", "S/out"],
    "synth": ["--out", "S/out", "--domain", "source", "--n", "1"],
    "run": ["--config", str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"), "--out", "S/out"],
    "submit": ["--host", "http://127.0.0.1:9", "--package", "S/in/p.yaml"],
    "compile": ["--output", "S/out/p.yaml"],
    "compare": ["--experiment", "e", "--out", "S/in/run"],
    "bench results": ["--size", "tiny", "--seeds", "1", "--out", "S/bench", "--docs", "S/docs", "--json", "S/r.json"],
    "bench perf": ["--out", "S/perf.md"],
}


def _commands(parser: argparse.ArgumentParser, prefix: str = ""):
    """(command words, its parser) of every leaf subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, f"{prefix} {name}".strip())
            return
    yield prefix, parser


def _flag(action: argparse.Action) -> str:
    return max(action.option_strings, key=len)  # --output, not -o


def _hostile(command: str, action: argparse.Action) -> tuple[str, str] | None:
    """(kind, value) of the parameter's hostile value; None when no value is hostile."""
    flag = _flag(action)
    if (command, flag) in FREE_TEXT:
        return None
    if action.choices:
        return "validation", "bogus"
    kind = getattr(action.type, "__name__", "")
    if kind in ("int", "float", "_hw"):
        return "validation", {"int": "-1", "float": "nan", "_hw": "0x0"}[kind]
    if command in LOCAL_OUTPUT_COMMANDS and flag in LOCAL_OUTPUTS:
        return "validation", "S/blocker/x"
    if flag in STORE_OUTPUTS:
        return "validation", "ftp://127.0.0.1/x"
    return "input", "../../etc"


def _cases():
    for command, parser in _commands(build_parser(None)):
        if command in PASSTHROUGH:
            continue
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0 or action.dest == "help":
                continue  # flags without a value (--no-amp, --weather) have no hostile value
            hostile = _hostile(command, action)
            if hostile is not None:
                yield pytest.param(command, _flag(action), action.dest, action.nargs, *hostile,
                                   id=f"{command.replace(' ', '-')}{_flag(action)}")


def test_every_command_has_a_baseline():
    commands = {c for c, _ in _commands(build_parser(None))} - PASSTHROUGH
    assert commands == set(BASELINE)


@pytest.fixture
def sandbox(tmp_path, monkeypatch, _mlflow_template_db):
    """The sandbox S (cwd S/w/x, S/blocker a regular file), MLflow in a copied database outside
    S, and the heavy entry points of `run` and `bench` replaced by a failure: a hostile value
    that got past validation would otherwise start a pipeline or a benchmark."""
    root = tmp_path / "S"
    (root / "w" / "x").mkdir(parents=True)
    (root / "blocker").write_text("a file, not a directory")
    monkeypatch.chdir(root / "w" / "x")
    db = tmp_path / "mlruns.db"
    shutil.copyfile(_mlflow_template_db, db)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setenv("DAKD_MLFLOW_ARTIFACT_ROOT", (tmp_path / "mlartifacts").as_uri())

    def not_refused(*args, **kwargs):
        raise AssertionError("the hostile value was not refused: the command started its work")

    import dakd_core.bench.perf as perf
    import dakd_core.bench.results as results
    import dakd_core.orchestration.local as local

    for module, name in ((local, "prepare_data"), (results, "prepare_data"), (perf, "run_perf")):
        monkeypatch.setattr(module, name, not_refused)
    return root


@pytest.mark.parametrize("command,flag,dest,nargs,kind,value", list(_cases()))
def test_hostile_value_is_one_line_exit_2_and_creates_nothing(command, flag, dest, nargs, kind, value, sandbox):
    count = nargs if isinstance(nargs, int) else 1
    argv = [a.replace("S/", f"{sandbox}/") for a in BASELINE[command]]
    if flag in argv:  # the baseline's own value of this flag goes
        i = argv.index(flag)
        del argv[i:i + 1 + count]
    value = value.replace("S/", f"{sandbox}/")
    argv = command.split() + argv + [flag] + [value] * count
    before = sorted(sandbox.rglob("*"))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse
            code = e.code
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, (argv, code, err.getvalue()[-3000:])
    line = lines[0]
    assert re.match(rf"dakd {command.split()[0]}( \w+)?: error: ", line), line
    field = flag.lstrip("-")
    names_field = any(name in line for name in (field, field.replace("-", "_"), dest))
    if kind == "validation":  # the field (flag or config field) and the value
        assert names_field, line
        assert value in line or repr(value) in line or (value == "0x0" and "(got 0)" in line), line
    else:  # an input path: the refusal names a file or URI it could not read, or the field
        assert "etc" in line or str(sandbox) in line or names_field, line
    assert sorted(sandbox.rglob("*")) == before, f"{argv} created {set(sandbox.rglob('*')) - set(before)}"
