"""End to end: the CLI trains, evaluates, resumes and fails cleanly on a tiny dataset."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from promptviz.cli import main
from promptviz.data import load_dataset, subsample_classes
from promptviz.errors import Diverged
from promptviz.methods.coop import CoOp
from promptviz.metrics import aggregate, harmonic_mean
from promptviz.train.loop import TrainConfig, lr_at, optimizer_steps, run


def _train(root: Path, out: Path, *extra: str) -> int:
    return main(["train", "--method", "coop", "--backbone", "pv-tiny", "--dataset", "dtd",
                 "--data-root", str(root), "--protocol", "base2new", "--shots", "4",
                 "--seed", "1", "--out", str(out), "--epochs", "2", "--quiet", *extra])


def test_cli_train_then_eval(tiny_root, tmp_path, capsys):
    out = tmp_path / "coop"
    assert _train(tiny_root, out) == 0
    res = json.loads((out / "results.json").read_text())
    for key in ("method", "backbone", "dataset", "protocol", "shots", "seed",
                "base_acc", "new_acc", "hm"):
        assert key in res
    assert res["hm"] == pytest.approx(harmonic_mean(res["base_acc"], res["new_acc"]))
    assert (out / "model.safetensors").is_file() and not (out / "resume.pt").exists()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["classnames"] == ["red banded", "green banded", "blue banded"]
    assert list(load_file(out / "model.safetensors")) == ["prompt.ctx"]
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--data-root", str(tiny_root), "--json",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    again = json.loads(printed[printed.index("{"):])
    assert again["base_acc"] == res["base_acc"] and again["new_acc"] == res["new_acc"]


def test_fewshot_and_zeroshot(tiny_root, tmp_path):
    zs = run(TrainConfig(method="zeroshot", backbone="pv-tiny", dataset="dtd",
                         data_root=str(tiny_root), protocol="fewshot", shots=2,
                         out=str(tmp_path / "zs"), progress=False))
    assert 0 <= zs["acc"] <= 100 and zs["history"] == [] and zs["trainable_params"] == 0


def _interrupted(cfg: dict, out, monkeypatch, at: int = 5) -> None:
    """Run ``cfg`` into ``out`` and stop it at its ``at``-th step (3 steps per epoch: the 5th
    is in the second epoch, after ``resume.pt`` of epoch 1 was written)."""
    calls = {"n": 0}
    original = CoOp.loss

    def flaky(self, feats, labels):
        calls["n"] += 1
        if calls["n"] == at:
            raise KeyboardInterrupt
        return original(self, feats, labels)

    monkeypatch.setattr(CoOp, "loss", flaky)
    with pytest.raises(KeyboardInterrupt):
        run(TrainConfig(out=str(out), **cfg))
    monkeypatch.setattr(CoOp, "loss", original)
    assert (out / "resume.pt").is_file() and not (out / "results.json").exists()


def _counted_run(cfg: dict, out, monkeypatch) -> tuple[dict, int]:
    """``run`` that also counts the training steps it takes."""
    calls = {"n": 0}
    original = CoOp.loss

    def counted(self, feats, labels):
        calls["n"] += 1
        return original(self, feats, labels)

    monkeypatch.setattr(CoOp, "loss", counted)
    res = run(TrainConfig(out=str(out), **cfg))
    monkeypatch.setattr(CoOp, "loss", original)
    return res, calls["n"]


def _ctx(folder) -> torch.Tensor:
    return load_file(folder / "model.safetensors")["prompt.ctx"]


# Augmented views from pixels: a resumed run must restore the shuffle generator *and* the
# global RNG that draws the crops and flips to equal the uninterrupted run.
_RESUME_CFG = dict(method="coop", backbone="pv-tiny", dataset="dtd", shots=4, epochs=3,
                   batch_size=4, progress=False, feature_cache=False, augment=True)


def test_resume_trains_only_the_remaining_epochs_and_matches(tiny_root, tmp_path, monkeypatch):
    cfg = dict(_RESUME_CFG, data_root=str(tiny_root))
    full, full_steps = _counted_run(cfg, tmp_path / "full", monkeypatch)
    out = tmp_path / "broken"
    _interrupted(cfg, out, monkeypatch)
    resumed, steps = _counted_run(cfg, out, monkeypatch)
    assert (full_steps, steps) == (9, 6)           # epochs 2 and 3 only
    assert torch.equal(_ctx(tmp_path / "full"), _ctx(out))
    assert resumed["base_acc"] == full["base_acc"] and resumed["new_acc"] == full["new_acc"]
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]]


@pytest.mark.parametrize("part", ["state", "generator", "torch_rng"])
def test_resume_uses_the_saved_state_and_rng(tiny_root, tmp_path, monkeypatch, part):
    """Change one part of ``resume.pt``: the resumed run must then differ from the
    uninterrupted one, so the equality above is not the determinism of a restart."""
    cfg = dict(_RESUME_CFG, data_root=str(tiny_root))
    run(TrainConfig(out=str(tmp_path / "full"), **cfg))
    out = tmp_path / "broken"
    _interrupted(cfg, out, monkeypatch)
    saved = torch.load(out / "resume.pt", weights_only=True)
    if part == "state":
        saved["state"]["prompt.ctx"] += 0.05
    elif part == "generator":
        saved["generator"] = torch.Generator().manual_seed(12345).get_state()
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(12345)
            saved["torch_rng"] = torch.get_rng_state()
    torch.save(saved, out / "resume.pt")
    run(TrainConfig(out=str(out), **cfg))
    assert not torch.equal(_ctx(tmp_path / "full"), _ctx(out))


def test_resume_loads_to_cpu_whatever_the_device(tiny_root, tmp_path, monkeypatch):
    """On a GPU, ``map_location=<device>`` put the saved RNG states on the GPU and
    ``set_rng_state`` raised. Stand-in: every load that maps anywhere but the CPU lands on
    the meta device here, so only a CPU load resumes."""
    cfg = dict(_RESUME_CFG, data_root=str(tiny_root))
    out = tmp_path / "run"
    _interrupted(cfg, out, monkeypatch)
    real_load = torch.load

    def gpu_like_load(path, *args, map_location=None, **kw):
        if map_location != "cpu":
            map_location = "meta"
        return real_load(path, *args, map_location=map_location, **kw)

    monkeypatch.setattr(torch, "load", gpu_like_load)
    with pytest.raises(TypeError, match="ByteTensor"):     # what the old code met on a GPU
        torch.set_rng_state(torch.load(out / "resume.pt", map_location=torch.device("cpu"),
                                       weights_only=True)["torch_rng"])
    res, steps = _counted_run(cfg, out, monkeypatch)
    assert steps == 6 and "base_acc" in res


def test_resume_refuses_to_run_pickled_code(tiny_root, tmp_path, capsys):
    """``resume.pt`` lives in a user's --out folder: it is loaded with weights_only."""
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"epoch": 1, "payload": Payload()}, out / "resume.pt")
    assert main(["train", "--method", "coop", "--backbone", "pv-tiny", "--dataset", "dtd",
                 "--data-root", str(tiny_root), "--out", str(out), "--epochs", "1",
                 "--shots", "4", "--quiet"]) == 2
    assert not marker.exists()
    assert "resume.pt is unreadable" in capsys.readouterr().err


