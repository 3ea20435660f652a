"""`make demo` end to end on a tiny suite and the random pv-tiny backbone."""

from __future__ import annotations

from promptviz.demo import DemoConfig, run_demo
from promptviz.toyworld.suite import build_suite


def test_demo_writes_an_offline_report_with_every_method(tmp_path, capsys):
    build_suite(tmp_path / "toy", n_train=4, n_val=1, n_test=2, datasets=["toy_fine"])
    path = run_demo(DemoConfig(out=str(tmp_path / "demo"), data_root=str(tmp_path / "toy"),
                               datasets=["toy_fine"],
                               backbone="pv-tiny", shots=2, epochs=1, progress=False))
    printed = capsys.readouterr().out
    for label in ("zero-shot CLIP", "CoOp", "CoOp+TextRefiner", "SEP"):
        assert label in printed
    page = path.read_text()
    assert 'src="http' not in page              # plotly.js is inline, nothing is fetched
    for div in ("pv-demo-bars", "pv-demo-textrefiner-reads", "pv-demo-sep-selection"):
        assert f'id="{div}-toy_fine"' in page
