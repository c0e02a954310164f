"""RustDesk ID server load: registered devices (heartbeats, online queries) and controllers."""

from __future__ import annotations

from loadtest.users import ControllerUser, DeviceUser


__all__ = ["ControllerUser", "DeviceUser"]
