"""What a Mamba-UNet training step keeps for its backward, by module type (CPU, no GPU needed).

    python benchmarks/saved_activations.py [--batch 2] [--size 224] [--fp32]

Runs the full-width Mamba-UNet forward + loss under bf16 autocast (CPU autocast: the same
bf16 policy for linear / conv / matmul as CUDA's; the ProjectionLayerNorms pick their dtype
themselves) and counts the storages autograd saved (`ssl_mamba.utils.saved_tensors`), scaled to
batch 24.  The scan is a stand-in that saves exactly what the Triton op saves (x, x_dbl in the
projection's dtype, the fp32 chunk-boundary states), so the table is the GPU bf16 step's saved
set without running a kernel.  It is a count, not a peak: the card's peak adds the output, the
loss's temporaries, the backward's first gradients and the allocator's rounding.
"""
import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssl_mamba.layers import ss2d as ss2d_layer  # noqa: E402
from ssl_mamba.models import create_model  # noqa: E402
from ssl_mamba.ops.triton_ss2d import block_config  # noqa: E402
from ssl_mamba.utils.saved_tensors import SavedTensorTally  # noqa: E402


class _TritonSavedSet(torch.autograd.Function):
    """Saves what `_SS2DScanFn` saves; returns an fp32 tensor of y's shape (values irrelevant)."""

    @staticmethod
    def forward(ctx, x, x_dbl, n_state):
        b, h, w, d = x.shape
        chunks = -(-(h * w) // block_config()["chunk"])
        hs = torch.empty(b * 4, chunks, n_state, d, dtype=torch.float32)
        ctx.save_for_backward(x, x_dbl, hs)
        return x.float()

    @staticmethod
    def backward(ctx, gy):
        x, x_dbl, _hs = ctx.saved_tensors
        return gy.to(x.dtype), torch.zeros_like(x_dbl), None


def stand_in_scan(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, backend="auto"):
    x_dbl = torch.einsum("bhwd,kcd->bhwkc", x, x_proj_weight)  # as kernel_inputs: follows autocast
    return _TritonSavedSet.apply(x, x_dbl, A_logs.shape[1]).to(x.dtype)


def count_saved(batch: int = 2, size: int = 224, bf16: bool = True):
    """The full-width Mamba-UNet's forward + loss with the stand-in scan; returns (tally, loss):
    keep the loss alive while reading the tally (the graph holds what it counts)."""
    torch.manual_seed(0)
    real_scan = ss2d_layer.ss2d_scan
    ss2d_layer.ss2d_scan = stand_in_scan
    try:
        net = create_model("mamba_unet", scan_backend="torch").train()
        img = torch.randn(batch, 1, size, size)
        label = torch.randint(0, 4, (batch, size, size))
        tally = SavedTensorTally(net)

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return F.cross_entropy(net(img).float(), label)

        return tally, tally.run(step)
    finally:
        ss2d_layer.ss2d_scan = real_scan


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=2, help="counted batch (scaled to 24 in the table)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--fp32", action="store_true", help="no autocast")
    args = ap.parse_args()
    tally, loss = count_saved(args.batch, args.size, bf16=not args.fp32)
    scale = 24 / args.batch
    print(f"saved for backward, Mamba-UNet {args.size}x{args.size}, {'fp32' if args.fp32 else 'bf16 autocast'}, "
          f"scaled to batch 24 (counted at {args.batch}):")
    print(f"{'module type, dtype':40s} {'MiB':>9s}")
    for kind, nbytes in tally.by_module_type().items():
        print(f"{kind:40s} {nbytes * scale / 2**20:9.1f}")
    print(f"{'total':40s} {tally.total_bytes * scale / 2**20:9.1f}")
    del loss


if __name__ == "__main__":
    main()
