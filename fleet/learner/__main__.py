"""`python -m fleet.learner` (and `torchrun -m fleet.learner`): the learner process."""
import sys

from fleet.learner.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
