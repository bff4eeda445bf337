"""``python -m kappaflow.cli``: the same as the ``kappaflow`` console script."""

from kappaflow.cli import main

raise SystemExit(main())
