"""Activation capture: the residual stream at chosen blocks and token positions.

Block l's input is captured by a forward pre-hook on the block, so it equals transformers'
``hidden_states[l]`` (index 0 = embedding output; DESIGN.md section 4, "residual stream"). The
hooks exist only inside :func:`capture_activations` and are removed in ``finally``, exceptions
included. Means are running sums in float64 (memory O(layers x positions x D)); the raw
activations are kept only with ``store=True``.

Every forward call inside the context is captured: run prefix-only forward passes (one per
batch) inside it, not a generation loop whose later steps see one token at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from robot_refusal.adapters import ModelAdapter, get_adapter
from robot_refusal.errors import ConfigError


def block_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    """The hidden-state argument (B, T, D) of a decoder block call (positional or keyword)."""
    x = args[0] if args else kwargs["hidden_states"]
    assert isinstance(x, Tensor)
    return x


class ActivationCapture:
    """Running float64 sums of block inputs at ``layers`` x ``positions``.

    Attributes:
        layers: Captured block indices (nL,).
        positions: Captured token positions (nP,), negative = from the end.
        sums: (nL, nP, D) float64 sum of the captured activations.
        counts: (nL,) int64 number of sequences captured at each layer.
        raw: Per layer, a list of (B, nP, D) float32 CPU tensors when ``store``.
    """

    def __init__(
        self, layers: Sequence[int], positions: Sequence[int], d_model: int, store: bool
    ) -> None:
        self.layers = tuple(layers)
        self.positions = tuple(positions)
        self.sums = torch.zeros(len(self.layers), len(self.positions), d_model, dtype=torch.float64)
        self.counts = torch.zeros(len(self.layers), dtype=torch.int64)
        self.store = store
        self.raw: list[list[Tensor]] = [[] for _ in self.layers]

    def add(self, index: int, x: Tensor) -> None:
        """Accumulate block input x (B, T, D) for layer slot ``index``.

        Raises:
            ConfigError: If a captured position lies outside the sequence.
        """
        t = x.shape[1]
        if any(p >= t or p < -t for p in self.positions):
            raise ConfigError(
                f"positions {self.positions} do not fit a sequence of {t} tokens; capture a "
                "prefix-only forward pass (not the one-token steps of a KV-cache loop)"
            )
        sel = x.detach()[:, list(self.positions), :]  # (B, nP, D)
        self.sums[index] += sel.double().sum(0).cpu()
        self.counts[index] += sel.shape[0]
        if self.store:
            self.raw[index].append(sel.float().cpu())

    @property
    def n(self) -> int:
        """Number of sequences captured (at the first layer)."""
        return int(self.counts[0]) if len(self.counts) else 0

    def mean(self) -> Tensor:
        """(nL, nP, D) float64 mean activation.

        Raises:
            ConfigError: If nothing was captured.
        """
        if int(self.counts.min()) == 0:
            raise ConfigError("no activations were captured; run forward passes inside capture")
        return self.sums / self.counts[:, None, None].double()

    def activations(self) -> Tensor:
        """(N, nL, nP, D) float32 stored activations.

        Raises:
            ConfigError: If capture was not asked to store them, or nothing was captured.
        """
        if not self.store:
            raise ConfigError("activations were not stored; use capture_activations(store=True)")
        if not self.raw or not self.raw[0]:
            raise ConfigError("no activations were captured; run forward passes inside capture")
        return torch.stack([torch.cat(chunks) for chunks in self.raw], dim=1)


@contextmanager
def capture_activations(
    model: nn.Module,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] = (-1,),
    store: bool = False,
    adapter: ModelAdapter | None = None,
) -> Iterator[ActivationCapture]:
    """Capture block inputs (residual stream x_l(i)) during forward passes in the context.

    Args:
        model: A model :func:`~robot_refusal.adapters.get_adapter` knows.
        layers: Block indices (default: all L).
        positions: Token positions; negative counts from the end (the VLA's post-instruction
            positions are -3, -2, -1: SEP, state, ACT).
        store: Also keep every activation (else only running float64 sums).
        adapter: A precomputed adapter.

    Yields:
        The :class:`ActivationCapture`, filled as forward passes run.

    Raises:
        ConfigError: For a layer index out of range or no positions.

    Source: Arditi et al. 2024, section 2.1 (residual stream activations at post-instruction
    positions).
    """
    adapter = adapter or get_adapter(model)
    n = adapter.n_layers
    layers = list(range(n)) if layers is None else [int(i) for i in layers]
    bad = [i for i in layers if not 0 <= i < n]
    if bad or not positions:
        raise ConfigError(f"layers must lie in 0..{n - 1} and positions be non-empty; got {bad}")
    cap = ActivationCapture(layers, [int(p) for p in positions], adapter.d_model, store)
    with ExitStack() as stack:
        for slot, layer in enumerate(layers):

            def hook(_m: nn.Module, args: Any, kwargs: Any, slot: int = slot) -> None:
                cap.add(slot, block_input(args, kwargs))

            handle = adapter.blocks[layer].register_forward_pre_hook(hook, with_kwargs=True)
            stack.callback(handle.remove)
        yield cap
