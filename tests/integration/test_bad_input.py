"""Input that used to reach a 500 (or a wrong status): each now gets a clear 4xx and nothing is lost.

* JSON nested deeper than the API reads (a RecursionError, 500) is 400 ``invalid_json``.
* Integer query arguments past what Redis takes (signed 64-bit) are 400 ``invalid_parameter``.
* An id that is not 32 lowercase hex characters (``<id>:audio`` lands on another Redis key,
  WRONGTYPE, 500) is the resource's 404, as an unknown id is.
* A job ``name`` with CR/LF or non-Latin-1 letters made its download impossible, and
  ``../../etc/passwd`` went into ``Content-Disposition`` as it was: the header now has a safe
  ASCII ``filename`` and the real name in ``filename*``; control characters and names over
  200 characters are refused at submit.
* A chunked body over ``MAX_CONTENT_LENGTH`` was cut short and answered 400: it is 413
  ``request_too_large``.

Real stack: a real worker, a real Redis and, for what only a real HTTP server shows (header
encoding, chunked bodies), the app served on a port.
"""
from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import requests
from werkzeug.http import parse_options_header

pytestmark = pytest.mark.integration

#: One int64 past what Redis takes as an index or a score.
TOO_BIG = 2**63
INT64_MAX = 2**63 - 1


def unique(text: str) -> str:
    """Text no earlier test has cached."""
    return f"{text} Reference {uuid.uuid4().hex[:6]}."


