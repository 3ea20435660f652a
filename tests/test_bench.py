"""``promptviz bench`` and the correctness of the optimised path it measures."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import load_file

from promptviz.backbone import Backbone
from promptviz.cli import main
from promptviz.methods import build_method
from promptviz.tools.bench.measure import count_attention, image_tower_macs
from promptviz.tools.bench.report import cache_estimate, format_bench, format_estimate
from promptviz.tools.bench.run import BenchConfig, bench_method
from promptviz.train.loop import TrainConfig, run


def _loss(m, images, labels):
    """One training loss from pixels: ``loss(inputs(images, train=True), labels)``."""
    return m.loss(m.inputs(images, train=True), labels)

TINY = ["--backbone", "pv-tiny", "--classes", "5", "--steps", "1", "--warmup", "1",
        "--batch-size", "4", "--eval-batch-size", "4", "--quiet"]
PHASE_KEYS = {"images_per_s", "seconds", "peak_mib"}


def test_bench_cli_writes_the_documented_json(tmp_path, capsys):
    out = tmp_path / "bench" / "bench.json"
    assert main(["bench", "--methods", "zeroshot", "coop", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "coop" in printed and "train×" in printed and f"wrote {out}" in printed
    res = json.loads(out.read_text())
    for key in ("schema", "backbone", "image_size", "classes", "device", "device_name",
                "torch", "open_clip", "steps", "warmup", "paths", "memory_metric",
                "attention", "image_tower_gmacs_per_image", "methods"):
        assert key in res, key
    assert res["backbone"] == "pv-tiny" and res["device"] == "cpu" and res["classes"] == 5
    assert res["torch"] == torch.__version__ and res["open_clip"] == open_clip.__version__
    zs, coop = res["methods"]
    assert [zs["method"], coop["method"]] == ["zeroshot", "coop"]
    for row in res["methods"]:
        assert row["batch_size"] == 4 and set(row["ratios"]) == {
            "train", "train_amortised", "eval", "train_memory", "eval_memory"}
        for path in ("optimised", "straightforward"):
            assert PHASE_KEYS <= set(row[path]["eval"]) and row[path]["dtype"] == "float32"
            assert row[path]["eval"]["images_per_s"] > 0
    assert zs["optimised"]["train"] is None and zs["ratios"]["train"] is None
    fast, slow = coop["optimised"], coop["straightforward"]
    assert fast["train"]["feature_cache"] and not slow["train"]["feature_cache"]
    assert fast["eval"]["text"] == "once per evaluation" and slow["eval"]["text"] == "per batch"
    assert fast["train"]["cache_images_per_s"] > 0 and fast["train"]["cache_bytes_per_image"] > 0
    assert coop["ratios"]["train"] == pytest.approx(
        fast["train"]["images_per_s"] / slow["train"]["images_per_s"], rel=1e-2)
    assert coop["amortised_over"] == {"epochs": 10, "cache_views": 10}
    # the feature store's host memory for ImageNet base at 16 shots: images × views × bytes
    est = res["feature_cache_estimate"]
    assert est["images"] == 500 * 16 and list(est["methods"]) == ["coop"]
    d = 32                                                  # pv-tiny's embedding width
    assert est["methods"]["coop"]["bytes"] == est["methods"]["coop"]["bytes_bf16_autocast"] \
        == 8000 * 10 * (4 * d + 8)                          # f in fp32, and the label
    assert ("feature cache for pv-tiny, 16 shots, ImageNet base (500 classes), 10 views: "
            "10.9 MB for coop") in printed
    # the default path never asks open_clip's attention for its weights (fused SDPA path)
    assert fast["train"]["per_step"]["need_weights_calls"] == 0
    assert fast["train"]["per_step"]["mha_calls"] > 0


def test_bench_every_method_on_a_tiny_clip(tiny_clip):
    """CoCoOp (image-dependent text), TextRefiner (cached tokens and attention) and SEP
    (not cacheable) go through both paths too."""
    cfg = BenchConfig(backbone="pv-tiny", classes=4, steps=1, warmup=0, batch_size=2,
                      eval_batch_size=2, progress=False).resolved(torch.device("cpu"))
    names = [f"class {i}" for i in range(4)]
    rows = {m: bench_method(m, tiny_clip, cfg, names) for m in ("cocoop", "textrefiner", "sep")}
    assert rows["cocoop"]["optimised"]["eval"]["text"] == "per batch"    # depends on image
    assert rows["textrefiner"]["optimised"]["train"]["feature_cache"]
    assert not rows["sep"]["optimised"]["train"]["feature_cache"]       # image side trains
    assert "amortised_over" not in rows["sep"]
    # TextRefiner's cache holds last-layer tokens too: more bytes per image than CoOp's f
    d = tiny_clip.embed_dim
    n_tokens = 1 + tiny_clip.grid_size[0] * tiny_clip.grid_size[1]
    assert rows["textrefiner"]["optimised"]["train"]["cache_bytes_per_image"] == \
        4 * (d + n_tokens * d + n_tokens - 1)
    # a GPU run keeps the tokens in bf16 (exact under bf16 autocast): the estimate says so
    est = cache_estimate(list(rows.values()))
    assert list(est["methods"]) == ["cocoop", "textrefiner"]
    tr = est["methods"]["textrefiner"]
    assert tr["bytes"] == 8000 * 10 * (4 * (d + n_tokens * d + n_tokens - 1) + 8)
    assert tr["bytes_bf16_autocast"] == 8000 * 10 * (4 * d + 2 * n_tokens * d
                                                     + 4 * (n_tokens - 1) + 8)
    line = format_estimate({"backbone": "pv-tiny", "feature_cache_estimate": est})
    assert line.startswith("feature cache for pv-tiny, 16 shots, ImageNet base (500 classes), "
                           "10 views: ")
    assert f"{tr['bytes'] / 1e6:.1f} MB ({tr['bytes_bf16_autocast'] / 1e6:.1f} MB under bf16 " \
           "autocast) for textrefiner" in line
    table = format_bench({"backbone": "pv-tiny", "image_size": 32, "device_name": "cpu",
                          "classes": 4, "paths": {"optimised": {"dtype": "float32"}},
                          "memory_metric": {"name": None}, "busy_machine": True,
                          "methods": list(rows.values())})
    assert "train× cpu" in table and "WARNING" in table          # read the CPU-time ratios
    assert [line.split()[0] for line in table.splitlines()[-3:]] == list(rows)


@pytest.mark.parametrize("flag, value, words", [
    ("--methods", "coop2", "unknown method"),
    ("--steps", "0", "--steps must be at least 1"),
    ("--classes", "0", "--classes must be at least 1"),
    ("--backbone", "no-such-clip", "unknown backbone"),
    ("--device", "tpu", "unknown device"),
])
def test_bench_bad_flags(tmp_path, capsys, flag, value, words):
    args = ["bench", *TINY, "--out", str(tmp_path / "b.json")]
    args += [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and words.lower() in err.lower()
    assert not (tmp_path / "b.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_bench_cuda_without_gpu(tmp_path, capsys):
    assert main(["bench", *TINY, "--device", "cuda", "--out", str(tmp_path / "b.json")]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_image_tower_macs_of_vit_b16():
    """The commonly quoted 17.6 "GFLOPs" of ViT-B/16 at 224 px (multiply-accumulates)."""
    with torch.device("meta"):                           # shapes only: no weights, no memory
        model = open_clip.model.CLIP(**open_clip.get_model_config("ViT-B-16"))
    assert image_tower_macs(Backbone(model, "ViT-B-16")) / 1e9 == pytest.approx(17.56, abs=0.01)


def test_default_paths_do_not_ask_attention_weights(tiny_clip):
    """open_clip's blocks take the fused scaled-dot-product path unless weights are asked
    for; only TextRefiner's training encoder asks, once, for its CLS attention."""
    names = ["red", "green", "blue"]
    images = torch.randn(2, 3, tiny_clip.image_size, tiny_clip.image_size)
    labels = torch.tensor([0, 2])
    for name in ("zeroshot", "coop", "kgcoop", "cocoop", "sep"):
        method = build_method(name, tiny_clip, names, "a photo of a {}.")
        with count_attention() as counts:
            method(images)
            if method.trainable_parameters():
                _loss(method, images, labels)
        assert counts["mha_calls"] > 0 and counts["need_weights_calls"] == 0, name
    refiner = build_method("textrefiner", tiny_clip, names, "a photo of a {}.")
    with count_attention() as counts:
        refiner.inputs(images, train=True)
    assert counts["need_weights_calls"] == 1


