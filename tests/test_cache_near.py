"""Near-duplicate photos: the signature and verifier on the corpus built in code, question
groups, and the candidate index on a real Redis and a real Redis Cluster."""

from __future__ import annotations

import io
import json
import uuid

import pytest
from PIL import Image
from redis.asyncio import Redis, RedisCluster

from gateway.answers import CachedAnswer
from gateway.breaker import CircuitBreaker
from gateway.cache.near.group import near_group, normalise_text
from gateway.cache.near.index import NearIndex
from gateway.cache.near.signature import ImageSignature, compute_signature
from gateway.cache.near.verify import Bounds, compare, same_picture
from gateway.config import Settings
from loadtest.bench.near_corpus import corpus
from tests.support.redis_cluster import RedisTarget

DEFAULTS = Settings()
BOUNDS = Bounds(
    DEFAULTS.cache_near_max_distance, DEFAULTS.cache_near_colour_max, DEFAULTS.cache_near_detail_max
)


Signed = list[tuple[str, ImageSignature, dict[str, list[tuple[str, ImageSignature]]]]]


@pytest.fixture(scope="module")
def signed() -> Signed:
    """Every source's signature, and its variants' by kind."""
    out = []
    for source in corpus():
        kinds = {
            kind: [(v.name, compute_signature(v.data)) for v in variants]
            for kind, variants in (
                ("benign", source.benign),
                ("crop", source.crops),
                ("hard", source.hard),
            )
        }
        out.append((source.name, compute_signature(source.data), kinds))
    return out


def test_the_corpus_holds_real_photographs_and_drawn_products() -> None:
    names = [source.name for source in corpus()]
    assert sum(name.startswith("photo:") for name in names) >= 10
    assert sum(name.startswith("product:") for name in names) >= 10
    assert all(source.hard for source in corpus())


def test_benign_variants_match_and_hard_negatives_never_do(signed: Signed) -> None:
    benign = [
        same_picture(v, original, BOUNDS) for _, original, k in signed for _, v in k["benign"]
    ]
    hard = [
        (name, variant)
        for name, original, kinds in signed
        for variant, v in kinds["hard"]
        if same_picture(v, original, BOUNDS)
    ]
    assert sum(benign) / len(benign) >= 0.9
    assert hard == []


def test_other_photos_are_not_matched(signed: Signed) -> None:
    """Every variant against every other source's original: at most 0.1 % match."""
    pairs = matched = 0
    for i, (_, _, kinds) in enumerate(signed):
        for j, (_, original, _) in enumerate(signed):
            if i == j:
                continue
            for kind in ("benign", "crop", "hard"):
                for _, v in kinds[kind]:
                    pairs += 1
                    matched += same_picture(v, original, BOUNDS)
    assert pairs > 10_000
    assert matched / pairs <= 0.001


def _product(colour: tuple[int, int, int], tag: str | None = None) -> bytes:
    from PIL import ImageDraw

    image = Image.new("RGB", (400, 400), (235, 232, 225))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((90, 120, 310, 330), 24, fill=colour)
    if tag is not None:
        draw.rectangle((330, 20, 390, 80), fill=(250, 250, 250), outline=(0, 0, 0))
        draw.text((360, 50), tag, fill=(0, 0, 0), anchor="mm")
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def test_the_hash_cannot_see_colour_and_the_verifier_can() -> None:
    red = compute_signature(_product((180, 40, 40)))
    blue = compute_signature(_product((40, 60, 180)))
    assert red.distance(blue) <= BOUNDS.max_distance  # same layout of light and dark
    assert not compare(red, blue).within(BOUNDS)


def test_normalised_questions_share_a_group_and_other_questions_do_not() -> None:
    assert normalise_text("  Is this REAL\tleather？ ") == "is this real leather"
    assert normalise_text("ＡＢＣ bag!!!") == "abc bag"

    def group(text: str, temperature: float = 0, model: str = "m") -> str:
        parts = [
            {"image_url": {"url": f"sha256:{uuid.uuid4().hex}"}, "type": "image_url"},
            {"text": text, "type": "text"},
        ]
        view = {"messages": [{"content": parts, "role": "user"}], "temperature": temperature}
        canonical = json.dumps(view, sort_keys=True, separators=(",", ":"))
        return near_group("ns", model, "1|ckpt", canonical.encode())

    assert group("Is this real leather?") == group("is this  real LEATHER")
    assert group("Is this real leather?") != group("Is this fake leather?")
    assert group("Is this real leather?") != group("Is this real leather?", temperature=0.5)
    assert group("Is this real leather?") != group("Is this real leather?", model="other")


async def test_the_index_finds_near_hashes_and_no_others(redis_target: RedisTarget) -> None:
    if redis_target.cluster:
        redis: Redis | RedisCluster = RedisCluster.from_url(redis_target.url)
    else:
        redis = Redis.from_url(redis_target.url)
    namespace = f"test-near-{uuid.uuid4().hex[:8]}"
    index = NearIndex(redis, CircuitBreaker(1.0, failure_threshold=5), namespace, 60)
    stored = compute_signature(corpus()[0].data)
    answer_key = f"{namespace}:v1:answer:{{{'a' * 64}}}"
    try:
        await redis.set(answer_key, CachedAnswer("fine", "stop", 9, 1).encode(), ex=60)
        await index.add("g1", answer_key, [stored])
        flipped = bytearray(stored.bits)
        for byte in range(0, 31, 2):  # 16 bits flipped, two chunks apart: still found
            flipped[byte] ^= 0x01
        found = await index.candidates("g1", bytes(flipped), 31, 4)
        assert [(c.answer_key, c.distance) for c in found] == [(answer_key, 16)]
        assert await index.candidates("g2", stored.bits, 31, 4) == []  # another question
        far = bytes(b ^ 0xFF for b in stored.bits)
        assert await index.candidates("g1", far, 31, 4) == []
        (entry,) = await index.read(found)
        assert getattr(entry, "signatures", None) == (stored,)
        await redis.delete(answer_key)  # the answer expired: the member is forgotten
        (gone,) = await index.read(found)
        await index.forget("g1", gone.answer_key, stored.bits)
        assert await index.candidates("g1", stored.bits, 31, 4) == []
    finally:
        await redis.aclose()


def test_an_image_that_does_not_decode_is_a_value_error() -> None:
    """The lookup runs before the full decode check: a corrupt image is a miss, then a 400."""
    good = corpus()[0].data
    with pytest.raises(ValueError, match="undecodable"):
        compute_signature(good[: len(good) // 3] + b"\x00" * 64)
    with pytest.raises(ValueError, match="undecodable"):
        compute_signature(b"not an image")
