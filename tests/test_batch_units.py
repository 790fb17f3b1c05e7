"""The Batch API's and matching's pure parts: input lines, uploads, the priority splice,
the feeder's view of the workers' queues, the yes/no labels and the score."""

from __future__ import annotations

import json
import math

import orjson
import pytest

from gateway.batch.feeder import room
from gateway.batch.lane import with_priority
from gateway.batch.lines import read_lines
from gateway.batch.upload import check_input_file, parse_upload
from gateway.errors import GatewayError
from gateway.matching.instruction import Labels, Probabilities, read_probabilities
from gateway.matching.labels import labels_from
from tests.support.batch import chat_line, jsonl

CHAT = "/v1/chat/completions"


def _error(result: str | None) -> tuple[str | None, str]:
    assert result is not None
    line = json.loads(result)
    assert line["response"] is None
    assert set(line["error"]) == {"message", "type", "param", "code"}
    return line["custom_id"], line["error"]["code"]


def test_each_bad_line_fails_alone_with_its_reason_and_good_lines_keep_their_order() -> None:
    data = jsonl(
        [
            chat_line("a", "first"),
            "{not json",
            "[1, 2]",
            {"method": "POST", "url": CHAT, "body": {}},
            {**chat_line("b", "x"), "custom_id": "c" * 513},
            {**chat_line("tab\tbed", "x")},
            chat_line("a", "a repeat"),
            {**chat_line("get", "x"), "method": "GET"},
            {**chat_line("url", "x"), "url": "/v1/match"},
            {**chat_line("extra", "x"), "priority": 0},
            {**chat_line("body", "x"), "body": [1]},
            chat_line("stream", "x", stream=True),
            "",
            chat_line("z", "last"),
        ]
    )
    lines = read_lines(data, CHAT)
    good = [(line.line_no, line.custom_id) for line in lines if line.result is None]
    assert good == [(1, "a"), (14, "z")]
    assert json.loads(lines[0].body) == chat_line("a", "first")["body"]
    bad = [_error(line.result) for line in lines if line.result is not None]
    assert bad == [
        (None, "invalid_json"),
        (None, "invalid_json"),
        (None, "invalid_request"),
        (None, "invalid_request"),
        (None, "invalid_request"),
        ("a", "invalid_request"),  # the repeat: its custom_id is shown, not stored
        ("get", "invalid_request"),
        ("url", "invalid_request"),
        ("extra", "unsupported_parameter"),
        ("body", "invalid_request"),
        ("stream", "unsupported_parameter"),
    ]
    assert all(line.custom_id is None for line in lines if line.result is not None)
    assert [line.line_no for line in lines] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14]


def test_a_lone_surrogate_in_a_body_stays_an_escape() -> None:
    (line,) = read_lines(b'{"custom_id": "s", "method": "POST", "url": "/v1/chat/completions",'
                         b' "body": {"model": "m", "x": "\\ud800"}}\n', CHAT)  # fmt: skip
    assert line.result is None
    assert "\\ud800" in line.body
    line.body.encode("utf-8")  # storable as it is


def _multipart(fields: dict[str, str], file: bytes | None) -> tuple[str, bytes]:
    boundary = "b0undary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    if file is not None:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n'
            f"Content-Type: application/jsonl\r\n\r\n".encode()
            + file
            + b"\r\n"
        )
    return f"multipart/form-data; boundary={boundary}", b"".join(
        parts
    ) + f"--{boundary}--\r\n".encode()


def test_an_upload_needs_purpose_batch_and_a_file_of_utf8_lines_within_the_limit() -> None:
    content_type, body = _multipart({"purpose": "batch"}, b'{"a": 1}\n\n{"b": 2}\n')
    upload = parse_upload(content_type, body)
    assert (upload.purpose, upload.filename) == ("batch", "in.jsonl")
    assert check_input_file(upload.data, 2) == 2
    cases = [
        (_multipart({"purpose": "fine-tune"}, b"{}\n"), "purpose"),
        (_multipart({"purpose": "batch"}, None), "file"),
    ]
    for (ctype, raw), param in cases:
        with pytest.raises(GatewayError) as refused:
            parse_upload(ctype, raw)
        assert (refused.value.status, refused.value.param) == (400, param)
    with pytest.raises(GatewayError) as refused:
        parse_upload("application/json", b"{}")
    assert refused.value.status == 415
    for data, limit in ((b"\xff\xfe", 10), (b"\n \n", 10), (b"{}\n{}\n{}\n", 2)):
        with pytest.raises(GatewayError) as refused:
            check_input_file(data, limit)
        assert (refused.value.status, refused.value.param) == (400, "file")


def test_the_priority_is_spliced_into_the_worker_body_and_nothing_else_changes() -> None:
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert with_priority(body, None) is body
    assert orjson.loads(with_priority(body, 10)) == {**orjson.loads(body), "priority": 10}


_METRICS = """\
# TYPE gateway_worker_healthy gauge
gateway_worker_healthy{worker="http://a"} 1.0
gateway_worker_healthy{worker="http://b"} 0.0
# TYPE gateway_worker_load gauge
gateway_worker_load{kind="running",worker="http://a"} 5.0
gateway_worker_load{kind="waiting",worker="http://a"} %s
gateway_worker_load{kind="waiting",worker="http://b"} 40.0
"""


def test_the_feeder_sends_only_while_the_healthy_workers_queues_are_short() -> None:
    assert room(_METRICS % "0.0", max_waiting=0)
    assert not room(_METRICS % "1.0", max_waiting=0)  # someone is waiting
    assert room(_METRICS % "1.0", max_waiting=1)
    # An unhealthy worker's queue does not count; no healthy worker: no room.
    assert not room(_METRICS.replace('"http://a"} 1.0', '"http://a"} 0.0') % "0.0", 100)


def test_labels_are_the_first_tokens_of_each_spelling_without_blanks_or_shared_ones() -> None:
    # "yes" -> y es, "Yes" -> Y es, " yes" -> _ y es; "no" -> n o, "No" -> N o, " no" -> _ n o;
    # and one token (7) both a yes and a no spelling start with.
    yes = [[95, 269], [63, 269], [227, 95, 269], [7, 1]]
    no = [[84, 85], [52, 85], [227, 84, 85], [7, 2]]
    assert labels_from(yes, no, [227]) == Labels(yes=(95, 63), no=(84, 52))
    with pytest.raises(GatewayError):
        labels_from([[227]], no, [227])


def _completion(entries: list[tuple[int, float]]) -> bytes:
    top = [{"token": f"token_id:{t}", "logprob": lp} for t, lp in entries]
    content = [{"token": "token_id:0", "logprob": -1.0, "top_logprobs": top}]
    return orjson.dumps(
        {"choices": [{"logprobs": {"content": content}}], "usage": {"prompt_tokens": 42}}
    )


def test_the_score_is_p_yes_over_p_yes_and_p_no() -> None:
    labels = Labels(yes=(1, 2), no=(3,))
    body = _completion([(1, math.log(0.5)), (2, math.log(0.1)), (3, math.log(0.2))])
    probabilities = read_probabilities(body, labels)
    assert probabilities.p_yes == pytest.approx(0.6)
    assert probabilities.p_no == pytest.approx(0.2)
    assert probabilities.score == pytest.approx(0.75)
    assert probabilities.prompt_tokens == 42
    assert Probabilities(0.0, 0.0, 1).score is None
    for broken in (b"{}", b"not json", _completion([(1, -1.0), (2, -1.0)])):  # 3 is missing
        with pytest.raises(GatewayError) as refused:
            read_probabilities(broken, labels)
        assert refused.value.status == 502
