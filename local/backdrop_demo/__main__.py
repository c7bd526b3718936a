"""``python -m backdrop_demo``: the end-to-end demo (``make demo``)."""

from backdrop_demo.demo import main

raise SystemExit(main())
