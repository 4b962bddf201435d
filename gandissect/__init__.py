"""gandissect: dissect the units of generative image models, intervene on them, paint with them.

The public API is re-exported here; submodules are implementation details.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
