"""Shared ``main()`` of the long-running roles."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from hubbub.config import parse_args_for
from hubbub.errors import ConfigError
from hubbub.runtime import ServiceFactory, run_process


__all__ = ["role_main"]


def role_main(role: str, argv: Sequence[str], factory: ServiceFactory) -> int:
    """Parse flags and env for ``role`` (exit 2 on a bad value) and run it."""
    try:
        cfg = parse_args_for(role, argv)
    except ConfigError as exc:
        sys.stderr.write(f"hubbub {role}: error: {exc}\n")
        return 2
    return run_process(cfg, factory)
