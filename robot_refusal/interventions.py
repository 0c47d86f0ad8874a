"""Interventions on the residual stream: directional ablation, activation addition (context
managers whose hooks are always removed) and weight orthogonalization (an edited copy).

DESIGN.md section 4, after Arditi et al. 2024, sections 2.4 (ablation and addition) and 4.1
(weight orthogonalization). With Q the (k, D) orthonormal basis (k = 1: Q = r̂ᵀ):

- ablation: x <- x - Q^T Q x at every block input and every attention/MLP output, all
  positions, generated tokens too;
- addition: x <- x + alpha r at the input of one block (r un-normalised);
- orthogonalization: W <- W - Q^T Q W (and b <- b - Q^T Q b) for every residual writer.

Ablation and orthogonalization give the same outputs to float tolerance (tested).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from robot_refusal.adapters import ModelAdapter, Writer, get_adapter
from robot_refusal.capture import block_input
from robot_refusal.directions import Direction, Steering, as_basis
from robot_refusal.errors import ConfigError

M = TypeVar("M", bound=nn.Module)


def _ablate(x: Tensor, q: Tensor) -> Tensor:
    """x - (x Q^T) Q for x (..., D), Q (k, D) already in x's dtype and device."""
    return x - (x @ q.T) @ q


def _basis_like(q: Tensor, x: Tensor) -> Tensor:
    return q if q.dtype == x.dtype and q.device == x.device else q.to(x.device, x.dtype)


