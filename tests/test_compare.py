"""The comparison runner: resume, aggregation, HM of averages, the table schema."""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest

from promptviz.cli import main
from promptviz.errors import PromptvizError
from promptviz.metrics import HM_CONVENTION, aggregate, harmonic_mean, mean_std
from promptviz.tools.compare import (
    COLUMNS,
    CompareConfig,
    compare,
    method_variant,
    summarise,
    to_csv,
    variant_schedule,
)


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
    written = json.loads((tmp_path / "study" / "table.json").read_text())
    assert written["table"] and HM_CONVENTION in written["notes"]["hm"]
    for r in csv_rows:                       # every written row's HM is its own base/novel's
        hm = harmonic_mean(float(r["base_acc"]), float(r["new_acc"]))
        assert float(r["hm"]) == pytest.approx(hm, abs=0.01)
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


# Two seeds of one dataset whose base and novel move apart: the means are ToyPaints CoOp's
# 87.6 / 56.9, whose HM is 69.0, while the mean of the per-seed HMs is 68.3.
SEEDS = [{"method": "coop", "dataset": "toy_paints", "shots": 16, "seed": s, "base_acc": b,
          "new_acc": n, "hm": harmonic_mean(b, n)} for s, b, n in ((1, 90.0, 70.0),
                                                                 (2, 85.2, 43.8))]


def test_a_rows_hm_is_the_hm_of_its_own_base_and_novel():
    per_seed = [r["hm"] for r in SEEDS]
    for row in (aggregate(SEEDS), summarise(SEEDS, "base2new")[0]):
        assert (row["base_acc"], row["new_acc"]) == (pytest.approx(87.6), pytest.approx(56.9))
        assert row["hm"] == pytest.approx(harmonic_mean(row["base_acc"], row["new_acc"]))
        assert round(row["hm"], 1) == 69.0
        assert row["hm"] != pytest.approx(sum(per_seed) / 2, abs=0.1)     # the old convention
        assert row["hm_std"] == pytest.approx(mean_std(per_seed)[1])     # spread over seeds
    csv_row = next(csv.DictReader(io.StringIO(to_csv(summarise(SEEDS, "base2new")))))
    assert (csv_row["base_acc"], csv_row["new_acc"], csv_row["hm"]) == ("87.60", "56.90",
                                                                        "68.99")
    # the HM does not come from the stored per-seed "hm" at all
    assert aggregate([{**r, "hm": 0.0} for r in SEEDS])["hm"] == pytest.approx(68.99, abs=0.01)


def test_hm_convention_is_said_where_tables_are_printed():
    from promptviz.tools.demo import format_table
    from promptviz.tools.modelcard.render import markdown
    table = summarise(SEEDS, "base2new")
    assert format_table([{**r, "label": "coop"} for r in table]).endswith(f"({HM_CONVENTION}.)")
    assert HM_CONVENTION not in format_table([{**SEEDS[0], "label": "one run"}])
    zero_shot = [{"dataset": "toy_paints", "classes": 9, "template": "{}", "acc": 50.0,
                  "chance": 11.1}]
    bars = {"all_three_x_chance": True, "coop_base_gain_mean": 5.0, "shift_drop": {}}
    card = {"seeds": [1, 2], "zero_shot": zero_shot, "zeroshot_b2n": [{**SEEDS[0], "n": 1}],
            "coop_b2n": table, "bars": bars}
    md = markdown(card)
    assert "| 87.6 ± 3.4 | 56.9 ± 18.5 | 69.0 ± 14.8 |" in md and HM_CONVENTION in md


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


def test_dataset_rows_keep_each_seed():
    row = summarise(SEEDS, "base2new")[0]
    assert row["by_seed"] == [{"seed": 1, "base_acc": 90.0, "new_acc": 70.0},
                              {"seed": 2, "base_acc": 85.2, "new_acc": 43.8}]
    assert "by_seed" not in to_csv([row]).splitlines()[0]


def test_method_variants_parse():
    assert method_variant("sep") == ("sep", {})
    assert method_variant("sep[layers=1,2,ensemble=false]") == (
        "sep", {"layers": "1,2", "ensemble": "false"})
    for bad in ("sep[ensemble]", "sep[=1]", "sep[a=1,a=2]", "sep ensemble", "sep[x=1"):
        with pytest.raises(PromptvizError, match="name\\[key=value"):
            method_variant(bad)


