"""Photo inversion for editing real images (GANPaint Studio): invert a photo into a generator's
paint layer, adapt the later layers to the photo, then paint through the units and composite
the change back into the photo (:mod:`~gandissect.inversion.invert`); reading photos
(:mod:`~gandissect.inversion.photo`). The public names are re-exported by ``gandissect``."""
