"""Layers: functions and tensor helpers with no trainable state of their own (the selective scan, resizing).

May import torch, einops and MONAI; nothing else of this package.
"""

from .simple import plain_tensor, resize

__all__ = ["plain_tensor", "resize"]  # the scan: ``layers.selective_scan.selective_scan`` (its module is patched in tests)
