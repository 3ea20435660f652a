"""Looking inside a frozen CLIP: what a caption and an image become, where the CLS token
looks, and which classes zero-shot CLIP mixes up (notebooks 01 and 02).

Plain functions of a :class:`~promptviz.backbone.Backbone` (or a method) and arrays:

* :func:`token_strings` — the BPE pieces the text tower reads, start and end tokens included;
* :func:`prompt_layout` — the same for a CoOp-style prompt, the learned slots marked ``[v1]``…;
* :func:`load_images` — samples as a CLIP-ready batch plus the pixels the model sees;
* :func:`cls_attention` — CLS → patch attention of chosen visual layers;
* :func:`attention_on_object` — the share of that attention landing on given patches;
* :func:`confusion_matrix`, :func:`top_confusions`, :func:`per_class_accuracy` — from
  per-image predictions (:func:`promptviz.train.evaluate.predict`), the class pairs they mix up
  and each class's accuracy;
* :func:`text_drift` — how far a learned prompt moved each class's text feature from the
  hand-made template's (KgCoOp's measure);
* :func:`image_features`, :func:`linear_head` — how much K labelled shots can teach *any*
  classifier on the frozen image features, the headroom a learned prompt competes for;
* :func:`global_and_local_features`, :func:`probe_accuracy` — whether a label is easier
  to read from the image tower's patch tokens than from its global feature (the premise of
  a method that mines local tokens, such as TextRefiner).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from promptviz.arrays import to_uint8_image
from promptviz.backbone import ActivationCache, Backbone
from promptviz.data import ImageDataset, Sample, clip_transform
from promptviz.data import load_images as read_images
from promptviz.methods import Method
from promptviz.methods.base import zero_shot_text_features
from promptviz.methods.inputs import FrozenFeatures
from promptviz.precision import autocast_for

# --- text ----------------------------------------------------------------------------

def _pieces(backbone: Backbone, ids: Tensor, strip_eow: bool) -> list[str]:
    decoder = backbone.tokenizer.decoder
    out = []
    for i in ids.tolist():
        if i == 0:                       # padding after the end token
            continue
        piece = decoder[int(i)]
        out.append(piece.replace("</w>", "") if strip_eow else piece)
    return out


def token_strings(backbone: Backbone, text: str, strip_eow: bool = True) -> list[str]:
    """The BPE pieces of ``text`` as the text tower reads them (padding dropped).

    The first piece is ``<start_of_text>``, the last ``<end_of_text>`` (EOT), whose final
    state becomes the text feature. ``strip_eow=False`` keeps CLIP's ``</w>`` end-of-word
    marks, which show where a word was split into several pieces.
    """
    return _pieces(backbone, backbone.tokenize([text])[0].cpu(), strip_eow)


def prompt_layout(method: Method, index: int = 0) -> list[str]:
    """The token sequence a CoOp-style method feeds the text tower for class ``index``.

    Learned context slots read ``[v1]`` … ``[vM]``; the rest are the frozen pieces
    (start token, class-name pieces, ``.``, end token), in the order of the method's
    ``class_token_position`` (end, middle or front).
    """
    prompt = getattr(method, "prompt", None)
    if prompt is None or not hasattr(prompt, "n_ctx"):
        raise TypeError(f"{type(method).__name__} has no learned text prompt (CoOp-style)")
    pieces = _pieces(method.backbone, prompt.ids[index].cpu(), strip_eow=True)
    m, n = prompt.n_ctx, prompt.name_lens[index]
    ctx = [f"[v{i + 1}]" for i in range(m)]
    start, name, rest = pieces[:1], pieces[1 + m:1 + m + n], pieces[1 + m + n:]
    if prompt.position == "front":
        return start + name + ctx + rest
    if prompt.position == "middle":
        return start + ctx[:m // 2] + name + ctx[m // 2:] + rest
    return start + ctx + name + rest


# --- images --------------------------------------------------------------------------

def load_images(samples: Sequence[Sample], backbone: Backbone) -> tuple[Tensor, np.ndarray]:
    """``samples`` as a CLIP-normalised batch ``[B, 3, S, S]`` on the backbone's device, and
    the same pixels as uint8 ``[B, S, S, 3]`` (after resize and crop: what the model sees)."""
    images = read_images(samples, backbone.image_size, backbone.mean, backbone.std)
    raw = np.stack([to_uint8_image(x.numpy(), backbone.mean, backbone.std) for x in images])
    return images.to(backbone.device), raw


@torch.no_grad()
def cls_attention(backbone: Backbone, images: Tensor,
                  layers: Iterable[int] | None = None) -> Tensor:
    """CLS → patch attention (heads averaged) of visual ``layers`` (default: all):
    ``[L, B, g²]``, row-major patches. The CLS → CLS weight is left out, so a row sums
    to less than 1."""
    layers = list(range(backbone.info.vision_layers)) if layers is None else list(layers)
    cache = ActivationCache(attn_layers=layers, keep_resid=False)
    backbone.encode_image(images.to(backbone.device), cache=cache)
    return torch.stack([cache.cls_attention(layer) for layer in layers]).float().cpu()


def attention_on_object(attention: object, object_mask: object) -> float:
    """Mean share of each image's patch attention that falls on its ``object_mask`` patches.

    ``attention`` ``[B, g²]`` (or one ``[g²]``), non-negative; ``object_mask`` the same
    shape, True on object patches (e.g. :func:`promptviz.analysis.scores.patch_object_mask`).
    Attention spread evenly scores the object's area share
    (:func:`promptviz.analysis.scores.object_area_share`).
    """
    a = attention.detach().float().cpu().numpy() if hasattr(attention, "detach") \
        else np.asarray(attention, np.float64)
    a = a.reshape(1, -1) if a.ndim == 1 else a.reshape(a.shape[0], -1)
    mask = np.asarray(object_mask, bool).reshape(a.shape)
    total = a.sum(axis=1)
    share = (a * mask).sum(axis=1) / np.where(total > 0, total, 1.0)
    return float(share.mean())


# --- predictions ---------------------------------------------------------------------

def confusion_matrix(preds: object, labels: object, n_classes: int) -> np.ndarray:
    """Counts ``[n_classes, n_classes]``: row = true class, column = predicted class."""
    p, y = np.asarray(preds, np.int64).ravel(), np.asarray(labels, np.int64).ravel()
    if p.shape != y.shape:
        raise ValueError(f"{p.size} predictions for {y.size} labels")
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (y, p), 1)
    return cm


def per_class_accuracy(preds: object, labels: object, n_classes: int) -> np.ndarray:
    """Accuracy in percent per true class (``[n_classes]``; NaN for a class with no images)."""
    cm = confusion_matrix(preds, labels, n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100.0 * np.diag(cm) / cm.sum(1)


def text_drift(method: Method, classnames: list[str], template: str) -> np.ndarray:
    """``cos(t_c, t0_c)`` per class (``[C]``): the method's class text feature against the
    hand-made template's, 1 where the prompt left a class where the template put it.
    KgCoOp's regulariser is ``1 − mean_c`` of this (methods.md §4)."""
    if method.text_depends_on_image:
        raise ValueError(f"{method.name}'s class features depend on the image (one set per "
                         "image), so they have no single drift per class")
    method.set_classnames(classnames, template)
    method.eval()
    with torch.no_grad():
        with autocast_for(method.backbone.device):
            t = method.text_features().float()
        t0 = zero_shot_text_features(method.backbone, classnames, template)
    t, t0 = t / t.norm(dim=-1, keepdim=True), t0 / t0.norm(dim=-1, keepdim=True)
    return (t * t0).sum(-1).cpu().numpy()


