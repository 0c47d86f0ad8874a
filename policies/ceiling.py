"""The imitation ceiling of the keypoint representation: behaviour cloning on exact keypoints.

A small MLP learns the expert's harmless actions from what a VLA's metric keypoint token would
carry if its perception were perfect: the four labelled keypoints (target, destination, hand,
gripper) cut with the table plane through the scene camera's calibration, their offsets from the
end effector and its height, plus the state and the task (family and named object, what the
instruction says). It then runs closed loop on the simulator's own keypoints. Its success rate
is what the keypoint representation allows once the keypoints are right: a VLA far below it is
losing the task in its decoder, one close to it in its perception. Training the MLP on labels
with Gaussian pixel noise (``noise_px``) shows how much keypoint precision the tasks need.

Two switches make the ceiling more like the VLA's decoder, one difference at a time, so that the
points the decoder loses can be put on a cause: ``velocity=False`` drops the end-effector
velocity from the state (the VLA reads ``POLICY_STATE``, without it), and ``head="bins"``
replaces the regression by the VLA's action tokens: each of the four action dimensions binned
into 256 bins between its 1st and 99th percentile (``ActionTokenizer``), trained with the same
Gaussian soft targets (``label_sigma`` bins) and decoded by the argmax bin, as the VLA decodes
greedily; ``decode="mean"`` reads each dimension as its bin distribution's mean instead.

This is the privileged agent of "Learning by Cheating" (Chen et al. 2019, section 3) used as a
measuring stick, not as a policy: it reads the scenario's family and target, and the
simulator's keypoints, which a VLA never sees.

Run: ``python -m robot_refusal.policies.ceiling DATA [--noise-px S] [--upper-plane M]
[--no-velocity] [--head bins]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from tqdm import tqdm

from robot_refusal.envs import FAMILIES, RobotRefusalEnv
from robot_refusal.envs.env import MAX_DELTA
from robot_refusal.envs.scene import OBJECTS
from robot_refusal.errors import ConfigError, RobotRefusalError
from robot_refusal.policies.action_tokenizer import ActionTokenizer, gripper_command
from robot_refusal.policies.configuration_vla import (
    METRIC_PLANE_HEIGHT,
    check_upper_plane_height,
)
from robot_refusal.policies.dataset import DemoDataset, load_dataset
from robot_refusal.policies.lerobot_format import IMAGE_KEY
from robot_refusal.policies.modeling_vla import metric_token_inputs, table_plane_points
from robot_refusal.policies.training import scene_camera

OBJECT_NAMES = tuple(sorted(OBJECTS))
STEP = 0.04  # m per step: the displacement scale of the regression targets
PLANE = METRIC_PLANE_HEIGHT  # m: the metric token's plane height (VLAConfig's default)
DECODINGS = ("argmax", "mean")
"""How the bins head turns a dimension's bin distribution into a value: the argmax bin's centre
(the VLA's greedy decoding) or the distribution's mean (its expected bin position, mapped to
the value axis)."""
HEADS = ("regression", "bins")
"""Ceiling action heads: squared error on the displacement + gripper logit, or the VLA's
256-bin action tokens with soft targets and argmax decoding."""


def oracle_features(
    keypoints_uv: NDArray[np.floating],
    state: NDArray[np.floating],
    family: NDArray[np.integer],
    target: NDArray[np.integer],
    image_size: int = 64,
    upper_plane: float | None = None,
    velocity: bool = True,
) -> torch.Tensor:
    """Features (N, 8 + 8 + 1 (+ 16) + 5 (2 without velocity) + 4 + len(OBJECT_NAMES))
    float32 of N frames.

    Args:
        keypoints_uv: (N, 8) or (N, 4, 2) keypoints (x, y) in [-1, 1], rows as
            ``RobotRefusalEnv.keypoints_uv``.
        state: (N, 8) raw state (ee position m, velocity m/s, opening m, grasp flag).
        family: (N,) index into ``FAMILIES``.
        target: (N,) index into ``OBJECT_NAMES``.
        image_size: Image side (pixels) the keypoints refer to.
        upper_plane: A second plane height (m) the keypoint rays are also cut with, as
            ``VLAConfig.metric_upper_plane_height``; None: one cut.
        velocity: Include the end-effector velocity (state[3:6]); False leaves it out, as the
            VLA's ``POLICY_STATE`` does.

    Returns:
        The metric token's inputs (``modeling_vla.metric_token_inputs`` of the keypoints'
        table-plane points, as ``VLAForActionPrediction.metric_features`` builds them),
        state[3:] (state[6:] without velocity), and one-hot family and target.
    """
    uv = torch.as_tensor(np.asarray(keypoints_uv, np.float64).reshape(-1, 4, 2))
    st = torch.as_tensor(np.asarray(state, np.float64).reshape(-1, 8))
    camera = torch.tensor(scene_camera((image_size, image_size)), dtype=torch.float64)
    size = (image_size, image_size)
    points = table_plane_points(uv, camera.reshape(4, 4), size, PLANE)
    upper = None
    if upper_plane is not None:
        upper = table_plane_points(uv, camera.reshape(4, 4), size, upper_plane)
    n = len(st)
    fam = torch.zeros(n, len(FAMILIES), dtype=torch.float64)
    fam[torch.arange(n), torch.as_tensor(np.asarray(family))] = 1
    obj = torch.zeros(n, len(OBJECT_NAMES), dtype=torch.float64)
    obj[torch.arange(n), torch.as_tensor(np.asarray(target))] = 1
    rest = st[:, 3:] if velocity else st[:, 6:]
    parts = [metric_token_inputs(points, st[:, :3], PLANE, upper), rest, fam, obj]
    return torch.cat(parts, dim=1).float()


@dataclass
class Ceiling:
    """A fitted ceiling MLP: ``net`` maps :func:`oracle_features` to (dx, dy, dz) / STEP and a
    gripper logit, or with ``tokenizer`` set to (4 x n_bins) action-bin logits; ``image_size``
    is the dataset's image side (pixels); ``upper_plane`` the second cut of the keypoint rays
    (m) or None; ``keypoint_plane`` the dataset's keypoint footprint height (m;
    ``DemoDataset.keypoint_plane``), which the closed loop's keypoints use too; ``velocity``
    whether the features hold the end-effector velocity; ``decode`` one of :data:`DECODINGS`
    (bins head only).

    Raises:
        ConfigError: An unknown ``decode``.
    """

    net: nn.Module
    image_size: int
    upper_plane: float | None = None
    keypoint_plane: float | None = None
    velocity: bool = True
    tokenizer: ActionTokenizer | None = None
    decode: str = "argmax"

    def __post_init__(self) -> None:
        if self.decode not in DECODINGS:
            raise ConfigError(f"decode must be one of {DECODINGS}, got {self.decode!r}")

    def action(self, env: RobotRefusalEnv, state: NDArray[np.floating]) -> dict[str, np.ndarray]:
        """The action dict (delta (3,) m, gripper (1,), refuse 0) for the env's current state
        (8,), from the simulator's keypoints."""
        sc = env.scenario
        assert sc is not None
        x = oracle_features(
            env.keypoints_uv(),
            state,
            np.array([FAMILIES.index(env.family)]),
            np.array([OBJECT_NAMES.index(sc.target)]),
            self.image_size,
            self.upper_plane,
            self.velocity,
        )
        with torch.no_grad():
            out = self.net(x)[0].numpy()
        if self.tokenizer is not None:  # the VLA's greedy decoding: the argmax bin per dimension
            logits = out.reshape(self.tokenizer.dims, self.tokenizer.n_bins)
            if self.decode == "mean":
                p = np.exp(logits - logits.max(-1, keepdims=True))
                p /= p.sum(-1, keepdims=True)
                pos = (p * np.arange(self.tokenizer.n_bins)).sum(-1)  # (dims,) expected bin
                low, high = np.asarray(self.tokenizer.low), np.asarray(self.tokenizer.high)
                act = low + (pos + 0.5) / self.tokenizer.n_bins * (high - low)
            else:
                act = self.tokenizer.decode(logits.argmax(-1))
            delta = np.clip(act[:3], -MAX_DELTA, MAX_DELTA).astype(np.float32)
            return {"delta": delta, "gripper": gripper_command(act[3:4]).astype(np.float32),
                    "refuse": 0}  # fmt: skip
        delta = np.clip(out[:3] * STEP, -MAX_DELTA, MAX_DELTA).astype(np.float32)
        grip = np.array([1.0 if out[3] > 0 else -1.0], np.float32)
        return {"delta": delta, "gripper": grip, "refuse": 0}


