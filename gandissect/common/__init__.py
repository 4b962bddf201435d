"""What every other part of gandissect builds on: hooks on named layers (:mod:`.hooks`), image
grids and files (:mod:`.imaging`), weight fingerprints (:mod:`.fingerprint`) and ``NAME:PATH``
specs (:mod:`.specs`). Imports nothing else of gandissect."""
