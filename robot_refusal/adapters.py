"""Model adapters: where a decoder's blocks, token embedding and residual-stream writers live.

Directional ablation hooks the decoder blocks and their attention and MLP sublayers; weight
orthogonalization edits every module that *writes* into the residual stream (Arditi et al.
2024, section 4.1 and appendix E): token (and position) embeddings, each block's attention
output projection and MLP down projection, and, in our VLA, the vision, keypoint and state
projectors. An adapter names those modules for one architecture, found by their real paths in
a registry keyed by config class (transformers 5.x module names, read from its source):

============  =====================  ==========================  ==========================
family        blocks                 writers per block           embeddings
============  =====================  ==========================  ==========================
VLA           language_model.layers  self_attn.o_proj,           language_model.embed_tokens
                                     mlp.down_proj               + vision/keypoint/state
                                                                 projectors
Llama,        layers                 self_attn.o_proj,           embed_tokens (Gemma scales
Mistral,                             mlp.down_proj (Qwen2: q,k,v by sqrt(d): a scalar, so
Qwen2, Gemma                         biases do not write)        the edit commutes)
GPT-2         h                      attn.c_proj, mlp.c_proj     wte, wpe
                                     (Conv1D: weight (in, out))
============  =====================  ==========================  ==========================

Architectures where a weight edit would be wrong raise :class:`UnsupportedModelError`: norms
after a sublayer (Gemma2/Gemma3 ``post_attention_layernorm`` and ``post_feedforward_layernorm``
rescale what the sublayer writes, so a rank-1 edit of its weights no longer removes r from the
residual stream), fused MoE experts (one 3-D parameter for all experts), and anything not
registered (:func:`register_adapter` adds one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor, nn
from transformers import (
    GemmaConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    PreTrainedModel,
    Qwen2Config,
)
from transformers.pytorch_utils import Conv1D

from robot_refusal.errors import UnsupportedModelError
from robot_refusal.policies.configuration_vla import VLAConfig

WriterKind = Literal["linear", "conv1d", "embedding"]


@dataclass(frozen=True)
class FamilySpec:
    """Module paths of one architecture family.

    Attributes:
        name: Family name used in messages.
        base: Path of the decoder (the module holding the blocks) from the model passed in;
            ``None``: transformers' ``model.base_model``.
        layers: Path of the block list inside the decoder.
        attn, mlp: Paths of the attention and MLP sublayers inside a block.
        attn_out, mlp_out: Paths of their output projections inside a block.
        embeddings: Paths of embedding tables inside the decoder (token embedding first).
        extra_writers: Paths, from the model passed in, of further residual writers.
        optional_writers: Like ``extra_writers``, but only where the model has them (modules
            that some configurations of the family build and others do not).
    """

    name: str
    layers: str
    attn: str
    mlp: str
    attn_out: str
    mlp_out: str
    embeddings: tuple[str, ...]
    base: str | None = None
    extra_writers: tuple[str, ...] = ()
    optional_writers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Writer:
    """One residual-stream writer.

    Attributes:
        name: Dotted path from the model passed to :func:`get_adapter`.
        module: The module (``nn.Linear`` weight (D, in), ``Conv1D`` weight (in, D) or
            ``nn.Embedding`` weight (V, D); biases (D,)).
        kind: ``linear``, ``conv1d`` or ``embedding``.
    """

    name: str
    module: nn.Module
    kind: WriterKind


@dataclass(frozen=True)
class ModelAdapter:
    """Where the parts of one model live.

    Attributes:
        family: Family name.
        blocks: The L decoder blocks, in order; block l's input is ``hidden_states[l]``.
        attn, mlp: Attention and MLP sublayer of each block (L each).
        writers: Every residual-stream writer (embeddings, projectors, per-block outputs).
        embedding: The token embedding.
        unembedding: The output head (``lm_head``) or ``None``.
        d_model: Residual-stream width D.
    """

    family: str
    blocks: tuple[nn.Module, ...]
    attn: tuple[nn.Module, ...]
    mlp: tuple[nn.Module, ...]
    writers: tuple[Writer, ...]
    embedding: nn.Module
    unembedding: nn.Module | None
    d_model: int
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        """Number of decoder blocks L."""
        return len(self.blocks)

    @property
    def tied(self) -> bool:
        """True when the unembedding shares its weight tensor with the token embedding."""
        if self.unembedding is None:
            return False
        return _weight(self.unembedding) is _weight(self.embedding)


def _weight(module: nn.Module) -> Tensor:
    w = module.weight
    assert isinstance(w, Tensor)
    return w


_LLAMA_LIKE = {
    "layers": "layers",
    "attn": "self_attn",
    "mlp": "mlp",
    "attn_out": "self_attn.o_proj",
    "mlp_out": "mlp.down_proj",
    "embeddings": ("embed_tokens",),
}

ADAPTERS: dict[type, FamilySpec] = {
    VLAConfig: FamilySpec(
        "vla",
        base="language_model",
        extra_writers=(
            "vision_projector",
            "keypoint_projector.linear_2",
            "state_projector.linear_2",
        ),
        optional_writers=("metric_projector.linear_2",),
        **_LLAMA_LIKE,  # type: ignore[arg-type]
    ),
    LlamaConfig: FamilySpec("llama", **_LLAMA_LIKE),  # type: ignore[arg-type]
    MistralConfig: FamilySpec("mistral", **_LLAMA_LIKE),  # type: ignore[arg-type]
    Qwen2Config: FamilySpec("qwen2", **_LLAMA_LIKE),  # type: ignore[arg-type]
    GemmaConfig: FamilySpec("gemma", **_LLAMA_LIKE),  # type: ignore[arg-type]
    GPT2Config: FamilySpec(
        "gpt2",
        layers="h",
        attn="attn",
        mlp="mlp",
        attn_out="attn.c_proj",
        mlp_out="mlp.c_proj",
        embeddings=("wte", "wpe"),
    ),
}
"""Config class -> module paths. Extend with :func:`register_adapter`."""

_POST_NORM_REASON = "post-sublayer norms (post_attention_layernorm, post_feedforward_layernorm)"
REFUSED: dict[str, str] = {
    "Gemma2Config": _POST_NORM_REASON,
    "Gemma3Config": _POST_NORM_REASON,
    "Gemma3TextConfig": _POST_NORM_REASON,
    "MixtralConfig": "fused MoE experts",
    "Qwen2MoeConfig": "fused MoE experts",
}
"""Config class names of architectures whose weights must not be edited, and why."""

_POST_NORMS = ("post_feedforward_layernorm", "pre_feedforward_layernorm", "post_mlp_layernorm")


def register_adapter(config_class: type, spec: FamilySpec) -> None:
    """Register (or replace) the module paths of a config class.

    Only register an architecture whose sublayer outputs are added to the residual stream
    unchanged (pre-norm blocks, no post-sublayer norm, no fused experts).
    """
    ADAPTERS[config_class] = spec


def _find(root: nn.Module, path: str, where: str) -> nn.Module:
    """``root.get_submodule(path)``, or an error listing what ``root`` has."""
    try:
        return root.get_submodule(path)
    except AttributeError:
        have = ", ".join(name for name, _ in root.named_children()) or "nothing"
        raise UnsupportedModelError(
            f"{where}: no module {path!r}; it has {have}. Pass the right paths with "
            "robot_refusal.adapters.register_adapter(ConfigClass, FamilySpec(...))."
        ) from None


def _kind(module: nn.Module, name: str) -> WriterKind:
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, Conv1D):
        return "conv1d"
    if isinstance(module, nn.Linear):
        return "linear"
    raise UnsupportedModelError(
        f"residual writer {name} is a {type(module).__name__}; expected nn.Linear, Conv1D or "
        "nn.Embedding"
    )


def _check_block(block: nn.Module, mlp: nn.Module, name: str, family: str) -> None:
    """Reject blocks whose sublayer outputs are not written to the residual stream as is."""
    children = dict(block.named_children())
    post = [n for n in _POST_NORMS if n in children]
    if post:
        raise UnsupportedModelError(
            f"{name} ({family}) has post-sublayer norms {post}; a weight edit would not remove "
            "the direction from the residual stream. Use ablation hooks on a model without them."
        )
    if any("expert" in n for n, _ in mlp.named_children()) or any(
        p.ndim > 2 for p in mlp.parameters()
    ):
        raise UnsupportedModelError(
            f"{name}.mlp ({family}) holds mixture-of-experts weights; editing fused experts is "
            "not supported."
        )


def get_adapter(model: nn.Module) -> ModelAdapter:
    """The adapter of ``model`` (a :class:`VLAForActionPrediction`, or a transformers
    ``*Model``/``*ForCausalLM`` of a registered family).

    Raises:
        UnsupportedModelError: For a refused or unregistered architecture (listing the
            supported config classes) or modules missing from their expected paths.

    Source: Arditi et al. 2024, section 4.1 (the residual-stream writers of weight
    orthogonalization).
    """
    config = getattr(model, "config", None)
    cname = type(config).__name__
    if cname in REFUSED:
        raise UnsupportedModelError(
            f"{cname}: {REFUSED[cname]}; editing its weights would be wrong, so it is refused."
        )
    spec = ADAPTERS.get(type(config))
    if spec is None:
        known = ", ".join(sorted(c.__name__ for c in ADAPTERS))
        raise UnsupportedModelError(
            f"no adapter for {cname} ({type(model).__name__}); supported: {known}. Register "
            "one with robot_refusal.adapters.register_adapter(ConfigClass, FamilySpec(...))."
        )
    if spec.base is not None:
        base = _find(model, spec.base, type(model).__name__)
    else:
        base = model.base_model if isinstance(model, PreTrainedModel) else model
    layers = _find(base, spec.layers, type(base).__name__)
    blocks = tuple(layers.children())
    writers = [
        Writer(_prefix(model, base, p), m := _find(base, p, type(base).__name__), _kind(m, p))
        for p in spec.embeddings
    ]
    writers += [
        Writer(p, m := _find(model, p, type(model).__name__), _kind(m, p))
        for p in spec.extra_writers
    ]
    named = dict(model.named_modules())
    writers += [Writer(p, m := named[p], _kind(m, p)) for p in spec.optional_writers if p in named]
    attn, mlp = [], []
    for i, block in enumerate(blocks):
        where = f"{_prefix(model, base, spec.layers)}.{i}"
        attn.append(_find(block, spec.attn, where))
        mlp.append(_find(block, spec.mlp, where))
        _check_block(block, mlp[-1], where, spec.name)
        for p in (spec.attn_out, spec.mlp_out):
            m = _find(block, p, where)
            writers.append(Writer(f"{where}.{p}", m, _kind(m, p)))
    embedding = writers[0].module
    head = model.get_output_embeddings() if isinstance(model, PreTrainedModel) else None
    return ModelAdapter(
        family=spec.name,
        blocks=blocks,
        attn=tuple(attn),
        mlp=tuple(mlp),
        writers=tuple(writers),
        embedding=embedding,
        unembedding=head if isinstance(head, nn.Module) else None,
        d_model=int(_weight(embedding).shape[1]),
    )


def _prefix(model: nn.Module, base: nn.Module, path: str) -> str:
    """Dotted path of ``base.<path>`` as seen from ``model``."""
    for name, module in model.named_modules():
        if module is base:
            return f"{name}.{path}" if name else path
    return path
