"""Where a run's numbers go: TensorBoard events, `metrics.jsonl` and `train.log`.

`metrics.jsonl` holds one JSON object per logged step, e.g.
{"step": 200, "loss/seg": 0.41, "lr/seg": 0.0098, "val/net1/dice": 0.73}; the evaluator's figure
code reads it.  On resume, lines past the checkpoint's iteration (written by the killed run
after its last checkpoint) are dropped, and TensorBoard purges the same steps, so the logs
read as one uninterrupted run.
"""
import json
import logging
import math
from pathlib import Path
from typing import Dict, Mapping, Optional

import torch

from ..utils.io import atomic_write_text
from ..utils.log import add_file_handler, get_logger

METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"


class RunLogger:
    """Scalars and images to TensorBoard + metrics.jsonl; text to train.log through get_logger."""

    def __init__(self, run_dir: Path, resume_step: Optional[int] = None):
        from tensorboardX import SummaryWriter

        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / METRICS_FILE
        if resume_step is not None:
            truncate_metrics(self.metrics_path, resume_step)
        self._handler: Optional[logging.Handler] = add_file_handler(self.run_dir / LOG_FILE)
        get_logger().setLevel(min(get_logger().getEffectiveLevel(), logging.INFO))
        purge = resume_step + 1 if resume_step is not None else None
        self.writer = SummaryWriter(logdir=str(self.run_dir), purge_step=purge)
        # A fresh run starts an empty file (a crash before the first checkpoint leaves stale lines).
        self._metrics = open(self.metrics_path, "a" if resume_step is not None else "w")

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """One metrics.jsonl line and one TensorBoard scalar per entry (non-finite kept as null)."""
        row: Dict[str, object] = {"step": step}
        for key, value in values.items():
            value = float(value)
            self.writer.add_scalar(key, value, step)
            row[key] = value if math.isfinite(value) else None
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()

    def images(self, step: int, images: Mapping[str, torch.Tensor], max_images: int = 4) -> None:
        """(N, C, H, W) tensors in [0, 1]; the first `max_images` of each go to TensorBoard."""
        for tag, img in images.items():
            img = img[:max_images].detach().float().clamp(0, 1).cpu()
            self.writer.add_images(tag, img.numpy(), step, dataformats="NCHW")

    def flush(self) -> None:
        self.writer.flush()
        self._metrics.flush()

    def close(self) -> None:
        """Flush and detach everything; safe to call twice."""
        if self._handler is None:
            return
        self.writer.close()
        self._metrics.close()
        get_logger().removeHandler(self._handler)
        self._handler.close()
        self._handler = None


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only complete metrics.jsonl lines with step <= last_step (rewritten atomically)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # the killed run's half-written last line
            continue
        if isinstance(row, dict) and row.get("step", math.inf) <= last_step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def read_metrics(path: Path) -> list:
    """All rows of a metrics.jsonl file, as dicts, in file order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
