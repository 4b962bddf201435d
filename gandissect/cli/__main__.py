"""``python -m gandissect.cli ...``: the ``gandissect`` command line, as before it was a
package (``python -m gandissect`` is the same)."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
