"""Processor of the VLA: observation dicts -> model tensors, and action tokens -> env actions.

- Instructions: a word-level tokenizer of the ``tokenizers`` library (lowercase, split on
  whitespace and punctuation; unknown words map to ``[UNK]``), saved as ``tokenizer.json``
  beside the weights. Its vocabulary starts with the special tokens and the 256 action-bin
  tokens, so that tokenizer ids and model ids agree.
- Images: uint8 (H, W, 3) -> float (3, H, W), scaled to [0, 1] and standardised per channel.
- State: float (8,) standardised with the dataset's mean and std.
- Actions: :class:`~robot_refusal.policies.action_tokenizer.ActionTokenizer`, in one of two
  action spaces: ``delta`` (tokens = end-effector displacement xyz, gripper) or ``goal`` (tokens =
  subgoal x, y, z, step cap, gripper; :meth:`VLAProcessor.decode_actions` turns a subgoal into
  the displacement toward it from the observed end-effector position, the rule of
  :func:`robot_refusal.envs.expert.goal_displacement`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel

from robot_refusal.envs.expert import goal_displacement
from robot_refusal.errors import ConfigError, InvalidObservationError
from robot_refusal.policies.action_tokenizer import ActionTokenizer, gripper_command
from robot_refusal.policies.configuration_vla import (
    ACTION_TOKEN_OFFSET,
    PAD_ID,
    REFUSE_ID,
    SPECIAL_TOKENS,
    UNK_ID,
)

ACTION_SPACES = ("goal", "delta")
"""What action tokens encode (see the module docstring)."""
ACTION_WIDTHS = {"delta": 4, "goal": 5}
"""Action tokens per step in each action space."""
TOKENIZER_FILE = "tokenizer.json"
PROCESSOR_FILE = "processor_config.json"
MAX_INSTRUCTION_CHARS = 1000
POLICY_STATE = (0, 1, 2, 6, 7)
"""Env state entries the policy reads: end-effector position (m), gripper opening (m), grasp
flag. The end-effector velocity (entries 3:6) is left out: with it, behaviour cloning learns to
continue the current motion (the "copycat" shortcut of Wen et al. 2020, "Fighting Copycat
Agents in Behavioral Cloning from Observation Histories") instead of reading the image; the
first trained VLA did exactly that (good open-loop, wrong closed-loop heading)."""


VELOCITY_POLICY_STATE = (0, 1, 2, 3, 4, 5, 6, 7)
"""The whole env state: :data:`POLICY_STATE` plus the end-effector velocity (m/s), read by
checkpoints trained with ``robot-refusal train --state-velocity``. The copycat finding above
was made on an encoder that could not yet locate the named object; with exact keypoints, the
imitation ceiling's argmax over action bins succeeds far more often with the velocity than
without (184 against 146 of 200 harmless test episodes; README, "Where the decoder loses its
points"), presumably because the current motion tells apart the modes of a split action
distribution (a detour or the straight path)."""


GOAL_POLICY_STATE = (6, 7)
"""Env state entries a goal-space policy reads: gripper opening (m) and grasp flag. Not the
end-effector position: a subgoal is often within centimetres of it (at every arrival, grasp and
release), and with the position in its input the first goal-space VLA learned to name its own
position as the goal and stood still (measured: goal = end effector to 1 mm from step 9 on).
The processor still needs the position to turn a subgoal into a displacement; it reads it from
the full state."""


def action_token(i: int) -> str:
    """Surface form of action bin ``i``: ``<a000>`` .. ``<a255>``."""
    return f"<a{i:03d}>"


def build_tokenizer(instructions: Iterable[str], n_bins: int = 256) -> Tokenizer:
    """Word-level tokenizer over the words of ``instructions`` plus special and action tokens."""
    normalizer = normalizers.Lowercase()
    pre = pre_tokenizers.Whitespace()
    words: set[str] = set()
    for text in instructions:
        words.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for i in range(n_bins):
        vocab[action_token(i)] = ACTION_TOKEN_OFFSET + i
    for w in sorted(words):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token=SPECIAL_TOKENS[UNK_ID]))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    return tok


@dataclass(frozen=True)
class Normalization:
    """Standardisation statistics.

    Attributes:
        state_mean, state_std: (8,) of the proprioceptive state.
        image_mean, image_std: (3,) per RGB channel of images scaled to [0, 1].
    """

    state_mean: tuple[float, ...]
    state_std: tuple[float, ...]
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]


class VLAProcessor:
    """Turns observations into model inputs and model tokens into env actions.

    Args:
        tokenizer: The instruction tokenizer.
        actions: The action tokenizer.
        norm: Normalisation statistics (of the full 8-entry env state).
        max_instruction_tokens: Instruction length T of the template.
        image_size: Expected (H, W) of observation images.
        state_keys: Entries of the env state the policy reads (default :data:`POLICY_STATE`).
        action_space: ``"delta"`` or ``"goal"`` (:data:`ACTION_SPACES`).

    Raises:
        ConfigError: For an unknown action space or an action tokenizer of the wrong width.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        actions: ActionTokenizer,
        norm: Normalization,
        max_instruction_tokens: int,
        image_size: tuple[int, int],
        state_keys: tuple[int, ...] = POLICY_STATE,
        action_space: str = "delta",
    ) -> None:
        if action_space not in ACTION_SPACES:
            raise ConfigError(f"unknown action space {action_space!r}; known: {ACTION_SPACES}")
        if actions.dims != ACTION_WIDTHS[action_space]:
            raise ConfigError(
                f"action space {action_space!r} has {ACTION_WIDTHS[action_space]} dimensions, "
                f"the action tokenizer {actions.dims}"
            )
        self.action_space = action_space
        self.tokenizer, self.actions, self.norm = tokenizer, actions, norm
        self.max_instruction_tokens = max_instruction_tokens
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.state_keys = tuple(int(k) for k in state_keys)
        self._state_dim = len(norm.state_mean)
        self._state_mean = np.asarray(norm.state_mean, np.float32)[list(self.state_keys)]
        self._state_std = np.maximum(np.asarray(norm.state_std, np.float32), 1e-6)[
            list(self.state_keys)
        ]
        self._img_mean = np.asarray(norm.image_mean, np.float32).reshape(1, 3, 1, 1)
        self._img_std = np.maximum(np.asarray(norm.image_std, np.float32), 1e-6).reshape(1, 3, 1, 1)

    @property
    def vocab_size(self) -> int:
        """Tokenizer vocabulary size (words + special + action tokens)."""
        return int(self.tokenizer.get_vocab_size())

    # -- inputs ---------------------------------------------------------------------------------
    def encode_instructions(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids (B, T) int64 and mask (B, T) int64 of instructions.

        Raises:
            InvalidObservationError: For a non-string, empty or too long instruction.
        """
        t = self.max_instruction_tokens
        ids = np.full((len(texts), t), PAD_ID, np.int64)
        mask = np.zeros((len(texts), t), np.int64)
        for row, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise InvalidObservationError(f"instruction must be a non-empty string: {text!r}")
            if len(text) > MAX_INSTRUCTION_CHARS:
                raise InvalidObservationError(
                    f"instruction has {len(text)} characters; the limit is {MAX_INSTRUCTION_CHARS}"
                )
            enc = self.tokenizer.encode(text).ids
            if len(enc) > t:
                raise InvalidObservationError(
                    f"instruction has {len(enc)} tokens; this policy reads at most {t}: "
                    f"{text[:80]!r}"
                )
            ids[row, t - len(enc) :] = enc
            mask[row, t - len(enc) :] = 1
        return torch.from_numpy(ids), torch.from_numpy(mask)

    def preprocess_images(self, images: NDArray[np.uint8]) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 3, H, W) float32, standardised.

        Raises:
            InvalidObservationError: For a wrong shape or dtype.
        """
        a = np.asarray(images)
        if a.ndim != 4 or a.shape[1:] != (*self.image_size, 3) or a.dtype != np.uint8:
            raise InvalidObservationError(
                f"images must be uint8 (B, {self.image_size[0]}, {self.image_size[1]}, 3), got "
                f"{a.dtype} {a.shape}"
            )
        x = a.astype(np.float32).transpose(0, 3, 1, 2) / 255.0  # (B, 3, H, W)
        return torch.from_numpy((x - self._img_mean) / self._img_std)

    @property
    def state_dim(self) -> int:
        """Entries of the state the model reads."""
        return len(self.state_keys)

    def preprocess_states(self, states: NDArray[np.floating]) -> torch.Tensor:
        """(B, 8) env states -> (B, len(state_keys)) float32, selected and standardised.

        Raises:
            InvalidObservationError: For a wrong shape or NaN/inf.
        """
        s = np.asarray(states, dtype=np.float32)
        if s.ndim != 2 or s.shape[1] != self._state_dim:
            raise InvalidObservationError(f"states must be (B, {self._state_dim}), got {s.shape}")
        if not np.isfinite(s).all():
            raise InvalidObservationError("state contains NaN or inf")
        s = s[:, list(self.state_keys)]
        return torch.from_numpy((s - self._state_mean) / self._state_std)

    def __call__(self, observations: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Model inputs for a batch of env observations (keys image, state, instruction).

        Returns:
            ``pixel_values`` (B, 3, H, W) standardised, ``input_ids`` and ``attention_mask``
            (B, T), ``state`` (B, state_dim) standardised, and ``ee_position`` (B, 3) the raw
            end-effector position in m (read only by models with metric keypoints).

        Raises:
            InvalidObservationError: For a missing key or bad value.
        """
        for obs in observations:
            missing = [k for k in ("image", "state", "instruction") if k not in obs]
            if missing:
                raise InvalidObservationError(f"observation lacks {missing}")
        ids, mask = self.encode_instructions([o["instruction"] for o in observations])
        images = np.stack([np.asarray(o["image"]) for o in observations])
        states = np.stack(
            [np.asarray(o["state"], dtype=np.float32).reshape(-1) for o in observations]
        )
        return {
            "pixel_values": self.preprocess_images(images),
            "input_ids": ids,
            "attention_mask": mask,
            "state": self.preprocess_states(states),
            "ee_position": torch.from_numpy(states[:, :3].copy()),
        }

    # -- outputs --------------------------------------------------------------------------------
    def decode_actions(
        self,
        tokens: NDArray[np.integer],
        observations: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """Env actions from generated tokens (B, action_dim); ``<refuse>`` first -> refuse=1.

        Args:
            tokens: (B, action_dim) generated ids.
            observations: The B observations the tokens answer; the ``goal`` action space reads
                their end-effector position (``state[0:3]``, m), the ``delta`` space nothing.

        Raises:
            ConfigError: In the ``goal`` action space without ``observations``.
        """
        tokens = np.asarray(tokens)
        if self.action_space == "goal":
            if observations is None:
                raise ConfigError(
                    "a goal-space policy needs the observations to decode its actions"
                )
            ee = np.stack(
                [np.asarray(o["state"], np.float64).reshape(-1)[:3] for o in observations]
            )
        out = []
        for i, row in enumerate(tokens):
            if row[0] == REFUSE_ID:
                out.append(
                    {
                        "delta": np.zeros(3, np.float32),
                        "gripper": np.array([-1.0], np.float32),
                        "refuse": 1,
                    }
                )
                continue
            values = self.actions.decode(row - ACTION_TOKEN_OFFSET)  # (action_dim,)
            if self.action_space == "goal":
                delta = goal_displacement(values[:3], values[3], ee[i])
            else:
                delta = values[:3]
            out.append(
                {
                    "delta": delta.astype(np.float32),
                    "gripper": gripper_command(values[-1:]).astype(np.float32),
                    "refuse": 0,
                }
            )
        return out

    def action_labels(
        self, actions: NDArray[np.floating], refuse: NDArray[np.bool_]
    ) -> NDArray[np.int64]:
        """Target tokens (N, D) of action targets (N, D); refusals -> [<refuse>, -100, ...]."""
        tokens = self.actions.encode(actions) + ACTION_TOKEN_OFFSET  # (N, D)
        tokens = tokens.astype(np.int64)
        tokens[refuse] = -100
        tokens[refuse, 0] = REFUSE_ID
        return tokens

    # -- save / load ----------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> None:
        """Write ``tokenizer.json`` and ``processor_config.json`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(folder / TOKENIZER_FILE))
        cfg = {
            "actions": asdict(self.actions),
            "normalization": asdict(self.norm),
            "max_instruction_tokens": self.max_instruction_tokens,
            "image_size": list(self.image_size),
            "state_keys": list(self.state_keys),
            "action_space": self.action_space,
        }
        (folder / PROCESSOR_FILE).write_text(json.dumps(cfg, indent=2), encoding="utf-8")

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> VLAProcessor:
        """Load a processor saved by :meth:`save_pretrained`.

        Raises:
            ConfigError: Naming the missing or malformed file.
        """
        folder = Path(folder)
        for name in (TOKENIZER_FILE, PROCESSOR_FILE):
            if not (folder / name).is_file():
                raise ConfigError(f"{folder / name} is missing; is {folder} a policy checkpoint?")
        try:
            tok = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        except Exception as e:  # tokenizers raises its own Exception type
            raise ConfigError(f"{folder / TOKENIZER_FILE} is not a tokenizer file ({e})") from e
        try:
            cfg = json.loads((folder / PROCESSOR_FILE).read_text(encoding="utf-8"))
            actions = ActionTokenizer(
                tuple(cfg["actions"]["low"]),
                tuple(cfg["actions"]["high"]),
                int(cfg["actions"]["n_bins"]),
            )
            norm = Normalization(**{k: tuple(v) for k, v in cfg["normalization"].items()})
            keys = tuple(int(k) for k in cfg.get("state_keys", range(len(norm.state_mean))))
            return cls(
                tok,
                actions,
                norm,
                int(cfg["max_instruction_tokens"]),
                tuple(cfg["image_size"]),
                keys,
                str(cfg.get("action_space", "delta")),
            )
        except (ValueError, KeyError, TypeError, ConfigError) as e:
            raise ConfigError(f"{folder / PROCESSOR_FILE} is malformed ({e})") from e
