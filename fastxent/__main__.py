"""``python -m fastxent``: the same as the ``fastxent`` command (see fastxent.cli)."""
import sys

from fastxent.cli import main

if __name__ == "__main__":
    sys.exit(main())
