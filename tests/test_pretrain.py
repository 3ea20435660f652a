"""Pretraining: the loss goes down, an interrupted run resumes exactly, export loads."""

from __future__ import annotations

import json
import shutil

import torch
from safetensors.torch import load_file

from promptviz.backbone import load_clip
from promptviz.data.toyworld.world import SHAPES as SHAPES_
from promptviz.train.pretrain import PretrainConfig, pretrain, step_lr


def _cfg(out, steps: int, **kw) -> PretrainConfig:
    base = dict(out=str(out), model="pv-tiny", steps=steps, batch_size=32, image_size=32,
                lr=3e-3, warmup=2, log_every=2, save_every=2, probe_every=1000,
                warm_steps=0, progress=False)
    return PretrainConfig(**{**base, **kw})


def test_a_few_steps_lower_the_loss(tmp_path):
    weights = pretrain(_cfg(tmp_path, steps=24))
    log = json.loads((tmp_path / "pretrain_log.json").read_text())["log"]
    assert log[-1]["loss"] < log[0]["loss"] - 0.2
    clip = load_clip(str(weights))               # fp16 export with its config inside
    assert clip.image_size == 32 and clip.embed_dim == 32


def test_resume_continues_exactly(tmp_path, monkeypatch):
    import promptviz.train.pretrain as pt
    pretrain(_cfg(tmp_path / "full", steps=6))
    calls = {"n": 0}
    original = pt.clip_loss

    def interrupted(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 6:                      # dies in step 6, after the state of step 4
            raise KeyboardInterrupt
        return original(*args, **kw)

    monkeypatch.setattr(pt, "clip_loss", interrupted)
    part = tmp_path / "part"
    try:
        pretrain(_cfg(part, steps=6))
    except KeyboardInterrupt:
        pass
    assert torch.load(part / "state.pt", weights_only=True)["step"] == 4
    assert not (part / "toyclip.safetensors").exists()
    shutil.copytree(part, tmp_path / "perturbed")
    counted = {"n": 0}

    def counting(*args, **kw):
        counted["n"] += 1
        return original(*args, **kw)

    monkeypatch.setattr(pt, "clip_loss", counting)
    real_load = torch.load

    def gpu_like_load(path, *args, map_location=None, **kw):
        """A GPU stand-in: a state mapped anywhere but the CPU lands on the meta device,
        where set_state / load_state_dict fail as the GPU's RNG states did."""
        return real_load(path, *args, map_location="cpu" if map_location == "cpu" else "meta",
                         **kw)

    monkeypatch.setattr(torch, "load", gpu_like_load)
    pretrain(_cfg(part, steps=6))
    monkeypatch.setattr(torch, "load", real_load)
    assert counted["n"] == 2                     # steps 5 and 6 only: it resumed
    a = load_file(tmp_path / "full" / "toyclip.safetensors")
    b = load_file(part / "toyclip.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the saved state is what the resumed run starts from: change it and the result moves
    state = torch.load(tmp_path / "perturbed" / "state.pt", weights_only=True)
    state["model"]["text_projection"] += 0.01
    torch.save(state, tmp_path / "perturbed" / "state.pt")
    pretrain(_cfg(tmp_path / "perturbed", steps=6))
    c = load_file(tmp_path / "perturbed" / "toyclip.safetensors")
    assert not torch.equal(a["text_projection"], c["text_projection"])
    # the clock goes on across the resume: "seconds" is the run's total training time
    seconds = [e["seconds"] for e in json.loads((part / "pretrain_log.json").read_text())["log"]]
    assert len(seconds) == 3 and seconds == sorted(seconds)


def test_warm_start_then_contrastive(tmp_path):
    pretrain(_cfg(tmp_path, steps=2, warm_steps=4))
    log = json.loads((tmp_path / "warm_start_log.json").read_text())
    assert [e["warm_step"] for e in log] == [2, 4] and {"shape", "colour"} <= set(log[0])
    assert (tmp_path / "toyclip.safetensors").is_file()


def test_schedule():
    cfg = PretrainConfig(steps=100, warmup=10, lr=1e-3, min_lr=0.0)
    assert step_lr(0, cfg) == 1e-4 and step_lr(9, cfg) == 1e-3
    assert abs(step_lr(55, cfg) - 5e-4) < 1e-9 and step_lr(99, cfg) < 1e-5


def test_model_card_provenance_comes_from_the_run(tmp_path, monkeypatch):
    import open_clip

    import promptviz.backbone.weights
    from promptviz.data.toyworld import sample_batch
    from promptviz.tools.modelcard.provenance import provenance
    from promptviz.tools.modelcard.render import model_card
    from promptviz.train.pretrain import patch_targets
    weights = pretrain(_cfg(tmp_path, steps=2, warm_steps=5, log_every=1, probe_every=2))
    # as in a fresh `promptviz toyworld card` process: promptviz's configs not registered yet
    monkeypatch.delitem(open_clip.factory._MODEL_CONFIGS, "pv-tiny")
    monkeypatch.setattr(promptviz.backbone.weights, "_configs_registered", False)
    p = provenance(tmp_path, weights, seconds=90.0, hardware="a test")
    assert "--warm-steps 5 --steps 2 --batch-size 32" in p["command"]
    assert p["time"].startswith("2 minutes") and p["hardware"] == "a test"
    assert "None" not in p["vision"] + p["text"] + p["embed_dim"]
    assert "| 5 |" in p["log"]                   # warm step 5 is logged in the card's table
    card = {"zero_shot": [], "zeroshot_b2n": [], "coop_b2n": [], "seeds": [1],
            "bars": {"all_three_x_chance": True, "coop_base_gain_mean": 6.0,
                     "shift_drop": {"toy_shapes_sketch": -10.0}}}
    text = model_card(card, p)
    assert "# toyclip — model card" in text and p["command"] in text
    # per-patch targets: 0 on the background, 1 + the object's attribute index on objects
    batch = sample_batch(2, torch.Generator().manual_seed(0), 32)
    y = patch_targets(batch, "shape", ("circle", "square", "triangle", "star", "heart", "cross",
                                       "diamond", "hexagon", "ring", "crescent"), 8)
    assert y.shape == (2, 16) and (y == 0).any() and (y > 0).any()


def test_warm_from_an_earlier_warm_start(tmp_path):
    import pytest

    from promptviz.errors import PromptvizError
    from promptviz.tools.modelcard.provenance import provenance
    from promptviz.train.pretrain import load_warm_start
    warm = pretrain(_cfg(tmp_path / "warm", steps=0, warm_steps=4))
    clip = load_clip(str(warm)).model
    # the image tower is taken over exactly (the export is fp16, the model fp32)
    import open_clip
    model = open_clip.create_model("pv-tiny")
    load_warm_start(model.visual, tmp_path / "warm")
    assert all(torch.equal(a.float(), b) for a, b in
               zip(clip.visual.state_dict().values(), model.visual.state_dict().values()))
    weights = pretrain(_cfg(tmp_path / "run", steps=2, warm_from=str(tmp_path / "warm")))
    assert (tmp_path / "run" / "warm_start_log.json").read_text() == \
        (tmp_path / "warm" / "warm_start_log.json").read_text()
    p = provenance(tmp_path / "run", weights)
    first, second = p["command"].splitlines()
    assert "--out warm --seed 0 --warm-steps 4 --steps 0" in first
    assert "--out run --seed 0 --warm-from warm --warm-steps 0 --steps 2" in second
    assert p["warm"] == "4"
    with pytest.raises(PromptvizError, match="no weights there"):
        pretrain(_cfg(tmp_path / "bad", steps=2, warm_from=str(tmp_path / "nowhere")))
    assert not (tmp_path / "bad").exists()          # nothing written
    with pytest.raises(PromptvizError, match="no image tower of this --model's shape"):
        pretrain(_cfg(tmp_path / "other", steps=2, model="toyclip", image_size=64,
                      warm_from=str(warm)))
    assert not (tmp_path / "other").exists()


def test_attribute_heads_and_noisy_captions_train_and_resume(tmp_path, monkeypatch):
    import pytest

    import promptviz.train.pretrain as pt
    from promptviz.errors import PromptvizError
    kw = dict(aux_weight=0.5, caption_noise=0.3)
    pretrain(_cfg(tmp_path / "full", steps=4, **kw))
    state = torch.load(tmp_path / "full" / "state.pt", weights_only=False)
    assert {k.split(".")[0] for k in state["heads"]} == {
        "shape", "colour", "pattern", "size", "position", "style", "background"}
    assert "heads" not in json.dumps(list(load_file(tmp_path / "full" / "toyclip.safetensors")))
    # a run that dies in step 4 (state saved after step 2) and resumes ends with the same
    # weights: the heads and their optimiser state are saved and restored too
    original, calls = pt.attribute_loss, {"n": 0}

    def interrupted(*args):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(pt, "attribute_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pretrain(_cfg(tmp_path / "part", steps=4, **kw))
    monkeypatch.setattr(pt, "attribute_loss", original)
    pretrain(_cfg(tmp_path / "part", steps=4, **kw))
    a = load_file(tmp_path / "full" / "toyclip.safetensors")
    b = load_file(tmp_path / "part" / "toyclip.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    for bad, match in ((dict(caption_noise=1.5), "caption-noise"),
                       (dict(aux_weight=-1.0), "aux-weight")):
        with pytest.raises(PromptvizError, match=match):
            pretrain(_cfg(tmp_path / "bad", steps=2, **bad))
        assert not (tmp_path / "bad").exists()
    with pytest.raises(PromptvizError, match="aux-weight 0.5, not 0.0"):
        pretrain(_cfg(tmp_path / "part", steps=6, caption_noise=0.3))
    from promptviz.tools.modelcard.provenance import provenance
    command = provenance(tmp_path / "full", tmp_path / "full" / "toyclip.safetensors")["command"]
    assert command.endswith("--caption-noise 0.3 --aux-weight 0.5")


def test_attribute_loss_names_the_main_object():
    from promptviz.data.toyworld import sample_batch
    from promptviz.train.pretrain import ATTRIBUTES, SCENE_ATTRIBUTES, attribute_loss
    batch = sample_batch(16, torch.Generator().manual_seed(0), 32)
    heads = torch.nn.ModuleDict({a: torch.nn.Linear(8, len(v)) for a, v in
                                 {**ATTRIBUTES, **SCENE_ATTRIBUTES}.items()})
    for head in heads.values():
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    f = torch.randn(16, 8)
    # all-zero heads: every attribute is uniform, the loss is the sum of log(#values)
    expected = sum(torch.log(torch.tensor(float(len(v)))) for v in
                   {**ATTRIBUTES, **SCENE_ATTRIBUTES}.values())
    assert torch.isclose(attribute_loss(heads, f, batch.scenes), expected)
    # a head that reads the right answer off the features is (nearly) lossless
    y = [SHAPES_.index(s.objects[s.target].shape) for s in batch.scenes]
    one = torch.nn.ModuleDict({"shape": torch.nn.Linear(len(SHAPES_), len(SHAPES_))})
    with torch.no_grad():
        one["shape"].weight.copy_(50 * torch.eye(len(SHAPES_)))
        one["shape"].bias.zero_()
    assert attribute_loss(one, torch.eye(len(SHAPES_))[y], batch.scenes) < 1e-6


def test_init_from_goes_on_from_a_whole_clip_with_the_image_tower_locked(tmp_path):
    import pytest

    from promptviz.errors import PromptvizError
    from promptviz.tools.modelcard.provenance import provenance
    first = pretrain(_cfg(tmp_path / "first", steps=2))
    kw = dict(init_from=str(first), image_lr_scale=0.0, paint_names=0.5)
    more = pretrain(_cfg(tmp_path / "more", steps=2, **kw))
    a, b = load_file(first), load_file(more)
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("visual."))
    assert any(not torch.equal(a[k], b[k]) for k in a if not k.startswith("visual."))
    lines = provenance(tmp_path / "more", more)["command"].splitlines()
    assert "--out first --seed 0 --warm-steps 0 --steps 2" in lines[0]
    assert lines[-1].startswith("promptviz pretrain --out more --seed 0 --init-from first "
                                "--warm-steps 0 --steps 2")
    assert lines[-1].endswith("--image-lr-scale 0.0 --paint-names 0.5")
    with pytest.raises(PromptvizError, match="paint-names 0.5, not 0.0"):
        pretrain(_cfg(tmp_path / "more", steps=4, init_from=str(first), image_lr_scale=0.0))
    for bad, match in ((dict(kw, warm_steps=3), "nothing to warm up"),
                       (dict(kw, paint_names=2.0), "paint-names"),
                       (dict(kw, image_lr_scale=-1.0), "image-lr-scale"),
                       (dict(kw, init_from=str(tmp_path / "nowhere")), "no weights there")):
        with pytest.raises(PromptvizError, match=match):
            pretrain(_cfg(tmp_path / "bad", steps=2, **bad))
        assert not (tmp_path / "bad").exists()
