"""Synthetic product photos for load tests: deterministic, several sizes, JPEG and PNG.

A photo is a studio shot drawn with Pillow: a backdrop gradient, a floor, a soft
shadow and one product (a handbag, a shoe, a wristwatch or a perfume bottle) in
colours, proportions and position chosen from the seed, with a little film grain
so that JPEG sizes look like a camera's rather than a flat drawing's.

The same ``PhotoSpec`` always gives the same bytes (with the same Pillow build):
the load test can repeat a photo exactly, to exercise the answer cache, or make
a fresh one per request, which is a guaranteed cache miss. Nothing here reads
the clock or global random state.

Sizes follow what an e-commerce backend sends; the image-token cost in Qwen3-VL is
(H/32)·(W/32) with sides rounded to multiples of 32:

=========  ===========  ======  ============
size       pixels       format  image tokens
=========  ===========  ======  ============
thumbnail  256 × 256    PNG     64
listing    640 × 480    JPEG    300
square     800 × 800    JPEG    625
phone      960 × 1280   JPEG    1,200
hd         1920 × 1080  JPEG    2,040
=========  ===========  ======  ============

``python -m loadtest.locust.photos OUT_DIR`` writes one sample of every size and kind.
"""

from __future__ import annotations

import argparse
import base64
import io
import math
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageOps

Kind = Literal["bag", "shoe", "watch", "bottle"]
Format = Literal["JPEG", "PNG"]
KINDS: tuple[Kind, ...] = ("bag", "shoe", "watch", "bottle")
MIME: dict[Format, str] = {"JPEG": "image/jpeg", "PNG": "image/png"}


@dataclass(frozen=True)
class Size:
    name: str
    width: int
    height: int
    format: Format

    @property
    def image_tokens(self) -> int:
        """Qwen3-VL's image tokens for this size (patch 16, merge 2)."""
        return image_tokens(self.width, self.height)


SIZES: dict[str, Size] = {
    size.name: size
    for size in (
        Size("thumbnail", 256, 256, "PNG"),
        Size("listing", 640, 480, "JPEG"),
        Size("square", 800, 800, "JPEG"),
        Size("phone", 960, 1280, "JPEG"),
        Size("hd", 1920, 1080, "JPEG"),
    )
}


def image_tokens(width: int, height: int) -> int:
    def side(pixels: int) -> int:
        return max(1, round(pixels / 32))

    return side(width) * side(height)


@dataclass(frozen=True)
class PhotoSpec:
    seed: int
    width: int
    height: int
    format: Format = "JPEG"
    kind: Kind | None = None  # None: chosen from the seed
    quality: int = 88  # JPEG only
    grain: int = 6  # amplitude of the film grain, in 8-bit levels; 0 for none

    def resolved_kind(self) -> Kind:
        return self.kind or KINDS[self.seed % len(KINDS)]

    @classmethod
    def of_size(cls, seed: int, size: str | Size, kind: Kind | None = None) -> PhotoSpec:
        chosen = SIZES[size] if isinstance(size, str) else size
        return cls(seed, chosen.width, chosen.height, chosen.format, kind)


@dataclass(frozen=True)
class Photo:
    spec: PhotoSpec
    data: bytes

    @property
    def kind(self) -> Kind:
        return self.spec.resolved_kind()

    @property
    def mime(self) -> str:
        return MIME[self.spec.format]

    def base64(self) -> str:
        return base64.b64encode(self.data).decode("ascii")

    def data_uri(self) -> str:
        return f"data:{self.mime};base64,{self.base64()}"


# --- drawing -------------------------------------------------------------------------------

RGB = tuple[int, int, int]

# Product colours: leathers, canvas, metals, glass tints.
PRODUCT_COLOURS: tuple[RGB, ...] = (
    (122, 62, 32),
    (40, 30, 28),
    (176, 32, 44),
    (205, 170, 125),
    (28, 52, 96),
    (232, 226, 214),
    (88, 104, 60),
    (150, 150, 156),
    (214, 120, 150),
    (60, 120, 130),
)
BACKDROPS: tuple[tuple[RGB, RGB], ...] = (
    ((246, 246, 244), (214, 214, 210)),
    ((250, 240, 230), (220, 200, 182)),
    ((232, 240, 248), (190, 204, 220)),
    ((240, 244, 236), (200, 210, 196)),
    ((255, 255, 255), (236, 236, 236)),
)