def top_confusions(cm: np.ndarray, classnames: Sequence[str], k: int = 5
                   ) -> list[tuple[str, str, float]]:
    """The ``k`` most frequent mistakes as ``(true, predicted, percent of the true class's
    images)``, largest first (ties in class order); pairs that never happen are left out."""
    cm = np.asarray(cm, np.int64)
    rows = np.maximum(cm.sum(axis=1, keepdims=True), 1)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off.ravel(), kind="stable")[:k]
    out = []
    for flat in order:
        t, p = divmod(int(flat), cm.shape[1])
        if off[t, p] == 0:
            break
        out.append((str(classnames[t]), str(classnames[p]), 100.0 * off[t, p] / rows[t, 0]))
    return out


# --- headroom: what a few shots can teach a classifier on frozen features ------------

@torch.no_grad()
def image_features(backbone: Backbone, samples: Sequence[Sample], batch_size: int = 128
                   ) -> tuple[Tensor, Tensor]:
    """L2-normalised image embeddings ``[N, D]`` (fp32, CPU) and labels ``[N]`` of ``samples``,
    with CLIP's eval preprocessing."""
    loader = DataLoader(ImageDataset(samples, clip_transform(backbone.image_size, backbone.mean,
                                                             backbone.std)),
                        batch_size=batch_size, shuffle=False)
    feats, labels = [torch.zeros(0, backbone.embed_dim)], [torch.zeros(0, dtype=torch.long)]
    with autocast_for(backbone.device):
        for images, y, _ in loader:             # what a frozen-input method's x holds
            feats.append(FrozenFeatures()(backbone, images.to(backbone.device))["f"].float().cpu())
            labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def linear_head(backbone: Backbone, train: Sequence[Sample], val: Sequence[Sample],
                test: Sequence[Sample], classnames: Sequence[str], template: str,
                max_steps: int = 300, every: int = 10, lr: float = 1e-4) -> dict[str, float]:
    """Zero-shot accuracy on ``test`` against a linear head trained on ``train``'s features.

    The head starts as the zero-shot classifier (the normalised text embeddings of
    ``template`` filled with each class name, at CLIP's logit scale) and takes full-batch
    Adam steps on the cross-entropy of ``train``; every ``every`` steps it is scored on
    ``val`` and the best step (the earliest on ties; step 0 is the zero-shot classifier
    itself) is the one reported on ``test``. Any text-side method -- a learned prompt
    included -- ends in such a head, so if this head does not beat zero-shot, the shots
    carry little that a prompt could learn. Returns percentages -- ``zero_shot``,
    ``linear_head`` (test, at the step chosen on val), ``val``, ``train`` (at that step) and
    ``best_test``, the best test score of any scored step: an optimistic ceiling, since it
    picks the step on the test split -- and the chosen ``step``.
    """
    xs = {k: image_features(backbone, v) for k, v in
          (("train", train), ("val", val), ("test", test))}
    with torch.no_grad():
        text = zero_shot_text_features(backbone, list(classnames), template).cpu()
    w = torch.nn.Parameter(text)
    scale = backbone.logit_scale

    def acc(split: str) -> float:
        x, y = xs[split]
        with torch.no_grad():
            pred = (x @ torch.nn.functional.normalize(w, dim=-1).T).argmax(-1)
        return 100.0 * float((pred == y).float().mean()) if len(y) else float("nan")

    zero_shot = acc("test")
    best, ceiling = (acc("val"), 0, zero_shot, acc("train")), zero_shot
    optim = torch.optim.Adam([w], lr=lr)
    x, y = xs["train"]
    for step in range(1, max_steps + 1):
        loss = torch.nn.functional.cross_entropy(
            scale * x @ torch.nn.functional.normalize(w, dim=-1).T, y)
        optim.zero_grad()
        loss.backward()
        optim.step()
        if step % every:
            continue
        ceiling = max(ceiling, acc("test"))
        if (v := acc("val")) > best[0]:
            best = (v, step, acc("test"), acc("train"))
    return {"zero_shot": zero_shot, "linear_head": best[2], "val": best[0], "train": best[3],
            "best_test": ceiling, "step": float(best[1])}


