"""benchmarks/profile_trainer.py: the trainer profile names each phase it was built to separate, and
leaves the trainer's functions as they were (it patches them only for its run)."""
from pathlib import Path

import pytest
from conftest import load_script

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def profile_trainer():
    return load_script("benchmarks/profile_trainer.py")


def test_profile_separates_the_trainer_phases(profile_trainer, tmp_path):
    from ssl_mamba.data import generate_phantom
    from ssl_mamba.engine import trainer as trainer_module

    phantom_root = tmp_path / "phantom"
    generate_phantom(phantom_root, n_train_patients=3, n_val_patients=1, n_test_patients=0, slices=(4, 5), size=(32, 32))

    before = {name: getattr(obj, attr) for name, (obj, attr) in profile_trainer.PHASES.items()}
    summary = profile_trainer.run(
        str(REPO / "configs" / "acdc" / "mt_unet_7cases.yaml"),
        [f"data.root={phantom_root}", "data.labeled_cases=2", "data.patch_size=[16,16]", "method.batch_size=4",
         "method.labeled_batch_size=2", "data.num_workers=0", "train.device=cpu"],
        iterations=6, active=3, validate=False, run_dir=tmp_path / "run")
    phases = summary["host_phase_ms"]
    for name in ("trainer/data", "trainer/iteration", "method/training_step", "method/after_step",
                 "trainer/log_and_validate"):
        assert phases[name] > 0, name
    # the method's step runs inside the iteration, so its range cannot be longer
    assert phases["method/training_step"] <= phases["trainer/iteration"]
    assert summary["wall_ms"] >= phases["trainer/iteration"]
    assert summary["gpu_kernel_ms"] == 0.0  # no CUDA activity on the CPU
    assert {name: getattr(obj, attr) for name, (obj, attr) in profile_trainer.PHASES.items()} == before
    assert trainer_module.run_iteration is before["trainer/iteration"]
