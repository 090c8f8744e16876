"""scripts/reproduce.py: the committed results table is exactly what `table` regenerates from the
committed run folders, and provenance carries a fingerprint of the code that ran."""
import json
import shutil
from pathlib import Path

import pytest
from conftest import load_script

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reproduce():
    return load_script("scripts/reproduce.py")


def test_committed_results_table_is_regenerated_unchanged(reproduce, tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(REPO / "results", results)
    (results / reproduce.FIGURE).unlink()  # so the check below sees it redrawn, not copied
    reproduce.main(["table", "--results", str(results)])
    capsys.readouterr()
    assert (results / "README.md").read_text() == (REPO / "results" / "README.md").read_text(), (
        "results/README.md is stale: run `python scripts/reproduce.py table`")
    rows = [p.name for p in (REPO / "results").iterdir() if (p / "metrics" / "test" / "summary.json").is_file()]
    assert len(rows) >= 8
    table = (REPO / "results" / "README.md").read_text()
    for row in rows:  # every committed row appears in the provenance table, with its log committed
        assert f"| {row} |" in table
        assert (REPO / "results" / row / "train.log").stat().st_size > 0
    assert (results / reproduce.FIGURE).read_bytes()[:4] == b"\x89PNG"  # the figure is redrawn with the table
    assert f"]({reproduce.FIGURE.as_posix()})" in table  # and results/README.md shows it


def test_committed_diagnostics_table_is_regenerated_unchanged(reproduce, tmp_path, capsys):
    """results/diagnostics/ is a results folder of its own: its rows never enter the main table."""
    results = tmp_path / "diagnostics"
    shutil.copytree(REPO / "results" / "diagnostics", results)
    reproduce.main(["table", "--results", str(results)])
    assert "no figure" in capsys.readouterr().out  # no diagnostic meets a paper row
    assert (results / "README.md").read_text() == (REPO / "results" / "diagnostics" / "README.md").read_text(), (
        "results/diagnostics/README.md is stale: run `python scripts/reproduce.py table --results results/diagnostics`")
    main_table = (REPO / "results" / "README.md").read_text()
    rows = [p.name for p in results.iterdir() if (p / "metrics" / "test" / "summary.json").is_file()]
    assert rows and not [row for row in rows if f"| {row} |" in main_table]


def test_table_without_a_published_counterpart_skips_the_figure(reproduce, tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(REPO / "results" / "acdc_fully_unet", results / "acdc_fully_unet")
    config = results / "acdc_fully_unet" / "config.yaml"  # 5 labeled cases: no paper has that row
    config.write_text(config.read_text().replace("labeled_cases: null", "labeled_cases: 5"))
    reproduce.main(["table", "--results", str(results)])
    assert "no figure" in capsys.readouterr().out and not (results / reproduce.FIGURE).exists()
    assert "| supervised (unet), 5 labeled cases | ours |" in (results / "README.md").read_text()


def test_table_without_markers_is_a_clear_error(reproduce, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(REPO / "results" / "acdc_fully_unet", results / "acdc_fully_unet")
    (results / "README.md").write_text("# no markers here\n")
    with pytest.raises(SystemExit, match="lacks the table markers"):
        reproduce.main(["table", "--results", str(results)])


def test_source_fingerprint_tracks_code_not_runs(reproduce, tmp_path):
    (tmp_path / "ssl_mamba" / "ops").mkdir(parents=True)
    (tmp_path / "configs").mkdir()
    (tmp_path / "ssl_mamba" / "ops" / "scan.py").write_text("A = 1\n")
    (tmp_path / "configs" / "row.yaml").write_text("name: row\n")
    first = reproduce.source_sha256(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "log.py").write_text("ignored\n")  # run outputs are not code
    assert reproduce.source_sha256(tmp_path) == first
    (tmp_path / "ssl_mamba" / "ops" / "scan.py").write_text("A = 2\n")
    assert reproduce.source_sha256(tmp_path) != first
    (tmp_path / "ssl_mamba" / "ops" / "scan.py").write_text("A = 1\n")
    assert reproduce.source_sha256(tmp_path) == first
    (tmp_path / "configs" / "row.yaml").rename(tmp_path / "configs" / "other.yaml")  # names count too
    assert reproduce.source_sha256(tmp_path) != first


def test_provenance_table_labels_shortened_schedules(reproduce, tmp_path):
    # A made-up shortened row beside a committed full one: committed rows get re-run at full length.
    short = tmp_path / "acdc_short_row"
    short.mkdir()
    (short / "provenance.json").write_text(json.dumps(
        {"iterations": 2000, "protocol_iterations": 30000, "shortened": True, "wall_time_s": 120.0,
         "images_per_s": 50.0}))
    table = reproduce.provenance_table([short, REPO / "results" / "acdc_fully_mamba_unet"])
    assert "| acdc_short_row | 2000 (shortened from 30000) |" in table
    assert "| acdc_fully_mamba_unet | 10000 |" in table


def test_provenance_table_names_the_training_precision(reproduce, tmp_path):
    (tmp_path / "fast").mkdir()
    (tmp_path / "fast" / "provenance.json").write_text(json.dumps({"iterations": 10, "amp": "bf16"}))
    (tmp_path / "old").mkdir()  # published before provenance recorded it: summary.json says
    (tmp_path / "old" / "provenance.json").write_text(json.dumps({"iterations": 10, "data_pack_dtype": "uint8"}))
    (tmp_path / "old" / "summary.json").write_text(json.dumps({"amp": "none"}))
    table = reproduce.provenance_table([tmp_path / "fast", tmp_path / "old"]).splitlines()
    assert table[2].endswith("| h5 files, bf16 |") and table[3].endswith("| pack uint8, fp32 |")


def test_provenance_table_marks_rows_that_shared_the_card(reproduce, tmp_path):
    for name, shared in (("alone", 1), ("pair", 2)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "provenance.json").write_text(json.dumps(
            {"iterations": 10, "wall_time_s": 120.0, "images_per_s": 50.0, "concurrent_rows": shared}))
    table = reproduce.provenance_table([tmp_path / "alone", tmp_path / "pair"])
    assert "| alone | 10 | ? | 2.0 min | 50 |" in table
    assert "| pair | 10 | ? | 2.0 min (2 rows at once) | 50 |" in table


def test_seeds_get_their_own_run_folders(reproduce):
    config = REPO / "configs" / "acdc" / "mt_unet_7cases.yaml"
    assert reproduce.run_name(config, None) == "acdc_mt_unet_7cases"
    assert reproduce.run_name(config, 1337) == "acdc_mt_unet_7cases"  # the config's own seed
    assert reproduce.run_name(config, 2) == "acdc_mt_unet_7cases_seed2"


def test_a_run_folder_of_another_seed_is_never_resumed(reproduce, tmp_path):
    run_dir = tmp_path / "acdc_mt_unet_7cases_seed2"
    run_dir.mkdir()
    shutil.copy(REPO / "results" / "acdc_mt_unet_7cases" / "config.yaml", run_dir / "config.yaml")  # seed 1337
    reproduce.check_existing_run(run_dir, 1337)  # same seed: fine to resume
    with pytest.raises(SystemExit, match="seed 1337, not 2"):
        reproduce.check_existing_run(run_dir, 2)


def test_seed_folders_of_a_row_pool_into_one_table_row(reproduce, tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(REPO / "results" / "acdc_fully_unet", results / "acdc_fully_unet")
    shutil.copytree(REPO / "results" / "acdc_fully_unet", results / "acdc_fully_unet_seed2")
    cfg = results / "acdc_fully_unet_seed2" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("seed: 1337", "seed: 2"))
    (results / "README.md").write_text(f"# r\n\n{reproduce.BEGIN}\n{reproduce.END}\n")
    reproduce.main(["table", "--results", str(results)])
    capsys.readouterr()
    ours = [line for line in (results / "README.md").read_text().splitlines() if "| ours |" in line]
    assert len(ours) == 1 and "| ours | 2 |" in ours[0], ours


def test_a_row_resumed_by_other_code_says_so(reproduce, tmp_path, monkeypatch):
    """A long row trained over several device sessions lists each segment's code in provenance."""
    from ssl_mamba.engine.checkpoint import save_checkpoint

    run_dir = tmp_path / "runs" / "acdc_fully_unet"
    shutil.copytree(REPO / "results" / "acdc_fully_unet", run_dir)
    (run_dir / reproduce.SEGMENTS).unlink(missing_ok=True)
    reproduce.record_segment(run_dir, {"commit": "aaa", "source_sha256": "1" * 64})
    save_checkpoint({"iteration": 4250}, run_dir / "last.pt")
    reproduce.record_segment(run_dir, {"commit": "bbb", "source_sha256": "2" * 64})
    monkeypatch.setattr(reproduce, "pack_dtype", lambda root: "uint8")
    dest = reproduce.publish(run_dir, tmp_path / "results", "bbb", 10000, "2" * 64)
    prov = json.loads((dest / "provenance.json").read_text())
    assert [(s["from_iteration"], s["commit"]) for s in prov["segments"]] == [(0, "aaa"), (4250, "bbb")]
    assert prov["mixed_code"] is True
    assert (dest / reproduce.SEGMENTS).is_file()
    assert "2 segments of different code" in reproduce.provenance_table([dest])


def test_a_row_resumed_on_another_card_names_both(reproduce, tmp_path, monkeypatch):
    """The card of each segment comes from the trainer's start / resume lines, so a row begun on
    an H100 and finished on an H200 is not credited to the H200 alone."""
    run_dir = tmp_path / "runs" / "acdc_fully_unet"
    shutil.copytree(REPO / "results" / "acdc_fully_unet", run_dir)
    head = "2026-11-28 02:20:39,613 INFO ssl_mamba.engine.trainer: "
    tail = ": method cps, networks ['unet'], parameters {{'net1': 1}}, device cuda ({}), 136 labeled / 1 unlabeled slices"
    (run_dir / "train.log").write_text("\n".join([
        head + "starting acdc_fully_unet" + tail.format("NVIDIA H100 80GB HBM3"),
        head + "iteration 200: net1 val mean Dice 0.5 (best 0.5 at 200)",
        head + "resuming at iteration 10588 acdc_fully_unet" + tail.format("NVIDIA H200")]) + "\n")
    monkeypatch.setattr(reproduce, "pack_dtype", lambda root: "uint8")
    dest = reproduce.publish(run_dir, tmp_path / "results", "abc", 10000, "1" * 64)
    prov = json.loads((dest / "provenance.json").read_text())
    assert prov["cards"] == [{"from_iteration": 0, "card": "NVIDIA H100 80GB HBM3"},
                             {"from_iteration": 10588, "card": "NVIDIA H200"}]
    assert "| NVIDIA H100 80GB HBM3 + NVIDIA H200 |" in reproduce.provenance_table([dest])
    # one card throughout: no list, the column shows the summary's card
    (run_dir / "train.log").write_text(head + "starting acdc_fully_unet" + tail.format("NVIDIA H200") + "\n")
    prov = json.loads((reproduce.publish(run_dir, tmp_path / "r2", "abc", 10000, "1" * 64) / "provenance.json").read_text())
    assert "cards" not in prov


def test_collect_replaces_rows_whole_and_refuses_an_incomplete_one(reproduce, tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(REPO / "results", results)
    fetched = tmp_path / "fetched"
    row = fetched / "acdc_mt_unet_3cases"
    shutil.copytree(REPO / "results" / "acdc_mt_unet_7cases", row)  # a 30k row standing in for a new 3-case one
    (results / "acdc_mt_unet_3cases" / "stale.txt").write_text("from the old row\n")
    broken = fetched / "acdc_cps_unet_7cases"
    shutil.copytree(REPO / "results" / "acdc_cps_unet_7cases", broken)
    (broken / "metrics" / "test" / "per_case.csv").unlink()
    with pytest.raises(SystemExit, match="acdc_cps_unet_7cases: not a complete published row .*per_case.csv"):
        reproduce.main(["collect", str(row), str(broken), "--results", str(results)])
    assert (results / "acdc_mt_unet_3cases" / "stale.txt").is_file(), "nothing is copied when one row is bad"
    reproduce.main(["collect", str(row), "--results", str(results)])
    capsys.readouterr()
    assert not (results / "acdc_mt_unet_3cases" / "stale.txt").exists(), "the row is replaced whole"
    assert (results / "acdc_mt_unet_3cases" / "provenance.json").read_text() == (row / "provenance.json").read_text()
    assert "| acdc_mt_unet_3cases | 30000 |" in (results / "README.md").read_text()
    assert not list(results.glob(".*.collecting"))


def test_diagnostic_rows_are_filed_apart_from_the_paper_rows(reproduce, tmp_path, capsys):
    """A published diagnostics folder, as `collect fetched/runs/published/*` passes it, goes to
    results/diagnostics with its own table; the paper table never lists its rows."""
    results = tmp_path / "results"
    shutil.copytree(REPO / "results", results)
    shutil.rmtree(results / "diagnostics")
    shutil.rmtree(results / "acdc_mt_unet_3cases")
    (results / "README.md").write_text(f"# Results\n\n{reproduce.BEGIN}\n{reproduce.END}\n")  # both tables redrawn
    fetched = tmp_path / "fetched"
    diag = fetched / "diagnostics" / "acdc_supervised_unet_3cases"
    shutil.copytree(REPO / "results" / "diagnostics" / "acdc_supervised_unet_3cases", diag)
    (fetched / "diagnostics" / "figures").mkdir()  # not a row: passed over
    provenance = json.loads((diag / "provenance.json").read_text())
    assert provenance["diagnostic"] is True  # as committed
    plain = fetched / "acdc_mt_unet_3cases"
    shutil.copytree(REPO / "results" / "acdc_mt_unet_3cases", plain)
    reproduce.main(["collect", str(plain), str(fetched / "diagnostics"), "--results", str(results)])
    capsys.readouterr()
    assert (results / "diagnostics" / "acdc_supervised_unet_3cases" / "provenance.json").is_file()
    assert not (results / "acdc_supervised_unet_3cases").exists()
    assert (results / "diagnostics" / "README.md").read_text().startswith("# Diagnostics")
    assert "| acdc_supervised_unet_3cases |" in (results / "diagnostics" / "README.md").read_text()
    assert "| acdc_supervised_unet_3cases |" not in (results / "README.md").read_text()
    assert "| acdc_mt_unet_3cases |" in (results / "README.md").read_text()
    provenance["diagnostic"] = False  # the flag, not the folder it came from, decides
    (diag / "provenance.json").write_text(json.dumps(provenance))
    reproduce.main(["collect", str(diag), "--results", str(results)])
    capsys.readouterr()
    assert "| acdc_supervised_unet_3cases |" in (results / "README.md").read_text()
    assert not (results / "diagnostics" / "acdc_supervised_unet_3cases").exists(), "one row, filed once"
    del provenance["diagnostic"]  # published before the flag: its folder decides
    (diag / "provenance.json").write_text(json.dumps(provenance))
    reproduce.main(["collect", str(fetched / "diagnostics"), "--results", str(results)])
    capsys.readouterr()
    assert (results / "diagnostics" / "acdc_supervised_unet_3cases").is_dir()
    assert not (results / "acdc_supervised_unet_3cases").exists()


def test_collect_refuses_a_row_named_like_the_diagnostics_folder(reproduce, tmp_path):
    results = tmp_path / "results"
    (results / "diagnostics").mkdir(parents=True)
    (results / "diagnostics" / "kept.txt").write_text("a diagnostic row's file\n")
    impostor = tmp_path / "fetched" / "diagnostics"
    shutil.copytree(REPO / "results" / "acdc_mt_unet_3cases", impostor)
    with pytest.raises(SystemExit, match="may not be named 'diagnostics'"):
        reproduce.main(["collect", str(impostor), "--results", str(results)])
    assert (results / "diagnostics" / "kept.txt").is_file()
    empty = tmp_path / "empty" / "diagnostics"
    empty.mkdir(parents=True)
    with pytest.raises(SystemExit, match="no published row folders in it"):
        reproduce.main(["collect", str(empty), "--results", str(results)])


def test_rows_of_several_gpus_take_the_least_busy_pair_and_train_through_torchrun(reproduce, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    slots = reproduce.GpuSlots(4, per_row=2)
    with slots.take() as a, slots.take() as b:
        assert (a["CUDA_VISIBLE_DEVICES"], b["CUDA_VISIBLE_DEVICES"]) == ("0,1", "2,3")
        with slots.take() as c:  # a fifth and sixth card do not exist: the pair shares
            assert len(c["CUDA_VISIBLE_DEVICES"].split(",")) == 2
    assert slots.busy == [0, 0, 0, 0]
    with pytest.raises(SystemExit, match="--gpus-per-row 3"):
        reproduce.GpuSlots(2, per_row=3)
    cmd = reproduce.train_command(2, "train", "-c", "x.yaml")
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert cmd[5:] == ["-m", "ssl_mamba.cli", "train", "-c", "x.yaml"]
    assert reproduce.train_command(1, "train") == reproduce.cli("train")
    with pytest.raises(SystemExit, match="--gpus-per-row needs --gpus"):
        reproduce.main(["run", "configs/acdc/fully_unet.yaml", "--gpus-per-row", "2"])


def phantom_row(tmp_path, config, name: str, batch_size: int, method: str = "supervised",
                networks=("test_unet",), labeled_batch_size=None):
    """A two-iteration row (supervised by default) on a small generated phantom, its config written to `config`."""
    from ssl_mamba.data.phantom import generate_phantom

    data = tmp_path / "phantom"
    generate_phantom(data, n_train_patients=3, n_val_patients=1, n_test_patients=1, slices=(2, 3), size=(40, 48))
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps({
        "name": name, "data": {"dataset": "phantom", "root": str(data), "num_classes": 4, "patch_size": [32, 32],
                               "labeled_cases": 2, "num_workers": 0},
        "model": {"networks": list(networks), "scan_backend": "torch"},
        "method": {"name": method, "batch_size": batch_size, "labeled_batch_size": labeled_batch_size},
        "train": {"max_iterations": 2, "val_every": 2, "checkpoint_every": 2, "device": "cpu", "log_images_every": 0}}))
    return config


def test_a_row_on_two_processes_trains_evaluates_and_publishes(reproduce, tmp_path, monkeypatch, capsys):
    """The whole `run --gpus 2 --gpus-per-row 2` path on the CPU (torchrun, gloo): train on two
    processes, evaluate the two networks side by side (one per GPU), publish with processes = 2; the
    row's report is its reported network's, each network has its own."""
    config = phantom_row(tmp_path, tmp_path / "row.yaml", "ddp_row", batch_size=4, method="cross_teaching",
                         networks=("test_unet", "test_unet"), labeled_batch_size=2)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # GpuSlots hands out the caller's GPUs
    monkeypatch.setattr(reproduce, "pack_dtype", lambda root: None)
    commands, run_child = [], reproduce.run_child

    def recorded(cmd, log, env):
        commands.append((cmd[3:], (env or {}).get("CUDA_VISIBLE_DEVICES")))
        run_child(cmd, log, env)

    monkeypatch.setattr(reproduce, "run_child", recorded)
    results = tmp_path / "results"
    reproduce.main(["run", str(config), "--gpus", "2", "--gpus-per-row", "2", "--runs", str(tmp_path / "runs"),
                    "--results", str(results), "--commit", "abc"])
    capsys.readouterr()
    evaluations = sorted((cmd[cmd.index("--network") + 1], gpus) for cmd, gpus in commands if cmd[0] == "evaluate")
    assert evaluations == [("net1", "0"), ("net2", "1")]  # side by side, one network per GPU
    log = (tmp_path / "runs" / "ddp_row.out").read_text()
    assert "evaluate:" not in log and "net1 (test_unet)" in log  # results, no interleaved progress bars
    prov = json.loads((results / "ddp_row" / "provenance.json").read_text())
    assert prov["processes"] == 2 and prov["concurrent_rows"] == 1
    test = results / "ddp_row" / "metrics" / "test"
    row = json.loads((test / "summary.json").read_text())
    best = json.loads((tmp_path / "runs" / "ddp_row" / "summary.json").read_text())["best_val_dice"]
    assert row["network"] == max((dice, net) for net, dice in best.items())[1]  # as one evaluate picks it
    assert all((test / net / "summary.json").is_file() for net in ("net1", "net2"))
    own = json.loads((test / row["network"] / "summary.json").read_text())
    assert own["mean"] == row["mean"]


def test_a_row_stopped_between_its_networks_evaluations_is_finished_before_it_publishes(reproduce, tmp_path):
    """Each network writes its own test report and the reported one the run's row: a stop or failure
    between them leaves a row whose other network is unevaluated, which the next invocation finishes
    (rather than publishing the row without it); a run without its own report is evaluated whole."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(json.dumps({"model": {"networks": ["unet", "mamba_unet"]}}))
    assert reproduce.unevaluated_networks(run) == ["net1", "net2"]  # no checkpoint: evaluate names the missing one
    for net in ("net1", "net2"):
        (run / f"best_{net}.pth").write_bytes(b"")
    assert reproduce.unevaluated_networks(run) == ["net1", "net2"]
    test = run / "metrics" / "test"
    for report in ("summary.json", "net1/summary.json"):  # net1 reported and done, net2 stopped
        (test / report).parent.mkdir(parents=True, exist_ok=True)
        (test / report).write_text("{}")
    assert reproduce.unevaluated_networks(run) == ["net2"]
    (test / "net2").mkdir()
    (test / "net2" / "summary.json").write_text("{}")
    assert reproduce.unevaluated_networks(run) == []
    (test / "summary.json").unlink()
    assert reproduce.unevaluated_networks(run) == ["net1", "net2"]
    (run / "config.yaml").write_text(json.dumps({"model": {"networks": ["unet"]}}))
    (test / "summary.json").write_text("{}")  # one network: its report is the run's
    assert reproduce.unevaluated_networks(run) == []


def test_a_row_of_a_diagnostics_config_publishes_under_results_diagnostics(reproduce, tmp_path, monkeypatch,
                                                                            capsys):
    config = phantom_row(tmp_path, tmp_path / "configs" / "diagnostics" / "row.yaml", "diag_row", batch_size=2)
    monkeypatch.setattr(reproduce, "pack_dtype", lambda root: None)
    results = tmp_path / "results"
    reproduce.main(["run", str(config), "--runs", str(tmp_path / "runs"), "--results", str(results), "--commit", "abc"])
    assert f"published {results / 'diagnostics' / 'diag_row'}" in capsys.readouterr().out
    assert json.loads((results / "diagnostics" / "diag_row" / "provenance.json").read_text())["diagnostic"] is True
    assert not (results / "diag_row").exists()


def test_a_data_parallel_row_says_so_in_the_provenance_table(reproduce, tmp_path):
    (tmp_path / "ddp").mkdir()
    (tmp_path / "ddp" / "provenance.json").write_text(json.dumps(
        {"iterations": 10, "wall_time_s": 60.0, "images_per_s": 80.0, "processes": 2}))
    assert "| ddp | 10 | ? | 1.0 min on 2 GPUs | 80 |" in reproduce.provenance_table([tmp_path / "ddp"])


def test_rows_are_spread_over_the_gpus_and_give_them_back(reproduce, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    slots = reproduce.GpuSlots(2)
    with slots.take() as a, slots.take() as b, slots.take() as c:
        assert [a["CUDA_VISIBLE_DEVICES"], b["CUDA_VISIBLE_DEVICES"], c["CUDA_VISIBLE_DEVICES"]] == ["0", "1", "0"]
    assert slots.busy == [0, 0]
    with slots.take() as d:
        assert d["CUDA_VISIBLE_DEVICES"] == "0" and "PATH" in d  # the rest of the environment is kept


def test_rows_stay_on_the_gpus_their_caller_was_given(reproduce, monkeypatch):
    """A lease lane on GPUs 2,3 runs `--gpus 2`: its rows must train there, not on GPUs 0 and 1 (the
    rows' CUDA_VISIBLE_DEVICES replaces the lane's), and it cannot spread over more than it was given."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    with reproduce.GpuSlots(2, per_row=2).take() as pair:
        assert pair["CUDA_VISIBLE_DEVICES"] == "2,3"
    slots = reproduce.GpuSlots(2)
    with slots.take() as a, slots.take() as b:
        assert (a["CUDA_VISIBLE_DEVICES"], b["CUDA_VISIBLE_DEVICES"]) == ("2", "3")
    with pytest.raises(SystemExit, match="CUDA_VISIBLE_DEVICES=2,3 leaves only 2"):
        reproduce.GpuSlots(4)


def test_a_stop_request_reaches_running_rows_and_starts_no_more(reproduce, tmp_path):
    """SIGTERM / SIGINT to reproduce.py (a device call's time limit): running trainings get SIGTERM,
    on which they write last.pt and end; rows not yet started are not started."""
    import subprocess
    import sys
    import threading

    ready = tmp_path / "ready"
    child = ("import pathlib, signal, sys, time\n"
             "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
             f"pathlib.Path({str(ready)!r}).touch()\n"
             "time.sleep(60)\n")
    errors = []

    def run():
        try:
            reproduce.run_child([sys.executable, "-c", child], subprocess.DEVNULL, None)
        except subprocess.CalledProcessError as exc:
            errors.append(exc.returncode)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        for _ in range(600):
            if ready.exists():
                break
            threading.Event().wait(0.05)
        reproduce.request_stop()
        worker.join(timeout=30)
        assert errors == [7], "the running command did not get SIGTERM"
        with pytest.raises(reproduce.RowsStopped):
            reproduce.run_child([sys.executable, "-c", "pass"], subprocess.DEVNULL, None)
    finally:
        reproduce._STOP.clear()


def test_published_metrics_are_gzipped_and_still_drawn(reproduce, tmp_path, monkeypatch):
    """A row's per-step log goes into results/ gzipped and thinned (every validation, every 10th
    training step: a 30k-iteration row's full log is ~7 MB as text), replaces a plain copy left by an
    earlier publication, and the training-curve reader takes either form."""
    import gzip

    from ssl_mamba.metrics.figures import read_scalars

    run_dir = tmp_path / "runs" / "acdc_fully_unet"
    shutil.copytree(REPO / "results" / "acdc_fully_unet", run_dir)
    text = gzip.decompress((run_dir / reproduce.METRICS_GZ).read_bytes()).decode()
    (run_dir / reproduce.METRICS_GZ).unlink()
    (run_dir / reproduce.METRICS).write_text(text)
    dest = tmp_path / "results" / "acdc_fully_unet"
    dest.mkdir(parents=True)
    (dest / reproduce.METRICS).write_text("stale\n")
    monkeypatch.setattr(reproduce, "pack_dtype", lambda root: "uint8")
    reproduce.publish(run_dir, tmp_path / "results", "abc", 10000, "3" * 64)
    assert not (dest / reproduce.METRICS).exists()
    published = gzip.decompress((dest / reproduce.METRICS_GZ).read_bytes()).decode()
    assert published == reproduce.thinned_log(text, reproduce.METRICS_EVERY)
    from_plain, from_gz = read_scalars(run_dir), read_scalars(dest)
    assert from_plain.keys() == from_gz.keys()
    assert from_gz["loss/seg"][0] == list(range(10, 10001, 10)), "every 10th training step"
    assert from_gz["val/net1/dice"] == from_plain["val/net1/dice"], "every validation"
    kept = dict(zip(*from_plain["loss/seg"]))
    assert from_gz["loss/seg"][1] == [kept[step] for step in from_gz["loss/seg"][0]]
    assert json.loads((dest / "provenance.json").read_text())["metrics_every"] == 10


def test_cuda_graphs_flag_graphs_each_row_whose_method_allows_it(reproduce, capsys):
    """One command for every row of a table: co_training (its student runs twice per iteration) keeps
    eval graphs only, and says so; the others get train graphs too.  The 30k ICT row had failed at its
    first iteration when train.cuda_graphs was passed to every row."""
    assert reproduce.graph_overrides("mean_teacher") == ["train.cuda_graphs=true", "eval.cuda_graphs=true"]
    assert reproduce.graph_overrides("ict") == ["train.cuda_graphs=true", "eval.cuda_graphs=true"]
    assert reproduce.graph_overrides("co_training") == ["eval.cuda_graphs=true"]
    assert "'co_training' runs a student twice" in capsys.readouterr().out
