"""``python -m backdrop_local.runflow``: run the local Runflow in the foreground."""

from backdrop_local.runflow.cli import main

raise SystemExit(main())