# --- global vs local: where a frozen image tower keeps a detail ------------------------

@torch.no_grad()
def global_and_local_features(backbone: Backbone, images: Tensor, batch_size: int = 128
                              ) -> dict[str, Tensor]:
    """Per image, from one frozen pass (fp32, CPU, every row L2-normalised): ``global``, the
    image feature ``norm(f_img)`` ``[B, d]``; ``patch_mean`` and ``patch_max``, the mean and
    the element-wise max over the patches of the last block's tokens through ``ln_post`` and
    ``proj`` (the raw local tokens that TextRefiner's alignment MLP reads; each normalised
    first), ``[B, d]``."""
    last = backbone.info.vision_layers - 1
    out: dict[str, list[Tensor]] = {"global": [], "patch_mean": [], "patch_max": []}
    with autocast_for(backbone.device):
        for i in range(0, len(images), batch_size):
            cache = ActivationCache(attn_layers=[last])
            f = backbone.encode_image(images[i:i + batch_size].to(backbone.device), cache=cache,
                                      normalize=True).float().cpu()
            patches = torch.nn.functional.normalize(cache["vis_proj"][:, 1:].float().cpu(), dim=-1)
            out["global"].append(f)
            out["patch_mean"].append(patches.mean(dim=1))
            out["patch_max"].append(patches.amax(dim=1))
    return {k: torch.nn.functional.normalize(torch.cat(v), dim=-1) for k, v in out.items()}


def probe_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor,
                   steps: int = 500, lr: float = 0.01, seed: int = 0) -> float:
    """Test accuracy (%) of a linear classifier (softmax regression, full-batch Adam for
    ``steps`` steps on features standardised with the training set's mean and std) trained
    on ``train_x`` ``[N, d]`` → ``train_y``: how linearly readable a label is from a feature."""
    train_x, test_x = train_x.float().cpu(), test_x.float().cpu()
    train_y, test_y = train_y.long().cpu(), test_y.long().cpu()
    n = int(max(train_y.max(), test_y.max())) + 1
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    gen = torch.Generator().manual_seed(seed)
    w = torch.nn.Parameter(0.01 * torch.randn(train_x.shape[1], n, generator=gen))
    b = torch.nn.Parameter(torch.zeros(n))
    optim = torch.optim.Adam([w, b], lr=lr)
    x = (train_x - mu) / sd
    with torch.enable_grad():
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(x @ w + b, train_y)
            optim.zero_grad()
            loss.backward()
            optim.step()
    with torch.no_grad():
        pred = (((test_x - mu) / sd) @ w + b).argmax(-1)
    return 100.0 * float((pred == test_y).float().mean())