def _shade(colour: RGB, factor: float) -> RGB:
    r, g, b = (max(0, min(255, round(c * factor))) for c in colour)
    return (r, g, b)


class _Canvas:
    """Product coordinates in units of the shorter side, centred on (cx, cy)."""

    def __init__(self, draw: ImageDraw.ImageDraw, cx: float, cy: float, unit: float) -> None:
        self.draw = draw
        self.cx, self.cy, self.unit = cx, cy, unit

    def p(self, x: float, y: float) -> tuple[float, float]:
        return (self.cx + x * self.unit, self.cy + y * self.unit)

    def box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        (a, b), (c, d) = self.p(x0, y0), self.p(x1, y1)
        return (a, b, c, d)

    def w(self, width: float) -> int:
        return max(1, round(width * self.unit))


def _draw_bag(c: _Canvas, rng: random.Random, colour: RGB) -> None:
    width, height = rng.uniform(0.48, 0.62), rng.uniform(0.34, 0.44)
    top = rng.uniform(0.78, 0.9) * width
    # Handle first, so the body covers its ends.
    c.draw.arc(
        c.box(-top / 3, -height / 2 - 0.22, top / 3, -height / 2 + 0.12),
        180,
        360,
        fill=_shade(colour, 0.7),
        width=c.w(0.028),
    )
    body = [
        c.p(-top / 2, -height / 2),
        c.p(top / 2, -height / 2),
        c.p(width / 2, height / 2),
        c.p(-width / 2, height / 2),
    ]
    c.draw.polygon(body, fill=colour, outline=_shade(colour, 0.6), width=c.w(0.006))
    flap = [c.p(-top / 2, -height / 2), c.p(top / 2, -height / 2), c.p(0.0, -height / 2 + 0.16)]
    c.draw.polygon(flap, fill=_shade(colour, 0.85), outline=_shade(colour, 0.55))
    clasp = (0.035, 0.028)
    c.draw.rectangle(
        c.box(-clasp[0], -height / 2 + 0.13, clasp[0], -height / 2 + 0.13 + clasp[1]),
        fill=(212, 175, 55),
        outline=(150, 120, 30),
    )
    # Stitching along the bottom.
    y = height / 2 - 0.03
    x = -width / 2 + 0.04
    while x < width / 2 - 0.06:
        c.draw.line([c.p(x, y), c.p(x + 0.02, y)], fill=_shade(colour, 1.4), width=c.w(0.004))
        x += 0.035


def _draw_shoe(c: _Canvas, rng: random.Random, colour: RGB) -> None:
    length, height = rng.uniform(0.7, 0.82), rng.uniform(0.24, 0.3)
    back, front = -length / 2, length / 2
    sole = (246, 246, 240) if rng.random() < 0.6 else (50, 40, 36)
    c.draw.rounded_rectangle(
        c.box(back, 0.08, front, 0.14), radius=c.w(0.03), fill=sole, outline=_shade(sole, 0.7)
    )
    upper = [
        c.p(back, 0.09),
        c.p(back + 0.01, -height),
        c.p(back + 0.16, -height + 0.02),
        c.p(back + 0.3, -height + 0.1),
        c.p(front - 0.14, -0.05),
        c.p(front, 0.02),
        c.p(front, 0.09),
    ]
    c.draw.polygon(upper, fill=colour, outline=_shade(colour, 0.55), width=c.w(0.006))
    toe = [
        c.p(front - 0.16, -0.04),
        c.p(front - 0.14, -0.05),
        c.p(front, 0.02),
        c.p(front, 0.09),
        c.p(front - 0.16, 0.09),
    ]
    c.draw.polygon(toe, fill=_shade(colour, 0.8))
    c.draw.ellipse(
        c.box(back + 0.03, -height - 0.015, back + 0.17, -height + 0.03), fill=_shade(colour, 0.35)
    )
    lace = _shade(colour, 1.7) if sum(colour) < 300 else (30, 30, 30)
    for i in range(5):
        t = i / 4
        x = back + 0.19 + t * 0.22
        y = -height + 0.05 + t * 0.16
        c.draw.line([c.p(x - 0.04, y - 0.03), c.p(x + 0.04, y + 0.03)], fill=lace, width=c.w(0.01))
        c.draw.ellipse(c.box(x - 0.05, y - 0.04, x - 0.03, y - 0.02), fill=_shade(colour, 0.4))


