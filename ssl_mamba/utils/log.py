"""Library logging: everything goes through the `ssl_mamba` logger; the CLI decides where it lands."""
import logging
from pathlib import Path
from typing import Optional


def get_logger(name: str = "ssl_mamba") -> logging.Logger:
    return logging.getLogger(name if name.startswith("ssl_mamba") else f"ssl_mamba.{name}")


def add_file_handler(path: Path, level: int = logging.INFO) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(level)
    get_logger().addHandler(handler)
    return handler


class _TqdmAwareHandler(logging.StreamHandler):
    """Writes through tqdm so a log line never tears an active progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def setup_console(level: int = logging.INFO, stream: Optional[object] = None) -> None:
    root = get_logger()
    root.setLevel(level)
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in root.handlers):
        handler = _TqdmAwareHandler(stream)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
