"""``python -m stemtrace.cli``: the ``stemtrace`` command."""

from stemtrace.cli.main import main

raise SystemExit(main())
