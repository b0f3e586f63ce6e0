"""The GPU kit: dakd's pure-Python dependencies that a lent GPU machine lacks, as wheels to carry.

The lent machines (device tool: nvidia-h100-x1, nvidia-h200) run Python 3.12 with torch 2.11
(CUDA 13) and many packages, but not pydantic or cityscapesscripts (nor mlflow: the GPU suite runs
its stages with log_mlflow off, so the kit leaves it out), and reach no package
registry. This downloads, here, the cp312 x86-64 wheels of those requirements at the pins of
requirements/runtime.txt with everything they need, drops the distributions the machine's image
already has (LENT_MACHINE_HAS, read from the device tool's KINDS.md, 2026-11-17), and checks
that the rest fits what a device call carries:

    python benchmarks/gpu_kit.py              # -> .whl/ (ignored by git), then
    device tool: run  command "bash benchmarks/gpu_run.sh"  carry [".whl"]  timeout_s 600

benchmarks/gpu_run.sh installs .whl/*.whl offline (--no-deps, into a directory put first on
PYTHONPATH) before the suite. torch, onnxruntime-gpu and the other CUDA builds are not in the kit
(hundreds of MB each): the suite runs on the machine's torch, and ONNX Runtime's GPU rows say
when the machine's onnxruntime has no CUDA provider.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the GPU suite needs beyond the image: the config models and the Cityscapes label tables of
# the synthetic scenes. Not mlflow: with its SQLite store it made the kit 49 wheels, 35.1 MiB
# (without, 11 wheels, 3.6 MiB; 2026-12-07); the suite's stages run with log_mlflow off.
KIT_REQUIREMENTS = ("pydantic", "cityscapesscripts")
TARGET = ["--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
          "--platform", "manylinux_2_27_x86_64", "--platform", "manylinux_2_17_x86_64",
          "--platform", "manylinux2014_x86_64", "--platform", "manylinux1_x86_64", "--platform", "any"]
# Never carried: `typing` (cityscapesscripts asks for the Python 3.4 backport), first on PYTHONPATH,
# would shadow the standard library's module.
NEVER = frozenset({"typing"})
# Always carried, though the machine has them: what the kit's wheels need at a version newer than
# the machine's may be (the kit installs --no-deps, so pip cannot say): pydantic 2.14 requires
# typing-extensions >= 4.16, and the image's version is not on record. Backward compatible, small.
ALWAYS = frozenset({"typing-extensions"})
LIMIT_MIB = 48  # of the 64 MiB a device call carries; the rest is the working tree itself
LENT_MACHINE_HAS = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
wrapt xarray xxhash yarl zipp
""".split())


def distribution(wheel: str) -> str:
    """The normalised distribution name of a wheel file (PEP 503: lower case, runs of -_. -> -)."""
    return re.sub(r"[-_.]+", "-", wheel.split("-")[0]).lower()


def pins(names=KIT_REQUIREMENTS, runtime: Path = ROOT / "requirements" / "runtime.txt") -> list[str]:
    """runtime.txt's requirement line for each name (the kit installs what the images pin)."""
    lines = [line.split("#")[0].strip() for line in runtime.read_text().splitlines()]
    found = {distribution(re.split(r"[<>=!~ ]", line)[0]): line for line in lines if line}
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"gpu_kit: {runtime} pins no {', '.join(missing)}")
    return [found[n] for n in names]


def select(wheels: list[Path], has=LENT_MACHINE_HAS) -> tuple[list[Path], list[Path]]:
    """(wheels to carry, wheels left out: the lent machine has their distribution, or NEVER)."""
    carry = [w for w in wheels if distribution(w.name) in ALWAYS or distribution(w.name) not in has | NEVER]
    return carry, [w for w in wheels if w not in carry]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / ".whl", help="the kit's folder (replaced)")
    ap.add_argument("--limit-mib", type=float, default=LIMIT_MIB)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dakd-gpu-kit-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", *TARGET, "-d", tmp,
                        *pins()], check=True)
        carry, dropped = select(sorted(Path(tmp).glob("*.whl")))
        size = sum(w.stat().st_size for w in carry) / 2**20
        if size > args.limit_mib:
            print(f"gpu_kit: {len(carry)} wheels, {size:.1f} MiB: over --limit-mib {args.limit_mib:g}", file=sys.stderr)
            return 1
        shutil.rmtree(args.out, ignore_errors=True)
        args.out.mkdir(parents=True)
        for wheel in carry:
            shutil.copy2(wheel, args.out / wheel.name)
    _ignore(args.out)
    print(f"gpu_kit: {len(carry)} wheels, {size:.1f} MiB in {args.out} "
          f"({len(dropped)} left out: {', '.join(sorted(distribution(w.name) for w in dropped))})")
    return 0


def _ignore(folder: Path) -> None:
    """Keep the kit out of commits (the device tool still carries it when named in `carry`)."""
    try:
        rel = folder.resolve().relative_to(ROOT)
        exclude = subprocess.run(["git", "rev-parse", "--git-path", "info/exclude"], cwd=ROOT, check=True,
                                 capture_output=True, text=True).stdout.strip()
    except (ValueError, OSError, subprocess.CalledProcessError):
        return  # outside the checkout, or not a git checkout: nothing to keep out
    path = (ROOT / exclude).resolve()
    entry = f"/{rel.as_posix()}/"
    if entry not in (path.read_text().splitlines() if path.exists() else []):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(f"\n{entry}\n")


if __name__ == "__main__":
    sys.exit(main())
