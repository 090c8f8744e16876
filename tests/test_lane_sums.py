"""The reduce-scatter PTX of ssl_mamba/ops/lane_sums.py, executed on 32 simulated lanes.

The GPU runs exactly the text `reduce_scatter_ptx` returns (the SS2D backward's channel sums with
`lane_sums=1`); the CPU interpreter cannot, so these tests run that text through the module's small
PTX simulator and compare every lane's result with the sums NumPy computes."""
import numpy as np
import pytest

from ssl_mamba.ops import lane_sums


@pytest.mark.parametrize("per_arg,n_args", [(16, 2), (16, 1), (8, 1), (4, 2), (1, 1)])
def test_each_lane_gets_the_sum_of_its_value(per_arg, n_args):
    rng = np.random.default_rng(per_arg * 10 + n_args)
    n_values = per_arg * n_args
    inputs = rng.standard_normal((lane_sums.LANES, n_values)).astype(np.float32)
    out = lane_sums.simulate_ptx(lane_sums.reduce_scatter_ptx(per_arg, n_args), inputs)
    assert out.shape == (lane_sums.LANES, per_arg)
    value = np.arange(lane_sums.LANES) >> lane_sums.value_of_lane_shift(n_values)
    np.testing.assert_allclose(out[:, 0], inputs.sum(0, dtype=np.float64)[value], rtol=1e-5, atol=1e-5)
    assert not out[:, 1:].any(), "the asm's other output slots must be zero"


def test_reduce_scatter_uses_one_shuffle_per_halving():
    # 32 values: 16 + 8 + 4 + 2 + 1 shuffles, where per-value butterflies would need 32 * 5 = 160.
    assert lane_sums.reduce_scatter_ptx(16, 2).count("shfl.sync") == 31
    # 8 values: 4 + 2 + 1 halvings, then 2 plain butterfly rounds for the lanes sharing a value.
    assert lane_sums.reduce_scatter_ptx(8, 1).count("shfl.sync") == 9


def test_constraints_match_the_operands_the_ptx_reads():
    ptx = lane_sums.reduce_scatter_ptx(8, 2)
    cons = lane_sums.constraints(8, 2).split(",")
    used = {int(tok[1:].rstrip(";,")) for tok in ptx.replace(",", " ").split() if tok.startswith("$")}
    assert used == set(range(len(cons)))
    assert cons[:8] == ["=f"] * 8 and cons[8:] == ["f"] * 16


@pytest.mark.parametrize("count", [0, 3, 64])
def test_bad_value_count_is_refused(count):
    with pytest.raises(ValueError, match="power of two"):
        lane_sums.value_of_lane_shift(count)


def test_kernels_keep_the_plain_sums_under_the_interpreter(monkeypatch):
    pytest.importorskip("triton")
    from ssl_mamba.ops import triton_ss2d
    old = triton_ss2d.set_block_config(lane_sums=True)
    try:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert not triton_ss2d._launch_plan(2, 8, 8, 64, 16, 6)["bwd_tiles"]["LANE_SUMS"]
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        tiles = triton_ss2d._launch_plan(2, 8, 8, 64, 16, 6)["bwd_tiles"]
        assert tiles["LANE_SUMS"] and tiles["SHIFT_BC"] == 0 and tiles["SHIFT_R"] == 2
    finally:
        triton_ss2d.set_block_config(**old)
