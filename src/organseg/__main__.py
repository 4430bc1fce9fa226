"""`python -m organseg` runs the command line."""

import sys

from organseg.cli import main

if __name__ == "__main__":
    sys.exit(main())
