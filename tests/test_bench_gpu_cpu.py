"""bench_gpu.py's host-side logic on the CPU: a broken benchmark costs a device call to find out."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
bench_gpu = pytest.importorskip("bench_gpu")


def test_only_filter_runs_exact_and_substring_matches(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_gpu, "RESULTS", {})
    monkeypatch.setitem(bench_gpu._RUN, "only", ["model_b24_ours_bf16$", "compile"])
    for key in ("model_b24_ours_bf16", "model_b24_ours_bf16_graphs", "model_b16_ours_bf16_compile_graphs"):
        bench_gpu.phase(key, lambda: {"ran": True}, tmp_path)
    assert set(bench_gpu.RESULTS) == {"model_b24_ours_bf16", "model_b16_ours_bf16_compile_graphs"}


def test_failing_phase_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_gpu, "RESULTS", {})
    monkeypatch.setitem(bench_gpu._RUN, "only", [])

    def broken():
        raise RuntimeError("bf16 weight with fp32 input")

    bench_gpu.phase("model_b24_ours_bf16", broken, tmp_path)
    assert "RuntimeError: bf16 weight" in bench_gpu.RESULTS["model_b24_ours_bf16"]["error"]
    assert list(tmp_path.glob("gpu-*.json"))  # saved after every phase


def test_method_step_runs_the_library_iteration_on_cpu():
    out = bench_gpu.method_step_bench(networks=["test_unet", "test_mamba_unet"], batch=4, size=32, iters=1,
                                      device="cpu")
    assert out["method"] == "cross_teaching" and out["step_ms"] > 0


# the compile setting imports torch.utils.mkldnn (through the compiler), which warns on import in torch 2.13
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_row_settings_times_each_setting_and_reports_the_ones_that_fail(capsys):
    import row_settings_gpu

    out = row_settings_gpu.time_row("mt_swin_unet_7cases", batch=4, networks=["test_swin_unet"], size=64,
                                    iters=1, device="cpu")
    assert list(out) == list(row_settings_gpu.SETTINGS)
    assert out["fp32"]["step_ms"] > 0 and out["fp32"]["minutes_30k"] == pytest.approx(out["fp32"]["step_ms"] / 2)
    for name in ("fp32_graphs", "bf16_graphs", "bf16_graphs_compile"):  # CUDA graphs need a GPU
        assert "error" in out[name], name
    assert capsys.readouterr().out.count("mt_swin_unet_7cases") == 4
