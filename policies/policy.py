"""The VLA as a policy: LeRobot-style ``reset()`` / ``select_action(obs)``, a batched variant,
and checkpoint folders (``save_pretrained`` / ``from_pretrained``, safetensors only).

A checkpoint folder holds ``config.json``, ``model.safetensors`` (written by ``transformers``),
``tokenizer.json`` and ``processor_config.json``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.utils import logging as hf_logging

from robot_refusal.errors import CheckpointError, ConfigError
from robot_refusal.policies.configuration_vla import (
    REFUSE_ID,
    VLAConfig,
    check_action_decoding,
    check_decoding_for_head,
    check_keypoint_memory,
    check_keypoint_window,
    parse_chunk_execution,
)
from robot_refusal.policies.keypoint_memory import keypoint_memory_for
from robot_refusal.policies.modeling_vla import VLAForActionPrediction
from robot_refusal.policies.processing_vla import VLAProcessor

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CHECKPOINTS = Path(__file__).parent / "checkpoints"
"""Folder of the shipped checkpoints (``vla-small``, ``vla-small-v2``)."""
EPS = 1e-8


def refusal_score(first_logprobs: torch.Tensor) -> np.ndarray:
    """log p(refuse) - log(1 - p(refuse)) at the first generated position, float64 (B,).

    Args:
        first_logprobs: (B, V) log-probabilities of the first generated token.

    Source: DESIGN.md section 4 (refusal score), after Arditi et al. 2024, section 3.
    """
    p = first_logprobs[:, REFUSE_ID].double().exp().cpu().numpy()
    return np.log(p + EPS) - np.log(1.0 - p + EPS)


def shipped_checkpoints() -> list[str]:
    """Names of the shipped checkpoints (the folders under :data:`CHECKPOINTS`), sorted."""
    return sorted(p.name for p in CHECKPOINTS.glob("*") if p.is_dir())


def resolve_checkpoint(name: str | Path) -> Path:
    """A shipped checkpoint name (``vla-small``) or a folder path -> the folder.

    Raises:
        CheckpointError: If the folder does not exist.
    """
    shipped = CHECKPOINTS / str(name)
    if isinstance(name, str) and "/" not in name and shipped.is_dir():
        return shipped
    path = Path(name)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"policy {path} is a file; give the checkpoint's folder")
    if not path.is_dir():
        avail = shipped_checkpoints()
        raise CheckpointError(
            f"policy folder {path} does not exist; "
            f"shipped checkpoints: {', '.join(avail) or 'none'}"
        )
    return path


def set_chunk_execution(config: VLAConfig, spec: str) -> None:
    """Write chunk execution ``spec`` (:func:`parse_chunk_execution`) into ``config``'s
    ``n_action_steps`` and ``temporal_ensemble_coeff``.

    Raises:
        ConfigError: A bad spec, a config with ``action_chunk`` 1, or one read by its tokens
            (``action_decoding`` other than ``"regression"``: one action per call).
    """
    if config.action_chunk == 1:
        raise ConfigError(
            f"chunk execution {spec!r} needs a checkpoint trained with action chunks "
            "(train --action-chunk H); this one predicts one action per call"
        )
    if config.action_decoding != "regression":
        raise ConfigError(
            f"chunk execution {spec!r} needs the regression reading; action_decoding "
            f"{config.action_decoding!r} reads one action per call from the tokens"
        )
    steps, coeff = parse_chunk_execution(spec, config.action_chunk)
    config.n_action_steps, config.temporal_ensemble_coeff = steps, coeff


def describe_chunk_execution(config: VLAConfig) -> str | None:
    """The spec of ``config``'s chunk execution (``"ensemble:0.01"``, ``"open-loop:8"``,
    ``"newest"``), None for ``action_chunk`` 1 or a token reading (one action per call)."""
    if config.action_chunk == 1 or config.action_decoding != "regression":
        return None
    if config.n_action_steps > 1:
        return f"open-loop:{config.n_action_steps}"
    if config.temporal_ensemble_coeff is not None:
        return f"ensemble:{config.temporal_ensemble_coeff:g}"
    return "newest"


class ChunkExecutor:
    """Runs one episode's action chunks as a config says (``VLAConfig.action_chunk``,
    ``n_action_steps``, ``temporal_ensemble_coeff``): the open-loop queue and ACT's temporal
    ensemble (Zhao et al. 2023, sections 3.1 and 3.3). :class:`VLAPolicy` and the attacks'
    steered policy share it, so that a condition runs a checkpoint's chunks the way
    ``eval`` does."""

    def __init__(self) -> None:
        self.chunks: deque[np.ndarray] = deque()  # recent chunks (H, D), the newest last
        self.queue: deque[np.ndarray] = deque()  # open-loop actions (D,) still to run

    def reset(self) -> None:
        """Forget the stored chunks and queued actions (a new episode, or after a stop)."""
        self.chunks.clear()
        self.queue.clear()

    def queued(self) -> np.ndarray | None:
        """The next open-loop action (D,) of the current chunk, or None: call the model."""
        return self.queue.popleft() if self.queue else None

    def step(self, chunk: np.ndarray, config: VLAConfig) -> np.ndarray:
        """The action (D,) to run now, from a new chunk (H, D) of token ids (fractional for
        the regression head) predicted at this step.

        A refusal (``<refuse>`` first) drops the stored chunks and is returned as is. With
        ``n_action_steps`` n > 1 the chunk's rows 1 .. n-1 are queued; with
        ``temporal_ensemble_coeff`` c the result is the weighted mean of every stored
        chunk's row for this step (row a of the chunk predicted a steps ago), weights
        ``exp(-c i)``, i = 0 for the oldest; else the chunk's first row.
        """
        if chunk[0, 0] == REFUSE_ID:
            self.reset()
            return chunk[0]
        if config.n_action_steps > 1:
            self.queue.extend(chunk[1 : config.n_action_steps])
            return chunk[0]
        coeff = config.temporal_ensemble_coeff
        if coeff is None or len(chunk) == 1:
            return chunk[0]
        self.chunks.append(chunk)
        while len(self.chunks) > len(chunk):
            self.chunks.popleft()
        n = len(self.chunks)
        rows = np.stack([c[n - 1 - j] for j, c in enumerate(self.chunks)])  # oldest first
        weights = np.exp(-coeff * np.arange(n))
        return np.asarray((weights[:, None] * rows).sum(0) / weights.sum(), np.float32)


class VLAPolicy:
    """A trained VLA with its processor.

    Args:
        model: The network (put in eval mode).
        processor: Its processor.
        action_decoding: How action tokens are read (``configuration_vla.ACTION_DECODINGS``):
            ``"argmax"`` (greedy), ``"mean"`` (each action dimension as the mean of its bin
            distribution), ``"local_mean"`` (the mean near the argmax) or ``"regression"``
            (the continuous action head of a model trained with one); see
            ``VLAForActionPrediction.predict_action_tokens``. None keeps
            the checkpoint's ``VLAConfig.action_decoding``; a value is written into the
            model's config, so that :meth:`save_pretrained` records it and every wrapper of
            the same model reads its tokens the same way.

        chunk_execution: How a chunked checkpoint (``VLAConfig.action_chunk`` > 1) runs its
            chunks, written into the model's config like ``action_decoding``:
            ``"ensemble[:COEFF]"``, ``"open-loop[:STEPS]"`` or ``"newest"``
            (:func:`~robot_refusal.policies.configuration_vla.parse_chunk_execution`); None
            keeps the checkpoint's.
        keypoint_memory: Radius in pixels of the keypoint memory
            (``VLAConfig.keypoint_memory``; 0: none), written into the model's config like
            ``action_decoding``; None keeps the checkpoint's.

    Raises:
        ConfigError: An unknown ``action_decoding``, or ``"regression"`` for a model
            without that head; a bad ``chunk_execution``, or one for a model without
            chunks; ``keypoint_memory`` outside [0, 32] px or for a model with fewer than
            four keypoints.
    """

    def __init__(
        self,
        model: VLAForActionPrediction,
        processor: VLAProcessor,
        action_decoding: str | None = None,
        chunk_execution: str | None = None,
        keypoint_memory: float | None = None,
    ) -> None:
        if action_decoding is not None:
            check_action_decoding(action_decoding)
            check_decoding_for_head(action_decoding, model.config.action_head)
            model.config.action_decoding = action_decoding
        if chunk_execution is not None:
            set_chunk_execution(model.config, chunk_execution)
        if keypoint_memory is not None:
            check_keypoint_memory(keypoint_memory, model.config.num_keypoints)
            model.config.keypoint_memory = float(keypoint_memory)
        self.model = model.eval()
        self.processor = processor
        self.refusal_score: float | None = None
        self.chunks = ChunkExecutor()
        self.keypoint_memory = keypoint_memory_for(model.config, processor.image_size)

    @property
    def action_decoding(self) -> str:
        """How this policy reads its action tokens: ``"argmax"``, ``"mean"`` or
        ``"local_mean"``."""
        return str(self.model.config.action_decoding)

    @property
    def chunk_execution(self) -> str | None:
        """How this policy runs its action chunks (``"ensemble:COEFF"``,
        ``"open-loop:STEPS"``, ``"newest"``), None for a model without chunks."""
        return describe_chunk_execution(self.model.config)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the images the policy reads."""
        return self.processor.image_size

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        keypoint_window: int | None = None,
        action_decoding: str | None = None,
        chunk_execution: str | None = None,
        keypoint_memory: float | None = None,
    ) -> VLAPolicy:
        """Load a checkpoint folder (safetensors only, no remote code).

        Args:
            folder: Checkpoint folder or shipped name.
            keypoint_window: Override of the checkpoint's ``VLAConfig.keypoint_window`` (how
                keypoints are read out of the heatmaps: 0, the expectation over the whole map;
                r > 0, the soft-argmax around the map's maximum); None keeps the
                checkpoint's. Saving the policy records the override.
            action_decoding: Override of the checkpoint's ``VLAConfig.action_decoding``
                (``"argmax"``, ``"mean"``, ``"local_mean"``; see :class:`VLAPolicy`); None keeps the
                checkpoint's. Saving the policy records the override.
            chunk_execution: Override of how a chunked checkpoint runs its chunks (see
                :class:`VLAPolicy`); None keeps the checkpoint's.
            keypoint_memory: Override of the checkpoint's ``VLAConfig.keypoint_memory``
                (radius in pixels; 0: no memory); None keeps the checkpoint's.

        Raises:
            CheckpointError: Missing folder, missing ``config.json`` or weights, or a corrupt
                or truncated weights file (the message names the file).
            ConfigError: ``keypoint_window`` outside [0, 8], or an unknown
                ``action_decoding`` (or ``"regression"`` for a checkpoint without that head);
                a bad ``chunk_execution``, or one for a checkpoint without chunks;
                ``keypoint_memory`` outside [0, 32] px or for a checkpoint with fewer than
                four keypoints.
        """
        if action_decoding is not None:
            check_action_decoding(action_decoding)
        if keypoint_window is not None:
            check_keypoint_window(keypoint_window)
        if keypoint_memory is not None:
            check_keypoint_memory(keypoint_memory)
        path = resolve_checkpoint(folder)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (path / name).is_file():
                raise CheckpointError(f"{path / name} is missing; is {path} a policy checkpoint?")
        try:
            config = VLAConfig.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, TypeError) as e:
            raise CheckpointError(f"{path / CONFIG_FILE} is not a VLA config ({e})") from e
        if keypoint_window is not None:
            config.keypoint_window = keypoint_window
        if action_decoding is not None:
            check_decoding_for_head(action_decoding, config.action_head)
            config.action_decoding = action_decoding
        if chunk_execution is not None:
            set_chunk_execution(config, chunk_execution)
        if keypoint_memory is not None:
            check_keypoint_memory(keypoint_memory, config.num_keypoints)
            config.keypoint_memory = float(keypoint_memory)
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a 60-tensor checkpoint loads in milliseconds
        try:
            model = VLAForActionPrediction.from_pretrained(
                path, config=config, use_safetensors=True, local_files_only=True
            )
        except Exception as e:  # safetensors, OSError, RuntimeError on shape mismatch
            raise CheckpointError(
                f"{path / WEIGHTS_FILE} is corrupt or does not match {CONFIG_FILE} "
                f"({type(e).__name__}: {str(e).splitlines()[0][:200]})"
            ) from e
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        # Fresh memory for every tensor: the loaded ones keep the file's layout, on which some
        # CPUs take another kernel path and the logits differ from the saved model's in the
        # last bit (measured: 1.2e-7 for a stride-2 model; bit-identical after the copy).
        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                t.data = t.data.clone()
        try:
            processor = VLAProcessor.from_pretrained(path)
        except Exception as e:
            raise CheckpointError(str(e)) from e
        return cls(model, processor)

    def save_pretrained(self, folder: str | Path) -> None:
        """Write weights (safetensors), config and processor files into ``folder``."""
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # one small file: no "Writing model shards" bar
        try:
            self.model.save_pretrained(folder, safe_serialization=True)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        self.processor.save_pretrained(folder)

    # -- LeRobot-style API ----------------------------------------------------------------------
    def reset(self) -> None:
        """Start an episode: forget the stored action chunks and held keypoints (a policy
        with ``action_chunk`` 1 and no ``keypoint_memory`` has no memory between steps)."""
        self.refusal_score = None
        self.chunks.reset()
        if self.keypoint_memory is not None:
            self.keypoint_memory.reset()

    def select_action(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        """One env action for one observation; sets :attr:`refusal_score`.

        A checkpoint with ``action_chunk`` H > 1 runs its chunks as its config says
        (:class:`~robot_refusal.policies.configuration_vla.VLAConfig`): with
        ``n_action_steps`` n > 1 the model is called every n steps and the chunk's first n
        actions run open loop (:attr:`refusal_score` is then the last call's); with
        ``temporal_ensemble_coeff`` the action is ACT's weighted mean of the last H chunks'
        predictions for this step (Zhao et al. 2023, section 3.3). A refusal drops the
        stored chunks. With ``keypoint_memory`` the decoder reads the held static keypoints
        (:class:`~robot_refusal.policies.keypoint_memory.KeypointMemory`). :meth:`reset`
        starts each episode.

        Raises:
            InvalidObservationError: For a bad image, state or instruction.
        """
        return self._select_one(obs, None)

    def _select_one(
        self, obs: Mapping[str, Any], keypoint_override: np.ndarray | None
    ) -> dict[str, Any]:
        """:meth:`select_action` with an optional (1, K', 2) keypoint override."""
        inputs = self.processor([obs])  # checks the observation at every step
        queued = self.chunks.queued()  # the rest of an open-loop chunk
        if queued is not None:
            return self.processor.decode_actions(queued[None], [obs])[0]
        if keypoint_override is not None:
            inputs["keypoint_override"] = torch.as_tensor(np.asarray(keypoint_override, np.float32))
        if self.keypoint_memory is not None:
            inputs["keypoint_transform"] = self.keypoint_memory.transform(obs)
        ids, logprobs = self.model.predict_action_tokens(
            **inputs, decoding=self.action_decoding, chunk=True
        )
        self.refusal_score = float(refusal_score(logprobs)[0])
        row = self.chunks.step(ids[0].cpu().numpy(), self.model.config)
        return self.processor.decode_actions(row[None], [obs])[0]

    @torch.no_grad()
    def select_actions(
        self,
        observations: Sequence[Mapping[str, Any]],
        keypoint_override: np.ndarray | None = None,
    ) -> tuple[list[dict[str, Any]], np.ndarray]:
        """Env actions and refusal scores (B,) float64 for a batch of observations.

        Stateless: each row is the first action of its new chunk (no open-loop queue, no
        temporal ensemble, no keypoint memory; those are :meth:`select_action`'s, for one
        episode).

        Args:
            observations: B env observations (image, state, instruction).
            keypoint_override: (B, K', 2) keypoints in [-1, 1] image units that replace the
                model's first K' predicted ones (a diagnostic; see
                :class:`~robot_refusal.policies.privileged.ExactKeypointPolicy`); None: the
                policy's own.

        Raises:
            InvalidObservationError: For a bad image, state or instruction.
            ConfigError: ``keypoint_override`` of the wrong shape.
        """
        inputs = self.processor(observations)
        if keypoint_override is not None:
            inputs["keypoint_override"] = torch.as_tensor(np.asarray(keypoint_override, np.float32))
        tokens, logprobs = self.model.predict_action_tokens(**inputs, decoding=self.action_decoding)
        actions = self.processor.decode_actions(tokens.cpu().numpy(), observations)
        return actions, refusal_score(logprobs)

    def num_parameters(self) -> int:
        """Trainable parameter count."""
        return sum(p.numel() for p in self.model.parameters())

    def __repr__(self) -> str:
        n = self.num_parameters()
        return f"VLAPolicy({n / 1e6:.2f}M parameters, image {self.image_size})"
