"""Shared ``main()`` of the long-running roles."""

from __future__ import annotations

from collections.abc import Sequence

from hubbub.config import parse_args_for
from hubbub.runtime import ServiceFactory, run_process


__all__ = ["role_main"]


def role_main(role: str, argv: Sequence[str], factory: ServiceFactory) -> int:
    """Parse flags and env for ``role`` (exit 2 on a bad value) and run it."""
    return run_process(parse_args_for(role, argv), factory)