def fit_ceiling(
    data: DemoDataset,
    steps: int = 6000,
    noise_px: float = 0.0,
    seed: int = 0,
    upper_plane: float | None = None,
    velocity: bool = True,
    head: str = "regression",
    label_sigma: float = 2.0,
) -> Ceiling:
    """Fit the ceiling MLP (3 hidden layers of 256, AdamW 1e-3, cosine, batch 256) on the
    dataset's harmless frames: squared error on the displacement / STEP plus the gripper's
    binary cross-entropy, or (``head="bins"``) the cross-entropy of each of the four action
    dimensions' 256 bins against Gaussian soft targets, as ``robot-refusal train`` trains the
    VLA's action tokens (``training.soft_action_targets``).

    Args:
        data: A ``collect`` dataset with keypoint labels.
        steps: Optimizer steps.
        noise_px: Std of the Gaussian noise on the training keypoints, pixels.
        seed: Seeds the weights, batches and noise.
        upper_plane: Also cut the keypoint rays with this plane (m), as a VLA trained with
            ``--metric-upper-plane``; None: the table plane only.
        velocity: Give the MLP the end-effector velocity (False: the VLA's state entries).
        head: One of :data:`HEADS`.
        label_sigma: Width of the soft targets in bins (``head="bins"``; 0: one-hot).

    Raises:
        ConfigError: ``steps`` < 1, ``noise_px`` < 0, ``label_sigma`` < 0, an unknown
            ``head``, ``upper_plane`` outside (0, 0.5] m or at the table plane, or no harmless
            frames with keypoints.
    """
    if steps < 1 or not noise_px >= 0:
        raise ConfigError(f"steps must be >= 1 and noise_px >= 0, got {steps}, {noise_px}")
    if head not in HEADS:
        raise ConfigError(f"head must be one of {HEADS}, got {head!r}")
    if not label_sigma >= 0:
        raise ConfigError(f"label_sigma must be >= 0, got {label_sigma}")
    if upper_plane is not None:
        check_upper_plane_height(upper_plane, "upper_plane")
    if "annotation.keypoints_uv" not in data.frames.schema.names:
        raise ConfigError(f"{data.root} has no keypoint labels; collect it again")
    keep = data.array("label") == "harmless"
    if "imitate" in data.frames.schema.names:  # not the frames of a deliberate miss
        keep &= data.array("imitate").astype(bool)
    if not keep.any():
        raise ConfigError(f"{data.root} has no harmless frames")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    size = int(data.info["features"][IMAGE_KEY]["shape"][0])
    uv = data.array("annotation.keypoints_uv")[keep]
    uv = uv + rng.normal(0.0, noise_px * 2 / (size - 1), uv.shape)
    targets = data.episodes.column("target").to_pylist()
    episode = data.array("episode_index")[keep]
    family = np.array([FAMILIES.index(f) for f in data.array("family")[keep]])
    target = np.array([OBJECT_NAMES.index(targets[int(e)]) for e in episode])
    state = data.array("observation.state")[keep]
    x = oracle_features(uv, state, family, target, size, upper_plane, velocity)
    act = data.array("action")[keep]
    y = torch.as_tensor(np.c_[act[:, :3] / STEP, act[:, 3:4] > 0], dtype=torch.float32)
    tokenizer, soft = None, None
    if head == "bins":  # the VLA's action tokens, fitted as `train` fits them
        tokenizer = ActionTokenizer.fit(act[:, :4])  # delta xyz, gripper (not the refuse flag)
        bins = torch.as_tensor(tokenizer.encode(act[:, :4]))  # (N, 4)
        grid = torch.arange(tokenizer.n_bins, dtype=torch.float32)
        if label_sigma > 0:
            soft = torch.exp(-0.5 * ((grid - bins[..., None]) / label_sigma) ** 2)
        else:
            soft = (grid == bins[..., None]).float()
        soft = soft / soft.sum(-1, keepdim=True)  # (N, 4, n_bins)
    width = 256
    n_out = 4 if tokenizer is None else 4 * tokenizer.n_bins
    net = nn.Sequential(
        nn.Linear(x.shape[1], width), nn.GELU(), nn.Linear(width, width), nn.GELU(),
        nn.Linear(width, width), nn.GELU(), nn.Linear(width, n_out),
    )  # fmt: skip
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(steps), desc="fit ceiling", unit="step", leave=False):
        i = torch.randint(len(x), (256,), generator=gen)
        out = net(x[i])
        if soft is not None:
            logp = out.reshape(len(i), 4, -1).log_softmax(-1)
            loss = -(soft[i] * logp).sum(-1).mean()
        else:
            loss = ((out[:, :3] - y[i, :3]) ** 2).mean()
            loss = loss + nn.functional.binary_cross_entropy_with_logits(out[:, 3], y[i, 3])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return Ceiling(net.eval(), size, upper_plane, data.keypoint_plane, velocity, tokenizer)


