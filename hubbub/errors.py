"""The one exception tree of hubbub.

::

    HubbubError
    ├── ConfigError                 a flag, env var or file has an invalid value (exit code 2)
    ├── ProtocolError               a wire protocol was violated
    │   ├── LocalProtocolError      we misused a protocol object (a bug on our side)
    │   ├── RemoteProtocolError     the peer sent something invalid; carries a close code
    │   │   └── FrameTooLarge       a length header above the configured cap
    │   └── ContractError           a message between hubbub processes does not fit its contract
    ├── RegistryError               the Redis control plane failed
    │   ├── RegistryUnavailable     Redis cannot be reached (after bounded retries)
    │   ├── NoListener              a process inbox has no subscriber (the process is gone)
    │   ├── RequestTimeout          a request got no reply within its timeout
    │   ├── RemoteError             the target process answered with an error {code, message}
    │   └── LeaseLost               a shard slot lease was taken by someone else
    ├── ServiceError                a process-level service failed to start or run
    └── LoadTestError               a load-test client got a wrong, missing or late answer

Parsers never raise into the event loop: adapters catch ``RemoteProtocolError``, answer or close
the connection, and count the event.
"""

from __future__ import annotations

from typing import Any


__all__ = [
    "ConfigError",
    "ContractError",
    "FrameTooLarge",
    "HubbubError",
    "LeaseLost",
    "LoadTestError",
    "LocalProtocolError",
    "NoListener",
    "ProtocolError",
    "RegistryError",
    "RegistryUnavailable",
    "RemoteError",
    "RemoteProtocolError",
    "RequestTimeout",
    "ServiceError",
]


class HubbubError(Exception):
    """Root of every error hubbub raises on purpose."""

    code = "error"

    def to_dict(self) -> dict[str, Any]:
        """Serialise for another process (inbox replies carry ``{code, message}``)."""
        return {"code": self.code, "message": str(self)}


class ConfigError(HubbubError):
    code = "config"


class ProtocolError(HubbubError):
    code = "protocol"


class LocalProtocolError(ProtocolError):
    code = "local_protocol"


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol; ``close_code`` is a hint for the adapter."""

    code = "remote_protocol"

    def __init__(self, message: str, close_code: int = 1002) -> None:
        super().__init__(message)
        self.close_code = close_code


class FrameTooLarge(RemoteProtocolError):
    code = "frame_too_large"

    def __init__(self, message: str) -> None:
        super().__init__(message, close_code=1009)


class ContractError(ProtocolError):
    """A message between hubbub processes does not fit its contract (unknown version, wrong
    field count or type); the receiver drops it, or answers a request with this error."""

    code = "contract"


class RegistryError(HubbubError):
    code = "registry"


class RegistryUnavailable(RegistryError):
    code = "unavailable"


class NoListener(RegistryError):
    code = "no_listener"


class RequestTimeout(RegistryError):
    code = "timeout"


class RemoteError(RegistryError):
    """An error answered by another process, rebuilt from ``{code, message}``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class LeaseLost(RegistryError):
    code = "lease_lost"


class ServiceError(HubbubError):
    code = "service"


class LoadTestError(HubbubError):
    code = "loadtest"
