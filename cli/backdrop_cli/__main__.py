"""``python -m backdrop_cli``: the same as the ``backdrop`` command."""

from backdrop_cli.main import main

main()
