"""`python -m lstmkit` (and `torchrun -m lstmkit`) run the command-line interface."""

from lstmkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
