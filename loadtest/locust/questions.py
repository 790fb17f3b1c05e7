"""Questions shoppers ask about a product photo, in English and Chinese.

Each product kind of ``loadtest.locust.photos`` has questions of its own, and any photo
can get a generic one; two-photo requests get a comparison question. The lists
are plain data so that anyone can extend them; the choice is driven by the
caller's ``random.Random``, so a seeded load test asks the same questions in the
same order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from loadtest.locust.photos import Kind

Lang = Literal["en", "zh"]

SYSTEM_PROMPT = (
    "You are the shopping assistant of an online store. Answer questions about the "
    "product in the photo briefly and honestly, in the language of the question. "
    "If the photo does not show something, say so."
)

GENERIC: dict[Lang, tuple[str, ...]] = {
    "en": (
        "What is this product, and what is it made of?",
        "What brand is this, and is it a good gift for my mother?",
        "Describe the colour and the finish in one sentence.",
        "Is this suitable for everyday use?",
        "Does this look new or second-hand?",
        "What would this roughly cost in a department store?",
        "Write a two-line product title for a listing of this item.",
        "Are there any visible defects, scratches or stains?",
        "Which occasions is this suitable for?",
        "Is the photo good enough for a product listing? What would you change?",
    ),
    "zh": (
        "这是什么商品？是什么材质的？",
        "这是哪个牌子的？适合送给妈妈当礼物吗？",
        "用一句话描述一下它的颜色和质感。",
        "这个适合日常使用吗？",
        "看起来是全新的还是二手的？",
        "这个大概多少钱？",
        "帮我写一个适合电商平台的商品标题。",
        "图片里有没有明显的瑕疵或划痕？",
    ),
}

BY_KIND: dict[Kind, dict[Lang, tuple[str, ...]]] = {
    "bag": {
        "en": (
            "Is this bag real leather?",
            "Will a 13-inch laptop fit in this bag?",
            "Is this handbag better for work or for evenings out?",
            "Is the hardware on this bag gold-plated or brass?",
            "How should I clean this bag?",
        ),
        "zh": (
            "这个包是真皮的吗？",
            "这个包能放下13寸的笔记本电脑吗？",
            "这款包适合上班通勤吗？",
        ),
    },
    "shoe": {
        "en": (
            "Are these shoes good for running or only for walking?",
            "Is the sole rubber or foam?",
            "Do these shoes run true to size?",
            "Are these shoes waterproof?",
            "What socks and trousers go with these shoes?",
        ),
        "zh": (
            "这双鞋适合跑步吗？",
            "这双鞋的鞋底是什么材质？",
            "这双鞋尺码偏大还是偏小？",
        ),
    },
    "watch": {
        "en": (
            "Is this watch automatic or quartz?",
            "Is this watch water resistant enough for swimming?",
            "Is the case steel or plated?",
            "Would this watch suit a small wrist?",
            "Is the strap leather, and can it be replaced?",
        ),
        "zh": (
            "这块手表是机械表还是石英表？",
            "这块表可以戴着游泳吗？",
            "这款手表适合送给男朋友吗？",
        ),
    },
    "bottle": {
        "en": (
            "What does this perfume smell like?",
            "How many millilitres is this bottle?",
            "Is this fragrance more suitable for summer or winter?",
            "Is this bottle allowed in hand luggage on a plane?",
            "Is this an original or a tester bottle?",
        ),
        "zh": (
            "这瓶香水是什么味道的？",
            "这瓶是多少毫升的？",
            "这款香水适合夏天用吗？",
        ),
    },
}

COMPARE: dict[Lang, tuple[str, ...]] = {
    "en": (
        "Which of these two is the better value?",
        "Which of these two would make a better birthday present?",
        "What are the differences between these two products?",
    ),
    "zh": (
        "这两个哪个更划算？",
        "这两个商品有什么区别？",
    ),
}


@dataclass(frozen=True)
class Question:
    text: str
    lang: Lang


def pick_question(
    rng: random.Random, kind: Kind | None = None, chinese_share: float = 0.25
) -> Question:
    """A question about one photo: about its kind two times in three, else generic."""
    lang: Lang = "zh" if rng.random() < chinese_share else "en"
    pool = GENERIC[lang]
    if kind is not None and rng.random() < 2 / 3:
        pool = BY_KIND[kind][lang]
    return Question(rng.choice(pool), lang)


def pick_comparison(rng: random.Random, chinese_share: float = 0.25) -> Question:
    """A question about two photos in one request."""
    lang: Lang = "zh" if rng.random() < chinese_share else "en"
    return Question(rng.choice(COMPARE[lang]), lang)


def all_questions() -> list[Question]:
    """Every question in the lists, for tests and for sizing prompts."""
    found: list[Question] = []
    for table in (GENERIC, COMPARE, *BY_KIND.values()):
        for lang, texts in table.items():
            found += [Question(text, lang) for text in texts]
    return found
