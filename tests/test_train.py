"""Tests for model.train and model.evaluate: training, stage 2, the CLI on every data layout."""

import copy
import csv
import json

import numpy as np
import pytest
import torch

from model import evaluate as evaluate_cli
from model import train
from model.bundle import load_bundle
from model.data import OCTDataset, phantom_samples, write_phantom_folders
from model.network import AICNet3D
from model.phantoms import phantom_set

GRID = (16, 24, 16)
NORM = {"kind": "scale", "divisor": 255.0}
TINY = ["--grid", "16", "24", "16", "--channels", "8", "--epochs", "1", "--batch-size", "4",
        "--eval-resamples", "50", "--no-progress"]


def _loaders(n=8, seed=0):
    samples = phantom_samples(n, seed, shape=GRID)
    ds = OCTDataset(samples, GRID, NORM)
    return (train.make_loader(ds, 4, shuffle=True, seed=seed),
            train.make_loader(ds, 4, shuffle=False, seed=seed))


def test_short_training_lowers_training_loss():
    train.seed_everything(0)
    train_loader, eval_loader = _loaders()
    net = AICNet3D(channels=8, input_size=GRID)
    result = train.train_stage(net, train_loader, eval_loader, stage=1, epochs=8, lr=1e-3)
    losses = [h["train_loss"] for h in result.history]
    assert min(losses[-3:]) < losses[0] - 0.05
    assert result.best_epoch >= 1 and result.epochs_run == 8
    assert all(h["val_loss"] == h["val_loss"] for h in result.history)  # finite, logged


def test_validation_is_eval_mode_and_no_grad():
    """D4: validation neither updates BN statistics nor builds a graph."""
    _, loader = _loaders(4)
    net = AICNet3D(channels=8, input_size=GRID)
    before = copy.deepcopy(net.state_dict())
    out = train.validate(net, loader, torch.device("cpu"))
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=k)
    assert not net.training and 0 <= out["accuracy"] <= 1


def test_early_stopping_and_best_checkpoint(tmp_path):
    train.seed_everything(1)
    train_loader, eval_loader = _loaders(4, seed=1)
    net = AICNet3D(channels=8, input_size=GRID)
    result = train.train_stage(net, train_loader, eval_loader, stage=1, epochs=30, patience=2,
                               lr=1e-2, run_dir=tmp_path)
    assert result.epochs_run < 30  # stopped early
    assert result.epochs_run - result.best_epoch == 2
    ckpt = torch.load(tmp_path / "stage1_best.pt", weights_only=True)
    assert ckpt["epoch"] == result.best_epoch and ckpt["val_loss"] == result.best_val_loss
    for k, v in net.state_dict().items():  # the best weights are restored
        torch.testing.assert_close(v, ckpt["state_dict"][k])
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert len(history) == result.epochs_run


def test_stage2_changes_consistency():
    train.seed_everything(0)
    train_loader, eval_loader = _loaders()
    net = AICNet3D(channels=8, input_size=GRID)
    train.train_stage(net, train_loader, eval_loader, stage=1, epochs=4, lr=1e-3)
    stage1 = copy.deepcopy(net.state_dict())
    result = train.train_stage(net, train_loader, eval_loader, stage=2, epochs=4, lr=1e-3,
                               consistency="mse", patience=100)
    cons = [h["train_cons_loss"] for h in result.history]
    assert cons[-1] < 0.5 * cons[0]  # the consistency term is being minimised
    assert all(h["train_loss"] == pytest.approx(0.25 * h["train_cls_loss"]
                                                + 0.75 * h["train_cons_loss"], rel=1e-4)
               for h in result.history)
    assert any(not torch.equal(v, stage1[k]) for k, v in net.state_dict().items())


@pytest.mark.parametrize("criterion", ["pearson", "ssim", "kl"])
def test_stage2_runs_with_every_criterion(criterion):
    train.seed_everything(0)
    train_loader, eval_loader = _loaders(4)
    net = AICNet3D(channels=8, input_size=GRID)
    result = train.train_stage(net, train_loader, eval_loader, stage=2, epochs=1, lr=1e-3,
                               consistency=criterion)
    h = result.history[0]
    assert np.isfinite(h["train_cons_loss"]) and h["train_cons_loss"] > 0
    assert np.isfinite(h["val_cons_loss"])


