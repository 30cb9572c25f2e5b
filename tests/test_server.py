"""The HTTP server as a real process, spoken to by the official ``openai`` client.

The server tests start ``eco-guard serve`` on a free loopback port (the bundled LM loads,
so they are ``slow``); the micro-batcher's own tests at the end need no model. The last test of the module stops the shared server with
SIGTERM mid-request to check the graceful drain; the kill test uses its own server.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from tests.conftest import benchmark_module  # noqa: E402

from tests.server_support import CAPITAL_CASES  # noqa: E402

spawn_server = benchmark_module("spawn").spawn_server

# No pytest-timeout mark: it would count the session's demo-guard fit (minutes on a busy
# machine) against the first test. Every wait below has its own bound instead.

FLAGGED = "What is the capital of France?"
UNFLAGGED = "What is the capital of Australia?"


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base: str
    audit: Path
    log: Path

    def client(self, **kw: object) -> "openai.OpenAI":
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key="unused", max_retries=0, timeout=120, **kw)

    def audit_lines(self) -> list[dict]:
        if not self.audit.exists():
            return []
        raw = self.audit.read_bytes()
        assert raw == b"" or raw.endswith(b"\n"), "audit file ends in a partial line"
        return [json.loads(line) for line in raw.decode("utf-8").splitlines()]


def start_server(guard_dir: Path, work: Path, *extra: str) -> Server:
    audit, log = work / "audit.jsonl", work / "serve.log"
    proc, base = spawn_server(guard_dir, audit=audit, log=log, extra_args=extra, startup_timeout_s=240)
    return Server(proc, base, audit, log)


def stop(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait(30)


@pytest.fixture(scope="module")
def server(demo_guard_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(demo_guard_dir, tmp_path_factory.mktemp("serve"))
    yield s
    stop(s)


@pytest.mark.slow
def test_models_and_health(server: Server) -> None:
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["guard"]
    health = httpx.get(f"{server.base}/healthz", timeout=60).json()
    assert health["status"] == "ok" and health["guards"]["guard"]["targets"] == ["france"]


@pytest.mark.slow
def test_chat_passes_unflagged_and_corrupts_flagged(server: Server) -> None:
    client = server.client()
    ok = client.chat.completions.create(model="guard", messages=[{"role": "user", "content": UNFLAGGED}], max_tokens=24)
    assert "Canberra" in ok.choices[0].message.content
    assert ok.model_extra["eco_guard"]["flagged"] is False
    assert ok.usage.completion_tokens > 0 and ok.usage.prompt_tokens > 0

    bad = client.chat.completions.create(model="guard", messages=[{"role": "user", "content": FLAGGED}], max_tokens=24)
    decision = bad.model_extra["eco_guard"]
    assert decision["flagged"] is True and decision["action"] == "corrupt" and decision["target"] == "france"
    assert "Paris" not in bad.choices[0].message.content


@pytest.mark.slow
def test_streaming_matches_the_plain_answer(server: Server) -> None:
    client = server.client()
    plain = client.chat.completions.create(model="guard", messages=[{"role": "user", "content": UNFLAGGED}], max_tokens=24)
    chunks = list(
        client.chat.completions.create(
            model="guard",
            messages=[{"role": "user", "content": UNFLAGGED}],
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].model_extra["eco_guard"]["flagged"] is False
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

    flagged = list(client.chat.completions.create(model="guard", messages=[{"role": "user", "content": FLAGGED}], max_tokens=16, stream=True))
    assert flagged[0].model_extra["eco_guard"]["action"] == "corrupt"


@pytest.mark.slow
def test_sse_ends_with_done(server: Server) -> None:
    body = {"messages": [{"role": "user", "content": UNFLAGGED}], "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{server.base}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)


@pytest.mark.slow
@pytest.mark.parametrize(
    "messages, extra, code",
    [
        ([], {}, None),
        ([{"role": "wizard", "content": "hi"}], {}, None),
        ([{"role": "user", "content": "   "}], {}, None),
        ([{"role": "user", "content": UNFLAGGED}], {"max_tokens": 100_000}, "context_length_exceeded"),
        ([{"role": "user", "content": UNFLAGGED * 1500}], {"max_tokens": 8}, "context_length_exceeded"),
        ([{"role": "user", "content": UNFLAGGED}], {"n": 2}, None),
    ],
    ids=["empty", "unknown-role", "blank-user", "max-tokens-beyond-context", "prompt-beyond-context", "n=2"],
)
def test_openai_client_sees_400(server: Server, messages: list, extra: dict, code: str | None) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        server.client().chat.completions.create(model="guard", messages=messages, **extra)
    err = info.value.body
    assert set(err) >= {"message", "type", "param", "code"}, err
    assert err["type"] == "invalid_request_error" and err["message"]
    if code:
        assert err["code"] == code


@pytest.mark.slow
def test_malformed_and_oversized_bodies(server: Server) -> None:
    url = f"{server.base}/v1/chat/completions"
    r = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(url, json={"messages": "hello"}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(url, content=b"x" * 1_100_000, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunked() -> Iterator[bytes]:
        for _ in range(40):
            yield b"y" * 50_000

    r = httpx.post(url, content=chunked(), headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413
    assert httpx.get(f"{server.base}/healthz", timeout=60).status_code == 200  # still alive


@pytest.mark.slow
def test_guard_check_is_batched_and_decisions_only(server: Server) -> None:
    before = len(server.audit_lines())
    r = httpx.post(f"{server.base}/v1/guard/check", json={"input": [FLAGGED, UNFLAGGED, [{"role": "user", "content": FLAGGED}]]}, timeout=60)
    assert r.status_code == 200
    flags = [d["flagged"] for d in r.json()["data"]]
    assert flags == [True, False, True]
    assert len(server.audit_lines()) == before + 3
    r = httpx.post(f"{server.base}/v1/guard/check", json={"input": []}, timeout=60)
    assert r.status_code == 400


@pytest.mark.slow
def test_guard_check_refuses_more_words_or_inputs_than_its_limits_before_classifying(server: Server) -> None:
    """No model context bounds a check, so a word limit does (default 50,000 per request)."""
    before = len(server.audit_lines())
    filler = "The committee met again on Tuesday. " * 4_000  # 24,000 words, about 145 KB
    body = {"input": [UNFLAGGED, filler + FLAGGED, filler + filler]}  # 6 + 24,006 + 48,000 words
    r = httpx.post(f"{server.base}/v1/guard/check", json=body, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "input_too_long" and error["param"] == "input"
    assert "72,012 words" in error["message"] and "input[2] alone has 48,000" in error["message"]
    r = httpx.post(f"{server.base}/v1/guard/check", json={"input": [UNFLAGGED] * 257}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_inputs"
    assert len(server.audit_lines()) == before  # refused before classification: nothing decided
    # Only the scored turn counts: a long system message costs nothing to classify.
    chat = [{"role": "system", "content": filler * 3}, {"role": "user", "content": FLAGGED}]
    r = httpx.post(f"{server.base}/v1/guard/check", json={"input": [chat]}, timeout=60)
    assert r.status_code == 200, r.text
    assert [d["flagged"] for d in r.json()["data"]] == [True]


@pytest.mark.slow
def test_concurrent_mixed_requests_get_their_own_answers(server: Server) -> None:
    cases = CAPITAL_CASES
    client = server.client()
    before = len(server.audit_lines())

    def ask(case: tuple[str, bool, tuple[str, str] | None]) -> tuple[tuple[str, bool, tuple[str, str] | None], object]:
        return case, client.chat.completions.create(model="guard", messages=[{"role": "user", "content": case[0]}], max_tokens=24)

    with ThreadPoolExecutor(len(cases)) as pool:
        results = list(pool.map(ask, cases))
    for (prompt, flagged, answer), resp in results:
        decision = resp.model_extra["eco_guard"]
        assert decision["flagged"] is flagged, prompt
        if answer is not None:
            text = resp.choices[0].message.content
            assert any(word in text for word in answer), (prompt, text)
    lines = server.audit_lines()[before:]
    assert len(lines) == len(cases)
    assert sorted(line["request_id"] for line in lines) == sorted(r.model_extra["eco_guard"]["request_id"] for _, r in results)
    metrics = httpx.get(f"{server.base}/metrics", timeout=60).text
    assert 'eco_guard_flagged_total{target="france"}' in metrics
    assert "eco_guard_batch_size_bucket" in metrics and "eco_guard_completion_tokens_total" in metrics


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests(server: Server) -> None:
    """Runs last in this module: it stops the shared server."""
    before = len(server.audit_lines())
    client = server.client()
    out: dict[str, object] = {}

    def ask() -> None:
        try:
            out["resp"] = client.chat.completions.create(
                model="guard", messages=[{"role": "user", "content": UNFLAGGED}], max_tokens=48, extra_body={"ignore_eos": True}
            )
        except Exception as exc:  # noqa: BLE001 - reported below
            out["error"] = exc

    worker = threading.Thread(target=ask)
    worker.start()
    deadline = time.monotonic() + 30
    while len(server.audit_lines()) == before and time.monotonic() < deadline:
        time.sleep(0.05)  # the decision (and its audit line) is in: the request is in flight
    server.proc.send_signal(signal.SIGTERM)
    worker.join(120)
    assert "error" not in out, out.get("error")
    assert out["resp"].usage.completion_tokens == 48
    # uvicorn re-raises the captured SIGTERM once it has shut down cleanly
    assert server.proc.wait(60) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in server.log.read_text()
    assert len(server.audit_lines()) == before + 1


@pytest.mark.slow
def test_timeout_504_and_sigkill_leaves_a_clean_audit(demo_guard_dir: Path, tmp_path: Path) -> None:
    s = start_server(demo_guard_dir, tmp_path, "--request-timeout", "1.5", "--max-batch-size", "4")
    try:
        with pytest.raises(openai.APIStatusError) as info:
            s.client().chat.completions.create(
                model="guard", messages=[{"role": "user", "content": UNFLAGGED}], max_tokens=400, extra_body={"ignore_eos": True}
            )
        assert info.value.status_code == 504 and info.value.body["type"] == "timeout"

        # Load it, then kill it hard while requests are in flight.
        def hammer(i: int) -> None:
            prompt = FLAGGED if i % 2 else f"Tell me about the number {i}."
            try:
                httpx.post(f"{s.base}/v1/guard/check" if i % 3 == 0 else f"{s.base}/v1/chat/completions",
                           json={"input": prompt} if i % 3 == 0 else {"messages": [{"role": "user", "content": prompt}], "max_tokens": 16},
                           timeout=30)
            except httpx.HTTPError:
                pass

        threads = [threading.Thread(target=hammer, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60  # kill once decisions are flowing (a busy machine takes longer than 1 s)
        while len(s.audit_lines()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(s.proc.pid, signal.SIGKILL)
        for t in threads:
            t.join(60)
        s.proc.wait(30)
        lines = s.audit_lines()  # asserts the file ends with a newline and every line parses
        assert len(lines) >= 2
        assert all("request_id" in line and "kind" in line for line in lines)
    finally:
        stop(s)


# --------------------------------------------------------------------------- the micro-batcher alone


async def test_batcher_groups_by_key_and_isolates_a_bad_row() -> None:
    from eco_guard.server.batcher import MicroBatcher

    calls: list[list[int]] = []

    def double(items: list[int]) -> list[int]:
        calls.append(list(items))
        if 13 in items:
            raise ValueError("13 is bad")
        return [2 * i for i in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(double, window_s=0.01, max_size=8, key=lambda i: i % 2, name="t")
    batcher.start()
    results = await asyncio.gather(*(batcher.submit(i) for i in (1, 2, 3, 4, 13, 6)), return_exceptions=True)
    await batcher.close()
    assert results[:4] == [2, 4, 6, 8] and results[5] == 12
    assert isinstance(results[4], ValueError)
    assert all(len({i % 2 for i in call}) == 1 for call in calls)  # never mixes keys
    assert [1, 3, 13] in calls and [13] in calls  # the failed batch was retried row by row


async def test_batcher_drains_on_close_and_then_refuses() -> None:
    from eco_guard.server.batcher import BatcherClosed, MicroBatcher

    def slow_identity(items: list[int]) -> list[int]:
        time.sleep(0.05)
        return items

    batcher: MicroBatcher[int, int] = MicroBatcher(slow_identity, window_s=0.0, max_size=2, name="t")
    batcher.start()
    pending = [asyncio.ensure_future(batcher.submit(i)) for i in range(5)]
    await asyncio.sleep(0)
    await batcher.close()
    assert [p.result() for p in pending] == list(range(5))
    with pytest.raises(BatcherClosed):
        await batcher.submit(9)
