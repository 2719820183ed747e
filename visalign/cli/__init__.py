"""`visalign` command line: `main.COMMANDS` lists the commands; each module has `make_parser()` and `main(argv)`."""