def _check_run(run_dir, bundle=None, *, phantoms=False):
    for name in ("history.jsonl", "split.json", "stage1_best.pt", "stage2_best.pt",
                 "evaluation.json", "evaluation.png", "train.log"):
        assert (run_dir / name).is_file(), name
    split = json.loads((run_dir / "split.json").read_text())
    patients = {k: {s["patient_id"] for s in v} for k, v in split["samples"].items()}
    assert not (patients["train"] & patients["test"]) and not (patients["val"] & patients["test"])
    assert not (patients["train"] & patients["val"])
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert evaluation["final_stage"] == 2
    assert set(evaluation["stages"]) == {"stage1", "stage2"}
    for report in evaluation["stages"].values():
        assert {"auroc", "ece", "balanced_accuracy"} <= set(report["metrics"])
        assert len(report["metrics"]["auroc"]["ci95"]) == 2
        assert (report["interpretability"] is not None) == phantoms
    stages = [json.loads(line)["stage"] for line in (run_dir / "history.jsonl").open()]
    assert stages == [1, 2]
    if bundle is not None:
        net, meta = load_bundle(bundle)
        assert meta.input_grid == GRID and meta.consistency == {"criterion": "mse", "weight": 0.75}
        assert meta.evaluation["held_out_test_split"]["metrics"]["auroc"]["ci95"]
        assert (bundle / "docs" / "evaluation.png").is_file()
    return evaluation


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        train.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--zenodo", "--glaucoma", "--dicom", "--phantoms", "--consistency",
                   "--bundle-out", "--patience", "--init"):
        assert option in text


@pytest.mark.parametrize(
    "argv, message",
    [([], "exactly one data source"),
     (["--phantoms", "4", "--zenodo", "x"], "exactly one data source"),
     (["--glaucoma", "x"], "go together"),
     (["--phantoms", "4", "--stage", "2"], "--init"),
     (["--phantoms", "4", "--grid", "16", "20", "16"], "divide by 8")],
)
def test_cli_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        train.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_phantoms_with_bundle_and_evaluate(tmp_path, capsys):
    run_dir, bundle = tmp_path / "run", tmp_path / "bundle"
    train.main(["--phantoms", "12", "--out", str(run_dir), "--bundle-out", str(bundle), *TINY])
    evaluation = _check_run(run_dir, bundle, phantoms=True)
    interp = evaluation["stages"]["stage2"]["interpretability"]
    assert 0 <= interp["care_thinned_hemiretina_fraction"] <= 1
    # The separate evaluation command on a fresh phantom set.
    out = tmp_path / "eval"
    assert evaluate_cli.main(["--bundle", str(bundle), "--phantoms", "6", "--seed", "99",
                              "--out", str(out), "--resamples", "50"]) == 0
    report = json.loads((out / "evaluation.json").read_text())
    assert report["n"] == 6 and report["phantoms"]["seed"] == 99
    assert report["interpretability"]["n_glaucoma_phantoms"] == 3
    assert (out / "evaluation.png").is_file()
    assert "| auroc |" in capsys.readouterr().out
    # --checkpoint evaluates the stage-1 weights (the model before fine-tuning) on the same set.
    out1 = tmp_path / "eval_stage1"
    assert evaluate_cli.main(["--bundle", str(bundle), "--phantoms", "6", "--seed", "99",
                              "--out", str(out1), "--resamples", "50",
                              "--checkpoint", str(run_dir / "stage1_best.pt")]) == 0
    stage1 = json.loads((out1 / "evaluation.json").read_text())
    assert stage1["checkpoint"].endswith("stage1_best.pt")
    probabilities = [
        [json.loads(line)["probability"] for line in (d / "evaluation_per_volume.jsonl").open()]
        for d in (out, out1)
    ]
    assert probabilities[0] != probabilities[1]
    # --signs: the same eyes with the cup sign only; no phantom has a thinned hemiretina.
    out_cup = tmp_path / "eval_cup"
    assert evaluate_cli.main(["--bundle", str(bundle), "--phantoms", "6", "--seed", "99",
                              "--out", str(out_cup), "--resamples", "50", "--signs", "cup"]) == 0
    cup = json.loads((out_cup / "evaluation.json").read_text())
    assert cup["phantoms"]["signs"] == ["cup"] and cup["interpretability"] is None
    assert report["phantoms"]["signs"] == ["thinning", "cup"]


def test_cli_is_reproducible(tmp_path):
    for name in ("a", "b"):
        train.main(["--phantoms", "8", "--stage", "1", "--seed", "3", "--out",
                    str(tmp_path / name), *TINY])
    ha = [json.loads(line) for line in (tmp_path / "a" / "history.jsonl").open()]
    hb = [json.loads(line) for line in (tmp_path / "b" / "history.jsonl").open()]
    assert ha[0]["train_loss"] == pytest.approx(hb[0]["train_loss"], rel=1e-6)
    split_a, split_b = ((tmp_path / n / "split.json").read_text() for n in ("a", "b"))
    assert split_a == split_b


def test_cli_zenodo_layout(tmp_path):
    data = tmp_path / "zenodo"
    data.mkdir()
    phantoms = list(phantom_set(12, seed=4, shape=(16, 32, 16)))
    for i, p in enumerate(phantoms):  # two eyes per patient, Zenodo names
        label = "POAG" if p.glaucoma else "Normal"
        eye = "OD" if p.laterality == "R" else "OS"
        patient = 100 + i // 2 if p.glaucoma else 200 + i // 2
        np.save(data / f"{label}-{patient:06d}-2012-02-0{i % 9 + 1}-{eye}.npy", p.volume)
    run_dir = tmp_path / "run"
    train.main(["--zenodo", str(data), "--out", str(run_dir), *TINY])
    _check_run(run_dir)
    split = json.loads((run_dir / "split.json").read_text())
    assert split["source"]["kind"] == "zenodo"
    assert sum(c["volumes"] for c in split["counts"].values()) == 12


