"""benchmarks/accuracy_gpu.py (the issue's accuracy check): its paths and, on the CPU, one whole
drive (a worker process per run, the validation curves collected into the JSON and the table)."""
import json
import subprocess
import sys
from pathlib import Path

from conftest import load_script

REPO = Path(__file__).resolve().parents[1]


def test_the_fast_path_is_the_one_the_speed_claims_use():
    accuracy = load_script("benchmarks/accuracy_gpu.py")
    fast = accuracy.path_settings("triton_fast")
    assert fast == {"model.scan_backend": "triton", "train.amp": "bf16", "train.compile": "true",
                    "train.cuda_graphs": "true"}
    assert accuracy.path_settings("mamba_ssm") == {"model.scan_backend": "mamba_ssm"}
    assert accuracy.path_settings("torch") == {"model.scan_backend": "torch"}


def test_a_cpu_drive_collects_each_runs_validation_curve(tmp_path):
    from ssl_mamba.data.phantom import generate_phantom

    data = tmp_path / "phantom"
    generate_phantom(data, n_train_patients=3, n_val_patients=1, n_test_patients=1, slices=(2, 3), size=(40, 48))
    cmd = [sys.executable, str(REPO / "benchmarks" / "accuracy_gpu.py"), "--data", str(data), "--out", str(tmp_path),
           "--runs", str(tmp_path / "runs"), "--iterations", "2", "--val-every", "2", "--seeds", "0", "1",
           "--backends", "torch", "--workers", "0", "--budget", "300", "--tag=-cpu"]
    for item in ("model.networks=[test_mamba_unet]", "train.device=cpu", "data.patch_size=[32, 32]",
                 "train.log_images_every=0", "data.dataset=phantom", "data.num_classes=4", "method.batch_size=4"):
        cmd += ["--set", item]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(next(tmp_path.glob("accuracy-*-cpu.json")).read_text())
    assert set(result["runs"]) == {"torch_seed0", "torch_seed1"}
    for name, run in result["runs"].items():
        assert run["returncode"] == 0, (name, (tmp_path / "runs" / f"{name}.log").read_text()[-2000:])
        assert list(run["val_dice"]) == ["2"] and run["best_val_dice"] is not None
    assert "torch_seed1" in done.stdout.splitlines()[-1]