def run_ceiling(
    ceiling: Ceiling,
    episodes: Sequence[tuple[str, int]],
    split: str = "val",
    progress: bool = True,
) -> list[dict[str, object]]:
    """Run the ceiling closed loop on harmless episodes.

    Args:
        ceiling: From :func:`fit_ceiling`.
        episodes: (family, reset seed) pairs.
        split: Scenario split.

    Returns:
        One record per episode: family, instruction, success, grasped (whether it ever held
        the target), min_target_distance (m, end effector to the target's grasp point), steps.

    Raises:
        UnknownNameError: An unknown family or split (from ``RobotRefusalEnv``).
    """
    records: list[dict[str, object]] = []
    envs: dict[str, RobotRefusalEnv] = {}
    try:
        for family, seed in tqdm(episodes, desc="ceiling episodes", disable=not progress):
            if family not in envs:
                size = (ceiling.image_size, ceiling.image_size)  # of the keypoint labels
                envs[family] = RobotRefusalEnv(
                    family,
                    split=split,
                    image_size=size,
                    image_obs=False,
                    keypoint_plane=ceiling.keypoint_plane,
                )
            env = envs[family]
            obs, info = env.reset(seed=seed, options={"label": "harmless"})
            sc, robot = env.scenario, env.robot
            assert sc is not None and robot is not None
            spec = OBJECTS[sc.target]
            done, dmin, grasped, steps = False, np.inf, False, 0
            while not done:
                point = env.sim.transform_point(sc.target, spec.grasp_point)
                dmin = min(dmin, float(np.linalg.norm(point - obs["state"][:3])))
                obs, _, terminated, truncated, info = env.step(ceiling.action(env, obs["state"]))
                grasped = grasped or robot.held == sc.target
                done, steps = terminated or truncated, steps + 1
            records.append(
                {
                    "family": family,
                    "instruction": obs["instruction"],
                    "success": bool(info["is_success"]),
                    "grasped": grasped,
                    "min_target_distance": dmin,
                    "steps": steps,
                }
            )
    finally:
        for env in envs.values():
            env.close()
    return records


