"""Configuration of the small VLA (a ``transformers.PretrainedConfig``)."""

from __future__ import annotations

import math
from typing import Any

from transformers import LlamaConfig, PretrainedConfig

from robot_refusal.errors import ConfigError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[SEP]", "[ACT]", "<refuse>")
"""Special tokens at ids 0..4: padding, unknown word, separator, action prompt, refusal."""
PAD_ID, UNK_ID, SEP_ID, ACT_ID, REFUSE_ID = range(5)
ACTION_TOKEN_OFFSET = len(SPECIAL_TOKENS)
"""Id of action bin 0; bins occupy ``ACTION_TOKEN_OFFSET .. ACTION_TOKEN_OFFSET + n_bins - 1``."""
METRIC_PLANE_HEIGHT = 0.02  # m: the default table plane of the metric keypoint token
MAX_UPPER_PLANE_HEIGHT = 0.5  # m: well below the scene camera


def check_upper_plane_height(height: float, name: str = "metric_upper_plane_height") -> None:
    """Raise :class:`ConfigError` unless ``height`` (m) is a usable second cut of the metric
    token's rays: in (0, 0.5] m and not the default table plane (``METRIC_PLANE_HEIGHT``).
    ``name`` is the setting the message names."""
    if not (0 < height <= MAX_UPPER_PLANE_HEIGHT and height != METRIC_PLANE_HEIGHT):
        raise ConfigError(
            f"{name} must be in (0, {MAX_UPPER_PLANE_HEIGHT}] m and differ from the table "
            f"plane ({METRIC_PLANE_HEIGHT} m), got {height}"
        )


def check_regression_metric_inputs(action_head: str, metric_keypoints: int) -> None:
    """Raise :class:`ConfigError` unless a model with ``action_head`` and
    ``metric_keypoints`` can feed the metric token's inputs to its regression head
    (``VLAConfig.regression_metric_inputs``): the regression head and metric keypoints."""
    if not metric_keypoints:
        raise ConfigError("regression_metric_inputs needs metric_keypoints > 0")
    if action_head != "regression":
        raise ConfigError(
            f"regression_metric_inputs needs action_head 'regression', got {action_head!r}"
        )


MAX_KEYPOINT_WINDOW = 8  # cells: a 17x17 window already covers most of a 32x32 heatmap


def check_window(radius: int, high: int, unit: str, name: str) -> None:
    """Raise :class:`ConfigError` unless ``radius`` is an integer in [0, ``high``] (``unit``
    on each side of a maximum). ``name`` is the setting the message names."""
    if isinstance(radius, bool) or not isinstance(radius, int):
        raise ConfigError(f"{name} must be an integer number of {unit}, got {radius!r}")
    if not 0 <= radius <= high:
        raise ConfigError(f"{name} must be in [0, {high}] {unit}, got {radius}")


def check_keypoint_window(radius: int, name: str = "keypoint_window") -> None:
    """Raise :class:`ConfigError` unless ``radius`` is an integer in [0, 8] (heatmap cells on
    each side of the maximum; 0: the expectation over the whole map). ``name`` is the setting
    the message names."""
    check_window(radius, MAX_KEYPOINT_WINDOW, "cells", name)


MAX_KEYPOINT_MEMORY = 32.0  # px: half a 64x64 image; a larger radius holds everything forever


def check_keypoint_memory(radius_px: float, num_keypoints: int | None = None) -> None:
    """Raise :class:`ConfigError` unless ``radius_px`` is a finite number in [0, 32] pixels
    (0: no memory) and, when positive and ``num_keypoints`` is given, the model has the four
    labelled keypoints the memory reads."""
    if isinstance(radius_px, bool) or not isinstance(radius_px, int | float):
        raise ConfigError(f"keypoint_memory must be a number of pixels, got {radius_px!r}")
    if not math.isfinite(radius_px) or not 0 <= radius_px <= MAX_KEYPOINT_MEMORY:
        raise ConfigError(
            f"keypoint_memory must be in [0, {MAX_KEYPOINT_MEMORY:g}] px, got {radius_px!r}"
        )
    if radius_px > 0 and num_keypoints is not None and num_keypoints < 4:
        raise ConfigError(
            f"keypoint_memory needs a model with >= 4 keypoints (target, destination, hand, "
            f"gripper), this one has {num_keypoints}"
        )


