"""Attack conditions: what is done to the policy's residual stream during an episode, and the
policy wrapper that keeps it active at every step of the closed loop.

A condition is a named :class:`ConditionSpec`: an intervention (``none``, ``ablate``, ``add``,
``orthogonalize``) with a steering file (a :class:`~robot_refusal.directions.Direction` or a
rank-k :class:`~robot_refusal.directions.Subspace`), a coefficient and a layer. Specs are plain
JSON so that worker processes rebuild the same condition from the run's config.

Interventions are those of DESIGN.md section 4 (Arditi et al. 2024, sections 2.4 and 4.1).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from robot_refusal.adapters import get_adapter
from robot_refusal.directions import Direction, Steering, Subspace, as_basis
from robot_refusal.errors import ConfigError, DirectionError, UnknownNameError
from robot_refusal.interventions import (
    activation_addition,
    directional_ablation,
    orthogonalize_weights,
)
from robot_refusal.policies.keypoint_memory import keypoint_memory_for
from robot_refusal.policies.policy import ChunkExecutor, VLAPolicy, refusal_score
from robot_refusal.selection import kl_divergence

INTERVENTIONS = ("none", "ablate", "add", "orthogonalize")
"""Interventions a condition can apply."""
BASIC_CONDITIONS = ("baseline", "ablate", "add", "orthogonalize", "caution")
"""Condition names that ``attack --conditions`` accepts (sweeps add theirs from their options).

- ``baseline``: the unsteered policy;
- ``ablate``: directional ablation of the refusal direction (every block input and sublayer
  output, all positions, generated tokens too);
- ``add``: activation addition of ``alpha * r`` at the direction's layer (``--add-alpha``,
  default +1, which induces refusal);
- ``orthogonalize``: the weight-orthogonalized checkpoint (rank-1 weight edit);
- ``caution``: directional ablation of the caution direction (``ablate_caution`` in results).
"""


@dataclass(frozen=True)
class ConditionSpec:
    """One attack condition.

    Attributes:
        name: Name in records and summaries (``baseline``, ``ablate``, ``add_alpha=-1``, ...).
        intervention: One of :data:`INTERVENTIONS`.
        steer: Path of the direction or subspace file (``.safetensors``; None for ``none``).
        alpha: Activation-addition coefficient (``add``; +1 induces refusal, -1 suppresses it).
        layer: Block of the addition (``add``); None takes the direction's own layer.
        group: Sweep the condition belongs to (``basic``, ``alpha``, ``layer``, ``rank``,
            ``family``) and ``value``: its swept value (alpha, layer, k or source family).
    """

    name: str
    intervention: str = "none"
    steer: str | None = None
    alpha: float = 1.0
    layer: int | None = None
    group: str = "basic"
    value: float | int | str | None = None

    def __post_init__(self) -> None:
        if self.intervention not in INTERVENTIONS:
            raise UnknownNameError("intervention", self.intervention, INTERVENTIONS)
        if self.intervention != "none" and not self.steer:
            raise ConfigError(f"condition {self.name!r} needs a direction file")
        if not math.isfinite(self.alpha):
            raise ConfigError(f"condition {self.name!r}: alpha must be finite, got {self.alpha}")

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (inverse of :meth:`from_json`)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ConditionSpec:
        """Rebuild a spec from :meth:`to_json` output."""
        return cls(**dict(data))


def load_steering(path: str | Path) -> Steering:
    """A direction or subspace file (``x``, ``x.safetensors`` or ``x.json``) or a folder that
    holds ``direction.safetensors`` (an ``extract`` output).

    Raises:
        DirectionError: Missing, corrupt or not a direction/subspace.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "direction"
    try:
        return Direction.load(p)
    except DirectionError as first:
        try:
            return Subspace.load(p)
        except DirectionError:
            raise first from None


def parse_conditions(text: str) -> list[str]:
    """Comma-separated basic condition names, in order, without duplicates.

    Raises:
        UnknownNameError: For a name outside :data:`BASIC_CONDITIONS`.
        ConfigError: For an empty list.
    """
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise ConfigError(f"no conditions given; choose from {', '.join(BASIC_CONDITIONS)}")
    for n in names:
        if n not in BASIC_CONDITIONS:
            raise UnknownNameError("condition", n, BASIC_CONDITIONS)
    return names


def parse_floats(text: str, what: str) -> list[float]:
    """Comma-separated finite numbers (``"-2,-1,0.5"``).

    Raises:
        ConfigError: For an empty list or an entry that is not a finite number.
    """
    out = []
    for item in (t.strip() for t in text.split(",")):
        try:
            value = float(item)
        except ValueError:
            raise ConfigError(f"{what}: {item!r} is not a number (got {text!r})") from None
        if not math.isfinite(value):
            raise ConfigError(f"{what}: {item!r} is not a finite number")
        out.append(value)
    if not out:
        raise ConfigError(f"{what}: no values given")
    return list(dict.fromkeys(out))


