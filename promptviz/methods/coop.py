"""CoOp — context optimisation (Zhou et al., IJCV 2022; methods.md §2).

Each class's sentence becomes ``[SOS] v_1 … v_M [class tokens] . [EOT]`` where the
``v_m`` are learnable vectors in token-embedding space; everything else (the
frozen token embeddings, positions, causal mask, final LayerNorm, EOT pooling,
projection) is CLIP's own. Only the context vectors train, with cross-entropy.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from promptviz.backbone import Backbone
from promptviz.errors import PromptvizError
from promptviz.methods.base import Method, TrainDefaults, zero_shot_text_features


@dataclasses.dataclass
class CoOpOptions:
    n_ctx: int = 4                      # M; ignored when ctx_init is set (its length wins)
    ctx_init: str = "a photo of a"      # "" = random N(0, 0.02) initialisation
    class_specific: bool = False        # one context per class (CSC) instead of one shared
    class_token_position: str = "end"   # end | middle | front


class PromptLearner(nn.Module):
    """Learnable context vectors and the frozen pieces of every class's sentence."""

    def __init__(self, backbone: Backbone, n_ctx: int, ctx_init: str, n_classes: int,
                 class_specific: bool = False, position: str = "end",
                 learned: int | None = None) -> None:
        """``learned``: with ``ctx_init``, only its first ``learned`` tokens become learnable
        vectors and the rest of the phrase stays frozen text (MaPLe and IVLP learn "a photo"
        of "a photo of a", the authors' ``embedding[0, 1:1 + n_ctx]``)."""
        super().__init__()
        if position not in {"end", "middle", "front"}:
            raise PromptvizError(f"class_token_position={position!r}; use end, middle or front")
        self.backbone = [backbone]      # a list, so the frozen model is not a submodule
        self.position = position
        self.class_specific = class_specific
        width = backbone.text_width
        if ctx_init:
            ids = backbone.tokenize([ctx_init])
            if ids[0, -1] != 0:                                 # filled up: cut short
                raise PromptvizError(
                    f"ctx_init {ctx_init[:40]!r}… does not fit the text encoder's "
                    f"{ids.shape[1]} tokens; shorten --set ctx_init= (a few words, e.g. "
                    "'a photo of a')")
            n_ctx = int((ids[0] > 0).sum()) - 2                 # minus SOS and EOT
            if learned is not None:
                if not 1 <= learned <= n_ctx or position != "end":
                    raise PromptvizError(
                        f"{learned} learned context tokens of ctx_init {ctx_init!r} ({n_ctx} "
                        "tokens): use 1 to that many, with the class token at the end")
                n_ctx = learned
            with torch.no_grad():
                ctx = backbone.token_embedding(ids)[0, 1:1 + n_ctx].float()
            self.placeholder = ctx_init
            if class_specific:
                ctx = ctx.unsqueeze(0).repeat(n_classes, 1, 1)
        else:
            if n_ctx < 1:
                raise PromptvizError(f"n_ctx={n_ctx}; a prompt needs at least one context vector")
            shape = (n_classes, n_ctx, width) if class_specific else (n_ctx, width)
            ctx = torch.empty(shape, device=backbone.device).normal_(0.0, 0.02)
            self.placeholder = " ".join(["X"] * n_ctx)
        self.n_ctx = n_ctx
        self.ctx = nn.Parameter(ctx)
        self.csc_classnames: list[str] | None = None    # the classes of class-specific rows

    def set_classnames(self, classnames: list[str]) -> None:
        """Tokenise ``"{context placeholder} {class}."`` and keep the frozen embeddings."""
        if self.class_specific and (self.ctx.shape[0] != len(classnames) or
                                    self.csc_classnames not in (None, list(classnames))):
            raise PromptvizError(
                f"class-specific context was learned for {self.ctx.shape[0]} classes and cannot "
                f"be used for {len(classnames)} other classes; use class_specific=false for "
                "base-to-novel transfer")
        if self.class_specific:   # context row i belongs to this class from now on
            self.csc_classnames = list(classnames)
        bb = self.backbone[0]
        names = [c.replace("_", " ") for c in classnames]
        ids = bb.tokenize([f"{self.placeholder} {n}." for n in names])
        too_long = (ids.argmax(-1) >= ids.shape[1] - 1).nonzero().flatten().tolist()
        if too_long:
            raise PromptvizError(
                f"{len(too_long)} prompt(s) do not fit the text encoder's {ids.shape[1]} "
                f"tokens with {self.n_ctx} context tokens (e.g. class {names[too_long[0]]!r}); "
                "use fewer context tokens (--set n_ctx= or a shorter ctx_init) or shorter "
                "class names")
        with torch.no_grad():
            emb = bb.token_embedding(ids)
        self.register_buffer("ids", ids, persistent=False)
        self.register_buffer("prefix", emb[:, :1], persistent=False)               # SOS
        self.register_buffer("suffix", emb[:, 1 + self.n_ctx:], persistent=False)  # name . EOT
        self.name_lens = [len(bb.tokenize([n])[0].nonzero()) - 2 for n in names]

    def forward(self, ctx: Tensor | None = None) -> Tensor:
        """Token embeddings of every class's prompt, ``[C, L, D_t]``.

        ``ctx`` defaults to the learned vectors; CoCoOp passes image-shifted ones.
        """
        ctx = self.ctx if ctx is None else ctx
        n_cls = self.prefix.shape[0]
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(n_cls, -1, -1)
        ctx = ctx.to(self.prefix.dtype)
        if self.position == "end":
            return torch.cat([self.prefix, ctx, self.suffix], dim=1)
        rows = []
        half = self.n_ctx // 2
        for i, n in enumerate(self.name_lens):
            name, rest = self.suffix[i:i + 1, :n], self.suffix[i:i + 1, n:]
            c = ctx[i:i + 1]
            if self.position == "front":
                rows.append(torch.cat([self.prefix[i:i + 1], name, c, rest], dim=1))
            else:  # middle
                rows.append(torch.cat([self.prefix[i:i + 1], c[:, :half], name, c[:, half:],
                                       rest], dim=1))
        return torch.cat(rows, dim=0)


