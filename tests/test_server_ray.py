"""The same routes on Ray Serve: a local Ray instance, one classification replica and two
generation replicas, spoken to by the official ``openai`` client over loopback.

Costly (Ray's processes plus a model per generation replica), so the module shares one
deployment and keeps requests short.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from tests.server_support import CAPITAL_CASES as CASES  # noqa: E402
from tests.server_support import FLAGGED, UNFLAGGED, free_port  # noqa: E402

pytestmark = pytest.mark.slow



class RayServed:
    def __init__(self, base: str, audit_dir: Path) -> None:
        self.base = base
        self.audit_dir = audit_dir

    def client(self) -> "openai.OpenAI":
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key="unused", max_retries=0, timeout=300)

    def audit_lines(self) -> list[dict]:
        lines = []
        for path in sorted(self.audit_dir.glob("audit.*.jsonl")):
            raw = path.read_bytes()
            assert raw == b"" or raw.endswith(b"\n"), f"{path} ends in a partial line"
            lines += [json.loads(line) for line in raw.decode().splitlines()]
        return lines


@pytest.fixture(scope="module")
def ray_served(demo_guard_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayServed]:
    from eco_guard.server.ray_app import APP_NAME, build_app

    work = tmp_path_factory.mktemp("ray")
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(
            build_app({"guard": demo_guard_dir}, audit_path=work / "audit.jsonl", generate_replicas=2, torch_threads=1),
            name=APP_NAME, route_prefix="/",
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield RayServed(base, work)
    finally:
        serve.shutdown()
        ray.shutdown()


def test_ray_chat_and_streaming(ray_served: RayServed) -> None:
    client = ray_served.client()
    assert [m.id for m in client.models.list().data] == ["guard"]
    ok = client.chat.completions.create(model="guard", messages=[{"role": "user", "content": UNFLAGGED}], max_tokens=16)
    assert "Canberra" in ok.choices[0].message.content and ok.model_extra["eco_guard"]["flagged"] is False
    chunks = list(client.chat.completions.create(model="guard", messages=[{"role": "user", "content": UNFLAGGED}], max_tokens=16, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ok.choices[0].message.content
    bad = client.chat.completions.create(model="guard", messages=[{"role": "user", "content": FLAGGED}], max_tokens=16)
    assert bad.model_extra["eco_guard"]["action"] == "corrupt" and "Paris" not in bad.choices[0].message.content
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": UNFLAGGED}], max_tokens=4)


def test_ray_16_concurrent_mixed_requests_and_one_audit_line_each(ray_served: RayServed) -> None:
    client = ray_served.client()
    before = {line["request_id"] for line in ray_served.audit_lines()}

    def ask(case: tuple) -> tuple:
        return case, client.chat.completions.create(model="guard", messages=[{"role": "user", "content": case[0]}], max_tokens=16)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(ask, CASES + CASES))
    for (prompt, flagged, words), resp in results:
        assert resp.model_extra["eco_guard"]["flagged"] is flagged, prompt
        if words is not None:
            assert any(w in resp.choices[0].message.content for w in words), (prompt, resp.choices[0].message.content)
    new = [line for line in ray_served.audit_lines() if line["request_id"] not in before]
    assert sorted(line["request_id"] for line in new) == sorted(r.model_extra["eco_guard"]["request_id"] for _, r in results)
    assert all(line["replica"].startswith("Classifier#") for line in new)


def test_ray_killing_a_generation_replica_loses_nothing_and_recovers(ray_served: RayServed) -> None:
    from eco_guard.server.ray_app import APP_NAME

    client = ray_served.client()
    before = {line["request_id"] for line in ray_served.audit_lines()}
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True) if "#Generator#" in a["name"]]
    assert len(replicas) == 2
    results: list = []
    errors: list = []

    def ask(i: int) -> None:
        prompt = CASES[i % len(CASES)][0]
        try:
            results.append(client.chat.completions.create(model="guard", messages=[{"role": "user", "content": prompt}], max_tokens=24, extra_body={"ignore_eos": True}))
        except Exception as exc:  # noqa: BLE001 - counted below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    victim = replicas[0]
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
    for t in threads:
        t.join(300)
    assert errors == [], errors[:2]  # answers whose replica died were answered by another
    audited = {line["request_id"] for line in ray_served.audit_lines()} - before
    assert {r.model_extra["eco_guard"]["request_id"] for r in results} <= audited
    deadline = time.monotonic() + 240  # Serve brings the deployment back to two replicas
    while time.monotonic() < deadline:
        status = serve.status().applications[APP_NAME].deployments["Generator"]
        if status.status == "HEALTHY" and status.replica_states.get("RUNNING", 0) == 2:
            break
        time.sleep(1)
    assert status.status == "HEALTHY" and status.replica_states.get("RUNNING", 0) == 2, status
    assert client.chat.completions.create(model="guard", messages=[{"role": "user", "content": UNFLAGGED}], max_tokens=8).choices[0].message.content
