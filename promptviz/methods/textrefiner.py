"""TextRefiner — internal visual features refine text prompts (Xie et al., AAAI 2025; §5).

A plug-in around a prompt method (CoOp, KgCoOp, MaPLe, PromptKD). Learned prompts are shared
by all classes and miss fine-grained visual concepts, so TextRefiner keeps a small
**local cache** ``A ∈ [M, d]`` of concept directions written from the image
tower's own patch tokens, and lets every class's text feature read from it:

* **read** (every forward): ``r_c = softmax_j(q_c·A_j / τ)·A`` with ``q = norm(t)``
  (τ = 1 in the authors' code, ``read_temperature``);
* **aggregate**: ``t̂_c = t_c + α·W[t_c; r_c]``; logits ``s·norm(f_img) @ t̂ᵀ``;
* **write** (training only, after the read): the B·N aligned visual tokens of the
  batch are folded into their nearest slots by a momentum rule (:func:`cache_write`).

Training adds a local alignment loss (a few visual tokens per image classified with
the un-refined text, through a small feature-alignment MLP) and an L1 regulariser
keeping ``t̂`` near ``t``. At test time ``t̂`` does not depend on the image, so it is
computed once per evaluation and inference costs what the wrapped method costs.

The defaults follow the authors' code; the ``Code vs paper`` options switch to the
paper's reading of each detail (methods.md §5.4).

**On MaPLe and PromptKD** (``base_method=maple|promptkd``) the image side is the wrapped
method's *prompted* image tower, so TextRefiner trains from pixels: ``f`` and the local tokens
(the last block's, through ``ln_post`` and ``proj``) come from it, with gradients into its
prompts; CLS attention is read over the patches only (not the visual prompts).

* PromptKD (the authors' ``promptkd_textrefiner/``): the text is the teacher's ``t^T`` (the
  cache and ``W`` live in the teacher's width ``D_T``), the alignment MLP maps the student's
  tokens ``d_S → D_T`` (their ``mid_image_trans``), and the three terms are distillation terms,
  no label anywhere: ``L = w·KL(z^T ‖ s·f@t̂ᵀ) + w/100·KL(z^T ‖ s·z@tᵀ) + w/50·L3`` with
  ``w`` = PromptKD's KD weight (1000; 200 on FGVCAircraft, Flowers102, DTD) and the KL as
  :func:`~promptviz.methods.promptkd.kd_loss`. The schedule is PromptKD's, and the student
  sees every training image, unlabelled, like PromptKD itself.
* MaPLe: the CoOp recipe (``L1 + L2/β + γ·L3``) on MaPLe's prompted features, with MaPLe's
  schedule. The authors show MaPLe+TextRefiner only in an efficiency figure and publish no code
  for it; this is promptviz's reading.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from promptviz.backbone import ActivationCache, Backbone
from promptviz.errors import PromptvizError
from promptviz.methods.base import Method, TrainDefaults, parse_options
from promptviz.methods.coop import CoOp
from promptviz.methods.inputs import FrozenFeatures, Pixels
from promptviz.methods.kgcoop import KgCoOp, KgCoOpOptions
from promptviz.methods.maple import MaPLe
from promptviz.methods.promptkd import SMALL_KD_WEIGHT, PromptKD, kd_loss

# wrappable: one image-independent text feature per class
BASE_CLASSES: dict[str, type[Method]] = {"coop": CoOp, "kgcoop": KgCoOp, "maple": MaPLe,
                                         "promptkd": PromptKD}
BASES = tuple(BASE_CLASSES)
# the TextRefiner options each base reads (CoOp and KgCoOp: every field their options share)
FORWARDED = {"maple": ("ctx_init",), "promptkd": ("teacher", "teacher_backbone", "kd_weight",
                                                  "transductive")}
CHOICES = {"local_text": ("unrefined", "refined"), "local_tokens": ("cls_topk_mean", "topk"),
           "write_tokens": ("all", "patches"), "cache_update": ("momentum", "gradient")}


@dataclasses.dataclass
class TextRefinerOptions(KgCoOpOptions):
    """Wrapped method + refiner options. The inherited CoOp/KgCoOp fields (``n_ctx``,
    ``ctx_init``, ``class_specific``, ``class_token_position``, ``kg_weight``) are
    forwarded to the wrapped method when its own options have them."""

    base_method: str = "coop"           # the wrapped method: coop | kgcoop | maple | promptkd
    teacher: str = "promptsrc"          # base_method=promptkd: PromptKD's teacher (a run
                                        # folder or a method trained first)
    teacher_backbone: str = ""          # base_method=promptkd: the teacher's CLIP ("" = same)
    kd_weight: float = 1000.0           # base_method=promptkd: w, PromptKD's KD weight
    transductive: bool = True           # base_method=promptkd: the student sees all classes'
                                        # images (False: the base classes' only)
    n_slots: int = 25                   # M, slots in the local cache
    alpha: float = 0.2                  # α, weight of what is read in t̂ = t + α·W[t; r]
    beta: float = 50.0                  # β, L2 enters the loss as L2/β
    gamma: float = 20.0                 # γ, weight of the L1 regulariser L3
    momentum: float = 0.8               # m in A_i ← m·A_i + (1−m)·Σ w_t v_t
    topk: int = 5                       # k patches with the highest CLS attention in L2
    layer: int = -1                     # visual block whose output tokens are read (-1 = last)
    read_temperature: float = 1.0       # τ of the read softmax_j(q_c·A_j / τ); code: 1
    # -- code vs paper (methods.md §5.4); the defaults are the authors' code
    renormalize_refined: bool = False   # True: logits use norm(t̂) instead of t̂
    normalize_local: bool = False       # True: the local tokens of L2 are L2-normalised
    local_text: str = "unrefined"       # "refined": L2 classifies local tokens with t̂
    local_tokens: str = "cls_topk_mean"  # "topk": L2 uses only the top-k patches
    write_tokens: str = "all"           # "patches": the cache write leaves out CLS
    cache_update: str = "momentum"      # "gradient": A is an nn.Parameter trained by backprop


@torch.no_grad()
def cache_write(cache: Tensor, tokens: Tensor, momentum: float) -> Tensor:
    """The momentum write of the local cache; returns the new cache ``[M, d]``.

    Every token ``v_t`` (normalised) goes to its most similar slot. A slot that got
    tokens moves towards their weighted sum, each token weighted by how strongly the
    slot prefers it over all other tokens of the batch; then every slot is normalised.
    """
    v = F.normalize(tokens.reshape(-1, cache.shape[1]).float(), dim=-1)   # [T, d]
    a = cache.float()
    s = v @ a.t()                                               # S = v Aᵀ  [T, M]
    p_tok, p_slot = s.softmax(dim=0), s.softmax(dim=1)          # over tokens / over slots
    slot = p_slot.argmax(dim=1)                                 # each token → its top-1 slot
    w = p_tok / p_tok.max(dim=0, keepdim=True).values   # w_t = P_tok[t,i] / max_t' P_tok[t',i]
    assign = F.one_hot(slot, a.shape[0]).to(v.dtype)            # [T, M], 1 where t → i
    pulled = (assign * w).t() @ v                               # Σ_{t→i} w_t v_t  [M, d]
    hit = assign.sum(dim=0, keepdim=True).t() > 0               # slots that got tokens
    new = torch.where(hit, momentum * a + (1 - momentum) * pulled, a)  # A_i ← m·A_i + (1−m)·Σ
    return F.normalize(new, dim=-1).to(cache.dtype)             # every slot re-normalised


def feature_alignment(d: int, d_out: int | None = None) -> nn.Sequential:
    """Per-token ``Linear(d → d_out) → BatchNorm → ReLU → Linear(d_out → d_out)`` (1×1 convs in
    the authors' code; ``d_out = d`` but on PromptKD, whose text lives in the teacher's width)."""
    d_out = d_out or d
    return nn.Sequential(nn.Linear(d, d_out), nn.BatchNorm1d(d_out), nn.ReLU(),
                         nn.Linear(d_out, d_out))


class TextRefiner(Method):
    name = "textrefiner"
    Options = TextRefinerOptions
    defaults = TrainDefaults(epochs=10, lr=0.002, optimizer="sgd", batch_size=32,
                             select="best_val")    # TEST.FINAL_MODEL: best_val in its config

    def __init__(self, backbone: Backbone, classnames: list[str], template: str,
                 options: TextRefinerOptions | None = None, base: Method | None = None
                 ) -> None:
        """``base``: an already built method to wrap (of ``options.base_method``), e.g. a
        PromptKD student with its teacher in hand; by default one is built from the options."""
        super().__init__(backbone, classnames, template, options)
        o = self.options
        for key, allowed in CHOICES.items():
            if getattr(o, key) not in allowed:
                raise PromptvizError(f"{key}={getattr(o, key)!r}; use one of {allowed}")
        n_layers, n_patches = backbone.info.vision_layers, backbone.grid_size[0] ** 2
        if not -n_layers <= o.layer < n_layers:
            raise PromptvizError(f"layer={o.layer}; this backbone has {n_layers} visual blocks")
        if not (math.isfinite(o.read_temperature) and o.read_temperature > 0):
            raise PromptvizError(f"read_temperature={o.read_temperature}; use a positive number "
                                 "(1 is the authors' read; smaller makes it sharper)")
        if not 1 <= o.topk <= n_patches:
            raise PromptvizError(f"topk={o.topk}; choose 1 to {n_patches} (the patch count)")
        self.layer = o.layer % n_layers
        self.n_patches = n_patches
        if base is not None and base.name != o.base_method:
            raise PromptvizError(f"base is a {base.name} method but base_method="
                                 f"{o.base_method!r}; pass the matching base_method")
        self.base = base or self._build_base(backbone, classnames, template)   # yields t
        self.prompted = isinstance(self.base.image_input, Pixels)      # MaPLe, PromptKD
        self.distils = isinstance(self.base, PromptKD)
        # x: frozen f, tokens, attn (CoOp, KgCoOp) or the pixels (a prompted image tower)
        self.image_input = Pixels() if self.prompted else FrozenFeatures(tokens_layer=self.layer)
        d = self.base.teacher.backbone.embed_dim if self.distils else backbone.embed_dim
        self.align = feature_alignment(backbone.embed_dim, d).to(backbone.device)  # training
        self.W = nn.Linear(2 * d, d, bias=False).to(backbone.device)   # aggregation
        # A = norm(U[0,1)), drawn from the global generator that the run's seed set (as the
        # authors do), so each seed starts from its own cache
        cache = F.normalize(torch.rand(o.n_slots, d), dim=-1)
        cache = cache.to(backbone.device)
        if o.cache_update == "gradient":
            self.cache = nn.Parameter(cache)                # paper story: A learned by backprop
        else:
            self.register_buffer("cache", cache)            # code: momentum-written, in checkpoint
        self.set_classnames(classnames, template)

    def _build_base(self, backbone: Backbone, classnames: list[str], template: str) -> Method:
        o = self.options
        if o.base_method == "cocoop":
            raise PromptvizError(
                "base_method='cocoop' is not supported: its text features depend on the image, "
                "and TextRefiner refines one image-independent text feature per class; use "
                f"one of {list(BASES)}")
        if o.base_method not in BASES:
            raise PromptvizError(f"base_method={o.base_method!r}; choose one of {list(BASES)}")
        cls = BASE_CLASSES[o.base_method]
        ours = FORWARDED.get(o.base_method, [f.name for f in dataclasses.fields(o)])
        kwargs = {f.name: getattr(o, f.name) for f in dataclasses.fields(cls.Options)
                  if f.name in ours}
        return cls(backbone, classnames, template, cls.Options(**kwargs))

    @classmethod
    def unlabelled_images(cls, options: dict[str, Any]) -> str | None:
        """On PromptKD, PromptKD's: every class's training images (``transductive=false``:
        the base classes')."""
        o = parse_options(cls.Options, options)
        return PromptKD.unlabelled_images({"transductive": o.transductive}) \
            if o.base_method == "promptkd" else None

    @classmethod
    def train_defaults(cls, options: dict[str, Any]) -> TrainDefaults:
        """On MaPLe and PromptKD, the wrapped method's schedule (PromptKD's is the one the
        authors' ``promptkd_textrefiner`` config uses)."""
        base = str(options.get("base_method", cls.Options().base_method))
        return BASE_CLASSES[base].defaults if base in ("maple", "promptkd") else cls.defaults

    @classmethod
    def dataset_options(cls, dataset: str, protocol: str = "base2new") -> dict[str, Any]:
        """PromptKD's KD weight of 200 on FGVCAircraft, Flowers102 and DTD (read only with
        ``base_method=promptkd``)."""
        return {"kd_weight": 200.0} if dataset in SMALL_KD_WEIGHT else {}

    def set_classnames(self, classnames: list[str], template: str | None = None) -> None:
        self.base.set_classnames(classnames, template)
        self.classnames, self.template = self.base.classnames, self.base.template

    # -- the refiner -------------------------------------------------------------
    def base_text(self) -> Tensor:
        """``t``: the wrapped method's text features, normalised, ``[C, d]``."""
        return F.normalize(self.base.text_features().float(), dim=-1)

    def _cache(self) -> Tensor:
        """``A``, detached in training unless it is learned by gradient."""
        return self.cache if self.options.cache_update == "gradient" else self.cache.detach()

    def read_logits(self, t: Tensor, cache: Tensor) -> Tensor:
        """``q_c·A_j / τ`` for every class and slot, ``[C, M]`` (``q = norm(t)``), in fp32
        even under autocast: at a small τ the scores reach ±1/τ, where bf16 steps are coarse."""
        with torch.autocast(t.device.type, enabled=False):
            q = F.normalize(t.float(), dim=-1)
            return q @ cache.float().t() / self.options.read_temperature

    def read(self, t: Tensor) -> Tensor:
        """What each class reads from the cache, ``[C, d]`` (``q = norm(t)``)."""
        a = self._cache().float()
        return self.read_logits(t, a).softmax(dim=-1) @ a     # read: r_c = softmax_j(q_c·A_j/τ)·A

    def refine(self, t: Tensor) -> Tensor:
        """``t̂ = t + α·W[t; r]`` (then ``norm(t̂)`` if ``renormalize_refined``), ``[C, d]``."""
        t = t.float()
        w_tr = self.W(torch.cat([t, self.read(t)], dim=-1)).float()
        t_hat = t + self.options.alpha * w_tr                # aggregate: t̂_c = t_c + α·W[t_c; r_c]
        return F.normalize(t_hat, dim=-1) if self.options.renormalize_refined else t_hat

    def text_features(self) -> Tensor:
        """Refined class embeddings ``t̂`` ``[C, d]`` — image-independent, so an evaluation
        computes them once. Not unit-norm by default (the authors' code does not re-normalise)."""
        return self.refine(self.base_text())

    def read_weights(self) -> Tensor:
        """How each current class reads the cache: ``softmax_j(q_c·A_j / τ)``, ``[C, M]``."""
        with torch.no_grad():
            return self.read_logits(self.base_text(), self.cache.detach().float()).softmax(dim=-1)

    # -- the image side -------------------------------------------------------------
    def encode(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One image pass: ``norm(f_img)`` ``[B, d]``, the block's tokens through
        ``ln_post``+``proj`` ``[B, N, d_img]`` and its CLS→patch attention ``[B, patches]``.
        Frozen (CoOp, KgCoOp), or the wrapped method's prompted tower, with gradients (MaPLe,
        PromptKD: ``N`` counts the visual prompts too, the attention does not)."""
        if not self.prompted:
            x = self.inputs(images, train=True)
            return x["f"], x["tokens"], x["attn"]
        last = self.layer == self.backbone.info.vision_layers - 1
        cache = ActivationCache(attn_layers=[self.layer], keep_resid=not last)
        f = self.image_features(images, cache)
        tokens = cache["vis_proj"] if last else \
            self.backbone.project_visual_tokens(cache["vis_resid", self.layer + 1])
        return f, tokens.float(), cache.cls_attention(self.layer)[:, :self.n_patches].float()

    def image_features(self, images: Tensor, cache: ActivationCache | None = None) -> Tensor:
        """``norm(f)`` of the wrapped method's prompted image tower (PromptKD: ``norm(φ(f^S))``,
        in the teacher's width)."""
        f = self.base.encode_image_prompted(images, cache).float()
        return F.normalize(self.base.proj(f).float() if self.distils else f, dim=-1)

    def aligned(self, tokens: Tensor) -> Tensor:
        """The feature-alignment MLP on every token, BatchNorm over the B·N tokens: ``x``."""
        b, n, d = tokens.shape
        return self.align(tokens.reshape(b * n, d)).reshape(b, n, -1).float()

    def pick_local(self, x: Tensor, attn: Tensor) -> tuple[Tensor, Tensor]:
        """The tokens of L2: CLS, the top-k patches by CLS attention and the mean token
        (``local_tokens="topk"``: the top-k patches only). Returns them and the patch indices."""
        top = attn.topk(self.options.topk, dim=-1).indices                 # [B, k], 0 = patch 1
        patches = x.gather(1, (top + 1)[..., None].expand(-1, -1, x.shape[-1]))
        if self.options.local_tokens == "topk":
            return patches, top
        return torch.cat([x[:, :1], patches, x.mean(dim=1, keepdim=True)], dim=1), top

    def local_tokens(self, images: Tensor) -> dict[str, Tensor]:
        """For visual tools: aligned tokens ``[B, N, d]``, CLS attention ``[B, N−1]``,
        the top-k patch indices ``[B, k]`` (0 = first patch) and each token's cache slot
        ``[B, N]`` (token 0 is CLS; the slot is the argmax of ``P_slot``)."""
        with torch.no_grad():
            _, tokens, attn = self.encode(images)
            x = self.aligned(tokens)
            _, top = self.pick_local(x, attn)
            slot = (F.normalize(x, dim=-1) @ self.cache.detach().float().t()).argmax(dim=-1)
        return {"tokens": x, "cls_attention": attn, "topk": top, "slot": slot}

    # -- the interface ----------------------------------------------------------------
    # x: {"f"} for inference; training also reads the block's tokens and CLS attention
    # (image_input = FrozenFeatures(tokens_layer=layer), set in __init__)
    def logits(self, x: dict[str, Tensor] | Tensor, text: Tensor | None = None) -> Tensor:
        """``s · norm(f_img) @ t̂ᵀ``; pass ``text = text_features()`` to reuse it across batches."""
        text = self.text_features() if text is None else text
        f = self.image_features(x) if self.prompted else x["f"]
        return self.backbone.logit_scale * f.float() @ text.float().t()

    def loss(self, x: dict[str, Tensor], labels: Tensor
             ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``L = L1 + L2/β + γ·L3`` plus the wrapped method's own terms; then the cache write."""
        o, s = self.options, self.backbone.logit_scale
        f, tokens, attn = self.encode(x) if self.prompted else (x["f"], x["tokens"], x["attn"])
        t = self.base_text()                                        # un-refined, normalised
        t_hat = self.refine(t)                                      # reads the cache
        logits = s * f @ t_hat.t()
        v = self.aligned(tokens)                                    # [B, N, d]
        z, _ = self.pick_local(v, attn)                             # [B, 7, d]
        if o.normalize_local:
            z = F.normalize(z, dim=-1)
        t_local = t_hat if o.local_text == "refined" else t
        local = s * z.reshape(-1, z.shape[-1]) @ t_local.t()
        l3 = (F.normalize(t_hat, dim=-1) - t).abs().mean()          # L3 = mean|norm(t̂) − t|
        if self.distils:                                            # PromptKD: no labels
            zt, kd = self.base.teacher_logits(x), self.base.options
            l1 = kd_loss(logits, zt, kd.temperature, kd.kl_scale)   # KL(z^T ‖ s·f @ t̂ᵀ)
            l2 = kd_loss(local, zt.repeat_interleave(z.shape[1], dim=0), kd.temperature,
                         kd.kl_scale)                               # KL(z^T×7 ‖ s·z @ tᵀ)
            w = kd.kd_weight
            loss = w * l1 + w / 100 * l2 + w / 50 * l3              # their promptkd_textrefiner
        else:
            l1 = F.cross_entropy(logits, labels)                    # L1 = CE(s·f @ t̂ᵀ, y)
            l2 = F.cross_entropy(local, labels.repeat_interleave(z.shape[1]))  # L2: CE(·, y×7)
            extra, extra_terms = self.base.extra_loss(t)            # e.g. KgCoOp's λ·L_kg
            loss = l1 + l2 / o.beta + o.gamma * l3 + extra
        if self.training and o.cache_update == "momentum":          # write, for the next step
            written = v[:, 1:] if o.write_tokens == "patches" else v
            with torch.autocast(f.device.type, enabled=False):
                self.cache = cache_write(self.cache, written.detach(), o.momentum)
        terms = {"kd": l1, "local": l2, "reg": l3} if self.distils else \
            {"ce": l1, "local": l2, "reg": l3, **extra_terms}
        return loss, logits, {k: term.detach() for k, term in terms.items()}
