"""Images: references, the layer store, docker save/load archives, the registry client and the classic builder."""

from machines.runtime.images.store import Image, ImageStore

__all__ = ["Image", "ImageStore"]
