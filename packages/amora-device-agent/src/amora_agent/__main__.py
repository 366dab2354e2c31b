"""``python -m amora_agent`` is the ``amora-agent`` command."""

from amora_agent._cli import main

raise SystemExit(main())
