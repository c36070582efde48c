"""``python -m vsm_edge.agent`` is the ``vsm-edge`` command."""

from ._cli import main

raise SystemExit(main())
