"""The command-line tool: help everywhere, `info --json`, and one clear line (exit 2) for bad input."""
import json
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from ssl_mamba.cli import main

COMMANDS = [[], ["info"], ["train"], ["evaluate"], ["table"], ["curves"], ["cases"], ["demo"], ["data"],
            ["data", "info"], ["data", "pack"], ["data", "phantom"]]


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_every_command_has_help(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_info_json_lists_registries():
    result = invoke("info", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    for key in ("version", "torch", "device", "models", "methods", "scan_backends"):
        assert key in report
    assert {"mamba_unet", "unet", "swin_unet"} <= set(report["models"])
    assert {"supervised", "mean_teacher", "uamt", "ict", "entropy_min", "adversarial", "co_training", "cps",
            "cross_teaching"} <= set(report["methods"])
    assert "torch" in report["scan_backends"]


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_config_file(tmp_path):
    assert_one_line_error(invoke("train", "--config", str(tmp_path / "nope.yaml")), "config file not found", "nope.yaml")


def test_unknown_key_in_config(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"train": {"iterations": 10}}))
    assert_one_line_error(invoke("train", "--config", str(path)), "exp.yaml", "train.iterations")


def test_unknown_override_key(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: x\n")
    assert_one_line_error(invoke("train", "-c", str(path), "--set", "model.backbone=unet"), "model.backbone")


def tiny_experiment(tmp_path, **changes):
    values = {"name": "t", "output_dir": str(tmp_path / "runs"),
              "data": {"dataset": "phantom", "root": str(tmp_path / "nowhere"), "patch_size": [32, 32]},
              "model": {"networks": ["test_unet"]}, "train": {"max_iterations": 2, "device": "cpu"}}
    for key, value in changes.items():
        section, name = key.split("__")
        values.setdefault(section, {})[name] = value
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_unknown_method_lists_known_ones(tmp_path):
    path = tiny_experiment(tmp_path, method__name="fixmatch")
    assert_one_line_error(invoke("train", "-c", str(path)), "unknown method 'fixmatch'", "cross_teaching", "supervised")


def test_unknown_model_lists_known_ones(tmp_path):
    path = tiny_experiment(tmp_path, model__networks=["resnet"])
    assert_one_line_error(invoke("train", "-c", str(path)), "unknown model 'resnet'", "mamba_unet")


def test_missing_dataset_path(tmp_path):
    path = tiny_experiment(tmp_path)
    assert_one_line_error(invoke("train", "-c", str(path)), "nowhere")


def test_data_info_on_missing_root(tmp_path):
    assert_one_line_error(invoke("data", "info", str(tmp_path / "missing")), "missing")


def test_evaluate_without_run_dir(tmp_path):
    assert_one_line_error(invoke("evaluate", "--run", str(tmp_path)), "not a run directory")


def test_debug_shows_traceback(tmp_path):
    """`--debug` re-raises instead of the one-line message (in a real process, so exit codes are real)."""
    cmd = [sys.executable, "-m", "ssl_mamba.cli", "--debug", "train", "-c", str(tmp_path / "nope.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
    proc = subprocess.run(cmd[:3] + cmd[4:], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "nope.yaml" in proc.stderr


def test_curves_draws_runs_and_rejects_unmatched_labels(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text(
            "\n".join(json.dumps({"step": s, "val/net1/dice": s / 10}) for s in (1, 2, 3)) + "\n")
    out = tmp_path / "cmp.png"
    result = invoke("curves", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(out))
    assert result.exit_code == 0 and out.stat().st_size > 0, result.output
    assert_one_line_error(invoke("curves", str(tmp_path / "a"), str(tmp_path / "b"), "--label", "only one",
                                 "-o", str(out)), "--label given 1 times for 2 runs")
    assert_one_line_error(invoke("curves", str(tmp_path / "a"), "--key", "val/net1/hd95", "-o", str(out)),
                          "no scalar 'val/net1/hd95'")
    assert_one_line_error(invoke("curves", str(tmp_path / "nope"), "-o", str(out)), "run directory not found")


def write_case_dice(run_dir, dice_by_case):
    """A run's metrics/test/per_case.csv with two classes per case, whose mean is the given Dice."""
    out = run_dir / "metrics" / "test"
    out.mkdir(parents=True)
    rows = ["case,class,dice"] + [f"{c},{k},{d + (0.05 if k == 1 else -0.05):.6f}" if d == d else f"{c},{k},nan"
                                  for c, d in dice_by_case.items() for k in (1, 2)]
    (out / "per_case.csv").write_text("\n".join(rows) + "\n")


def test_cases_lists_found_and_lost_volumes_and_draws_them(tmp_path):
    write_case_dice(tmp_path / "a", {"v1": 0.05, "v2": 0.80, "v3": 0.60, "v4": 0.10})
    write_case_dice(tmp_path / "b", {"v1": 0.75, "v2": 0.40, "v3": 0.62, "v4": 0.15})
    out = tmp_path / "cases.png"
    result = invoke("cases", str(tmp_path / "a"), str(tmp_path / "b"), "--top", "2", "-o", str(out))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "4 volumes; mean Dice a 0.3875, b 0.4800"
    assert lines[1] == "below 0.2 Dice: a 2, b 1"
    assert lines[2] == "gained most: v1 0.050 -> 0.750, v4 0.100 -> 0.150"  # largest gain first, --top 2
    assert lines[3] == "lost most: v2 0.800 -> 0.400"  # v3 gained: never listed as lost
    assert out.read_bytes()[:4] == b"\x89PNG"
    lines = invoke("cases", str(tmp_path / "a"), str(tmp_path / "b"), "--missed", "0.1", "--split", "test",
                   "--label", "first", "--label", "second").output.splitlines()
    assert lines[1] == "below 0.1 Dice: first 1, second 0"  # v4 at 0.10 is not below 0.1
    assert lines[2].startswith("gained most: v1 0.050 -> 0.750, v4 0.100 -> 0.150, v3 0.600 -> 0.620")


def test_cases_leaves_out_volumes_without_a_defined_dice(tmp_path):
    write_case_dice(tmp_path / "a", {"v1": 0.5, "v2": float("nan"), "v3": 0.7})
    write_case_dice(tmp_path / "b", {"v1": 0.4, "v2": 0.9, "v3": 0.7})
    lines = invoke("cases", str(tmp_path / "a"), str(tmp_path / "b")).output.splitlines()
    assert lines[0] == "2 volumes; mean Dice a 0.6000, b 0.5500"
    assert lines[2] == "left out (no defined Dice in one run): 1 volumes"
    assert lines[3] == "gained most: none" and lines[4] == "lost most: v1 0.500 -> 0.400"


def test_cases_refuses_runs_scored_on_different_volumes(tmp_path):
    write_case_dice(tmp_path / "a", {"v1": 0.5, "v2": 0.5})
    write_case_dice(tmp_path / "b", {"v1": 0.5, "v3": 0.5})
    assert_one_line_error(invoke("cases", str(tmp_path / "a"), str(tmp_path / "b")), "v2 is in one only")
    assert_one_line_error(invoke("cases", str(tmp_path / "a"), str(tmp_path / "nope")), "run directory not found")
    (tmp_path / "c").mkdir()
    assert_one_line_error(invoke("cases", str(tmp_path / "a"), str(tmp_path / "c")),
                          "per_case.csv not found: evaluate the run first")
    assert_one_line_error(invoke("cases", str(tmp_path / "a"), str(tmp_path / "b"), "--split", "val"),
                          "val/per_case.csv not found")
    csv_b = tmp_path / "b" / "metrics" / "test" / "per_case.csv"
    csv_b.write_text("case,class,dice\nv1,1,high\n")
    assert_one_line_error(invoke("cases", str(tmp_path / "a"), str(tmp_path / "b")),
                          "per_case.csv: case 'v1': dice 'high' is not a number")
    csv_b.write_text("case,class,dice\nv1,1\n")
    assert_one_line_error(invoke("cases", str(tmp_path / "a"), str(tmp_path / "b")), "dice None is not a number")
    csv_b.write_text("case,class,dice\n")
    assert_one_line_error(invoke("cases", str(tmp_path / "a"), str(tmp_path / "b")), "per_case.csv: no volumes in it")
    write_case_dice(tmp_path / "d", {"v1": float("nan"), "v2": float("nan")})
    assert_one_line_error(invoke("cases", str(tmp_path / "a"), str(tmp_path / "d")),
                          "no volume has a defined Dice in both runs")
    assert_one_line_error(invoke("cases", str(tmp_path / "a"), str(tmp_path / "a"), "--label", "x"),
                          "--label given 1 times")
    assert_one_line_error(invoke("cases", str(tmp_path / "a"), str(tmp_path / "d"), "--label", "x", "--label", "x"),
                          "two runs share the label")


def test_table_draws_the_paper_comparison_on_request(tmp_path, monkeypatch):
    """The table and its figure come from one read of each run directory."""
    from pathlib import Path

    from ssl_mamba.metrics import table

    reads = []
    read_run = table._read_run
    monkeypatch.setattr(table, "_read_run", lambda run_dir, split: reads.append(run_dir) or read_run(run_dir, split))
    committed = Path(__file__).resolve().parents[1] / "results" / "acdc_fully_unet"
    out = tmp_path / "gap.png"
    result = invoke("table", str(committed), "--compare", "paper", "--figure", str(out))
    assert result.exit_code == 0 and "| supervised (unet), all labeled | ours |" in result.output, result.output
    assert f"figure: {out}" in result.output and out.read_bytes()[:4] == b"\x89PNG"
    assert reads == [committed]


def test_case_scatter_labels_of_close_volumes_do_not_overlap():
    """The found volumes cluster (ACDC at 3 cases: five near x 0, y 0.8): their names are stacked at least
    a line apart, and a volume far from the others keeps its label beside its point."""
    from ssl_mamba.metrics.figures import spread_labels

    points = [(0.001, 0.822), (0.056, 0.863), (0.002, 0.782), (0.087, 0.842), (0.154, 0.839), (0.9, 0.2)]
    placed = spread_labels(points)
    cluster = sorted(y for _, y in placed[:5])
    assert all(b - a >= 0.035 - 1e-9 for a, b in zip(cluster, cluster[1:]))
    assert placed[1] == (0.056 + 0.02, 0.863) and placed[5] == (0.9 + 0.02, 0.2)
    assert all(y <= p[1] for (_, y), p in zip(placed, points))  # labels move down only
