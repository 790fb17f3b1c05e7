"""The moderation stage of the pipeline: prompts and images before the cache, answers after.

Each decision is counted, timed, and written to the request's interaction draft
(``draft.moderation``): ``pass``, ``blocked:prompt:<category>``, ``blocked:image``,
``blocked:answer:<category>`` or ``check_failed:image``. A refusal is a GatewayError
with code content_policy_violation (400); the pipeline makes sure a refused answer never
reaches the cache.

Cached answers are checked again when they are served: a text check costs microseconds,
and it means a policy update also applies to answers cached before it, and that an
answer shared by a coalescing leader on another replica is checked by this one.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Final

from gateway.errors import ErrorCode, GatewayError
from gateway.interactions.draft import InteractionDraft
from gateway.metrics import Metrics
from gateway.moderation.escapes import decode_json_escapes
from gateway.moderation.images import ImageCheckFailed, ImageVerdicts, image_parts
from gateway.moderation.policy import Policy, Violation
from gateway.moderation.settings import ModerationSettings
from gateway.streams import AnswerRecorder

if TYPE_CHECKING:  # validation imports the settings, which import this package's settings
    from gateway.validation.prepare import PreparedRequest

PASS: Final = "pass"
IMAGE_BLOCKED: Final = "blocked:image"
IMAGE_CHECK_FAILED: Final = "check_failed:image"
_THREAD_CHARS: Final = 4096
_NONE: Final = "none"  # the category label of decisions that name none


def completion_text(body: bytes) -> str | None:
    """The answer's text in a worker's completion, however incomplete the rest is."""
    try:
        content = json.loads(body)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


class Moderator:
    def __init__(
        self,
        settings: ModerationSettings,
        policy: Policy,
        metrics: Metrics,
        images: ImageVerdicts | None = None,
    ) -> None:
        self._settings = settings
        self._policy = policy
        self._metrics = metrics
        self._images = images

    @property
    def checks_answers(self) -> bool:
        return self._settings.check_answers

    async def check_request(
        self,
        draft: InteractionDraft,
        request_id: str,
        prompt: str,
        prepared: PreparedRequest,
        param: str,
    ) -> None:
        """Refuse a prompt or image the policy forbids (raises GatewayError)."""
        draft.moderation = PASS
        if self._settings.check_prompts:
            violation = await self._violation_off_loop("prompt", prompt)
            if violation is not None:
                raise self.blocked(draft, "prompt", violation, param)
            self.count("prompt", _NONE, PASS)
        if self._images is not None and prepared.images:
            # The simple shape names its text "prompt" and its image "image".
            image_param = "image" if param == "prompt" else param
            await self._check_images(draft, request_id, prepared, image_param)

    async def check_answer(self, draft: InteractionDraft, text: str) -> None:
        """Refuse an answer the policy forbids (raises GatewayError)."""
        if not self._settings.check_answers:
            return
        violation = await self._violation_off_loop("answer", text)
        if violation is not None:
            raise self.blocked(draft, "answer", violation, None)
        self.count("answer", _NONE, PASS)

    def stream_guard(self, draft: InteractionDraft) -> AnswerGuard:
        return AnswerGuard(self, draft, self._settings.stream_overlap_chars)

    async def _violation_off_loop(self, stage: str, text: str) -> Violation | None:
        # About 70 µs per 1,000 characters (loadtest/bench/moderation.py): long texts are
        # checked in a thread so the event loop keeps serving meanwhile.
        if len(text) > _THREAD_CHARS:
            return await asyncio.to_thread(self.violation, stage, text)
        return self.violation(stage, text)

    # -- used by AnswerGuard too ------------------------------------------------------------

    def violation(self, stage: str, text: str, *, remember: bool = True) -> Violation | None:
        """``remember``: keep the verdict in the policy's memo (prompts and answers repeat;
        a streamed answer's windows do not, and would only push them out)."""
        started = time.perf_counter()
        check = self._policy.violation if remember else self._policy.check
        try:
            found = check(text)
            decoded = decode_json_escapes(text)
            if found is None and decoded != text:  # JSON text: what its strings spell
                found = check(decoded)
            return found
        finally:
            self._metrics.moderation_check_duration.labels(stage).observe(
                time.perf_counter() - started
            )

    def blocked(
        self, draft: InteractionDraft, stage: str, violation: Violation, param: str | None
    ) -> GatewayError:
        self.count(stage, violation.category, "blocked")
        draft.moderation = f"blocked:{stage}:{violation.category}"
        what = "request" if stage == "prompt" else "answer"
        return GatewayError(
            ErrorCode.CONTENT_POLICY_VIOLATION,
            f"The {what} was refused by the content policy (category: {violation.category}).",
            param=param,
        )

    def count(self, stage: str, category: str, outcome: str) -> None:
        self._metrics.moderation_decisions.labels(stage, category, outcome).inc()

    async def _check_images(
        self, draft: InteractionDraft, request_id: str, prepared: PreparedRequest, param: str
    ) -> None:
        assert self._images is not None
        await prepared.pixels.verify()  # the question below shows the images to a worker
        started = time.perf_counter()
        try:
            parts = await image_parts(prepared.body)
            for image, part in zip(prepared.images, parts, strict=True):
                try:
                    flagged = await self._images.flagged(
                        prepared.model, image.sha256, part, request_id
                    )
                except ImageCheckFailed:
                    # Fail open (see gateway/moderation/images.py), visibly; or closed.
                    self.count("image", _NONE, "check_failed")
                    draft.moderation = IMAGE_CHECK_FAILED
                    if self._settings.image_check_fail_closed:
                        raise GatewayError(
                            ErrorCode.MODERATION_UNAVAILABLE,
                            "An image could not be checked against the content policy; "
                            "try again shortly.",
                            param=param,
                        ) from None
                    continue
                if flagged:
                    self.count("image", "image", "blocked")
                    draft.moderation = IMAGE_BLOCKED
                    raise GatewayError(
                        ErrorCode.CONTENT_POLICY_VIOLATION,
                        "An image was refused by the content policy.",
                        param=param,
                    )
                self.count("image", _NONE, PASS)
        finally:
            self._metrics.moderation_check_duration.labels("image").observe(
                time.perf_counter() - started
            )


