"""Every supervision strategy on tiny backbones, run through the trainer's step contract, and
every experiment YAML under configs/."""
import copy
import dataclasses
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from torch import nn

import methods  # noqa: F401  (registers every method)
import methods.adversarial as adversarial_module
from ssl_mamba.config import ExperimentConfig, load_config, save_config
from ssl_mamba.data.batch import Batch
from ssl_mamba.engine.method import METHODS, Method
from ssl_mamba.errors import ConfigError, UserError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
EXPERIMENTS = [p for p in CONFIGS if not {"base", "diagnostics"} & set(p.relative_to(REPO / "configs").parts)]
DIAGNOSTICS = sorted((REPO / "configs" / "diagnostics").glob("*.yaml"))  # runs beside the paper rows
SIZE = 32  # the tiny segmenters accept multiples of 32
DISC_SIZE = 64  # test_discriminator's pooling fits 64x64 inputs


class LocalSegmenter(nn.Module):
    """Fallback used only while `ssl_mamba.models` cannot build the tiny test networks."""

    def __init__(self, num_classes: int, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.Dropout2d(0.1),
            nn.Conv2d(width, num_classes, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class LocalDiscriminator(nn.Module):
    """Fallback discriminator with the FCDiscriminator interface: (softmax, image) -> (N, 2)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.seg = nn.Conv2d(num_classes, 8, 4, stride=2, padding=1)
        self.img = nn.Conv2d(1, 8, 4, stride=2, padding=1)
        self.head = nn.Sequential(nn.LeakyReLU(0.2), nn.Dropout2d(0.5), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))

    def forward(self, probs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.seg(probs) + self.img(image))


def make_net(name: str, num_classes: int = 4) -> nn.Module:
    """create_model(name) when the models package provides it, else a local stand-in."""
    try:
        from ssl_mamba.models import create_model

        return create_model(name, num_classes=num_classes)
    except (ImportError, UserError):
        if name == "test_discriminator":
            return LocalDiscriminator(num_classes)
        return LocalSegmenter(num_classes, width=4 if name == "test_unet" else 6)


@pytest.fixture(autouse=True)
def tiny_discriminator(monkeypatch):
    monkeypatch.setattr(adversarial_module, "build_discriminator", lambda name, k: make_net("test_discriminator", k))


def make_cfg(method: str, options: Dict = None, batch_size: int = 4, labeled: int = 2) -> ExperimentConfig:
    cfg = ExperimentConfig()
    cfg.method.name = method
    cfg.method.batch_size = batch_size
    cfg.method.labeled_batch_size = labeled
    cfg.method.options = dict(options or {})
    cfg.data.patch_size = [SIZE, SIZE]
    cfg.train.max_iterations = 100
    return cfg


def make_batch(size: int = 4, labeled: int = 2, num_classes: int = 4, spatial: int = SIZE) -> Batch:
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(size, 1, spatial, spatial, generator=gen)
    label = torch.randint(0, num_classes, (size, spatial, spatial), generator=gen)
    return Batch(image=image, label=label, n_labeled=labeled)


def build(method: str, nets: List[str], options: Dict = None, batch_size: int = 4, labeled: int = 2) -> Method:
    torch.manual_seed(0)
    cfg = make_cfg(method, options, batch_size, labeled)
    cls = METHODS.get(method)
    m = cls(cfg, [make_net(n) for n in nets])
    m.train()
    return m


def run_step(m: Method, batch: Batch, step: int = 0) -> Dict[str, torch.Tensor]:
    """The trainer's contract: per group in order, zero its grads, backward its loss, step it;
    returns the evaluated losses and keeps each group's gradients on `m._test_grads`."""
    out = m.training_step(batch, step)
    groups = m.optimizer_groups()
    assert [g.name for g in groups] == list(out.losses), "one loss per optimizer group, in order"
    for value in out.logs.values():  # floats, or detached 0-dim tensors read back after the backward
        if isinstance(value, torch.Tensor):
            assert value.dim() == 0 and not value.requires_grad
        assert torch.isfinite(torch.as_tensor(value))
    losses, grads = {}, {}
    for group in groups:
        opt = torch.optim.SGD(group.params, lr=0.1)
        opt.zero_grad(set_to_none=True)
        loss = out.losses[group.name]
        loss = loss() if callable(loss) else loss
        assert loss.dim() == 0 and torch.isfinite(loss), f"{group.name} loss {loss}"
        loss.backward()
        grads[group.name] = [p.grad for p in group.params]
        opt.step()
        losses[group.name] = loss.detach()
    m._test_grads = grads
    m.after_step(step)
    return losses


CASES = [
    ("supervised", ["test_unet"]),
    ("supervised", ["test_mamba_unet"]),
    ("mean_teacher", ["test_unet"]),
    ("uamt", ["test_unet"]),
    ("ict", ["test_unet"]),
    ("entropy_min", ["test_unet"]),
    ("adversarial", ["test_unet"]),
    ("co_training", ["test_unet"]),
    ("cps", ["test_unet", "test_mamba_unet"]),
    ("cross_teaching", ["test_unet", "test_mamba_unet"]),
]


@pytest.mark.parametrize("method, nets", CASES, ids=[f"{m}-{'+'.join(n)}" for m, n in CASES])
def test_step_gives_finite_losses_and_gradients_to_every_trained_parameter(method, nets):
    m = build(method, nets)
    losses = run_step(m, make_batch(spatial=DISC_SIZE if method == "adversarial" else SIZE))
    for name, grads in m._test_grads.items():
        missing = sum(g is None for g in grads)
        assert missing == 0, f"{method}: {missing} of {len(grads)} parameters of group {name!r} got no gradient"
        assert all(torch.isfinite(g).all() for g in grads)
    assert set(losses) == {g.name for g in m.optimizer_groups()}


@pytest.mark.parametrize("method", ["mean_teacher", "uamt", "ict"])
def test_after_step_moves_the_teacher_to_the_student(method):
    m = build(method, ["test_unet"])
    start = copy.deepcopy(m.modules["ema1"].state_dict())
    run_step(m, make_batch(), step=0)  # alpha = 0 at step 0: teacher = updated student
    for name, value in m.modules["ema1"].state_dict().items():
        assert torch.equal(value, m.modules["net1"].state_dict()[name])
    assert any(not torch.equal(v, m.modules["ema1"].state_dict()[k]) for k, v in start.items())
    assert all(not p.requires_grad for p in m.modules["ema1"].parameters())
    assert set(m.students()) == {"net1"}


@pytest.mark.parametrize("method, nets", CASES[1:], ids=[m for m, _ in CASES[1:]])
def test_resolved_config_spells_out_every_option_and_survives_yaml(method, nets, tmp_path):
    """What the trainer writes as config.yaml: every option with its value, in plain YAML types,
    reading back to the same options (a tuple-typed option would come back as a list)."""
    m = build(method, nets)
    save_config(m.resolved_config(), tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again.method.options == dataclasses.asdict(m.options)
    assert METHODS.get(method)(again, [make_net(n) for n in nets]).options == m.options


@pytest.mark.parametrize("method", ["mean_teacher", "uamt", "ict"])
@pytest.mark.parametrize("mode", [None, "eval"])
def test_teacher_runs_in_the_configured_mode_and_the_student_stays_in_training(method, mode):
    """The teacher runs in train mode by default (dropout on: MT's perturbed targets, UA-MT's
    Monte-Carlo uncertainty); `teacher_mode: eval` switches it off for the teacher only."""
    m = build(method, ["test_unet"], {"teacher_mode": mode} if mode else None)
    seen = []
    m.modules["ema1"].register_forward_pre_hook(lambda net, args: seen.append(net.training))
    run_step(m, make_batch(), step=0)
    assert seen and all(training == (mode is None) for training in seen), seen
    assert m.modules["net1"].training and m.modules["ema1"].training, "both are back in train mode"


@pytest.mark.parametrize("method", ["ict", "adversarial"])
def test_unlabeled_count_different_from_labeled_batch(method):
    spatial = DISC_SIZE if method == "adversarial" else SIZE
    m = build(method, ["test_unet"], batch_size=5, labeled=2)  # |U| = 3 != lbs = 2
    run_step(m, make_batch(size=5, labeled=2, spatial=spatial))


def test_ict_needs_two_unlabeled_rows():
    m = build("ict", ["test_unet"], batch_size=3, labeled=2)
    with pytest.raises(ConfigError, match="at least 2 unlabeled"):
        m.training_step(make_batch(size=3, labeled=2), 0)


def test_adversarial_groups_and_discriminator_only_learns_in_its_own_step():
    m = build("adversarial", ["test_unet"])
    groups = m.optimizer_groups()
    assert [g.name for g in groups] == ["seg", "disc"]
    assert groups[0].override is None
    assert groups[1].override == {"type": "adam", "lr": 1e-4, "betas": (0.9, 0.99), "schedule": "constant"}
    out = m.training_step(make_batch(spatial=DISC_SIZE), 10)
    out.losses["seg"].backward()
    assert all(p.grad is None for p in m.modules["disc"].parameters()), "seg loss must not train D"
    assert all(p.grad is not None for p in m.modules["net1"].parameters())
    assert m.modules["net1"].training and m.modules["disc"].training
    disc_loss = out.losses["disc"]()
    assert m.modules["net1"].training, "the segmenter is back in train mode after the D pass"
    disc_loss.backward()
    assert all(p.grad is not None for p in m.modules["disc"].parameters())


def test_mean_teacher_faithful_gate_zeroes_consistency():
    batch = make_batch()
    gated = build("mean_teacher", ["test_unet"], {"zero_before": 1000})
    plain = build("supervised", ["test_unet"])
    torch.manual_seed(1)
    a = gated.training_step(batch, 500).losses["seg"]
    torch.manual_seed(1)
    b = plain.training_step(batch, 500).losses["seg"]
    assert a.item() == pytest.approx(b.item(), rel=1e-5)


def test_cross_teaching_contrast_options():
    batch = make_batch()
    pooled = build("cross_teaching", ["test_unet", "test_mamba_unet"], {"contrast": "pooled_logits", "pseudo_loss": "dice"})
    none = build("cross_teaching", ["test_unet", "test_mamba_unet"], {"contrast": "none"})
    pixel = build("cross_teaching", ["test_unet", "test_mamba_unet"])
    assert {"proj1", "proj2"} <= set(pixel.modules) and "proj1" not in pooled.modules
    n_pixel = sum(p.numel() for p in pixel.optimizer_groups()[0].params)
    n_pooled = sum(p.numel() for p in pooled.optimizer_groups()[0].params)
    assert n_pixel > n_pooled, "the projector heads are trained with the networks"
    assert pooled.training_step(batch, 0).logs["loss/contrast"] > 0
    assert none.training_step(batch, 0).logs["loss/contrast"] == 0
    assert set(pixel.eval_networks()) == {"net1", "net2"}


def test_cross_teaching_two_identical_networks_have_zero_pooled_contrast():
    m = build("cross_teaching", ["test_unet", "test_unet"], {"contrast": "pooled_logits"})
    m.modules["net2"].load_state_dict(m.modules["net1"].state_dict())
    m.modules.eval()  # no dropout: identical outputs
    assert m.training_step(make_batch(), 0).logs["loss/contrast"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    "method, options, match",
    [
        ("mean_teacher", {"no_such_option": 1}, "no_such_option"),
        ("cross_teaching", {"contrast": "infonce"}, "method.options.contrast"),
        ("cross_teaching", {"pseudo_loss": "ce"}, "method.options.pseudo_loss"),
        ("uamt", {"threshold_scale": "ln_3"}, "threshold_scale"),
        ("uamt", {"passes": 3}, "passes"),
        ("mean_teacher", {"teacher_mode": "frozen"}, "teacher_mode"),
        ("entropy_min", {"entropy_on": "labeled"}, "entropy_on"),
    ],
)
def test_bad_options_raise_config_error(method, options, match):
    nets = ["test_unet", "test_unet"] if method == "cross_teaching" else ["test_unet"]
    with pytest.raises(ConfigError, match=match):
        build(method, nets, options)


@pytest.mark.parametrize("method, count", [("cps", 1), ("cross_teaching", 3), ("mean_teacher", 2)])
def test_wrong_network_count_raises(method, count):
    with pytest.raises(ConfigError, match="network"):
        build(method, ["test_unet"] * count)


def test_every_method_module_is_registered_and_has_a_docstring():
    expected = {"supervised", "mean_teacher", "uamt", "ict", "entropy_min", "adversarial", "co_training", "cps", "cross_teaching"}
    assert set(METHODS.names()) >= expected
    for name in expected:
        cls = METHODS.get(name)
        assert cls.name == name
        assert cls.__module__.startswith("methods.") and len(__import__(cls.__module__, fromlist=["x"]).__doc__) > 80
    assert METHODS.get("supervised").needs_unlabeled is False


# dataset folder of configs/ -> (classes, the papers' labeled-case counts)
DATASET_PROTOCOL = {"acdc": (4, (3, 7)), "promise12": (2, (8, 12)), "synapse": (9, ())}


def test_configs_exist_for_every_paper_row():
    names = {p.stem for p in EXPERIMENTS}
    assert {"fully_unet", "fully_swin_unet", "fully_mamba_unet", "cps_unet_7cases", "cps_swin_unet_7cases"} <= names
    for cases in (3, 7):
        assert f"semi_mamba_unet_{cases}cases" in names
        for prefix in ("mt", "uamt", "ict", "entropy_min", "adversarial", "co_training"):
            assert {f"{prefix}_unet_{cases}cases", f"{prefix}_swin_unet_{cases}cases"} <= names
        for pair in ("2x_swin", "2x_mamba", "unet_swin", "unet_mamba"):
            assert f"ablation_{pair}_{cases}cases" in names
    others = {(p.parent.name, p.stem) for p in EXPERIMENTS if p.parent.name != "acdc"}
    assert {("synapse", f"fully_{net}") for net in ("unet", "swin_unet", "mamba_unet")} <= others
    assert {("promise12", "semi_mamba_unet_8cases"), ("promise12", "semi_mamba_unet_12cases")} <= others


def _diagnostics_beside_rows(pattern: str, row_of, count: int = 2) -> list:
    """[(path, config, its paper row's config)] for the configs/diagnostics files matching `pattern`,
    checked to be `count` (e.g. 3 and 7 cases), marked as no paper row and named after their file;
    `row_of(stem)` is the row's config name under configs/acdc, or (a diagnostic varying another
    diagnostic) under configs/diagnostics as acdc_<name>."""
    paths = [p for p in DIAGNOSTICS if p.match(pattern)]
    assert len(paths) == count, paths
    out = []
    for path in paths:
        cfg = load_config(path)
        assert path.read_text().startswith("# Not a paper row") and cfg.name == path.stem
        row = REPO / "configs" / "acdc" / f"{row_of(path.stem)}.yaml"
        if not row.is_file():
            row = REPO / "configs" / "diagnostics" / f"acdc_{row_of(path.stem)}.yaml"
        out.append((path, cfg, load_config(row)))
    return out


def test_supervised_diagnostics_train_exactly_the_semi_rows_supervised_half():
    """configs/diagnostics/<dataset>_supervised_unet_<N>cases: the UNet semi rows minus their unlabeled
    loss, so the labeled cases, schedule, optimiser and labeled rows per batch must be the semi row's."""
    for path, cfg, semi in _diagnostics_beside_rows("acdc_supervised_unet_?cases.yaml",
                                                    lambda stem: f"mt_unet_{stem.split('_')[-1]}"):
        assert cfg.method.name == "supervised" and cfg.model.networks == semi.model.networks
        assert cfg.method.batch_size == semi.method.labeled_batch_size and cfg.method.labeled_batch_size is None
        assert (cfg.data, cfg.train, cfg.eval) == (semi.data, semi.train, semi.eval), path.name


def test_normalized_diagnostics_differ_from_their_rows_in_the_normalisation_only():
    """configs/diagnostics/acdc_<row>_normalized (MT + UNet at 3 and 7 cases, Semi-Mamba-UNet at 3): the
    row with data.normalize on; any other difference would confound what the diagnostic measures."""
    row_of = lambda stem: stem.removeprefix("acdc_").removesuffix("_normalized")  # noqa: E731
    for path, cfg, row in _diagnostics_beside_rows("*_normalized.yaml", row_of, count=3):
        assert cfg.data.normalize == "percentile" and row.data.normalize == "none"
        same_data = dataclasses.replace(cfg.data, normalize="none")
        assert (same_data, cfg.model, cfg.method, cfg.train, cfg.eval) == (row.data, row.model, row.method, row.train,
                                                                           row.eval), path.name


def test_intensity_diagnostic_differs_from_its_row_in_the_training_intensities_only(acdc_root):
    """configs/diagnostics/acdc_<row>_intensity (MT + UNet, Semi-Mamba-UNet and the supervised half at 3
    cases): the row trained on darker images (data.intensity_scale) and nothing else, in the range
    `data info --intensity` suggests."""
    from ssl_mamba.data import intensity_coverage

    row_of = lambda stem: stem.removeprefix("acdc_").removesuffix("_intensity")  # noqa: E731
    for path, cfg, row in _diagnostics_beside_rows("*_intensity.yaml", row_of, count=3):
        assert cfg.data.intensity_scale and row.data.intensity_scale is None
        same_data = dataclasses.replace(cfg.data, intensity_scale=None)
        assert (same_data, cfg.model, cfg.method, cfg.train, cfg.eval) == (row.data, row.model, row.method, row.train,
                                                                           row.eval), path.name
        coverage = intensity_coverage(acdc_root, cfg.data.labeled_cases, splits=())
        assert cfg.data.intensity_scale == coverage["suggested_intensity_scale"], path.name


@pytest.mark.parametrize("path", [p for p in EXPERIMENTS if p.parent.name != "acdc"],
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_promise12_and_synapse_rows_meet_their_paper_rows(path):
    """Each non-ACDC config finds its published row, so `table --compare paper` can put it beside ours."""
    from ssl_mamba.paper_tables import find_paper_rows

    cfg = load_config(path)
    rows = find_paper_rows(cfg.data.dataset, cfg.method.name, cfg.model.networks, cfg.data.labeled_cases)
    assert rows, f"{path}: no paper row for {cfg.data.dataset} / {cfg.method.name} / {cfg.model.networks}"


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(REPO / "configs")) for p in CONFIGS])
def test_every_config_loads_and_fits_its_method(path):
    cfg = load_config(path)
    cls = METHODS.get(cfg.method.name)
    lo, hi = cls.num_networks
    assert lo <= len(cfg.model.networks) <= hi, f"{path}: {cfg.model.networks} for {cfg.method.name}"
    assert {f.name for f in __import__("dataclasses").fields(cls.Options)} >= set(cfg.method.options)
    if path in EXPERIMENTS:
        text = path.read_text()
        first = text.splitlines()[0]
        assert text.startswith("#") and ("Table" in first or "table" in first), f"{path}: first line names the table row"
        dataset = path.parent.name
        assert cfg.name == f"{dataset}_{path.stem}" and cfg.data.dataset == dataset
        classes, labeled = DATASET_PROTOCOL[dataset]
        assert cfg.data.num_classes == classes and cfg.data.patch_size == [224, 224]
        if cls.needs_unlabeled:
            assert (cfg.train.max_iterations, cfg.method.batch_size, cfg.method.labeled_batch_size) == (30000, 16, 8)
            assert cfg.data.labeled_cases in labeled
        else:
            assert (cfg.train.max_iterations, cfg.method.batch_size, cfg.data.labeled_cases) == (10000, 24, None)
