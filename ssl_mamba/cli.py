"""`ssl-mamba`: the command-line tool (the composition root: the only library module that imports `methods`).

Errors from bad input (UserError) print one line and exit with code 2; `--debug` shows the traceback.
Heavy imports happen inside the commands so `--help` stays instant.
"""
import json
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import click

from . import __version__
from .errors import UserError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _Group(click.Group):
    """Turns UserError into one clear line and exit code 2 (tracebacks only with --debug)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            if ctx.find_root().params.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="ssl-mamba")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option("-v", "--verbose", is_flag=True, help="More log output.")
def main(debug: bool, verbose: bool) -> None:
    """Label-scarce medical image segmentation with Mamba-UNet and interchangeable SSL methods."""
    import logging

    from .utils.log import setup_console

    setup_console(logging.DEBUG if verbose else logging.INFO)


# ---------------------------------------------------------------------------------------------- info


def _registries() -> dict:
    import methods  # noqa: F401  (registers every method)

    from .engine.method import METHODS
    from .models import list_models
    from .ops import available_backends

    return {"models": list_models(), "methods": METHODS.names(), "scan_backends": available_backends()}


def _device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return "cpu"


@main.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(as_json: bool) -> None:
    """Version, torch, device, registered models and methods, available scan backends."""
    import torch

    report = {"version": __version__, "torch": torch.__version__, "device": _device_name(), **_registries()}
    if as_json:
        click.echo(json.dumps(report))
        return
    for key, value in report.items():
        click.echo(f"{key:14s} {', '.join(value) if isinstance(value, list) else value}")


# ---------------------------------------------------------------------------------------------- train


def _load(config: Optional[str], overrides: List[str]):
    from .config import load_config

    return load_config(config, list(overrides))


@main.command(context_settings=CONTEXT)
@click.option("-c", "--config", type=str, help="Experiment YAML (e.g. configs/acdc/semi_mamba_unet_3cases.yaml).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a config value (repeatable).")
@click.option("--resume", "resume_dir", type=str, help="Continue the run in this directory exactly where it stopped.")
@click.option("--run-dir", type=str, help="Write the run here instead of <output_dir>/<name>.")
@click.option("--evaluate/--no-evaluate", "then_evaluate", default=False, help="Evaluate on the test split afterwards.")
@click.option("--no-progress", is_flag=True, help="No progress bar (logs only).")
def train(config, overrides, resume_dir, run_dir, then_evaluate, no_progress) -> None:
    """Train one experiment; writes config, split, logs, TensorBoard events and checkpoints to the run dir."""
    from .runs import changes_evaluation_only, new_run_dir, resume_config

    if resume_dir:
        cfg, directory = resume_config(Path(resume_dir), list(overrides)), Path(resume_dir)
    else:
        if not config and not overrides:
            raise UserError("give --config FILE (see configs/), --set overrides of the defaults, or --resume RUN_DIR")
        cfg = _load(config, overrides)
        directory = Path(run_dir) if run_dir else new_run_dir(cfg)
    summary = _fit(cfg, directory, resume=bool(resume_dir), progress=not no_progress)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun only rank 0 reports and evaluates
    click.echo(f"run directory: {directory}")
    click.echo(json.dumps({k: v for k, v in summary.items() if not isinstance(v, (dict, list))}))
    if then_evaluate:
        # a resumed run's config.yaml is the one it began with: its eval.* / data.root overrides (say, the
        # data moved) apply to the test evaluation too (a new run's are in its config.yaml already)
        _evaluate_run(directory, "test", network=None, overrides=[o for o in overrides if changes_evaluation_only(o)])


def _fit(cfg, run_dir: Path, resume: bool, progress: bool) -> dict:
    import methods  # noqa: F401

    from .engine.trainer import Trainer

    return Trainer(cfg, run_dir, resume=resume, progress=progress).fit()


# ---------------------------------------------------------------------------------------------- evaluate


@main.command(context_settings=CONTEXT)
@click.option("--run", "run_dir", type=str, help="A run directory written by `ssl-mamba train`.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "val"]))
@click.option("--network", default=None, help="Which trained network (net1, net2...); default: each one.  The "
              "run's own report (SPLIT/summary.json) is written only for its reported network (best validation "
              "Dice).")
@click.option("--checkpoint", type=str, help="Evaluate this checkpoint instead of a run (needs --config).")
@click.option("-c", "--config", type=str, help="Experiment YAML describing the checkpoint's network and data.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a config value (with --run: eval.* and data.root only, e.g. "
              "eval.postprocess=largest_component; give --out to keep the run's own report and figures).")
@click.option("--out", type=str, help="Output folder (default: RUN/metrics/SPLIT).")
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs; results are printed as usual).")
def evaluate(run_dir, split, network, checkpoint, config, overrides, out, no_progress) -> None:
    """Score the best checkpoint(s) on the test (or val) volumes: CSV per case and class, summary JSON, paper row."""
    if checkpoint:
        from .runs import evaluate_checkpoint

        cfg = _load(config, overrides)
        out_dir = Path(out) if out else Path(checkpoint).parent / "metrics" / split
        row = evaluate_checkpoint(cfg, Path(checkpoint), split, out_dir, progress=not no_progress)
        click.echo(row)
        return
    if not run_dir:
        raise UserError("give --run RUN_DIR, or --checkpoint FILE with --config FILE")
    _evaluate_run(Path(run_dir), split, network, Path(out) if out else None, progress=not no_progress,
                  overrides=overrides)


def _evaluate_run(run_dir: Path, split: str, network: Optional[str], out: Optional[Path] = None,
                  progress: bool = True, overrides: Sequence[str] = ()) -> None:
    from .runs import evaluate_run

    for line in evaluate_run(run_dir, split, network, out, progress=progress, overrides=overrides):
        click.echo(line)


# ---------------------------------------------------------------------------------------------- table


@main.command(context_settings=CONTEXT)
@click.argument("run_dirs", nargs=-1, required=True)
@click.option("--format", "fmt", default="markdown", show_default=True, type=click.Choice(["markdown", "latex", "csv"]))
@click.option("--compare", type=click.Choice(["paper"]), default=None, help="Put the papers' numbers beside ours.")
@click.option("--split", default="test", show_default=True)
@click.option("--out", type=str, help="Also write the table to this file.")
@click.option("--figure", type=str, help="Also draw ours against the papers' Dice, one line per row, into this PNG.")
def table(run_dirs, fmt, compare, split, out, figure) -> None:
    """Assemble evaluated runs into a paper-style table (mean ± std over seeds of one configuration)."""
    from .metrics.figures import paper_comparison_of_groups
    from .metrics.table import collect_runs, format_table
    from .utils.io import atomic_write_text

    missing = [d for d in run_dirs if not Path(d).is_dir()]
    if missing:
        raise UserError(f"run directory not found: {missing[0]}")
    groups = collect_runs([Path(d) for d in run_dirs], split)  # read once, for the table and the figure
    text = format_table(groups, fmt=fmt, compare=compare)
    click.echo(text)
    if out:
        atomic_write_text(Path(out), text + "\n")
    if figure:
        drawn = paper_comparison_of_groups(groups, Path(figure))
        click.echo(f"figure: {drawn}" if drawn else "no figure: no run has a published Dice to compare with")


@main.command(context_settings=CONTEXT)
@click.argument("run_dirs", nargs=-1, required=True)
@click.option("--key", default="val/net1/dice", show_default=True, help="The logged scalar to draw.")
@click.option("--label", "labels", multiple=True, help="Legend label per run, in order (default: folder names).")
@click.option("--from", "start", default=0, show_default=True, help="Leave out the iterations before this one.")
@click.option("-o", "--out", required=True, help="PNG file to write.")
def curves(run_dirs, key, labels, start, out) -> None:
    """Draw one logged scalar of several runs on one axis (compare methods, seeds or settings)."""
    from .metrics.figures import compare_curves

    names = _run_names(run_dirs, labels)
    click.echo(compare_curves(dict(zip(names, run_dirs)), Path(out), key=key, start=start))


def _run_names(run_dirs, labels) -> List[str]:
    """One distinct name per run directory (its --label, else its folder name); every directory exists."""
    missing = [d for d in run_dirs if not Path(d).is_dir()]
    if missing:
        raise UserError(f"run directory not found: {missing[0]}")
    if labels and len(labels) != len(run_dirs):
        raise UserError(f"--label given {len(labels)} times for {len(run_dirs)} runs; give one per run or none")
    names = list(labels) or [Path(d).name for d in run_dirs]
    if len(set(names)) != len(names):
        raise UserError(f"two runs share the label {names}; name them with --label")
    return names


@main.command(context_settings=CONTEXT)
@click.argument("run_a")
@click.argument("run_b")
@click.option("--split", default="test", show_default=True, help="The evaluated split to compare.")
@click.option("--label", "labels", multiple=True, help="Names of the two runs, in order (default: folder names).")
@click.option("--missed", default=0.2, show_default=True, type=click.FloatRange(0, 1),
              help="Dice below which a volume counts as missed.")
@click.option("--top", default=5, show_default=True, type=click.IntRange(min=1),
              help="How many gained and lost volumes to list.")
@click.option("-o", "--out", help="Also draw the per-volume scatter into this PNG.")
def cases(run_a, run_b, split, labels, missed, top, out) -> None:
    """Compare two evaluated runs volume by volume: which volumes a change found, lost or left alone."""
    from .metrics.compare import case_changes, read_case_dice

    names = _run_names((run_a, run_b), labels)
    before, after = read_case_dice(run_a, split), read_case_dice(run_b, split)
    for line in case_changes(before, after, missed=missed, top=top, names=names):
        click.echo(line)
    if out:
        from .metrics.figures import case_scatter

        click.echo(f"figure: {case_scatter(before, after, Path(out), names=names, annotate=top)}")


# ---------------------------------------------------------------------------------------------- demo


@main.command(context_settings=CONTEXT)
@click.option("--out", default="runs/demo", show_default=True, help="Folder for the phantom data and the run.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a demo config value.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def demo(out, overrides, no_progress) -> None:
    """Generate a cardiac phantom, train a label-scarce cross-teaching run, evaluate it, print the table."""
    from .demo import run_demo

    for line in run_demo(Path(out), list(overrides), progress=not no_progress):
        click.echo(line)


# ---------------------------------------------------------------------------------------------- data


@main.group(cls=_Group, context_settings=CONTEXT)
def data() -> None:
    """Dataset tools: info/check, pack, phantom."""


@data.command("info", context_settings=CONTEXT)
@click.argument("root")
@click.option("--labeled-cases", type=int, default=None, help="Also report the split for N labeled cases.")
@click.option("--num-classes", type=int, default=None, help="Expected number of classes (for --check).")
@click.option("--check", is_flag=True, help="Open and validate every file; exit 2 on any problem.")
@click.option("--intensity", is_flag=True,
              help="With --labeled-cases: list the val/test volumes clearly darker than every labeled case.")
@click.option("--figure", help="With --intensity: also draw the cases' and volumes' intensities into this PNG.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def data_info(root, labeled_cases, num_classes, check, intensity, figure, as_json) -> None:
    """Counts of slices, cases and volumes per split, labeled/unlabeled slices, label values, image sizes."""
    from .data import check_dataset, dataset_info, intensity_coverage

    if intensity and labeled_cases is None:
        raise UserError("--intensity compares with the labeled cases: give --labeled-cases N")
    if figure and not intensity:
        raise UserError("--figure draws the --intensity report: give --intensity too")
    report = dataset_info(root, labeled_cases=labeled_cases)
    problems = check_dataset(root, num_classes or report.get("num_classes") or 4) if check else []
    if check:
        report["problems"] = problems
    if intensity:
        report["intensity"] = intensity_coverage(root, labeled_cases)
    if figure:
        from .metrics.figures import intensity_strip

        title = f"{Path(root).name}: {labeled_cases} labeled cases against the evaluation volumes"
        drawn = intensity_strip(report["intensity"], Path(figure), title=title)
    if as_json:
        click.echo(json.dumps(report, default=str))
    else:
        for key, value in report.items():
            if key != "intensity":
                click.echo(f"{key:22s} {value}")
        if intensity:
            for line in _coverage_lines(report["intensity"]):
                click.echo(line)
        if figure:
            click.echo(f"figure: {drawn}")
    if problems:
        raise UserError(f"{len(problems)} problem(s) in {root}; first: {problems[0]}")


def _coverage_lines(coverage: dict) -> List[str]:
    lines = [f"labeled cases' 99.5th intensity percentile: "
             + ", ".join(f"{case} {value:.2f}" for case, value in coverage["labeled"].items())]
    for split, darker in coverage["darker"].items():
        listed = ", ".join(f"{name} {value:.3f}" for name, value in darker)
        missing = coverage["not_stored"][split]
        lines.append(f"{split}: {len(darker)} of {coverage['checked'][split]} volumes clearly darker than every "
                     f"labeled case (< {coverage['threshold']:.3f})" + (f": {listed}" if darker else "")
                     + (f" ({missing} listed but not stored, not checked)" if missing else ""))
    if any(coverage["darker"].values()):
        lines.append("a network trained on these labeled cases may miss such volumes; "
                     "data.normalize: percentile rescales every slice to its own range")
    scale = coverage["suggested_intensity_scale"]
    if scale:
        lines.append(f"5% of the unlabeled training cases are darker than {coverage['unlabeled_quantile']:.3f}; "
                     f"data.intensity_scale: [{scale[0]:.2f}, {scale[1]:.1f}] gives every labeled case training "
                     "copies at least that dark (chosen from the training images only)")
    return lines


@data.command("pack", context_settings=CONTEXT)
@click.argument("root")
@click.argument("out")
@click.option("--dtype", default="uint16", show_default=True, type=click.Choice(["uint16", "uint8"]),
              help="Image quantisation (uint8 is lossy and is recorded in every result that uses it).")
@click.option("--parts", is_flag=True, help="Write OUT as a folder of two parts (slices, volumes), each smaller.")
def data_pack(root, out, dtype, parts) -> None:
    """Write a dataset into one compact file (or a folder of parts) that loads straight into memory."""
    from .data import pack_dataset

    report = pack_dataset(root, out, dtype=dtype, split_parts=parts)
    click.echo(json.dumps(report, default=str) if isinstance(report, dict) else str(report))


@data.command("phantom", context_settings=CONTEXT)
@click.argument("out")
@click.option("--train-patients", default=12, show_default=True)
@click.option("--val-patients", default=2, show_default=True)
@click.option("--test-patients", default=4, show_default=True)
@click.option("--seed", default=0, show_default=True)
def data_phantom(out, train_patients, val_patients, test_patients, seed) -> None:
    """Generate the synthetic cardiac phantom dataset (ACDC layout) into OUT."""
    from .data import generate_phantom

    generate_phantom(Path(out), n_train_patients=train_patients, n_val_patients=val_patients,
                     n_test_patients=test_patients, seed=seed)
    click.echo(f"phantom dataset written to {out}")


def run() -> None:  # pragma: no cover - `python -m ssl_mamba.cli`
    main(prog_name="ssl-mamba")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