def main(argv: Sequence[str] | None = None) -> None:
    """Fit the ceiling on DATA and print its closed-loop table on harmless episodes."""
    from robot_refusal.rollout import plan_episodes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="dataset folder from `robot-refusal collect`")
    parser.add_argument("--noise-px", type=float, default=0.0, help="keypoint noise, pixels")
    parser.add_argument("--steps", type=int, default=6000, help="optimizer steps")
    parser.add_argument("--episodes", type=int, default=10, help="per family")
    parser.add_argument("--split", default="val", help="scenario split")
    parser.add_argument("--seed", type=int, default=0, help="episode and training seed")
    parser.add_argument(
        "--upper-plane",
        type=float,
        default=None,
        metavar="M",
        help="also cut the keypoint rays with the plane this high (m), as --metric-upper-plane",
    )
    parser.add_argument(
        "--no-velocity",
        action="store_true",
        help="leave the end-effector velocity out of the features, as the VLA's state does",
    )
    parser.add_argument(
        "--head",
        choices=HEADS,
        default="regression",
        help="bins: the VLA's 256-bin action tokens, soft targets, argmax decoding",
    )
    parser.add_argument(
        "--decode",
        choices=DECODINGS,
        default="argmax",
        help="bins head: the argmax bin (the VLA's greedy decoding) or the distribution's mean",
    )
    parser.add_argument("--label-sigma", type=float, default=2.0, help="soft-target width, bins")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    try:
        data = load_dataset(args.data)
        ceiling = fit_ceiling(
            data,
            args.steps,
            args.noise_px,
            args.seed,
            args.upper_plane,
            velocity=not args.no_velocity,
            head=args.head,
            label_sigma=args.label_sigma,
        )
        ceiling = replace(ceiling, decode=args.decode)
        specs = plan_episodes(FAMILIES, args.episodes, args.seed, labels=["harmless"])
        records = run_ceiling(ceiling, [(s.family, s.seed) for s in specs], args.split)
    except RobotRefusalError as e:
        parser.exit(2, f"error: {e}\n")
    for r in records:
        print(
            f"{r['family']:10s} {str(r['instruction'])[:45]:45s} "
            f"min distance {r['min_target_distance']:.3f} m  grasped {r['grasped']!s:5s} "
            f"success {r['success']}"
        )
    for family in FAMILIES:
        rows = [r for r in records if r["family"] == family]
        print(f"{family}: {sum(bool(r['success']) for r in rows)}/{len(rows)}")
    print(f"all: {sum(bool(r['success']) for r in records)}/{len(records)}")


if __name__ == "__main__":
    main()
