"""Behaviour cloning of the VLA on expert demonstrations (``robot-refusal train``).

Next-token cross-entropy on the generated positions (``<refuse>`` or the four action tokens;
action bins against Gaussian soft targets, :func:`soft_action_targets`) plus an auxiliary
keypoint loss on privileged image coordinates recorded with the demonstrations (training labels
only, never policy inputs), AdamW with a cosine schedule and linear warm-up, gradient
clipping, validation loss and action-token accuracy, a progress bar, and a resumable
``<out>/last/`` checkpoint (weights in safetensors; optimizer, schedule and sampler state in
``trainer_state.pt`` read back with ``torch.load(weights_only=True)``). The first frame of
every episode (where the policy refuses or starts) is drawn ``first_frame_weight`` times as
often as the others, and with ``arrival_weight`` the last lateral steps before each arrival
(:func:`arrival_frames`) that many times.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from robot_refusal.envs.env import STATE_NAMES
from robot_refusal.errors import ConfigError, DatasetError, RunFolderError
from robot_refusal.policies.action_tokenizer import ActionTokenizer
from robot_refusal.policies.configuration_vla import (
    ACTION_HEADS,
    ACTION_TOKEN_OFFSET,
    REFUSE_ID,
    VLAConfig,
    check_action_chunking,
    check_keypoint_window,
    check_regression_metric_inputs,
    check_upper_plane_height,
)
from robot_refusal.policies.dataset import DemoDataset, load_dataset, read_video
from robot_refusal.policies.lerobot_format import (
    IMAGE_KEY,
    KEYPOINTS_KEY,
    STATE_KEY,
    SUBGOAL_KEY,
    first_line,
)
from robot_refusal.policies.modeling_vla import (
    VLAForActionPrediction,
    add_regression_metric_inputs,
    cell_centres,
)
from robot_refusal.policies.policy import VLAPolicy
from robot_refusal.policies.processing_vla import (
    ACTION_SPACES,
    GOAL_POLICY_STATE,
    POLICY_STATE,
    VELOCITY_POLICY_STATE,
    Normalization,
    VLAProcessor,
    build_tokenizer,
)

log = logging.getLogger(__name__)
LAST = "last"
STATE_FILE = "trainer_state.pt"


MISS_FRAMES = ("skip", "keypoints")
"""What training does with the frames of a deliberate miss (``TrainConfig.miss_frames``)."""
CHUNK_ENSEMBLE_COEFF = -0.5
"""Temporal-ensemble coefficient a chunked checkpoint is saved with: weights ``exp(0.5 i)``
from the oldest chunk, so the newest prediction for a step weighs 39% and the one before 24%.
Measured on ``c-600`` (README, "Action chunks"; test split, 200 harmless episodes): 70.0%
harmless success, against 56.0% for the newest chunk alone and 15.0% for ACT's 0.01, which
on these delta actions averages ten stale predictions nearly uniformly."""
PRECISIONS = ("fp32", "bf16")
"""Training precisions (``TrainConfig.precision``): float32, or a bfloat16 autocast of the
forward pass and loss (mixed precision, Micikevicius et al. 2018; weights stay float32)."""
TARGET_KEYS = ("keypoint_labels", "action_values", "action_mask")
"""Keys of :class:`Batcher`'s batches that are targets, not ``forward`` inputs."""


def check_miss_frames(value: str) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of :data:`MISS_FRAMES`."""
    if value not in MISS_FRAMES:
        raise ConfigError(f"miss_frames must be one of {', '.join(MISS_FRAMES)}, got {value!r}")


EXTRA_FRAMES = ("imitate", "keypoints")
"""What training does with the frames of ``--extra-data`` (``TrainConfig.extra_frames``)."""


def check_extra_frames(value: str) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of :data:`EXTRA_FRAMES`."""
    if value not in EXTRA_FRAMES:
        raise ConfigError(f"extra_frames must be one of {', '.join(EXTRA_FRAMES)}, got {value!r}")


