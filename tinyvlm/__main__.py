"""`python -m tinyvlm` (and `torchrun -m tinyvlm`): the same command line as `tinyvlm`."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
