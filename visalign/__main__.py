"""`python -m visalign` runs the `visalign` command line."""

from visalign.cli.main import entry_point

entry_point()
