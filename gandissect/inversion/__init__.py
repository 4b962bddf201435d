"""Photo inversion for editing real images (GANPaint Studio): :func:`invert` a photo into a
generator's paint layer, adapt the later layers to the photo, then paint through the units and
composite the change back into the photo. See :mod:`gandissect.inversion.invert`."""

from .invert import Inversion, InversionSettings, RandomFeatures, adaptable_parameters, invert, psnr
from .photo import MAX_BYTES, MAX_PIXELS, PhotoError, load_photo

__all__ = ["MAX_BYTES", "MAX_PIXELS", "Inversion", "InversionSettings", "PhotoError",
           "RandomFeatures", "adaptable_parameters", "invert", "load_photo", "psnr"]
