"""The device-lease plans (scripts/lease_plans/) and the driver's progress line.

A plan's mistake (a renamed config, a misspelt --set key, a cache path without compile) would only show
on the GPU machine, minutes into a lease that cannot be repeated in the same session; here each plan is
expanded by bash exactly as `scripts/device_lease.sh launch` sources it, and every row it would start is
loaded with its overrides."""
import shlex
import subprocess
from pathlib import Path

import pytest

from ssl_mamba.config import load_config

REPO = Path(__file__).resolve().parents[1]
PLANS = sorted((REPO / "scripts" / "lease_plans").glob("*.sh"))
DRIVER = REPO / "scripts" / "device_lease.sh"
RUN = "python3 scripts/reproduce.py run"


def lanes_of(plan: Path) -> list:
    """(name, gpus, command) of each lane: the driver's own `launch` sources the plan (its set -u, $RUN,
    $COMMON and $CACHE), with a recording `lane` (joining its command words as the real one does) and
    without the staging, the wait and the poll."""
    script = (f'source {shlex.quote(str(DRIVER))}; stage_checkout() {{ :; }}; sleep() {{ :; }}; poll() {{ :; }}; '
              'elapsed() { echo 0; }; lane() { local n=$1 g=$2; shift 2; printf "LANE\\t%s\\t%s\\t%s\\n" "$n" "$g" "$*"; }; '
              f'COMMIT=abc PLAN={shlex.quote(str(plan))} launch')
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    return [line.split("\t")[1:] for line in out.splitlines() if line.startswith("LANE\t")]


def reproduce_rows(command: str) -> list:
    """(config, overrides, options) of each `reproduce.py run` in a lane's shell command."""
    rows = []
    for part in command.split(";"):
        words = shlex.split(part)
        if " ".join(words[:3]) != RUN:
            continue
        args = words[3:]
        configs = [a for a in args if a.endswith(".yaml")]
        overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
        rows += [(config, overrides, args) for config in configs]
    return rows


def load_row(config: str, overrides: list):
    """A row's config with its lane's overrides, but for data.root (the pack exists only on the device)."""
    return load_config(REPO / config, [o for o in overrides if not o.startswith("data.root=")])


@pytest.mark.parametrize("plan", PLANS, ids=[p.stem for p in PLANS])
def test_every_row_of_a_plan_loads_with_its_overrides(plan):
    lanes = lanes_of(plan)
    assert lanes, f"{plan} starts no lane"
    rows = [(gpus, row) for _, gpus, command in lanes for row in reproduce_rows(command)]
    assert rows, f"{plan} runs no reproduce.py row"
    for gpus, (config, overrides, args) in rows:
        assert (REPO / config).is_file(), f"{plan.name}: {config} does not exist"
        cfg = load_row(config, overrides)
        assert cfg.train.max_iterations == 30000, f"{plan.name}: {config} is not a full-protocol row"
        if "--gpus" in args:  # reproduce.py hands out the lane's GPUs (GpuSlots), no more than it has
            assert int(args[args.index("--gpus") + 1]) <= len(gpus.split(",")), f"{plan.name}: {config}"
        if "--gpus-per-row" in args:  # a data-parallel row needs as many GPUs in its lane
            assert len(gpus.split(",")) == int(args[args.index("--gpus-per-row") + 1]), f"{plan.name}: {config}"


def test_a_plan_with_a_misspelt_key_is_caught(tmp_path):
    """The check above can fail: a lane with an unknown key does not load."""
    plan = tmp_path / "bad.sh"
    plan.write_text('lane x 0 "$RUN configs/acdc/mt_unet_3cases.yaml --set train.compile_cahce=1 $COMMON"\n')
    (config, overrides, _), = reproduce_rows(lanes_of(plan)[0][2])
    with pytest.raises(Exception, match="compile_cahce"):
        load_row(config, overrides)


def test_a_plan_with_an_unset_variable_is_caught(tmp_path):
    """launch sources a plan under the driver's set -u: a misspelt variable stops it there, so here too."""
    plan = tmp_path / "bad.sh"
    plan.write_text('lane x 0 "$RUN configs/acdc/mt_unet_3cases.yaml $COMMMON"\n')
    with pytest.raises(subprocess.CalledProcessError):
        lanes_of(plan)


def test_progress_line_reads_rate_and_time_left(tmp_path):
    from scripts.lease_progress import progress

    run = tmp_path / "acdc_row"
    run.mkdir()
    (run / "config.yaml").write_text("train:\n  max_iterations: 1000\n")
    (run / "train.log").write_text(
        "2026-11-28 10:00:00,000 INFO ssl_mamba.engine.trainer: starting acdc_row: method x\n"
        "2026-11-28 10:00:10,000 INFO x: iteration 200: net1 val mean Dice 0.5 (best 0.5 at 200; 0.1 s)\n"
        "2026-11-28 10:00:10,500 INFO x: iteration 200: net2 val mean Dice 0.4 (best 0.4 at 200; 0.1 s)\n"
        "2026-11-28 10:00:18,000 INFO x: iteration 400: net1 val mean Dice 0.6 (best 0.6 at 400; 0.1 s)\n")
    line = progress(run / "train.log")
    # 200 iterations in 8 s: 40 ms each, 600 left: 24 s
    assert line.startswith("acdc_row: iteration 400, 40.0 ms/it, ~24 s left; mean Dice 0.6"), line
    with (run / "train.log").open("a") as log:  # resumed a day later: the pause is no part of the rate
        log.write("2026-11-29 10:00:00,000 INFO ssl_mamba.engine.trainer: resuming at iteration 400 acdc_row: method x\n"
                  "2026-11-29 10:00:30,000 INFO x: iteration 600: net1 val mean Dice 0.7 (best 0.7 at 600; 0.1 s)\n"
                  "2026-11-29 10:00:36,000 INFO x: iteration 800: net1 val mean Dice 0.7 (best 0.7 at 800; 0.1 s)\n")
    assert progress(run / "train.log").startswith("acdc_row: iteration 800, 30.0 ms/it, ~6 s left"), line