ACTION_DECODINGS = ("argmax", "mean", "local_mean", "regression")
"""How an action position is read: the argmax bin (greedy decoding, the default), the mean
of the bin distribution, or the mean over the bins within ``action_window`` of the argmax
(``VLAForActionPrediction.predict_action_tokens``); ``"regression"`` reads all of them at
once from the continuous action head instead (a model with ``action_head="regression"``)."""
ACTION_HEADS = ("tokens", "regression")
"""What a model predicts actions with: the language-model head over action bins only
(``"tokens"``), or that plus a continuous regression head on the ACT position (OpenVLA-OFT's
parallel decoding with an L1 loss; Kim et al. 2025, arXiv:2502.19645, section 3)."""
MAX_ACTION_WINDOW = 255  # bins: a window this wide is the whole distribution


def check_action_decoding(decoding: str, name: str = "action_decoding") -> None:
    """Raise :class:`ConfigError` unless ``decoding`` is one of :data:`ACTION_DECODINGS`.
    ``name`` is the setting the message names."""
    if decoding not in ACTION_DECODINGS:
        raise ConfigError(f"{name} must be one of {ACTION_DECODINGS}, got {decoding!r}")


def check_decoding_for_head(decoding: str, head: str) -> None:
    """Raise :class:`ConfigError` if ``decoding`` (one of :data:`ACTION_DECODINGS`) needs a
    head the model lacks: ``"regression"`` needs ``action_head="regression"``."""
    if decoding == "regression" and head != "regression":
        raise ConfigError(
            "action_decoding 'regression' needs a model trained with a regression action head "
            f"(action_head='regression'); this one has action_head={head!r}"
        )


MAX_ACTION_CHUNK = 64
"""Largest ``action_chunk`` (6.4 s of actions at the env's 10 Hz)."""


def check_action_chunking(
    chunk: int,
    n_action_steps: int,
    ensemble_coeff: float | None,
    head: str,
) -> None:
    """Raise :class:`ConfigError` unless the chunk settings fit together (see
    :class:`VLAConfig`): ``chunk`` in [1, :data:`MAX_ACTION_CHUNK`], > 1 only with the
    regression head; ``n_action_steps`` in [1, ``chunk``];
    ``ensemble_coeff`` None or finite, and only with ``n_action_steps`` 1 (LeRobot's
    ACT refuses the same mix: an ensemble needs a new chunk at every step)."""
    if isinstance(chunk, bool) or not isinstance(chunk, int) or not 1 <= chunk <= MAX_ACTION_CHUNK:
        raise ConfigError(f"action_chunk must be an int in [1, {MAX_ACTION_CHUNK}], got {chunk!r}")
    if chunk > 1 and head != "regression":
        raise ConfigError(
            f"action_chunk {chunk} needs the regression action head (this one: "
            f"action_head={head!r}); the token head gives one action per call"
        )
    if (
        isinstance(n_action_steps, bool)
        or not isinstance(n_action_steps, int)
        or not 1 <= n_action_steps <= chunk
    ):
        raise ConfigError(
            f"n_action_steps must be an int in [1, action_chunk={chunk}], got {n_action_steps!r}"
        )
    if ensemble_coeff is not None:
        if not math.isfinite(ensemble_coeff):
            raise ConfigError(f"temporal_ensemble_coeff must be finite, got {ensemble_coeff!r}")
        if n_action_steps != 1:
            raise ConfigError(
                "temporal_ensemble_coeff needs n_action_steps 1 (a new chunk at every step), "
                f"got n_action_steps {n_action_steps}"
            )


CHUNK_EXECUTIONS = ("ensemble", "open-loop", "newest")
"""How a chunked checkpoint runs its chunks (:func:`parse_chunk_execution`)."""
DEFAULT_ENSEMBLE_COEFF = 0.01
"""ACT's temporal-ensemble coefficient (Zhao et al. 2023, section 3.3)."""


