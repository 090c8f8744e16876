"""One line of progress for a training's train.log, for scripts/device_lease.sh's polls: the last
validated iteration, ms per iteration between the first and last validation, and the time left to the
run's train.max_iterations (read from the config.yaml beside the log)."""
import datetime
import re
import sys
from pathlib import Path

import yaml

VALIDATION = re.compile(r"iteration (\d+): net1 val (.*)")
START = re.compile(r"trainer: (starting|resuming at iteration \d+) ")


def stamp(line: str) -> datetime.datetime:
    return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


def max_iterations(run_dir: Path) -> int:
    iterations = (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("train", {}).get("max_iterations")
    if not isinstance(iterations, int):
        raise SystemExit(f"{run_dir / 'config.yaml'}: no train.max_iterations")
    return iterations


def this_segment(lines: list) -> list:
    """The lines since the training last started (a resumed run's log holds earlier segments, whose pause
    between leases is no part of the rate)."""
    starts = [i for i, line in enumerate(lines) if START.search(line)]
    return lines[starts[-1]:] if starts else lines


def progress(log: Path) -> str:
    lines = [line for line in this_segment(log.read_text().splitlines()) if VALIDATION.search(line)]
    name = log.parent.name
    if len(lines) < 2:
        return f"{name}: {len(lines)} validations"
    first, last = (int(VALIDATION.search(line).group(1)) for line in (lines[0], lines[-1]))
    ms = (stamp(lines[-1]) - stamp(lines[0])).total_seconds() * 1000 / max(last - first, 1)
    left = max(max_iterations(log.parent) - last, 0) * ms / 1000
    return f"{name}: iteration {last}, {ms:.1f} ms/it, ~{left:.0f} s left; {VALIDATION.search(lines[-1]).group(2)}"


if __name__ == "__main__":
    print(progress(Path(sys.argv[1])))
