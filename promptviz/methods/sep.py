"""SEP — Self-Enhanced Prompt tuning (Yao et al.; methods.md §6).

CoOp's prompt tokens are the same for every input. SEP rebuilds them **before
every selected block** of both towers from that block's own pre-trained tokens:

* text: ``[SOS] v_1 … v_K [class tokens] . [EOT]``; before block ``l`` the K prompt
  states ``P`` are fused with the K tokens right after them (``T``: class name,
  ".", EOT, padding — chosen by position);
* vision: K learnable tokens are appended after CLS and the patches; before block
  ``l`` every other token is scored by its mean squared activation and the top-K
  (CLS may win) become ``T``.

A Token Fusion Module (TFM) per layer and tower turns ``(P, T)`` into the new
prompt states ``z``, which replace ``P``; the selected tokens stay where they are.
Block 0 sees the raw learnable prompts. The rebuild is a backbone ``hook``.

Ablations (options): ``towers="text"`` or ``"vision"`` rebuilds in one tower only (the
other keeps its learned prompts unrebuilt); ``score="random"`` or ``"cls_attention"``
selects the visual tokens by another rule, in training too.

The final features are a residual ensemble with frozen CLIP,
``f̂ = norm(norm(f) + norm(f_frozen))`` and ``t̂ = norm(norm(t) + norm(t0))``, and
the loss adds three regularisers (KgCoOp's text term, a visual consistency term,
and an auxiliary prototype classifier ``W_fc``).

Two code-vs-paper switches, each on its own (``mode`` sets both at once):

* ``attention="batch"`` (the authors' code): their attention module is sequence-first
  but receives ``[B, K, W]`` tensors, so **for each prompt slot it attends across the
  images of the batch** (text: across the classes); ``"sample"`` attends within each
  image over its own K selected tokens (the paper's reading);
* ``selection="batch"`` (code): the visual top-K is chosen once per batch from the
  batch-mean scores; ``"image"``: each image chooses its own.

With either on "batch", a test image's prediction depends on the other images in its
batch, which is why SEP's evaluation batch (500, the authors') is part of the method.
``mode="faithful"`` is batch/batch, ``mode="per_sample"`` sample/image.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from torch import Tensor, nn

from promptviz.backbone import ActivationCache, Backbone, Hook
from promptviz.errors import PromptvizError
from promptviz.methods.base import Method, TrainDefaults, zero_shot_text_features
from promptviz.methods.coop import PromptLearner
from promptviz.methods.inputs import FrozenFeatures, Pixels

TOWERS = {"both": ("txt", "vis"), "text": ("txt",), "vision": ("vis",)}   # rebuilt towers
SCORES = ("energy", "random", "cls_attention")
MODES = {"faithful": ("batch", "batch"), "per_sample": ("sample", "image")}  # (attention,
                                                                              #  selection)
# SEP's own hand-crafted templates for t0 where they differ from CoOp's (the authors' code;
# every other dataset uses the dataset's CoOp template), keyed by the dataset's name.
SEP_TEMPLATES = {
    "fgvc_aircraft": "a photo of an aircraft {}.",
    "dtd": "a photo of a {}, a type of texture.",
    "stanford_cars": "a photo of a {}, a type of car.",
    "food-101": "a photo of a {}, a type of food.",
}


@dataclasses.dataclass
class SEPOptions:
    n_text: int = 6                         # K_t text prompt tokens, "X X X X X X {class}."
    n_visual: int = 4                       # K_v visual prompt tokens after CLS + patches
    layers: tuple[int, ...] | None = None   # blocks before which prompts are rebuilt; None = 1..L-1
    mode: str = "faithful"                  # shorthand for the two below: faithful =
                                            # batch/batch (code), per_sample = sample/image
    attention: str | None = None            # TFM attends across the "batch" | within "sample"
    selection: str | None = None            # visual top-K per "batch" | per "image"
    mlp_hidden: int = 256                   # TFM MLP width
    s_init: float = 0.75                    # initial s1, s2
    kg_weight: float = 8.0                  # text consistency 1 − cos(t̂, t0)
    vis_weight: float = 6.0                 # visual consistency 1 − cos(f_frozen, f̂)
    proto_weight: float = 0.5               # prototype classifier CE
    proto_scale: float = 10.0               # its cosine scale
    ensemble: bool = True                   # residual ensemble with frozen CLIP features
    towers: str = "both"                    # ablation: rebuild in "both" | "text" | "vision";
                                            # the other tower keeps its learned prompts, which
                                            # flow through its blocks unrebuilt (shallow prompts)
    score: str = "energy"                   # ablation: visual selection by "energy" (SEP),
                                            # "random" (the global RNG, seeded per run) or
                                            # "cls_attention"
    template: str = ""                      # hand-crafted template for t0; "" = the dataset's

    def __post_init__(self) -> None:
        if isinstance(self.layers, str):    # --set layers=1,2 (``_coerce`` leaves it a string)
            try:
                self.layers = tuple(int(v) for v in self.layers.strip("()[] ").split(",")
                                    if v.strip())
            except ValueError:
                raise PromptvizError(f"option layers={self.layers!r} is not a comma-separated "
                                     "list of block indices, e.g. layers=4,8") from None
        elif self.layers is not None:       # a list from meta.json
            self.layers = tuple(int(v) for v in self.layers)
        explicit = self.attention is not None and self.selection is not None
        if self.mode not in MODES and not (self.mode == "mixed" and explicit):
            raise PromptvizError(f"option mode={self.mode!r}; use one of {list(MODES)}, or set "
                                 "attention=batch|sample and selection=batch|image")
        attention, selection = MODES.get(self.mode, (None, None))
        self.attention = self.attention or attention
        self.selection = self.selection or selection
        if self.attention not in ("batch", "sample"):
            raise PromptvizError(f"option attention={self.attention!r}; use batch or sample")
        if self.selection not in ("batch", "image"):
            raise PromptvizError(f"option selection={self.selection!r}; use batch or image")
        # the name of what was chosen: a named mode, or "mixed" for one switch alone
        self.mode = next((m for m, v in MODES.items() if v == (self.attention, self.selection)),
                         "mixed")
        if self.n_text < 1 or self.n_visual < 1:
            raise PromptvizError("n_text and n_visual must be at least 1")
        if self.towers not in TOWERS:
            raise PromptvizError(f"option towers={self.towers!r}; use one of {list(TOWERS)}")
        if self.score not in SCORES:
            raise PromptvizError(f"option score={self.score!r}; use one of {list(SCORES)}")


class TokenFusion(nn.Module):
    """TFM: fuse prompt states ``P`` with selected pre-trained tokens ``T`` (both ``[B, K, W]``).

    ``batch_attention=True`` reproduces the authors' code: the ``nn.MultiheadAttention``
    is sequence-first, so ``[B, K, W]`` is read as a sequence of length B with K
    "batch" entries — for each slot k, prompt k of image b attends to token k of
    every image. ``False`` attends within each sample over its own K tokens.
    """

    def __init__(self, width: int, heads: int | None = None, hidden: int = 256,
                 s_init: float = 0.75, batch_attention: bool = True) -> None:
        super().__init__()
        self.batch_attention = batch_attention
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads or max(1, width // 64))  # sequence-first
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, hidden, bias=False)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(hidden, width, bias=False)),
        ]))
        self.s1 = nn.Parameter(torch.tensor(float(s_init)))
        self.s2 = nn.Parameter(torch.tensor(float(s_init)))

    def forward(self, p: Tensor, t: Tensor, need_weights: bool = False
                ) -> tuple[Tensor, Tensor | None]:
        """Return ``z`` ``[B, K, W]`` and, if asked, the head-averaged attention weights:
        ``[K, B, B]`` with batch attention (per slot, image → image), else ``[B, K, K]``."""
        q, kv = self.ln_1(p), self.ln_1(t)
        if not self.batch_attention:            # sequence = the sample's K tokens
            q, kv = q.transpose(0, 1), kv.transpose(0, 1)
        a, w = self.attn(q, kv, kv, need_weights=need_weights)
        if not self.batch_attention:
            a = a.transpose(0, 1)
        z = self.s1 * t + (1 - self.s1) * a                       # s1·T + (1−s1)·MHA(LN P, LN T)
        z = self.s2 * z + (1 - self.s2) * self.mlp(self.ln_2(z))  # s2·z + (1−s2)·MLP(LN2 z)
        return z, w


def resolve_layers(layers: tuple[int, ...] | None, depth: int, tower: str) -> tuple[int, ...]:
    """The blocks of a ``depth``-block tower before which prompts are rebuilt (None = 1..L-1)."""
    if layers is None:
        return tuple(range(1, depth))
    bad = [v for v in layers if not 1 <= v < depth]
    if bad:
        raise PromptvizError(
            f"SEP layers {bad} do not exist in the {depth}-block {tower} tower: use indices in "
            f"1..{depth - 1} (block 0 sees the raw prompts), or layers=none for all of them")
    return tuple(sorted(set(layers)))


def energy_scores(x: Tensor, n: int) -> Tensor:
    """SEP's selection score of the first ``n`` tokens of ``x`` ``[B, N + K, D]``: their mean
    squared activation, ``[B, n]``."""
    return x[:, :n].detach().float().pow(2).mean(-1)   # SEP's score: mean_d x_{n,d}²


def cls_attention_scores(backbone: Backbone, layer: int, x: Tensor, n: int) -> Tensor:
    """The head-averaged attention of CLS to each of the first ``n`` tokens in block ``layer``
    of the image tower, computed on the tokens as they enter it (``[B, n]``)."""
    block = backbone.model.visual.transformer.resblocks[layer]
    return Backbone._attention_weights(block, x.detach())[:, 0, :n].float()


class SEP(Method):
    name = "sep"
    Options = SEPOptions
    image_input = Pixels()       # x = the images: the prompted image pass depends on the prompts
    defaults = TrainDefaults(  # configs/trainers/SEP/*.yaml and scripts/ of the authors
        epochs=50, lr=0.0025, optimizer="adam", batch_size=32, adam_eps=1e-3,
        eval_batch_size=500,
        by_dataset={"imagenet/base2new": {"batch_size": 128, "epochs": 10},
                    "sun397/base2new": {"batch_size": 128, "epochs": 10},
                    "imagenet/fewshot": {"epochs": 3}})    # the cross-dataset source model

    def __init__(self, backbone: Backbone, classnames: list[str], template: str,
                 options: SEPOptions | None = None) -> None:
        super().__init__(backbone, classnames, template, options)
        o, info, dev = self.options, backbone.info, backbone.device
        rebuilt = TOWERS[o.towers]             # a tower not rebuilt has no layers, no TFMs
        self.text_layers = resolve_layers(o.layers, info.text_layers, "text") \
            if "txt" in rebuilt else ()
        self.vis_layers = resolve_layers(o.layers, info.vision_layers, "image") \
            if "vis" in rebuilt else ()
        if 1 + 2 * o.n_text > info.context_length:
            raise PromptvizError(f"n_text={o.n_text} leaves no room for the class tokens in "
                                 f"the {info.context_length}-token text context")
        n_image_tokens = 1 + backbone.grid_size[0] * backbone.grid_size[1]
        if o.n_visual > n_image_tokens:
            raise PromptvizError(f"n_visual={o.n_visual} exceeds the {n_image_tokens} image "
                                 "tokens it selects from")
        batch_attention = o.attention == "batch"

        def tfms(width: int, layers: tuple[int, ...]) -> nn.ModuleDict:
            """One TFM per layer, all starting from the same draw (the authors deep-copy one)."""
            first = TokenFusion(width, None, o.mlp_hidden, o.s_init, batch_attention).to(dev)
            return nn.ModuleDict({str(v): copy.deepcopy(first) for v in layers})

        self.prompt = PromptLearner(backbone, o.n_text, "", len(classnames))  # v_k ~ N(0, 0.02)
        self.visual_prompt = nn.Parameter(
            torch.empty(o.n_visual, info.vision_width, device=dev).normal_(0.0, 0.02))
        self.text_tfm = tfms(info.text_width, self.text_layers)
        self.vis_tfm = tfms(info.vision_width, self.vis_layers)
        # Auxiliary prototype classifier of the *training* classes (unused at test time).
        self.proto_classes = list(classnames)
        self.W_fc = nn.Parameter(torch.zeros(len(classnames), info.embed_dim, device=dev))
        self.register_buffer("proto_count", torch.zeros(len(classnames), device=dev))
        self._prototypes_ready = False      # host-side flag: no device sync in the step
        self.set_classnames(classnames, template)

    @classmethod
    def dataset_options(cls, dataset: str, protocol: str = "base2new") -> dict[str, Any]:
        """SEP's own template for ``t0`` on the four datasets where it differs from CoOp's."""
        return {"template": SEP_TEMPLATES[dataset]} if dataset in SEP_TEMPLATES else {}

    def set_classnames(self, classnames: list[str], template: str | None = None) -> None:
        """New candidate classes: new prompts' frozen parts and new ``t0``; ``W_fc`` is kept."""
        self.classnames = list(classnames)
        self.template = template or self.template
        self.prompt.set_classnames(self.classnames)
        t0 = zero_shot_text_features(self.backbone, self.classnames,
                                     self.options.template or self.template)
        self.register_buffer("t0", t0, persistent=False)

    # -- the rebuild hook --------------------------------------------------------
    def token_scores(self, layer: int, x: Tensor, n: int) -> Tensor:
        """Selection score of each of the first ``n`` visual tokens entering block ``layer``
        (``x``: ``[B, N + K, D_v]``, the K prompts last): their mean squared activation,
        ``[B, N]``. The top-K win. ``options.score`` trains with another rule instead (an
        ablation); ``promptviz.analysis.interventions`` swaps the rule at test time."""
        if self.options.score == "random":                 # the run's seeded global RNG
            return torch.rand(x.shape[0], n, device=x.device)
        if self.options.score == "cls_attention":
            return cls_attention_scores(self.backbone, layer, x, n)
        return energy_scores(x, n)

    def fuse(self, tower: str, layer: int, p: Tensor, t: Tensor, need_weights: bool = False
             ) -> tuple[Tensor, Tensor | None]:
        """The layer's TFM: new prompt states ``z`` from prompts ``p`` and selected ``t``."""
        tfm = (self.text_tfm if tower == "txt" else self.vis_tfm)[str(layer)]
        dtype = tfm.ln_1.weight.dtype
        z, attn = tfm(p.to(dtype), t.to(dtype), need_weights=need_weights)
        return z.to(p.dtype), attn

    def _hook(self, tower: str, record: dict | None = None) -> Hook:
        """``hook(layer, x)`` for one forward of one tower; fills ``record[layer]`` if given."""
        fusers = self.text_tfm if tower == "txt" else self.vis_tfm
        k = self.options.n_text if tower == "txt" else self.options.n_visual
        per_image = self.options.selection == "image"

        def hook(layer: int, x: Tensor) -> Tensor:
            if str(layer) not in fusers:
                return x
            scores = None
            if tower == "txt":                  # x: [C, L, D_t]; prompts at 1..K
                p, t = x[:, 1:1 + k], x[:, 1 + k:1 + 2 * k]   # T: the K tokens after the prompt
                idx = torch.arange(1 + k, 1 + 2 * k, device=x.device)
            else:                               # x: [B, N + K, D_v]; prompts at the end
                n = x.shape[1] - k
                p = x[:, n:]
                scores = self.token_scores(layer, x, n)           # [B, N]
                if per_image:                   # top-K per image
                    idx = scores.topk(k, dim=-1).indices          # [B, K]
                    t = x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))
                else:                           # authors: top-K of the batch-mean score
                    idx = scores.mean(0).topk(k).indices          # [K]
                    t = x[:, idx]
            z, attn = self.fuse(tower, layer, p, t, need_weights=record is not None)
            if record is not None:
                tfm = fusers[str(layer)]
                record[layer] = {"selected": idx.cpu().numpy(),
                                 "attention": None if attn is None
                                 else attn.detach().float().cpu().numpy(),
                                 "s1": float(tfm.s1), "s2": float(tfm.s2)}
                if scores is not None:
                    record[layer]["scores"] = scores.cpu().numpy()
            if tower == "txt":
                return torch.cat([x[:, :1], z, x[:, 1 + k:]], dim=1)
            return torch.cat([x[:, :n], z], dim=1)

        return hook

    # -- features ---------------------------------------------------------------
    def encode_text(self, record: dict | None = None,
                    cache: ActivationCache | None = None) -> Tensor:
        """Prompted text features ``t_c`` (not normalised), ``[C, d]``."""
        return self.backbone.encode_text_embeddings(self.prompt(), self.prompt.ids,
                                                    hook=self._hook("txt", record), cache=cache)

    def encode_image_prompted(self, images: Tensor, record: dict | None = None,
                              cache: ActivationCache | None = None) -> Tensor:
        """Prompted image features ``f`` (not normalised), ``[B, d]``."""
        return self.backbone.encode_image(images, extra_tokens=self.visual_prompt,
                                          hook=self._hook("vis", record), cache=cache)

    def text_features(self) -> Tensor:
        """``t̂ = norm(norm(t) + norm(t0))`` for the current classes; image-independent."""
        t = F.normalize(self.encode_text().float(), dim=-1)
        if self.options.ensemble:
            t = F.normalize(t + self.t0, dim=-1)                  # t̂ = norm(norm(t) + t0)
        return t

    def image_features(self, images: Tensor) -> Tensor:
        """The frozen, un-prompted image feature ``norm(f_frozen)`` ``[B, d]`` (no grad)."""
        return FrozenFeatures()(self.backbone, images)["f"]

    def fused_image_features(self, images: Tensor, frozen: bool = True
                             ) -> tuple[Tensor, Tensor | None]:
        """``(f̂, norm(f_frozen))``; ``f_frozen`` is a second, un-prompted pass (no grad)."""
        f = F.normalize(self.encode_image_prompted(images).float(), dim=-1)
        f0 = self.image_features(images).float() if frozen or self.options.ensemble else None
        if self.options.ensemble:
            f = F.normalize(f + f0, dim=-1)                       # f̂ = norm(norm(f) + norm(f0))
        return f, f0

    def logits(self, images: Tensor, text: Tensor | None = None) -> Tensor:
        """``s · f̂ @ t̂ᵀ``. In faithful mode ``f̂`` depends on the other images of the batch."""
        text = self.text_features() if text is None else text
        f, _ = self.fused_image_features(images, frozen=False)
        return self.backbone.logit_scale * f @ text.float().t()

    # -- prototype classifier -----------------------------------------------------
    @torch.no_grad()
    def init_prototypes(self, data: Iterable | tuple[Tensor, Tensor]) -> None:
        """``W_fc[c]`` = norm(mean normalised frozen image feature of class ``c``), unit rows
        as in the authors' code (Adam with eps 1e-3 and weight decay is not scale-invariant,
        so the rows' norm changes how the prototypes train).

        ``data`` is a loader of ``(images, labels, …)`` batches (one pass, as the
        authors do), or a pair ``(features [N, d] or images [N, 3, H, W], labels [N])``.
        """
        sums, counts = torch.zeros_like(self.W_fc), torch.zeros_like(self.proto_count)
        batches = [data] if isinstance(data, tuple) and torch.is_tensor(data[0]) else data
        for batch in batches:
            x, y = batch[0].to(self.backbone.device), batch[1].to(self.backbone.device)
            f = F.normalize(x.float(), dim=-1) if x.dim() == 2 else self.image_features(x)
            sums.index_add_(0, y, f.float())
            counts.index_add_(0, y, torch.ones_like(y, dtype=counts.dtype))
        seen = counts > 0
        self.W_fc[seen] = F.normalize(sums[seen] / counts[seen, None], dim=-1)
        self.proto_count.copy_(counts)
        self._prototypes_ready = bool(seen.all())

    def prepare(self, loader: Iterable) -> None:
        """One pass over the training data initialises the prototypes (authors' code)."""
        self.init_prototypes(loader)

    @torch.no_grad()
    def _lazy_prototypes(self, f0: Tensor, labels: Tensor) -> None:
        """Without :meth:`init_prototypes`, a class's prototype is the (normalised) mean
        frozen feature of the first training batch that contains it. Runs only until every
        class has one: after that the step checks a host-side flag, with no device sync."""
        for c in labels.unique():
            if self.proto_count[c] == 0:
                self.W_fc[c] = F.normalize(f0[labels == c].mean(0), dim=-1)
                self.proto_count[c] = (labels == c).sum()
        self._prototypes_ready = bool((self.proto_count > 0).all())

    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        super().load_trainable_state(state)
        self._prototypes_ready = bool((self.proto_count > 0).all())

    # -- training objective ---------------------------------------------------------
    def loss(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        o = self.options
        if self.classnames != self.proto_classes:
            raise PromptvizError(
                f"SEP's prototype classifier was built for {len(self.proto_classes)} training "
                "classes; train on those classes (set_classnames only switches test classes)")
        text = self.text_features()                                   # t̂ [C, d]
        f, f0 = self.fused_image_features(images)                     # f̂, f_frozen [B, d]
        logits = self.backbone.logit_scale * f @ text.t()             # s · f̂ @ t̂ᵀ
        ce = F.cross_entropy(logits, labels)
        kg = 1.0 - F.cosine_similarity(text, self.t0, dim=-1).mean()  # 1 − mean_c cos(t̂, t0)
        vis = 1.0 - F.cosine_similarity(f0, f, dim=-1).mean()        # 1 − mean_b cos(f0, f̂)
        if not self._prototypes_ready:
            self._lazy_prototypes(f0, labels)
        w = F.normalize(self.W_fc.float(), dim=-1)
        proto = (F.cross_entropy(o.proto_scale * f @ w.t(), labels)   # CE(10·cos(f̂, W_fc))
                 + F.cross_entropy(o.proto_scale * f0 @ w.t(), labels))  # + CE(10·cos(f0, W_fc))
        loss = ce + o.kg_weight * kg + o.vis_weight * vis + o.proto_weight * proto
        terms = {"ce": ce, "kg": kg, "vis": vis, "proto": proto}
        return loss, logits, {k: v.detach() for k, v in terms.items()}

    # -- for the views ----------------------------------------------------------------
    @torch.no_grad()
    def selection_record(self, images: Tensor) -> dict[str, Any]:
        """What SEP selected and fused at every rebuilt layer, as numpy arrays.

        ``{"mode", "vision": {layer: …}, "text": {layer: …}}``; each layer holds
        ``selected`` (vision: token indices, 0 = CLS, 1.. = patches, ``[K]`` in
        faithful mode or ``[B, K]`` per sample; text: positions ``[K]``), ``attention``
        (faithful ``[K, B, B]`` or ``[K, C, C]``; per sample ``[B, K, K]`` or ``[C, K, K]``),
        ``s1``, ``s2``, and for vision the token ``scores`` ``[B, N]``.
        """
        vision: dict[int, dict] = {}
        text: dict[int, dict] = {}
        self.encode_image_prompted(images, record=vision)
        self.encode_text(record=text)
        return {"mode": self.options.mode, "attention_over": self.options.attention,
                "selection_per": self.options.selection, "grid": tuple(self.backbone.grid_size),
                "vision": vision, "text": text}
