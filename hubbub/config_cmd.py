"""``hubbub config``: print the configuration table (Markdown)."""

from __future__ import annotations

from collections.abc import Sequence

from hubbub.config import settings_markdown


def main(argv: Sequence[str]) -> int:
    print(settings_markdown())
    return 0