def _draw_watch(c: _Canvas, rng: random.Random, colour: RGB) -> None:
    radius = rng.uniform(0.15, 0.2)
    strap = rng.uniform(0.16, 0.2)
    c.draw.rounded_rectangle(
        c.box(-strap / 2, -0.45, strap / 2, 0.45),
        radius=c.w(0.03),
        fill=colour,
        outline=_shade(colour, 0.6),
    )
    for y in (-0.38, -0.3, 0.3, 0.38):
        c.draw.ellipse(c.box(-0.012, y - 0.012, 0.012, y + 0.012), fill=_shade(colour, 0.5))
    metal = (192, 192, 198) if rng.random() < 0.6 else (212, 175, 55)
    c.draw.rectangle(c.box(radius - 0.01, -0.03, radius + 0.04, 0.03), fill=metal)
    c.draw.ellipse(
        c.box(-radius, -radius, radius, radius),
        fill=metal,
        outline=_shade(metal, 0.6),
        width=c.w(0.008),
    )
    dial = radius * 0.84
    face = (250, 250, 246) if rng.random() < 0.5 else (24, 28, 40)
    ink = (20, 20, 20) if sum(face) > 300 else (235, 235, 235)
    c.draw.ellipse(c.box(-dial, -dial, dial, dial), fill=face)
    for hour in range(12):
        angle = hour * math.pi / 6
        inner = dial * (0.78 if hour % 3 else 0.68)
        c.draw.line(
            [
                c.p(inner * math.sin(angle), -inner * math.cos(angle)),
                c.p(dial * 0.92 * math.sin(angle), -dial * 0.92 * math.cos(angle)),
            ],
            fill=ink,
            width=c.w(0.008 if hour % 3 else 0.014),
        )
    for length, angle, width in (
        (0.5, rng.uniform(0, 6.28), 0.014),
        (0.78, rng.uniform(0, 6.28), 0.009),
    ):
        c.draw.line(
            [c.p(0, 0), c.p(dial * length * math.sin(angle), -dial * length * math.cos(angle))],
            fill=ink,
            width=c.w(width),
        )


def _draw_bottle(c: _Canvas, rng: random.Random, colour: RGB) -> None:
    width, height = rng.uniform(0.3, 0.4), rng.uniform(0.36, 0.46)
    glass = tuple(round(0.55 * v + 0.45 * 235) for v in colour)
    c.draw.rounded_rectangle(
        c.box(-width / 2, -height / 2 + 0.1, width / 2, height / 2 + 0.1),
        radius=c.w(0.05),
        fill=(glass[0], glass[1], glass[2]),
        outline=_shade(colour, 0.6),
        width=c.w(0.006),
    )
    c.draw.rectangle(
        c.box(-0.04, -height / 2 + 0.02, 0.04, -height / 2 + 0.1), fill=(200, 200, 205)
    )
    cap = (30, 30, 30) if rng.random() < 0.5 else (212, 175, 55)
    c.draw.rounded_rectangle(
        c.box(-0.07, -height / 2 - 0.1, 0.07, -height / 2 + 0.02), radius=c.w(0.015), fill=cap
    )
    c.draw.rectangle(
        c.box(-width / 3, 0.02, width / 3, 0.16), fill=(248, 246, 240), outline=(120, 120, 120)
    )
    for i in range(3):
        c.draw.line(
            [c.p(-width / 4, 0.06 + i * 0.035), c.p(width / 4 - i * 0.03, 0.06 + i * 0.035)],
            fill=(60, 60, 60),
            width=c.w(0.008),
        )
    c.draw.line(
        [c.p(-width / 2 + 0.04, -height / 2 + 0.16), c.p(-width / 2 + 0.04, height / 2)],
        fill=(255, 255, 255),
        width=c.w(0.012),
    )


