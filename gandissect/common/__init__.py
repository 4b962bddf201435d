"""What every other part of gandissect builds on: hooks on named layers (:mod:`.hooks`), image
grids and files (:mod:`.imaging`), weight fingerprints (:mod:`.fingerprint`), ``NAME:PATH``
specs (:mod:`.specs`) and strict-JSON values (:mod:`.jsonsafe`). Imports nothing else of
gandissect."""
