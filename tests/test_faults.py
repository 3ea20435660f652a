"""Bad input and faults: the README's promise, checked command by command.

Every case runs the command line (``promptviz.cli.main``) and checks the promise: one
``error:`` line that names the problem and the fix, exit status 2, no traceback, and the
files on disk as they were (nothing half-written, an earlier run's results kept). The
cases are the fault families of issue #25; ``test_faults_data.py`` and
``test_faults_pretrain.py`` hold the dataset and pretraining ones.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from promptviz.cli import main

BASE = ["--backbone", "pv-tiny", "--dataset", "dtd", "--quiet", "--cache-dir", ""]


def fails(argv: list[str], capsys, *fragments: str, code: int = 2) -> str:
    """Run the CLI; it must exit ``code`` with one ``error:`` line holding ``fragments``."""
    try:
        rc = main(argv)
    except SystemExit as e:          # argparse's own checks
        rc = e.code
    err = capsys.readouterr().err
    assert rc == code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def train(tiny_root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--method", "zeroshot", *BASE, "--data-root", str(tiny_root),
            "--out", str(out), *extra]


def coop(tiny_root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--method", "coop", *BASE, "--data-root", str(tiny_root), "--out",
            str(out), "--shots", "2", "--epochs", "1", *extra]


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


# ----------------------------------------------------------- settings (families 1, 10, 15)
BAD_TRAIN_FLAGS = [
    (["--lr", "nan"], "--lr nan"),
    (["--lr", "inf"], "--lr inf"),
    (["--lr", "0"], "--lr 0.0"),
    (["--lr", "-0.5"], "--lr -0.5"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--batch-size", "-4"], "--batch-size -4"),
    (["--eval-batch-size", "0"], "--eval-batch-size 0"),
    (["--num-workers", "-1"], "--num-workers -1"),
    (["--shots", "0"], "--shots 0"),
    (["--shots", "-3"], "--shots -3"),
    (["--epochs", "-2"], "--epochs -2"),
    (["--cache-views", "0"], "--cache-views 0"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--set", "n_ctx"], "is not key=value"),
    (["--set", "nctx=2"], "unknown option(s) ['nctx']"),
    (["--set", "n_ctx=two"], "n_ctx='two' is not a valid int"),
    (["--set", "ctx_init=" + "a photo " * 60], "does not fit the text encoder's"),
]


@pytest.mark.parametrize("extra,fragment", BAD_TRAIN_FLAGS,
                         ids=[" ".join(a)[:30] for a, _ in BAD_TRAIN_FLAGS])
def test_bad_train_setting_is_one_error_and_writes_nothing(tiny_root, tmp_path, capsys,
                                                            extra, fragment):
    out = tmp_path / "run"
    fails(coop(tiny_root, out, *extra), capsys, fragment)
    assert not out.exists()


def test_unknown_method_dataset_and_tagless_backbone(tiny_root, tmp_path, capsys):
    out = tmp_path / "run"
    argv = train(tiny_root, out)
    fails([*argv[:2], "coopp", *argv[3:]], capsys, "unknown method 'coopp' (did you mean 'coop'?)")
    fails([*argv, "--dataset", "dtdd"], capsys, "Unknown dataset 'dtdd' (did you mean 'dtd'?)")
    fails([*argv, "--dataset", "qwerty"], capsys, "Unknown dataset 'qwerty'. Known")  # no guess
    # an architecture without a tag would be random weights at chance: refused
    fails([*argv, "--backbone", "ViT-B-32"], capsys, "ViT-B-32 names an architecture",
          "ViT-B-32:openai")
    assert not out.exists()


def test_weights_that_blow_up_are_an_error_not_a_result(tiny_root, tmp_path, capsys):
    out = tmp_path / "run"
    fails(coop(tiny_root, out, "--epochs", "2", "--lr", "1e30"), capsys, "lower the learning")
    assert not out.exists()                 # no result, no checkpoint, no resume.pt to diverge


# ------------------------------------------------------ an earlier run is kept (family 4)
@pytest.fixture()
def finished(tiny_root, tmp_path, capsys) -> Path:
    out = tmp_path / "done"
    assert main(train(tiny_root, out)) == 0
    capsys.readouterr()
    return out


@pytest.mark.parametrize("extra,fragment", [
    (["--device", "tpu"], "unknown device"),
    (["--dataset", "dtdd"], "dtdd"),
    (["--backbone", "pv-tinyy"], "unknown backbone"),
    (["--set", "template=x"], "holds another run"),          # a different valid run
    (["--seed", "2"], "holds another run"),
])
def test_a_mistake_never_touches_a_finished_run(tiny_root, finished, capsys, extra, fragment):
    before = files(finished)
    fails([*train(tiny_root, finished), *extra], capsys, fragment)
    assert files(finished) == before


def test_the_same_run_again_and_overwrite(tiny_root, finished, capsys):
    assert main(train(tiny_root, finished)) == 0               # the same request: fine
    assert main([*train(tiny_root, finished), "--seed", "2", "--overwrite"]) == 0
    assert json.loads((finished / "results.json").read_text())["seed"] == 2
    assert json.loads((finished / "meta.json").read_text())["seed"] == 2


def test_an_interrupted_run_of_other_settings_is_not_discarded(tiny_root, tmp_path, capsys,
                                                               monkeypatch):
    out = tmp_path / "run"
    import promptviz.train.loop as train_mod
    real = train_mod._check_outputs           # runs after the last epoch's resume.pt
    monkeypatch.setattr(train_mod, "_check_outputs",
                        lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(coop(tiny_root, out)) == 130
    assert sorted(p.name for p in out.iterdir()) == ["resume.pt"]
    monkeypatch.setattr(train_mod, "_check_outputs", real)
    before = files(out)
    fails(coop(tiny_root, out, "--seed", "5"), capsys, "interrupted run of other settings")
    assert files(out) == before
    assert main(coop(tiny_root, out)) == 0                     # the same command resumes
    assert "resuming from epoch 1" in capsys.readouterr().out


# ------------------------------------------------------------------ I/O faults (family 8)
def test_out_that_is_a_file(tiny_root, tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    fails(train(tiny_root, target), capsys, "is a file, not a folder")
    fails(train(tiny_root, target / "sub"), capsys, "is a file, so no folder can be made")
    assert target.read_text() == "x"


def test_read_only_out_found_before_training(tiny_root, tmp_path, capsys, monkeypatch):
    import promptviz.train.loop as train_mod
    trained = []
    monkeypatch.setattr(train_mod, "train_method", lambda *a, **k: trained.append(1) or [])
    real = Path.write_bytes

    def read_only(self, data):
        if ".promptviz-write-test" in self.name:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, data)
    monkeypatch.setattr(Path, "write_bytes", read_only)
    fails(coop(tiny_root, tmp_path / "ro"), capsys, "cannot write there", "Permission denied")
    assert not trained


def test_full_disk_leaves_no_half_checkpoint(tiny_root, tmp_path, capsys, monkeypatch):
    import promptviz.checkpoint as ckpt
    out = tmp_path / "run"

    def full(tensors, path, metadata=None):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device", path)
    monkeypatch.setattr(ckpt, "save_file", full)
    fails(train(tiny_root, out), capsys, "No space left on device", "free some disk space")
    assert sorted(p.name for p in out.iterdir()) == []          # no temporary file either


def test_checkpoint_pair_is_written_together(tmp_path, monkeypatch):
    """The meta file failing after the weights were written leaves neither."""
    from promptviz import checkpoint as ckpt
    real = Path.write_text

    def fail_meta(self, text, *a, **k):
        if ".meta.json." in self.name:
            raise OSError(28, "No space left on device", str(self))
        return real(self, text, *a, **k)
    monkeypatch.setattr(Path, "write_text", fail_meta)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(tmp_path, {"x": torch.ones(2)}, {"method": "coop"})
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------- eval (families 5, 9, 15)
def test_eval_without_dataset_uses_the_checkpoints_own(tiny_root, tmp_path, capsys,
                                                       monkeypatch):
    folder = shutil.copytree(tiny_root / "dtd" / "images", tmp_path / "my textures")
    out = tmp_path / "run"
    argv = ["train", "--method", "zeroshot", "--backbone", "pv-tiny", "--dataset", str(folder),
            "--out", str(out), "--quiet", "--cache-dir", ""]
    assert main(argv) == 0
    trained = json.loads((out / "results.json").read_text())
    monkeypatch.chdir(tmp_path)                                # another working folder
    assert main(["eval", "--checkpoint", str(out), "--json", "--quiet"]) == 0
    said = capsys.readouterr().out
    again = json.loads(said[said.index("{"):])
    assert again["base_acc"] == trained["base_acc"] and again["dataset"] == trained["dataset"]
    # a CoOp name under a data root: the root is remembered too
    out2 = tmp_path / "run2"
    assert main(train(tiny_root, out2)) == 0
    assert main(["eval", "--checkpoint", str(out2), "--quiet"]) == 0


def test_eval_names_the_classes_that_changed(tiny_root, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(tiny_root / "dtd", root / "dtd")
    out = tmp_path / "run"
    assert main(train(root, out)) == 0
    split = root / "dtd" / "split_zhou_DescribableTextures.json"
    data = json.loads(split.read_text())
    for part in data.values():
        for item in part:
            if item[2] == "red_banded":
                item[2] = "crimson_banded"
    split.write_text(json.dumps(data))
    fails(["eval", "--checkpoint", str(out), "--quiet"], capsys,
          "'red banded' is now 'crimson banded'")


@pytest.mark.parametrize("damage,fragment", [
    (lambda out: (out / "meta.json").write_text(json.dumps({"method": "zeroshot"})),
     "lacks options, backbone"),
    (lambda out: (out / "meta.json").write_text("{not json"), "is unreadable"),
    (lambda out: (out / "model.safetensors").write_bytes(b"\0" * 10), "is unreadable"),
])
def test_eval_of_a_damaged_checkpoint(finished, capsys, damage, fragment):
    damage(finished)
    fails(["eval", "--checkpoint", str(finished), "--quiet"], capsys, fragment)


# ------------------------------------------------------- backbone files (families 3, 9)
@pytest.fixture()
def pv_tiny_file(tmp_path) -> Path:
    import open_clip

    from promptviz.backbone import load_clip, save_clip
    path = tmp_path / "pv.safetensors"
    save_clip(load_clip("pv-tiny").model, path, open_clip.get_model_config("pv-tiny"))
    return path


class Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


@pytest.mark.parametrize("spec", ["{p}", "pv-tiny:{p}"])
def test_a_pickled_backbone_never_runs_code(tiny_root, tmp_path, capsys, spec):
    bad, marker = tmp_path / "weights.pt", tmp_path / "marker"
    torch.save({"visual.proj": Payload(marker)}, bad)
    argv = train(tiny_root, tmp_path / "run")
    fails([*argv, "--backbone", spec.format(p=bad)], capsys, "weights.pt")
    assert not marker.exists()


def test_damaged_backbone_files(tiny_root, tmp_path, capsys, pv_tiny_file):
    from safetensors.torch import save_file
    argv = train(tiny_root, tmp_path / "run")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\0\0\0\0\0\0\0{not a header}")
    fails([*argv, "--backbone", str(junk)], capsys, "not a readable safetensors file")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(pv_tiny_file.read_bytes()[: pv_tiny_file.stat().st_size // 2])
    fails([*argv, "--backbone", str(cut)], capsys, "cut.safetensors")
    bad_cfg = tmp_path / "cfg.safetensors"
    save_file({"x": torch.ones(1)}, str(bad_cfg), metadata={"open_clip_config": "{bad"})
    fails([*argv, "--backbone", str(bad_cfg)], capsys, "not a valid open_clip config")
    # pv-tiny's weights given as toyclip's: the message says what does not fit
    state = tmp_path / "pv.pt"
    from promptviz.backbone import load_clip
    torch.save(load_clip("pv-tiny").model.state_dict(), state)
    fails([*argv, "--backbone", f"toyclip:{state}"], capsys, "do not fit toyclip",
          "of another shape")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ compare (family 12)
def study(tiny_root: Path, out: Path, *extra: str) -> list[str]:
    return ["compare", "--methods", "zeroshot", "coop", "--datasets", "dtd", "--seeds", "1",
            "--backbone", "pv-tiny", "--data-root", str(tiny_root), "--out", str(out),
            "--epochs", "1", "--shots", "2", "--quiet", "--cache-dir", "", *extra]


@pytest.mark.parametrize("extra,fragment", [
    (["--set", "cop.n_ctx=2"], "'cop' is not a method of this study"),
    (["--set", "coop.nctx=2"], "unknown option(s) ['nctx']"),
    (["--set", "n_ctx=2"], "name the method"),
    (["--methods", "zeroshot", "coop", "sepp"], "unknown method(s) sepp (did you mean 'sep'?)"),
    (["--datasets", "dtd", "dtdd"], "dtdd"),
    (["--seeds", "1", "1"], "--seeds repeats a value"),
    (["--shots", "0"], "--shots 0"),
    (["--epochs", "-1"], "--epochs -1"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--device", "tpu"], "unknown device"),
    (["--retries", "-1"], "--retries -1: give 0 or more"),
    (["--ray-cpus", "0"], "--ray-cpus 0: give 1 or more"),
])
def test_a_study_checks_everything_before_its_first_run(tiny_root, tmp_path, capsys, extra,
                                                       fragment):
    out = tmp_path / "study"
    fails(study(tiny_root, out, *extra), capsys, fragment)
    assert not out.exists()


def test_a_corrupt_result_in_a_study_is_run_again(tiny_root, tmp_path, capsys):
    out = tmp_path / "study"
    argv = study(tiny_root, out, "--methods", "zeroshot")
    assert main(argv) == 0
    result = out / "runs" / "zeroshot" / "dtd" / "shots2" / "seed1" / "results.json"
    good = json.loads(result.read_text())
    result.write_text('{"method": "zero')
    capsys.readouterr()
    assert main(argv) == 0
    assert "is unreadable; running that run again" in capsys.readouterr().err
    assert json.loads(result.read_text())["base_acc"] == good["base_acc"]


# --------------------------------------------------------------- NaN in JSON (family 6)
def test_results_are_strict_json():
    from promptviz.errors import PromptvizError
    from promptviz.train.loop import strict_json
    assert json.loads(strict_json({"acc": 1.5}, "x")) == {"acc": 1.5}
    with pytest.raises(PromptvizError, match="NaN or infinite"):
        strict_json({"acc": float("nan")}, "the results")


def test_an_empty_test_split_is_refused_before_training(tiny_root, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(tiny_root / "dtd", root / "dtd")
    split = root / "dtd" / "split_zhou_DescribableTextures.json"
    data = json.loads(split.read_text())
    data["test"] = []
    split.write_text(json.dumps(data))
    out = tmp_path / "run"
    fails(train(root, out), capsys, "test")
    assert not out.exists()


def test_os_error_message_names_path_and_fix():
    from promptviz.cli import os_error_message
    msg = os_error_message(OSError(28, "No space left on device", "/x/y"))
    assert msg == "No space left on device: /x/y; free some disk space (or write elsewhere " \
                  "with --out) and re-run"
    assert "check the permissions" in os_error_message(PermissionError(13, "Denied", "/z"))
    assert os.sep in os_error_message(FileNotFoundError(2, "No such file", "/a"))


def test_readme_states_a_promise_for_every_command():
    """The README's table of what each command promises has a row for every command."""
    import argparse

    from promptviz.cli import build_parser
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme[readme.index("### What every command promises"):]
    rows = {line.split("`")[1] for line in table.splitlines() if line.startswith("| `promptviz")}

    def commands(parser: argparse.ArgumentParser, prefix: str) -> list[str]:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            return [prefix]
        return [c for name, p in subs[0].choices.items() for c in commands(p, f"{prefix} {name}")]
    assert sorted(rows) == sorted(commands(build_parser(), "promptviz"))


