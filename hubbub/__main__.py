"""``python -m hubbub``: the same as the ``hubbub`` console script."""

from hubbub.cli import main


raise SystemExit(main())