def parse_chunk_execution(spec: str, chunk: int | None = None) -> tuple[int, float | None]:
    """A chunk execution ``spec`` -> (``n_action_steps``, ``temporal_ensemble_coeff``).

    ``"ensemble"`` or ``"ensemble:C"``: a new chunk at every step, ACT's temporal ensemble
    with coefficient C (default 0.01); ``"open-loop"`` or ``"open-loop:N"``: the model is
    called every N steps (default: the whole chunk, ``chunk``) and the chunk's first N
    actions run open loop; ``"newest"``: a new chunk at every step, its first action alone.

    Args:
        spec: The spec.
        chunk: The checkpoint's ``action_chunk``, the largest N (None: N up to
            :data:`MAX_ACTION_CHUNK`, and a bare ``"open-loop"`` stands for N = 1).

    Raises:
        ConfigError: An unknown or malformed spec (the message names it), N outside
            [1, ``chunk``], or a non-finite C.
    """
    name, sep, arg = str(spec).partition(":")
    usage = "ensemble[:COEFF], open-loop[:STEPS] or newest"
    if name not in CHUNK_EXECUTIONS or (sep and (name == "newest" or not arg)):
        raise ConfigError(f"chunk execution must be {usage}, got {spec!r}")
    limit = chunk or MAX_ACTION_CHUNK
    coeff: float | None = None
    steps = 1
    if name == "ensemble":
        try:
            coeff = float(arg) if arg else DEFAULT_ENSEMBLE_COEFF
        except ValueError:
            raise ConfigError(f"chunk execution {spec!r}: COEFF must be a number") from None
        if not math.isfinite(coeff):
            raise ConfigError(f"chunk execution {spec!r}: COEFF must be finite")
    elif name == "open-loop":
        steps = chunk or 1
        if arg:
            if not arg.isdigit() or not 1 <= int(arg) <= limit:
                raise ConfigError(
                    f"chunk execution {spec!r}: STEPS must be a whole number in [1, {limit}]"
                    + (" (the checkpoint's action_chunk)" if chunk else "")
                )
            steps = int(arg)
    return steps, coeff


