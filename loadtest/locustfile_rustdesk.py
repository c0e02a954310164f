"""RustDesk ID server load: registered devices (heartbeats, online queries), controllers and
web clients (WebSocket)."""

from __future__ import annotations

from loadtest.users import ControllerUser, DeviceUser, WebControllerUser


__all__ = ["ControllerUser", "DeviceUser", "WebControllerUser"]
