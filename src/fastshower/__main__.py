"""`python -m fastshower` runs the command line."""

from fastshower.cli import main

main()
