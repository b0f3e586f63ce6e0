"""The images of the components and their decorators.

Images are chosen when the pipeline is compiled: `DAKD_IMAGE` (GPU stages, the CUDA image) and
`DAKD_CPU_IMAGE` (default: `DAKD_IMAGE` + `-cpu`). The defaults are the release tags built by
`docker/build.py --version-tag`; the committed YAML is compiled with the defaults.
Task logic lives in dakd_core.orchestration.tasks (KFP's executor imports kfp in runtime mode,
where `dsl.component` does not exist, so the wrappers' bodies must import only dakd_core).
"""

import functools
import os

from kfp import dsl

from dakd_core import __version__

DEFAULT_IMAGE = f"ghcr.io/dakd/dakd:{__version__}"
IMAGE = os.environ.get("DAKD_IMAGE") or DEFAULT_IMAGE
CPU_IMAGE = os.environ.get("DAKD_CPU_IMAGE") or f"{IMAGE}-cpu"

# The images carry kfp (requirements/kfp.txt): no per-task pip install (~0.5 s per task).
gpu_component = functools.partial(dsl.component, base_image=IMAGE, install_kfp_package=False)
cpu_component = functools.partial(dsl.component, base_image=CPU_IMAGE, install_kfp_package=False)
