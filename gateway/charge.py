"""What a validated request costs its API key.

The admission middleware checked the key itself, its requests per minute and its
concurrency before the body was read (gateway/admission.py); once the request is
validated, the model it resolved to must be one the key may use, and its estimated
tokens are charged to the key's tokens per minute.
"""

from __future__ import annotations

from gateway.admission import Admission
from gateway.ratelimit import estimate_tokens
from gateway.validation.prepare import PreparedRequest


def check_model(admission: Admission | None, model: str | None) -> None:
    """403 before any validation work when the key may not use the model it names."""
    if admission is not None:
        admission.check_model(model)


async def charge_tokens(admission: Admission | None, prepared: PreparedRequest) -> None:
    """The resolved model's permission, then tokens per minute (429 when over): the
    estimate needs the validated images' sizes. Cache hits are charged too: the limit is
    what the key may ask for, whoever answers it."""
    if admission is None:
        return
    admission.check_model(prepared.model)
    features = prepared.features
    # Schemas and tool definitions are read by the model too; n choices are n answers.
    text = prepared.prompt
    if features.extra_text:
        text = f"{text}\n{features.extra_text}"
    # Images as the checkpoint's image processor counts them (prepare.py), at the sizes
    # the gateway sends them.
    text_and_budget = estimate_tokens(
        text, (), prepared.token_budget * features.choices, prepared.messages
    )
    await admission.charge_tokens(text_and_budget + prepared.image_tokens)
