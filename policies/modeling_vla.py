"""The small VLA: an instruction-conditioned (FiLM) conv vision encoder -> projectors -> image
tokens (pooled feature tokens and one spatial-softmax keypoint token); state projector -> state
token; a stock ``transformers.LlamaModel`` decoder; a language-model head over words, special
tokens, 256 action-bin tokens and ``<refuse>``.

Residual-stream writers (for directions and weight orthogonalization): the decoder's token
embedding ``language_model.embed_tokens``, ``vision_projector``, ``keypoint_projector.linear_2``,
``state_projector.linear_2`` (``metric_projector.linear_2`` when the config has metric
keypoints), and in every block ``self_attn.o_proj`` and ``mlp.down_proj``.
The head ``lm_head`` is not tied.

With ``config.grounded_keypoints = R > 0`` the first R keypoint heatmaps are grounded in the
instruction word by word (CLIPort-style language-conditioned heatmaps, Shridhar et al. 2021,
section 3.2): a learned query per keypoint attends over the instruction's word embeddings and
the attended phrase vector is correlated with every cell of the feature map. The auxiliary
keypoint loss supervises them with the target and destination labels. With
``config.keypoint_stride = 2`` the heatmaps come from a finer head at half the image resolution
(see :class:`ConvVisionEncoder`).

Actions are generated token by token with a KV cache, as in OpenVLA and RT-2 (Kim et al. 2024;
Brohan et al. 2023): the first token is ``<refuse>`` or action bin 1, then bins 2..4.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import DynamicCache, LlamaModel, PreTrainedModel

from robot_refusal.errors import ConfigError
from robot_refusal.policies.configuration_vla import (
    ACT_ID,
    ACTION_DECODINGS,
    ACTION_TOKEN_OFFSET,
    REFUSE_ID,
    SEP_ID,
    VLAConfig,
    check_decoding_for_head,
)


def cell_centres(cells: int, pixels: int | None, like: Tensor) -> Tensor:
    """Coordinates (cells,) of heatmap cell centres along one image axis, in keypoint-label
    units (the first and last pixel centres at -1 and +1, as ``PyBulletSim.project``).

    Args:
        cells: Heatmap cells along the axis.
        pixels: Image pixels along the axis, for pixel-accurate centres (cell i covers pixels
            s*i .. s*i + s - 1, s = pixels / cells); ``None`` spreads the centres evenly from
            -1 to +1, the grid the stride-4 (shipped) checkpoints were trained with.
        like: Tensor whose dtype and device the result takes.
    """
    if pixels is None:
        return torch.linspace(-1, 1, cells, dtype=like.dtype, device=like.device)
    s = pixels / cells
    i = torch.arange(cells, dtype=like.dtype, device=like.device)
    return (s * i + (s - 1) / 2) * 2 / (pixels - 1) - 1


def local_soft_argmax(logits: Tensor, xs: Tensor, ys: Tensor, radius: int) -> Tensor:
    """Keypoints (B, K, 2) as (x, y): the soft-argmax of each heatmap restricted to the
    (2 * radius + 1)^2 cells around its maximum.

    The expectation over the whole map (the spatial softmax of Levine et al. 2016) lands
    between two objects when a heatmap has two modes (two cubes of similar colour, a target
    half hidden by the gripper); the local form keeps the subpixel precision of a soft-argmax
    but takes it from the strongest mode only, as heatmap keypoint detectors decode their
    maps (argmax, then a local refinement).

    Args:
        logits: (B, K, h, w) heatmap logits.
        xs: (w,) cell-centre x coordinates; ys: (h,) cell-centre y coordinates.
        radius: Cells on each side of the maximum, >= 1.

    Returns:
        (B, K, 2) keypoints in the units of ``xs`` and ``ys``; differentiable with respect to
        the logits inside each window (the window's position is not).
    """
    h, w = logits.shape[-2:]
    flat = logits.flatten(2)  # (B, K, h*w)
    peak = flat.argmax(-1)  # (B, K)
    rows = torch.arange(h, device=logits.device)[:, None]  # (h, 1)
    cols = torch.arange(w, device=logits.device)[None, :]  # (1, w)
    near_y = (rows - (peak // w)[..., None, None]).abs() <= radius  # (B, K, h, 1)
    near_x = (cols - (peak % w)[..., None, None]).abs() <= radius  # (B, K, 1, w)
    window = (near_y & near_x).flatten(2)  # (B, K, h*w)
    p = flat.masked_fill(~window, torch.finfo(flat.dtype).min).softmax(-1)
    gx = xs[None, :].expand(h, w).flatten()
    gy = ys[:, None].expand(h, w).flatten()
    return torch.stack([p @ gx, p @ gy], dim=-1)


class ConvVisionEncoder(nn.Module):
    """Instruction-conditioned conv encoder: FiLM layers and spatial-softmax keypoints.

    Three conv layers (stride 2, 2, 1) over RGB plus two coordinate channels; the second and
    third are modulated by FiLM (Perez et al. 2018) from an instruction embedding, as in RT-1's
    FiLM-conditioned image encoder (Brohan et al. 2023, section 4). A 1x1 conv turns the last
    feature map into ``num_keypoints`` heatmaps whose spatial softmax gives expected image
    coordinates (Levine et al. 2016, "End-to-end training of deep visuomotor policies",
    section 4.2).

    Input (B, 3, H, W) normalised RGB and (B, film_dim) condition; output pooled feature tokens
    (B, side*side, C) in raster order and keypoints (B, K, 2) as (x, y) in [-1, 1]. With
    ``config.grounded_keypoints = R`` the first R heatmaps come from the instruction's words
    (see :meth:`_grounded_logits`) and the 1x1 conv gives the other K - R. With
    ``config.keypoint_stride = 2`` the heatmaps live on a finer map (H/2, W/2): the first conv
    layer's features concatenated with the last ones upsampled 2x (nearest), a 1x1 conv to
    ``FINE_CHANNELS`` and a 3x3 conv, as a feature pyramid's top-down path (Lin et al. 2017,
    section 3), with pixel-accurate cell centres (:func:`cell_centres`); the pooled tokens
    still come from the last feature map. With ``config.keypoint_window = r > 0`` each
    keypoint is read out by :func:`local_soft_argmax` (the (2r+1)^2 cells around the
    heatmap's maximum) instead of the expectation over the whole map.
    """

    FINE_CHANNELS = 32

    def __init__(self, config: VLAConfig) -> None:
        super().__init__()
        c1, c2, c3 = config.vision_channels
        self.conv1 = nn.Conv2d(5, c1, 5, stride=2, padding=2)
        self.conv2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(c2, c3, 3, stride=1, padding=1)
        self.film = nn.Linear(config.film_dim, 2 * (c2 + c3))
        self.grounded = config.grounded_keypoints
        self.fine = config.keypoint_stride == 2
        self.config = config  # read at every call: keypoint_window may be changed after loading
        self.split_lateral = True  # training mode's form of the lateral conv (see _lateral)
        ck = self.FINE_CHANNELS if self.fine else c3
        if self.fine:
            self.fine_lateral = nn.Conv2d(c1 + c3, ck, 1)
            self.fine_smooth = nn.Conv2d(ck, ck, 3, padding=1)
        self.keypoint_heads = nn.Conv2d(ck, config.num_keypoints - self.grounded, 1)
        self.pool = nn.AdaptiveAvgPool2d(config.image_tokens_side)
        self.out_channels = c3
        self._split = (c2, c2, c3, c3)
        if self.grounded:
            f = config.film_dim
            self.role_queries = nn.Parameter(torch.zeros(self.grounded, f))
            self.word_key = nn.Linear(f, f)
            self.word_value = nn.Linear(f, ck)
            self.cell_key = nn.Conv2d(ck, ck, 1)

    @staticmethod
    def _grid(h: int, w: int, like: Tensor) -> Tensor:
        """(2, h, w) coordinate channels (y, x) in [-1, 1]."""
        ys = torch.linspace(-1, 1, h, dtype=like.dtype, device=like.device)
        xs = torch.linspace(-1, 1, w, dtype=like.dtype, device=like.device)
        return torch.stack(torch.meshgrid(ys, xs, indexing="ij"))

    def forward(
        self,
        pixel_values: Tensor,
        condition: Tensor,
        words: Tensor | None = None,
        word_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Encode an image.

        Args:
            pixel_values: (B, 3, H, W) normalised RGB.
            condition: (B, film_dim) FiLM condition.
            words: (B, T, film_dim) instruction word embeddings; needed when the config
                grounds keypoints.
            word_mask: (B, T) 1 for words, 0 for padding.

        Returns:
            Tokens (B, side**2, C), keypoints (B, K, 2) (the grounded ones first) and the
            heatmap logits (B, K, h', w') whose spatial softmax gives the keypoints (h' = H /
            keypoint_stride, w' likewise).
        """
        b, _, h, w = pixel_values.shape
        grid = self._grid(h, w, pixel_values)
        x = torch.cat([pixel_values, grid.expand(b, -1, -1, -1)], dim=1)  # (B, 5, H, W)
        g2, b2, g3, b3 = (t[:, :, None, None] for t in self.film(condition).split(self._split, -1))
        x1 = F.gelu(self.conv1(x))  # (B, c1, H/2, W/2)
        x = F.gelu(self.conv2(x1) * (1 + g2) + b2)
        x = F.gelu(self.conv3(x) * (1 + g3) + b3)  # (B, C, H/4, W/4)
        k = x
        if self.fine:
            k = F.gelu(self._lateral(x1, x))
            k = F.gelu(self.fine_smooth(k))  # (B, FINE_CHANNELS, H/2, W/2)
        logits = self.keypoint_heads(k).flatten(2)  # (B, K - grounded, h'*w')
        if self.grounded:
            assert words is not None and word_mask is not None
            logits = torch.cat([self._grounded_logits(k, words, word_mask), logits], dim=1)
        pix = (h, w) if self.fine else (None, None)
        ys = cell_centres(k.shape[2], pix[0], pixel_values)
        xs = cell_centres(k.shape[3], pix[1], pixel_values)
        window = self.config.keypoint_window
        # The keypoints' sub-pixel expectation stays in at least float32 under a bf16
        # autocast (``train --precision bf16``): bf16's 8-bit mantissa would round it by
        # ~0.1 px. A float64 model keeps float64.
        wide = torch.promote_types(logits.dtype, torch.float32)
        with torch.autocast(pixel_values.device.type, enabled=False):
            logits, xs, ys = logits.to(wide), xs.to(wide), ys.to(wide)
            if window:
                keypoints = local_soft_argmax(logits.unflatten(2, k.shape[2:]), xs, ys, window)
            else:
                heat = logits.softmax(-1)  # (B, K, h'*w')
                fy = ys[:, None].expand(-1, k.shape[3]).flatten()
                fx = xs[None, :].expand(k.shape[2], -1).flatten()
                keypoints = torch.stack([heat @ fx, heat @ fy], dim=-1)  # (B, K, 2)
        tokens = self.pool(x).flatten(2).transpose(1, 2)  # (B, side*side, C)
        return tokens, keypoints, logits.unflatten(2, k.shape[2:])

    def _lateral(self, x1: Tensor, x: Tensor) -> Tensor:
        """The fine path's lateral 1x1 conv (``fine_lateral``) of the first layer's features
        x1 (B, c1, H/2, W/2) concatenated with the last ones x (B, c3, H/4, W/4) upsampled
        (nearest) to x1's size; (B, FINE_CHANNELS, H/2, W/2).

        In eval mode it convolves the concatenation, the form the shipped checkpoints were
        evaluated with, so their closed-loop results reproduce bit for bit. In training mode it
        uses the same weights as two convolutions, ``W_a * x1 + up(W_b * x)``: a 1x1 conv acts
        on each pixel alone, so it commutes with nearest upsampling, and upsampling the
        FINE_CHANNELS-wide result instead of the c3-wide input (96 -> 32 channels), and
        convolving x at a quarter of the pixels, makes a training step faster
        (``benchmarks/train_step.py --compare layout``, which sets ``split_lateral`` False for
        the other form). The two forms differ only in floating-point rounding. Under an
        autocast (``train --precision bf16``) training keeps the concatenated form: the split
        one adds two bfloat16-rounded maps, and a tiny model trained that way read its
        keypoints up to 1.2 px apart in bf16 and float32, against 0.3 px (``tests/policies/
        test_training.py``, the bf16 test).
        """
        if self.training and self.split_lateral and not torch.is_autocast_enabled(x.device.type):
            c1 = x1.shape[1]
            weight, bias = self.fine_lateral.weight, self.fine_lateral.bias
            near = F.conv2d(x1, weight[:, :c1], bias)
            far = F.conv2d(x, weight[:, c1:])  # (B, FINE_CHANNELS, H/4, W/4)
            return near + F.interpolate(far, size=x1.shape[2:], mode="nearest")
        up = F.interpolate(x, size=x1.shape[2:], mode="nearest")
        return self.fine_lateral(torch.cat([x1, up], dim=1))

    def _grounded_logits(self, x: Tensor, words: Tensor, word_mask: Tensor) -> Tensor:
        """Heatmap logits (B, R, h*w) of the R grounded keypoints.

        Each keypoint's learned query attends over the instruction's words (padding masked);
        the attended phrase vector (B, R, C) is correlated with every cell of the feature map
        x (B, C, h, w) (scaled dot product), as CLIPort's language-conditioned heatmaps.
        """
        f = words.shape[-1]
        att = torch.einsum("rf,btf->brt", self.role_queries, self.word_key(words)) / f**0.5
        att = att.masked_fill(word_mask[:, None, :] == 0, torch.finfo(att.dtype).min).softmax(-1)
        phrase = att @ self.word_value(words)  # (B, R, C)
        cells = self.cell_key(x).flatten(2)  # (B, C, h*w)
        return phrase @ cells / cells.shape[1] ** 0.5  # (B, R, h*w)


def override_keypoints(predicted: Tensor, override: Tensor) -> Tensor:
    """Replace the leading predicted keypoints by given ones (a perception diagnostic).

    Args:
        predicted: (B, K, 2) the encoder's keypoints, [-1, 1] image units.
        override: (B, K', 2) with K' <= K, the same units (e.g. the simulator's exact
            keypoints, ``RobotRefusalEnv.keypoints_uv``); a row with a non-finite entry keeps
            the predicted keypoint.

    Returns:
        (B, K, 2) keypoints.

    Raises:
        ConfigError: ``override`` is not (B, K', 2) with K' <= K.
    """
    b, k, _ = predicted.shape
    if override.ndim != 3 or override.shape[0] != b or override.shape[2] != 2:
        raise ConfigError(f"keypoint_override must be (B={b}, K', 2), got {tuple(override.shape)}")
    n = override.shape[1]
    if n > k:
        raise ConfigError(f"keypoint_override has {n} keypoints; the model has {k}")
    given = override.to(predicted.dtype)
    keep = ~torch.isfinite(given).all(-1, keepdim=True)  # (B, K', 1)
    head = torch.where(keep, predicted[:, :n], torch.nan_to_num(given))
    return torch.cat([head, predicted[:, n:]], dim=1)


def table_plane_points(
    keypoints: Tensor, unprojection: Tensor, image_size: tuple[int, int], height: float
) -> Tensor:
    """Where the camera rays of image keypoints cut a horizontal plane.

    Args:
        keypoints: (B, M, 2) image coordinates (x right, y down), -1 and +1 at the centres of
            the edge pixels (as :meth:`robot_refusal.envs.sim.PyBulletSim.project`).
        unprojection: (4, 4) inverse view-projection matrix of the camera, row-major.
        image_size: (H, W) pixels.
        height: The plane's height z (m).

    Returns:
        (B, M, 2) world (x, y) in metres, clamped to [-2, 2] (rays that nearly miss the plane).
    """
    h, w = image_size
    ndc_x = ((keypoints[..., 0] + 1) / 2 * (w - 1) + 0.5) / w * 2 - 1
    ndc_y = 1 - ((keypoints[..., 1] + 1) / 2 * (h - 1) + 0.5) / h * 2
    ones = torch.ones_like(ndc_x)
    ends = []
    for depth in (-1.0, 1.0):
        ndc = torch.stack([ndc_x, ndc_y, ones * depth, ones], dim=-1)  # (B, M, 4)
        world = ndc @ unprojection.T
        ends.append(world[..., :3] / world[..., 3:4])
    near, far = ends
    dz = far[..., 2] - near[..., 2]
    dz = torch.where(dz.abs() < 1e-6, torch.full_like(dz, -1e-6), dz)
    t = (height - near[..., 2]) / dz
    return (near[..., :2] + t[..., None] * (far[..., :2] - near[..., :2])).clamp(-2.0, 2.0)


def metric_token_inputs(
    points: Tensor,
    ee_position: Tensor,
    plane_height: float,
    upper_points: Tensor | None = None,
) -> Tensor:
    """The metric keypoint token's inputs (B, 4M + 1), or (B, 8M + 1) with ``upper_points``.

    Args:
        points: (B, M, 2) the keypoints' rays cut with the plane at ``plane_height``, m.
        ee_position: (B, 3) end effector, m.
        plane_height: Height of that plane, m.
        upper_points: (B, M, 2) the same rays cut with a second plane, m, or None.

    Returns:
        The points' (x, y) relative to (0.5, 0) m in units of 0.25 m, their offsets from the
        end effector's (x, y) in units of 0.1 m, the end effector's height above the plane in
        units of 0.1 m, then (with ``upper_points``) the upper points' (x, y) and offsets in
        the same units.
    """
    centre = points.new_tensor([0.5, 0.0])
    ee = ee_position.to(points.dtype)
    height = (ee[:, 2:3] - plane_height) / 0.1
    parts = [((points - centre) / 0.25).flatten(1), ((points - ee[:, None, :2]) / 0.1).flatten(1)]
    parts.append(height)
    if upper_points is not None:
        parts.append(((upper_points - centre) / 0.25).flatten(1))
        parts.append(((upper_points - ee[:, None, :2]) / 0.1).flatten(1))
    return torch.cat(parts, dim=1)


def metric_width(config: Any) -> int:
    """Width F of the metric keypoint token's inputs (:func:`metric_token_inputs`) for a
    :class:`VLAConfig`: 4M + 1 for M = ``metric_keypoints``, 8M + 1 with an upper plane, 0
    without metric keypoints."""
    m = config.metric_keypoints
    if not m:
        return 0
    return 4 * m + 1 + (4 * m if config.metric_upper_plane_height is not None else 0)


class MLPProjector(nn.Module):
    """Two-layer MLP projector into the decoder width (LLaVA-1.5's projector shape).

    ``linear_2`` is the module that writes into the residual stream. (B, ..., in) -> (B, ..., D).
    """

    def __init__(self, in_features: int, d_model: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_features, d_model)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        """(..., in) -> (..., D)."""
        return self.linear_2(self.act(self.linear_1(x)))


@dataclass
class VLAOutput:
    """Output of :meth:`VLAForActionPrediction.forward`.

    Attributes:
        logits: (B, T, V) next-token logits for every position.
        loss: Mean cross-entropy over labelled generated positions, or None.
        hidden_states: Residual stream per layer (tuple of L+1 (B, T, D)) when asked.
        past_key_values: The KV cache when ``use_cache``.
        keypoints: (B, K, 2) spatial-softmax keypoints of the vision encoder, (x, y) in [-1, 1].
        heatmap_logits: (B, K, h, w) the keypoints' heatmap logits (h = w = image side /
            ``config.keypoint_stride``).
        action_values: (B, H, action_dim) the regression action head's chunk of H =
            ``config.action_chunk`` actions at the ACT position, in [-1, 1] units between
            the action tokenizer's 1st and 99th percentiles
            (``config.action_head="regression"``), else None.
    """

    logits: Tensor
    loss: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    past_key_values: DynamicCache | None = None
    keypoints: Tensor | None = None
    heatmap_logits: Tensor | None = None
    action_values: Tensor | None = None


class VLAPreTrainedModel(PreTrainedModel):
    """Base class: config class, weight init, safetensors save/load via ``transformers``."""

    config_class = VLAConfig
    base_model_prefix = "vla"
    main_input_name = "pixel_values"
    _no_split_modules = ["LlamaDecoderLayer"]  # noqa: RUF012 (transformers declares it)

    def _init_weights(self, module: nn.Module) -> None:
        std = 0.02
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, ConvVisionEncoder) and module.grounded:
            nn.init.normal_(module.role_queries, mean=0.0, std=std)
        else:
            super()._init_weights(module)


