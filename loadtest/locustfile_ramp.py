"""Every hubbub user class under a stepped ramp that stops at the deployment's knee.

    hubbub loadtest rustdesk --ramp --ramp-step 20 --ramp-every 15 --ramp-max 1000
    locust -f loadtest/locustfile_ramp.py --headless --host 127.0.0.1 ... DeviceUser ControllerUser
"""

from __future__ import annotations

from loadtest.shapes import StepRamp
from loadtest.users import (
    ControllerUser,
    DeviceUser,
    PlayerUser,
    RelayPairUser,
    WebControllerUser,
    WebDeviceUser,
)


__all__ = ["ControllerUser", "DeviceUser", "PlayerUser", "RelayPairUser", "StepRamp",
           "WebControllerUser", "WebDeviceUser"]
