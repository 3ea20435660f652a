"""The data-root scan behind ``promptviz datasets``: load every dataset found under a
folder and report, as a table, what loads and what is broken (and why).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from promptviz.data.checks import list_dirs, unreadable_error, usable
from promptviz.data.datasets import CARD_FILE, KNOWN_DATASETS, SPLITS, find_spec
from promptviz.data.load import load_known
from promptviz.data.readers import load_card
from promptviz.errors import PromptvizError

_SCAN_SKIP = ("lost+found",)  # unreadable by design on a mount point: not a broken dataset


@dataclass
class DatasetReport:
    """One row of ``promptviz datasets``: what was found in a folder and whether it loads."""

    name: str
    folder: str
    ok: bool
    num_classes: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    problem: str | None = None


def scan_data_root(data_root: str | Path) -> list[DatasetReport]:
    """Try to load every CoOp folder and every dataset card directly under ``data_root``.

    Folders that are neither (random downloads, folder-per-class dirs) are
    skipped; broken datasets are reported with their error, never raised. A
    folder that cannot be read (permissions) is reported as broken with the
    reason, since it may well be a dataset; the scan goes on with the others.
    """
    root = Path(data_root).expanduser().resolve()
    try:
        if not root.is_dir():
            raise PromptvizError(
                f"Data root {root} does not exist; pass an existing --data-root.")
        entries = list_dirs(root)
    except OSError as e:
        raise unreadable_error(e, f"data root {root}") from None
    reports = []
    for d in entries:
        folder = root / d
        spec = find_spec(d)
        is_card = False
        try:
            with os.scandir(folder) as it:  # an unreadable folder fails here, not half-way
                next(it, None)
            is_card = (folder / CARD_FILE).is_file()
            if not is_card and spec is None:
                continue
            ds = usable(load_card(folder) if is_card else load_known(spec, folder))
        except (PromptvizError, OSError) as e:
            if isinstance(e, OSError) and d in _SCAN_SKIP:
                continue
            problem = str(e) if isinstance(e, PromptvizError) else str(
                unreadable_error(e, str(folder), folder))
            reports.append(DatasetReport(spec.folder if spec and not is_card else d, str(folder),
                                         False, problem=problem))
            continue
        counts = {s: len(ds.split(s)) for s in SPLITS}
        reports.append(DatasetReport(ds.name, str(folder), True, ds.num_classes, counts))
    return reports


def format_report(reports: list[DatasetReport], root: str | Path | None = None) -> str:
    """A plain-text table of :func:`scan_data_root`'s reports, problems spelled out below;
    given the scanned ``root``, an empty report names it and says how to fill it."""
    header = ("name", "folder", "classes", "train", "val", "test", "status")
    rows, notes = [], []
    for r in reports:
        status = "ok"
        if not r.ok:
            notes.append(f"[{len(notes) + 1}] {r.name}: {r.problem}")
            status = f"BROKEN, see [{len(notes)}]"
        nums = [str(r.num_classes) if r.ok else "-"] + [
            str(r.counts.get(s, "-")) if r.ok else "-" for s in SPLITS
        ]
        rows.append((r.name, Path(r.folder).name, *nums, status))
    lines = []
    if rows:
        widths = [max(len(str(x[i])) for x in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            cells = [str(c).rjust(w) if 2 <= i <= 5 else str(c).ljust(w)
                     for i, (c, w) in enumerate(zip(row, widths))]
            lines.append("  ".join(cells).rstrip())
    else:
        where = f" under {root}" if root is not None else ""
        lines.append(f"No datasets found{where} (no CoOp dataset folders and no dataset.json "
                     "cards).")
        if root is not None:
            lines.append(f"Build the ToyWorld suite there: promptviz toyworld build --out {root}"
                         " (or pass --data-root with your CoOp datasets).")
    if notes:
        lines += ["", *notes]
    present = {find_spec(r.name).folder for r in reports if find_spec(r.name)}
    absent = [k for k in KNOWN_DATASETS if k not in present]
    if absent:
        lines += ["", f"Known CoOp datasets not found here: {', '.join(absent)}."]
    return "\n".join(lines)
