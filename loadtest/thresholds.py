"""The pass/fail gate of headless load-test runs (kept free of locust imports: importing locust
monkey-patches the standard library, which a test process or a benchmark must not suffer)."""

from __future__ import annotations

from typing import Any


__all__ = ["check_thresholds"]


def check_thresholds(stats: Any, options: Any) -> list[str]:
    """The thresholds ``stats.total`` breaks (empty when the run passes)."""
    total = stats.total
    problems: list[str] = []
    max_fail = float(getattr(options, "max_fail_ratio", 0.01))
    if total.fail_ratio > max_fail:
        problems.append(f"fail ratio {total.fail_ratio:.3f} > {max_fail}")
    max_p95 = float(getattr(options, "max_p95_ms", 0.0) or 0.0)
    if max_p95 and total.num_requests:
        p95 = total.get_response_time_percentile(0.95)
        if p95 > max_p95:
            problems.append(f"p95 {p95:.0f} ms > {max_p95:.0f} ms")
    max_avg = float(getattr(options, "max_avg_ms", 0.0) or 0.0)
    if max_avg and total.num_requests and total.avg_response_time > max_avg:
        problems.append(f"average {total.avg_response_time:.1f} ms > {max_avg:.1f} ms")
    min_requests = int(getattr(options, "min_requests", 0) or 0)
    if total.num_requests < min_requests:
        problems.append(f"{total.num_requests} requests < {min_requests}")
    return problems
