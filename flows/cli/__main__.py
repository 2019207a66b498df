"""``python -m flows.cli``: the ``skinflow`` console script."""

from flows.cli import main

main()