class AnswerGuard:
    """Checks a streamed answer as it arrives (RecordingStream calls it once per chunk,
    before the chunk's events are forwarded, so the event that completes a forbidden
    term is never sent). Each choice (n > 1) is checked on its own, its tool-call
    arguments with it. Each check covers the new text plus ``overlap`` characters
    before it; when the stream's end arrives, a choice longer than one window is
    checked whole once more, for patterns that span more than the overlap."""

    def __init__(self, moderator: Moderator, draft: InteractionDraft, overlap: int) -> None:
        self._moderator = moderator
        self._draft = draft
        self._overlap = overlap
        self._seen: dict[int, int] = {}  # per choice: pieces already checked
        self._windows: dict[int, int] = {}
        self._tails: dict[int, str] = {}
        self._finished = False

    def __call__(self, recorder: AnswerRecorder) -> None:
        for index, parts in recorder.texts.items():
            seen = self._seen.get(index, 0)
            if len(parts) > seen:
                window = self._tails.get(index, "") + "".join(parts[seen:])
                self._seen[index] = len(parts)
                self._windows[index] = self._windows.get(index, 0) + 1
                self._check(window, recorder)
                self._tails[index] = window[-self._overlap :]
        if recorder.done and not self._finished:
            self._finished = True
            for index, parts in recorder.texts.items():
                if self._windows.get(index, 0) > 1:
                    self._check("".join(parts), recorder)
            self._moderator.count("answer", _NONE, PASS)

    def _check(self, text: str, recorder: AnswerRecorder) -> None:
        violation = self._moderator.violation("answer", text, remember=False)
        if violation is not None:
            self._draft.answer = recorder.summary().text
            raise self._moderator.blocked(self._draft, "answer", violation, None)
