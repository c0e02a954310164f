"""A stepped ramp that finds a deployment's knee: more users every step until a limit breaks.

Used by ``locustfile_ramp.py`` (``hubbub loadtest --ramp``): every ``--ramp-every`` seconds it
adds ``--ramp-step`` users, up to ``--ramp-max``. At the end of each step it judges that step
alone: when its fail ratio exceeds ``--ramp-stop-fail-ratio`` or the current p95 (locust's
sliding window of the last seconds) exceeds ``--ramp-stop-p95-ms``, the run stops and reports
the last step that held as the capacity.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from locust import LoadTestShape


__all__ = ["RampResult", "StepRamp"]

log = logging.getLogger("hubbub.loadtest")


@dataclass
class RampResult:
    held_users: int
    """Users of the last step that stayed within the limits (0: even the first step broke)."""
    broke_users: int | None
    """Users of the step that broke a limit (None: the ramp reached --ramp-max)."""
    reason: str

    def line(self) -> str:
        if self.broke_users is None:
            return f"ramp: held {self.held_users} users (the maximum) — {self.reason}"
        return (f"ramp: capacity {self.held_users} users; {self.broke_users} users broke a "
                f"limit — {self.reason}")


class StepRamp(LoadTestShape):
    """``--ramp-step`` more users every ``--ramp-every`` s until a limit breaks."""

    def __init__(self) -> None:
        base: Any = LoadTestShape  # locust's shape methods are untyped
        base.__init__(self)
        self.level = 0
        self.users = 0
        self.mark = (0, 0)
        self.result: RampResult | None = None

    def _opts(self) -> Any:
        assert self.runner is not None
        return self.runner.environment.parsed_options

    def _judge(self) -> str | None:
        """Why the step that just ended broke a limit, or None if it held."""
        assert self.runner is not None
        opts = self._opts()
        total = self.runner.environment.stats.total
        requests = total.num_requests - self.mark[0]
        failures = total.num_failures - self.mark[1]
        max_fail = float(getattr(opts, "ramp_stop_fail_ratio", 0.01))
        if requests and failures / requests > max_fail:
            return f"fail ratio {failures / requests:.3f} > {max_fail}"
        max_p95 = float(getattr(opts, "ramp_stop_p95_ms", 500.0))
        p95 = total.get_current_response_time_percentile(0.95) or 0.0
        if max_p95 and p95 > max_p95:
            return f"p95 {p95:.0f} ms > {max_p95:.0f} ms"
        if not requests:
            return "no requests in the step"
        return None

    def tick(self) -> tuple[int, float] | None:
        if self.result is not None:
            return None
        assert self.runner is not None
        opts = self._opts()
        step = max(1, int(getattr(opts, "ramp_step", 10)))
        every = max(1.0, float(getattr(opts, "ramp_every", 15.0)))
        top = max(step, int(getattr(opts, "ramp_max", 500)))
        # locust resets start_time when the test starts (get_run_time is untyped)
        level = int((time.perf_counter() - self.start_time) // every) + 1
        if level != self.level:
            if self.level:
                broke = self._judge()
                if broke is not None:
                    self.result = RampResult(max(0, self.users - step), self.users, broke)
                elif self.users >= top:
                    self.result = RampResult(self.users, None, "no limit broken")
                if self.result is not None:
                    log.warning("%s", self.result.line())
                    self.runner.environment.ramp_result = self.result  # type: ignore[attr-defined]
                    return None
            total = self.runner.environment.stats.total
            self.mark = (total.num_requests, total.num_failures)
            self.level = level
            self.users = min(top, level * step)
            log.info("ramp: step %d, %d users", level, self.users)
        return self.users, float(max(1, step))
