"""Error hierarchy of robot-refusal.

Every error raised on bad user input derives from :class:`RobotRefusalError`, so that the CLI can
turn it into one line and exit code 2. Errors say what was expected, what came and what to do.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RobotRefusalError(Exception):
    """Base class of all errors that robot-refusal raises on bad input or bad files."""


class UnknownNameError(RobotRefusalError, KeyError):
    """An id, family, split, task or policy name that is not registered.

    The message lists the valid names and, where one is close, a "did you mean" suggestion.
    """

    def __init__(self, kind: str, name: object, valid: Iterable[str], most: int = 20) -> None:
        valid = sorted(valid)
        close = difflib.get_close_matches(name, valid, n=1) if isinstance(name, str) else []
        hint = f" Did you mean {close[0]!r}?" if close else ""
        self.kind, self.name, self.valid = kind, name, valid
        shown = ", ".join(valid[:most])
        if len(valid) > most:
            shown += f", ... ({len(valid)} in all)"
        super().__init__(f"unknown {kind} {name!r}; valid: {shown}.{hint}")

    def __str__(self) -> str:  # KeyError would quote the message otherwise
        return str(self.args[0])


class ConfigError(RobotRefusalError, ValueError):
    """A setting out of range or of the wrong type (episodes < 1, empty family list, ...)."""


class EnvStateError(RobotRefusalError, RuntimeError):
    """An env used out of order: step before reset, after the episode ended or after close;
    a snapshot restored into another episode."""


class SimulatorError(RobotRefusalError, RuntimeError):
    """PyBullet could not start (for example the GUI without a display)."""


class InvalidObservationError(RobotRefusalError, ValueError):
    """An observation a policy cannot read: wrong image shape, NaN state, empty or too long
    instruction, missing key."""


class CheckpointError(RobotRefusalError):
    """A policy folder that is missing, incomplete (no config) or holds a corrupt weights file."""


class InvalidActionError(RobotRefusalError, ValueError):
    """An action that is not in the action space (wrong shape, NaN, wrong type)."""


class SuiteError(RobotRefusalError, ValueError):
    """A scenario suite data file that is missing, malformed or inconsistent."""


class RunFolderError(RobotRefusalError):
    """A run folder that exists without ``--resume``/``--force``, or holds corrupt records."""


class DatasetError(RobotRefusalError):
    """A dataset folder that is corrupt or was written with different settings."""


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest of ``valid`` to ``name``, else ``""``."""
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


class UnsupportedModelError(RobotRefusalError, TypeError):
    """A model whose residual-stream writers the toolkit cannot locate or must not edit: an
    unregistered architecture, post-sublayer norms (Gemma2/Gemma3), fused MoE experts, or a
    registered family whose modules are not where its adapter expects them."""


class DirectionError(RobotRefusalError, ValueError):
    """A direction or subspace that does not fit: its width differs from the model's, it is
    zero or not orthonormal, or its file is missing, corrupt or of another format."""


class SelectionError(RobotRefusalError):
    """No candidate direction passed the selection filters (DESIGN.md section 4)."""


class WorkerError(RobotRefusalError):
    """A worker process of ``eval``, ``attack`` or ``collect`` failed or died; the finished
    episodes stay on disk and ``--resume`` continues from them."""


class AttackError(WorkerError):
    """An attack worker process failed or died; the finished episodes stay on disk."""


class CollectError(WorkerError):
    """A ``collect --workers`` process failed or died; the staged episodes stay on disk and
    ``--resume`` continues from them."""
