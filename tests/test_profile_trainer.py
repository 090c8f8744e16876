"""benchmarks/profile_trainer.py: the trainer profile names each phase it was built to separate, times
exactly the last --active training iterations (not the run's final validation, checkpoint or summary),
counts host phases from host-side ranges and kernel time once, and leaves the trainer's functions as
they were (it patches them only for its run)."""
from pathlib import Path

import pytest
from conftest import load_script

REPO = Path(__file__).resolve().parents[1]
# phases that follow one another in an iteration (method/* run inside trainer/iteration, trainer/validate
# inside trainer/log_and_validate): their sum is host time inside the window
TOP_LEVEL = ("trainer/data", "trainer/iteration", "trainer/lr", "trainer/log_and_validate", "trainer/checkpoint")


@pytest.fixture(scope="module")
def profile_trainer():
    return load_script("benchmarks/profile_trainer.py")


def test_profile_separates_the_trainer_phases(profile_trainer, tmp_path):
    from ssl_mamba.data import generate_phantom
    from ssl_mamba.engine import trainer as trainer_module

    phantom_root = tmp_path / "phantom"
    generate_phantom(phantom_root, n_train_patients=3, n_val_patients=1, n_test_patients=0, slices=(4, 5), size=(32, 32))

    before = {name: getattr(obj, attr) for name, (obj, attr) in profile_trainer.PHASES.items()}
    active = 3
    summary = profile_trainer.run(
        str(REPO / "configs" / "acdc" / "mt_unet_7cases.yaml"),
        [f"data.root={phantom_root}", "data.labeled_cases=2", "data.patch_size=[16,16]", "method.batch_size=4",
         "method.labeled_batch_size=2", "data.num_workers=0", "train.device=cpu"],
        iterations=6, active=active, validate=False, run_dir=tmp_path / "run")
    phases, calls = summary["host_phase_ms"], summary["host_phase_calls"]
    for name in ("trainer/data", "trainer/iteration", "method/training_step", "method/after_step",
                 "trainer/log_and_validate"):
        assert phases[name] > 0, name
        assert calls[name] == active, name  # one range per profiled iteration: the window is `active` long
    # the run's final validation and last.pt stay out of the window, and the run stops before them
    assert "trainer/validate" not in phases and "trainer/checkpoint" not in phases
    assert not (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "run" / "summary.json").exists()
    # the method's step runs inside the iteration, so its range cannot be longer
    assert phases["method/training_step"] <= phases["trainer/iteration"]
    # the iteration's successive phases lie inside the timed window (0.01: the per-phase rounding)
    assert sum(phases.get(name, 0.0) for name in TOP_LEVEL) <= summary["wall_ms"] + 0.01
    assert summary["gpu_kernel_ms"] == 0.0  # no CUDA activity on the CPU
    assert summary["top_host_ops"] and not any(row["op"].startswith(("trainer/", "method/", "ProfilerStep"))
                                               for row in summary["top_host_ops"])
    assert {name: getattr(obj, attr) for name, (obj, attr) in profile_trainer.PHASES.items()} == before
    assert trainer_module.run_iteration is before["trainer/iteration"]


def cuda_like_events():
    """One profiled iteration as the profiler reports it under CUDA (times in us): every range twice,
    on the host and as a GPU-side gpu_user_annotation of the same name; a host op carrying its kernel's
    time, and the kernel itself as a device event."""
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import EventList, FunctionEvent

    def event(i, name, start, end, device=DeviceType.CPU, annotation=False):
        return FunctionEvent(id=i, name=name, thread=1, start_us=start, end_us=end, use_device="cuda",
                             device_type=device, is_user_annotation=annotation, stack=[])

    conv = event(4, "aten::cudnn_convolution", 1000, 3000)
    conv.append_kernel("sm90_conv_kernel", 0, 2000.0)
    events = EventList([
        event(1, "ProfilerStep#3", 0, 11000, annotation=True),
        event(2, "trainer/data", 0, 500, annotation=True),
        event(3, "trainer/iteration", 500, 10500, annotation=True),
        conv,
        event(5, "cudaLaunchKernel", 2000, 2100),
        event(6, "sm90_conv_kernel", 4000, 6000, DeviceType.CUDA),
        event(7, "Memcpy HtoD (Pinned -> Device)", 6000, 6500, DeviceType.CUDA),
        event(8, "trainer/iteration", 3900, 9000, DeviceType.CUDA, annotation=True),
        event(9, "ProfilerStep#3", 3900, 9500, DeviceType.CUDA, annotation=True),
    ], use_device="cuda")
    events._build_tree()
    return events


def test_summary_counts_host_ranges_and_kernels_once(profile_trainer):
    events = cuda_like_events()
    # the cause of the zeros: key_averages keeps the GPU-side copy of a range as its own row, cpu time 0
    rows = [row for row in events.key_averages() if row.key == "trainer/iteration"]
    assert sorted(row.cpu_time_total for row in rows) == [0, 10000]

    summary = profile_trainer.summarize(events, iterations=1, wall_s=0.011)
    assert summary["host_phase_ms"] == {"trainer/data": 0.5, "trainer/iteration": 10.0}
    assert summary["host_phase_calls"] == {"trainer/data": 1, "trainer/iteration": 1}
    # the kernel (2 ms) and the copy (0.5 ms), not again through the host op or the GPU-side ranges
    assert summary["gpu_kernel_ms"] == 2.5
    ops = {row["op"]: row["self_cpu_ms"] for row in summary["top_host_ops"]}
    assert ops == {"aten::cudnn_convolution": 1.9, "cudaLaunchKernel": 0.1}
