"""The near-duplicate corpus, built in code (no downloads): real photographs that ship in
PyPI packages (scikit-image's sample data, matplotlib's sample photos) and product shots
drawn here, each with its benign variants (what a CDN, a phone or a screenshot makes of
the same photo) and its hard negatives (a different product that looks almost the same).

Used by tests/test_cache_near*.py and the benchmark loadtest/bench/near_duplicates.py.
Everything is deterministic: the same Pillow build gives the same bytes.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import random
from dataclasses import dataclass
from functools import cache
from importlib.util import find_spec
from pathlib import Path
from typing import Final

from PIL import Image, ImageDraw, ImageFont

# scikit-image's photographs (read as files: the package itself is never imported).
SKIMAGE_PHOTOS: Final = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg",
    "retina.jpg", "ihc.png", "motorcycle_left.png", "camera.png", "coins.png", "grass.png",
    "gravel.png", "brick.png", "moon.png", "page.png", "color.png",
)  # fmt: skip
MATPLOTLIB_PHOTOS: Final = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")


@dataclass(frozen=True, slots=True)
class Variant:
    name: str  # what was done: "jpeg60", "recolour", ...
    data: bytes


@dataclass(frozen=True, slots=True)
class Source:
    """One original photo with what may be served for it and what must not."""

    name: str
    data: bytes  # the original, as the first shopper sent it (JPEG q90)
    benign: tuple[Variant, ...]  # the same photo in another encoding: should match
    crops: tuple[Variant, ...]  # the same photo cropped a few percent: may match
    hard: tuple[Variant, ...]  # another product that looks alike: must never match


def encode(image: Image.Image, fmt: str = "JPEG", quality: int = 90) -> bytes:
    out = io.BytesIO()
    if fmt == "PNG":
        image.save(out, "PNG")
    else:
        image.save(out, fmt, quality=quality)
    return out.getvalue()


def decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def _resize(image: Image.Image, scale: float) -> Image.Image:
    size = (max(8, round(image.width * scale)), max(8, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _crop(image: Image.Image, fraction: float, where: str = "centre") -> Image.Image:
    dx, dy = round(image.width * fraction), round(image.height * fraction)
    if where == "centre":
        box = (dx // 2, dy // 2, image.width - (dx - dx // 2), image.height - (dy - dy // 2))
    else:  # a screenshot's edge trimmed on one side
        box = (dx, dy, image.width, image.height)
    return image.crop(box)


def _chain(image: Image.Image) -> bytes:
    """A re-encode chain: upload (JPEG 85), CDN resize to 80 % as WebP, a phone's JPEG 70."""
    step = decode(encode(image, "JPEG", 85))
    step = decode(encode(_resize(step, 0.8), "WEBP", 80))
    return encode(step, "JPEG", 70)


def benign_variants(image: Image.Image) -> tuple[Variant, ...]:
    return (
        Variant("jpeg60", encode(image, "JPEG", 60)),
        Variant("jpeg75", encode(image, "JPEG", 75)),
        Variant("jpeg95", encode(image, "JPEG", 95)),
        Variant("png", encode(image, "PNG")),
        Variant("webp", encode(image, "WEBP", 80)),
        Variant("resize50", encode(_resize(image, 0.5), "JPEG", 85)),
        Variant("resize75-png", encode(_resize(image, 0.75), "PNG")),
        Variant("resize90-webp", encode(_resize(image, 0.9), "WEBP", 75)),
        Variant("chain", _chain(image)),
    )


def crop_variants(image: Image.Image) -> tuple[Variant, ...]:
    return (
        Variant("crop2", encode(_crop(image, 0.02), "JPEG", 85)),
        Variant("crop4-edge", encode(_crop(image, 0.04, "edge"), "JPEG", 85)),
        Variant("crop6", encode(_resize(_crop(image, 0.06), 0.8), "JPEG", 85)),
    )


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size)


