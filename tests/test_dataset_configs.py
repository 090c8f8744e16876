"""The Synapse and PROMISE12 paper rows run with one command on data in their layouts (small
synthetic stand-ins here: the real sets are not on this machine)."""
import json
from pathlib import Path

import h5py
from click.testing import CliRunner

from ssl_mamba.cli import main

from conftest import write_synapse_folder

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.networks=[test_unet]", "model.scan_backend=torch", "data.patch_size=[32, 32]", "data.num_workers=0",
        "train.max_iterations=2", "train.val_every=2", "train.checkpoint_every=2", "train.device=cpu",
        "train.log_images_every=0", "method.batch_size=4"]


def test_synapse_row_trains_and_evaluates_its_eight_organs(tmp_path):
    root = write_synapse_folder(tmp_path / "Synapse")
    run = tmp_path / "run"
    args = ["train", "-c", str(REPO / "configs/synapse/fully_unet.yaml"), "--run-dir", str(run), "--no-progress",
            "--evaluate", "--set", f"data.root={root}"]
    for override in TINY:
        args += ["--set", override]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "metrics" / "test" / "summary.json").read_text())
    assert sorted(summary["per_class"], key=int) == [str(c) for c in range(1, 9)]
    assert summary["num_cases"] == 1
    config = (run / "config.yaml").read_text()
    assert "dataset: synapse" in config and "num_classes: 9" in config


def prostate_folder(root: Path) -> Path:
    """The SSL4MIS layout with 2 classes: the cardiac phantom with every structure as 'prostate'."""
    from ssl_mamba.data.phantom import generate_phantom

    generate_phantom(root, n_train_patients=10, n_val_patients=1, n_test_patients=1, slices=(2, 3), size=(40, 48))
    for path in (root / "data").rglob("*.h5"):
        with h5py.File(path, "r+") as fh:
            label = fh["label"][...]
            del fh["label"]
            fh["label"] = (label > 0).astype(label.dtype)
    return root


def test_promise12_row_takes_its_labeled_cases_and_two_classes(tmp_path):
    root = prostate_folder(tmp_path / "PROMISE12")
    run = tmp_path / "run"
    args = ["train", "-c", str(REPO / "configs/promise12/semi_mamba_unet_8cases.yaml"), "--run-dir", str(run),
            "--no-progress", "--evaluate", "--set", f"data.root={root}", "--set", "model.networks=[test_unet, test_unet]",
            "--set", "method.labeled_batch_size=2"]
    for override in TINY:
        if not override.startswith("model.networks"):
            args += ["--set", override]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    split = json.loads((run / "split.json").read_text())
    assert len(split["labeled_cases"]) == 8 and len(split["unlabeled_cases"]) == 2
    summary = json.loads((run / "metrics" / "test" / "summary.json").read_text())
    assert list(summary["per_class"]) == ["1"]