def test_no_resume_onto_other_backbone_weights(tiny_root, tmp_path, monkeypatch, capsys):
    import open_clip

    from promptviz.backbone import load_clip, save_clip
    weights = tmp_path / "tiny.safetensors"         # the same --backbone path, new weights
    save_clip(load_clip("pv-tiny", seed=0).model, weights, open_clip.get_model_config("pv-tiny"),
              half=False)
    cfg = dict(method="coop", backbone=str(weights), dataset="dtd", data_root=str(tiny_root),
               shots=4, epochs=3, batch_size=4, progress=False)
    _interrupted(cfg, tmp_path / "run", monkeypatch)
    save_clip(load_clip("pv-tiny", seed=1).model, weights, open_clip.get_model_config("pv-tiny"),
              half=False)
    capsys.readouterr()
    run(TrainConfig(out=str(tmp_path / "run"), **cfg))
    said = capsys.readouterr().out
    assert "other settings or backbone weights; training from scratch" in said
    assert "resuming" not in said


def test_schedule_is_dassls_warmup_then_cosine_from_the_full_rate():
    """Dassl's constant warm-up wrapper hands over to a cosine that has not stepped yet, so
    the epoch after the warm-up runs at the full rate (values read from Dassl's scheduler)."""
    cfg = TrainConfig(method="coop", epochs=10, lr=0.002).resolved()
    got = [lr_at(e, cfg) for e in range(10)]
    want = [1e-5, 0.002, 0.001951, 0.001809, 0.001588, 0.001309, 0.001, 0.000691, 0.000412,
            0.000191]
    assert got == pytest.approx(want, abs=1e-6)
    # the same from torch's own cosine scheduler, wrapped the way Dassl wraps it
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.002)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    dassl = [1e-5, opt.param_groups[0]["lr"]]
    for _ in range(8):
        opt.step()                          # an epoch's steps, then the scheduler's
        cosine.step()
        dassl.append(opt.param_groups[0]["lr"])
    assert got == pytest.approx(dassl, rel=1e-9)
    # no warm-up when there is a single epoch
    one = TrainConfig(method="coop", epochs=1, lr=0.002).resolved()
    assert lr_at(0, one) == 0.002