@contextmanager
def directional_ablation(
    model: nn.Module, steer: Steering, adapter: ModelAdapter | None = None
) -> Iterator[None]:
    """Project ``steer`` out of the residual stream inside the context.

    Hooks: a pre-hook on every block (its input, which includes the embeddings) and a forward
    hook on every attention and MLP sublayer (their outputs, before the residual add). All
    positions, every forward call, so generated tokens too (with or without a KV cache).

    Args:
        model: A model that :func:`~robot_refusal.adapters.get_adapter` knows.
        steer: A :class:`Direction` (rank 1) or :class:`Subspace` (rank k).
        adapter: A precomputed adapter.

    Raises:
        DirectionError: If the width differs from the model's.
        UnsupportedModelError: For an architecture without adapter.

    Source: Arditi et al. 2024, section 2.4, eq. (4), "directional ablation".
    """
    adapter = adapter or get_adapter(model)
    steer.check_model(adapter.d_model)
    q = as_basis(steer)  # (k, D) float64
    cache: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    def basis(x: Tensor) -> Tensor:
        key = (x.dtype, x.device)
        if key not in cache:
            cache[key] = _basis_like(q, x)
        return cache[key]

    def pre(_m: nn.Module, args: Any, kwargs: Any) -> tuple[Any, Any]:
        x = block_input(args, kwargs)
        y = _ablate(x, basis(x))
        if args:
            return (y, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": y}

    def post(_m: nn.Module, _args: Any, out: Any) -> Any:
        if isinstance(out, tuple):
            return (_ablate(out[0], basis(out[0])), *out[1:])
        return _ablate(out, basis(out))

    with ExitStack() as stack:
        for block in adapter.blocks:
            stack.callback(block.register_forward_pre_hook(pre, with_kwargs=True).remove)
        for sub in (*adapter.attn, *adapter.mlp):
            stack.callback(sub.register_forward_hook(post).remove)
        yield


@contextmanager
def activation_addition(
    model: nn.Module,
    direction: Direction,
    layer: int,
    alpha: float = 1.0,
    positions: Sequence[int] | None = None,
    adapter: ModelAdapter | None = None,
) -> Iterator[None]:
    """Add ``alpha * r`` to the input of block ``layer`` inside the context.

    Args:
        model: A model that :func:`~robot_refusal.adapters.get_adapter` knows.
        direction: r, un-normalised (its norm sets the step).
        layer: Block index l (0 <= l < L).
        alpha: +1 induces the behaviour r was read from, -1 suppresses it.
        positions: Token positions of each forward call (negative = from the end); None: all.
        adapter: A precomputed adapter.

    Raises:
        DirectionError: If the width differs from the model's.
        ConfigError: If ``layer`` is out of range.

    Source: Arditi et al. 2024, section 2.4, eq. (3), "activation addition".
    """
    adapter = adapter or get_adapter(model)
    direction.check_model(adapter.d_model)
    if not 0 <= layer < adapter.n_layers:
        raise ConfigError(f"layer must lie in 0..{adapter.n_layers - 1}, got {layer}")
    r = direction.vector * float(alpha)  # (D,) float64
    pos = None if positions is None else [int(p) for p in positions]

    def pre(_m: nn.Module, args: Any, kwargs: Any) -> tuple[Any, Any]:
        x = block_input(args, kwargs)
        step = r.to(x.device, x.dtype)
        if pos is None:
            y = x + step
        else:
            y = x.clone()
            t = x.shape[1]
            keep = [p for p in pos if -t <= p < t]
            y[:, keep, :] += step
        if args:
            return (y, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": y}

    with ExitStack() as stack:
        block = adapter.blocks[layer]
        stack.callback(block.register_forward_pre_hook(pre, with_kwargs=True).remove)
        yield


def _untie(model: nn.Module, adapter: ModelAdapter) -> None:
    """Give the unembedding its own copy of the embedding weight and tell transformers."""
    head = adapter.unembedding
    assert head is not None
    w = head.weight
    assert isinstance(w, Tensor)
    head.weight = nn.Parameter(w.detach().clone(), requires_grad=w.requires_grad)
    for m in model.modules():
        if isinstance(m, PreTrainedModel):
            m.config.tie_word_embeddings = False
            m.all_tied_weights_keys = {}
            text: Any = getattr(m.config, "text_config", None)
            if text is not None and hasattr(text, "tie_word_embeddings"):
                text.tie_word_embeddings = False


@torch.no_grad()
def _edit(writer: Writer, q: Tensor) -> None:
    """W <- W - Q^T Q W on the output side of one writer, computed in float64."""
    w = writer.module.weight
    assert isinstance(w, Tensor)
    w64 = w.double()
    qq = q.to(w.device)
    # Linear (D, in): output along rows; Embedding (V, D) and Conv1D (in, D): along columns
    rows = writer.kind == "linear"
    new = w64 - qq.T @ (qq @ w64) if rows else w64 - (w64 @ qq.T) @ qq
    w.copy_(new.to(w.dtype))
    b = getattr(writer.module, "bias", None)
    if isinstance(b, Tensor):
        b64 = b.double()
        b.copy_((b64 - (b64 @ qq.T) @ qq).to(b.dtype))


def orthogonalize_weights(model: M, steer: Steering) -> M:
    """An edited copy of ``model`` whose residual writers cannot write along ``steer``.

    Every writer of the adapter (token and position embeddings, VLA projectors, attention
    output and MLP down projections, weights and biases) gets W <- W - Q^T Q W. A tied
    unembedding is untied first (``config.tie_word_embeddings = False``) and left unchanged.
    The copy is a normal model: ``save_pretrained`` writes it and ``from_pretrained`` reads it.

    Args:
        model: A model that :func:`~robot_refusal.adapters.get_adapter` knows (not modified).
        steer: A :class:`Direction` or :class:`Subspace`.

    Returns:
        The edited deep copy.

    Raises:
        DirectionError: If the width differs from the model's.
        UnsupportedModelError: For architectures where the edit would be wrong.

    Source: Arditi et al. 2024, section 4.1, eq. (5), "weight orthogonalization".
    """
    get_adapter(model)  # refuse unsupported models before copying
    edited = copy.deepcopy(model)
    adapter = get_adapter(edited)
    steer.check_model(adapter.d_model)
    if adapter.tied:
        _untie(edited, adapter)
    q = as_basis(steer)
    for writer in adapter.writers:
        _edit(writer, q)
    return edited