class CoOp(Method):
    name = "coop"
    Options = CoOpOptions
    defaults = TrainDefaults(epochs=10, lr=0.002, optimizer="sgd", batch_size=32)

    def __init__(self, backbone: Backbone, classnames: list[str], template: str,
                 options: CoOpOptions | None = None) -> None:
        super().__init__(backbone, classnames, template, options)
        o = self.options
        self.prompt = PromptLearner(backbone, o.n_ctx, o.ctx_init, len(classnames),
                                    o.class_specific, o.class_token_position)
        self.set_classnames(classnames, template)

    def set_classnames(self, classnames: list[str], template: str | None = None) -> None:
        self.classnames = list(classnames)
        self.template = template or self.template
        self.prompt.set_classnames(self.classnames)

    def text_features(self, ctx: Tensor | None = None) -> Tensor:
        """``norm(t_c)``: the text tower on the learned prompt of every class, ``[C, d]``."""
        return self.backbone.encode_text_embeddings(self.prompt(ctx), self.prompt.ids,
                                                    normalize=True)

    def frozen_text_features(self) -> Tensor:
        """``t0``: the hand-crafted template's text features (for comparison and KgCoOp)."""
        return zero_shot_text_features(self.backbone, self.classnames, self.template)


def nearest_words(vectors: Tensor, backbone: Backbone, k: int = 3) -> list[list[tuple[str, float]]]:
    """CoOp's interpretation: the ``k`` vocabulary words nearest (Euclidean, in token-embedding
    space) to each learned context vector. Returns ``[(word, distance), …]`` per vector."""
    table = backbone.model.token_embedding.weight.float()
    dist = torch.cdist(vectors.detach().float().reshape(-1, table.shape[1]), table)
    d, idx = dist.topk(k, dim=-1, largest=False)
    decoder = backbone.tokenizer.decoder
    return [[(decoder[int(i)].replace("</w>", ""), float(x)) for i, x in zip(row_i, row_d)]
            for row_i, row_d in zip(idx, d)]
