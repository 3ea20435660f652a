"""`promptviz pretrain` under bad input and faults: one clear `error:` line (exit 2), no
traceback, nothing half-written; a render thread that dies is an error, not a hang; Ctrl-C
saves the state (the warm start's too) so that re-running resumes there."""

from __future__ import annotations

import errno
import json
import os
import signal
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import promptviz.train.pretrain as pt
from promptviz.cli import main
from promptviz.errors import PromptvizError
from promptviz.train.pretrain import PretrainConfig, pretrain


def _args(out, steps: int = 2, *extra: str) -> list[str]:
    return ["pretrain", "--out", str(out), "--model", "pv-tiny", "--steps", str(steps),
            "--batch-size", "4", "--warm-steps", "0", "--quiet", *extra]


def _error(capsys) -> str:
    """The one `error:` line on stderr (and no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def _no_temp_files(folder: Path) -> None:
    assert not [p for p in _files(folder) if p.endswith(".tmp") or "write-test" in p]


# 1. the render thread --------------------------------------------------------------------

def _within(seconds: float, fn, *args):
    """``fn(*args)`` in a thread: its result or exception, or a test failure (not a hang)
    if it is still running after ``seconds``."""
    result: dict = {}

    def run() -> None:
        try:
            result["value"] = fn(*args)
        except BaseException as e:   # noqa: BLE001
            result["error"] = e

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=seconds)
    assert not worker.is_alive(), f"still waiting after {seconds} s: it hangs"
    if "error" in result:
        return result["error"]
    return result["value"]


def test_an_error_in_the_render_thread_reaches_the_training_thread(tmp_path, monkeypatch):
    def broken(*args, **kw):
        raise RuntimeError("renderer broke")

    monkeypatch.setattr(pt, "sample_batch", broken)
    cfg = PretrainConfig(out=str(tmp_path / "run"), model="pv-tiny", steps=3, batch_size=4,
                         warm_steps=0, progress=False)
    error = _within(60, pretrain, cfg)
    assert isinstance(error, RuntimeError) and "renderer broke" in str(error)
    assert "toyclip.safetensors" not in _files(tmp_path / "run")


def test_a_user_error_in_the_render_thread_is_one_error_line(tmp_path, monkeypatch, capsys):
    def broken(*args, **kw):
        raise PromptvizError("cannot render these scenes")

    monkeypatch.setattr(pt, "sample_batch", broken)
    assert _within(60, main, _args(tmp_path / "run")) == 2
    assert "cannot render these scenes" in _error(capsys)
    assert _files(tmp_path / "run") == set()


def test_a_render_thread_that_ends_silently_is_an_error_not_a_wait(monkeypatch):
    monkeypatch.setattr(pt._Prefetch, "_work", lambda self: None)
    stream = pt._Prefetch(PretrainConfig(batch_size=4, image_size=32),
                          torch.Generator().manual_seed(0), 0)
    stream.thread.join(timeout=10)
    error = _within(20, stream.next)
    assert isinstance(error, PromptvizError) and "scene-rendering thread stopped" in str(error)


# 2 and 6. numeric flags, named in one message, before anything is written ---------------

@pytest.mark.parametrize("flag,value,fragment", [
    ("--batch-size", "0", "--batch-size 0: give a whole number of scenes >= 1"),
    ("--batch-size", "-4", "--batch-size -4"),
    ("--lr", "nan", "--lr nan: give a finite number > 0"),
    ("--lr", "inf", "--lr inf"),
    ("--lr", "0", "--lr 0.0"),
    ("--lr", "-0.1", "--lr -0.1"),
    ("--steps", "-5", "--steps -5: give a whole number of steps >= 0"),
    ("--warmup", "-1", "--warmup -1"),
    ("--warm-steps", "-1", "--warm-steps -1"),
    ("--threads", "-1", "--threads -1"),
])
def test_a_bad_number_is_refused_up_front(tmp_path, capsys, flag, value, fragment):
    out = tmp_path / "run"
    assert main(_args(out, 2, flag, value)) == 2
    line = _error(capsys)
    assert fragment in line and "render_scenes" not in line
    assert not out.exists()


def test_every_bad_flag_is_listed_in_one_message(tmp_path, capsys):
    out = tmp_path / "run"
    argv = _args(out, -5, "--lr", "nan", "--batch-size", "0", "--warmup", "-1",
                 "--threads", "-1", "--seed", "-3")
    assert main(argv) == 2
    line = _error(capsys)
    for fragment in ("--steps -5", "--lr nan", "--batch-size 0", "--warmup -1", "--threads -1"):
        assert fragment in line
    assert "--seed" not in line                       # any whole number is a seed
    assert not out.exists()
    # every setting is a flag now (promptviz.config.PretrainConfig), named by it, also when
    # the library is called directly; a field without help (a flag) would be PretrainConfig.x
    with pytest.raises(PromptvizError, match=r"--save-every 0: give a whole number"):
        PretrainConfig(save_every=0).validate()
    assert main(_args(out, 2, "--save-every", "0", "--clean-end", "1.5")) == 2
    line = _error(capsys)
    assert "--save-every 0" in line and "--clean-end 1.5" in line
    assert not out.exists()


def test_steps_0_needs_a_warm_start(tmp_path, capsys):
    assert main(_args(tmp_path / "run", 0)) == 2
    assert "--steps 0 with --warm-steps 0 trains nothing" in _error(capsys)
    assert not (tmp_path / "run").exists()


# 3. a model with its own image size -----------------------------------------------------

def test_pv_tiny_renders_at_its_own_image_size(tmp_path, capsys):
    from promptviz.backbone import load_clip
    out = tmp_path / "run"
    assert main(["pretrain", "--out", str(out), "--model", "pv-tiny", "--steps", "2",
                 "--batch-size", "4", "--warm-steps", "1", "--quiet"]) == 0
    assert load_clip(str(out / "toyclip.safetensors")).image_size == 32
    assert {"toyclip.safetensors", "pretrain_log.json", "state.pt"} <= _files(out)
    with pytest.raises(PromptvizError, match="image_size 64 does not match --model pv-tiny"):
        pretrain(PretrainConfig(out=str(tmp_path / "bad"), model="pv-tiny", image_size=64,
                                steps=1, warm_steps=0, progress=False))
    assert not (tmp_path / "bad").exists()


# 4. Ctrl-C saves the state; re-running resumes there -------------------------------------

def _ctrl_c_at(monkeypatch, name: str, k: int, main_thread_only: bool = False) -> dict:
    """Replace ``pt.<name>`` by one that counts its calls and presses Ctrl-C (SIGINT) in
    call ``k`` (k = 0: never)."""
    original, calls = getattr(pt, name), {"n": 0}

    def wrapped(*args, **kw):
        if not main_thread_only or threading.current_thread() is threading.main_thread():
            calls["n"] += 1
            if calls["n"] == k:
                signal.raise_signal(signal.SIGINT)
        return original(*args, **kw)

    monkeypatch.setattr(pt, name, wrapped)
    return calls


@pytest.fixture()
def python_sigint():
    """SIGINT as in a fresh ``promptviz`` process: Python's own handler (KeyboardInterrupt).
    Earlier tests in the same pytest process (the browser tests' libraries) may leave
    another handler installed, under which pretraining rightly leaves SIGINT alone."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.mark.usefixtures("python_sigint")
def test_ctrl_c_saves_the_state_and_a_rerun_resumes_there(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main(_args(tmp_path / "full", 6)) == 0
    _ctrl_c_at(monkeypatch, "clip_loss", 3)           # in step 3; saves only every 200
    assert main(_args(out, 6)) == 130
    assert "re-run the same command to resume" in capsys.readouterr().err
    assert torch.load(out / "state.pt", weights_only=True)["step"] == 3
    assert "toyclip.safetensors" not in _files(out)
    _no_temp_files(out)
    calls = _ctrl_c_at(monkeypatch, "clip_loss", 0)
    assert main(_args(out, 6)) == 0
    assert calls["n"] == 3                            # steps 4-6 only: it resumed at 3
    a = load_file(tmp_path / "full" / "toyclip.safetensors")
    b = load_file(out / "toyclip.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)    # and exactly where it stopped


@pytest.mark.usefixtures("python_sigint")
def test_the_warm_start_is_saved_on_ctrl_c_and_when_it_ends(tmp_path, monkeypatch, capsys):
    argv = ["pretrain", "--out", str(tmp_path / "run"), "--model", "pv-tiny", "--steps", "3",
            "--batch-size", "4", "--warm-steps", "4", "--quiet"]
    assert main([*argv[:2], str(tmp_path / "full"), *argv[3:]]) == 0
    out = tmp_path / "run"
    # Ctrl-C in warm step 2: the warm start's own state records step 2
    _ctrl_c_at(monkeypatch, "sample_batch", 2, main_thread_only=True)
    assert main(argv) == 130
    assert torch.load(out / pt.WARM_STATE, weights_only=True)["step"] == 2
    assert "state.pt" not in _files(out)
    # re-run: warm steps 3-4 only, then a hard stop (no Ctrl-C handling: a raw
    # KeyboardInterrupt) in contrastive step 1: the finished warm start was saved as step 0
    warm = _ctrl_c_at(monkeypatch, "sample_batch", 0, main_thread_only=True)
    original = pt.clip_loss

    def killed(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(pt, "clip_loss", killed)
    assert main(argv) == 130
    monkeypatch.setattr(pt, "clip_loss", original)
    assert warm["n"] == 2
    assert torch.load(out / "state.pt", weights_only=True)["step"] == 0
    assert pt.WARM_STATE not in _files(out)            # the finished warm start is in state.pt
    # re-run: no warm start again, contrastive steps 1-3
    warm = _ctrl_c_at(monkeypatch, "sample_batch", 0, main_thread_only=True)
    steps = _ctrl_c_at(monkeypatch, "clip_loss", 0)
    assert main(argv) == 0
    assert (warm["n"], steps["n"]) == (0, 3)
    a = load_file(tmp_path / "full" / "toyclip.safetensors")
    b = load_file(out / "toyclip.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = json.loads((out / "warm_start_log.json").read_text())
    assert [e["warm_step"] for e in log] == [4]


# 5. unreadable state and weight files ------------------------------------------------------

class _Planted:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _truncated_torch_file(path: Path) -> None:
    torch.save({"model": {"w": torch.zeros(1000)}, "step": 1}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("kind", ["truncated", "garbage", "pickle", "not_a_state", "wrong_model"])
def test_an_unreadable_state_file_is_one_clear_error(tmp_path, capsys, kind):
    out = tmp_path / "run"
    out.mkdir()
    state = out / "state.pt"
    marker = tmp_path / "planted-code-ran"
    if kind == "truncated":
        _truncated_torch_file(state)
    elif kind == "garbage":
        state.write_bytes(os.urandom(500))
    elif kind == "pickle":
        torch.save({"model": _Planted(marker), "step": 1}, state)
    elif kind == "not_a_state":
        torch.save([1, 2, 3], state)
    else:
        torch.save({"model": {}, "optimizer": {}, "generator": torch.zeros(1), "step": 1,
                    "log": [], "config": {"model": "pv-tiny", "seed": 0}}, state)
    before = state.read_bytes()
    assert main(_args(out, 2)) == 2
    line = _error(capsys)
    assert f"{state} is not a readable pretrain state" in line
    assert "delete it to start over" in line
    if kind == "pickle":
        assert "pickled" in line
    assert not marker.exists()                        # the planted code never ran
    assert _files(out) == {"state.pt"} and state.read_bytes() == before


def test_an_unreadable_warm_state_is_one_clear_error(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    _truncated_torch_file(out / pt.WARM_STATE)
    assert main(["pretrain", "--out", str(out), "--model", "pv-tiny", "--steps", "2",
                 "--batch-size", "4", "--warm-steps", "2", "--quiet"]) == 2
    assert f"{out / pt.WARM_STATE} is not a readable pretrain state" in _error(capsys)
    assert _files(out) == {pt.WARM_STATE}


@pytest.mark.parametrize("flag", ["--warm-from", "--init-from"])
def test_a_corrupt_weights_file_is_one_clear_error(tmp_path, capsys, flag):
    bad = tmp_path / "toyclip.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": trunc")
    out = tmp_path / "run"
    assert main(_args(out, 2, flag, str(bad))) == 2
    line = _error(capsys)
    assert f"{flag} {bad} is not a readable safetensors file" in line
    assert not out.exists()


# 7. --out that cannot be written, and writes that fail ------------------------------------

def test_out_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    assert main(_args(taken, 2)) == 2
    assert f"--out {taken} is a file" in _error(capsys)
    assert main(_args(taken / "below", 2)) == 2
    assert f"{taken} is a file" in _error(capsys)
    assert taken.read_text() == "keep me" and _files(tmp_path) == {"taken"}


def test_a_read_only_out_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:                             # root writes anyway: play the denial
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False
                            if Path(p) == locked else real(p, mode, **kw))
    try:
        assert main(_args(locked / "run", 2)) == 2
        line = _error(capsys)
        assert f"--out {locked / 'run'}" in line and "not writable" in line
        assert _files(locked) == set()
    finally:
        locked.chmod(0o755)


def test_an_out_where_the_probe_cannot_be_written_is_refused(tmp_path, monkeypatch, capsys):
    real = Path.write_bytes

    def denied(self, data):
        if self.name.startswith(".promptviz-write-test"):
            raise PermissionError(errno.EROFS, "Read-only file system", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", denied)
    out = tmp_path / "run"
    assert main(_args(out, 2)) == 2
    line = _error(capsys)
    assert f"--out {out}: cannot write there (Read-only file system)" in line
    assert not out.exists()                           # the folder it made is removed again


def _disk_full_after_some_bytes(path) -> None:
    Path(path).write_bytes(b"half a file")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_saving_the_state_is_one_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch, "save", lambda obj, path, *a, **kw:
                        _disk_full_after_some_bytes(path))
    out = tmp_path / "run"
    assert main(_args(out, 2)) == 2
    line = _error(capsys)
    assert f"could not write {out / 'state.pt'} (No space left on device)" in line
    assert _files(out) == set()                       # no half-written state, no export


def test_a_full_disk_while_exporting_leaves_no_half_export(tmp_path, monkeypatch, capsys):
    import safetensors.torch
    real = safetensors.torch.save_file
    monkeypatch.setattr(safetensors.torch, "save_file", lambda tensors, path, **kw:
                        _disk_full_after_some_bytes(path))
    out = tmp_path / "run"
    assert main(_args(out, 2)) == 2
    line = _error(capsys)
    assert f"could not write {out / 'toyclip.safetensors'} (No space left on device)" in line
    assert _files(out) == {"state.pt"}                # the trained state is kept
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    calls = _ctrl_c_at(monkeypatch, "clip_loss", 0)
    assert main(_args(out, 2)) == 0                   # re-run: resumes at the end, exports
    assert calls["n"] == 0
    assert {"state.pt", "toyclip.safetensors", "pretrain_log.json"} == _files(out)