def test_aggregate_mean_std():
    agg = aggregate([{"seed": 1, "base_acc": 80.0, "new_acc": 60.0, "hm": 68.0},
                     {"seed": 2, "base_acc": 82.0, "new_acc": 62.0, "hm": 70.0}])
    assert agg["base_acc"] == 81.0 and agg["base_acc_std"] == pytest.approx(2 ** 0.5)
    assert agg["seeds"] == [1, 2] and "acc" not in agg


# ----------------------------------------------------------------- user errors
def _fails(capsys, argv: list[str], words: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and words.lower() in last.lower() and "Traceback" not in err


@pytest.mark.parametrize("flag, value, words", [
    ("--method", "coop2", "unknown method"),
    ("--dataset", "no_such_set", "unknown dataset"),
    ("--backbone", "no-such-clip", "unknown backbone"),
    ("--device", "tpu", "unknown device"),
    ("--set", "n_ctx", "not key=value"),
])
def test_bad_train_arguments(tiny_root, tmp_path, capsys, flag, value, words):
    args = ["train", "--method", "coop", "--backbone", "pv-tiny", "--dataset", "dtd",
            "--data-root", str(tiny_root), "--out", str(tmp_path / "o"), "--epochs", "1",
            "--quiet"]
    i = args.index(flag) if flag in args else len(args)
    args[i:i + 2] = [flag, value]
    _fails(capsys, args, words)
    assert not (tmp_path / "o" / "results.json").exists()


def test_missing_data_root(tmp_path, capsys):
    _fails(capsys, ["train", "--method", "coop", "--backbone", "pv-tiny", "--dataset", "dtd",
                    "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")],
           "does not exist")
    assert not (tmp_path / "o" / "results.json").exists()


def test_class_specific_context_refused_for_base2new_before_training(tiny_root, tmp_path,
                                                                     capsys):
    out = tmp_path / "csc"
    _fails(capsys, ["train", "--method", "coop", "--backbone", "pv-tiny", "--dataset", "dtd",
                    "--data-root", str(tiny_root), "--out", str(out), "--epochs", "1",
                    "--set", "class_specific=true", "--quiet"], "--protocol fewshot")
    assert not out.exists() or not any(out.iterdir())


def test_nan_loss_is_reported(tiny_root, tmp_path, capsys):
    out = tmp_path / "nan"
    _fails(capsys, ["train", "--method", "coop", "--backbone", "pv-tiny", "--dataset", "dtd",
                    "--data-root", str(tiny_root), "--out", str(out), "--epochs", "3",
                    "--lr", "1e38", "--quiet"], "--lr")
    assert not (out / "results.json").exists() and not (out / "model.safetensors").exists()


def test_eval_refuses_other_backbone_and_changed_classes(tiny_root, tmp_path, capsys):
    out = tmp_path / "ck"
    assert _train(tiny_root, out) == 0
    _fails(capsys, ["eval", "--checkpoint", str(out), "--data-root", str(tiny_root),
                    "--backbone", "toyclip"], "trained on backbone")
    changed = tmp_path / "changed"
    shutil.copytree(tiny_root, changed)
    split = changed / "dtd" / "split_zhou_DescribableTextures.json"
    data = json.loads(split.read_text())
    for rows in data.values():
        for row in rows:
            row[2] = row[2].replace("red_banded", "crimson_banded")
    split.write_text(json.dumps(data))
    _fails(capsys, ["eval", "--checkpoint", str(out), "--data-root", str(changed)],
           "other classes")
    _fails(capsys, ["eval", "--checkpoint", str(tmp_path / "nothing"), "--data-root",
                    str(tiny_root)], "no checkpoint")