@pytest.mark.parametrize("argv,fragment", [
    (["demo", "--device", "tpu"], "unknown device"),
    (["demo", "--backbone", "ViT-B-32"], "names an architecture"),
    (["toyworld", "card", "--seeds", "1", "1"], "--seeds 1 1"),
    (["toyworld", "card", "--epochs", "-1"], "--epochs -1"),
    (["toyworld", "card", "--device", "tpu"], "unknown device"),
])
def test_demo_and_card_check_before_building_or_training(tmp_path, capsys, argv, fragment):
    data, out = tmp_path / "toyworld", tmp_path / "out"
    fails([*argv, "--data-root", str(data), "--out", str(out), "--quiet"], capsys, fragment)
    assert not data.exists() and not out.exists()


def test_written_files_have_the_usual_mode(finished, tmp_path):
    """Checkpoints are readable as any file the user writes (safetensors makes them 0600)."""
    import open_clip

    from promptviz.backbone import load_clip, save_clip
    umask = os.umask(0)
    os.umask(umask)
    save_clip(load_clip("pv-tiny").model, tmp_path / "w.safetensors",
              open_clip.get_model_config("pv-tiny"))
    paths = [finished / "model.safetensors", finished / "meta.json", tmp_path / "w.safetensors"]
    assert {oct(p.stat().st_mode & 0o777) for p in paths} == {oct(0o666 & ~umask)}