def _hue_shift(image: Image.Image, turn: float) -> Image.Image:
    """The same picture in other colours: each pixel's hue turned by ``turn``."""
    h, s, v = image.convert("HSV").split()
    shift = round(turn * 255) % 256
    h = h.point(lambda value: (value + shift) % 256)
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def _sticker(image: Image.Image, text: str, corner: str, fraction: float = 0.12) -> Image.Image:
    """A label or size tag drawn in one corner (``fraction`` of the shorter side)."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    side = max(12, round(min(image.size) * fraction))
    x = image.width - side - side // 4 if "right" in corner else side // 4
    y = image.height - side - side // 4 if "bottom" in corner else side // 4
    draw.rectangle((x, y, x + side, y + side), fill=(250, 250, 245), outline=(30, 30, 30))
    draw.text((x + side / 2, y + side / 2), text, fill=(20, 20, 20), anchor="mm",
              font=_font(max(8, side // 2)))  # fmt: skip
    return out


# --- product shots --------------------------------------------------------------------------

COLOURS: Final = ((176, 48, 40), (40, 70, 150), (30, 120, 70), (200, 160, 40), (90, 60, 40),
                  (120, 40, 120), (30, 30, 30), (210, 110, 140))  # fmt: skip
BACKDROPS: Final = ((232, 228, 220), (205, 215, 225), (240, 240, 240), (215, 205, 190))


@dataclass(frozen=True, slots=True)
class Product:
    seed: int
    kind: str  # "bag", "bottle", "box", "shirt"
    colour: tuple[int, int, int]
    label: str  # the brand text on the product
    logo: str  # "circle", "square", "triangle"
    size_tag: str  # drawn in the top-right corner
    backdrop: tuple[int, int, int]


def _backdrop(colour: tuple[int, int, int], rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (640, 640), colour)
    draw = ImageDraw.Draw(image)
    for y in range(640):  # a soft vertical gradient, floor below 440
        shade = 1.0 - 0.12 * y / 640 - (0.08 if y > 440 else 0.0)
        draw.line((0, y, 640, y), fill=tuple(round(c * shade) for c in colour))
    for _ in range(600):  # film grain, so encoders see texture
        x, y = rng.randrange(640), rng.randrange(640)
        draw.point((x, y), fill=tuple(max(0, c - rng.randrange(12)) for c in colour))
    return image


def draw_product(p: Product) -> Image.Image:
    rng = random.Random(p.seed)
    image = _backdrop(p.backdrop, random.Random(1000 + p.seed % 4))
    draw = ImageDraw.Draw(image)
    dark = tuple(max(0, c - 50) for c in p.colour)
    ox = 160 + rng.randrange(60)
    if p.kind == "bag":
        draw.arc((ox + 60, 140, ox + 260, 320), 180, 360, fill=dark, width=14)
        draw.rounded_rectangle((ox, 230, ox + 320, 470), 30, fill=p.colour, outline=dark, width=4)
    elif p.kind == "bottle":
        draw.rectangle((ox + 130, 120, ox + 190, 200), fill=dark)
        draw.rounded_rectangle((ox + 60, 190, ox + 260, 470), 40, fill=p.colour)
    elif p.kind == "box":
        draw.polygon([(ox, 260), (ox + 240, 230), (ox + 320, 270), (ox + 80, 300)], fill=dark)
        draw.rectangle((ox, 260 + 40, ox + 240, 470), fill=p.colour)
    else:  # shirt
        draw.polygon([(ox, 200), (ox + 90, 160), (ox + 230, 160), (ox + 320, 200),
                      (ox + 290, 260), (ox + 250, 240), (ox + 250, 470), (ox + 70, 470),
                      (ox + 70, 240), (ox + 30, 260)], fill=p.colour)  # fmt: skip
    cx, cy = ox + 160, 360
    box = (cx - 34, cy - 74, cx + 34, cy - 6)
    if p.logo == "circle":
        draw.ellipse(box, fill=(240, 235, 220))
    elif p.logo == "square":
        draw.rectangle(box, fill=(240, 235, 220))
    else:
        draw.polygon([(cx, cy - 74), (cx + 36, cy - 6), (cx - 36, cy - 6)], fill=(240, 235, 220))
    draw.text((cx, cy + 40), p.label, fill=(245, 240, 230), anchor="mm", font=_font(34))
    return _sticker(image, p.size_tag, "top-right", fraction=0.1)


def products() -> list[Product]:
    kinds, logos = ("bag", "bottle", "box", "shirt"), ("circle", "square", "triangle")
    labels = ("NOVA", "ORBIT", "LUMA", "KAITO", "VERA", "ZENO")
    return [
        Product(seed, kinds[seed % 4], COLOURS[seed % len(COLOURS)], labels[seed % 6],
                logos[seed % 3], ("S", "M", "L", "XL")[seed % 4], BACKDROPS[seed % 4])
        for seed in range(12)
    ]  # fmt: skip


def _product_negatives(p: Product) -> tuple[Variant, ...]:
    other = functools.partial(dataclasses.replace, p)
    i = COLOURS.index(p.colour)
    kinds = ("bag", "bottle", "box", "shirt")
    shots: list[tuple[str, Product]] = [
        ("recolour", other(colour=COLOURS[(i + 1) % len(COLOURS)])),
        ("recolour-near", other(colour=tuple(min(255, c + 45) for c in p.colour))),
        ("label", other(label=p.label[::-1])),
        ("logo", other(logo="square" if p.logo != "square" else "circle")),
        ("size-tag", other(size_tag="XL" if p.size_tag != "XL" else "S")),
        ("other-product", other(kind=kinds[(kinds.index(p.kind) + 1) % 4], seed=p.seed + 4)),
    ]
    return tuple(Variant(name, encode(draw_product(q), "JPEG", 90)) for name, q in shots)


def _photo_negatives(image: Image.Image) -> tuple[Variant, ...]:
    stickers = (
        Variant("label", encode(_sticker(image, "SALE", "bottom-left", 0.16), "JPEG", 90)),
        Variant("size-tag", encode(_sticker(image, "XL", "top-right", 0.1), "JPEG", 90)),
    )
    saturation = image.convert("HSV").getchannel("S")
    if saturation.point(lambda value: 255 if value >= 16 else 0).getbbox() is None:
        return stickers  # a grey photo has no hue to turn: "recoloured" it is the same
    return (
        Variant("recolour", encode(_hue_shift(image, 0.33), "JPEG", 90)),
        Variant("recolour-near", encode(_hue_shift(image, 0.08), "JPEG", 90)),
        *stickers,
    )


def _photo_files() -> list[Path]:
    found: list[Path] = []
    for package, folder, names in (
        ("skimage", "data", SKIMAGE_PHOTOS),
        ("matplotlib", "mpl-data/sample_data", MATPLOTLIB_PHOTOS),
    ):
        spec = find_spec(package)
        if spec is None or spec.origin is None:
            continue
        found.extend(Path(spec.origin).parent / folder / name for name in names)
    return [path for path in found if path.is_file()]


def _bounded(image: Image.Image, longest: int = 800) -> Image.Image:
    scale = min(1.0, longest / max(image.size))
    return image if scale == 1.0 else _resize(image, scale)


def _source(name: str, image: Image.Image, negatives: tuple[Variant, ...]) -> Source:
    original = decode(encode(image, "JPEG", 90))
    return Source(name, encode(image, "JPEG", 90), benign_variants(original),
                  crop_variants(original), negatives)  # fmt: skip


@cache
def corpus() -> tuple[Source, ...]:
    """Every source with its variants (30 sources, about 570 images; built once)."""
    sources = []
    for path in _photo_files():
        image = _bounded(Image.open(path).convert("RGB"))
        sources.append(_source(f"photo:{path.stem}", image, _photo_negatives(image)))
    for p in products():
        name = f"product:{p.seed}-{p.kind}"
        sources.append(_source(name, draw_product(p), _product_negatives(p)))
    return tuple(sources)
