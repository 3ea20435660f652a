"""Helpers behind notebooks 05 (comparison) and 06 (real CLIP on a GPU): offline checks only."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from promptviz.errors import PromptvizError
from promptviz.tools import readiness
from promptviz.tools.compare import (
    CompareConfig,
    _slug,
    _train_cfg,
    compare,
    load_study,
    study_command,
)
from promptviz.tools.readiness import (
    Readiness,
    check_real_clip,
    cuda_ready,
    data_ready,
    local_weights,
    weights_ready,
)
from promptviz.viz.results import accuracy_bars
from promptviz.viz.study import (
    _label_places,
    base_novel_scatter,
    deltas,
    format_study,
    per_dataset_bars,
    pivot,
    reference_rows,
)


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """An empty Hugging Face cache and URL cache: nothing is ever fetched."""
    import huggingface_hub.constants as hf
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(readiness, "URL_CACHE", tmp_path / "clip")
    return tmp_path


def test_readiness_is_truthy_only_when_ready():
    assert Readiness(True, "ok") and not Readiness(False, "no")


def test_cuda_ready_says_why_not(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = cuda_ready()
    assert not r and "CUDA" in r.reason


def test_local_weights_without_download(empty_caches):
    assert local_weights("toyclip") == "toyclip" and local_weights("pv-tiny") == "pv-tiny"
    assert local_weights("ViT-B-16") == "ViT-B-16"                     # random weights
    assert local_weights("ViT-B-16:openai") is None                    # caches are empty
    assert local_weights(str(empty_caches / "nope.pt")) is None
    r = weights_ready("ViT-B-16:openai")
    assert not r and "ViT-B-16:openai" in r.reason and r.backbone is None


def test_local_weights_finds_the_hub_cache(empty_caches):
    repo = empty_caches / "hf" / "models--timm--vit_base_patch16_clip_224.openai"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "open_clip_pytorch_model.bin").write_bytes(b"x")
    spec = local_weights("ViT-B-16:openai")
    # OpenAI weights need QuickGELU: the spec names the quickgelu config and the file
    assert spec == f"ViT-B-16-quickgelu:{snap / 'open_clip_pytorch_model.bin'}"
    assert weights_ready("ViT-B-16:openai").backbone == spec


def test_local_weights_finds_the_url_cache(empty_caches):
    (empty_caches / "clip").mkdir()
    (empty_caches / "clip" / "ViT-B-16.pt").write_bytes(b"x")
    # OpenAI's archive loads through the OpenAI loader: the bare path is the spec
    assert local_weights("ViT-B-16:openai") == str(empty_caches / "clip" / "ViT-B-16.pt")


def test_data_ready(tiny_root, tmp_path, monkeypatch):
    monkeypatch.delenv("PROMPTVIZ_DATA", raising=False)
    r = data_ready(None, ["dtd"])
    assert not r and "PROMPTVIZ_DATA" in r.reason
    assert not data_ready(tmp_path / "absent", ["dtd"])
    r = data_ready(tiny_root, ["dtd", "eurosat"])
    assert not r and "eurosat" in r.reason and "dtd" not in r.reason.split("missing")[1]
    monkeypatch.setenv("PROMPTVIZ_DATA", str(tiny_root))
    r = data_ready(None, ["dtd"])
    assert r and r.data_root == str(tiny_root)


def test_check_real_clip(tiny_root, empty_caches, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = check_real_clip("ViT-B-16:openai", tiny_root, ["dtd"])
    assert not r and r.reason.startswith("skipped") and "CUDA" in r.reason
    assert "weights" in r.reason and "dtd" not in r.reason        # only what is missing
    ok = check_real_clip("pv-tiny", tiny_root, ["dtd"], device="cpu")
    assert ok and ok.backbone == "pv-tiny" and ok.data_root == str(tiny_root)


def test_compare_batch_size_reaches_every_run(tmp_path):
    cfg = CompareConfig(batch_size=8, epochs=2)
    tc = _train_cfg(cfg, "coop", "toy_shapes", 16, 1, "base2new", tmp_path)
    assert tc.batch_size == 8 and tc.epochs == 2
    assert _train_cfg(CompareConfig(), "cocoop", "d", 16, 1, "base2new", tmp_path
                      ).batch_size is None                         # the method's default


# ------------------------------------------------------------------ study views (notebook 05)
_B2N = [{"method": "coop", "dataset": "A", "shots": 16, "base_acc": 80.0, "new_acc": 60.0,
         "hm": 68.571, "hm_std": 1.25, "base_acc_std": 0.5, "new_acc_std": 2.0,
         "seeds": [1, 2, 3]},
        {"method": "zeroshot", "dataset": "A", "shots": 16, "base_acc": 70.0, "new_acc": 75.0,
         "hm": 72.414, "hm_std": 0.0, "seeds": [1]},
        {"method": "zeroshot", "dataset": "average", "shots": 16, "base_acc": 70.0,
         "new_acc": 75.0, "hm": 72.414}]


def test_format_study_rounds_and_shows_spread():
    text = format_study(_B2N)
    head, coop, *_ = text.splitlines()
    assert head.split() == ["method", "dataset", "base", "novel", "HM"]
    assert coop.split()[:3] == ["coop", "A", "80.0"] and "68.6 ± 1.2" in coop
    assert "±" not in text.splitlines()[2]                 # one seed: no spread to show
    ordered = format_study(_B2N, methods=["zeroshot", "coop"]).splitlines()
    assert [line.split()[:2] for line in ordered[1:]] == [["zeroshot", "A"],
                                                           ["zeroshot", "average"], ["coop", "A"]]
    fs = format_study([{"method": "coop", "dataset": "B", "shots": k, "acc": 50.0 + k}
                       for k in (1, 4)])
    assert fs.splitlines()[0].split() == ["method", "dataset", "shots", "acc"]
    assert fs.splitlines()[2].split() == ["coop", "B", "4", "54.0"]


def test_pivot_and_per_dataset_bars():
    table = [{"method": m, "dataset": d, "shots": 4, "acc": a, "acc_std": 1.0, "seeds": [1, 2]}
             for m, d, a in (("coop", "S", 50.0), ("coop", "T", 30.0), ("zs", "S", 40.0),
                             ("zs", "T", 35.0), ("zs", "average", 37.5))]
    rows = pivot(table)
    assert rows == [{"method": "coop", "S": 50.0, "S_std": 1.0, "T": 30.0, "T_std": 1.0},
                    {"method": "zs", "S": 40.0, "S_std": 1.0, "T": 35.0, "T_std": 1.0}]
    assert pivot(table, datasets=["T"])[0] == {"method": "coop", "T": 30.0, "T_std": 1.0}
    fig = per_dataset_bars(table)
    assert [b.name for b in fig.data] == ["coop", "zs"] and list(fig.data[0].x) == ["S", "T"]


def test_base_novel_scatter_and_references():
    fig = base_novel_scatter(_B2N[:2])
    points = [t for t in fig.data if t.mode == "markers+text"]
    assert [(t.x[0], t.y[0]) for t in points] == [(80.0, 60.0), (70.0, 75.0)]
    assert points[0].error_x.array[0] == 0.5 and points[1].error_x.array is None
    refs = reference_rows()
    coop = next(r for r in refs if r["method"] == "CoOp")
    assert (coop["base_acc"], coop["new_acc"], coop["hm"]) == (82.69, 63.22, 71.66)
    assert len(base_novel_scatter(refs).data) > len(refs)          # points + iso-HM curves


def test_transfer_target_equal_to_source_reuses_the_run(tiny_root, tmp_path):
    other = tmp_path / "dtd_copy"                   # a folder-per-class copy as a second target
    for cls in (tiny_root / "dtd" / "images").iterdir():
        shutil.copytree(cls, other / cls.name)
    cfg = CompareConfig(methods=["coop"], datasets=["dtd", str(other)], seeds=[1], shots=[2],
                        protocol="dg", source="dtd", backbone="pv-tiny",
                        data_root=str(tiny_root), out=str(tmp_path / "dg"), epochs=1)
    table = compare(cfg)
    run = tmp_path / "dg" / "runs" / "coop" / "dtd" / "shots2" / "seed1"
    [copy] = run.glob("transfer_dtd_copy-*.json")
    assert not (run / "transfer_dtd.json").exists() and copy.is_file()
    own = json.loads((run / "results.json").read_text())
    row = next(r for r in table if r["dataset"] == own["dataset"])
    assert row["acc"] == own["acc"] and {r["dataset"] for r in table} >= {"dtd_copy"}
    # a dataset given by path never makes the run folder absolute or nested
    assert _slug(str(other)).startswith("dtd_copy-") and _slug("toy_shapes") == "toy_shapes"
    # two dataset folders with the same last part keep their runs apart
    assert _slug("/x/flowers/train") != _slug("/x/cars/train")
    assert _slug("/x/cars/train") == _slug("/x/cars/../cars/train")


def test_per_dataset_bars_follow_the_method_order():
    table = [{"method": m, "dataset": "S", "acc": a} for m, a in (("b", 50.0), ("a", 60.0))]
    assert [b.name for b in per_dataset_bars(table).data] == ["b", "a"]
    assert [b.name for b in per_dataset_bars(table, methods=["a", "b"]).data] == ["a", "b"]


def test_accuracy_bars_axis_starts_below_the_lowest_bar_and_labels_only_few_bars():
    rows = [{"method": m, "acc": a} for m, a in (("x", 71.0), ("y", 93.0))]
    fig = accuracy_bars(rows, metrics=["acc"])
    assert tuple(fig.layout.yaxis.range) == (60.0, 105.0)
    assert list(fig.data[0].text) == ["71.0"]
    many = [{"method": str(i), "acc": 50.0 + i} for i in range(6)]
    assert all(t == "" for b in accuracy_bars(many, metrics=["acc"]).data for t in b.text)
    assert tuple(accuracy_bars(rows, metrics=["acc"], y_range=(0, 100)).layout.yaxis.range) \
        == (0, 100)


def test_scatter_labels_of_close_points_do_not_share_a_place():
    places = _label_places([(80.0, 60.0), (80.5, 61.0), (95.0, 90.0)], near=(2, 2))
    assert places[0] != places[1] and places[2] == places[0] and None not in places
    crowd = _label_places([(80.0, 60.0), (80.5, 61.0), (81.0, 60.5), (95.0, 90.0)], (2, 2))
    assert crowd[:3] == [None] * 3 and crowd[3] is not None
    fig = base_novel_scatter([{"method": str(i), "base_acc": x, "new_acc": y}
                              for i, (x, y) in enumerate([(80, 60), (80.5, 61), (81, 60.5)])])
    assert {t.mode for t in fig.data if t.name in {"0", "1", "2"}} == {"markers"}


def test_scatter_zoom_and_reference_lines():
    rows = [{"method": "zs", "base_acc": 56.0, "new_acc": 67.5},
            {"method": "sep", "base_acc": 92.7, "new_acc": 69.2}]
    fig = base_novel_scatter(rows, zoom=True, reference="zs")
    assert tuple(fig.layout.xaxis.range) == (51.0, 97.7)
    lines = {(s.type, s.x0 if s.type == "line" and s.x0 == s.x1 else s.y0)
             for s in fig.layout.shapes}
    assert (("line", 56.0) in lines) and (("line", 67.5) in lines)
    with pytest.raises(ValueError, match="reference"):
        base_novel_scatter(rows, reference="coop")


def test_study_command_round_trips_through_the_cli(tmp_path):
    from promptviz.cli import build_parser
    config = dict(CompareConfig(methods=["coop"], datasets=["toy_paints"], seeds=[1, 2],
                                epochs=50, shots=[4], options={"coop": {"n_ctx": "8"}},
                                out=str(tmp_path / "s")).__dict__)
    line = study_command(config)
    a = build_parser().parse_args(line.split()[1:])
    assert (a.methods, a.datasets, a.seeds, a.epochs, a.shots, a.set, a.out) == (
        ["coop"], ["toy_paints"], [1, 2], 50, [4], ["coop.n_ctx=8"], str(tmp_path / "s"))


def test_load_study_names_the_fix(tmp_path):
    with pytest.raises(PromptvizError, match="promptviz compare"):
        load_study(tmp_path)
    (tmp_path / "table.json").write_text("{not json")
    with pytest.raises(PromptvizError, match="run the study again"):
        load_study(tmp_path)
    (tmp_path / "table.json").write_text(json.dumps({"config": {}, "table": []}))
    assert load_study(tmp_path)["table"] == []


def test_deltas_against_a_reference_row():
    table = [{"method": m, "dataset": d, "hm": v, "hm_std": 1.0, "seeds": [1, 2]}
             for m, d, v in (("zs", "P", 60.0), ("sep", "P", 80.0), ("sep[x=1]", "P", 75.0),
                             ("sep", "Q", 10.0))]
    rows = deltas(table, "sep")
    assert [(r["intervention"], r["delta"]) for r in rows] == [
        ("none", 0.0), ("zs", -20.0), ("sep[x=1]", -5.0)]
    assert rows[1]["std"] == 1.0 and deltas(table, "sep", dataset="Q")[0]["acc"] == 10.0
    with pytest.raises(ValueError, match="no 'coop' row"):
        deltas(table, "coop")
