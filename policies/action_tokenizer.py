"""Action tokenizer: continuous actions <-> 256 discrete bins per dimension.

As OpenVLA and RT-2 do, each action dimension is normalised to [-1, 1] with the dataset's 1st
and 99th percentiles (``q01``, ``q99``), clipped, and cut into ``n_bins`` uniform bins; a bin's
value is its centre. The policy's action here is ``(delta_x, delta_y, delta_z, gripper)``
(m per 0.1 s step, and a gripper command > 0 closes); refusal is a token of its own.

Source: Kim et al. 2024, "OpenVLA", section 3 (action tokenization); Brohan et al. 2023, RT-2.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from robot_refusal.errors import ConfigError

ACTION_DIMS = ("delta_x", "delta_y", "delta_z", "gripper")
"""Names of the tokenized action dimensions (units: m, m, m, command in [-1, 1])."""


@dataclass(frozen=True)
class ActionTokenizer:
    """Per-dimension uniform binning between the 1st and 99th percentile.

    Attributes:
        low: (D,) 1st percentile per dimension.
        high: (D,) 99th percentile per dimension.
        n_bins: Bins per dimension (256).
    """

    low: tuple[float, ...]
    high: tuple[float, ...]
    n_bins: int = 256

    def __post_init__(self) -> None:
        if len(self.low) != len(self.high) or not self.low:
            raise ConfigError(f"low and high need one value per dimension: {self.low}, {self.high}")
        if any(not h > lo for lo, h in zip(self.low, self.high, strict=True)):
            raise ConfigError(f"every high must exceed its low: {self.low}, {self.high}")
        if self.n_bins < 2:
            raise ConfigError(f"n_bins must be >= 2, got {self.n_bins}")

    @property
    def dims(self) -> int:
        """Number of action dimensions D."""
        return len(self.low)

    @classmethod
    def fit(cls, actions: NDArray[np.floating], n_bins: int = 256) -> ActionTokenizer:
        """Percentile bounds from actions (N, D); a constant dimension gets ±1e-3 around it."""
        a = np.asarray(actions, dtype=np.float64)
        low, high = np.percentile(a, 1, axis=0), np.percentile(a, 99, axis=0)
        flat = high - low < 1e-6
        low, high = np.where(flat, low - 1e-3, low), np.where(flat, high + 1e-3, high)
        return cls(tuple(map(float, low)), tuple(map(float, high)), n_bins)

    def encode(self, actions: NDArray[np.floating]) -> NDArray[np.int64]:
        """Bin indices (..., D) in [0, n_bins) of actions (..., D).

        Raises:
            ConfigError: If the last dimension is not D or a value is NaN.
        """
        a = np.asarray(actions, dtype=np.float64)
        if a.shape[-1] != self.dims:
            raise ConfigError(f"actions must have {self.dims} dims, got shape {a.shape}")
        if np.isnan(a).any():
            raise ConfigError("actions contain NaN")
        low, high = np.asarray(self.low), np.asarray(self.high)
        unit = np.clip((a - low) / (high - low), 0.0, 1.0)  # (..., D) in [0, 1]
        return np.minimum((unit * self.n_bins).astype(np.int64), self.n_bins - 1)

    def decode(self, bins: NDArray[np.integer]) -> NDArray[np.float64]:
        """Bin centres (..., D) of bin indices (..., D).

        Raises:
            ConfigError: If an index is outside [0, n_bins).
        """
        b = np.asarray(bins)
        if b.size and (b.min() < 0 or b.max() >= self.n_bins):
            raise ConfigError(
                f"bin indices must lie in [0, {self.n_bins}), got {b.min()}..{b.max()}"
            )
        low, high = np.asarray(self.low), np.asarray(self.high)
        return low + (b + 0.5) / self.n_bins * (high - low)

    @property
    def bin_width(self) -> NDArray[np.float64]:
        """(D,) width of one bin per dimension; round-trip error is at most half of it."""
        return (np.asarray(self.high) - np.asarray(self.low)) / self.n_bins

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as JSON."""
        Path(path).write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> ActionTokenizer:
        """Read a tokenizer written by :meth:`save`.

        Raises:
            ConfigError: If the file is missing or malformed (naming the file).
        """
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(tuple(data["low"]), tuple(data["high"]), int(data["n_bins"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path} is not an action tokenizer file ({e})") from e


def gripper_command(values: Sequence[float] | NDArray[np.floating]) -> NDArray[np.float64]:
    """Snap decoded gripper commands to -1 (open) or +1 (close)."""
    return np.where(np.asarray(values, dtype=np.float64) > 0, 1.0, -1.0)
