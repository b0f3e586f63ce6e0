"""benchmarks/gpu_kit.py without the network: which wheels travel to a lent GPU machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from dakd_core.bench.perf import load_benchmark


@pytest.fixture(scope="module")
def kit():
    return load_benchmark("gpu_kit")


def test_distribution_names_are_normalised_from_wheel_files(kit):
    assert kit.distribution("mlflow_skinny-3.17.2-py3-none-any.whl") == "mlflow-skinny"
    assert kit.distribution("PyYAML-6.0.4-cp312-cp312-manylinux2014_x86_64.whl") == "pyyaml"
    assert kit.distribution("typing_extensions-4.15.0-py3-none-any.whl") == "typing-extensions"


def test_the_kit_leaves_out_what_the_machine_has_and_the_typing_backport(kit):
    wheels = [Path(n) for n in ("pydantic_core-2.50.5-cp312-cp312-manylinux2014_x86_64.whl",
                                "numpy-2.5.5-cp312-cp312-manylinux_2_28_x86_64.whl",
                                "typing-3.7.4.1-py3-none-any.whl", "typing_inspection-0.4.5-py3-none-any.whl",
                                "PyYAML-6.0.4-cp312-cp312-manylinux2014_x86_64.whl", "mlflow-3.17.2-py3-none-any.whl",
                                "typing_extensions-4.16.0-py3-none-any.whl")]
    carry, left = kit.select(wheels)
    # typing-extensions travels though the machine has one: pydantic needs >= 4.16, the machine's is unknown
    assert [w.name.split("-")[0] for w in carry] == ["pydantic_core", "typing_inspection", "mlflow", "typing_extensions"]
    assert [w.name.split("-")[0] for w in left] == ["numpy", "typing", "PyYAML"]


def test_the_kit_installs_the_images_pins_and_leaves_mlflow_out(kit, tmp_path):
    runtime = tmp_path / "runtime.txt"
    runtime.write_text("# pins\npydantic>=2\nmlflow==3.17.2  # tracking\ncityscapesscripts==2.3.0\ntorch==2.13.0\n")
    # the GPU suite runs its stages with log_mlflow off: the lent machine needs no MLflow
    assert kit.pins(runtime=runtime) == ["pydantic>=2", "cityscapesscripts==2.3.0"]
    runtime.write_text("pydantic>=2\n")
    with pytest.raises(SystemExit, match="pins no cityscapesscripts"):
        kit.pins(runtime=runtime)
