"""A Triton Python-backend model (decoupled) that drives vLLM's async engine.

It speaks the request interface of NVIDIA's official vLLM backend
(triton-inference-server/vllm_backend): inputs ``text_input``, ``image`` (base64 strings,
one per image), ``stream``, ``sampling_parameters`` (JSON for vLLM's SamplingParams),
``exclude_input_in_output`` and the ``return_*`` flags; outputs ``text_output``,
``finish_reason``, ``num_input_tokens``, ``num_output_tokens``. The gateway can therefore
point at either this model or the official backend unchanged. Engine arguments come from
``model.json`` beside config.pbtxt, as in the official backend.

Beside the official backend it:
- aborts the engine request as soon as Triton reports the client gone, and always sends
  the final flag afterwards (without it, unloading waits out its timeout and leaves the
  EngineCore process behind);
- drains on unload (SIGTERM): in-flight requests finish, then the engine shuts down;
- exports vLLM's scheduler gauges (vllm:num_requests_running / _waiting,
  vllm:kv_cache_usage_perc) on Triton's metrics port, for the gateway's load balancing,
  and vllm:request_success_total by finished_reason (stop, length, abort) as vLLM's own
  server does (aborts counted here: the engine's stats leave them out).

The stub runs Python isolated (-I): PYTHONPATH is ignored, so the torchvision shim of
worker/boot reaches this process and vLLM's spawned EngineCore through a .pth file in the
Triton environment (the Makefile writes it); the locale is set to UTF-8 here because
torch's inductor reads its sources with the locale's encoding.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import io
import json
import locale
import os
import threading
import time
import uuid
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

_ENGINE_ARGS_FILE = "model.json"
# How long finalize() lets in-flight requests finish before the engine stops anyway.
_DRAIN_TIMEOUT_S = float(os.environ.get("WORKER_TRITON_DRAIN_TIMEOUT_S", "30"))


def _utf8_locale() -> None:
    os.environ["LC_CTYPE"] = "C.UTF-8"  # inherited by the spawned EngineCore
    with contextlib.suppress(locale.Error):
        locale.setlocale(locale.LC_CTYPE, "C.UTF-8")


class _Gauges:
    """vLLM's scheduler gauges as Triton custom metrics; set only when a value changes
    (each set is a round trip to the Triton process, and stats arrive every step). And
    the finished requests by reason."""

    REASONS = ("stop", "length", "abort", "error")

    NAMES = (
        ("vllm:num_requests_running", "Requests in the engine's running batch"),
        ("vllm:num_requests_waiting", "Requests waiting for the engine's batch"),
        ("vllm:kv_cache_usage_perc", "KV-cache usage, 0 to 1"),
    )

    def __init__(self, labels: dict[str, str]) -> None:
        # Each family must outlive its metric: both are kept.
        self._families = [
            pb_utils.MetricFamily(name=name, description=text, kind=pb_utils.MetricFamily.GAUGE)
            for name, text in self.NAMES
        ]
        self._metrics = [family.Metric(labels=labels) for family in self._families]
        self._last: list[float | None] = [None] * len(self.NAMES)
        self._finished_family: Any = pb_utils.MetricFamily(
            name="vllm:request_success_total",
            description="Finished requests by reason",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self._finished = {
            reason: self._finished_family.Metric(labels={**labels, "finished_reason": reason})
            for reason in self.REASONS
        }

    def finished(self, reason: str) -> None:
        metric = self._finished.get(reason)
        if metric is not None:
            try:
                metric.increment(1)
            except Exception as exc:  # never stop vLLM's output loop
                pb_utils.Logger.log_warn(f"[vllm] counter not set: {exc}")

    def set(self, values: tuple[float, float, float]) -> None:
        for i, value in enumerate(values[: len(self._metrics)]):
            if self._last[i] != value:
                self._last[i] = value
                try:
                    self._metrics[i].set(value)
                except Exception as exc:  # an exception here would stop vLLM's output loop
                    pb_utils.Logger.log_warn(f"[vllm] gauge not set: {exc}")

    def close(self) -> None:
        """Metrics before their families (the other order crashes the stub at exit)."""
        self._last = [None] * len(self.NAMES)
        self._metrics = []
        self._finished = {}
        self._families = []
        self._finished_family = None


def _stat_logger_factory(gauges: _Gauges) -> Any:
    from vllm.v1.metrics.loggers import StatLoggerBase

    class TritonGauges(StatLoggerBase):  # type: ignore[misc]
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

        def record(
            self,
            scheduler_stats: Any,
            iteration_stats: Any,
            mm_cache_stats: Any = None,
            engine_idx: int = 0,
        ) -> None:
            for finished in getattr(iteration_stats, "finished_requests", None) or ():
                gauges.finished(str(finished.finish_reason))
            if scheduler_stats is not None:
                gauges.set(
                    (
                        float(scheduler_stats.num_running_reqs),
                        float(scheduler_stats.num_waiting_reqs),
                        float(scheduler_stats.kv_cache_usage),
                    )
                )

        def log_engine_initialized(self) -> None:
            pass

    return TritonGauges


def _decode_image(encoded: bytes) -> Any:
    from PIL import Image

    try:
        data = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise ValueError("an 'image' element is not valid base64") from None
    image = Image.open(io.BytesIO(data))
    return image.convert("RGB")


def _sampling_params(raw: str) -> Any:
    """vLLM's SamplingParams from the JSON the official backend accepts (structured
    outputs as a JSON string or object under "structured_outputs")."""
    from vllm.sampling_params import SamplingParams, StructuredOutputsParams

    params = json.loads(raw) if raw else {}
    if not isinstance(params, dict):
        raise ValueError("'sampling_parameters' must be a JSON object")
    if params.pop("lora_name", None) is not None:
        raise ValueError("LoRA adapters are not served by this model")
    structured = params.pop("structured_outputs", None)
    if isinstance(structured, str):
        structured = json.loads(structured)
    if structured is not None:
        params["structured_outputs"] = StructuredOutputsParams(**structured)
    return SamplingParams(**params)


class _Request:
    """One Triton request's inputs, as the official backend reads them."""

    def __init__(self, request: Any) -> None:
        def tensor(name: str) -> Any:
            found = pb_utils.get_input_tensor_by_name(request, name)
            return None if found is None else found.as_numpy()

        def flag(name: str) -> bool | None:
            found = tensor(name)
            return None if found is None else bool(found.reshape(-1)[0])

        text = tensor("text_input")
        if text is None:
            raise ValueError("'text_input' is required")
        first = text.reshape(-1)[0]
        self.prompt = first.decode("utf-8") if isinstance(first, bytes) else str(first)
        images = tensor("image")
        self.images: list[bytes] = [] if images is None else list(images.reshape(-1))
        self.stream = bool(flag("stream"))
        exclude = flag("exclude_input_in_output")
        # The official default: the prompt is echoed unless streaming.
        self.prepend_input = (not exclude) if exclude is not None else not self.stream
        if self.prepend_input and self.stream:
            raise ValueError("When streaming, `exclude_input_in_output` = False is not allowed.")
        raw = tensor("sampling_parameters")
        self.sampling = "" if raw is None else raw.reshape(-1)[0].decode("utf-8")
        self.finish_reason = bool(flag("return_finish_reason"))
        self.num_input_tokens = bool(flag("return_num_input_tokens"))
        self.num_output_tokens = bool(flag("return_num_output_tokens"))
        if flag("return_logprobs") or flag("return_cumulative_logprob"):
            raise ValueError("logprobs are not returned by this model")


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        _utf8_locale()
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self._config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(self._config):
            raise ValueError("this model must be decoupled (model_transaction_policy)")
        path = os.path.join(args["model_repository"], _ENGINE_ARGS_FILE)
        with open(path) as file:
            engine_args = AsyncEngineArgs(**json.load(file))
        engine_args.disable_log_stats = False  # the gauges need the scheduler's stats
        labels = {"model": args["model_name"], "version": args["model_version"]}
        self._gauges = _Gauges(labels)
        self._ongoing = 0
        self._ongoing_lock = threading.Lock()  # execute() and the engine's loop both count
        self._draining = False
        # Responses leave through one thread, in order: a send is a round trip to the
        # Triton process, and the engine's loop must not wait for it.
        self._sender = concurrent.futures.ThreadPoolExecutor(1, "triton-send")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-loop")
        self._thread.start()
        started = time.monotonic()

        async def start() -> Any:
            return AsyncLLM.from_engine_args(
                engine_args, stat_loggers=[_stat_logger_factory(self._gauges)]
            )

        try:
            self._engine = asyncio.run_coroutine_threadsafe(start(), self._loop).result()
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            raise
        pb_utils.Logger.log_info(f"[vllm] engine ready in {time.monotonic() - started:.1f}s")

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            if self._draining:
                self._fail(request.get_response_sender(), "the model is shutting down",
                           pb_utils.TritonError.UNAVAILABLE)  # fmt: skip
                continue
            with self._ongoing_lock:
                self._ongoing += 1
            asyncio.run_coroutine_threadsafe(self._serve(request), self._loop)
        return None

    def _send(self, sender: Any, response: Any, flags: int = 0) -> None:
        self._sender.submit(sender.send, response, flags)

    def _fail(self, sender: Any, message: str, code: Any = None) -> None:
        error = pb_utils.TritonError(message, *(() if code is None else (code,)))
        self._send(
            sender,
            pb_utils.InferenceResponse(output_tensors=[], error=error),
            pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
        )

    async def _serve(self, request: Any) -> None:
        sender = request.get_response_sender()
        request_id = uuid.uuid4().hex
        try:
            inputs = _Request(request)
            params = _sampling_params(inputs.sampling)
            prompt: Any = inputs.prompt
            if inputs.images:
                loop = asyncio.get_running_loop()
                images = await loop.run_in_executor(
                    None, lambda: [_decode_image(i) for i in inputs.images]
                )
                prompt = {"prompt": inputs.prompt, "multi_modal_data": {"image": images}}
            sent_text: list[int] = []
            sent_tokens: list[int] = []
            output = None
            async for output in self._engine.generate(prompt, params, request_id):
                if sender.is_cancelled():
                    # The client left: free the engine now, and still close the request.
                    await self._engine.abort(request_id)
                    self._gauges.finished("abort")  # vLLM's stats leave aborts out
                    self._send(sender, None, pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    return
                if inputs.stream:
                    flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if output.finished else 0
                    self._send(sender, self._response(inputs, output, sent_text, sent_tokens),
                               flags)  # fmt: skip
            if not inputs.stream and output is not None:
                response = self._response(inputs, output, [], [])
                self._send(sender, response, pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            elif output is None or not output.finished:
                self._send(sender, None, pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except asyncio.CancelledError:
            self._send(sender, None, pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            raise
        except Exception as exc:  # the client gets the error as its final response
            pb_utils.Logger.log_warn(f"[vllm] request failed: {type(exc).__name__}: {exc}")
            self._fail(sender, f"{type(exc).__name__}: {exc}",
                       pb_utils.TritonError.INVALID_ARG if isinstance(exc, ValueError | TypeError)
                       else None)  # fmt: skip
        finally:
            with self._ongoing_lock:
                self._ongoing -= 1

    def _response(
        self, inputs: _Request, output: Any, sent_text: list[int], sent_tokens: list[int]
    ) -> Any:
        """The outputs since the last response (a stream's deltas), one element per choice;
        sent_text and sent_tokens carry what was already sent."""
        if not sent_text:
            sent_text.extend([0] * len(output.outputs))
            sent_tokens.extend([0] * len(output.outputs))
            prefix = output.prompt or "" if inputs.prepend_input else ""
        else:
            prefix = ""
        texts, tokens = [], []
        for i, choice in enumerate(output.outputs):
            texts.append((prefix + choice.text[sent_text[i] :]).encode("utf-8"))
            tokens.append(len(choice.token_ids) - sent_tokens[i])
            sent_text[i], sent_tokens[i] = len(choice.text), len(choice.token_ids)
        tensors = [pb_utils.Tensor("text_output", np.asarray(texts, dtype=np.object_))]
        if inputs.finish_reason:
            reasons = [str(choice.finish_reason) for choice in output.outputs]
            tensors.append(pb_utils.Tensor("finish_reason", np.asarray(reasons, dtype=np.object_)))
        if inputs.num_input_tokens:
            count = len(output.prompt_token_ids or ())
            tensors.append(
                pb_utils.Tensor("num_input_tokens", np.asarray([count], dtype=np.uint32))
            )
        if inputs.num_output_tokens:
            tensors.append(
                pb_utils.Tensor("num_output_tokens", np.asarray(tokens, dtype=np.uint32))
            )
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def finalize(self) -> None:
        """Unload (SIGTERM, or an explicit unload): let in-flight requests finish, then stop
        the engine and its EngineCore process."""
        self._draining = True
        deadline = time.monotonic() + _DRAIN_TIMEOUT_S
        while self._ongoing > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        pb_utils.Logger.log_info(f"[vllm] shutting down ({self._ongoing} request(s) left)")
        self._engine.shutdown()
        self._gauges.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._sender.shutdown(wait=True)
        pb_utils.Logger.log_info("[vllm] shutdown complete")
