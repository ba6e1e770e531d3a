"""``python -m hired.cli``: the ``hired`` command."""

import sys

from hired.cli import main

if __name__ == "__main__":
    sys.exit(main())