class VLAConfig(PretrainedConfig):
    """Configuration of :class:`~robot_refusal.policies.modeling_vla.VLAForActionPrediction`.

    Input template (one sequence per observation; DESIGN.md section 6)::

        [image tokens] [instruction tokens, left-padded] [SEP] [state token] [ACT] -> a1 a2 a3 a4

    The first generated token is ``<refuse>`` or the first action token; the other action
    tokens follow autoregressively.

    Args:
        vocab_size: Words + special tokens + action bins.
        hidden_size: Decoder width d_model.
        num_hidden_layers: Decoder blocks L.
        num_attention_heads: Attention heads.
        intermediate_size: MLP width.
        image_size: Input image side (pixels).
        vision_channels: Channels of the three stride-2 conv layers.
        image_tokens_side: Pooled feature tokens per side (adaptive pooling); the image gives
            side**2 of them plus one keypoint token.
        num_keypoints: Spatial-softmax keypoints (heatmaps) of the vision encoder.
        film_dim: Width of the instruction embedding that conditions the encoder (FiLM).
        state_dim: Proprioceptive state size (8).
        action_dim: Action tokens per step (4: delta xyz, gripper).
        n_bins: Bins per action dimension.
        max_instruction_tokens: Instruction tokens kept (longer ones are cut).
        grounded_keypoints: How many of the leading keypoints are grounded in the instruction
            word by word (0: none, all heatmaps come from a 1x1 conv over the FiLM features).
            Keypoint r's heatmap is the dot product of every feature-map cell with a phrase
            vector that attends over the instruction's words with a learned query per
            keypoint (language-conditioned heatmaps as in CLIPort, Shridhar et al. 2021,
            section 3.2); with keypoint labels ordered target, destination, this lets the
            encoder find the named object instead of averaging all words into one FiLM
            condition.
        metric_keypoints: How many of the leading keypoints are also given to the decoder in
            metres: each keypoint's camera ray is cut with the horizontal plane at
            ``metric_plane_height`` and the (x, y) points, with their offsets from the
            end effector (the processor's ``ee_position``) and its height, enter as one more
            image token (``VLAForActionPrediction.metric_features``). 0: none (the shipped
            checkpoints).
        keypoint_stride: Image pixels per heatmap cell: 4 (the shipped checkpoints: heatmaps
            from the last feature map, H/4 x W/4) or 2 (a finer head at H/2 x W/2 on the first
            conv layer's features fused with the upsampled last ones, as a feature pyramid's
            top-down path, Lin et al. 2017; one 64-pixel cell is then about 4 cm of table
            instead of 8).
        camera_unprojection: The camera's inverse view-projection matrix, 16 floats row-major
            (:meth:`robot_refusal.envs.sim.PyBulletSim.unprojection`); required when
            ``metric_keypoints`` > 0. A fixed calibrated camera, as a real cell has.
        metric_plane_height: Height (m) of the plane the rays are cut with.
        metric_upper_plane_height: Height (m) of a second plane every ray is also cut with,
            or None (one cut). Two cuts carry the whole ray: the point at any height h is
            ``p0 + t (p1 - p0)`` with ``t = (h - h0) / (h1 - h0)``, linear in the two cuts, so
            the decoder can place points that are not on the table (the handover point 12 cm
            up, a bottle's grasp point 15 cm up) without undoing a perspective error.
        keypoint_window: How keypoints are read out of their heatmaps: 0 (the shipped
            checkpoints) takes the expectation over the whole map (spatial softmax); r > 0
            the soft-argmax over the (2r+1) x (2r+1) cells around the map's maximum
            (``modeling_vla.local_soft_argmax``), which does not fall between two modes. The
            weights do not depend on it, so a trained checkpoint can be read out either way.
        action_decoding: How action tokens are read at run time when the caller does not
            say: ``"argmax"`` (greedy, as trained) or ``"mean"`` (each action position as
            the mean of its bin distribution) or ``"local_mean"`` (the mean over the bins
            within ``action_window`` of the argmax: the argmax's mode, read to a fraction of
            a bin). Also independent of the weights.
        action_window: Half-width in bins of the ``"local_mean"`` window, in [0, 255] (0:
            the argmax; 255: the whole distribution's mean).
        action_head: ``"tokens"`` (the shipped checkpoints) or ``"regression"``: an MLP on
            the final hidden state of the ACT position that gives all ``action_dim`` actions
            at once, each in [-1, 1] between the action tokenizer's 1st and 99th percentiles
            (read with ``action_decoding="regression"``). The refuse-or-act choice stays the
            language-model head's first token either way, and the token head is trained too.
        action_chunk: Actions the regression head predicts per call, H >= 1: the current one
            and the next H - 1 (ACT's action chunking, Zhao et al. 2023, section 3.1;
            OpenVLA-OFT, Kim et al. 2025, section 3). H > 1 needs ``action_head="regression"``;
            a token reading of such a checkpoint (``action_decoding`` other than
            ``"regression"``) gives one action per call, and the chunk settings then change
            nothing.
        regression_metric_inputs: With ``action_head="regression"`` and
            ``metric_keypoints``, the regression head also reads the metric keypoint token's
            inputs (``VLAForActionPrediction.metric_features``, the keypoints' table-plane
            points and their offsets from the end effector), concatenated with the ACT
            position's final hidden state: a skip connection around the decoder, so the
            few-centimetre offsets that decide a grasp reach the head unmixed (the privileged
            imitation ceiling, an MLP on those inputs, reaches 92-98%; README, "Where the
            decoder loses its points"). Measured in a fine-tune: no gain (README, "Premature
            arrivals"). False (every checkpoint before 2026-12-07): the hidden state only.
            The refuse-or-act choice stays the decoder's first token.
        n_action_steps: How many actions of each chunk run before the model is called again,
            in [1, ``action_chunk``] (LeRobot's ``n_action_steps``): 1 calls it at every step;
            n > 1 runs the first n actions open loop.
        temporal_ensemble_coeff: With ``n_action_steps`` 1 and ``action_chunk`` > 1, the
            action run at step t is the weighted mean of every stored chunk's prediction for
            t, weights ``exp(-coeff * i)`` with i = 0 the oldest chunk (ACT's temporal
            ensembling, section 3.3; the paper uses 0.01): > 0 weighs the older predictions
            more, < 0 the newer; None: the newest chunk's first action alone. Like
            ``action_decoding``, neither execution setting depends on the weights.
        rms_norm_eps, rope_theta: Passed to the Llama decoder.

    Raises:
        ConfigError: ``grounded_keypoints`` or ``metric_keypoints`` outside
            ``[0, num_keypoints]``; ``keypoint_stride`` not 2 or 4; ``metric_keypoints``
            without a 16-float camera matrix; ``metric_upper_plane_height`` equal to
            ``metric_plane_height``; ``keypoint_window`` outside [0, 8];
            ``keypoint_memory`` outside [0, 32] or with fewer than 4 keypoints; an unknown
            ``action_decoding``; ``action_window`` outside [0, 255]; an unknown
            ``action_head``, or ``action_decoding="regression"`` without that head; an
            inconsistent chunk (:func:`check_action_chunking`);
            ``regression_metric_inputs`` without the regression head or metric keypoints.
    """

    model_type = "robot_refusal_vla"

    def __init__(
        self,
        vocab_size: int = 512,
        hidden_size: int = 128,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        intermediate_size: int = 384,
        image_size: int = 64,
        vision_channels: tuple[int, int, int] | list[int] = (32, 64, 96),
        image_tokens_side: int = 4,
        num_keypoints: int = 16,
        film_dim: int = 64,
        state_dim: int = 8,
        action_dim: int = 4,
        n_bins: int = 256,
        max_instruction_tokens: int = 24,
        grounded_keypoints: int = 0,
        metric_keypoints: int = 0,
        keypoint_stride: int = 4,
        camera_unprojection: list[float] | None = None,
        metric_plane_height: float = METRIC_PLANE_HEIGHT,
        metric_upper_plane_height: float | None = None,
        keypoint_window: int = 0,
        keypoint_memory: float = 0.0,
        action_decoding: str = "argmax",
        action_window: int = 8,
        action_head: str = "tokens",
        action_chunk: int = 1,
        regression_metric_inputs: bool = False,
        n_action_steps: int = 1,
        temporal_ensemble_coeff: float | None = None,
        rms_norm_eps: float = 1e-6,
        rope_theta: float = 10000.0,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.image_size = image_size
        self.vision_channels = list(vision_channels)
        self.image_tokens_side = image_tokens_side
        self.num_keypoints = num_keypoints
        self.film_dim = film_dim
        self.state_dim = state_dim
        self.action_dim = action_dim
        self.n_bins = n_bins
        self.max_instruction_tokens = max_instruction_tokens
        for name, value in (
            ("grounded_keypoints", grounded_keypoints),
            ("metric_keypoints", metric_keypoints),
        ):
            if not 0 <= value <= num_keypoints:
                raise ConfigError(
                    f"{name} must be in [0, num_keypoints={num_keypoints}], got {value}"
                )
        self.grounded_keypoints = grounded_keypoints
        if keypoint_stride not in (2, 4):
            raise ConfigError(f"keypoint_stride must be 2 or 4, got {keypoint_stride}")
        self.keypoint_stride = keypoint_stride
        if metric_keypoints and (camera_unprojection is None or len(camera_unprojection) != 16):
            raise ConfigError(
                "metric_keypoints needs camera_unprojection: the camera's inverse "
                "view-projection matrix as 16 floats (PyBulletSim.unprojection)"
            )
        self.metric_keypoints = metric_keypoints
        self.camera_unprojection = (
            None if camera_unprojection is None else [float(v) for v in camera_unprojection]
        )
        self.metric_plane_height = metric_plane_height
        if metric_upper_plane_height is not None and metric_upper_plane_height == (
            metric_plane_height
        ):
            raise ConfigError(
                "metric_upper_plane_height must differ from metric_plane_height "
                f"({metric_plane_height} m): two cuts of a ray at one height carry one point"
            )
        self.metric_upper_plane_height = metric_upper_plane_height
        check_keypoint_window(keypoint_window)
        self.keypoint_window = int(keypoint_window)
        check_keypoint_memory(keypoint_memory, num_keypoints)
        self.keypoint_memory = float(keypoint_memory)
        check_action_decoding(action_decoding)
        self.action_decoding = action_decoding
        check_window(action_window, MAX_ACTION_WINDOW, "bins", "action_window")
        self.action_window = action_window
        if action_head not in ACTION_HEADS:
            raise ConfigError(f"action_head must be one of {ACTION_HEADS}, got {action_head!r}")
        self.action_head = action_head
        check_decoding_for_head(action_decoding, action_head)
        check_action_chunking(action_chunk, n_action_steps, temporal_ensemble_coeff, action_head)
        self.action_chunk = int(action_chunk)
        if regression_metric_inputs:
            check_regression_metric_inputs(action_head, metric_keypoints)
        self.regression_metric_inputs = bool(regression_metric_inputs)
        self.n_action_steps = int(n_action_steps)
        self.temporal_ensemble_coeff = (
            None if temporal_ensemble_coeff is None else float(temporal_ensemble_coeff)
        )
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        kwargs.setdefault("tie_word_embeddings", False)
        kwargs.setdefault("pad_token_id", PAD_ID)
        super().__init__(**kwargs)

    @property
    def num_image_tokens(self) -> int:
        """Image tokens per observation: pooled feature tokens, the keypoint token and, with
        ``metric_keypoints``, the metric keypoint token."""
        return self.image_tokens_side**2 + 1 + (1 if self.metric_keypoints else 0)

    @property
    def prefix_length(self) -> int:
        """Tokens before the first generated one: image + instruction + SEP + state + ACT."""
        return self.num_image_tokens + self.max_instruction_tokens + 3

    def decoder_config(self) -> LlamaConfig:
        """The stock ``LlamaConfig`` of the decoder (no embedding table of its own is used)."""
        return LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_attention_heads,
            max_position_embeddings=self.prefix_length + self.action_dim + 8,
            rms_norm_eps=self.rms_norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            pad_token_id=PAD_ID,
            tie_word_embeddings=False,
        )
