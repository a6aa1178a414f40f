"""Batches end to end: REST -> Redis -> real Celery worker -> real voices -> streamed zip."""
from __future__ import annotations

import io
import json
import time
import uuid
import zipfile
from typing import TYPE_CHECKING, Any

import pytest

from engine.audio import decode
from engine.text import normalize, split_sentences

if TYPE_CHECKING:
    from conftest import Corpus

pytestmark = pytest.mark.integration

def corpus_lines(corpus: Corpus) -> list[str]:
    """Short corpus-like inputs: the sentences of the corpus's short files."""
    lines: list[str] = []
    for relative in ("letters/welcome.txt", "letters/reminder.txt", "numbers.txt", "unicode.txt", "news/briefing.md"):
        text = corpus.text(relative)
        lines += [s for s in split_sentences(normalize(text, markdown=relative.endswith(".md"))) if len(s) > 8]
    return lines


def tag() -> str:
    """A tag that keeps these inputs out of earlier tests' cache."""
    return uuid.uuid4().hex[:6]


def wait_batch(stack: Any, batch_id: str, timeout: float = 180.0) -> dict[str, Any]:
    """Poll until every item of the batch has finished."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = stack.client.get(f"/v1/batches/{batch_id}").get_json()
        if body.get("finished_at"):
            return body
        time.sleep(0.2)
    logs = "\n".join(w.log_tail() for w in stack.workers)
    raise AssertionError(f"batch {batch_id} not finished after {timeout}s: {body}\n{logs}")


def read_zip(response: Any) -> tuple[zipfile.ZipFile, dict[str, Any]]:
    assert response.status_code == 200, response.data[:500]
    assert response.mimetype == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.data))
    assert archive.testzip() is None
    return archive, json.loads(archive.read("manifest.json"))


def test_bad_input_is_reported_and_the_rest_is_zipped_in_order(stack, corpus):
    client = stack.client
    run = tag()
    texts = corpus_lines(corpus)[:19]
    assert len(texts) == 19
    inputs: list[dict[str, Any]] = [{"text": f"{t} ({run})"} for t in texts]
    names = {2: "../../etc/passwd", 3: "Chapter: one/two", 4: "Intro", 5: "intro", 6: "CON", 7: "..", 8: "notes.mp3"}
    for index, name in names.items():
        inputs[index]["name"] = name
    inputs[12]["voice"] = "joe"
    inputs[13]["format"] = "wav"
    inputs.insert(10, {"text": "   ", "name": "blank"})  # the bad one, in the middle
    r = client.post("/v1/batches", json={"inputs": inputs, "defaults": {"voice": "heart", "format": "mp3"}})
    assert r.status_code == 202, r.get_json()
    body = r.get_json()
    assert body["status"] in ("queued", "running")
    assert body["counts"]["total"] == 20
    assert body["counts"]["failed"] == 1
    assert body["links"]["self"] == f"/v1/batches/{body['id']}"
    assert r.headers["Location"] == body["links"]["self"]
    assert [x["index"] for x in body["rejected"]] == [10]
    assert body["rejected"][0]["error"]["code"] == "empty_text"

    done = wait_batch(stack, body["id"])
    assert done["status"] == "partially_succeeded", done
    assert done["counts"] == {"total": 20, "queued": 0, "running": 0, "succeeded": 19, "failed": 1, "cancelled": 0}
    assert done["request_counts"] == {"total": 20, "completed": 19, "failed": 1}
    assert done["percent_done"] == 100.0
    assert done["characters"] == sum(len(i["text"]) for n, i in enumerate(inputs) if n != 10)
    assert done["audio_duration_seconds"] > 10
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]

    failed = client.get(f"/v1/batches/{body['id']}/items?status=failed").get_json()
    assert [(i["index"], i["name"], i["status"]) for i in failed["items"]] == [(10, "blank", "failed")]
    assert failed["items"][0]["error"]["code"] == "empty_text"
    assert failed["items"][0]["attempts"] == 0
    job = client.get(failed["items"][0]["links"]["job"]).get_json()
    assert job["status"] == "failed" and job["batch_index"] == 10

    archive, manifest = read_zip(client.get(f"/v1/batches/{body['id']}/result"))
    files = [e["file"] for e in manifest["items"]]
    assert [e["index"] for e in manifest["items"]] == list(range(20))
    assert manifest["complete"] is True and manifest["missing"] == 1 and manifest["total"] == 20
    assert files[10] is None and manifest["items"][10]["error"]["code"] == "empty_text"
    good = [f for f in files if f]
    assert archive.namelist() == [*good, "manifest.json"]  # input order, manifest last
    assert len({f.lower() for f in good}) == 19
    for name in good:
        assert "/" not in name and "\\" not in name and ".." not in name and not name.startswith(".")
    assert files[0] == "0001.mp3" and files[19] == "0020.mp3"
    assert files[4] == "Intro.mp3" and files[5] == "intro-2.mp3"
    assert files[3] == "Chapter_ one_two.mp3"
    assert files[6] == "_CON.mp3"
    assert files[7] == "0008.mp3"  # nothing left of ".."
    assert files[8] == "notes.mp3"
    assert files[13] == "0014.mp3" and files[14] == "0015.wav"  # inputs 12 and 13 moved up one
    assert files[2] == "_._etc_passwd.mp3"
    for entry in manifest["items"]:
        if entry["file"] is None:
            continue
        data = archive.read(entry["file"])
        assert len(data) == entry["bytes"]
        samples, rate = decode(data, entry["file"].rsplit(".", 1)[1])
        assert abs(len(samples) / rate * 1000 - entry["duration_ms"]) < 100, entry
        assert entry["status"] == "succeeded" and entry["error"] is None


@pytest.mark.both_brokers  # a batch's items go out in pipelined publishes (tasks.publish.send_tasks)
def test_items_pagination_and_status_filter(stack):
    client = stack.client
    run = tag()
    inputs = [{"text": f"Page item {n}, run {run}.", "name": f"item-{n}"} for n in range(7)]
    body = client.post("/v1/batches", json={"inputs": inputs, "defaults": {"format": "mp3"}}).get_json()
    assert body["format"] == "mp3"
    wait_batch(stack, body["id"])
    seen: list[dict[str, Any]] = []
    cursor = ""
    pages = 0
    while True:
        page = client.get(f"/v1/batches/{body['id']}/items?limit=3" + (f"&cursor={cursor}" if cursor else "")).get_json()
        seen += page["items"]
        pages += 1
        if not page["next_cursor"]:
            break
        cursor = page["next_cursor"]
    assert pages == 3
    assert [i["index"] for i in seen] == list(range(7))
    assert [i["name"] for i in seen] == [f"item-{n}" for n in range(7)]
    assert all(i["status"] == "succeeded" and i["attempts"] == 1 and i["duration_seconds"] > 0 for i in seen)
    assert client.get(f"/v1/batches/{body['id']}/items?status=failed").get_json()["items"] == []
    assert client.get(f"/v1/batches/{body['id']}/items?status=bogus").status_code == 400
    assert client.get(f"/v1/batches/{body['id']}/items?limit=0").status_code == 400


def test_concatenated_result_has_every_item_and_the_gaps(stack):
    client = stack.client
    run = tag()
    inputs = [
        {"text": f"The first part of the story, run {run}.", "name": "one"},
        {"text": f"A second voice takes over here, run {run}.", "voice": "joe", "format": "wav"},
        {"text": f"And the first voice closes it, run {run}."},
    ]
    r = client.post("/v1/batches", json={"inputs": inputs, "defaults": {"voice": "heart", "format": "mp3"},
                                         "concatenate": True, "gap_ms": 400})
    assert r.status_code == 202, r.get_json()
    batch_id = r.get_json()["id"]
    assert r.get_json()["concatenate"] is True
    wait_batch(stack, batch_id)
    items = client.get(f"/v1/batches/{batch_id}/items").get_json()["items"]
    expected = sum(i["duration_seconds"] for i in items) + 2 * 0.4

    archive, manifest = read_zip(client.get(f"/v1/batches/{batch_id}/result"))
    assert archive.namelist() == [f"batch-{batch_id}.mp3", "manifest.json"]
    assert manifest["concatenated"] is True and manifest["gap_ms"] == 400
    samples, rate = decode(archive.read(manifest["file"]), "mp3")
    assert rate == 24000
    assert abs(len(samples) / rate - expected) < 0.15, (len(samples) / rate, expected)
    offsets = [e["offset_ms"] for e in manifest["items"]]
    assert offsets[0] == 0
    assert abs(offsets[1] - (items[0]["duration_seconds"] + 0.4) * 1000) < 60
    assert offsets[1] < offsets[2]

    # The same audio straight, and separate files on request.
    audio = client.get(f"/v1/batches/{batch_id}/audio?gap_ms=0")
    assert audio.status_code == 200 and audio.mimetype == "audio/mpeg"
    assert audio.headers["X-Batch-Items-Included"] == "3"
    plain, _ = decode(audio.data, "mp3")
    assert abs(len(plain) / rate - (expected - 0.8)) < 0.15
    archive, manifest = read_zip(client.get(f"/v1/batches/{batch_id}/result?concatenate=0"))
    assert archive.namelist() == ["one.mp3", "0002.wav", "0003.mp3", "manifest.json"]


def test_limits_and_malformed_batches(make_stack):
    stack = make_stack(start=False, TTS_MAX_BATCH_INPUTS="5")
    client = stack.client
    r = client.post("/v1/batches", json={"inputs": [{"text": f"Input {n}."} for n in range(6)]})
    assert r.status_code == 413
    error = r.get_json()["error"]
    assert error["code"] == "too_many_inputs" and "5" in error["message"]

    # Every input bad: the batch is refused, with each input's reason.
    r = client.post("/v1/batches", json={"inputs": [{"text": "---", "markdown": True},
                                                    {"text": "hi", "voice": "nobody"},
                                                    {"text": "hi", "name": "two\nlines"}]})
    assert r.status_code == 400
    error = r.get_json()["error"]
    assert error["code"] == "invalid_batch"
    assert [(e["index"], e["error"]["code"]) for e in error["errors"]] == [
        (0, "empty_text"), (1, "unknown_voice"), (2, "invalid_request")]
    # A blank text is refused for its content: that input alone.
    body = client.post("/v1/batches", json={"inputs": [{"text": "hi"}, {"text": "  "}]}).get_json()
    assert [(x["index"], x["error"]["code"]) for x in body["rejected"]] == [(1, "empty_text")], body
    # An input of the wrong shape is the sender's bug: the whole batch is refused, naming it.
    for inputs, param in [([{"text": "hi"}, {"text": "hi", "speed": 9}], "inputs[1].speed"),
                          ([{"text": "hi"}, "just a string"], "inputs[1]")]:
        error = client.post("/v1/batches", json={"inputs": inputs}).get_json()["error"]
        assert (error["code"], error["param"]) == ("invalid_request", param), error

    for body, code in [
        ({}, "invalid_request"),
        ({"inputs": []}, "invalid_request"),
        ({"inputs": "text"}, "invalid_request"),
        ({"inputs": [{"text": "hi"}], "colour": "blue"}, "invalid_request"),
        ({"inputs": [{"text": "hi"}], "gap_ms": -1}, "invalid_request"),
        ({"inputs": [{"text": "hi"}], "concatenate": "yes"}, "invalid_request"),
        ({"inputs": [{"text": "hi"}], "defaults": {"text": "x"}}, "invalid_request"),
        ({"inputs": [{"text": "hi"}], "defaults": {"voice": "nobody"}}, "unknown_voice"),
        ({"inputs": [{"text": "hi"}], "defaults": {"format": "mp4"}}, "invalid_request"),
        ([1, 2], "invalid_request"),
    ]:
        r = client.post("/v1/batches", json=body)
        assert r.status_code == 400, (body, r.get_json())
        assert r.get_json()["error"]["code"] == code, (body, r.get_json())
    assert "defaults" in client.post("/v1/batches", json={"inputs": [{"text": "hi"}],
                                                          "defaults": {"voice": "nobody"}}).get_json()["error"]["message"]
    assert client.post("/v1/batches", data="{nope", content_type="application/json").status_code == 400
    assert client.get("/v1/batches/nope").status_code == 404
    assert client.get("/v1/batches/nope").get_json()["error"]["code"] == "batch_not_found"
    for path in ("/v1/batches/nope/items", "/v1/batches/nope/result", "/v1/batches/nope/audio"):
        assert client.get(path).status_code == 404, path
    assert client.delete("/v1/batches/nope").status_code == 404
    assert client.post("/v1/batches/nope/cancel").status_code == 404


def test_cancel_a_batch(stack):
    client = stack.client
    run = tag()
    paragraph = " ".join(f"Sentence {n} keeps this worker busy for a while, run {run}." for n in range(20))
    inputs = [{"text": f"Input {n}. {paragraph}"} for n in range(8)]
    r = client.post("/v1/batches", json={"inputs": inputs, "defaults": {"voice": "joe", "format": "wav",
                                                                        "cache": False}})
    assert r.status_code == 202
    batch_id = r.get_json()["id"]
    cancelled = client.post(f"/v1/batches/{batch_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.get_json()["status"] == "cancelled"
    done = wait_batch(stack, batch_id, timeout=120)
    assert done["status"] == "cancelled"
    counts = done["counts"]
    assert counts["queued"] == 0 and counts["running"] == 0
    assert counts["cancelled"] >= 6  # at most the two already running could finish
    assert counts["succeeded"] + counts["cancelled"] == 8
    assert done["cancelled_at"] and done["finished_at"]
    items = client.get(f"/v1/batches/{batch_id}/items?status=cancelled").get_json()["items"]
    assert len(items) == counts["cancelled"]
    # Cancelling again changes nothing; the zip still accounts for every input.
    assert client.post(f"/v1/batches/{batch_id}/cancel").get_json()["counts"] == counts
    _, manifest = read_zip(client.get(f"/v1/batches/{batch_id}/result"))
    assert len(manifest["items"]) == 8
    assert sum(1 for e in manifest["items"] if e["file"]) == counts["succeeded"]
    # Deleting it makes the batch and every item 404, and takes them out of the lists.
    item_ids = [i["id"] for i in client.get(f"/v1/batches/{batch_id}/items").get_json()["items"]]
    r = client.delete(f"/v1/batches/{batch_id}")
    assert r.status_code == 200 and r.get_json() == {"id": batch_id, "object": "batch", "deleted": True}
    for path in ("", "/items", "/result", "/audio"):
        assert client.get(f"/v1/batches/{batch_id}{path}").status_code == 404, path
    assert client.delete(f"/v1/batches/{batch_id}").status_code == 404
    assert batch_id not in [b["id"] for b in client.get("/v1/batches?limit=1000").get_json()["batches"]]
    for item_id in item_ids:
        assert client.get(f"/v1/jobs/{item_id}").status_code == 404
        assert client.get(f"/v1/jobs/{item_id}/audio").status_code == 404


def test_cached_inputs_finish_at_submit_and_batches_are_listed(stack):
    client = stack.client
    run = tag()
    inputs = [{"text": f"Cached input {n}, run {run}."} for n in range(3)]
    first = client.post("/v1/batches", json={"inputs": inputs, "defaults": {"format": "wav"}}).get_json()
    wait_batch(stack, first["id"])
    again = client.post("/v1/batches", json={"inputs": inputs, "defaults": {"format": "wav"}})
    assert again.status_code == 200  # every item came from the cache at once
    body = again.get_json()
    assert body["status"] == "succeeded" and body["percent_done"] == 100.0
    assert body["finished_at"]
    items = client.get(f"/v1/batches/{body['id']}/items").get_json()["items"]
    assert all(i["cache_hit"] and i["attempts"] == 0 for i in items)

    page = client.get("/v1/batches?limit=1").get_json()
    assert [b["id"] for b in page["batches"]] == [body["id"]]
    rest = client.get(f"/v1/batches?limit=1&cursor={page['next_cursor']}").get_json()
    assert rest["batches"][0]["id"] == first["id"]


def test_a_thousand_inputs(stack):
    """The issue's done-when: 1,000 short inputs complete, and the zip's manifest accounts for each."""
    client = stack.client
    inputs = [{"text": f"Item number {n}."} for n in range(1, 1001)]
    started = time.perf_counter()
    # cache off: every input is synthesized, however often the suite has run on this Redis
    r = client.post("/v1/batches", json={"inputs": inputs, "defaults": {"voice": "heart", "format": "wav",
                                                                        "cache": False}})
    submit_seconds = time.perf_counter() - started
    assert r.status_code == 202, r.get_json()
    assert submit_seconds < 5.0, submit_seconds
    batch_id = r.get_json()["id"]
    done = wait_batch(stack, batch_id, timeout=300)
    wall = time.perf_counter() - started
    assert done["status"] == "succeeded", done["counts"]

    zip_started = time.perf_counter()
    archive, manifest = read_zip(client.get(f"/v1/batches/{batch_id}/result"))
    zip_seconds = time.perf_counter() - zip_started
    assert manifest["total"] == 1000 and manifest["missing"] == 0 and manifest["complete"] is True
    assert [e["index"] for e in manifest["items"]] == list(range(1000))
    assert all(e["status"] == "succeeded" and e["file"] == f"{e['index'] + 1:04d}.wav" for e in manifest["items"])
    assert len(archive.namelist()) == 1001
    audio_minutes = done["audio_duration_seconds"] / 60
    print(f"\n1,000-input batch: submit {submit_seconds:.2f}s, all done after {wall:.1f}s, "
          f"{audio_minutes:.1f} audio minutes, zip {zip_seconds:.1f}s")


def test_idempotency_key_returns_the_same_batch(stack):
    client = stack.client
    key = uuid.uuid4().hex
    body = {"inputs": [{"text": f"Idempotent batch item {i} {key[:6]}."} for i in range(3)],
            "defaults": {"voice": "heart", "format": "wav"}}
    first = client.post("/v1/batches", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == 202, first.get_json()
    again = client.post("/v1/batches", json=body, headers={"Idempotency-Key": key})
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.get_json()["counts"]["total"] == 3  # nothing was queued twice
    other = client.post("/v1/batches", json={**body, "gap_ms": 10}, headers={"Idempotency-Key": key})
    assert other.status_code == 422
    assert other.get_json()["error"]["code"] == "idempotency_key_reused"
    assert "batch" in other.get_json()["error"]["message"]

    # A refused request does not use up its key.
    key2 = uuid.uuid4().hex
    bad = client.post("/v1/batches", json={"inputs": [{"text": ""}], "defaults": {"voice": "heart"}},
                      headers={"Idempotency-Key": key2})
    assert bad.status_code == 400
    good = client.post("/v1/batches", json=body | {"gap_ms": 5}, headers={"Idempotency-Key": key2})
    assert good.status_code == 202


def test_the_idempotency_key_of_a_deleted_batch_is_free_again(stack):
    """Found by schemathesis: a submit with the key of a deleted batch looped in the API for ever."""
    client = stack.client
    body = {"inputs": [{"text": f"Deleted then submitted again, run {tag()}."}], "defaults": {"format": "wav"}}
    headers = {"Idempotency-Key": f"batch-key-{tag()}"}
    first = client.post("/v1/batches", json=body, headers=headers).get_json()["id"]
    assert client.delete(f"/v1/batches/{first}").status_code == 200
    again = client.post("/v1/batches", json=body, headers=headers)
    assert again.status_code in (200, 202) and again.get_json()["id"] != first, again.get_json()
    replay = client.post("/v1/batches", json=body, headers=headers)
    assert replay.get_json()["id"] == again.get_json()["id"] and replay.headers["Idempotent-Replayed"] == "true"
