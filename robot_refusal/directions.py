"""Directions and subspaces in the residual stream, their files, algebra and cosine matrices.

A :class:`Direction` is one vector r (D,) with its provenance (layer, position, method,
scores, checkpoint hash, data split); a :class:`Subspace` is k orthonormal directions (k, D).
Both save as a safetensors file (the tensor; the metadata also in its header) plus a JSON file
beside it (DESIGN.md section 8, "Directions"), and load back equal. Applying one to a model of
another width raises :class:`~robot_refusal.errors.DirectionError`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor, nn

from robot_refusal.errors import DirectionError

FORMAT = "robot-refusal/direction-v1"
NORM_EPS = 1e-12
"""Candidates with a norm at or below this are zero (rejected)."""


def _paths(path: str | Path) -> tuple[Path, Path]:
    """``(x.safetensors, x.json)`` for ``x``, ``x.safetensors`` or ``x.json``."""
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def _write(path: str | Path, tensor: Tensor, meta: dict[str, Any]) -> Path:
    st, js = _paths(path)
    st.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(meta, indent=2, sort_keys=True)
    save_file({"vector": tensor.contiguous()}, str(st), metadata={"robot_refusal": text})
    js.write_text(text + "\n", encoding="utf-8")
    return st


def _read(path: str | Path, kind: str) -> tuple[Tensor, dict[str, Any]]:
    st, _ = _paths(path)
    if not st.is_file():
        raise DirectionError(f"{st} does not exist; expected a {kind} saved by .save()")
    try:
        with safe_open(str(st), framework="pt") as f:
            header = f.metadata() or {}
        tensor = load_file(str(st))["vector"]
        meta = json.loads(header["robot_refusal"])
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError, ValueError) as e:
        raise DirectionError(
            f"{st} is corrupt or not a robot-refusal {kind} ({type(e).__name__}: {e})"
        ) from e
    if meta.get("format") != FORMAT or meta.get("kind") != kind:
        raise DirectionError(f"{st} holds a {meta.get('kind')!r}, expected a {kind!r}")
    if not torch.isfinite(tensor).all():
        raise DirectionError(f"{st} holds NaN or inf")
    return tensor, meta


def model_width(model: nn.Module | int) -> int:
    """Residual width D of a model (from its config's ``hidden_size``) or an int."""
    if isinstance(model, int):
        return model
    cfg = getattr(model, "config", None)
    d = getattr(cfg, "hidden_size", None)
    if d is None:
        from robot_refusal.adapters import get_adapter

        return get_adapter(model).d_model
    return int(d)


@dataclass(frozen=True, eq=False)
class Direction:
    """A direction r (D,) in the residual stream, un-normalised (its norm is meaningful for
    activation addition).

    Attributes:
        vector: (D,) float64.
        layer: Block whose input it was read from (None if not from one layer).
        position: Token position (negative = from the end), or None.
        method: How it was made (``diff_in_means``, ``sum``, ...).
        scores: Selection scores (bypass, induce, kl, ...).
        checkpoint: Hash of the checkpoint it came from.
        split: Data split of the activations.
        extra: Free-form JSON-ready metadata.

    Source: Arditi et al. 2024, section 2.3 (difference-in-means direction).
    """

    vector: Tensor
    layer: int | None = None
    position: int | None = None
    method: str = "diff_in_means"
    scores: dict[str, float] = field(default_factory=dict)
    checkpoint: str | None = None
    split: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        v = torch.as_tensor(self.vector).detach().to("cpu", torch.float64)
        if v.ndim != 1:
            raise DirectionError(f"a direction is a (D,) vector, got shape {tuple(v.shape)}")
        object.__setattr__(self, "vector", v)

    @property
    def d_model(self) -> int:
        """Width D."""
        return int(self.vector.shape[0])

    @property
    def norm(self) -> float:
        """Euclidean norm of r."""
        return float(self.vector.norm())

    def unit(self) -> Tensor:
        """r̂ = r / ||r|| (D,) float64.

        Raises:
            DirectionError: If r is zero.
        """
        n = self.norm
        if not n > NORM_EPS:
            raise DirectionError("the direction has zero norm; it has no unit vector")
        return self.vector / n

    def check_model(self, model: nn.Module | int) -> None:
        """Raise :class:`DirectionError` unless ``model``'s width equals D."""
        d = model_width(model)
        if d != self.d_model:
            raise DirectionError(
                f"direction has width {self.d_model} but the model's residual stream has {d}; "
                "was it extracted from another checkpoint?"
            )

    def as_subspace(self) -> Subspace:
        """The rank-1 subspace spanned by r."""
        return Subspace(
            self.unit()[None],
            self.layer,
            self.position,
            self.method,
            dict(self.scores),
            self.checkpoint,
            self.split,
            dict(self.extra),
        )

    def metadata(self) -> dict[str, Any]:
        """JSON-ready metadata (everything except the tensor)."""
        return {
            "format": FORMAT,
            "kind": "direction",
            "d_model": self.d_model,
            "norm": self.norm,
            "layer": self.layer,
            "position": self.position,
            "method": self.method,
            "scores": self.scores,
            "checkpoint": self.checkpoint,
            "split": self.split,
            "extra": self.extra,
        }

    def save(self, path: str | Path) -> Path:
        """Write ``<path>.safetensors`` and ``<path>.json``; returns the safetensors path."""
        return _write(path, self.vector, self.metadata())

    @classmethod
    def load(cls, path: str | Path) -> Direction:
        """Read a direction written by :meth:`save`.

        Raises:
            DirectionError: Missing, corrupt or of another kind.
        """
        v, m = _read(path, "direction")
        if v.ndim != 1 or v.shape[0] != m.get("d_model"):
            raise DirectionError(f"{path}: tensor shape {tuple(v.shape)} contradicts its metadata")
        return cls(
            v,
            m["layer"],
            m["position"],
            m["method"],
            m["scores"],
            m["checkpoint"],
            m["split"],
            m["extra"],
        )

    # -- algebra (repeng ControlVector style) ----------------------------------------------------
    def _combine(self, other: object, sign: float) -> Direction:
        if not isinstance(other, Direction):
            return NotImplemented
        if other.d_model != self.d_model:
            raise DirectionError(f"widths differ: {self.d_model} vs {other.d_model}")
        layer = self.layer if self.layer == other.layer else None
        position = self.position if self.position == other.position else None
        return Direction(
            self.vector + sign * other.vector,
            layer,
            position,
            "sum",
            checkpoint=self.checkpoint,
            split=self.split,
        )

    def __add__(self, other: object) -> Direction:
        return self._combine(other, 1.0)

    def __sub__(self, other: object) -> Direction:
        return self._combine(other, -1.0)

    def __mul__(self, alpha: object) -> Direction:
        if isinstance(alpha, bool) or not isinstance(alpha, int | float):
            return NotImplemented
        return replace(self, vector=self.vector * float(alpha), method=f"{self.method}*scaled")

    __rmul__ = __mul__

    def __neg__(self) -> Direction:
        return self * -1.0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Direction):
            return NotImplemented
        return torch.equal(self.vector, other.vector) and self.metadata() == other.metadata()

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class Subspace:
    """k orthonormal directions (rows of ``basis``, (k, D) float64), k >= 1.

    Attributes are those of :class:`Direction`; ``layer``/``position`` describe where the
    basis was read, if from one place.

    Raises:
        DirectionError: If the basis is not (k, D) with orthonormal rows (to 1e-6).

    Source: DESIGN.md section 4 ("subspace"); rank-k ablation x <- x - Q Q^T x.
    """

    basis: Tensor
    layer: int | None = None
    position: int | None = None
    method: str = "subspace"
    scores: dict[str, float] = field(default_factory=dict)
    checkpoint: str | None = None
    split: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        q = torch.as_tensor(self.basis).detach().to("cpu", torch.float64)
        if q.ndim != 2 or q.shape[0] < 1:
            raise DirectionError(f"a subspace basis is (k, D) with k >= 1, got {tuple(q.shape)}")
        err = (q @ q.T - torch.eye(q.shape[0], dtype=torch.float64)).abs().max()
        if not err < 1e-6:
            raise DirectionError(f"subspace basis rows are not orthonormal (max error {err:.2e})")
        object.__setattr__(self, "basis", q)

    @property
    def k(self) -> int:
        """Rank k."""
        return int(self.basis.shape[0])

    @property
    def d_model(self) -> int:
        """Width D."""
        return int(self.basis.shape[1])

    def check_model(self, model: nn.Module | int) -> None:
        """Raise :class:`DirectionError` unless ``model``'s width equals D."""
        d = model_width(model)
        if d != self.d_model:
            raise DirectionError(
                f"subspace has width {self.d_model} but the model's residual stream has {d}; "
                "was it extracted from another checkpoint?"
            )

    def project(self, x: Tensor) -> Tensor:
        """Q Q^T x for x (..., D), in x's dtype."""
        q = self.basis.to(x.device, x.dtype)
        return (x @ q.T) @ q

    def metadata(self) -> dict[str, Any]:
        """JSON-ready metadata (everything except the tensor)."""
        return {
            "format": FORMAT,
            "kind": "subspace",
            "k": self.k,
            "d_model": self.d_model,
            "layer": self.layer,
            "position": self.position,
            "method": self.method,
            "scores": self.scores,
            "checkpoint": self.checkpoint,
            "split": self.split,
            "extra": self.extra,
        }

    def save(self, path: str | Path) -> Path:
        """Write ``<path>.safetensors`` and ``<path>.json``; returns the safetensors path."""
        return _write(path, self.basis, self.metadata())

    @classmethod
    def load(cls, path: str | Path) -> Subspace:
        """Read a subspace written by :meth:`save`.

        Raises:
            DirectionError: Missing, corrupt, of another kind or not orthonormal.
        """
        q, m = _read(path, "subspace")
        if q.ndim != 2 or tuple(q.shape) != (m.get("k"), m.get("d_model")):
            raise DirectionError(f"{path}: tensor shape {tuple(q.shape)} contradicts its metadata")
        return cls(
            q,
            m["layer"],
            m["position"],
            m["method"],
            m["scores"],
            m["checkpoint"],
            m["split"],
            m["extra"],
        )

    def __add__(self, other: object) -> Subspace:
        """The span of both (orthonormalised); a :class:`Direction` adds its unit vector."""
        if isinstance(other, Direction):
            other = other.as_subspace()
        if not isinstance(other, Subspace):
            return NotImplemented
        if other.d_model != self.d_model:
            raise DirectionError(f"widths differ: {self.d_model} vs {other.d_model}")
        return orthonormalize(torch.cat([self.basis, other.basis]), method="span")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Subspace):
            return NotImplemented
        return torch.equal(self.basis, other.basis) and self.metadata() == other.metadata()

    __hash__ = None  # type: ignore[assignment]