def parse_ints(text: str, what: str, low: int = 0) -> list[int]:
    """Comma-separated integers >= ``low`` (``"1,2,4,8"``).

    Raises:
        ConfigError: For an empty list or an entry that is not an integer >= ``low``.
    """
    out = []
    for item in (t.strip() for t in text.split(",")):
        try:
            value = int(item)
        except ValueError:
            raise ConfigError(f"{what}: {item!r} is not an integer (got {text!r})") from None
        if value < low:
            raise ConfigError(f"{what}: {value} is below {low}")
        out.append(value)
    if not out:
        raise ConfigError(f"{what}: no values given")
    return list(dict.fromkeys(out))


def format_value(value: float) -> str:
    """Short text of a swept number in a condition name (``-0.5``, ``2``)."""
    return f"{value:g}"


class SteeredPolicy:
    """A :class:`VLAPolicy` with a condition active at every ``select_action`` call.

    Every step runs under the condition's hooks (entered and removed around the call, so the
    shared model is clean between steps) or with the orthogonalized copy. At the first step of
    an episode it also records the open-loop cost of the condition: :attr:`kl`, KL(base ||
    steered) in nats of the first generated token's distribution, and :attr:`refusal_score`
    of the steered policy.

    Args:
        policy: The unsteered policy (its model is shared, never edited).
        spec: The condition.
        steer: The loaded direction/subspace (loaded from ``spec.steer`` if None).

    Raises:
        DirectionError: If the direction's width differs from the model's, or it is zero.
        ConfigError: If an ``add`` condition has no layer, or the layer is out of range.
    """

    def __init__(self, policy: VLAPolicy, spec: ConditionSpec, steer: Steering | None = None):
        self.base = policy
        self.spec = spec
        self.adapter = get_adapter(policy.model)
        self.steer = steer
        if spec.intervention != "none" and steer is None:
            assert spec.steer is not None
            self.steer = load_steering(spec.steer)
        if self.steer is not None:
            self.steer.check_model(self.adapter.d_model)
            as_basis(self.steer)  # a zero direction has no unit vector: DirectionError now
        self.layer: int | None = None
        if spec.intervention == "add":
            if not isinstance(self.steer, Direction):
                raise ConfigError(f"condition {spec.name!r}: addition needs a rank-1 direction")
            layer = spec.layer if spec.layer is not None else self.steer.layer
            if layer is None:
                raise ConfigError(f"condition {spec.name!r}: the direction records no layer")
            if not 0 <= layer < self.adapter.n_layers:
                raise ConfigError(
                    f"condition {spec.name!r}: layer must lie in 0..{self.adapter.n_layers - 1}"
                )
            self.layer = int(layer)
        self.model = policy.model
        if spec.intervention == "orthogonalize":
            assert self.steer is not None
            self.model = orthogonalize_weights(policy.model, self.steer).eval()
        self.processor = policy.processor
        self.refusal_score: float | None = None
        self.kl: float | None = None
        self.chunks = ChunkExecutor()
        self.keypoint_memory = keypoint_memory_for(policy.model.config, policy.image_size)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the images the policy reads."""
        return self.base.image_size

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The condition's hooks (nothing for ``none`` and ``orthogonalize``)."""
        if self.spec.intervention == "ablate":
            assert self.steer is not None
            with directional_ablation(self.model, self.steer, adapter=self.adapter):
                yield
        elif self.spec.intervention == "add":
            assert isinstance(self.steer, Direction) and self.layer is not None
            with activation_addition(
                self.model, self.steer, self.layer, self.spec.alpha, adapter=self.adapter
            ):
                yield
        else:
            yield

    def reset(self) -> None:
        """Start an episode (and forget a chunked checkpoint's stored chunks and the held
        keypoints of a checkpoint with a keypoint memory)."""
        self.refusal_score = None
        self.kl = None
        self.chunks.reset()
        if self.keypoint_memory is not None:
            self.keypoint_memory.reset()

    @torch.no_grad()
    def select_action(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        """One env action under the condition; sets :attr:`refusal_score` and :attr:`kl` at
        the first step of an episode. A chunked checkpoint runs its chunks as
        :meth:`VLAPolicy.select_action` does (:class:`ChunkExecutor`), every model call
        under the condition, and a checkpoint with a keypoint memory holds its keypoints as
        :meth:`VLAPolicy.select_action` does.

        Raises:
            InvalidObservationError: For a bad image, state or instruction.
        """
        inputs = self.processor([obs])
        queued = self.chunks.queued()
        if queued is not None:
            return self.processor.decode_actions(queued[None], [obs])[0]
        memory = self.keypoint_memory
        transform = None if memory is None else memory.transform(obs)
        with self.active():
            tokens, logprobs = self.model.predict_action_tokens(
                **inputs, chunk=True, keypoint_transform=transform
            )
        if self.refusal_score is None:
            self.refusal_score = float(refusal_score(logprobs)[0])
            if self.spec.intervention == "none":
                self.kl = 0.0
            else:
                base = self.base.model(**inputs).logits[:, -1]
                self.kl = float(kl_divergence(base, logprobs)[0])
        row = self.chunks.step(tokens[0].cpu().numpy(), self.base.model.config)
        return self.processor.decode_actions(row[None], [obs])[0]

    def first_step(self, obs: Mapping[str, Any]) -> tuple[float, float]:
        """(refusal score, KL to the base policy) of one observation, without stepping."""
        self.reset()
        self.select_action(obs)
        assert self.refusal_score is not None and self.kl is not None
        return self.refusal_score, self.kl
