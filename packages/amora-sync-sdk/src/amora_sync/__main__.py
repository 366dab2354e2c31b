"""``python -m amora_sync``: the same as the ``amora`` command."""

from amora_sync._cli import main

raise SystemExit(main())