# ------------------------------------------------------- found by review (see issue #25)
def test_divergence_seen_on_validation_leaves_out_as_it_was(tiny_root, tmp_path, capsys):
    """TextRefiner scores the validation shots after every epoch (best_val): NaN scores
    there are a divergence too, and a folder the user made stays (empty)."""
    out = tmp_path / "mine"
    out.mkdir()
    argv = ["train", "--method", "textrefiner", *BASE, "--data-root", str(tiny_root), "--out",
            str(out), "--shots", "2", "--epochs", "2", "--lr", "1e30"]
    fails(argv, capsys, "NaN or infinite")
    assert out.is_dir() and list(out.iterdir()) == []


def test_a_state_dict_with_other_entries(tiny_root, tmp_path, capsys):
    from promptviz.backbone import load_clip
    path = tmp_path / "ckpt.pt"
    torch.save({"model": load_clip("pv-tiny").model.state_dict(), "epoch": 3}, path)
    fails([*train(tiny_root, tmp_path / "run"), "--backbone", f"pv-tiny:{path}"], capsys,
          "not tensors", "under 'model'")


def test_pretrain_refuses_a_device_it_cannot_use(tmp_path, capsys):
    fails(["pretrain", "--out", str(tmp_path / "p"), "--device", "mps", "--quiet"], capsys,
          "--device 'mps'")
    assert not (tmp_path / "p").exists()


