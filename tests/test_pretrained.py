"""load_pretrained: VMamba / Swin ImageNet format, encoder -> decoder mirroring, readable errors."""
import argparse
import re

import pytest
import torch

from ssl_mamba.errors import UserError
from ssl_mamba.models import create_model, load_pretrained

torch.set_num_threads(1)

ENCODER_KEY = re.compile(r"^(patch_embed\.|layers\.|norm\.)")


def encoder_checkpoint(net: torch.nn.Module, extra_stage2_blocks: range, head_dim: int) -> dict:
    """An ImageNet-style state dict built from `net`'s encoder: stage 2 gets extra blocks (as the
    [2,2,9,2] VMamba-Tiny / Swin-Tiny) copied from its block 0, plus a classification head."""
    sd = {k: v.clone() for k, v in net.state_dict().items() if ENCODER_KEY.match(k)}
    block0 = {k[len("layers.2.blocks.0."):]: v for k, v in sd.items() if k.startswith("layers.2.blocks.0.")}
    for j in extra_stage2_blocks:
        sd.update({f"layers.2.blocks.{j}.{rest}": v + j for rest, v in block0.items()})
    sd["head.weight"] = torch.randn(1000, head_dim)
    sd["head.bias"] = torch.zeros(1000)
    return sd


def test_vmamba_checkpoint_loads_encoder_and_mirrors_decoder(tmp_path):
    torch.manual_seed(0)
    source = create_model("mamba_unet").mamba_unet
    sd = encoder_checkpoint(source, range(2, 9), 768)
    path = tmp_path / "vmamba_tiny.pth"
    torch.save({"model": sd, "epoch": 292}, path)
    torch.manual_seed(1)
    model = create_model("mamba_unet")
    report = load_pretrained(model, path)

    enc = {k for k in sd if ENCODER_KEY.match(k) and not re.match(r"layers\.2\.blocks\.[2-8]\.", k)}
    mirrored = {re.sub(r"^layers\.(\d)", lambda m: f"layers_up.{3 - int(m.group(1))}", k)
                for k in enc if k.startswith("layers.") and ".blocks." in k and not k.startswith("layers.3.")}
    assert set(report.loaded) == enc | mirrored
    assert len(report.loaded) == 197  # 218 tensors minus the 21 with no ImageNet counterpart
    assert report.mismatched == []
    skipped = set(report.skipped)
    assert {"head.weight", "head.bias"} <= skipped
    assert all(f"layers.2.blocks.{j}.ln_1.weight" in skipped for j in range(2, 9))
    assert "layers_up.0.blocks.0.ln_1.weight" in skipped  # bottleneck blocks have no decoder twin
    assert "layers_up.1.downsample.reduction.weight" in skipped
    assert not skipped & set(report.loaded)

    net = model.mamba_unet.state_dict()
    assert torch.equal(net["layers_up.1.blocks.0.self_attention.A_logs"], sd["layers.2.blocks.0.self_attention.A_logs"])
    assert torch.equal(net["layers_up.3.blocks.1.ln_1.weight"], sd["layers.0.blocks.1.ln_1.weight"])
    assert torch.equal(net["patch_embed.proj.weight"], sd["patch_embed.proj.weight"])
    # layers with no ImageNet counterpart keep their own initialisation
    assert not torch.equal(net["concat_back_dim.1.weight"], source.state_dict()["concat_back_dim.1.weight"])


def test_swin_checkpoint_mirrors_and_keeps_buffers(tmp_path):
    torch.manual_seed(0)
    source = create_model("test_swin_unet").swin_unet
    sd = encoder_checkpoint(source, range(2, 4), 64)
    path = tmp_path / "swin_tiny.pth"
    torch.save({"model": sd}, path)
    torch.manual_seed(1)
    model = create_model("test_swin_unet")
    report = load_pretrained(model, path)
    assert "layers_up.1.blocks.1.attn.relative_position_bias_table" in report.loaded
    assert "layers_up.3.blocks.0.mlp.fc2.weight" in report.loaded
    assert "layers.2.blocks.3.attn.qkv.weight" in report.skipped
    assert torch.equal(model.swin_unet.layers_up[2].blocks[0].attn.qkv.weight, sd["layers.1.blocks.0.attn.qkv.weight"])


def test_own_checkpoint_with_other_class_count_reports_mismatch(tmp_path):
    torch.manual_seed(0)
    k9 = create_model("test_mamba_unet", num_classes=9)
    path = tmp_path / "best_net1.pth"
    torch.save(k9.state_dict(), path)  # keys prefixed `mamba_unet.`, decoder included: no mirroring
    model = create_model("test_mamba_unet", num_classes=4)
    report = load_pretrained(model, path)
    assert report.mismatched == ["output.weight"]
    assert report.skipped == []
    assert len(report.loaded) == len(model.state_dict()) - 1
    assert torch.equal(model.mamba_unet.layers_up[1].blocks[0].ln_1.bias, k9.mamba_unet.layers_up[1].blocks[0].ln_1.bias)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="nope.pth does not exist"):
        load_pretrained(create_model("test_unet"), tmp_path / "nope.pth")


def test_nothing_matches_is_a_user_error(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(3), "fc.bias": torch.zeros(2)}}, path)
    with pytest.raises(UserError, match=r"resnet\.pth matches no parameter of MambaUNet .*conv1\.weight"):
        load_pretrained(create_model("test_mamba_unet"), path)
    wrong_shapes = tmp_path / "other_width.pth"
    torch.save({"model": {"patch_embed.proj.weight": torch.zeros(5, 3, 4, 4)}}, wrong_shapes)
    with pytest.raises(UserError, match="1 of another shape"):
        load_pretrained(create_model("test_mamba_unet"), wrong_shapes)


def test_unreadable_files_are_user_errors(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(UserError, match="garbage.pth"):
        load_pretrained(create_model("test_unet"), garbage)
    not_sd = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_sd)
    with pytest.raises(UserError, match="list.pth is not a state dict"):
        load_pretrained(create_model("test_unet"), not_sd)


def test_training_checkpoint_with_config_object(tmp_path):
    """VMamba training files also pickle a config object: loaded only when full unpickling is allowed."""
    torch.manual_seed(0)
    net = create_model("test_unet")
    path = tmp_path / "with_config.pth"
    torch.save({"model": net.state_dict(), "config": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(UserError, match="with_config.pth without full unpickling"):
        load_pretrained(create_model("test_unet"), path, allow_pickle=False)
    other = create_model("test_unet")
    report = load_pretrained(other, path)
    assert len(report.loaded) == len(net.state_dict())
    assert torch.equal(other.decoder.out_conv.weight, net.decoder.out_conv.weight)
