"""Near-duplicate photos (issue 26): what the feature gets right, what it gets wrong, and
what it costs. ``python -m loadtest.bench.near_duplicates`` (in ``make bench``).

1. Accuracy on the corpus built in code (loadtest/bench/near_corpus.py: real photographs
   from scikit-image and matplotlib, product shots drawn here): recall on benign variants
   (re-encodes, resizes, format changes, a re-encode chain), crops of 2-6 %, false matches
   on hard negatives (the same product recoloured, a changed label or logo, another size
   tag in a corner, another product on the same backdrop), and over every pair of
   different sources, with the gateway's default bounds.
2. The extra CPU per exact miss: one image's signature (a thread in the gateway), by
   photo size and format, as process CPU time; and the index's Redis work (the SUNION
   of 272 sets, the candidates' reads) in a group of 1,000 stored answers, wall time.
3. The hit ratio on a replayed workload: shoppers send the same catalogue photos in
   mixed encodings (Zipf-popular photos, each request one of the benign encodings, one
   of four questions), through the real index on the machine's Redis, with and without
   the feature; a near answer replayed from ANOTHER source photo counts as wrong.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import random
import statistics
import time
import uuid
from collections.abc import Callable

from PIL import Image

from gateway.breaker import CircuitBreaker
from gateway.cache.near.index import NearIndex
from gateway.cache.near.signature import ImageSignature, compute_signature
from gateway.cache.near.verify import Bounds, compare, same_picture
from gateway.config import Settings
from gateway.redis_link import redis_client
from loadtest.bench.near_corpus import Source, corpus, decode, encode

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUESTS = int(os.environ.get("BENCH_NEAR_REQUESTS", "1500"))
SETTINGS = Settings()
BOUNDS = Bounds(
    SETTINGS.cache_near_max_distance, SETTINGS.cache_near_colour_max, SETTINGS.cache_near_detail_max
)
QUESTIONS = ("is this real leather", "what brand is this", "is it a good gift", "what size is it")


def _rate(hits: int, total: int) -> str:
    return f"{hits}/{total} = {hits / total:.3f}" if total else "-"


def accuracy(sources: tuple[Source, ...]) -> list[str]:
    signed = [
        (
            s,
            compute_signature(s.data),
            {
                kind: [(v.name, compute_signature(v.data)) for v in variants]
                for kind, variants in (("benign", s.benign), ("crop", s.crops), ("hard", s.hard))
            },
        )
        for s in sources
    ]
    rows = ["| measure | result | goal |", "|---|---|---|"]
    benign = [(n, same_picture(v, o, BOUNDS)) for _, o, k in signed for n, v in k["benign"]]
    rows.append(
        f"| recall, benign variants | {_rate(sum(m for _, m in benign), len(benign))} | ≥ 0.9 |"
    )
    for name in sorted({n for n, _ in benign}):
        kind = [m for n, m in benign if n == name]
        rows.append(f"| &nbsp; {name} | {_rate(sum(kind), len(kind))} | |")
    crops = [(n, same_picture(v, o, BOUNDS)) for _, o, k in signed for n, v in k["crop"]]
    rows.append(
        f"| recall, crops 2-6 % | {_rate(sum(m for _, m in crops), len(crops))} | (not promised) |"
    )
    hard = [(n, same_picture(v, o, BOUNDS)) for _, o, k in signed for n, v in k["hard"]]
    rows.append(
        f"| false matches, hard negatives | {_rate(sum(m for _, m in hard), len(hard))} | 0 |"
    )
    for name in sorted({n for n, _ in hard}):
        kind = [m for n, m in hard if n == name]
        rows.append(f"| &nbsp; {name} | {_rate(sum(kind), len(kind))} | |")
    pairs = matched = 0
    for i, (_, _, kinds) in enumerate(signed):
        for j, (_, original, _) in enumerate(signed):
            if i != j:
                for variants in kinds.values():
                    for _, v in variants:
                        pairs += 1
                        matched += same_picture(v, original, BOUNDS)
    rows.append(
        f"| false matches, all pairs of different sources | {_rate(matched, pairs)} "
        f"({100 * matched / pairs:.3f} %) | ≤ 0.1 % |"
    )
    closest = min(
        (compare(v, o).detail, f"{s.name} {n}")
        for s, o, k in signed
        for n, v in k["hard"]
        if compare(v, o).distance <= BOUNDS.max_distance
        and compare(v, o).colour <= BOUNDS.colour_max
    )
    rows.append(
        f"| closest hard negative (detail, bound {BOUNDS.detail_max}) "
        f"| {closest[0]:.1f}: {closest[1]} | |"
    )
    return rows


def _cpu_ms(work: Callable[[], object], repeat: int = 20) -> float:
    samples = []
    for _ in range(repeat):
        start = time.process_time()
        work()
        samples.append((time.process_time() - start) * 1000)
    return statistics.median(samples)


def signature_cost() -> list[str]:
    photo = decode(corpus()[0].data)
    rows = ["| image | bytes | CPU ms per signature (median of 20) |", "|---|---|---|"]
    for label, size, fmt in (
        ("640x480 JPEG", (640, 480), "JPEG"), ("960x1280 JPEG", (960, 1280), "JPEG"),
        ("1920x1080 JPEG", (1920, 1080), "JPEG"), ("800x800 PNG", (800, 800), "PNG"),
        ("800x800 WebP", (800, 800), "WEBP"),
    ):  # fmt: skip
        data = encode(photo.resize(size, Image.Resampling.LANCZOS), fmt, 85)
        cost = _cpu_ms(functools.partial(compute_signature, data))
        rows.append(f"| {label} | {len(data)} | {cost:.2f} |")
    return rows


async def index_cost() -> list[str]:
    redis = redis_client(REDIS_URL, False)
    namespace = f"bench-near-{uuid.uuid4().hex[:8]}"
    index = NearIndex(redis, CircuitBreaker(5.0, failure_threshold=5), namespace, 300)
    rng = random.Random(7)
    template = compute_signature(corpus()[0].data)
    group = "g"
    try:
        for i in range(1000):  # 1,000 answers to one question, random hashes
            bits = rng.randbytes(32)
            digest = hashlib.sha256(i.to_bytes(4, "big")).hexdigest()
            await index.add(group, f"{namespace}:v1:answer:{{{digest}}}",
                            [ImageSignature(bits, template.thumb, template.luma)])  # fmt: skip
        lookups = []
        for _ in range(200):
            start = time.perf_counter()
            found = await index.candidates(group, rng.randbytes(32), BOUNDS.max_distance, 4)
            await index.read(found)
            lookups.append((time.perf_counter() - start) * 1000)
        lookups.sort()
    finally:
        await redis.aclose()
    return [
        "| index lookup, group of 1,000 answers | median ms | p99 ms |",
        "|---|---|---|",
        f"| SUNION of 272 sets + reads | {statistics.median(lookups):.2f} "
        f"| {lookups[int(0.99 * len(lookups))]:.2f} |",
    ]


async def replay() -> list[str]:
    catalogue = [s for s in corpus() if s.name.startswith("product:")] + list(corpus())[:8]
    rng = random.Random(26)
    weights = [1 / (rank + 1) for rank in range(len(catalogue))]
    workload = []
    for _ in range(REQUESTS):
        source = rng.choices(catalogue, weights)[0]
        data = rng.choice([source.data, *(v.data for v in source.benign)])
        workload.append((source.name, data, rng.choice(QUESTIONS)))
    redis = redis_client(REDIS_URL, False)
    namespace = f"bench-near-{uuid.uuid4().hex[:8]}"
    index = NearIndex(redis, CircuitBreaker(5.0, failure_threshold=5), namespace, 300)
    memo: dict[str, ImageSignature] = {}
    exact: dict[tuple[str, str], str] = {}
    owner: dict[str, str] = {}  # answer key -> the source photo it was generated for
    exact_hits = near_hits = wrong = 0
    try:
        for name, data, question in workload:
            digest = hashlib.sha256(data).hexdigest()
            answer = hashlib.sha256((digest + question).encode()).hexdigest()
            key = f"{namespace}:v1:answer:{{{answer}}}"
            if (digest, question) in exact:
                exact_hits += 1
                continue
            signature = memo.get(digest) or compute_signature(data)
            memo[digest] = signature
            match = None
            for candidate in await index.candidates(
                question, signature.bits, BOUNDS.max_distance, 4
            ):
                entries = await index.read([candidate])
                entry = entries[0]
                signatures = getattr(entry, "signatures", None)
                if signatures and same_picture(signature, signatures[0], BOUNDS):
                    match = candidate.answer_key
                    break
            if match is not None:
                near_hits += 1
                wrong += owner[match] != name
                continue
            exact[(digest, question)] = key  # generated, stored and indexed
            # (a near answer is not stored under the request's own key: the gateway's rule)
            owner[key] = name
            await redis.set(key, b'["a","stop",1,1]', ex=300)
            await index.add(question, key, [signature])
    finally:
        await redis.aclose()
    total = len(workload)
    seen: set[tuple[bytes, str]] = set()
    exact_only = 0
    for _, data, question in workload:  # the same workload with the feature off
        exact_only += (data, question) in seen
        seen.add((data, question))
    return [
        "| replayed workload | requests | hit ratio |",
        "|---|---|---|",
        f"| feature off: exact cache only | {total} | {exact_only / total:.3f} |",
        f"| feature on: exact {exact_hits} + similar {near_hits} | {total} "
        f"| {(exact_hits + near_hits) / total:.3f} |",
        f"| near answers from another photo (wrong) | {near_hits} served | {wrong} |",
    ]


async def main() -> None:
    started = time.perf_counter()
    images = sum(len(s.benign) + len(s.crops) + len(s.hard) + 1 for s in corpus())
    print(
        f"near-duplicate photos (issue 26); bounds: Hamming ≤ {BOUNDS.max_distance}/256, colour "
        f"≤ {BOUNDS.colour_max} ΔE, detail ≤ {BOUNDS.detail_max} levels (worst 3x3 window)"
    )
    print(f"corpus: {len(corpus())} sources, {images} images\n")
    for section in (accuracy(corpus()), signature_cost(), await index_cost(), await replay()):
        print("\n".join(section), end="\n\n")
    print(f"({time.perf_counter() - started:.0f} s; CPU: {os.cpu_count()} cores, shared)")


if __name__ == "__main__":
    asyncio.run(main())
