"""The on-disk feature cache: written once, read back exactly, keyed by what matters."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from promptviz import featcache
from promptviz.cli import main
from promptviz.train import TrainConfig, run


def _cfg(root, out, cache, **kw):
    base = dict(method="coop", backbone="pv-tiny", dataset="dtd", data_root=str(root),
                shots=2, epochs=2, batch_size=4, progress=False, cache_views=2,
                out=str(out), cache_dir=str(cache))
    return TrainConfig(**{**base, **kw})


def test_second_run_reads_the_cache_and_trains_identically(tiny_root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = run(_cfg(tiny_root, tmp_path / "a", cache))
    [entry] = featcache.entries(cache)
    assert entry["views"] == 2 and entry["dataset"] == "dtd" and entry["features"] == "f"
    assert entry["images"] == 6 and entry["bytes"] > 0

    def no_encoding(*args, **kwargs):
        raise AssertionError("the image tower ran although the features were cached")

    monkeypatch.setattr("promptviz.train.encode_views", no_encoding)
    second = run(_cfg(tiny_root, tmp_path / "b", cache))
    assert (first["base_acc"], first["new_acc"]) == (second["base_acc"], second["new_acc"])
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # KgCoOp reads the same features from the tower: it shares CoOp's entry.
    run(_cfg(tiny_root, tmp_path / "c", cache, method="kgcoop"))
    assert len(featcache.entries(cache)) == 1


def test_key_changes_with_seed_views_method_features_and_weights(tiny_root, tmp_path):
    cache = tmp_path / "cache"
    run(_cfg(tiny_root, tmp_path / "a", cache))
    run(_cfg(tiny_root, tmp_path / "b", cache, seed=2))
    run(_cfg(tiny_root, tmp_path / "c", cache, cache_views=1))
    run(_cfg(tiny_root, tmp_path / "d", cache, method="textrefiner", epochs=1))
    kinds = sorted((e["seed"], e["views"], e["features"]) for e in featcache.entries(cache))
    assert kinds == [(1, 1, "f"), (1, 1, "f+tokens+attn"), (1, 2, "f"), (2, 2, "f")]
    from promptviz.backbone import load_clip
    clip = load_clip("pv-tiny")
    before = featcache.backbone_fingerprint(clip.model)
    with torch.no_grad():          # a change deep inside the tower, as a fine-tune makes
        clip.model.visual.transformer.resblocks[-1].mlp.c_fc.bias[0] += 1e-3
    assert featcache.backbone_fingerprint(clip.model) != before


def test_rebuilt_images_get_a_new_entry(tiny_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_root, data)
    cache = tmp_path / "cache"
    run(_cfg(data, tmp_path / "a", cache))
    for p in (data / "dtd" / "images").rglob("*.png"):   # touch every image: a rebuild
        p.write_bytes(p.read_bytes())
    run(_cfg(data, tmp_path / "b", cache))
    assert len(featcache.entries(cache)) == 2


def test_memory_only_and_no_cache_write_nothing(tiny_root, tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTVIZ_CACHE_DIR", str(tmp_path / "env-cache"))
    run(_cfg(tiny_root, tmp_path / "a", tmp_path / "x", cache_dir=""))
    run(_cfg(tiny_root, tmp_path / "b", tmp_path / "x", cache_dir=None, feature_cache=False))
    assert not (tmp_path / "env-cache").exists() and not (tmp_path / "x").exists()


def test_unreadable_entry_is_encoded_again(tiny_root, tmp_path):
    cache = tmp_path / "cache"
    first = run(_cfg(tiny_root, tmp_path / "a", cache))
    [entry] = featcache.entries(cache)
    (cache / f"{entry['key']}.pt").write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable.*encoding the images again"):
        second = run(_cfg(tiny_root, tmp_path / "b", cache))
    assert (first["base_acc"], first["new_acc"]) == (second["base_acc"], second["new_acc"])
    [again] = featcache.entries(cache)
    assert again["key"] == entry["key"] and featcache.load(cache, again["key"], "cpu")


def test_a_failed_write_leaves_nothing_and_trains_on(tiny_root, tmp_path, monkeypatch):
    blocked = tmp_path / "a-file"
    blocked.write_text("")                # the cache folder cannot be made under a file
    with pytest.warns(UserWarning, match="could not write the feature cache"):
        run(_cfg(tiny_root, tmp_path / "a", blocked / "cache"))
    assert (tmp_path / "a" / "results.json").is_file()

    def full_disk(path, text):
        raise OSError(28, "No space left on device")

    cache = tmp_path / "cache"
    monkeypatch.setattr("promptviz.featcache.atomic_write_text", full_disk)
    with pytest.warns(UserWarning, match="No space left"):
        run(_cfg(tiny_root, tmp_path / "b", cache))
    assert (tmp_path / "b" / "results.json").is_file() and list(cache.iterdir()) == []


def test_cli_lists_and_clears(tiny_root, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main(["train", "--method", "coop", "--backbone", "pv-tiny", "--dataset", "dtd",
                 "--data-root", str(tiny_root), "--shots", "2", "--epochs", "1",
                 "--out", str(tmp_path / "run"), "--cache-dir", str(cache), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["cache", "list", "--cache-dir", str(cache)]) == 0
    listed = capsys.readouterr().out
    assert "1 entries" in listed and "dtd" in listed and "pv-tiny" in listed
    meta = json.loads(next(cache.glob("*.json")).read_text())
    assert meta["backbone"] == "pv-tiny" and meta["shots"] == 2
    (cache / "results.json").write_text("{}")        # not the cache's: clear keeps it
    (cache / f".{meta['weights']}{'0' * 8}.pt.1-0123abcd.tmp").write_bytes(b"")  # a leftover
    assert main(["cache", "clear", "--cache-dir", str(cache)]) == 0
    assert "removed 3 files" in capsys.readouterr().out
    assert featcache.entries(cache) == [] and [p.name for p in cache.iterdir()] == ["results.json"]


def test_no_feature_cache_flag_trains_without_one(tiny_root, tmp_path, monkeypatch):
    def no_cache(*args, **kwargs):
        raise AssertionError("--no-feature-cache still built the cache")

    monkeypatch.setattr("promptviz.train.cached_views", no_cache)
    assert main(["train", "--method", "coop", "--backbone", "pv-tiny", "--dataset", "dtd",
                 "--data-root", str(tiny_root), "--shots", "2", "--epochs", "1",
                 "--out", str(tmp_path / "run"), "--no-feature-cache", "--quiet"]) == 0


def test_cache_root_follows_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("PROMPTVIZ_CACHE_DIR", raising=False)
    monkeypatch.setenv("PROMPTVIZ_CACHE", str(tmp_path / "pv"))
    assert featcache.cache_root() == tmp_path / "pv" / "features"
    monkeypatch.setenv("PROMPTVIZ_CACHE_DIR", str(tmp_path / "feats"))
    assert featcache.cache_root() == tmp_path / "feats"
    assert featcache.cache_root(str(tmp_path / "flag")) == tmp_path / "flag"