@pytest.mark.parametrize("method", ["coop", "textrefiner"])
def test_feature_cache_equals_straightforward_path(tiny_root, tmp_path, method):
    """Without augmentation the cached path does the same maths in the same order."""
    cfg = dict(method=method, backbone="pv-tiny", dataset="dtd", data_root=str(tiny_root),
               shots=4, epochs=3, batch_size=4, augment=False, progress=False)
    fast = run(TrainConfig(out=str(tmp_path / "fast"), feature_cache=True, **cfg))
    slow = run(TrainConfig(out=str(tmp_path / "slow"), feature_cache=False, **cfg))
    a = load_file(tmp_path / "fast" / "model.safetensors")
    b = load_file(tmp_path / "slow" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert fast["base_acc"] == slow["base_acc"] and fast["new_acc"] == slow["new_acc"]
    assert [round(h["loss"], 4) for h in fast["history"]] == \
        [round(h["loss"], 4) for h in slow["history"]]


def test_resume_with_augmented_cache(tiny_root, tmp_path, monkeypatch):
    """The cached views depend on the seed only, so a resumed run sees the same views and
    trains only what is left."""
    cfg = dict(method="coop", backbone="pv-tiny", dataset="dtd", data_root=str(tiny_root),
               shots=4, epochs=3, batch_size=4, progress=False, cache_views=3, augment=True)
    full, _ = _counted_run(cfg, tmp_path / "a", monkeypatch)
    _interrupted(cfg, tmp_path / "b", monkeypatch)
    resumed, steps = _counted_run(cfg, tmp_path / "b", monkeypatch)
    assert steps == 6 and torch.equal(_ctx(tmp_path / "a"), _ctx(tmp_path / "b"))
    assert not (tmp_path / "b" / "resume.pt").exists()


def test_optimizer_steps_counts_what_training_takes(tiny_root, tmp_path, monkeypatch):
    cfg = dict(method="coop", backbone="pv-tiny", dataset="dtd", shots=4, epochs=2,
               data_root=str(tiny_root), progress=False)
    _, n = _counted_run({**cfg, "epochs": 1, "batch_size": 1}, tmp_path / "b1", monkeypatch)
    assert n > 3
    for batch in (3, n, n + 5):                  # a partial last batch, one exact, one too big
        _, steps = _counted_run({**cfg, "batch_size": batch}, tmp_path / f"b{batch}",
                                monkeypatch)
        assert steps == optimizer_steps(n, batch, 2), batch
    assert optimizer_steps(80, 32, 10) == 20 and optimizer_steps(80, 128, 100) == 100


def test_training_bar_shows_each_epochs_loss_and_accuracy(tiny_root, tmp_path, monkeypatch,
                                                         capsys):
    """With progress on, one bar counts the epochs and carries the last epoch's loss and
    training accuracy (read once an epoch, as the history logs them)."""
    monkeypatch.setenv("PROMPTVIZ_PROGRESS", "1")
    res = run(TrainConfig(method="coop", backbone="pv-tiny", dataset="dtd",
                          data_root=str(tiny_root), shots=2, epochs=2, progress=True,
                          out=str(tmp_path / "bar")))
    last = res["history"][-1]
    drawn = [line for line in re.split(r"[\r\n]", capsys.readouterr().err)
             if line.startswith("coop training")]
    assert any(" 2/2 " in line and f"loss={last['loss']:.3f}" in line
               and f"train acc={last['train_acc']:.1f}" in line for line in drawn), drawn


def test_on_epoch_sees_the_history_grow_and_live_curves_draw_it(tiny_root, tmp_path):
    """``run(on_epoch=...)`` is called after every epoch with the history so far; the
    notebooks' LiveCurves turn those calls into the learning-curve figure."""
    from promptviz.viz.notebook import LiveCurves
    curves = LiveCurves()
    assert curves.figure().layout.annotations[0].text == "no epoch finished yet"
    seen = []

    def on_epoch(history):
        seen.append([h["epoch"] for h in history])
        curves("CoOp")(history)

    res = run(TrainConfig(method="coop", backbone="pv-tiny", dataset="dtd",
                          data_root=str(tiny_root), shots=2, epochs=3, progress=False,
                          out=str(tmp_path / "live")), on_epoch=on_epoch)
    assert seen == [[1], [1, 2], [1, 2, 3]]
    fig = curves.figure()
    loss = next(t for t in fig.data if t.xaxis == "x")
    assert list(loss.x) == [1, 2, 3]
    assert list(loss.y) == pytest.approx([h["loss"] for h in res["history"]])


def test_a_run_saves_the_predictions_its_accuracies_come_from(tiny_root, tmp_path):
    """predictions.npz holds each evaluation set's top-1 predictions and labels; they score
    exactly the results' accuracies, and a failed rerun leaves no stale copy."""
    from promptviz.train.loop import PREDICTIONS, load_predictions
    out = tmp_path / "preds"
    cfg = TrainConfig(method="coop", backbone="pv-tiny", dataset="dtd",
                      data_root=str(tiny_root), shots=2, epochs=1, progress=False,
                      out=str(out))
    res = run(cfg)
    saved = load_predictions(out)
    assert set(saved) == {"base_acc", "new_acc"}
    ds = load_dataset("dtd", tiny_root)
    for key, half in (("base_acc", "base"), ("new_acc", "new")):
        preds, labels = saved[key]
        test = subsample_classes(ds, half).test
        assert list(labels) == [s.label for s in test]
        assert 100.0 * (preds == labels).mean() == pytest.approx(res[key])
    assert load_predictions(tmp_path / "nothing") is None
    with pytest.raises(Diverged):                  # fails after training started
        run(dataclasses.replace(cfg, epochs=2, lr=1e30), overwrite=True)
    assert not (out / PREDICTIONS).exists() and not (out / "results.json").exists()
