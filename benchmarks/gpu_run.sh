#!/usr/bin/env bash
# The single prepared command for a lent GPU machine: the GPU suite (benchmarks/gpu_suite.py) with
# everything it writes under $OUT, within about 8 minutes.
#
#   device tool: run  command "bash benchmarks/gpu_run.sh"  timeout_s 600  (carry [".whl"] with the kit)
#   anywhere else: OUT=/some/dir bash benchmarks/gpu_run.sh [more gpu_suite.py arguments, e.g. --dry-run]
#
# $OUT receives (4 files, what the device tool brings back): environment.txt (GPU, driver, torch, the kit's unmet requirements,
# the packages the suite uses), gpu_suite.json and gpu_suite.md (rewritten after every section, so
# a run stopped anywhere keeps the finished sections and names the one that was running) and
# gpu_suite.log (the suite's whole output). The suite shares --budget-s 420 between its sections,
# each also under its own bound; `timeout` stops it at 510 s regardless (SIGTERM: the running
# section is written down as interrupted), inside the device tool's 600 s (SUITE_TIMEOUT_S
# changes it where there is no such limit, e.g. a dry run on a loaded CPU with --budget-s 3000).
# The lent machines lack dakd's pure-Python dependencies and cannot download them: when the kit
# (.whl/, made here by `python benchmarks/gpu_kit.py`) travels along, it is installed offline first.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d -t dakd-gpu-run-XXXXXX)}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 DAKD_NO_PROGRESS=1 MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1
echo "gpu_run: results in $OUT"

KIT="${KIT:-.whl}"  # the kit's folder (another one, or none, where the checkout's is not for this Python)
if [ -d "$KIT" ] && compgen -G "$KIT/*.whl" >/dev/null; then
    site="$(mktemp -d -t dakd-kit-XXXXXX)"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$KIT"/*.whl \
        || { echo "gpu_run: installing the kit ($KIT) failed" | tee "$OUT/gpu_suite.log"; exit 1; }
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    "$PYTHON" - <<'PY' 2>&1
import importlib.metadata as md, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version(), "gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
for name in ("onnxruntime", "onnxruntime-gpu", "onnx", "timm", "numpy", "pydantic", "mlflow", "mlflow-skinny",
             "nvidia-ml-py", "cityscapesscripts"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name} (absent)")
PY
    # The kit installs --no-deps: what its wheels require that the machine lacks, or has at a
    # version they do not accept, is said here (pip check, the kit's own distributions only;
    # `typing`, the Python 3.4 backport cityscapesscripts names, is the standard library's).
    [ -z "${site:-}" ] || "$PYTHON" - "$site" <<'PY' 2>&1
import pathlib, re, subprocess, sys
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
kit = {norm(p.name.removesuffix(".dist-info").rsplit("-", 1)[0]) for p in pathlib.Path(sys.argv[1]).glob("*.dist-info")}
check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True).stdout
unmet = [line for line in check.splitlines() if norm(line.split(" ")[0]) in kit and " requires typing," not in line]
print(f"kit: {len(kit)} distributions, {len(unmet)} unmet requirements", *unmet, sep="\n")
PY
} > "$OUT/environment.txt"
cat "$OUT/environment.txt"

timeout -s TERM -k 20 "${SUITE_TIMEOUT_S:-510}" "$PYTHON" benchmarks/gpu_suite.py --budget-s 420 \
    --json "$OUT/gpu_suite.json" --markdown "$OUT/gpu_suite.md" "$@" 2>&1 | tee "$OUT/gpu_suite.log"
status=${PIPESTATUS[0]}
echo "gpu_run: suite exit status $status; results in $OUT"
exit "$status"
