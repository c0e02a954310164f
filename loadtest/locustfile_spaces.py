"""Spaces host load: players joining, chatting, renaming and moving at 15 Hz."""

from __future__ import annotations

from loadtest.users import PlayerUser


__all__ = ["PlayerUser"]
