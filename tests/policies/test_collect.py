"""``robot-refusal collect``: the LeRobotDataset v3.0 folder, its stats, video and resume."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from robot_refusal.cli import main
from robot_refusal.envs import RobotRefusalEnv, ScriptedExpert
from robot_refusal.envs.env import STATE_NAMES
from robot_refusal.errors import CollectError, ConfigError, DatasetError
from robot_refusal.policies.collect import STAGING, CollectConfig, collect
from robot_refusal.policies.dataset import DemoDataset, load_dataset
from robot_refusal.policies.lerobot_format import (
    ACTION_NAMES,
    DATA_PATH,
    EPISODES_PATH,
    IMAGE_KEY,
    INFO_PATH,
    STATS_PATH,
    TASKS_PATH,
    VIDEO_PATH,
)
from robot_refusal.rollout import plan_episodes, run_episode

FAMILIES = ("keepout", "handover")
WHERE = {"chunk_index": 0, "file_index": 0}
VIDEO = VIDEO_PATH.format(video_key=IMAGE_KEY, **WHERE)


def cli_args(out: Path, episodes: int = 1, *extra: str) -> list[str]:
    return [
        "collect",
        "--out",
        str(out),
        "--families",
        ",".join(FAMILIES),
        "--episodes",
        str(episodes),
        "--quiet",
        *extra,
    ]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("collect") / "demo"
    collect(out, families=FAMILIES, episodes=1, seed=0, progress=False)
    return out


@pytest.fixture(scope="module")
def ds(dataset_dir: Path) -> DemoDataset:
    return load_dataset(dataset_dir)


def episode_rows(ds: DemoDataset) -> list[dict]:
    return ds.episodes.to_pylist()


# -- layout and meta -------------------------------------------------------------------------
def test_layout_is_lerobot_v3(dataset_dir: Path) -> None:
    for rel in (INFO_PATH, STATS_PATH, TASKS_PATH, VIDEO):
        assert (dataset_dir / rel).is_file(), rel
    assert (dataset_dir / DATA_PATH.format(**WHERE)).is_file()
    assert (dataset_dir / EPISODES_PATH.format(**WHERE)).is_file()
    assert not (dataset_dir / STAGING).exists()


def test_info_features_have_names_and_totals_match(ds: DemoDataset) -> None:
    info = ds.info
    assert info["codebase_version"] == "v3.0"
    assert info["robot_type"] == "franka_panda"
    assert info["fps"] == 10
    assert info["total_episodes"] == ds.episodes.num_rows == 2 * len(FAMILIES)
    assert info["total_frames"] == ds.frames.num_rows == sum(r["length"] for r in episode_rows(ds))
    assert info["total_tasks"] == len(ds.tasks)
    assert info["splits"] == {"train": f"0:{info['total_episodes']}"}
    feats = info["features"]
    for name, ft in feats.items():
        assert ft["names"], name
        assert {"dtype", "shape"} <= set(ft), name
        if ft["dtype"] != "video":
            assert len(ft["names"]) == math.prod(ft["shape"]), name
            assert name in ds.frames.column_names
    assert feats["observation.state"]["names"] == list(STATE_NAMES)
    assert (
        feats["action"]["names"]
        == list(ACTION_NAMES)
        == [
            "delta_x",
            "delta_y",
            "delta_z",
            "gripper",
            "refuse",
        ]
    )
    assert feats[IMAGE_KEY]["shape"] == [64, 64, 3]
    assert feats[IMAGE_KEY]["names"] == ["height", "width", "channels"]
    assert ds.array("observation.state").shape == (ds.frames.num_rows, 8)
    assert ds.array("action").dtype == np.float32


def test_indices_and_timestamps_are_consistent(ds: DemoDataset) -> None:
    n = ds.frames.num_rows
    np.testing.assert_array_equal(ds.array("index"), np.arange(n))
    start = 0
    for row in episode_rows(ds):
        ep = row["episode_index"]
        stop = start + row["length"]
        assert (row["dataset_from_index"], row["dataset_to_index"]) == (start, stop)
        assert row[f"videos/{IMAGE_KEY}/from_timestamp"] == pytest.approx(start / 10)
        assert row[f"videos/{IMAGE_KEY}/to_timestamp"] == pytest.approx(stop / 10)
        np.testing.assert_array_equal(ds.array("episode_index")[start:stop], ep)
        frame_index = ds.array("frame_index")[start:stop]
        np.testing.assert_array_equal(frame_index, np.arange(row["length"]))
        ts = ds.array("timestamp")[start:stop]
        np.testing.assert_allclose(ts, frame_index / 10, atol=1e-6)
        done = ds.array("next.done")[start:stop]
        assert done[-1] and not done[:-1].any()
        start = stop


def test_stats_match_numpy(ds: DemoDataset) -> None:
    for name, ft in ds.info["features"].items():
        if ft["dtype"] in ("video", "string"):
            continue
        x = ds.array(name).astype(np.float64).reshape(ds.frames.num_rows, -1)
        st = ds.stats[name]
        assert st["count"] == [ds.frames.num_rows]
        for key, fn in (("min", np.min), ("max", np.max), ("mean", np.mean), ("std", np.std)):
            np.testing.assert_allclose(st[key], fn(x, axis=0), rtol=1e-9, atol=1e-12, err_msg=name)
        for key, q in (("q01", 0.01), ("q99", 0.99)):
            np.testing.assert_allclose(st[key], np.quantile(x, q, axis=0), atol=1e-12)
    for name in ("observation.state", "action"):
        assert (
            len(ds.stats[name]["q01"])
            == len(ds.stats[name]["q99"])
            == len(ds.info["features"][name]["names"])
        )


def test_image_stats_are_per_channel_in_unit_range(ds: DemoDataset) -> None:
    frames = np.concatenate([ds.video_frames(i) for i in range(ds.episodes.num_rows)])
    x = frames.reshape(-1, 3) / 255.0
    st = ds.stats[IMAGE_KEY]
    assert st["count"] == [len(frames)]
    for key in ("min", "max", "mean", "std"):
        assert np.asarray(st[key]).shape == (3, 1, 1)
    np.testing.assert_allclose(np.ravel(st["mean"]), x.mean(axis=0), atol=2e-3)
    np.testing.assert_allclose(np.ravel(st["std"]), x.std(axis=0), atol=2e-3)
    np.testing.assert_allclose(np.ravel(st["min"]), x.min(axis=0), atol=3 / 255)
    np.testing.assert_allclose(np.ravel(st["max"]), x.max(axis=0), atol=3 / 255)


def test_tasks_round_trip(dataset_dir: Path, ds: DemoDataset) -> None:
    table = pq.read_table(dataset_dir / TASKS_PATH)
    assert table.column("task_index").to_pylist() == list(range(table.num_rows))
    pandas_meta = json.loads(table.schema.metadata[b"pandas"])
    assert pandas_meta["index_columns"] == ["task"]
    task_index = ds.array("task_index")
    for row in episode_rows(ds):
        (task,) = row["tasks"]
        assert task == row["instruction"] == ds.tasks[row["task_index"]]
        start, stop = row["dataset_from_index"], row["dataset_to_index"]
        np.testing.assert_array_equal(task_index[start:stop], row["task_index"])


# -- content -----------------------------------------------------------------------------------
def test_harmful_episodes_are_one_refusal_frame(ds: DemoDataset) -> None:
    action, refused = ds.array("action"), ds.array("refused")
    for row in episode_rows(ds):
        start, stop = row["dataset_from_index"], row["dataset_to_index"]
        labels = set(ds.array("label")[start:stop])
        assert labels == {row["label"]}
        if row["label"] == "harmful":
            assert row["length"] == 1 and row["refused"]
            np.testing.assert_array_equal(action[start], [0, 0, 0, -1, 1])
            assert refused[start]
        else:
            assert row["length"] > 1 and row["is_success"]
            assert not action[start:stop, 4].any()
            assert not refused[start:stop].any()


def test_cautious_flags_on_keepout(ds: DemoDataset) -> None:
    cautious = ds.array("cautious")
    for row in episode_rows(ds):
        start, stop = row["dataset_from_index"], row["dataset_to_index"]
        assert int(cautious[start:stop].sum()) == row["cautious_steps"]
        if row["family"] == "keepout" and row["label"] == "harmless":
            assert 0 < row["cautious_steps"] < row["length"]


def test_video_frames_match_env_images(ds: DemoDataset) -> None:
    specs = plan_episodes(FAMILIES, 1, 0)
    ep = next(i for i, s in enumerate(specs) if s.family == "handover" and s.label == "harmless")
    env = RobotRefusalEnv("handover", split="train", image_size=(64, 64))
    images, states = [], []
    try:

        def hook(obs: dict, info0: dict, action: dict, info: dict, agent: object) -> None:
            images.append(obs["image"])
            states.append(obs["state"])

        run_episode(env, ScriptedExpert(env), specs[ep], on_step=hook)
    finally:
        env.close()
    decoded = ds.video_frames(ep)
    assert decoded.shape == (len(images), 64, 64, 3) and decoded.dtype == np.uint8
    err = np.abs(decoded.astype(int) - np.stack(images).astype(int))
    assert err.max() <= 3 and err.mean() < 0.5
    row = ds.episode(ep)
    rows = slice(row["dataset_from_index"], row["dataset_to_index"])
    np.testing.assert_array_equal(ds.array("observation.state")[rows], np.stack(states))


# -- resume, errors ----------------------------------------------------------------------------
def dataset_bytes(root: Path) -> dict[str, bytes]:
    files = [p for p in root.rglob("*") if p.is_file() and p.name != "config.json"]
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(files)}


def test_resume_after_kill_matches_clean_run(tmp_path: Path) -> None:
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "robot_refusal.cli", *cli_args(out, 2)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list((out / STAGING).glob("*.parquet")):
            assert proc.poll() is None, "collect ended before an episode was staged"
            assert time.monotonic() < deadline, "no episode staged within 60 s"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / INFO_PATH).exists(), "the kill came too late to interrupt the run"
    staged = sorted(p.name for p in (out / STAGING).glob("*.parquet"))
    assert 1 <= len(staged) < 8
    # what writers killed mid-write leave: a staged episode, a video in consolidation
    (out / STAGING / ".handover.harmless.00001.parquet.999.tmp").write_bytes(b"cut short")
    (out / VIDEO).parent.mkdir(parents=True)
    (out / VIDEO).with_name(".file-000.mp4.999.tmp.mp4").write_bytes(b"cut short")

    info = collect(out, families=FAMILIES, episodes=2, resume=True, progress=False)
    clean = tmp_path / "clean"
    collect(clean, families=FAMILIES, episodes=2, progress=False)

    assert info["total_episodes"] == 8
    ids = load_dataset(out).episodes.column("episode_id").to_pylist()
    assert ids == [s.episode_id for s in plan_episodes(FAMILIES, 2, 0)]
    killed_files, clean_files = dataset_bytes(out), dataset_bytes(clean)
    assert sorted(killed_files) == sorted(clean_files)
    for name, data in clean_files.items():
        assert killed_files[name] == data, f"{name} differs after resume"


def test_workers_write_the_same_files_as_one_process(dataset_dir: Path, tmp_path: Path) -> None:
    """``workers=2`` splits the plan over two spawned processes; episodes depend only on their
    seeds and consolidation on the staged files, so the dataset is the same, byte for byte."""
    out = tmp_path / "two"
    info = collect(out, families=FAMILIES, episodes=1, workers=2, progress=False)
    assert info["total_episodes"] == 2 * len(FAMILIES)
    assert not (out / STAGING).exists()
    two, one = dataset_bytes(out), dataset_bytes(dataset_dir)
    assert sorted(two) == sorted(one)
    assert all(two[name] == data for name, data in one.items())
    assert json.loads((out / "config.json").read_text()) == json.loads(
        (dataset_dir / "config.json").read_text()
    )  # workers is not a setting: a resume may use another number


def test_failing_worker_is_one_typed_line_and_keeps_staged_episodes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "broken"
    args = ["collect", "--out", str(out), "--families", "context", "--episodes", "2", "--quiet"]
    # a folder where a worker must put its episode (context.harmful.00000): the rename fails
    (out / STAGING / "context.harmful.00000.parquet").mkdir(parents=True)
    (out / "config.json").write_text(
        json.dumps(CollectConfig(families=("context",), episodes=2).as_dict())
    )
    with pytest.raises(CollectError, match="rerun with --resume") as exc:
        collect(out, families=["context"], episodes=2, workers=2, resume=True, progress=False)
    assert "\n" not in str(exc.value) and "IsADirectoryError" in str(exc.value)
    assert main([*args, "--workers", "2", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "worker failed on context/harmful/00000" in err and len(err.splitlines()) == 1
    (out / STAGING / "context.harmful.00000.parquet").rmdir()
    assert main([*args, "--workers", "2", "--resume"]) == 0
    assert load_dataset(out).episodes.num_rows == 4


def test_existing_folder_needs_resume_or_force(
    dataset_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(cli_args(dataset_dir)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("robot-refusal: error:") and "--resume" in err and "--force" in err


def test_resume_with_other_settings_is_an_error(
    dataset_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*cli_args(dataset_dir), "--resume", "--seed", "1", "--image-size", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "seed" in err and "image_size" in err and "--force" in err


def test_unknown_family_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x"
    assert main(["collect", "--out", str(out), "--families", "keepot", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "keepout" in err
    assert not out.exists()


def test_resume_of_finished_dataset_changes_nothing(dataset_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(dataset_dir, copy)
    before = dataset_bytes(copy)
    (copy / STAGING).mkdir()  # as if killed after info.json, before staging was removed
    (copy / STAGING / "keepout.harmful.00000.parquet").write_bytes(b"left over")
    info = collect(copy, families=FAMILIES, episodes=1, resume=True, progress=False)
    assert info == json.loads((dataset_dir / INFO_PATH).read_text())
    assert dataset_bytes(copy) == before
    assert not (copy / STAGING).exists()


def test_force_restarts(dataset_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(dataset_dir, copy)
    args = ["collect", "--out", str(copy), "--families", "context", "--episodes", "1", "--quiet"]
    assert main([*args, "--force"]) == 0
    ds = load_dataset(copy)
    assert ds.info["total_episodes"] == 2
    assert set(ds.array("family")) == {"context"}


@pytest.mark.parametrize(
    "rel",
    [INFO_PATH, STATS_PATH, TASKS_PATH, DATA_PATH.format(**WHERE), EPISODES_PATH.format(**WHERE)],
)
@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_loader_names_missing_or_corrupt_file(
    dataset_dir: Path, tmp_path: Path, rel: str, damage: str
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(dataset_dir, copy)
    path = copy / rel
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match=re.escape(Path(rel).name)) as exc:
        load_dataset(copy)
    assert "\n" not in str(exc.value)


def test_loader_names_a_missing_folder_and_how_to_make_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist; collect one") as exc:
        load_dataset(tmp_path / "nowhere")
    assert "--force" not in str(exc.value)
    assert f"--out {tmp_path / 'nowhere'}" in str(exc.value)


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_video_loader_names_missing_or_corrupt_file(
    dataset_dir: Path, tmp_path: Path, damage: str
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(dataset_dir, copy)
    path = copy / VIDEO
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:1000])
    ds = load_dataset(copy)
    with pytest.raises(DatasetError, match=re.escape(VIDEO)) as exc:
        ds.video_frames(1)
    assert "\n" not in str(exc.value)


def test_keypoint_plane_labels_footprints_and_is_recorded(ds: DemoDataset, tmp_path: Path) -> None:
    """``--keypoint-plane`` changes the handover point's label (12 cm up) and not the gripper's,
    and the folder says which labels it holds."""
    out = tmp_path / "foot"
    assert main([*cli_args(out), "--families", "handover", "--keypoint-plane", "0.02"]) == 0
    foot = load_dataset(out)
    assert foot.keypoint_plane == 0.02 and ds.keypoint_plane is None

    def first_harmless(d: DemoDataset) -> np.ndarray:
        rows = [e for e in d.episodes.to_pylist() if e["family"] == "handover"]
        ep = next(e["episode_index"] for e in rows if e["label"] == "harmless")
        i = int(np.flatnonzero(d.array("episode_index") == ep)[0])
        return d.array("annotation.keypoints_uv")[i].reshape(4, 2)

    a, b = first_harmless(ds), first_harmless(foot)
    np.testing.assert_array_equal(a[3], b[3])
    assert np.linalg.norm(a[1] - b[1]) * 63 / 2 > 2.0  # pixels


def test_deliberate_misses_are_recorded_and_training_skips_or_masks_them(
    ds: DemoDataset, tmp_path: Path
) -> None:
    """``--miss-rate 1``: the harmless episode's miss frames have ``imitate`` False and
    ``load_tensors`` leaves exactly those out; a plain collection imitates every frame."""
    from robot_refusal.policies.training import load_tensors

    out = tmp_path / "miss"
    assert main([*cli_args(out), "--families", "pick_place", "--miss-rate", "1"]) == 0
    miss = load_dataset(out)
    imitate, label = miss.array("imitate"), miss.array("label")
    assert imitate[label == "harmful"].all()
    assert 3 < (~imitate[label == "harmless"]).sum() < (label == "harmless").sum() // 2
    tensors = load_tensors(miss)
    assert len(tensors.states) == imitate.sum()
    np.testing.assert_array_equal(tensors.states, miss.array("observation.state")[imitate])
    assert json.loads((out / "config.json").read_text())["miss_rate"] == 1.0
    assert ds.array("imitate").all()

    # --miss-frames keypoints: every frame kept, the misses' actions masked out of the labels
    import torch

    from robot_refusal.policies.training import (
        Batcher,
        TrainConfig,
        _model,
        build_processor,
        training_loss,
    )

    kept = load_tensors(miss, "keypoints")
    assert len(kept.states) == len(imitate) and kept.imitate is not None
    np.testing.assert_array_equal(kept.imitate, imitate)
    processor = build_processor(miss, kept)
    assert processor.actions == build_processor(miss, tensors).actions  # bins from labels only
    batcher = Batcher(kept, processor)
    missed = np.flatnonzero(~imitate)
    assert (batcher.labels[missed] == -100).all()
    assert (batcher.labels[np.flatnonzero(imitate)] != -100).any(dim=1).all()
    config = TrainConfig(data=str(out), out=str(tmp_path / "unused"), grounded_keypoints=2)
    model, _ = _model(config, miss, kept, None)
    batch = batcher(missed[:8])
    loss, token_ce, mse = training_loss(model, batch, 5.0, 2.0, 1.0)
    assert float(token_ce.detach()) == 0.0 and mse is not None  # no action label; keypoints
    assert torch.isfinite(loss)
    loss.backward()
    assert float(model.vision_encoder.keypoint_heads.weight.grad.abs().sum()) > 0
    assert float(model.lm_head.weight.grad.abs().sum()) == 0.0  # no action was imitated
    with pytest.raises(ConfigError, match="miss_frames"):
        load_tensors(miss, "all")
    with pytest.raises(ConfigError, match="miss_frames"):
        TrainConfig(data="d", out="o", miss_frames="both").check()


def test_expert_tolerances_are_recorded_only_when_changed() -> None:
    from robot_refusal.errors import ConfigError
    from robot_refusal.policies.collect import CollectConfig

    assert "release_tolerance" not in CollectConfig().as_dict()  # older folders still resume
    assert CollectConfig(release_tolerance=0.02).as_dict()["release_tolerance"] == 0.02
    with pytest.raises(ConfigError, match="release_tolerance"):
        CollectConfig(release_tolerance=0.0).plan()
    assert "grasp_tolerance" not in CollectConfig().as_dict()
    assert CollectConfig(grasp_tolerance=0.01).as_dict()["grasp_tolerance"] == 0.01
    with pytest.raises(ConfigError, match="grasp_tolerance"):
        CollectConfig(grasp_tolerance=0.03).plan()
    assert "slow_band" not in CollectConfig().as_dict()
    assert CollectConfig(slow_band=0.3).as_dict()["slow_band"] == 0.3
    with pytest.raises(ConfigError, match="slow_band"):
        CollectConfig(slow_band=0.1).plan()
    assert "miss_rate" not in CollectConfig().as_dict()
    with pytest.raises(ConfigError, match="miss_rate"):
        CollectConfig(miss_rate=-0.1).plan()
    assert "keypoint_plane" not in CollectConfig().as_dict()
    assert CollectConfig(keypoint_plane=0.02).as_dict()["keypoint_plane"] == 0.02
    with pytest.raises(ConfigError, match="keypoint_plane"):
        CollectConfig(keypoint_plane=-0.01).plan()
