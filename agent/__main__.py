"""``python -m vsm_edge.agent`` is the ``vsm-edge`` command."""

from .cli.main import main

raise SystemExit(main())
