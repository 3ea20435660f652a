"""The on-disk feature cache: written once, read back exactly, keyed by what matters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode

import promptviz
import promptviz.train.inputs as pv_inputs
from promptviz.cli import main
from promptviz.train import featcache
from promptviz.train.inputs import TrainingInputs
from promptviz.train.loop import TrainConfig, run


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

    monkeypatch.setattr(TrainingInputs, "encode_views", no_encoding)
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
    monkeypatch.setattr("promptviz.train.featcache.atomic_write_text", full_disk)
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

    monkeypatch.setattr(TrainingInputs, "cached_views", no_cache)
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


# ------------------------------------------------------------------ library versions (§2.7)
@pytest.mark.parametrize("module, attr", [(promptviz, "__version__"), (torch, "__version__"),
                                          (open_clip, "__version__")])
def test_key_changes_with_library_versions(tiny_root, tiny_clip, module, attr, monkeypatch):
    """A new promptviz, torch or open_clip may compute the tower differently: new key."""
    from promptviz.data import load_dataset
    from promptviz.methods import build_method
    ds = load_dataset("dtd", str(tiny_root))
    method = build_method("coop", tiny_clip, ds.classnames, ds.template)
    cfg = _cfg(tiny_root, "unused", "unused").resolved()
    before = featcache.entry_key(*pv_inputs.cache_facts(method, ds, cfg))
    assert featcache.entry_key(*pv_inputs.cache_facts(method, ds, cfg)) == before      # stable
    monkeypatch.setattr(module, attr, getattr(module, attr) + ".post1")
    assert featcache.entry_key(*pv_inputs.cache_facts(method, ds, cfg)) != before


# ------------------------------------------------------------ the store in host memory (§2.3)
def _spy_views(monkeypatch):
    """Record what ``TrainingInputs.cached_views`` hands to the training loop."""
    seen = []
    original = TrainingInputs.cached_views

    def spy(self):
        seen.append(original(self))
        return seen[-1]

    monkeypatch.setattr(TrainingInputs, "cached_views", spy)
    return seen


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_textrefiner_store_is_on_the_host_narrow_only_where_exact(tiny_root, tmp_path,
                                                                  monkeypatch, precision):
    """The views live in host memory; under bf16 autocast TextRefiner's per-token features
    are kept in bf16 (half the bytes) and the training is bit-identical to the image path,
    because those tokens are bf16 numbers already. fp32 runs keep everything in fp32."""
    seen = _spy_views(monkeypatch)
    cfg = dict(method="textrefiner", epochs=2, shots=4, augment=False, precision=precision,
               select="last", cache_dir="")
    torch.manual_seed(0)
    fast = run(_cfg(tiny_root, tmp_path / "fast", "", **cfg))
    [views] = seen
    feats, labels = views[0]
    assert isinstance(feats, featcache.HostFeatures)
    assert all(t.device.type == "cpu" for t in feats.values()) and labels.device.type == "cpu"
    narrow = torch.bfloat16 if precision == "bf16" else torch.float32
    assert {k: t.dtype for k, t in feats.items()} == {
        "f": torch.float32, "tokens": narrow, "attn": torch.float32}
    assert set(feats.dtypes.values()) == {torch.float32}       # handed back as computed
    [(batch, _, _)] = list(pv_inputs.cached_batches(views[0], [0, 1, 2], 3, False))
    assert {k: t.dtype for k, t in batch.items()} == dict.fromkeys(feats, torch.float32)
    assert torch.equal(batch["tokens"], feats["tokens"][:3].float())
    torch.manual_seed(0)
    slow = run(_cfg(tiny_root, tmp_path / "slow", "", feature_cache=False, **cfg))
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in ("fast", "slow"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in fast["history"]] == [h["loss"] for h in slow["history"]]


class _DeviceTensors(TorchDispatchMode):
    """The largest floating tensor any op puts on the meta device (a stand-in for a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.device.type == "meta" and t.is_floating_point():
                self.largest = max(self.largest, t.numel())
        return out


def test_only_one_batch_at_a_time_reaches_the_device():
    """The store is allocated in host memory and a step's batch is the only part of it that
    goes to the training device (``meta`` stands in for a GPU here)."""
    n, tokens, d, batch = 10, 5, 4, 3
    store = featcache.ViewBuilder(n, torch.device("meta"))
    chunks = [{"f": torch.randn(b, d), "tokens": torch.randn(b, tokens, d)} for b in (4, 4, 2)]
    store.describe(chunks[0], torch.bfloat16)
    store.allocate()
    for i, chunk in enumerate(chunks):
        store.add(chunk, torch.arange(4 * i, 4 * i + len(chunk["f"])))
    feats, labels = store.view()
    assert all(t.device.type == "cpu" for t in feats.values())
    assert feats["tokens"].dtype == torch.bfloat16 and feats["f"].dtype == torch.float32
    assert torch.equal(feats["f"], torch.cat([c["f"] for c in chunks]))
    with _DeviceTensors() as seen:
        got = list(pv_inputs.cached_batches((feats, labels), list(range(n))[::-1], batch, False))
    assert [len(f["tokens"]) for f, _, _ in got] == [3, 3, 3, 1]
    assert all(f["tokens"].device.type == "meta" and f["tokens"].dtype == torch.float32
               for f, _, _ in got)
    assert 0 < seen.largest <= batch * tokens * d
    assert all(t.device.type == "cpu" for t in feats.values())


def test_store_size_is_estimated_before_it_is_built(tiny_root, tmp_path, monkeypatch):
    """images × views × bytes per image, known from the first chunk, is what the store
    takes; the default budget is half of the available host memory."""
    seen = _spy_views(monkeypatch)
    asked = []
    original = featcache.fits

    def fits(bytes_per_image, images, views):
        asked.append((bytes_per_image, images, views))
        return original(bytes_per_image, images, views)

    monkeypatch.setattr(featcache, "fits", fits)
    run(_cfg(tiny_root, tmp_path / "a", "", method="textrefiner", epochs=2, select="last"))
    [views] = seen
    [(per_image, images, n)] = asked
    assert (images, n) == (len(views[0][1]), len(views)) == (6, 2)
    held = sum(t.nbytes for feats, labels in views for t in [*feats.values(), labels])
    assert featcache.estimate_bytes(per_image, images, n) == held
    monkeypatch.delenv(featcache.BUDGET_ENV, raising=False)
    monkeypatch.setattr(featcache, "available_host_bytes", lambda: 10_000)
    assert featcache.host_budget() == 5_000
    monkeypatch.setenv(featcache.BUDGET_ENV, "2K")
    assert featcache.host_budget() == 2048
    monkeypatch.setenv(featcache.BUDGET_ENV, "lots")
    with pytest.raises(promptviz.PromptvizError, match="not a size"):
        featcache.host_budget()


def test_a_store_too_big_for_the_host_trains_from_the_images(tiny_root, tmp_path,
                                                             monkeypatch):
    """Over the budget: one warning, nothing cached, and the run is the uncached one."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(featcache.BUDGET_ENV, "1000")
    with pytest.warns(UserWarning, match=r"would take .* of host memory.*training from the "
                                         r"images instead") as caught:
        fast = run(_cfg(tiny_root, tmp_path / "a", cache))
    assert len([w for w in caught if "feature cache" in str(w.message)]) == 1
    assert featcache.entries(cache) == []
    monkeypatch.delenv(featcache.BUDGET_ENV)
    slow = run(_cfg(tiny_root, tmp_path / "b", cache, feature_cache=False))
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in fast["history"]] == [h["loss"] for h in slow["history"]]


def test_an_entry_is_read_back_memory_mapped(tiny_root, tmp_path):
    """Reading an entry maps the file: the views cost page cache, not private memory."""
    cache = tmp_path / "cache"
    run(_cfg(tiny_root, tmp_path / "a", cache, method="textrefiner", epochs=1, select="last"))
    [entry] = featcache.entries(cache)
    assert entry["stored_as"] == {"f": "torch.float32", "tokens": "torch.float32",
                                  "attn": "torch.float32"}
    path = cache / f"{entry['key']}.pt"
    views = featcache.load(cache, entry["key"], "cpu")
    assert str(path) in Path("/proc/self/maps").read_text()
    feats, _ = views[0]
    assert isinstance(feats, featcache.HostFeatures) and feats.device == torch.device("cpu")
    del views, feats


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_batches_reach_cuda_through_pinned_staging():
    n, batch = 50, 8
    feats = featcache.HostFeatures({"f": torch.randn(n, 6),
                                    "tokens": torch.randn(n, 5, 6).bfloat16()},
                                   "cuda", {"tokens": torch.float32})
    labels = torch.arange(n)
    order = torch.randperm(n).tolist()
    got = list(featcache.batches(feats, labels, order, batch, False))
    torch.cuda.synchronize()
    for j, (f, y, _) in enumerate(got):             # every batch intact after the epoch
        want = torch.tensor(order[j * batch:(j + 1) * batch])
        assert f["tokens"].is_cuda and f["tokens"].dtype == torch.float32
        assert torch.equal(f["tokens"].cpu(), feats["tokens"][want].float())
        assert torch.equal(f["f"].cpu(), feats["f"][want]) and torch.equal(y.cpu(), want)
    assert all(not t.is_cuda for t in feats.values())


def test_fingerprint_tells_gelu_from_quickgelu():
    """One state dict loaded as GELU and as QuickGELU: same weights, other features, so
    neither cached features nor a resume or a finished run may be shared between them."""
    from promptviz.backbone import register_configs
    from promptviz.train.featcache import weights_fingerprint
    register_configs()
    cfg = open_clip.get_model_config("pv-tiny")
    quick = open_clip.CLIP(**{**cfg, "quick_gelu": True})
    plain = open_clip.CLIP(**{**cfg, "quick_gelu": False})
    plain.load_state_dict(quick.state_dict())
    assert weights_fingerprint(quick) != weights_fingerprint(plain)
    again = open_clip.CLIP(**{**cfg, "quick_gelu": True})
    again.load_state_dict(quick.state_dict())
    assert weights_fingerprint(quick) == weights_fingerprint(again)
