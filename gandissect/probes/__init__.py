"""Probe sets: images with exact, densely labelled concept masks, for Network Dissection of any
network (a classifier run on the images) without a segmenter.

The contract is :class:`.base.ProbeSet`; :mod:`.toyworld` renders Toyworld scenes with their
exact masks, :mod:`.broden` reads a folder in the Broden layout (index.csv, label.csv,
category.csv, c_*.csv, images/) and :mod:`.write_broden` writes any probe set in that layout
(``python -m gandissect.probes.write_broden OUT --count N``). Imports only
:mod:`gandissect.common`; the dissection engine duck-types probe sets and never imports this.
"""
