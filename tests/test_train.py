"""End to end: the CLI trains, evaluates, resumes and fails cleanly on a tiny dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from promptviz.cli import main
from promptviz.evaluate import aggregate, harmonic_mean
from promptviz.methods.coop import CoOp
from promptviz.train import TrainConfig, lr_at, run


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


def _interrupted(cfg: dict, out, monkeypatch) -> None:
    """Run ``cfg`` into ``out`` and stop it in its second epoch (3 steps per epoch)."""
    calls = {"n": 0}
    original = CoOp.loss_from

    def flaky(self, feats, labels):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(self, feats, labels)

    monkeypatch.setattr(CoOp, "loss_from", flaky)
    with pytest.raises(KeyboardInterrupt):
        run(TrainConfig(out=str(out), **cfg))
    monkeypatch.setattr(CoOp, "loss_from", original)
    assert (out / "resume.pt").is_file() and not (out / "results.json").exists()


def test_resume_after_interruption_matches_uninterrupted(tiny_root, tmp_path, monkeypatch):
    cfg = dict(method="coop", backbone="pv-tiny", dataset="dtd", data_root=str(tiny_root),
               shots=4, epochs=3, batch_size=4, progress=False)
    full = run(TrainConfig(out=str(tmp_path / "full"), **cfg))
    out = tmp_path / "broken"
    _interrupted(cfg, out, monkeypatch)
    resumed = run(TrainConfig(out=str(out), **cfg))
    a = load_file(tmp_path / "full" / "model.safetensors")["prompt.ctx"]
    b = load_file(out / "model.safetensors")["prompt.ctx"]
    assert torch.equal(a, b)
    assert resumed["base_acc"] == full["base_acc"] and resumed["new_acc"] == full["new_acc"]


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


def test_schedule_warmup_then_cosine():
    cfg = TrainConfig(method="coop", epochs=10, lr=0.002).resolved()
    assert lr_at(0, cfg) == 1e-5
    assert lr_at(1, cfg) == pytest.approx(0.5 * 0.002 * (1 + torch.cos(torch.tensor(0.1 *
                                                                                   3.14159265))))
    assert lr_at(9, cfg) < lr_at(5, cfg) < lr_at(1, cfg)


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
    """The cached views depend on the seed only, so a resumed run sees the same views."""
    cfg = dict(method="coop", backbone="pv-tiny", dataset="dtd", data_root=str(tiny_root),
               shots=4, epochs=2, batch_size=4, progress=False, cache_views=2)
    run(TrainConfig(out=str(tmp_path / "a"), **cfg))
    run(TrainConfig(out=str(tmp_path / "b"), **{**cfg, "epochs": 1}))
    assert not (tmp_path / "b" / "resume.pt").exists()
