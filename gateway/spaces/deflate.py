"""permessage-deflate for the spaces port that leaves binary messages uncompressed.

Position batches are quantised coordinates that barely compress, and one goes to every player
15 times a second: deflating them cost more CPU than the rest of the fan-out. RFC 7692 lets an
endpoint send any message uncompressed (RSV1 clear), so text (JSON) frames stay compressed with
the usual context takeover and binary frames go out as they are; clients decode both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import Frame, Opcode


__all__ = ["TextOnlyDeflate", "TextOnlyDeflateFactory", "extensions"]


class TextOnlyDeflate(PerMessageDeflate):
    """Compresses text messages only; binary messages keep RSV1 clear."""

    _raw = False

    def encode(self, frame: Frame) -> Frame:
        if frame.opcode is Opcode.BINARY:
            self._raw = not frame.fin
            return frame
        if frame.opcode is Opcode.CONT and self._raw:
            self._raw = not frame.fin
            return frame
        return super().encode(frame)


class TextOnlyDeflateFactory(ServerPerMessageDeflateFactory):
    def process_request_params(
        self, params: Sequence[tuple[str, str | None]], accepted_extensions: Sequence[Extension],
    ) -> tuple[list[tuple[str, str | None]], PerMessageDeflate]:
        response, ext = super().process_request_params(params, accepted_extensions)
        return response, TextOnlyDeflate(
            ext.remote_no_context_takeover, ext.local_no_context_takeover,
            ext.remote_max_window_bits, ext.local_max_window_bits, ext.compress_settings)


def extensions() -> list[Any]:
    """The server extension list (websockets' default deflate settings, text only)."""
    return [TextOnlyDeflateFactory(server_max_window_bits=12, client_max_window_bits=12,
                                   compress_settings={"memLevel": 5})]