def test_cli_two_folders_with_yaml_config(tmp_path):
    glaucoma, normal = write_phantom_folders(tmp_path / "data", 12, seed=5, shape=GRID)
    config = tmp_path / "train.yaml"
    config.write_text(f"glaucoma: {glaucoma}\nnormal: {normal}\nchannels: 8\n"
                      "grid: [16, 24, 16]\nepochs: 1\neval_resamples: 50\nno_progress: true\n")
    run_dir = tmp_path / "run"
    train.main(["--config", str(config), "--out", str(run_dir)])
    _check_run(run_dir)
    log = (run_dir / "train.log").read_text()
    assert '"channels": 8' in log


def test_cli_yaml_unknown_key(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("phantoms: 4\nlearning_rate: 0.1\n")
    with pytest.raises(SystemExit):
        train.parse_args(["--config", str(config)])
    assert "learning_rate" in capsys.readouterr().err


def test_cli_dicom_layout(tmp_path):
    from monai_app.sample_study import phantom_to_opt_dataset

    folder = tmp_path / "dicom"
    folder.mkdir()
    rows = []
    for i, p in enumerate(phantom_set(12, seed=6, shape=GRID)):
        ds = phantom_to_opt_dataset(
            p, patient_id=f"PAT{i}", patient_name=f"Test^{i}", patient_birth_date="19600101",
            patient_sex="O", study_instance_uid=f"1.2.826.0.1.3680043.8.498.7{i}", study_id="1",
            accession_number=f"A{i}", series_number=1)
        ds.save_as(folder / f"{i:02d}.dcm", enforce_file_format=True)
        rows.append((str(ds.SeriesInstanceUID), int(p.glaucoma), f"P{i // 2}"))
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as f:
        csv.writer(f).writerows([("SeriesInstanceUID", "label", "patient_id"), *rows])
    run_dir = tmp_path / "run"
    train.main(["--dicom", str(folder), "--labels", str(labels), "--out", str(run_dir), *TINY])
    _check_run(run_dir)
    split = json.loads((run_dir / "split.json").read_text())
    assert {s["patient_id"] for ss in split["samples"].values() for s in ss} == \
        {f"P{i}" for i in range(6)}


def test_cli_stage2_from_stage1_checkpoint(tmp_path):
    run1, run2 = tmp_path / "s1", tmp_path / "s2"
    train.main(["--phantoms", "8", "--stage", "1", "--out", str(run1), *TINY])
    train.main(["--phantoms", "8", "--stage", "2", "--init", str(run1 / "stage1_best.pt"),
                "--consistency", "pearson", "--out", str(run2), *TINY])
    evaluation = json.loads((run2 / "evaluation.json").read_text())
    assert evaluation["final_stage"] == 2 and set(evaluation["stages"]) == {"stage1", "stage2"}
    s1 = torch.load(run1 / "stage1_best.pt", weights_only=True)["state_dict"]
    s2 = torch.load(run2 / "stage2_best.pt", weights_only=True)["state_dict"]
    assert any(not torch.equal(s1[k], s2[k]) for k in s1)


def test_demo_training_config_parses():
    """The Makefile's `make demo-model` config is a valid set of options."""
    from pathlib import Path

    config = Path(__file__).parents[1] / "model" / "bundles" / "demo_training.yaml"
    args = train.parse_args(["--config", str(config)])
    assert args.phantoms >= 200 and args.stage == "both"
    assert tuple(args.grid) == (64, 96, 56) and args.consistency == "mse"
    assert args.bundle_out == Path("model/bundles/aicnet3d_demo")


def test_phantom_signs_option_selects_the_training_phantoms():
    args = train.parse_args(["--phantoms", "4", "--phantom-signs", "cup", "--seed", "2", *TINY])
    samples, source = train.load_samples(args)
    assert source["signs"] == ["cup"]
    # Cup only: nothing is thinned, so no sample carries a thinned hemiretina.
    assert sum(s.label for s in samples) == 2
    assert all(s.thinned_hemiretina is None for s in samples)
    default, source = train.load_samples(train.parse_args(["--phantoms", "4", *TINY]))
    assert "signs" not in source  # the default leaves the bundle metadata as before
    assert any(s.thinned_hemiretina for s in default)


def test_thinning_only_experiment_differs_from_the_demo_recipe_only_in_its_signs():
    """The controlled experiment behind the README's interpretability figures."""
    from pathlib import Path

    root = Path(__file__).parents[1]
    demo = vars(train.parse_args(["--config", str(root / "model/bundles/demo_training.yaml")]))
    experiment = vars(train.parse_args(
        ["--config", str(root / "bench/experiments/thinning_only_training.yaml")]))
    differ = {key for key in demo if demo[key] != experiment[key]}
    assert differ == {"config", "phantom_signs", "out", "bundle_out", "bundle_version"}
    assert experiment["phantom_signs"] == ["thinning"]