# Per kind: where the product touches the floor (in units below its centre), and its scale.
_PLACEMENT: dict[Kind, tuple[float, float]] = {
    "bag": (0.22, 1.0),
    "shoe": (0.14, 1.0),
    "watch": (0.45, 0.75),
    "bottle": (0.34, 0.9),
}
_DRAWERS = {"bag": _draw_bag, "shoe": _draw_shoe, "watch": _draw_watch, "bottle": _draw_bottle}


def render(spec: PhotoSpec) -> Image.Image:
    """The photo as an RGB image, before encoding."""
    if spec.width < 16 or spec.height < 16:
        raise ValueError("photos are at least 16x16 pixels")
    rng = random.Random(f"photo:{spec.seed}")
    kind = spec.resolved_kind()
    top, bottom = rng.choice(BACKDROPS)
    gradient = Image.linear_gradient("L").resize((spec.width, spec.height))
    image = ImageOps.colorize(gradient, top, bottom)
    draw = ImageDraw.Draw(image)
    horizon = spec.height * rng.uniform(0.62, 0.72)
    draw.rectangle((0, horizon, spec.width, spec.height), fill=_shade(bottom, 0.94))

    rests_at, scale = _PLACEMENT[kind]
    unit = min(spec.width, spec.height) * scale * rng.uniform(0.8, 0.95)
    cx = spec.width / 2 + rng.uniform(-0.08, 0.08) * spec.width
    floor = horizon + rng.uniform(0.03, 0.08) * unit
    cy = floor - rests_at * unit
    # A soft shadow under the product: drawn small and blurred, then scaled up (cheap at
    # any size).
    shadow = Image.new("L", (64, 16), 0)
    ImageDraw.Draw(shadow).ellipse((6, 3, 58, 13), fill=90)
    shadow = shadow.filter(ImageFilter.GaussianBlur(3))
    box = (
        round(cx - 0.45 * unit),
        round(floor - 0.06 * unit),
        round(cx + 0.45 * unit),
        round(floor + 0.08 * unit),
    )
    size = (max(1, box[2] - box[0]), max(1, box[3] - box[1]))
    image.paste((40, 40, 40), box[:2], shadow.resize(size))

    colour = rng.choice(PRODUCT_COLOURS)
    _DRAWERS[kind](_Canvas(draw, cx, cy, unit), rng, colour)

    if spec.grain > 0:
        noise = Image.frombytes("L", image.size, rng.randbytes(spec.width * spec.height))
        noise = noise.point(lambda v: v * (2 * spec.grain + 1) // 256).convert("RGB")
        image = ImageChops.add(image, noise, scale=1.0, offset=-spec.grain)
    return image


@lru_cache(maxsize=64)
def make_photo(spec: PhotoSpec) -> Photo:
    """The encoded photo. Cached: repeated (popular) photos are encoded once per process."""
    image = render(spec)
    out = io.BytesIO()
    if spec.format == "JPEG":
        image.save(out, "JPEG", quality=spec.quality, optimize=False, progressive=False)
    else:
        image.save(out, "PNG", optimize=False, compress_level=6)
    return Photo(spec, out.getvalue())


def photo(seed: int, size: str = "listing", kind: Kind | None = None) -> Photo:
    """Shorthand: the photo of that seed in one of SIZES."""
    return make_photo(PhotoSpec.of_size(seed, size, kind))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write sample synthetic product photos.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for index, kind in enumerate(KINDS):
        for size in SIZES.values():
            made = photo(args.seed + index, size.name, kind)
            ext = "jpg" if size.format == "JPEG" else "png"
            path = args.out_dir / f"{kind}-{size.name}-{size.width}x{size.height}.{ext}"
            path.write_bytes(made.data)
            print(f"{path}  {len(made.data) / 1024:7.1f} KiB  {size.image_tokens} image tokens")


if __name__ == "__main__":
    main()
