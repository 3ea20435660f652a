"""The comparison runner: resume, aggregation, HM of averages, the table schema."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from promptviz.cli import main
from promptviz.compare import COLUMNS, CompareConfig, compare, summarise
from promptviz.errors import PromptvizError
from promptviz.evaluate import harmonic_mean


def _cfg(root, out, **kw) -> CompareConfig:
    base = dict(methods=["zeroshot", "coop"], datasets=["dtd"], seeds=[1, 2],
                backbone="pv-tiny", data_root=str(root), out=str(out), epochs=1, shots=[2])
    return CompareConfig(**{**base, **kw})


def test_base2new_study_resumes_and_writes_table(tiny_root, tmp_path):
    cfg = _cfg(tiny_root, tmp_path / "study")
    table = compare(cfg)
    rows = {(r["method"], r["dataset"]): r for r in table}
    assert set(rows) == {("zeroshot", "dtd"), ("coop", "dtd")}
    assert rows["coop", "dtd"]["n"] == 2 and "hm_std" in rows["coop", "dtd"]
    csv_rows = list(csv.DictReader((tmp_path / "study" / "table.csv").open()))
    assert list(csv_rows[0]) == list(COLUMNS) and len(csv_rows) == 2
    assert json.loads((tmp_path / "study" / "table.json").read_text())["table"]
    html = (tmp_path / "study" / "report.html").read_text()
    assert "coop" in html and "Reported in the papers" not in html   # toy data: no references
    # an interrupted study: one run's results removed, the rest reused (and not retrained)
    runs = tmp_path / "study" / "runs"
    (runs / "coop" / "dtd" / "shots2" / "seed2" / "results.json").unlink()
    kept = runs / "coop" / "dtd" / "shots2" / "seed1" / "results.json"
    stamp = kept.stat().st_mtime_ns
    again = compare(cfg)
    assert kept.stat().st_mtime_ns == stamp
    assert [r["hm"] for r in again] == [r["hm"] for r in table]      # deterministic rerun


def test_a_finished_run_is_not_reused_under_other_weights_or_settings(tiny_root, tmp_path):
    import open_clip

    from promptviz.backbone import load_clip, save_clip
    weights = tmp_path / "tiny.safetensors"         # one backbone path, weights swapped below
    save_clip(load_clip("pv-tiny", seed=0).model, weights, open_clip.get_model_config("pv-tiny"),
              half=False)
    cfg = _cfg(tiny_root, tmp_path / "study", backbone=str(weights), methods=["coop"],
               seeds=[1])
    first = compare(cfg)
    result = tmp_path / "study" / "runs" / "coop" / "dtd" / "shots2" / "seed1" / "results.json"
    stamp = result.stat().st_mtime_ns
    assert [r["hm"] for r in compare(cfg)] == [r["hm"] for r in first]
    assert result.stat().st_mtime_ns == stamp                       # same weights: reused
    compare(_cfg(tiny_root, tmp_path / "study", backbone=str(weights), methods=["coop"],
                 seeds=[1], epochs=2))
    assert json.loads(result.read_text())["epochs"] == 2            # other settings: rerun
    save_clip(load_clip("pv-tiny", seed=1).model, weights, open_clip.get_model_config("pv-tiny"),
              half=False)
    stamp = result.stat().st_mtime_ns
    compare(cfg)
    assert result.stat().st_mtime_ns != stamp                       # new weights: rerun


def test_average_row_uses_hm_of_averages():
    rows = [{"method": "m", "dataset": d, "shots": 16, "seed": 1, "base_acc": b, "new_acc": n,
             "hm": harmonic_mean(b, n)} for d, b, n in (("a", 90.0, 10.0), ("b", 10.0, 90.0))]
    table = summarise(rows, "base2new")
    avg = next(r for r in table if r["dataset"] == "average")
    assert avg["base_acc"] == 50.0 and avg["new_acc"] == 50.0 and avg["hm"] == 50.0
    assert avg["hm"] != pytest.approx(sum(r["hm"] for r in rows) / 2)


def test_fewshot_several_k_and_cross_dataset(tiny_root, tmp_path):
    table = compare(_cfg(tiny_root, tmp_path / "fs", protocol="fewshot", shots=[1, 2],
                         seeds=[1], methods=["coop"]))
    assert sorted(r["shots"] for r in table) == [1, 2] and all("acc" in r for r in table)
    other = tmp_path / "other"                      # a folder-per-class copy as a target
    for cls in (tiny_root / "dtd" / "images").iterdir():
        shutil.copytree(cls, other / cls.name)
    table = compare(_cfg(tiny_root, tmp_path / "x", protocol="crossdataset", source="dtd",
                         datasets=[str(other)], seeds=[1], methods=["coop"]))
    assert table[0]["dataset"] == "other" and 0 <= table[0]["acc"] <= 100


def test_transfer_needs_a_source(tiny_root, tmp_path):
    with pytest.raises(PromptvizError, match="--source"):
        compare(_cfg(tiny_root, tmp_path / "dg", protocol="dg"))


def test_cli_compare(tiny_root, tmp_path, capsys):
    assert main(["compare", "--methods", "zeroshot", "--datasets", "dtd", "--seeds", "1",
                 "--backbone", "pv-tiny", "--data-root", str(tiny_root), "--out",
                 str(tmp_path / "c"), "--shots", "2", "--quiet"]) == 0
    assert "zeroshot/dtd" in capsys.readouterr().out
    assert main(["compare", "--set", "n_ctx=4", "--data-root", str(tiny_root),
                 "--out", str(tmp_path / "d")]) == 2
