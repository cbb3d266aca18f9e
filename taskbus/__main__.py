"""`python -m taskbus`: the `taskbus` command, for an environment without its console script."""

from taskbus.cli import main

if __name__ == "__main__":
    main(prog_name="taskbus")