Steering = Direction | Subspace
"""What an intervention takes: one direction or a subspace."""


def as_basis(steer: Steering) -> Tensor:
    """(k, D) float64 orthonormal basis of a direction (k = 1) or subspace."""
    return steer.unit()[None] if isinstance(steer, Direction) else steer.basis


def orthonormalize(vectors: Tensor, method: str = "orthonormalized", tol: float = 1e-8) -> Subspace:
    """Orthonormal basis of the span of rows (n, D), in order (Gram-Schmidt via QR); rows
    dependent on earlier ones (residual norm <= tol relative) are dropped.

    Raises:
        DirectionError: If every row is zero.
    """
    v = vectors.detach().to(torch.float64)
    basis: list[Tensor] = []
    for row in v:
        n0 = float(row.norm())
        if not n0 > NORM_EPS:
            continue
        r = row.clone()
        for _ in range(2):  # twice is enough (Kahan-Parlett)
            for b in basis:
                r -= (r @ b) * b
        if float(r.norm()) > tol * n0:
            basis.append(r / r.norm())
    if not basis:
        raise DirectionError("no non-zero vectors to orthonormalize")
    return Subspace(torch.stack(basis), method=method)


def cosine_matrix(
    a: Sequence[Steering | Tensor], b: Sequence[Steering | Tensor] | None = None
) -> Tensor:
    """(len(a), len(b)) float64 cosine similarities between directions (across layers,
    scenario families or checkpoints). A subspace counts by its first basis vector; a zero
    vector gives 0, never NaN.

    Raises:
        DirectionError: If widths differ.
    """

    def mat(xs: Sequence[Steering | Tensor]) -> Tensor:
        rows = []
        for x in xs:
            if isinstance(x, Direction):
                rows.append(x.vector)
            elif isinstance(x, Subspace):
                rows.append(x.basis[0])
            else:
                rows.append(torch.as_tensor(x).detach().double().reshape(-1).cpu())
        if len({r.shape[0] for r in rows}) > 1:
            raise DirectionError(f"widths differ: {sorted({r.shape[0] for r in rows})}")
        m = torch.stack(rows)
        n = m.norm(dim=1, keepdim=True)
        return torch.where(n > NORM_EPS, m / n.clamp_min(NORM_EPS), torch.zeros_like(m))

    ma = mat(a)
    mb = ma if b is None else mat(b)
    if ma.shape[1] != mb.shape[1]:
        raise DirectionError(f"widths differ: {ma.shape[1]} vs {mb.shape[1]}")
    return ma @ mb.T


def checkpoint_hash(folder: str | Path) -> str:
    """SHA-256 (hex, first 16) of a checkpoint folder's ``model.safetensors``.

    Raises:
        DirectionError: If the file is missing.
    """
    f = Path(folder) / "model.safetensors"
    if not f.is_file():
        raise DirectionError(f"{f} does not exist; cannot hash the checkpoint")
    h = hashlib.sha256()
    with f.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
