"""``python -m ketapump``: the same command line as the ``ketapump`` script."""

from ketapump.cli import main

main()
