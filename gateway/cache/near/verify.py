"""The second look: is a candidate (within the hash's Hamming bound) the same picture?

The DCT hash sees the layout of light and dark; two products that differ in colour, or in
a label, a logo or a size tag a few percent of the picture wide, have nearly the same hash.
So every candidate is compared locally, and the WORST region decides, never the mean (a
changed corner is a small part of the mean):

* colour: the CIELAB thumbnails' difference (Delta E, 32x32), averaged over every 3x3
  window of cells (about a tenth of the picture a side); the largest window must stay
  within ``colour_max``. A recoloured product moves a whole region by 15 to 90.
* detail: the 64x64 luminance thumbnails' absolute difference, averaged over every 3x3
  window; the largest must stay within ``detail_max`` levels. Changed letters or a size
  tag move one region by 11 or more; re-encoding and resizing move none by more than 9
  on most photos (fine texture, such as printed text resized to half, moves more: a miss).

The thresholds and the figures behind them: docs/NEAR_DUPLICATES.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from gateway.cache.near.signature import Floats, ImageSignature

WINDOW: Final = 3


@dataclass(frozen=True, slots=True)
class Bounds:
    max_distance: int  # Hamming bits of 256
    colour_max: float  # Delta E over a window
    detail_max: float  # luminance levels over a window


@dataclass(frozen=True, slots=True)
class Comparison:
    distance: int
    colour: float  # worst window
    detail: float  # worst window

    def within(self, bounds: Bounds) -> bool:
        return (
            self.distance <= bounds.max_distance
            and self.colour <= bounds.colour_max
            and self.detail <= bounds.detail_max
        )


def worst_window(difference: Floats) -> float:
    windows = np.lib.stride_tricks.sliding_window_view(difference, (WINDOW, WINDOW))
    return float(windows.mean(axis=(-1, -2)).max())


def compare(query: ImageSignature, stored: ImageSignature) -> Comparison:
    colour = np.sqrt(((query.lab() - stored.lab()) ** 2).sum(axis=-1))
    detail = np.abs(query.luminance() - stored.luminance())
    return Comparison(query.distance(stored), worst_window(colour), worst_window(detail))


def same_picture(query: ImageSignature, stored: ImageSignature, bounds: Bounds) -> bool:
    """The hash first (cheap), the windows only for a candidate within its bound."""
    if query.distance(stored) > bounds.max_distance:
        return False
    return compare(query, stored).within(bounds)
