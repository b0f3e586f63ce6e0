"""The images of the components and their decorators.

Images are chosen when the pipeline is compiled: `DAKD_IMAGE` (GPU stages, the CUDA image) and
`DAKD_CPU_IMAGE` (default: `DAKD_IMAGE` + `-cpu`). The defaults are the release tags built by
`docker/build.py --version-tag`; the committed YAML is compiled with the defaults.
`dakd compile --images docker/images.lock.json` sets both to pushed digests
(dakd_core.orchestration.images).
Task logic lives in dakd_core.orchestration.tasks (KFP's executor imports kfp in runtime mode,
where `dsl.component` does not exist, so the wrappers' bodies must import only dakd_core).
"""

import functools

from kfp import dsl

from dakd_core.orchestration.images import DEFAULT_IMAGE, component_images

__all__ = ["DEFAULT_IMAGE", "IMAGE", "CPU_IMAGE", "gpu_component", "cpu_component"]

IMAGE, CPU_IMAGE = component_images()

# The images carry kfp (requirements/kfp.txt): no per-task pip install (~0.5 s per task).
gpu_component = functools.partial(dsl.component, base_image=IMAGE, install_kfp_package=False)
cpu_component = functools.partial(dsl.component, base_image=CPU_IMAGE, install_kfp_package=False)