def error_of(response: Any, status: int, code: str) -> dict[str, Any]:
    """The error body of ``response``, which must have ``status`` and ``code``."""
    body = response.get_json() if hasattr(response, "get_json") else response.json()
    assert response.status_code == status, (response.status_code, body)
    error = body["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    return error


def nested(depth: int, inner: str = "1") -> str:
    """A JSON array ``depth`` levels deep."""
    return "[" * depth + inner + "]" * depth


@pytest.fixture(scope="module")
def done_job(redis_broker_stack: Any) -> dict[str, Any]:
    """A succeeded job (its audio, history and record keys all exist), with its ``text``."""
    stack = redis_broker_stack  # module scope: the session's Redis-broker stack itself, not the per-test ``stack``
    text = unique("Bad input is no reason to fail.")
    r = stack.client.post("/v1/jobs", json={"text": text, "voice": "heart", "format": "wav", "name": "greeting"})
    assert r.status_code in (200, 202), r.get_json()
    done = stack.wait_for(r.get_json()["id"])
    assert done["status"] == "succeeded", done
    return {**done, "text": text}


@pytest.fixture(scope="module")
def done_batch(redis_broker_stack: Any, done_job: dict[str, Any]) -> dict[str, Any]:
    """A batch of one input served from the cache (its record and item keys exist)."""
    stack = redis_broker_stack
    r = stack.client.post("/v1/batches", json={"inputs": [{"text": done_job["text"], "name": "one"}],
                                               "defaults": {"voice": "heart", "format": "wav"}})
    assert r.status_code in (200, 202), r.get_json()
    return r.get_json()


def named_job(stack: Any, done_job: dict[str, Any], name: str) -> str:
    """A job with ``name`` and the done job's text, served from the cache at once: its id."""
    r = stack.client.post("/v1/jobs", json={"text": done_job["text"], "voice": "heart", "format": "wav",
                                            "name": name})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["status"] == "succeeded"
    return str(r.get_json()["id"])


# --- 1. JSON nested too deeply -----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/batches", "/v1/audio/speech"])
@pytest.mark.parametrize("body", [nested(1000), '{"text": ' + nested(1000) + "}", nested(100_000),
                                  '{"a": ' * 5000 + "1" + "}" * 5000, nested(65)],
                         ids=["array-1000", "text-1000", "array-100000", "object-5000", "array-65"])
def test_json_nested_too_deeply_is_invalid_json(stack: Any, path: str, body: str) -> None:
    """Before: 500 (RecursionError) at depth 1,000. After: 400 invalid_json past depth 64."""
    r = stack.client.post(path, data=body, content_type="application/json")
    error = error_of(r, 400, "invalid_json")
    assert "nested too deeply" in error["message"] and "64" in error["message"]


def test_json_at_the_depth_limit_is_read(stack: Any) -> None:
    """Depth 64 is parsed (and refused for what it says); brackets inside strings do not count."""
    r = stack.client.post("/v1/jobs", data='{"text": "hi", "name": ' + nested(63) + "}",
                          content_type="application/json")
    assert "'name' must be a string" in error_of(r, 400, "invalid_request")["message"]
    r = stack.client.post("/v1/jobs", json={"text": "[" * 5000 + " hi", "voice": "nosuchvoice"})
    error_of(r, 400, "unknown_voice")


# --- 2. integer query arguments past signed 64-bit ----------------------------------------------


def query_paths(done_job: dict[str, Any], done_batch: dict[str, Any]) -> list[tuple[str, str]]:
    """Every (path, integer query argument) the API reads."""
    return [("/v1/dlq", "offset"), ("/v1/dlq", "limit"), ("/v1/jobs", "cursor"), ("/v1/jobs", "limit"),
            ("/v1/batches", "cursor"), ("/v1/batches", "limit"),
            (f"/v1/batches/{done_batch['id']}/items", "cursor"), (f"/v1/batches/{done_batch['id']}/items", "limit"),
            (f"/v1/batches/{done_batch['id']}/result", "gap_ms"), (f"/v1/batches/{done_batch['id']}/audio", "gap_ms")]


@pytest.mark.parametrize("value", [str(10**22), str(TOO_BIG), "9" * 5000, str(-TOO_BIG)])
def test_huge_integer_query_arguments_are_invalid_parameter(stack: Any, done_job: dict[str, Any],
                                                           done_batch: dict[str, Any], value: str) -> None:
    """Before: 500 for ``/v1/dlq?offset=10**22`` and ``items?cursor=10**22``. After: 400 naming the argument."""
    for path, name in query_paths(done_job, done_batch):
        r = stack.client.get(path, query_string={name: value})
        error = error_of(r, 400, "invalid_parameter")
        assert repr(name) in error["message"], (path, error)
        assert len(error["message"]) < 300, error  # a 5,000-digit value is not echoed whole


def test_the_largest_int64_offset_and_cursor_answer_an_empty_page(stack: Any, done_batch: dict[str, Any]) -> None:
    """2**63 - 1 is within what Redis takes: an empty page, not an error."""
    r = stack.client.get("/v1/dlq", query_string={"offset": INT64_MAX, "limit": 1000})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["items"] == []
    r = stack.client.get(f"/v1/batches/{done_batch['id']}/items", query_string={"cursor": INT64_MAX, "limit": 1000})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["items"] == []
    for path in ("/v1/jobs", "/v1/batches"):
        r = stack.client.get(path, query_string={"cursor": INT64_MAX})
        assert r.status_code == 200, (path, r.get_json())


# --- 3. ids that would land on other Redis keys -----------------------------------------------


def test_ids_that_are_not_uuid_hex_are_the_resources_404(stack: Any, done_job: dict[str, Any],
                                                       done_batch: dict[str, Any]) -> None:
    """Before: 500 (WRONGTYPE) for ``/v1/jobs/<id>:audio`` and the like. After: 404 as for an unknown id."""
    client = stack.client
    jid, bid = done_job["id"], done_batch["id"]
    job_ids = [f"{jid}:audio", f"{jid}:history", f"{jid}:parts", f"{jid}:part:0", jid.upper(), jid[:-1],
               f"{jid}0", "x:history", "*", "a.b", "-", "x" * 40]
    for bad in job_ids:
        for method, path in (("GET", f"/v1/jobs/{bad}"), ("GET", f"/v1/jobs/{bad}/audio"),
                             ("DELETE", f"/v1/jobs/{bad}")):
            r = client.open(path, method=method)
            error = error_of(r, 404, "job_not_found")
            assert error["message"] == f"no job {bad!r} (unknown or expired)", (path, error)
        for method, path in (("GET", f"/v1/dlq/{bad}"), ("POST", f"/v1/dlq/{bad}/replay"),
                             ("DELETE", f"/v1/dlq/{bad}")):
            error = error_of(client.open(path, method=method), 404, "dead_letter_not_found")
            assert error["message"] == f"no dead-letter record for job {bad!r}", (path, error)
    for bad in (f"{bid}:items", f"{bid}:done", f"{bid}:running", bid.upper(), "x:items"):
        for method, path in (("GET", f"/v1/batches/{bad}"), ("GET", f"/v1/batches/{bad}/items"),
                             ("GET", f"/v1/batches/{bad}/result"), ("GET", f"/v1/batches/{bad}/audio"),
                             ("DELETE", f"/v1/batches/{bad}")):
            error = error_of(client.open(path, method=method), 404, "batch_not_found")
            assert error["message"] == f"no batch {bad!r} (unknown or expired)", (path, error)
    # An unknown id of the right shape answers the same way, and nothing was lost or changed.
    error_of(client.get(f"/v1/jobs/{uuid.uuid4().hex}"), 404, "job_not_found")
    error_of(client.get(f"/v1/batches/{uuid.uuid4().hex}"), 404, "batch_not_found")
    assert client.get(f"/v1/jobs/{jid}").get_json()["status"] == "succeeded"
    assert client.get(f"/v1/jobs/{jid}/audio").status_code == 200
    assert stack.redis.type(f"tts:job:{jid}:history") == b"list"
    assert client.get(f"/v1/batches/{bid}").status_code == 200
    assert client.get(f"/v1/batches/{bid}/items").get_json()["items"][0]["status"] == "succeeded"


# --- 4. names in Content-Disposition ------------------------------------------------------------


def download(base: str, job_id: str) -> requests.Response:
    """The job's audio over real HTTP."""
    r = requests.get(f"{base}/v1/jobs/{job_id}/audio", timeout=30)
    assert r.status_code == 200, r.text[:500]
    assert r.content[:4] == b"RIFF"
    return r


def disposition(response: requests.Response) -> tuple[str, str | None, str]:
    """(the ASCII ``filename``, the raw ``filename*`` or None, the name a client uses)."""
    header = response.headers["Content-Disposition"]
    assert header.isascii() and "\r" not in header and "\n" not in header, header
    assert header.startswith("attachment; "), header
    plain = re.search(r'; filename="([^"]*)"', header)
    star = re.search(r"; filename\*=(\S+)", header)
    assert plain is not None, header
    fallback = plain.group(1)
    for bad in ("/", "\\", "..", '"'):
        assert bad not in fallback, header
    assert all(ch.isprintable() for ch in fallback), header
    _, options = parse_options_header(header)
    return fallback, star.group(1) if star else None, options["filename"]


@pytest.mark.parametrize(("name", "fallback", "real"), [
    ("Kapitel 1 – Überblick", "Kapitel 1 Uberblick.wav", "Kapitel 1 – Überblick.wav"),
    ("第一章", None, "第一章.wav"),
    ("../../etc/passwd", "_._etc_passwd.wav", "_._etc_passwd.wav"),
    ('say "hi"; filename=evil.exe', "say _hi_; filename=evil.exe.wav", "say _hi_; filename=evil.exe.wav"),
])
def test_a_name_gives_a_safe_download_header(stack: Any, done_job: dict[str, Any], name: str,
                                             fallback: str | None, real: str) -> None:
    """Before: a non-Latin-1 name broke the download (the server failed writing the header: no response
    at all over HTTP), ``../../etc/passwd`` went into the header unchanged. After: a safe ASCII
    ``filename``, the real name (made just as safe) in ``filename*``."""
    job_id = named_job(stack, done_job, name)
    with stack.serve() as base:
        ascii_name, star, used = disposition(download(base, job_id))
    assert ascii_name == (fallback or f"{job_id}.wav")
    assert used == real
    if real != ascii_name:
        assert star == "UTF-8''" + quote(real, safe="!#$&+-.^_`|~")


def test_a_stored_name_with_line_breaks_still_downloads(stack: Any, done_job: dict[str, Any]) -> None:
    """A record written before names were checked (CR/LF, a tab, quotes, a backslash). Before: 500
    (werkzeug refuses a header with a newline). After: 200 with a safe header."""
    job_id = named_job(stack, done_job, "before")
    stack.redis.hset(f"tts:job:{job_id}", "name", 'a\r\nSet-Cookie: x=1\t"é"\\'.encode())
    with stack.serve() as base:
        ascii_name, _, used = disposition(download(base, job_id))
    assert ascii_name == "a Set-Cookie_ x=1 _e_.wav"
    assert used == "a Set-Cookie_ x=1 _é_.wav"


def test_the_batch_downloads_use_the_same_header(stack: Any, done_batch: dict[str, Any]) -> None:
    """The zip and the concatenated file are named by the same helper."""
    bid = done_batch["id"]
    with stack.serve() as base:
        zipped = requests.get(f"{base}/v1/batches/{bid}/result", timeout=30)
        audio = requests.get(f"{base}/v1/batches/{bid}/audio", timeout=30)
    assert zipped.status_code == 200 and audio.status_code == 200
    assert zipped.headers["Content-Disposition"] == f'attachment; filename="batch-{bid}.zip"'
    assert audio.headers["Content-Disposition"] == f'attachment; filename="batch-{bid}.wav"'


@pytest.mark.parametrize(("name", "what"), [
    ("line\r\nbreak", "U+000D"), ("tab\there", "U+0009"), ("nul\x00", "U+0000"), ("bell\x07", "U+0007"),
    ("del\x7f", "U+007F"), ("c1\x85", "U+0085"), ("sep\u2028", "U+2028"), ("lone\ud800", "U+D800"),
    ("x" * 201, "200 characters"),
])
def test_a_bad_name_is_refused_at_submit(stack: Any, done_job: dict[str, Any], name: str, what: str) -> None:
    """Before: accepted (202; the CR/LF one's download was then a 500), the lone surrogate a 500 at once.
    After: 400 invalid_request with ``param: name``, and in a batch that input alone rejected."""
    body = json.dumps({"text": unique("Never queued."), "voice": "heart", "name": name})
    r = stack.client.post("/v1/jobs", data=body, content_type="application/json")
    error = error_of(r, 400, "invalid_request")
    assert error["param"] == "name" and what in error["message"], error
    # In a batch only that input is refused; the others go ahead.
    r = stack.client.post("/v1/batches", data=json.dumps({
        "inputs": [{"text": done_job["text"], "name": "fine"}, {"text": unique("Not fine."), "name": name}],
        "defaults": {"voice": "heart", "format": "wav"}}), content_type="application/json")
    assert r.status_code in (200, 202), r.get_json()
    rejected = r.get_json()["rejected"]
    assert [x["index"] for x in rejected] == [1] and rejected[0]["error"]["code"] == "invalid_request"
    assert what in rejected[0]["error"]["message"]


def test_a_batch_input_with_a_lone_surrogate_is_rejected_alone(stack: Any, done_job: dict[str, Any]) -> None:
    """Before: 500 (the rejected input's record could not be stored). After: that input alone is rejected."""
    r = stack.client.post("/v1/batches", data=json.dumps({
        "inputs": [{"text": done_job["text"]}, {"text": "Lone \ud800 surrogate.", "name": "lone"}],
        "defaults": {"voice": "heart", "format": "wav"}}), content_type="application/json")
    assert r.status_code in (200, 202), r.get_json()
    rejected = r.get_json()["rejected"]
    assert [(x["index"], x["error"]["code"]) for x in rejected] == [(1, "unreadable_text")]
    items = stack.client.get(f"/v1/batches/{r.get_json()['id']}/items").get_json()["items"]
    assert [(i["status"], i["name"]) for i in items] == [("succeeded", None), ("failed", "lone")]


def test_a_name_of_200_characters_is_accepted(stack: Any, done_job: dict[str, Any]) -> None:
    """The limit is inclusive; a long name is shortened in the file name, kept whole on the job."""
    job_id = named_job(stack, done_job, "é" * 200)
    assert stack.client.get(f"/v1/jobs/{job_id}").get_json()["name"] == "é" * 200
    with stack.serve() as base:
        _, _, used = disposition(download(base, job_id))
    assert used.endswith(".wav") and set(used[:-4]) == {"é"}


# --- 5. a chunked body over the limit -----------------------------------------------------------


def chunks(total: int, size: int = 1 << 20) -> Iterator[bytes]:
    """A JSON body of ``total`` bytes, made as it is sent (requests sends a generator chunked)."""
    head, tail = b'{"text": "', b'", "voice": "heart"}'
    yield head
    left = total - len(head) - len(tail)
    while left > 0:
        part = min(size, left)
        yield b"a" * part
        left -= part
    yield tail


def test_a_chunked_body_over_the_limit_is_413(stack: Any) -> None:
    """Before: cut at 16 MiB and answered 400 invalid_json. After: 413 request_too_large."""
    limit = stack.app.config["MAX_CONTENT_LENGTH"]
    with stack.serve() as base:
        r = requests.post(f"{base}/v1/jobs", data=chunks(limit + 4 * 1024 * 1024),
                          headers={"Content-Type": "application/json"}, timeout=120)
        error = error_of(r, 413, "request_too_large")
        assert str(limit) in error["message"] or f"{limit // (1024 * 1024)} MiB" in error["message"], error
        # A chunked body within the limit is read whole, as before.
        small = requests.post(f"{base}/v1/jobs", data=iter([b'{"text": "hi", ', b'"voice": "nosuchvoice"}']),
                              headers={"Content-Type": "application/json"}, timeout=30)
        error_of(small, 400, "unknown_voice")
        # The server still answers on new connections.
        assert requests.get(f"{base}/v1/jobs?limit=1", timeout=30).status_code == 200


def test_a_content_length_over_the_limit_is_413(stack: Any) -> None:
    """With a Content-Length the limit is known before reading: the same 413 and code."""
    limit = stack.app.config["MAX_CONTENT_LENGTH"]
    r = stack.client.post("/v1/jobs", data=b"x" * (limit + 1), content_type="application/json")
    error_of(r, 413, "request_too_large")
