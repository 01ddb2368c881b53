"""``python -m worker.cli``: the same as the ``leadsync`` command."""

from worker.cli import main

main()
