"""API keys, several guards in one server, and SIGHUP reload: one real ``eco-guard serve``
process on loopback, spoken to by the official ``openai`` client.

The server serves two guards fitted from the demo policy: ``corrupting`` (the policy as
fitted) and ``refusing`` (the same guard, its policy edited to refuse), so the two answer
the same flagged prompt differently. Three keys: ``team-a`` may use ``corrupting`` only,
``ops`` both (and may reload), and the environment's key (``env``).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from tests.conftest import benchmark_module  # noqa: E402
from tests.server_support import FLAGGED, REFUSAL, UNFLAGGED, refuse_variant, set_action, sha, write_keys  # noqa: E402

spawn_server = benchmark_module("spawn").spawn_server

KEY_A = "sk-team-a-0123456789abcdef"
KEY_OPS = "sk-ops-fedcba9876543210"
KEY_ENV = "sk-env-from-the-environment-42"
KEYS = (KEY_A, KEY_OPS, KEY_ENV)


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    base: str
    audit: Path
    log: Path
    refusing_dir: Path

    def client(self, key: str) -> "openai.OpenAI":
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def served(demo_guard_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    import os

    work = tmp_path_factory.mktemp("auth")
    corrupting = work / "corrupting"
    shutil.copytree(demo_guard_dir, corrupting)
    refusing = refuse_variant(demo_guard_dir, work / "refusing")
    keys = write_keys(
        work / "keys.yaml",
        [
            {"name": "team-a", "key_sha256": sha(KEY_A), "guards": ["corrupting"]},
            {"name": "ops", "key_sha256": sha(KEY_OPS), "guards": ["*"], "admin": True},
        ],
    )
    audit, log = work / "audit.jsonl", work / "serve.log"
    os.environ["ECO_GUARD_API_KEY"] = KEY_ENV  # inherited by the child only for this spawn
    try:
        proc, base = spawn_server(
            [f"corrupting={corrupting}", f"refusing={refusing}"], audit=audit, log=log,
            extra_args=["--api-keys", str(keys), "--protect-metrics"], startup_timeout_s=300,
        )
    finally:
        del os.environ["ECO_GUARD_API_KEY"]
    yield Served(proc, base, audit, log, refusing)
    if proc.poll() is None:
        proc.terminate()
        proc.wait(60)


def ask(client: "openai.OpenAI", model: str, prompt: str, **kw: object) -> object:
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], max_tokens=8, **kw)


@pytest.mark.slow
def test_missing_or_wrong_key_401_other_guard_403_right_key_200(served: Served) -> None:
    no_header = {"extra_headers": {"Authorization": openai.omit}}  # the client sends no key at all
    for key, extra in (("unsent", no_header), ("sk-wrong", {})):
        with pytest.raises(openai.AuthenticationError) as info:
            ask(served.client(key), "corrupting", UNFLAGGED, **extra)
        assert info.value.status_code == 401 and info.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.PermissionDeniedError) as denied:
        ask(served.client(KEY_A), "refusing", UNFLAGGED)
    assert denied.value.status_code == 403 and "team-a" in denied.value.body["message"]
    ok = ask(served.client(KEY_A), "corrupting", UNFLAGGED)
    assert ok.model == "corrupting" and ok.model_extra["eco_guard"]["guard"] == "corrupting"
    assert ask(served.client(KEY_ENV), "refusing", UNFLAGGED).choices[0].message.content
    # check, models and metrics are guarded too; health is not
    assert httpx.post(f"{served.base}/v1/guard/check", json={"model": "corrupting", "input": FLAGGED}, timeout=60).status_code == 401
    assert [m.id for m in served.client(KEY_A).models.list().data] == ["corrupting"]
    assert [m.id for m in served.client(KEY_OPS).models.list().data] == ["corrupting", "refusing"]
    assert httpx.get(f"{served.base}/metrics", timeout=60).status_code == 401
    assert httpx.get(f"{served.base}/healthz", timeout=60).status_code == 200


@pytest.mark.slow
def test_unknown_model_is_404_model_not_found(served: Served) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        ask(served.client(KEY_OPS), "gpt-4o", UNFLAGGED)
    assert info.value.body["code"] == "model_not_found" and "corrupting" in info.value.body["message"]


@pytest.mark.slow
def test_two_guards_side_by_side_each_its_own_decisions(served: Served) -> None:
    client = served.client(KEY_OPS)
    corrupted = ask(client, "corrupting", FLAGGED)
    refused = ask(client, "refusing", FLAGGED)
    passed = ask(client, "refusing", UNFLAGGED)
    assert corrupted.model_extra["eco_guard"]["action"] == "corrupt" and corrupted.choices[0].message.content != REFUSAL
    assert refused.model_extra["eco_guard"]["action"] == "refuse" and refused.choices[0].message.content == REFUSAL
    assert passed.model_extra["eco_guard"]["action"] == "pass" and passed.model == "refusing"
    checked = httpx.post(
        f"{served.base}/v1/guard/check", json={"model": "refusing", "input": [FLAGGED, UNFLAGGED]},
        headers={"Authorization": f"Bearer {KEY_OPS}"}, timeout=60,
    ).json()["data"]
    assert [(d["guard"], d["action"]) for d in checked] == [("refusing", "refuse"), ("refusing", "pass")]


@pytest.mark.slow
def test_sighup_reloads_a_changed_guard(served: Served) -> None:
    def version() -> str:
        return httpx.get(f"{served.base}/healthz", timeout=60).json()["guards"]["refusing"]["version"]

    before = version()
    set_action(served.refusing_dir, "corrupt")
    served.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 120
    while version() == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert version() != before
    after = ask(served.client(KEY_OPS), "refusing", FLAGGED)
    assert after.model_extra["eco_guard"]["action"] == "corrupt" and after.model_extra["eco_guard"]["guard_version"] == version()
    assert "SIGHUP reload" in served.log.read_text()


@pytest.mark.slow
def test_audit_and_metrics_carry_key_names_and_no_key_appears_anywhere(served: Served) -> None:
    ask(served.client(KEY_A), "corrupting", FLAGGED)
    metrics = httpx.get(f"{served.base}/metrics", headers={"Authorization": f"Bearer {KEY_OPS}"}, timeout=60).text
    lines = [json.loads(line) for line in served.audit.read_text().splitlines()]
    assert {line.get("key") for line in lines} >= {"team-a", "ops", "env"}
    assert {line["guard"] for line in lines} == {"corrupting", "refusing"}
    assert 'key="team-a"' in metrics and 'eco_guard_auth_refused_total{status="401"}' in metrics
    texts = {"audit": served.audit.read_text(), "log": served.log.read_text(), "metrics": metrics}
    for where, text in texts.items():
        for key in KEYS:
            assert key not in text, f"a key leaked into the {where}"
            assert sha(key) not in text, f"a key's hash leaked into the {where}"
