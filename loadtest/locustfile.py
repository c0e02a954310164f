"""Every hubbub scenario in one locustfile: pick user classes on the command line.

    locust -f loadtest/locustfile.py --host 127.0.0.1 DeviceUser ControllerUser
"""

from __future__ import annotations

from loadtest.users import (
    ControllerUser,
    DeviceUser,
    PlayerUser,
    RelayPairUser,
    WebControllerUser,
    WebDeviceUser,
)


__all__ = ["ControllerUser", "DeviceUser", "PlayerUser", "RelayPairUser", "WebControllerUser",
           "WebDeviceUser"]