def test_a_full_disk_leaves_no_half_few_shot_cache(tiny_root, tmp_path, monkeypatch):
    import promptviz.data.fewshot as fs
    from promptviz.data import few_shot, load_dataset
    root = tmp_path / "data"
    shutil.copytree(tiny_root / "dtd", root / "dtd",
                    ignore=shutil.ignore_patterns("promptviz_fewshot"))   # no cached draw
    monkeypatch.setenv("PROMPTVIZ_CACHE", str(tmp_path / "cache"))

    def full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(fs.json, "dump", full)
    with pytest.warns(UserWarning, match="Could not write the few-shot cache"):
        few_shot(load_dataset("dtd", root), 2, seed=1)
    assert [p for p in tmp_path.rglob(".tmp-*")] == []


def test_eval_finds_a_relative_dataset_path_from_elsewhere(tiny_root, tmp_path, monkeypatch,
                                                           capsys):
    shutil.copytree(tiny_root / "dtd" / "images", tmp_path / "textures")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--method", "zeroshot", "--backbone", "pv-tiny", "--dataset",
                 "./textures", "--out", "run", "--quiet", "--cache-dir", ""]) == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["eval", "--checkpoint", "../run", "--quiet"]) == 0


def test_help_is_quick_lists_examples_that_parse_and_imports_no_torch(tmp_path):
    """`promptviz --help` must not import torch or open_clip (seconds on a laptop), and
    every example in it must be a command the parser accepts."""
    import shlex
    import subprocess
    import sys

    from promptviz.cli import EXAMPLES, build_parser
    code = ("import sys, promptviz.cli as c\n"
            "try:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'open_clip', 'numpy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert "examples" in done.stdout and done.stdout.strip().endswith("[]")
    lines = EXAMPLES.replace("\\\n", " ").splitlines()
    commands = [ln.split("#")[0].strip() for ln in lines if ln.strip().startswith("promptviz ")]
    assert len(commands) >= 5
    for command in commands:
        build_parser().parse_args(shlex.split(command)[1:])      # SystemExit if not


def test_datasets_on_an_empty_root_names_it_and_how_to_fill_it(tmp_path, capsys):
    from promptviz.cli import main
    assert main(["datasets", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"No datasets found under {tmp_path}" in out
    assert f"promptviz toyworld build --out {tmp_path}" in out


def test_every_flag_of_every_command_says_what_it_does_and_its_default():
    import argparse

    from promptviz.cli import build_parser

    def commands(parser: argparse.ArgumentParser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from commands(sub)
        yield parser

    missing, shown = [], 0
    for parser in commands(build_parser()):
        for action in parser._actions:
            if action.option_strings and action.help != argparse.SUPPRESS and \
                    "-h" not in action.option_strings:
                if not action.help:
                    missing.append(f"{parser.prog} {action.option_strings[0]}")
        text = parser.format_help()
        shown += text.count("(default: ")
    assert missing == []
    assert "(default: 16)" in build_parser()._subparsers._group_actions[0].choices[
        "train"].format_help()
    assert shown > 30


def test_training_into_a_finished_run_says_it_replaces_it(tiny_root, tmp_path, capsys):
    from promptviz.cli import main
    out = tmp_path / "zs"
    argv = ["train", "--method", "zeroshot", "--backbone", "pv-tiny", "--dataset", "dtd",
            "--data-root", str(tiny_root), "--out", str(out), "--quiet"]
    assert main(argv) == 0
    assert "already holds a finished run" not in capsys.readouterr().out
    assert main(argv) == 0
    assert f"note: {out} already holds a finished run; training again replaces it" in \
        capsys.readouterr().out
    assert (out / "results.json").is_file()
