"""`python -m memcollab.cli`: the same command as `memcollab`."""

from memcollab.cli.app import main

main()