class VLAForActionPrediction(VLAPreTrainedModel):
    """The policy network.

    Args:
        config: A :class:`VLAConfig`.
    """

    def __init__(self, config: VLAConfig) -> None:
        super().__init__(config)
        d = config.hidden_size
        self.instruction_embedding = nn.Embedding(config.vocab_size, config.film_dim)
        self.vision_encoder = ConvVisionEncoder(config)
        self.vision_projector = nn.Linear(self.vision_encoder.out_channels, d)
        self.keypoint_projector = MLPProjector(2 * config.num_keypoints, d)
        self.state_projector = MLPProjector(config.state_dim, d)
        width = metric_width(config)
        if width:
            self.metric_projector = MLPProjector(width, d)
        self.language_model = LlamaModel(config.decoder_config())
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        self.action_regressor: nn.Module | None = None
        if config.action_head == "regression":  # OpenVLA-OFT's continuous head
            skip = width if config.regression_metric_inputs else 0
            self.action_regressor = nn.Sequential(
                nn.Linear(d + skip, d),
                nn.GELU(),
                nn.Linear(d, config.action_chunk * config.action_dim),
            )
        self.post_init()

    # -- embeddings --------------------------------------------------------------------------
    def embed_prefix(
        self,
        pixel_values: Tensor,
        input_ids: Tensor,
        state: Tensor,
        attention_mask: Tensor,
        ee_position: Tensor | None = None,
        metric_source: Tensor | None = None,
        keypoint_override: Tensor | None = None,
        keypoint_transform: Callable[[Tensor], Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Prefix embeddings (B, P, D), its attention mask (B, P), the keypoints (B, K, 2) and
        their heatmap logits (B, K, h, w).

        Args:
            pixel_values: (B, 3, H, W) normalised image.
            input_ids: (B, T) instruction ids, left-padded, followed by nothing (SEP, state and
                ACT are added here).
            state: (B, state_dim) normalised proprioceptive state.
            attention_mask: (B, T) 1 for instruction tokens, 0 for padding.
            ee_position: (B, 3) raw end-effector position (m), which the processor supplies;
                read only by a model with metric keypoints.
            metric_source: (B, M', 2) keypoints to build the metric token from instead of the
                predicted ones (training feeds the labels, as teacher forcing); None: predicted.
            keypoint_override: (B, K', 2) keypoints that replace the first K' predicted ones
                everywhere the decoder reads them (keypoint and metric tokens), in the
                keypoints' [-1, 1] image units; a non-finite row keeps the prediction. A
                diagnostic (the simulator's exact keypoints; see :func:`override_keypoints`);
                None: predicted.
            keypoint_transform: Maps the predicted keypoints (B, K, 2) to the ones the
                decoder reads (B, K, 2), before ``keypoint_override``; the policy's
                keypoint memory (:class:`~robot_refusal.policies.keypoint_memory.KeypointMemory`).
                None: predicted.

        Raises:
            ConfigError: ``keypoint_override`` of the wrong shape.
        """
        x, mask, keypoints, heat, _ = self._prefix(
            pixel_values,
            input_ids,
            state,
            attention_mask,
            ee_position,
            metric_source,
            keypoint_override,
            keypoint_transform,
        )
        return x, mask, keypoints, heat

    def _prefix(
        self,
        pixel_values: Tensor,
        input_ids: Tensor,
        state: Tensor,
        attention_mask: Tensor,
        ee_position: Tensor | None = None,
        metric_source: Tensor | None = None,
        keypoint_override: Tensor | None = None,
        keypoint_transform: Callable[[Tensor], Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        """:meth:`embed_prefix`'s four outputs plus the metric token's inputs (B, F), or None
        without metric keypoints (what ``config.regression_metric_inputs`` feeds the head)."""
        b = pixel_values.shape[0]
        embed = self.language_model.embed_tokens
        words = attention_mask.unsqueeze(-1).to(pixel_values.dtype)  # (B, T, 1)
        word_emb = self.instruction_embedding(input_ids)  # (B, T, film_dim)
        bag = (word_emb * words).sum(1)
        condition = bag / words.sum(1).clamp(min=1.0)  # (B, film_dim) mean word embedding
        feats, keypoints, heat = self.vision_encoder(
            pixel_values, condition, word_emb, attention_mask
        )
        if keypoint_transform is not None:
            keypoints = keypoint_transform(keypoints)
        if keypoint_override is not None:
            keypoints = override_keypoints(keypoints, keypoint_override)
        kp_token = self.keypoint_projector(keypoints.flatten(1))[:, None]
        parts = [self.vision_projector(feats), kp_token]
        features = None
        if self.config.metric_keypoints:
            source = keypoints if metric_source is None else metric_source
            features = self.metric_features(source, ee_position)
            parts.append(self.metric_projector(features)[:, None])
        img = torch.cat(parts, dim=1)  # (B, N_img, D): feature tokens, keypoint (metric) tokens
        text = embed(input_ids)  # (B, T, D)
        sep = embed(torch.full((b, 1), SEP_ID, dtype=torch.long, device=input_ids.device))
        act = embed(torch.full((b, 1), ACT_ID, dtype=torch.long, device=input_ids.device))
        st = self.state_projector(state).unsqueeze(1)  # (B, 1, D)
        x = torch.cat([img, text, sep, st, act], dim=1)  # (B, P, D)
        ones = attention_mask.new_ones(b, img.shape[1])
        mask = torch.cat([ones, attention_mask, attention_mask.new_ones(b, 3)], dim=1)
        return x, mask, keypoints, heat, features

    def metric_features(self, keypoints: Tensor, ee_position: Tensor | None) -> Tensor:
        """(B, K, 2) keypoints, (B, 3) end effector (m) -> (B, 4M + 1) metric token inputs,
        (B, 8M + 1) with ``config.metric_upper_plane_height``.

        The first M = ``config.metric_keypoints`` keypoints cut with the table plane
        (:func:`table_plane_points`), and with the upper plane when the config has one, laid
        out by :func:`metric_token_inputs`.

        Raises:
            ConfigError: Without ``ee_position``.
        """
        if ee_position is None:
            raise ConfigError(
                "this model's metric keypoint token needs ee_position (B, 3) m; "
                "VLAProcessor supplies it with the other inputs"
            )
        cfg = self.config
        m = cfg.metric_keypoints
        size = (cfg.image_size, cfg.image_size)
        matrix = keypoints.new_tensor(cfg.camera_unprojection).reshape(4, 4)
        points = table_plane_points(
            keypoints[:, :m], matrix, size, cfg.metric_plane_height
        )  # (B, M, 2) m
        upper = None
        if cfg.metric_upper_plane_height is not None:
            height = cfg.metric_upper_plane_height
            upper = table_plane_points(keypoints[:, :m], matrix, size, height)
        return metric_token_inputs(points, ee_position, cfg.metric_plane_height, upper)

    def forward(
        self,
        pixel_values: Tensor,
        input_ids: Tensor,
        state: Tensor,
        attention_mask: Tensor,
        action_input_ids: Tensor | None = None,
        labels: Tensor | None = None,
        output_hidden_states: bool = False,
        use_cache: bool = False,
        ee_position: Tensor | None = None,
        metric_source: Tensor | None = None,
    ) -> VLAOutput:
        """Logits for the prefix plus teacher-forced action tokens.

        Args:
            pixel_values, input_ids, state, attention_mask: See :meth:`embed_prefix`.
            action_input_ids: (B, K) action tokens fed after the prefix (teacher forcing).
            labels: (B, K+1) targets of the K+1 generated positions (the ACT position and each
                fed token); -100 is ignored.
            output_hidden_states: Return the residual stream of every layer.
            use_cache: Return a KV cache.
            ee_position, metric_source: See :meth:`embed_prefix`.

        Returns:
            :class:`VLAOutput` with logits (B, P+K, V).
        """
        x, mask, keypoints, heat, features = self._prefix(
            pixel_values, input_ids, state, attention_mask, ee_position, metric_source
        )
        act_position = x.shape[1] - 1
        if action_input_ids is not None:
            x = torch.cat([x, self.language_model.embed_tokens(action_input_ids)], dim=1)
            mask = torch.cat([mask, mask.new_ones(action_input_ids.shape)], dim=1)
        out, _ = self._decode(x, mask, use_cache, output_hidden_states)
        logits = self.lm_head(out.last_hidden_state)  # (B, T, V)
        loss = None
        if labels is not None:
            k = labels.shape[1]
            gen = logits[:, -k:, :]  # positions that predict the generated tokens
            loss = F.cross_entropy(gen.reshape(-1, gen.shape[-1]), labels.reshape(-1))
        values = None
        if self.action_regressor is not None:
            values = self.regress_actions(out.last_hidden_state[:, act_position], features)
        return VLAOutput(logits, loss, out.hidden_states, out.cache, keypoints, heat, values)

    def regress_actions(self, hidden: Tensor, metric_inputs: Tensor | None = None) -> Tensor:
        """The regression head's action chunk (B, H, action_dim) in [-1, 1] units (H =
        ``config.action_chunk``) from the ACT position's final hidden state (B, D) and, with
        ``config.regression_metric_inputs``, the metric token's inputs (B, F), concatenated.

        Raises:
            ConfigError: A model with ``regression_metric_inputs`` called without them.
        """
        assert self.action_regressor is not None
        if self.config.regression_metric_inputs:
            if metric_inputs is None:
                raise ConfigError(
                    "this model's regression head reads the metric token's inputs; "
                    "pass metric_inputs (B, F)"
                )
            hidden = torch.cat([hidden, metric_inputs.to(hidden.dtype)], dim=-1)
        return self.action_regressor(hidden).reshape(
            hidden.shape[0], self.config.action_chunk, self.config.action_dim
        )

    def _decode(
        self, x: Tensor, mask: Tensor, use_cache: bool, output_hidden_states: bool = False
    ) -> tuple[Any, Tensor]:
        """One decoder pass over embeddings x (B, T, D) with padding mask (B, T).

        Positions skip padding (cumulative sum of the mask). Returns the decoder output and the
        position ids (B, T).
        """
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
        cache = DynamicCache(config=self.language_model.config) if use_cache else None
        out = self.language_model(
            inputs_embeds=x,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
        )
        return out, positions

    # -- generation ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict_action_tokens(
        self,
        pixel_values: Tensor,
        input_ids: Tensor,
        state: Tensor,
        attention_mask: Tensor,
        ee_position: Tensor | None = None,
        decoding: str | None = None,
        keypoint_override: Tensor | None = None,
        chunk: bool = False,
        keypoint_transform: Callable[[Tensor], Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Greedy constrained decoding with a KV cache.

        The first token is chosen among ``<refuse>`` and the action bins, the next
        ``action_dim - 1`` among the action bins. With ``decoding="mean"`` an action position
        is read as the mean of its distribution over the bins instead of its argmax (the
        expected bin index, fractional), and the bin nearest that mean is fed back as the
        next position's input; the refuse-or-act choice at the first position stays the
        argmax. The mean is how the HL-Gauss value head reads its bins (Imani & White 2018,
        section 3; Farebrother et al. 2024, section 3). ``decoding="local_mean"`` takes the
        mean over the bins within ``config.action_window`` of the argmax only, renormalised:
        the argmax's mode read to a fraction of a bin, never a point between two modes.
        ``decoding="regression"`` (a model with ``config.action_head="regression"``) reads
        every action position at once from the regression head at the ACT position, as
        fractional bin indices (OpenVLA-OFT's parallel decoding; no token is fed back), for
        each of the ``config.action_chunk`` actions of its chunk.

        Args:
            pixel_values, input_ids, state, attention_mask, ee_position, keypoint_override,
            keypoint_transform: See :meth:`embed_prefix`.
            decoding: One of :data:`ACTION_DECODINGS`; None: ``config.action_decoding``.
            chunk: Return the whole chunk (B, H, action_dim): H = ``config.action_chunk``
                for the regression, 1 for the token readings. False: its first action.

        Returns:
            (tokens (B, action_dim), or (B, H, action_dim) with ``chunk``: int64 token ids
            for ``"argmax"``, float32 fractional ids (ACTION_TOKEN_OFFSET + expected bin) for
            the means and the regression; ``<refuse>`` then padding for refusals (every row
            of a refused chunk), first-position log-probabilities (B, V) in float32).

        Raises:
            ConfigError: An unknown ``decoding``, or ``"regression"`` without that head.
        """
        if decoding is None:
            decoding = self.config.action_decoding
        if decoding not in ACTION_DECODINGS:
            raise ConfigError(f"decoding must be one of {ACTION_DECODINGS}, got {decoding!r}")
        check_decoding_for_head(decoding, self.config.action_head)
        cfg = self.config
        x, mask, _, _, features = self._prefix(
            pixel_values,
            input_ids,
            state,
            attention_mask,
            ee_position,
            keypoint_override=keypoint_override,
            keypoint_transform=keypoint_transform,
        )
        out, positions = self._decode(x, mask, use_cache=True)
        first = self.lm_head(out.last_hidden_state[:, -1]).float()  # (B, V)
        logprobs = first.log_softmax(-1)
        lo, hi = ACTION_TOKEN_OFFSET, ACTION_TOKEN_OFFSET + cfg.n_bins
        allowed = torch.full_like(first, float("-inf"))
        allowed[:, lo:hi] = 0.0
        first_choice = (first + allowed).clone()
        first_choice[:, REFUSE_ID] = first[:, REFUSE_ID]
        grid = torch.arange(cfg.n_bins, dtype=torch.float32)

        window = cfg.action_window if decoding == "local_mean" else None

        def expected(logits: Tensor) -> Tensor:  # (B, V) -> (B,) mean bin index
            probs = logits[:, lo:hi].softmax(-1)  # (B, n_bins)
            if window is not None:  # only the bins within `window` of the argmax
                near = (grid - probs.argmax(-1, keepdim=True)).abs() <= window
                probs = probs * near
                probs = probs / probs.sum(-1, keepdim=True)
            return (probs * grid).sum(-1)

        tokens = [first_choice.argmax(-1)]
        if decoding == "regression":  # all positions at once from the ACT position
            unit = self.regress_actions(out.last_hidden_state[:, -1], features).float()
            bins = ((unit + 1) / 2 * cfg.n_bins - 0.5).clamp(0, cfg.n_bins - 1)
            act = (tokens[0] != REFUSE_ID)[:, None, None]
            refuse_row = torch.zeros_like(bins)
            refuse_row[..., 0] = REFUSE_ID
            ids = torch.where(act, lo + bins, refuse_row)
            return (ids if chunk else ids[:, 0]), logprobs
        values = [tokens[0].float()]
        if decoding != "argmax":
            act = tokens[0] != REFUSE_ID
            mean = expected(first)
            values[0] = torch.where(act, lo + mean, values[0])
            tokens[0] = torch.where(act, lo + mean.round().long(), tokens[0])
        pos = positions[:, -1]
        for _ in range(cfg.action_dim - 1):
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            pos = pos + 1
            out = self.language_model(
                inputs_embeds=self.language_model.embed_tokens(tokens[-1]).unsqueeze(1),
                attention_mask=mask,
                position_ids=pos.unsqueeze(1),
                cache=out.cache,
                use_cache=True,
            )
            nxt = self.lm_head(out.last_hidden_state[:, -1]).float() + allowed
            if decoding != "argmax":
                mean = expected(nxt)
                values.append(lo + mean)
                tokens.append(lo + mean.round().long())
            else:
                tokens.append(nxt.argmax(-1))
        result = torch.stack(tokens if decoding == "argmax" else values, dim=1)  # (B, D)
        refused = result[:, 0] == REFUSE_ID
        result[refused, 1:] = 0
        return (result[:, None] if chunk else result), logprobs


def add_regression_metric_inputs(model: VLAForActionPrediction) -> None:
    """Give a trained model's regression head the metric token's inputs, in place.

    The head's first layer is widened by F = :func:`metric_width` input columns of zeros,
    so the model's actions and logits stay exactly what they were until training moves
    those weights (a fine-tune's start; ``train --init CKPT --regression-metric-inputs``),
    and ``config.regression_metric_inputs`` is set.

    Args:
        model: A model with ``action_head="regression"`` and ``metric_keypoints`` > 0.

    Raises:
        ConfigError: The model has no regression head, no metric keypoints, or already
            reads the metric inputs.
    """
    cfg = model.config
    width = metric_width(cfg)
    if model.action_regressor is None or not width:
        raise ConfigError(
            "regression_metric_inputs needs a model with the regression action head and "
            f"metric keypoints (this one: action_head={cfg.action_head!r}, "
            f"metric_keypoints={cfg.metric_keypoints})"
        )
    if cfg.regression_metric_inputs:
        raise ConfigError("this model's regression head already reads the metric inputs")
    head = model.action_regressor
    assert isinstance(head, nn.Sequential)
    old = head[0]
    assert isinstance(old, nn.Linear)
    new = nn.Linear(old.in_features + width, old.out_features)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_features] = old.weight
        new.bias.copy_(old.bias)
    head[0] = new.to(old.weight.device, old.weight.dtype)
    cfg.regression_metric_inputs = True