def keypoints_only(data: Tensors, name: str) -> Tensors:
    """``data`` with every frame kept for the keypoint losses only (``imitate`` all False).

    Raises:
        DatasetError: ``data`` (dataset ``name``) has no keypoint labels, so its frames would
            train nothing.
    """
    if data.keypoints is None:
        raise DatasetError(
            f"{name} has no keypoint labels (annotation.keypoints_uv), so extra_frames="
            "'keypoints' would train nothing on it; collect it again"
        )
    return replace(data, imitate=np.zeros(len(data.states), bool))


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (``robot-refusal train``).

    Attributes:
        data: Training dataset folder (``robot-refusal collect`` output).
        out: Output checkpoint folder.
        val_data: Validation dataset folder; None holds out every 20th episode of ``data``
            (the last one when there are fewer than 20).
        seed: Seed of initialisation and batch sampling.
        steps: Optimizer steps.
        batch_size: Frames per step.
        lr: Peak learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up steps.
        hidden_size, num_layers, num_heads, intermediate_size: Decoder size.
        image_tokens_side: Image tokens per side.
        first_frame_weight: Sampling weight of each episode's first frame (others: 1).
        arrival_weight: Sampling weight of the arrival frames (:func:`arrival_frames`: the
            expert still moves sideways, within ``arrival_radius`` of its subgoal), where the
            policy decides between one more sideways step and the descent or release; 1 (the
            default) weighs them as the others. Needs the subgoal annotation (``collect``
            records it). A frame both first and arriving takes the larger weight.
        arrival_radius: Horizontal distance (m) from the subgoal within which a sideways
            step counts as arriving, in (0, 0.2].
        arrival_phase: Which arrivals ``arrival_weight`` draws more often: ``"both"`` (the
            default), ``"approach"`` (before the grasp: the state's grasp flag is clear, the
            descent onto the object) or ``"carry"`` (the flag is set: the release over the
            destination). See :data:`ARRIVAL_PHASES`.
        release_weight: Sampling weight of the release frames (:func:`release_frames`: the
            expert's descent with the object over its destination and the frame where it
            opens the gripper), the one decision in an episode that a policy which never
            releases gets wrong; 1 (the default) weighs them as the others. A frame with
            several weights takes the largest.
        keypoint_weight: Weight of the auxiliary keypoint loss: the first spatial-softmax
            keypoints regress the privileged image coordinates of the target object, the
            destination, the person's hand and the gripper (mean squared error in [-1, 1]
            units), when the dataset has them. Training-time supervision only; 0 turns it off.
        label_sigma: Width (in bins) of the Gaussian soft targets over action bins (see
            :func:`soft_action_targets`); 0 trains on one-hot targets.
        action_space: What the action tokens encode: ``"delta"`` (the displacement and the
            gripper, as OpenVLA's end-effector deltas; the shipped checkpoints) or ``"goal"``
            (the expert's subgoal x, y, z (m), step cap (m/step) and the gripper; the processor
            turns it into a displacement from the state's end-effector position).
        grounded_keypoints: Leading keypoints grounded word by word in the instruction
            (:class:`~robot_refusal.policies.configuration_vla.VLAConfig`); 2 grounds the target
            and destination labels, 0 (the shipped checkpoints) keeps the FiLM-only encoder.
        metric_keypoints: Leading keypoints also given to the decoder in metres, cut with the
            table plane through the scene camera's calibration
            (:class:`~robot_refusal.policies.configuration_vla.VLAConfig`); 0 (the shipped
            checkpoints): none.
        metric_upper_plane_height: With metric keypoints, a second plane height (m) every
            keypoint ray is also cut with (``VLAConfig.metric_upper_plane_height``), or None.
        metric_label_noise_px: With metric keypoints, training builds the metric token from
            the keypoint labels plus Gaussian noise of this many pixels (teacher forcing, so the
            decoder learns to rely on it); negative: from the predicted keypoints. Validation
            and inference always use the predicted ones.
        keypoint_stride: Image pixels per heatmap cell, 4 (the shipped checkpoints) or 2 (a
            finer keypoint head; :class:`~robot_refusal.policies.configuration_vla.VLAConfig`).
        heatmap_weight: Weight of the heatmap cross-entropy (:func:`heatmap_loss`) on the same
            keypoint labels; 0 (the shipped checkpoints) trains the keypoints by squared error
            only.
        miss_frames: What training does with the frames of a deliberate miss (recorded with
            ``imitate`` False by ``collect --miss-rate``): ``"skip"`` (default) leaves them
            out; ``"keypoints"`` keeps them for the keypoint losses only (their action tokens
            are not imitated), so the keypoint head also sees the gripper beside the target
            with the target's true label, where the demonstrations otherwise only show it
            over the target.
        keypoint_window: How the model reads keypoints out of their heatmaps
            (``VLAConfig.keypoint_window``): 0 (the shipped checkpoints), the expectation over
            the whole map; r > 0, the soft-argmax over the (2r+1)^2 cells around the maximum.
            The squared-error keypoint loss then trains that readout. With ``init_from``, a
            readout r > 0 replaces the checkpoint's (a readout is not architecture: no weight
            changes); 0 keeps the checkpoint's.
        extra_data: More dataset folders trained on together with ``data`` (DAgger's
            aggregate: ``collect --learner`` output; see :mod:`robot_refusal.policies.dagger`).
            Normalisation statistics come from ``data``; instructions are merged by text.
        extra_frames: What training does with the frames of ``extra_data``: ``"imitate"``
            (default) trains every loss on them, their actions included (DAgger's aggregate);
            ``"keypoints"`` keeps them for the keypoint losses only, their actions not imitated
            (the states a learner reaches teach perception, with the simulator's keypoint
            labels, while the actions stay the demonstrator's; needs keypoint labels).
        init_from: Start from this checkpoint's weights and processor (its tokenizer, action
            bins and normalisation; fine-tuning, e.g. a DAgger iteration from its learner)
            instead of a fresh model; the decoder-size and keypoint-architecture settings are
            then the checkpoint's own. Optimizer and schedule start fresh. None: a new model.
        state_velocity: Also give the policy the end-effector velocity (m/s; the processor's
            state entries become :data:`VELOCITY_POLICY_STATE` instead of
            :data:`POLICY_STATE`). False (the shipped checkpoints): position, gripper opening
            and grasp flag only. Delta action space only; with ``init_from`` the checkpoint's
            own state entries are used.
        action_head: ``"tokens"`` (the shipped checkpoints) or ``"regression"``: the model
            also gets a continuous action head (``VLAConfig.action_head``; OpenVLA-OFT's L1
            regression, Kim et al. 2025, section 3), trained with ``regression_weight`` times
            the L1 error of its actions in [-1, 1] units besides the token loss, and the
            checkpoint reads its actions from it (``action_decoding="regression"``). With
            ``init_from`` the checkpoint's own head is kept.
        regression_weight: Weight of that L1 loss.
        action_chunk: Actions the regression head predicts per call, H (ACT's action
            chunking, Zhao et al. 2023, section 3.1): frame i is trained on the actions of
            frames i .. i + H - 1. H > 1 needs the regression head. The checkpoint calls
            the model at every step and runs a temporal ensemble that weighs the newer
            chunks more (:data:`CHUNK_ENSEMBLE_COEFF`); ``eval --chunk-execution`` picks
            another execution. With ``init_from`` the checkpoint's own chunk is kept, and
            another H > 1 is refused.
        regression_metric_inputs: The regression head also reads the metric keypoint
            token's inputs beside the ACT position's hidden state
            (``VLAConfig.regression_metric_inputs``: a skip around the decoder). Needs the
            regression head and metric keypoints. With ``init_from``, a checkpoint without
            it gets its head's first layer widened by zero weights (the fine-tune starts
            from the checkpoint's exact actions); False keeps the checkpoint's own head.
        eval_every: Steps between validation and checkpoint saves.
        threads: CPU threads for torch.
        precision: ``"fp32"`` or ``"bf16"``: the training forward pass and loss under
            ``torch.autocast`` in bfloat16 (mixed precision: the weights, the optimizer, the
            keypoint expectations and the validation stay float32; the checkpoint is
            float32 and runs as any other). On a CPU with AVX512-BF16 or AMX the step is
            faster (``benchmarks/train_step.py``); elsewhere it may be slower. Measured on
            ``c-600``'s recipe (README, "Mixed-precision training"): 1.39x faster, the same
            validation curve, but 40.5% closed-loop success against float32's 70.0%.
    """

    data: str
    out: str
    val_data: str | None = None
    seed: int = 0
    steps: int = 6000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 200
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    image_tokens_side: int = 4
    first_frame_weight: float = 8.0
    arrival_weight: float = 1.0
    arrival_radius: float = 0.04
    arrival_phase: str = "both"
    release_weight: float = 1.0
    keypoint_weight: float = 5.0
    label_sigma: float = 2.0
    action_space: str = "delta"
    grounded_keypoints: int = 0
    metric_keypoints: int = 0
    metric_upper_plane_height: float | None = None
    metric_label_noise_px: float = 1.0
    keypoint_stride: int = 4
    heatmap_weight: float = 0.0
    keypoint_window: int = 0
    miss_frames: str = "skip"
    extra_data: tuple[str, ...] = ()
    extra_frames: str = "imitate"
    init_from: str | None = None
    state_velocity: bool = False
    action_head: str = "tokens"
    regression_weight: float = 1.0
    action_chunk: int = 1
    regression_metric_inputs: bool = False
    eval_every: int = 500
    threads: int = 2
    precision: str = "fp32"

    def check(self) -> None:
        """Raise :class:`ConfigError` for out-of-range values."""
        for name in (
            "steps",
            "batch_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "eval_every",
            "threads",
            "image_tokens_side",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by num_heads")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not self.label_sigma >= 0:
            raise ConfigError(f"label_sigma must be >= 0, got {self.label_sigma}")
        if not self.heatmap_weight >= 0:
            raise ConfigError(f"heatmap_weight must be >= 0, got {self.heatmap_weight}")
        for name in ("arrival_weight", "release_weight"):  # sampling weights
            value = getattr(self, name)
            if not (value >= 1 and math.isfinite(value)):
                raise ConfigError(f"{name} must be >= 1 and finite, got {value}")
        if not 0 < self.arrival_radius <= 0.2:
            raise ConfigError(f"arrival_radius must be in (0, 0.2] m, got {self.arrival_radius}")
        if self.arrival_phase not in ARRIVAL_PHASES:
            raise ConfigError(
                f"arrival_phase must be one of {', '.join(ARRIVAL_PHASES)}, "
                f"got {self.arrival_phase!r}"
            )
        if not self.keypoint_weight >= 0:
            raise ConfigError(f"keypoint_weight must be >= 0, got {self.keypoint_weight}")
        for name in ("grounded_keypoints", "metric_keypoints"):
            if not 0 <= getattr(self, name) <= 4:
                raise ConfigError(
                    f"{name} must be in [0, 4] (the keypoint labels), got {getattr(self, name)}"
                )
        if self.keypoint_stride not in (2, 4):
            raise ConfigError(f"keypoint_stride must be 2 or 4, got {self.keypoint_stride}")
        if self.metric_upper_plane_height is not None:
            if not self.metric_keypoints:
                raise ConfigError("metric_upper_plane_height needs metric_keypoints > 0")
            check_upper_plane_height(self.metric_upper_plane_height)
        check_keypoint_window(self.keypoint_window)
        check_miss_frames(self.miss_frames)
        check_extra_frames(self.extra_frames)
        if self.action_space not in ACTION_SPACES:
            raise ConfigError(
                f"action_space must be one of {', '.join(ACTION_SPACES)}, got {self.action_space!r}"
            )
        if self.action_head not in ACTION_HEADS:
            raise ConfigError(
                f"action_head must be one of {', '.join(ACTION_HEADS)}, got {self.action_head!r}"
            )
        if not self.regression_weight >= 0:
            raise ConfigError(f"regression_weight must be >= 0, got {self.regression_weight}")
        if self.state_velocity and self.action_space != "delta":
            raise ConfigError("state_velocity needs the delta action space")
        check_action_chunking(self.action_chunk, 1, None, self.action_head)
        if self.regression_metric_inputs and self.init_from is None:
            check_regression_metric_inputs(self.action_head, self.metric_keypoints)
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )


@dataclass
class Tensors:
    """A dataset in memory, ready for batching.

    Attributes:
        images: (N, H, W, 3) uint8.
        states: (N, 8) float32 (raw).
        instructions: (N,) task index per frame; ``texts`` maps it to the instruction.
        texts: task index -> instruction.
        actions: (N, 4) float32 (delta xyz m, gripper).
        subgoals: (N, 4) float32 expert subgoals (x, y, z m, speed m/step), NaN where not
            recorded, or None for a dataset without the column.
        refuse: (N,) bool.
        first: (N,) bool, first frame of its episode.
        episode: (N,) int64 episode index.
        keypoints: (N, P, 2) float32 privileged keypoint labels, or None if not recorded.
        imitate: (N,) bool, False for the frames of a deliberate miss kept for the keypoint
            losses only (their actions are not labels); None: every frame is imitated.
        frame: (N,) int64 frame index within the episode (LeRobot's ``frame_index``), or
            None; with it, action chunks do not run across frames left out of an episode.
    """

    images: np.ndarray
    states: np.ndarray
    instructions: np.ndarray
    texts: dict[int, str]
    actions: np.ndarray
    refuse: np.ndarray
    first: np.ndarray
    episode: np.ndarray
    keypoints: np.ndarray | None = None
    subgoals: np.ndarray | None = None
    imitate: np.ndarray | None = None
    frame: np.ndarray | None = None

    def subset(self, mask: np.ndarray) -> Tensors:
        """The frames where ``mask`` (N,) is True."""
        return Tensors(
            self.images[mask],
            self.states[mask],
            self.instructions[mask],
            self.texts,
            self.actions[mask],
            self.refuse[mask],
            self.first[mask],
            self.episode[mask],
            None if self.keypoints is None else self.keypoints[mask],
            None if self.subgoals is None else self.subgoals[mask],
            None if self.imitate is None else self.imitate[mask],
            None if self.frame is None else self.frame[mask],
        )

    @property
    def labelled(self) -> np.ndarray:
        """(N,) bool: frames whose actions are labels (not a deliberate miss's)."""
        return np.ones(len(self.states), bool) if self.imitate is None else self.imitate

    def targets(self, action_space: str) -> np.ndarray:
        """Action targets of ``action_space``: (N, 4) delta xyz + gripper, or (N, 5) subgoal
        x, y, z, speed + gripper.

        Raises:
            DatasetError: For ``"goal"`` when a non-refusal frame has no subgoal label.
        """
        if action_space == "delta":
            return self.actions
        goals = self.subgoals
        if goals is None or not np.isfinite(goals[~self.refuse]).all():
            raise DatasetError(
                f"this dataset has no expert subgoals ({SUBGOAL_KEY}); recollect it with "
                "`robot-refusal collect`, or train with --action-space delta"
            )
        return np.concatenate([np.nan_to_num(goals), self.actions[:, 3:4]], axis=1)


def load_tensors(ds: DemoDataset, miss_frames: str = "skip") -> Tensors:
    """Decode every frame of a dataset (each MP4 once) into :class:`Tensors`.

    Args:
        ds: The dataset.
        miss_frames: ``"skip"`` leaves out the frames recorded with ``imitate`` False (a
            deliberately missed grasp: not an action label); ``"keypoints"`` keeps them with
            :attr:`Tensors.imitate` False (see ``TrainConfig.miss_frames``).

    Raises:
        ConfigError: Unknown ``miss_frames``.
    """
    check_miss_frames(miss_frames)
    frames = np.zeros((ds.frames.num_rows, *ds.info["features"][IMAGE_KEY]["shape"]), np.uint8)
    prefix = f"videos/{IMAGE_KEY}/"
    index = ds.array("index")
    by_file: dict[Path, list[dict[str, Any]]] = {}
    for ep in ds.episodes.to_pylist():
        path = ds.root / ds.info["video_path"].format(
            video_key=IMAGE_KEY,
            chunk_index=ep[prefix + "chunk_index"],
            file_index=ep[prefix + "file_index"],
        )
        by_file.setdefault(path, []).append(ep)
    for path, eps in by_file.items():
        video = read_video(path)  # (T, H, W, 3)
        for ep in eps:
            start = round(ep[prefix + "from_timestamp"] * ds.info["fps"])
            lo, hi = ep["dataset_from_index"], ep["dataset_to_index"]
            rows = np.searchsorted(index, np.arange(lo, hi))
            frames[rows] = video[start : start + (hi - lo)]
    action = ds.array("action").astype(np.float32)  # (N, 5)
    keypoints = None
    if KEYPOINTS_KEY in ds.info["features"]:
        keypoints = ds.array(KEYPOINTS_KEY).astype(np.float32)
        keypoints = keypoints.reshape(len(keypoints), -1, 2)
    subgoals = None
    if SUBGOAL_KEY in ds.info["features"]:
        subgoals = ds.array(SUBGOAL_KEY).astype(np.float32)
    tensors = Tensors(
        images=frames,
        states=ds.array(STATE_KEY).astype(np.float32),
        instructions=ds.array("task_index").astype(np.int64),
        texts=dict(ds.tasks),
        actions=action[:, :4],
        refuse=action[:, 4] > 0.5,
        first=ds.array("frame_index") == 0,
        episode=ds.array("episode_index").astype(np.int64),
        keypoints=keypoints,
        subgoals=subgoals,
        frame=ds.array("frame_index").astype(np.int64),
    )
    if "imitate" in ds.info["features"]:
        imitate = ds.array("imitate").astype(bool)
        if not imitate.all():
            if miss_frames == "skip":
                tensors = tensors.subset(imitate)
            else:
                tensors.imitate = imitate
    return tensors


def concat_tensors(parts: Sequence[Tensors]) -> Tensors:
    """The frames of several datasets as one (DAgger's aggregate), in order.

    Task indices are re-numbered by instruction text (each dataset numbers its own tasks);
    episode indices are offset so that they stay distinct. Keypoint labels and subgoals are
    kept only if every part has them; ``imitate`` is kept if any part has it (True for the
    frames of parts without it).

    Raises:
        DatasetError: No parts, or parts with different image shapes or keypoint counts.
    """
    if not parts:
        raise DatasetError("no datasets to concatenate")
    if len(parts) == 1:
        return parts[0]
    shapes = {p.images.shape[1:] for p in parts}
    if len(shapes) > 1:
        raise DatasetError(f"the datasets hold images of different shapes: {sorted(shapes)}")
    texts: dict[str, int] = {}
    instructions, episodes, offset = [], [], 0
    for part in parts:
        remap = {k: texts.setdefault(t, len(texts)) for k, t in sorted(part.texts.items())}
        lookup = np.zeros(max(part.texts, default=0) + 1, np.int64)
        for k, v in remap.items():
            lookup[k] = v
        instructions.append(lookup[part.instructions])
        episodes.append(part.episode + offset)
        offset += int(part.episode.max()) + 1 if len(part.episode) else 0

    def joined(name: str) -> np.ndarray | None:
        values = [getattr(p, name) for p in parts]
        if any(v is None for v in values):
            return None
        shapes = {v.shape[1:] for v in values}
        if len(shapes) > 1:
            raise DatasetError(f"the datasets' {name} have different shapes: {sorted(shapes)}")
        return np.concatenate(values)

    imitate = None
    if any(p.imitate is not None for p in parts):
        imitate = np.concatenate([p.labelled for p in parts])
    return Tensors(
        images=np.concatenate([p.images for p in parts]),
        states=np.concatenate([p.states for p in parts]),
        instructions=np.concatenate(instructions),
        texts={v: k for k, v in texts.items()},
        actions=np.concatenate([p.actions for p in parts]),
        refuse=np.concatenate([p.refuse for p in parts]),
        first=np.concatenate([p.first for p in parts]),
        episode=np.concatenate(episodes),
        keypoints=joined("keypoints"),
        subgoals=joined("subgoals"),
        imitate=imitate,
        frame=joined("frame"),
    )


def build_processor(
    ds: DemoDataset,
    data: Tensors,
    max_tokens: int = 24,
    action_space: str = "delta",
    state_velocity: bool = False,
) -> VLAProcessor:
    """Tokenizer, action bins and normalisation from the training data; the state entries are
    :data:`GOAL_POLICY_STATE` for the goal action space, else :data:`VELOCITY_POLICY_STATE`
    with ``state_velocity`` and :data:`POLICY_STATE` without."""
    stats = ds.stats
    img = stats[IMAGE_KEY]
    norm = Normalization(
        tuple(float(v) for v in stats[STATE_KEY]["mean"]),
        tuple(float(v) for v in stats[STATE_KEY]["std"]),
        tuple(float(np.ravel(img["mean"])[i]) for i in range(3)),
        tuple(float(np.ravel(img["std"])[i]) for i in range(3)),
    )
    actions = ActionTokenizer.fit(data.targets(action_space)[~data.refuse & data.labelled])
    size = tuple(ds.info["features"][IMAGE_KEY]["shape"][:2])
    return VLAProcessor(
        build_tokenizer(data.texts.values()),
        actions,
        norm,
        max_tokens,
        size,
        GOAL_POLICY_STATE
        if action_space == "goal"
        else VELOCITY_POLICY_STATE
        if state_velocity
        else POLICY_STATE,
        action_space=action_space,
    )


class Batcher:
    """Turns frame indices into model inputs and labels (instruction ids cached per task).

    Args:
        data: The frames.
        processor: Tokenizer, action bins and normalisation.
        chunk: Actions per regression target, H (``VLAConfig.action_chunk``): frame i's
            targets are the actions of frames i .. i + H - 1 of its episode
            (:func:`chunk_targets`).
    """

    def __init__(self, data: Tensors, processor: VLAProcessor, chunk: int = 1) -> None:
        self.data, self.processor = data, processor
        keys = sorted(data.texts)
        ids, mask = processor.encode_instructions([data.texts[k] for k in keys])
        row = {k: i for i, k in enumerate(keys)}
        lookup = np.array([row[int(t)] for t in data.instructions])
        self.ids, self.mask = ids[lookup], mask[lookup]  # (N, T)
        targets = data.targets(processor.action_space)
        labels = processor.action_labels(targets, data.refuse)
        labels[~data.labelled] = -100  # a deliberate miss: keypoint labels only
        self.labels = torch.from_numpy(labels)
        acts = processor.actions
        low, high = np.asarray(acts.low), np.asarray(acts.high)
        unit = np.clip((np.nan_to_num(targets) - low) / (high - low), 0.0, 1.0)
        values = (2 * unit - 1).astype(np.float32)  # (N, D)
        acting = ~data.refuse & data.labelled
        values, mask = chunk_targets(values, data.episode, acting, chunk, data.frame)
        self.action_values = torch.from_numpy(values)  # (N, H, D)
        self.action_mask = torch.from_numpy(mask)  # (N, H)

    def __call__(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """Inputs and labels (B, D) of frames ``idx`` (teacher forcing: D - 1 fed tokens),
        plus targets the model's ``forward`` does not take: ``action_values`` (B, H, D), the
        chunk of actions in [-1, 1] units between the tokenizer's percentiles (a regression
        head's targets), ``action_mask`` (B, H), True where that target exists, and, when the
        data has them, ``keypoint_labels`` (B, P, 2).

        ``input_ids`` and ``attention_mask`` are (B, T') with T' <= T: the instruction columns
        that are padding in every row of the batch (the leading ones, as instructions are
        left-padded) are dropped. The decoder's positions count only real tokens and its
        attention masks padding, so this changes no output beyond floating-point rounding; it
        only saves the decoder the padded positions (most instructions take 6-9 of T = 24).
        """
        d, p = self.data, self.processor
        labels = self.labels[idx]
        ids, mask = self.ids[idx], self.mask[idx]
        first = int(mask.any(0).to(torch.int8).argmax())  # first column some row uses
        ids, mask = ids[:, first:], mask[:, first:]
        fed = labels[:, :-1].clamp(min=0)  # ignored positions get a harmless id
        batch = {
            "pixel_values": p.preprocess_images(d.images[idx]),
            "input_ids": ids,
            "attention_mask": mask,
            "state": p.preprocess_states(d.states[idx]),
            "ee_position": torch.from_numpy(d.states[idx, :3].copy()),
            "action_input_ids": fed,
            "labels": labels,
            "action_values": self.action_values[idx],
            "action_mask": self.action_mask[idx],
        }
        if d.keypoints is not None:
            batch["keypoint_labels"] = torch.from_numpy(d.keypoints[idx])
        return batch


ARRIVAL_MIN_STEP = 0.002
"""m: the smallest sideways expert step that counts as still travelling (not a descent)."""

ARRIVAL_PHASES = ("both", "approach", "carry")
"""The arrivals ``TrainConfig.arrival_phase`` can weigh: all, those before the grasp (onto the
object) or those while carrying it (over the destination)."""

GRASP_FLAG = STATE_NAMES.index("grasped")
"""Entry of the env state (``Tensors.states``, 8 entries) that is 1 while an object is held."""


def arrival_frames(data: Tensors, radius: float, phase: str = "both") -> np.ndarray:
    """(N,) bool: the frames where the expert is about to arrive.

    A frame arrives when its action is a label (not a refusal, not a deliberate miss), the
    expert's displacement is mostly sideways (horizontal step >= 2 mm, more than its vertical
    one) and the end effector is within ``radius`` (m) of the expert's subgoal horizontally:
    the last steps before a descent onto the object or a release over the destination, the
    decision a memoryless policy makes from a few centimetres of image and metric offset.
    Such frames are rare in the demonstrations (a travel step is 1.5-4 cm), so
    ``TrainConfig.arrival_weight`` draws them more often.

    Args:
        data: A dataset with ``subgoals`` (N, 4) (``annotation.subgoal``).
        radius: Horizontal distance to the subgoal, m.
        phase: ``"both"``, ``"approach"`` (only frames whose state's grasp flag, entry 7, is
            clear: arriving over the object) or ``"carry"`` (only frames with it set:
            arriving over the destination with the object).

    Raises:
        DatasetError: The dataset has no subgoal annotation.
        ConfigError: ``phase`` is not one of :data:`ARRIVAL_PHASES`.
    """
    if phase not in ARRIVAL_PHASES:
        raise ConfigError(
            f"arrival phase must be one of {', '.join(ARRIVAL_PHASES)}, got {phase!r}"
        )
    if data.subgoals is None:
        raise DatasetError(
            "arrival_weight needs the expert's subgoals (annotation.subgoal); "
            "collect the data again with this version"
        )
    side = np.linalg.norm(data.actions[:, :2], axis=1)
    gap = np.linalg.norm(data.subgoals[:, :2] - data.states[:, :2], axis=1)
    sideways = (side >= ARRIVAL_MIN_STEP) & (side > np.abs(data.actions[:, 2]))
    with np.errstate(invalid="ignore"):  # NaN subgoals compare False
        near = gap <= radius
    arriving = data.labelled & ~data.refuse & sideways & near
    if phase == "both":
        return arriving
    grasped = data.states[:, GRASP_FLAG] > 0.5
    return arriving & (grasped if phase == "carry" else ~grasped)


GRIPPER_ACTION = 3
"""Entry of the expert's action (``Tensors.actions``) that commands the gripper: +1 close,
-1 open."""


def release_frames(data: Tensors) -> np.ndarray:
    """(N,) bool: the frames of each release, where the expert puts the object down.

    A frame releases when its action is a label (not a refusal, not a deliberate miss), the
    state's grasp flag is set (the object is held) and the expert either opens the gripper
    or steps mostly downward (a vertical step of at least 2 mm, larger than its sideways
    one): the descent over the destination and the opening at its end. The opening is one
    frame per placing episode; with the descent (5-8 frames, and the lowering toward a
    person's hand) they are about a tenth of the frames (564 of 5,362 in ``s-val-20``), so
    ``TrainConfig.release_weight`` draws them more often. A policy that has not learned
    them hovers over the destination holding the object until the time limit.
    """
    grasped = data.states[:, GRASP_FLAG] > 0.5
    opening = data.actions[:, GRIPPER_ACTION] < 0
    side = np.linalg.norm(data.actions[:, :2], axis=1)
    dz = data.actions[:, 2]
    descending = (dz <= -ARRIVAL_MIN_STEP) & (-dz > side)
    return data.labelled & ~data.refuse & grasped & (opening | descending)


def chunk_targets(
    values: np.ndarray,
    episode: np.ndarray,
    acting: np.ndarray,
    chunk: int,
    frame: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame action chunks for a regression head (ACT's training targets, Zhao et al.
    2023, section 3.1).

    Args:
        values: (N, D) each frame's action, frames of an episode contiguous and in order.
        episode: (N,) episode index of each frame.
        acting: (N,) True where the frame's action is a label (not a refusal, not a
            deliberate miss).
        chunk: H >= 1.
        frame: (N,) frame index within the episode, or None (no frame left out): row k of
            frame i exists only if frame i + k is k frames later in the episode, so a chunk
            does not run across frames left out (a skipped deliberate miss).

    Returns:
        (targets (N, H, D) float32: row k of frame i is frame i + k's action, zero where
        there is none; mask (N, H) bool: True where frame i + k is in frame i's episode, k
        frames later, and acting). Past an episode's end there is no target (ACT pads and
        masks the same way).
    """
    n, d = values.shape
    targets = np.zeros((n, chunk, d), np.float32)
    mask = np.zeros((n, chunk), bool)
    for k in range(chunk):
        if k >= n:
            break
        same = episode[k:] == episode[: n - k]  # (N - k,) frame i + k in frame i's episode
        if frame is not None:
            same &= frame[k:] - frame[: n - k] == k
        ok = same & acting[k:]
        targets[: n - k, k] = np.where(ok[:, None], values[k:], 0.0)
        mask[: n - k, k] = ok
    return targets, mask


def soft_action_targets(
    labels: torch.Tensor, vocab_size: int, n_bins: int, sigma_bins: float
) -> torch.Tensor:
    """Target distributions (B, K, V) of token labels (B, K), Gaussian over action bins.

    An action-bin label spreads its mass over neighbouring bins with a Gaussian of
    ``sigma_bins`` bins (the HL-Gauss target of Imani & White 2018, "Improving regression
    performance with distributional losses", section 3; Farebrother et al. 2024, "Stop
    regressing", section 3), so that near misses cost less than far ones; any other label
    (``<refuse>``) is one-hot; -100 rows are all zero. ``sigma_bins`` 0 gives one-hot targets.
    """
    b, k = labels.shape
    target = torch.zeros(b, k, vocab_size)
    valid = labels >= 0
    bin_ = labels - ACTION_TOKEN_OFFSET
    is_bin = valid & (bin_ >= 0) & (bin_ < n_bins)
    onehot = valid & ~is_bin
    target[onehot] = F.one_hot(labels[onehot], vocab_size).float()
    if is_bin.any():
        centres = bin_[is_bin].float()[:, None]  # (M, 1)
        grid = torch.arange(n_bins, dtype=torch.float32)[None]  # (1, n_bins)
        if sigma_bins > 0:
            w = torch.exp(-0.5 * ((grid - centres) / sigma_bins) ** 2)
        else:
            w = (grid == centres).float()
        rows = torch.zeros(len(centres), vocab_size)
        rows[:, ACTION_TOKEN_OFFSET : ACTION_TOKEN_OFFSET + n_bins] = w / w.sum(-1, keepdim=True)
        target[is_bin] = rows
    return target


def heatmap_loss(
    heatmap_logits: torch.Tensor,
    labels: torch.Tensor,
    image_size: tuple[int, int] | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of keypoint heatmaps against a Gaussian around each labelled point.

    The dense form of the keypoint loss: CLIPort (Shridhar et al. 2021, section 3.2) trains its
    language-conditioned heatmaps with a cross-entropy over pixels; a squared error on the
    spatial-softmax mean alone gives little gradient while a heatmap is still spread out.

    Args:
        heatmap_logits: (B, K, h, w) logits; the first P are scored.
        labels: (B, P, 2) keypoint labels (x, y) in [-1, 1] (first and last pixel centres).
        image_size: (H, W) pixels for pixel-accurate cell centres (models with
            ``keypoint_stride`` 2); ``None``: edge-cell centres at +-1 (the stride-4 grid).
        mask: (B, P) weights (1: scored, 0: left out, e.g. :func:`in_view`); None: all.

    Returns:
        Scalar mean over the scored B x P of -sum_cells q log softmax(logits), q a normalised
        Gaussian of one cell's standard deviation around the label.
    """
    p = labels.shape[1]
    h, w = heatmap_logits.shape[-2:]
    ph, pw = image_size if image_size is not None else (None, None)
    ys, xs = cell_centres(h, ph, labels), cell_centres(w, pw, labels)
    # distances in cells: one cell spans (centre of the last - first) / (cells - 1)
    dx = (xs[None, None, None, :] - labels[..., 0, None, None]) / (xs[1] - xs[0])  # (B,P,1,w)
    dy = (ys[None, None, :, None] - labels[..., 1, None, None]) / (ys[1] - ys[0])  # (B,P,h,1)
    q = (-0.5 * (dx**2 + dy**2)).flatten(2).softmax(-1)  # (B, P, h*w), no 0/0 far outside
    logp = heatmap_logits[:, :p].flatten(2).log_softmax(-1)
    ce = -(q * logp).sum(-1)  # (B, P)
    if mask is None:
        return ce.mean()
    return (ce * mask).sum() / mask.sum().clamp(min=1)


def in_view(labels: torch.Tensor) -> torch.Tensor:
    """(B, P) float mask of keypoint labels (B, P, 2) inside the image ([-1, 1] on both axes).

    A learner's rollout (DAgger) can knock an object out of the camera's view; its label then
    lies outside the image, where no heatmap cell or spatial-softmax mean can reach it."""
    return (labels.abs() <= 1.0).all(-1).to(labels.dtype)


def training_loss(
    model: VLAForActionPrediction,
    batch: dict[str, torch.Tensor],
    keypoint_weight: float,
    label_sigma: float = 0.0,
    heatmap_weight: float = 0.0,
    metric_label_noise_px: float = -1.0,
    rng: np.random.Generator | None = None,
    regression_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Action-token cross-entropy (against Gaussian soft targets when ``label_sigma`` > 0)
    plus the weighted auxiliary keypoint losses (squared error of the keypoints, and with
    ``heatmap_weight`` > 0 the heatmap cross-entropy of :func:`heatmap_loss`), over the labels
    inside the image (:func:`in_view`). With
    ``metric_label_noise_px`` >= 0 a model with metric keypoints builds its metric token from
    the keypoint labels plus Gaussian noise of that many pixels (teacher forcing), drawn from
    ``rng`` (the training sampler's, so that a resumed run repeats it; None: a fixed seed);
    < 0 from its own predictions. A model with a regression action head
    (``config.action_head="regression"``) adds ``regression_weight`` times the L1 error of its
    actions against ``batch["action_values"]`` (B, D) in [-1, 1] units, on the frames whose
    first label is an action (not a refusal, not a deliberate miss).

    Returns:
        (total loss, one-hot action-token cross-entropy, keypoint mean squared error or None
        when the batch has no keypoint labels).
    """
    inputs = {k: v for k, v in batch.items() if k not in TARGET_KEYS}
    target_kp = batch.get("keypoint_labels")
    if model.config.metric_keypoints and target_kp is not None and metric_label_noise_px >= 0:
        # Teacher forcing of the metric token: the labels, jittered by a pixel or so, so that
        # the decoder learns to trust it while the predicted keypoints are still poor.
        half_width = (model.config.image_size - 1) / 2
        draw = (rng if rng is not None else np.random.default_rng(0)).standard_normal
        noise = torch.from_numpy(draw(tuple(target_kp.shape)).astype(np.float32))
        source = target_kp.clamp(-1.0, 1.0)  # a point out of view: its image edge
        inputs["metric_source"] = source + noise * (metric_label_noise_px / half_width)
    out = model(**inputs)
    assert out.loss is not None and out.keypoints is not None
    labels = batch["labels"]
    valid = labels >= 0
    if not valid.any():  # only deliberate-miss frames: no action label in the batch
        out.loss = out.logits.sum() * 0.0
    loss = out.loss
    if label_sigma > 0 and valid.any():
        logits = out.logits[:, -labels.shape[1] :]  # bf16 under autocast: widen first
        logp = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)
        cfg = model.config
        target = soft_action_targets(labels, cfg.vocab_size, cfg.n_bins, label_sigma)
        loss = -(target * logp).sum(-1)[valid].mean()
    l1 = regression_l1(out.action_values, batch, labels)
    if l1 is not None:
        loss = loss + regression_weight * l1
    if target_kp is None or keypoint_weight == heatmap_weight == 0:
        return loss, out.loss, None
    seen = in_view(target_kp)  # (B, P): labels out of the image train no keypoint loss
    err = ((out.keypoints[:, : target_kp.shape[1]] - target_kp) ** 2).mean(-1)  # (B, P)
    mse = (err * seen).sum() / seen.sum().clamp(min=1)
    loss = loss + keypoint_weight * mse
    if heatmap_weight > 0:
        assert out.heatmap_logits is not None
        cfg = model.config
        size = (cfg.image_size, cfg.image_size) if cfg.keypoint_stride == 2 else None
        loss = loss + heatmap_weight * heatmap_loss(out.heatmap_logits, target_kp, size, seen)
    return loss, out.loss, mse


def regression_l1(
    values: torch.Tensor | None, batch: dict[str, torch.Tensor], labels: torch.Tensor
) -> torch.Tensor | None:
    """Mean L1 error of a regression action head's chunk ``values`` (B, H, D) against
    ``batch["action_values"]`` (B, H, D), both in [-1, 1] units, over the chunk rows
    ``batch["action_mask"]`` (B, H) marks (all when absent) of the frames whose first label
    (``labels`` (B, D)) is an action token (OpenVLA-OFT's L1 loss, Kim et al. 2025, section
    3); None without a head or such frames."""
    if values is None:
        return None
    acting = labels[:, 0] >= ACTION_TOKEN_OFFSET  # not <refuse>, not ignored (-100)
    mask = batch.get("action_mask")
    rows = acting[:, None] if mask is None else acting[:, None] & mask  # (B, H)
    if not rows.any():
        return None
    return (values - batch["action_values"]).abs()[rows].mean()


@torch.no_grad()
def evaluate_loss(
    model: VLAForActionPrediction, batcher: Batcher, batch_size: int = 256
) -> dict[str, float]:
    """Mean validation loss, action-token accuracy, first-token (refuse/act) accuracy and, when
    the data has keypoint labels, the keypoint mean squared error and the median error of the
    target keypoint on the first frames of non-refusal episodes (``val_first_target_px``, in
    pixels): where the policy thinks the named object is before it has moved. A model with a
    regression action head adds ``val_action_l1`` (:func:`regression_l1`, [-1, 1] units)."""
    model.eval()
    n = len(batcher.data.states)
    losses, correct, total, first_ok = [], 0, 0, 0
    kp_err: list[float] = []
    target_px: list[np.ndarray] = []
    l1_sum, l1_n = 0.0, 0
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        batch = batcher(idx)
        kp_labels = batch.pop("keypoint_labels", None)
        targets = {"action_values": batch.pop("action_values")}
        targets["action_mask"] = batch.pop("action_mask")
        out = model(**batch)
        l1 = regression_l1(out.action_values, targets, batch["labels"])
        if l1 is not None:
            acting = batch["labels"][:, 0] >= ACTION_TOKEN_OFFSET
            rows = int((acting[:, None] & targets["action_mask"]).sum())
            l1_sum, l1_n = l1_sum + float(l1) * rows, l1_n + rows
        if kp_labels is not None and out.keypoints is not None:
            kp = out.keypoints[:, : kp_labels.shape[1]]
            kp_err.append(float(((kp - kp_labels) ** 2).mean()) * len(idx))
            half_width = (batch["pixel_values"].shape[-1] - 1) / 2
            dist = (kp[:, 0] - kp_labels[:, 0]).norm(dim=-1) * half_width  # (b,) px
            first = batcher.data.first[idx] & ~batcher.data.refuse[idx]
            target_px.append(dist.numpy()[first])
        losses.append(float(out.loss) * len(idx))
        k = batch["labels"].shape[1]
        pred = out.logits[:, -k:].argmax(-1)
        valid = batch["labels"] != -100
        correct += int((pred == batch["labels"])[valid].sum())
        total += int(valid.sum())
        is_ref = batch["labels"][:, 0] == REFUSE_ID
        first_ok += int(((pred[:, 0] == REFUSE_ID) == is_ref).sum())
    model.train()
    metrics = {
        "val_loss": sum(losses) / n,
        "val_token_acc": correct / max(total, 1),
        "val_refuse_acc": first_ok / n,
    }
    if l1_n:
        metrics["val_action_l1"] = l1_sum / l1_n
    if kp_err:
        metrics["val_keypoint_mse"] = sum(kp_err) / n
        px = np.concatenate(target_px)
        if len(px):
            metrics["val_first_target_px"] = float(np.median(px))
    return metrics


def _split(data: Tensors, val: Tensors | None) -> tuple[Tensors, Tensors]:
    """Training and validation frames; validation keeps only frames with action labels.

    Without ``val``, every 20th episode is held out; if none of those has an action label
    (fewer than 20 episodes, or only keypoint-only frames among them), the last episode
    with action labels.

    Raises:
        DatasetError: No frame has an action label.
    """
    if val is not None:
        return data, val
    if not data.labelled.any():
        raise DatasetError("no frame has an action label to train or validate on")
    held = data.episode % 20 == 19
    if not (held & data.labelled).any():
        held = data.episode == data.episode[data.labelled].max()
    return data.subset(~held), data.subset(held & data.labelled)


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train a VLA and write it to ``config.out``; returns the training log.

    Raises:
        ConfigError: Bad settings. DatasetError: Bad dataset folder.
        RunFolderError: ``out`` exists without ``resume``, ``resume`` finds no run there, or
            the run there was started with other settings (see :data:`RESUMABLE_CHANGES`).
    """
    config.check()
    out, last = Path(config.out), Path(config.out) / LAST
    if out.exists() and any(out.iterdir()) and not resume:
        raise RunFolderError(f"{out} already exists; pass --resume to continue training")
    if resume and not (last / STATE_FILE).is_file():
        raise RunFolderError(f"nothing to resume in {out} (no {LAST}/{STATE_FILE})")
    state = _read_state(last) if resume else {}
    if resume:
        _check_resume_config(last, state, config)
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    ds = load_dataset(config.data)
    extra = [load_dataset(p) for p in config.extra_data]  # metadata first: fail fast
    init = None
    if config.init_from is not None and not resume:
        init = VLAPolicy.from_pretrained(config.init_from)
        _check_image_size(init, ds, config.init_from)
        own = init.model.config.action_chunk
        if config.action_chunk not in (1, own):  # 1, the default: keep the checkpoint's
            raise ConfigError(
                f"action_chunk {config.action_chunk}: {config.init_from} predicts chunks of "
                f"{own}, and a fine-tune keeps its head; leave --action-chunk out"
            )
    data = load_tensors(ds, config.miss_frames)
    if extra:
        parts = [load_tensors(e, config.miss_frames) for e in extra]
        if config.extra_frames == "keypoints":
            parts = [keypoints_only(t, str(e.root)) for t, e in zip(parts, extra, strict=True)]
        data = concat_tensors([data, *parts])
    val = load_tensors(load_dataset(config.val_data)) if config.val_data else None
    data, val = _split(data, val)
    model, processor = _model(config, ds, data, last if resume else None, init)
    chunk = model.config.action_chunk
    train_b, val_b = Batcher(data, processor, chunk), Batcher(val, processor, chunk)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, config.warmup_steps, config.steps)
    gen = np.random.default_rng(config.seed)
    weights = np.where(data.first, config.first_frame_weight, 1.0)
    if config.arrival_weight != 1.0:
        arriving = arrival_frames(data, config.arrival_radius, config.arrival_phase)
        weights = np.where(arriving, np.maximum(weights, config.arrival_weight), weights)
    if config.release_weight != 1.0:
        releasing = release_frames(data)
        weights = np.where(releasing, np.maximum(weights, config.release_weight), weights)
    weights = weights / weights.sum()
    step, t_spent, history = _restore(state, opt, sched, gen) if resume else (0, 0.0, [])
    bar = tqdm(total=config.steps, initial=step, desc="train", unit="step", disable=not progress)
    t0 = time.perf_counter() - t_spent
    if step == 0:
        history.append({"step": 0, **evaluate_loss(model, val_b), "seconds": 0.0})
    while step < config.steps:
        idx = gen.choice(len(weights), size=config.batch_size, p=weights)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.precision == "bf16"):
            loss, token_ce, _ = training_loss(
                model,
                train_b(idx),
                config.keypoint_weight,
                config.label_sigma,
                config.heatmap_weight,
                config.metric_label_noise_px,
                gen,
                config.regression_weight,
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        bar.update(1)
        if step % config.eval_every == 0 or step == config.steps:
            metrics = {
                "step": step,
                "train_loss": float(loss.detach()),
                "train_token_ce": float(token_ce.detach()),
                **evaluate_loss(model, val_b),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            history.append(metrics)
            bar.set_postfix(
                loss=f"{metrics['val_loss']:.3f}", acc=f"{metrics['val_token_acc']:.3f}"
            )
            _save_last(
                last, model, processor, opt, sched, gen, step, metrics["seconds"], history, config
            )
    bar.close()
    VLAPolicy(model, processor).save_pretrained(out)
    result = {
        "config": asdict(config),
        "history": history,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_frames": len(data.states),
        "val_frames": len(val.states),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "training_log.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def _check_image_size(policy: VLAPolicy, ds: DemoDataset, name: str) -> None:
    """Raise :class:`ConfigError` if checkpoint ``name`` reads other images than ``ds`` holds."""
    size = tuple(ds.info["features"][IMAGE_KEY]["shape"][:2])
    if policy.processor.image_size != size:
        raise ConfigError(
            f"{name} reads {policy.processor.image_size[0]}x{policy.processor.image_size[1]} "
            f"images, the dataset holds {size[0]}x{size[1]}"
        )


def _model(
    config: TrainConfig,
    ds: DemoDataset,
    data: Tensors,
    last: Path | None,
    init: VLAPolicy | None = None,
) -> tuple[VLAForActionPrediction, VLAProcessor]:
    """The model and processor: loaded from ``last`` when resuming, ``init`` when
    fine-tuning (``TrainConfig.init_from``), else built fresh."""
    if last is not None:
        policy = VLAPolicy.from_pretrained(last)
        return policy.model.train(), policy.processor
    if init is not None:
        if config.keypoint_window:  # a readout, not architecture: the fine-tune may change it
            init.model.config.keypoint_window = config.keypoint_window
        if config.regression_metric_inputs and not init.model.config.regression_metric_inputs:
            add_regression_metric_inputs(init.model)
        return init.model.train(), init.processor
    processor = build_processor(
        ds, data, action_space=config.action_space, state_velocity=config.state_velocity
    )
    model = VLAForActionPrediction(
        VLAConfig(
            action_dim=processor.actions.dims,
            vocab_size=processor.vocab_size,
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            intermediate_size=config.intermediate_size,
            image_size=processor.image_size[0],
            image_tokens_side=config.image_tokens_side,
            state_dim=processor.state_dim,
            max_instruction_tokens=processor.max_instruction_tokens,
            grounded_keypoints=config.grounded_keypoints,
            metric_keypoints=config.metric_keypoints,
            metric_upper_plane_height=config.metric_upper_plane_height,
            keypoint_stride=config.keypoint_stride,
            keypoint_window=config.keypoint_window,
            action_head=config.action_head,
            action_decoding="regression" if config.action_head == "regression" else "argmax",
            action_chunk=config.action_chunk,
            regression_metric_inputs=config.regression_metric_inputs,
            temporal_ensemble_coeff=CHUNK_ENSEMBLE_COEFF if config.action_chunk > 1 else None,
            camera_unprojection=scene_camera(processor.image_size)
            if config.metric_keypoints
            else None,
        )
    )
    return model.train(), processor


def scene_camera(image_size: tuple[int, int]) -> list[float]:
    """The demonstrations' camera calibration for (H, W) pixel images: the inverse
    view-projection matrix (``PyBulletSim.unprojection`` of the scene camera), 16 floats
    row-major, as ``VLAConfig.camera_unprojection`` stores it."""
    from robot_refusal.envs.env import CAMERA_EYE, CAMERA_TARGET
    from robot_refusal.envs.sim import PyBulletSim

    h, w = image_size
    return PyBulletSim.unprojection(w, h, CAMERA_EYE, CAMERA_TARGET).reshape(-1).tolist()


RESUMABLE_CHANGES = ("threads", "eval_every")
"""TrainConfig fields a resumed run may change; any other difference is refused."""


def _read_state(last: Path) -> dict[str, Any]:
    """Read ``last/trainer_state.pt`` (tensors and strings only: ``weights_only=True``).

    Raises:
        RunFolderError: The file is truncated, corrupt or not a trainer state.
    """
    path = last / STATE_FILE
    try:
        state = torch.load(path, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise RunFolderError(
            f"{path} is unreadable ({first_line(e)}); train into a new --out"
        ) from e
    if not isinstance(state, dict) or not {"optimizer", "step", "rng"} <= set(state):
        raise RunFolderError(f"{path} is not a robot-refusal trainer state")
    return state


def _check_resume_config(last: Path, state: dict[str, Any], config: TrainConfig) -> None:
    """Raise :class:`RunFolderError` if ``config`` differs from the settings the run in
    ``last`` was started with (``state``: its trainer state; other than
    :data:`RESUMABLE_CHANGES`); runs saved before the settings were recorded are not checked,
    and a setting added since a run was saved counts as its default there."""
    if "config" not in state:
        return
    defaults = json.loads(json.dumps(asdict(TrainConfig(data="", out=""))))
    old = {**defaults, **json.loads(state["config"])}
    new = json.loads(json.dumps(asdict(config)))
    diff = sorted(
        k for k in set(old) | set(new) if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k)
    )
    if diff:
        was = ", ".join(f"{k}={old.get(k)!r} (now {new.get(k)!r})" for k in diff)
        raise RunFolderError(
            f"cannot resume {last.parent}: it was started with {was}; resume with the same "
            "settings, or train into a new --out"
        )


def _restore(
    state: dict[str, Any], opt: torch.optim.Optimizer, sched: Any, gen: np.random.Generator
) -> tuple[int, float, list[dict[str, float]]]:
    """Load optimizer, schedule and sampler state from a trainer ``state``; return (step,
    seconds so far, history)."""
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    gen.bit_generator.state = json.loads(state["rng"])
    return int(state["step"]), float(state["seconds"]), json.loads(state["history"])


def _save_last(
    last: Path,
    model: VLAForActionPrediction,
    processor: VLAProcessor,
    opt: torch.optim.Optimizer,
    sched: Any,
    gen: np.random.Generator,
    step: int,
    seconds: float,
    history: list[dict[str, float]],
    config: TrainConfig,
) -> None:
    """Write the resumable checkpoint (weights first, then the state file atomically), with
    the run's settings so that a resume can refuse different ones."""
    VLAPolicy(model, processor).save_pretrained(last)
    model.train()  # the policy wrapper switched it to eval mode
    tmp = last / (STATE_FILE + ".tmp")
    torch.save(
        {
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rng": json.dumps(gen.bit_generator.state),
            "step": step,
            "seconds": seconds,
            "history": json.dumps(history),
            "config": json.dumps(asdict(config)),
        },
        tmp,
    )
    tmp.replace(last / STATE_FILE)
