"""The policy node's state machine: latched e-stop, input watchdog and refusal latch (no rclpy).

States (the ``state`` of the status JSON, :data:`config.STATES`):

- ``stopped``: the e-stop is latched (until :meth:`Supervisor.rearm`), or an input is missing,
  stale (older than ``stale_timeout``) or was rejected, or the policy raised or overran;
- ``idle``: no valid instruction;
- ``refused``: the policy refused the current instruction (until a different one arrives);
- ``acting``: motion allowed.

Precedence is the order above, e-stop first. Only ``acting`` allows motion; every other state
commands zero. :attr:`Supervisor.epoch` increases whenever motion stops being allowed, so a
policy step that started before a stop can tell that its result must be dropped.
All times are seconds on one clock (the node's).
"""

from __future__ import annotations

from dataclasses import dataclass

INPUTS = ("image", "joints")
"""Inputs the watchdog requires fresh."""


@dataclass(frozen=True)
class Verdict:
    """What the node may do now.

    Attributes:
        state: ``idle``, ``acting``, ``refused`` or ``stopped``.
        reason: Why (empty when acting normally).
        motion: True only in ``acting``.
    """

    state: str
    reason: str
    motion: bool


class Supervisor:
    """Watchdog and e-stop latch of one policy node.

    Args:
        stale_timeout: Inputs older than this (s) stop the arm.
        person_timeout: A person pose older than this (s), once one was seen, stops the arm.
        overrun: A policy step running longer than this (s) stops the arm (2 periods).
    """

    def __init__(self, stale_timeout: float, person_timeout: float, overrun: float) -> None:
        self.stale_timeout = stale_timeout
        self.person_timeout = person_timeout
        self.overrun = overrun
        self.estop_reason: str | None = None
        self.last: dict[str, float] = {}
        self.faults: dict[str, str] = {}
        self.instruction: str | None = None
        self.instruction_reason = "no instruction received"
        self.refused = False
        self.step_started: float | None = None
        self.epoch = 0
        self._motion = False

    # -- events ------------------------------------------------------------------------------
    def stop(self, reason: str) -> None:
        """Latch the e-stop (idempotent; the first reason is kept)."""
        if self.estop_reason is None:
            self.estop_reason = reason
        self._halt()

    def rearm(self) -> tuple[bool, str]:
        """Release the e-stop. Returns (success, message) for the Trigger response."""
        if self.estop_reason is None:
            return False, "not stopped; nothing to re-arm"
        was, self.estop_reason = self.estop_reason, None
        self.faults.pop("policy", None)
        return True, f"re-armed (was stopped: {was})"

    def received(self, kind: str, t: float) -> None:
        """A valid ``image``, ``joints`` or ``person`` message at time t clears its fault."""
        self.last[kind] = t
        self.faults.pop(kind, None)

    def rejected(self, kind: str, reason: str) -> None:
        """A rejected message of ``kind``: motion stops until a valid one arrives."""
        self.faults[kind] = f"{kind} rejected: {reason}"
        self.last.pop(kind, None)
        self._halt()

    def set_instruction(self, text: str) -> bool:
        """A valid instruction. Returns True if it differs from the current one (which then
        clears the refusal latch)."""
        changed = text != self.instruction
        if changed:
            self.instruction, self.refused = text, False
        return changed

    def reject_instruction(self, reason: str) -> None:
        """A rejected instruction drops the current one: no motion until a valid one."""
        self.instruction, self.refused = None, False
        self.instruction_reason = f"instruction rejected: {reason}"
        self._halt()

    def refuse(self) -> None:
        """The policy refused the current instruction."""
        self.refused = True
        self._halt()

    def policy_started(self, t: float) -> int:
        """A policy step starts at t; returns the epoch its result must still match."""
        self.step_started = t
        return self.epoch

    def policy_finished(self, error: str | None = None) -> None:
        """The step ended, with the exception text if it raised (that stops motion now; the
        next step may resume)."""
        self.step_started = None
        if error is None:
            self.faults.pop("policy", None)
        else:
            self.faults["policy"] = f"policy raised: {error}"
            self._halt()

    # -- queries -----------------------------------------------------------------------------
    def check(self, now: float, retry_policy: bool = False) -> Verdict:
        """The verdict at ``now``; increments :attr:`epoch` when motion stops being allowed.

        Args:
            now: Time (s).
            retry_policy: Ignore a failure of the previous policy step (the next step is
                allowed to try again; its own failure stops motion again).
        """
        v = self._verdict(now, retry_policy)
        if self._motion and not v.motion:
            self.epoch += 1
        self._motion = v.motion
        return v

    def may_publish(self, epoch: int, now: float) -> bool:
        """True if a step started at ``epoch`` may still command motion at ``now``."""
        return self.check(now).motion and epoch == self.epoch

    def _halt(self) -> None:
        if self._motion:
            self.epoch += 1
        self._motion = False

    def _verdict(self, now: float, retry_policy: bool = False) -> Verdict:
        if self.estop_reason is not None:
            return Verdict("stopped", f"e-stop: {self.estop_reason}", False)
        if self.instruction is None:
            return Verdict("idle", self.instruction_reason, False)
        if self.refused:
            return Verdict("refused", "the policy refused the instruction", False)
        for kind in ("image", "joints", "person", "policy"):
            if kind in self.faults and not (retry_policy and kind == "policy"):
                return Verdict("stopped", self.faults[kind], False)
        for kind in INPUTS:
            t = self.last.get(kind)
            if t is None:
                return Verdict("stopped", f"waiting for {kind}", False)
            if now - t > self.stale_timeout:
                return Verdict("stopped", f"{kind} stale ({now - t:.3f} s old)", False)
        person = self.last.get("person")
        if person is not None and now - person > self.person_timeout:
            return Verdict("stopped", f"person pose stale ({now - person:.3f} s old)", False)
        if self.step_started is not None and now - self.step_started > self.overrun:
            return Verdict("stopped", "policy step overran 2 periods", False)
        return Verdict("acting", "", True)
