"""RustDesk ID server load: registered devices (heartbeats, online queries), controllers, and
WebSocket-mode devices and web clients."""

from __future__ import annotations

from loadtest.users import ControllerUser, DeviceUser, WebControllerUser, WebDeviceUser


__all__ = ["ControllerUser", "DeviceUser", "WebControllerUser", "WebDeviceUser"]