@pytest.mark.parametrize("name", ["zeroshot", "coop", "kgcoop", "cocoop", "textrefiner", "sep"])
def test_text_once_per_evaluation_is_exact(tiny_clip, name):
    """Evaluation reuses one ``text_features()`` for every batch: the same logits, bit for
    bit, as recomputing the text for each batch."""
    method = build_method(name, tiny_clip, ["red", "green", "blue"], "a photo of a {}.")
    method.eval()
    images = torch.randn(3, 3, tiny_clip.image_size, tiny_clip.image_size)
    with torch.no_grad():
        text = None if method.text_depends_on_image else method.text_features()
        assert torch.equal(method(images, text), method(images))


# --------------------------------------------- the feature cache on a ToyWorld run
@pytest.fixture(scope="module")
def toyworld_root(tmp_path_factory):
    from promptviz.data.toyworld import build_suite
    root = tmp_path_factory.mktemp("toyworld")
    build_suite(root, datasets=["toy_textures"], image_size=32, n_train=4, n_val=0, n_test=4,
                workers=1)
    return root


@pytest.mark.parametrize("method, options", [
    ("kgcoop", {}), ("cocoop", {}), ("textrefiner", {"base_method": "kgcoop"})])
def test_feature_cache_gives_the_same_accuracy_on_toyworld(toyworld_root, tmp_path, method,
                                                           options):
    """Optimised (cached features) and straightforward paths do the same maths without
    augmentation, so a fixed ToyWorld run ends with the same accuracy, exactly (coop and
    textrefiner over coop: tests/test_train.py)."""
    cfg = dict(method=method, backbone="pv-tiny", dataset="toy_textures",
               data_root=str(toyworld_root), shots=4, epochs=2, batch_size=4, augment=False,
               progress=False, options=options)
    fast = run(TrainConfig(out=str(tmp_path / "fast"), feature_cache=True, **cfg))
    slow = run(TrainConfig(out=str(tmp_path / "slow"), feature_cache=False, **cfg))
    assert fast["base_acc"] == slow["base_acc"] and fast["new_acc"] == slow["new_acc"]
    a = load_file(tmp_path / "fast" / "model.safetensors")
    b = load_file(tmp_path / "slow" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_toyworld_trains_without_augmentation_unless_asked(toyworld_root, tmp_path,
                                                           monkeypatch):
    """A ToyWorld card says "augment": false (a crop or a mirror changes position, size
    and orientation, which its labels are about); a run follows it unless told otherwise."""
    from promptviz.train.inputs import TrainingInputs, n_views
    seen = []
    original = TrainingInputs.encode_views

    def spy(self):
        seen.append((self.cfg.augment, n_views(self.cfg),
                     type(self.data.transform.transforms[1]).__name__))
        return original(self)

    monkeypatch.setattr(TrainingInputs, "encode_views", spy)
    cfg = dict(method="coop", backbone="pv-tiny", dataset="toy_textures", cache_dir="",
               data_root=str(toyworld_root), shots=4, epochs=2, batch_size=4, progress=False)
    r = run(TrainConfig(out=str(tmp_path / "a"), **cfg))
    run(TrainConfig(out=str(tmp_path / "b"), augment=True, **cfg))
    assert seen == [(False, 1, "Resize"), (True, 2, "RandomResizedCrop")]
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["config"]["augment"] is False and r["epochs"] == 2


def test_load_average_is_read_before_and_after_measuring(tmp_path, monkeypatch):
    """``load_average_at_start`` is the load before the first measurement (it used to be
    read after the last one); a load above the CPU count at either end marks a busy run."""
    import os

    from promptviz.tools.bench import run as bench_module
    calls = []

    def loadavg():
        calls.append(len(calls))
        return (0.5, 0.5, 0.5) if len(calls) == 1 else (99.0, 99.0, 99.0)

    real = bench_module.bench_method

    def bench_method(*args, **kwargs):
        assert calls == [0]                        # read once, before any measurement
        return real(*args, **kwargs)

    monkeypatch.setattr(os, "getloadavg", loadavg)
    monkeypatch.setattr(bench_module, "bench_method", bench_method)
    res = bench_module.bench(BenchConfig(backbone="pv-tiny", methods=("zeroshot",), classes=3,
                                         steps=1, warmup=0, eval_batch_size=2, progress=False,
                                         out=str(tmp_path / "b.json")))
    assert res["load_average_at_start"] == [0.5, 0.5, 0.5]
    assert res["load_average_at_end"] == [99.0, 99.0, 99.0] and res["busy_machine"]


def test_benchmarks_readme_quotes_the_committed_vit_b16_run():
    """The ViT-B/16 CPU ratios in benchmarks/README.md are the committed JSON's."""
    root = Path(__file__).resolve().parents[1] / "benchmarks"
    run = json.loads((root / "results" / "vit-b16-cpu.json").read_text())
    readme = (root / "README.md").read_text()
    assert not run["busy_machine"]
    for m in run["methods"]:
        name = {"coop": "CoOp", "textrefiner": "TextRefiner"}[m["method"]]
        r, c = m["ratios"], m["ratios_cpu_time"]
        assert (f"| {name} | {r['train']:.2f}× | {c['train']:.2f}× | "
                f"{r['train_amortised']:.2f}× | {r['eval']:.2f}× |") in readme
    coop = next(m for m in run["methods"] if m["method"] == "coop")
    top = " ".join((root.parent / "README.md").read_text().split())
    assert f"CoOp trains {coop['ratios']['train']:.2f}× faster from the feature cache" in top
