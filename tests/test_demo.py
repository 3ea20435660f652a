"""`make demo` end to end on a tiny suite and the random pv-tiny backbone."""

from __future__ import annotations

import json

from plotly.offline import get_plotlyjs

from promptviz.data.toyworld.suite import build_suite
from promptviz.tools.demo import DemoConfig, run_demo

LABELS = ("zero-shot CLIP", "CoOp", "CoOp+TextRefiner", "SEP")


def test_demo_writes_an_offline_report_and_reuses_finished_runs(tmp_path, capsys):
    build_suite(tmp_path / "toy", n_train=4, n_val=1, n_test=2, datasets=["toy_fine"])
    cfg = DemoConfig(out=str(tmp_path / "demo"), data_root=str(tmp_path / "toy"),
                     datasets=["toy_fine"], backbone="pv-tiny", shots=2, epochs=2,
                     progress=False)
    path = run_demo(cfg)
    printed = capsys.readouterr().out
    for i, label in enumerate(LABELS):             # a header per run, in order
        what = "no training" if i == 0 else "2 epochs"
        assert f"[{i + 1}/4] toy_fine · {label} · {what}" in printed
    assert "building ToyWorld" not in printed      # the suite was there: not rebuilt
    page = path.read_text()
    assert 'src="http' not in page              # plotly.js is inline, nothing is fetched
    assert page.count(get_plotlyjs()[:200]) == 1          # and only once
    for div in ("pv-demo-bars", "pv-demo-curves", "pv-demo-textrefiner-reads",
                "pv-demo-sep-selection"):
        assert f'id="{div}-toy_fine"' in page
    assert page.count('class="pv-explorer"') == 3          # TextRefiner's, SEP's, "why"
    assert "Why this prediction? (toy_fine)" in page
    for label in LABELS:                                   # every method in the "why" view
        assert f"<option value=\"&quot;{label}&quot;\"" in page
    assert "<th>method</th>" in page and "<th>label</th>" not in page
    results = tmp_path / "demo" / "toy_fine" / "coop" / "results.json"
    first = json.loads(results.read_text())
    assert len(first["history"]) == 2

    run_demo(cfg)                                  # again: every run is reused
    printed = capsys.readouterr().out
    assert printed.count("reusing the finished run") == 4 and "(4 of 4 runs reused)" in printed
    assert json.loads(results.read_text()) == first

    run_demo(DemoConfig(**{**cfg.__dict__, "epochs": 1}))     # other settings: trained again
    printed = capsys.readouterr().out
    assert printed.count("reusing the finished run") == 1     # zero-shot has no epochs
    assert len(json.loads(results.read_text())["history"]) == 1
