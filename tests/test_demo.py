"""The embedded default job end to end, shortened: phantom -> cross teaching -> evaluate -> table."""
import json

from click.testing import CliRunner

from ssl_mamba.cli import main
from ssl_mamba.demo import DEMO_SETTINGS


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--no-progress", "--set", "train.max_iterations=4",
            "--set", "train.val_every=2", "--set", "method.batch_size=4", "--set", "method.labeled_batch_size=2"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run = out / "demo"
    for name in ("config.yaml", "split.json", "train.log", "metrics.jsonl", "summary.json", "last.pt",
                 "best_net1.pth", "best_net2.pth", "metrics/test/summary.json", "metrics/test/per_case.csv",
                 "figures/training_curves.png", "figures/test/net1/overlays.png"):
        assert (run / name).is_file(), name
    assert list(run.glob("events.out.tfevents.*")), "no TensorBoard events"
    assert json.loads((run / "summary.json").read_text())["iterations"] == 4
    assert "| cross_teaching (unet + small_mamba_unet), 2 labeled cases | ours |" in result.output
    assert result.output.count("lowest mean Dice: patient") == 2  # each network names its weakest volumes
    # The phantom is generated once and reused; a second demo gets a fresh run directory.
    again = CliRunner().invoke(main, args, catch_exceptions=False)
    assert again.exit_code == 0 and "generated phantom" not in again.output
    assert len([p for p in out.iterdir() if p.name.startswith("demo")]) == 2


def test_demo_defaults_are_the_documented_experiment():
    assert DEMO_SETTINGS["method"]["name"] == "cross_teaching"
    assert DEMO_SETTINGS["model"]["networks"] == ["unet", "small_mamba_unet"]
    assert DEMO_SETTINGS["data"]["labeled_cases"] == 2
