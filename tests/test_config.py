"""Config loading, `base:` inheritance, overrides and the errors users see."""
from pathlib import Path

import pytest
import yaml

from ssl_mamba.config import ExperimentConfig, load_config, parse_override, save_config
from ssl_mamba.errors import ConfigError


def write(path, values):
    path.write_text(yaml.safe_dump(values))
    return path


def test_defaults_follow_the_original_protocol():
    cfg = load_config()
    assert isinstance(cfg, ExperimentConfig)
    assert (cfg.train.lr, cfg.train.momentum, cfg.train.weight_decay) == (0.01, 0.9, 1e-4)
    assert cfg.train.val_every == 200 and cfg.train.seed == 1337
    assert cfg.method.consistency == 0.1 and cfg.method.ema_decay == 0.99
    assert cfg.eval.interp_order == 0 and cfg.eval.empty_policy == "original"


def test_file_values_and_base_inheritance(tmp_path):
    write(tmp_path / "base.yaml", {"data": {"num_classes": 2, "patch_size": [256, 256]}, "train": {"lr": 0.02}})
    child = write(tmp_path / "child.yaml", {"base": "base.yaml", "name": "x", "train": {"max_iterations": 5}})
    cfg = load_config(child)
    assert cfg.name == "x"
    assert cfg.data.num_classes == 2 and cfg.data.patch_size == [256, 256]
    assert cfg.train.lr == 0.02 and cfg.train.max_iterations == 5
    assert cfg.train.momentum == 0.9  # untouched default


def test_overrides_win_and_parse_yaml_values(tmp_path):
    path = write(tmp_path / "c.yaml", {"train": {"lr": 0.02}})
    cfg = load_config(path, ["train.lr=0.001", "model.networks=[unet, mamba_unet]", "data.labeled_cases=3",
                             "train.amp=bf16", "method.options.pseudo_loss=dice"])
    assert cfg.train.lr == 0.001
    assert cfg.model.networks == ["unet", "mamba_unet"]
    assert cfg.data.labeled_cases == 3 and cfg.train.amp == "bf16"
    assert cfg.method.options == {"pseudo_loss": "dice"}


def test_scientific_notation_strings_become_floats(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  weight_decay: 1e-4\n")  # YAML 1.1 reads this as a string
    assert load_config(path).train.weight_decay == pytest.approx(1e-4)


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path / "bad.yaml", {"train": {"learning_rate": 0.1}})
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'train\.learning_rate'.*train\.lr"):
        load_config(path)


def test_unknown_section(tmp_path):
    path = write(tmp_path / "bad.yaml", {"trainer": {}})
    with pytest.raises(ConfigError, match="unknown key 'trainer'"):
        load_config(path)


def test_wrong_type_names_key_and_file(tmp_path):
    path = write(tmp_path / "bad.yaml", {"train": {"max_iterations": "many"}})
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'train\.max_iterations' must be int"):
        load_config(path)
    with pytest.raises(ConfigError, match="'train.deterministic' must be true or false"):
        load_config(None, ["train.deterministic=3"])
    with pytest.raises(ConfigError, match=r"'data.patch_size\[1\]' must be int"):
        load_config(None, ["data.patch_size=[224, big]"])


def test_unknown_override_key():
    with pytest.raises(ConfigError, match="unknown key 'data.labelled_cases'"):
        load_config(None, ["data.labelled_cases=3"])


def test_bad_choices_and_cross_field_checks():
    with pytest.raises(ConfigError, match="train.amp.*none, bf16"):
        load_config(None, ["train.amp=fp16"])
    with pytest.raises(ConfigError, match="only one of"):
        load_config(None, ["data.labeled_cases=3", "data.labeled_slices=68"])
    with pytest.raises(ConfigError, match="labeled_batch_size"):
        load_config(None, ["method.batch_size=4", "method.labeled_batch_size=8"])
    with pytest.raises(ConfigError, match="one path \\(or null\\) per network"):
        load_config(None, ["model.networks=[unet, mamba_unet]", "model.pretrained=[x.pth]"])


def test_intensity_scale_is_a_positive_range_and_needs_augmentation():
    assert load_config(None, ["data.intensity_scale=[0.5, 1.0]"]).data.intensity_scale == [0.5, 1.0]
    for bad in ("[0.5]", "[1.0, 0.5]", "[0, 1.0]", "[-1.0, 1.0]", "[0.5, .inf]"):
        with pytest.raises(ConfigError, match=r"'data.intensity_scale' must be \[low, high\].*got"):
            load_config(None, [f"data.intensity_scale={bad}"])
    with pytest.raises(ConfigError, match="data.augment is 'none'.*choose data.augment cpu or gpu"):
        load_config(None, ["data.intensity_scale=[0.5, 1.0]", "data.augment=none"])
    with pytest.raises(ConfigError, match="data.normalize 'percentile' would train on intensities evaluation never"):
        load_config(None, ["data.intensity_scale=[0.5, 1.0]", "data.normalize=percentile"])


def test_intensity_scale_takes_auto_and_names_the_choices_otherwise():
    assert load_config(None, ["data.intensity_scale=auto"]).data.intensity_scale == "auto"
    with pytest.raises(ConfigError, match="'data.intensity_scale' is 'automatic'; give \\[low, high\\], 'auto' or null"):
        load_config(None, ["data.intensity_scale=automatic"])
    with pytest.raises(ConfigError, match=r"'data.intensity_scale' must be List\[float\] or str, got 0.5 \(float\)"):
        load_config(None, ["data.intensity_scale=0.5"])
    with pytest.raises(ConfigError, match="data.augment is 'none'"):  # auto scales in the augmentation too
        load_config(None, ["data.intensity_scale=auto", "data.augment=none"])


def test_a_missing_config_names_the_closest_ones_beside_it():
    """A row name typed from a paper table that has no config (Table 2 has no CPS row)."""
    acdc = Path(__file__).resolve().parents[1] / "configs" / "acdc"
    with pytest.raises(ConfigError, match=r"cps_unet_3cases.yaml; did you mean cps_unet_7cases.yaml"):
        load_config(acdc / "cps_unet_3cases.yaml")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(bad)


def test_malformed_override():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("train.lr")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["name=roundtrip", "data.labeled_cases=7", "model.networks=[unet, mamba_unet]"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
