"""``python -m backdrop_local.samlocal``: see ``cli``."""

from backdrop_local.samlocal.cli import main

raise SystemExit(main())