def test_a_variant_is_its_own_row_and_run(tiny_root, tmp_path):
    cfg = _cfg(tiny_root, tmp_path / "study", methods=["coop", "coop[n_ctx=2]"], seeds=[1])
    table = compare(cfg)
    assert {r["method"] for r in table} == {"coop", "coop[n_ctx=2]"}
    runs = tmp_path / "study" / "runs"
    meta = json.loads((runs / "coop_n_ctx=2" / "dtd" / "shots2" / "seed1" / "meta.json")
                      .read_text())
    assert meta["options"]["n_ctx"] == 2
    assert json.loads((runs / "coop" / "dtd" / "shots2" / "seed1" / "meta.json")
                      .read_text())["options"]["n_ctx"] == 4
    import promptviz.tools.compare as study

    def no_training(*a, **k):
        raise AssertionError("a finished variant run was trained again")
    original, study.run = study.run, no_training
    try:
        again = compare(cfg)                                 # reused, not retrained
    finally:
        study.run = original
    assert [(r["method"], r["hm"]) for r in again] == [(r["method"], r["hm"]) for r in table]


def test_variants_in_a_transfer_study_keep_their_labels_when_reused(tiny_root, tmp_path):
    import promptviz.tools.compare as study
    other = tmp_path / "dtd_copy"                   # a folder-per-class copy as a target
    for cls in (tiny_root / "dtd" / "images").iterdir():
        shutil.copytree(cls, other / cls.name)
    cfg = _cfg(tiny_root, tmp_path / "t", methods=["coop", "coop[n_ctx=2]"], seeds=[1],
               protocol="dg", source="dtd", datasets=["dtd", str(other)])
    first = compare(cfg)

    def no_work(*a, **k):
        raise AssertionError("a finished run or transfer was done again")
    saved = study.run, study.run_eval
    study.run = study.run_eval = no_work
    try:
        again = compare(cfg)
    finally:
        study.run, study.run_eval = saved
    assert sorted((r["method"], r["dataset"]) for r in again) == sorted(
        (r["method"], r["dataset"]) for r in first)
    assert {r["method"] for r in again} == {"coop", "coop[n_ctx=2]"}


def test_a_variant_can_set_its_own_epochs(tiny_root, tmp_path):
    """``name[epochs=N]`` trains that entry N epochs (CLIP-LoRA's budget cut openly in a
    study); it is a schedule, not a method option, and other entries keep theirs."""
    assert method_variant("coop[epochs=3,n_ctx=2]") == ("coop", {"n_ctx": "2"})
    assert variant_schedule("coop[epochs=3,n_ctx=2]") == {"epochs": 3}
    cfg = _cfg(tiny_root, tmp_path / "study", methods=["coop", "coop[epochs=2]"], seeds=[1],
               epochs=1)
    assert {r["method"] for r in compare(cfg)} == {"coop", "coop[epochs=2]"}
    runs = tmp_path / "study" / "runs"
    for slug, epochs in (("coop", 1), ("coop_epochs=2", 2)):
        res = json.loads((runs / slug / "dtd" / "shots2" / "seed1" / "results.json").read_text())
        assert res["epochs"] == epochs and len(res["history"]) == epochs
    with pytest.raises(PromptvizError, match="whole number"):
        variant_schedule("coop[epochs=many]")


@pytest.mark.parametrize("methods,words", [(["coop[n_ctx=two]"], "coop[n_ctx=two]"),
                                           (["coop[nctx=2]"], "unknown option"),
                                           (["coop[n_ctx=2]", "coop[n_ctx=2 ]"], "twice"),
                                           (["nope[a=1]"], "unknown method"),
                                           (["coop", "coop[n_ctx=4]"], "the same thing"),
                                           (["coop", "sep[layers=9]"], "do not exist")])
def test_bad_variants_are_refused_before_training(tiny_root, tmp_path, methods, words):
    with pytest.raises(PromptvizError, match=words.replace("[", "\\[")):
        compare(_cfg(tiny_root, tmp_path / "s", methods=methods, seeds=[1]))
    assert not (tmp_path / "s" / "runs").exists()
