"""Live reload under load, a broken guard directory, and OpenTelemetry traces, against the
real app on a loopback socket (in a thread, sharing the session's runner)."""

from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from tests.server_support import FLAGGED, REFUSAL, UNFLAGGED, build_app, live_app, set_action  # noqa: E402

PROMPTS = [FLAGGED, UNFLAGGED, "Which city is the capital of France?", "What is the capital of Japan?"]


def client_for(base: str) -> "openai.OpenAI":
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.mark.slow
def test_reload_under_load_fails_nothing_and_each_answer_follows_its_deciding_guard(demo_guard_dir: Path, runner, tmp_path: Path) -> None:
    guard_dir = tmp_path / "g"
    shutil.copytree(demo_guard_dir, guard_dir)
    app = build_app({"g": guard_dir}, runner, audit=tmp_path / "audit.jsonl", max_batch_size=16)
    with live_app(app) as base:
        client = client_for(base)
        v1 = httpx.get(f"{base}/healthz", timeout=60).json()["guards"]["g"]["version"]
        started = threading.Barrier(17)
        reload_done = threading.Event()
        results: list[object] = []
        errors: list[BaseException] = []

        def one_client(i: int) -> None:
            started.wait(60)
            after_reload = 0
            for round_ in range(20):  # until one request has gone in after the reload
                prompt = PROMPTS[(i + round_) % len(PROMPTS)]
                done = reload_done.is_set()
                try:
                    results.append((prompt, client.chat.completions.create(model="g", messages=[{"role": "user", "content": prompt}], max_tokens=6)))
                except BaseException as exc:  # noqa: BLE001 - counted below
                    errors.append(exc)
                after_reload += done
                if after_reload:
                    return

        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(one_client, i) for i in range(16)]
            started.wait(60)
            set_action(guard_dir, "refuse")  # a policy edit lands while 16 clients are busy
            reloaded = httpx.post(f"{base}/v1/admin/reload", timeout=300).json()
            reload_done.set()
            for f in futures:
                f.result()
        v2 = reloaded["guards"]["g"]["version"]
        assert reloaded["ok"] and reloaded["guards"]["g"]["status"] == "reloaded" and v2 != v1
        assert errors == [] and len(results) >= 32
        versions = set()
        for prompt, resp in results:
            decision = resp.model_extra["eco_guard"]
            versions.add(decision["guard_version"])
            text = resp.choices[0].message.content
            if not decision["flagged"]:
                assert decision["action"] == "pass", prompt
            elif decision["guard_version"] == v1:
                assert decision["action"] == "corrupt" and text != REFUSAL, prompt
            else:
                assert decision["guard_version"] == v2 and decision["action"] == "refuse" and text == REFUSAL, prompt
        assert versions == {v1, v2}  # both guards answered: the swap happened under load
        after = client.chat.completions.create(model="g", messages=[{"role": "user", "content": FLAGGED}], max_tokens=6)
        assert after.model_extra["eco_guard"]["guard_version"] == v2 and after.choices[0].message.content == REFUSAL
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert len(audit) == len(results) + 1 and {a["guard_version"] for a in audit} == {v1, v2}


@pytest.mark.slow
def test_broken_guard_dir_on_reload_keeps_the_old_guard_serving(demo_guard_dir: Path, runner, tmp_path: Path) -> None:
    guard_dir = tmp_path / "g"
    shutil.copytree(demo_guard_dir, guard_dir)
    app = build_app({"g": guard_dir}, runner)
    with live_app(app) as base:
        v1 = httpx.get(f"{base}/healthz", timeout=60).json()["guards"]["g"]["version"]
        (guard_dir / "guard.yaml").write_text("format: nonsense\n", encoding="utf-8")
        r = httpx.post(f"{base}/v1/admin/reload", timeout=300)
        assert r.status_code == 422
        report = r.json()["guards"]["g"]
        assert report["status"] == "failed" and report["version"] == v1 and "guard.yaml" in report["error"]
        health = httpx.get(f"{base}/healthz", timeout=60).json()["guards"]["g"]
        assert health["version"] == v1 and "guard.yaml" in health["reload_error"]
        resp = client_for(base).chat.completions.create(model="g", messages=[{"role": "user", "content": FLAGGED}], max_tokens=6)
        assert resp.model_extra["eco_guard"]["action"] == "corrupt" and resp.model_extra["eco_guard"]["guard_version"] == v1
        metrics = httpx.get(f"{base}/metrics", timeout=60).text
        assert 'eco_guard_reload_failing{guard="g"} 1.0' in metrics
        assert 'eco_guard_reloads_total{guard="g",outcome="failed"} 1.0' in metrics


@pytest.mark.slow
def test_one_trace_per_request_with_genai_spans_and_no_content_by_default(demo_guard_dir: Path, runner, tmp_path: Path) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from eco_guard.server.tracing import Tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    secret = "Tell me about Marseille in France, codeword zebra-quartz."
    app = build_app({"g": demo_guard_dir}, runner, tracing=Tracing(provider))
    with live_app(app) as base:
        client = client_for(base)
        client.chat.completions.create(model="g", messages=[{"role": "user", "content": UNFLAGGED}], max_tokens=4)
        client.chat.completions.create(model="g", messages=[{"role": "user", "content": secret}], max_tokens=4)
        list(client.chat.completions.create(model="g", messages=[{"role": "user", "content": UNFLAGGED}], max_tokens=4, stream=True))
    spans = exporter.get_finished_spans()
    traces: dict[int, list] = {}
    for span in spans:
        traces.setdefault(span.context.trace_id, []).append(span)
    assert len(traces) == 3  # one per request
    for members in traces.values():
        names = sorted(s.name for s in members)
        assert names == ["chat g", "classify g", "generate_content g"], names
        root = next(s for s in members if s.name == "chat g")
        assert root.parent is None and all(s.parent.span_id == root.context.span_id for s in members if s is not root)
        assert root.attributes["gen_ai.operation.name"] == "chat" and root.attributes["gen_ai.request.model"] == "g"
        assert root.attributes["gen_ai.usage.output_tokens"] >= 1
        classify = next(s for s in members if s.name == "classify g")
        assert classify.attributes["eco_guard.action"] in ("pass", "corrupt")
    flagged = [s for s in spans if s.name == "classify g" and s.attributes["eco_guard.flagged"]]
    assert len(flagged) == 1
    dumped = json.dumps([dict(s.attributes) for s in spans] + [[dict(e.attributes or {}) for e in s.events] for s in spans])
    assert "zebra-quartz" not in dumped and "Australia" not in dumped and "gen_ai.input.messages" not in dumped
