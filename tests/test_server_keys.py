"""API keys and the serve command's refusals, without a model: the keys file's validation,
constant-time lookup by hash, the environment key, and exit code 2 with a message that
names what and where for every bad ``serve`` invocation."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from eco_guard.cli import run  # noqa: E402
from eco_guard.errors import InputError  # noqa: E402
from eco_guard.server.auth import ENV_KEY, KeyRing  # noqa: E402
from eco_guard.server.registry import parse_guard_specs  # noqa: E402
from tests.server_support import sha, write_keys  # noqa: E402


def ring(tmp_path: Path, keys: list[dict], env: dict[str, str] | None = None) -> KeyRing:
    return KeyRing(write_keys(tmp_path / "keys.yaml", keys), ["hr", "legal"], environ=env or {})


def test_keys_authenticate_by_hash_and_authorise_by_guard(tmp_path: Path) -> None:
    keys = ring(tmp_path, [{"name": "team-a", "key_sha256": sha("k-a"), "guards": ["hr"]}, {"name": "ops", "key_sha256": sha("k-o").upper(), "guards": ["*"], "admin": True}])
    a = keys.authenticate("Bearer k-a")
    assert a is not None and a.name == "team-a" and a.may_use("hr") and not a.may_use("legal") and not a.admin
    ops = keys.authenticate("bearer k-o")
    assert ops is not None and ops.may_use("legal") and ops.admin
    for header in (None, "", "Bearer", "Bearer wrong", "Basic k-a", sha("k-a"), f"Bearer {sha('k-a')}"):
        assert keys.authenticate(header) is None, header


def test_environment_key_is_an_admin_for_every_guard(tmp_path: Path) -> None:
    keys = KeyRing(None, ["hr"], environ={ENV_KEY: "from-env"})
    principal = keys.authenticate("Bearer from-env")
    assert keys.enabled and principal is not None and principal.name == "env" and principal.admin and principal.may_use("hr")
    assert not KeyRing(None, ["hr"], environ={}).enabled


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ([{"name": "a", "key_sha256": "abc", "guards": ["hr"]}], "keys[0].key_sha256: expected 64 hex digits"),
        ([{"name": "a", "key_sha256": sha("x"), "guards": ["payroll"]}], "keys[0].guards: no guard named 'payroll'"),
        ([{"name": "a", "key_sha256": sha("x"), "guards": []}], "keys[0].guards: expected a non-empty list"),
        ([{"name": "a", "key_sha256": sha("x"), "guards": ["hr"]}, {"name": "a", "key_sha256": sha("y"), "guards": ["hr"]}], "keys[1].name: 'a' is used twice"),
        ([{"name": "a", "key": "plaintext", "key_sha256": sha("x"), "guards": ["hr"]}], "keys[0]: unknown field(s) key"),
        ([], "no keys"),
    ],
)
def test_bad_keys_file_names_the_entry(tmp_path: Path, keys: list[dict], message: str) -> None:
    with pytest.raises(InputError, match=None) as info:
        ring(tmp_path, keys)
    assert message in str(info.value) and "keys.yaml" in str(info.value)


def test_a_broken_keys_file_on_reload_keeps_the_old_keys(tmp_path: Path) -> None:
    keys = ring(tmp_path, [{"name": "a", "key_sha256": sha("k"), "guards": ["hr"]}])
    (tmp_path / "keys.yaml").write_text("keys: [{name: a}]\n")
    assert "key_sha256" in (keys.reload() or "")
    assert keys.authenticate("Bearer k") is not None
    write_keys(tmp_path / "keys.yaml", [{"name": "b", "key_sha256": sha("k2"), "guards": ["hr"]}])
    assert keys.reload() is None and keys.authenticate("Bearer k") is None and keys.authenticate("Bearer k2").name == "b"


def test_guard_specs() -> None:
    assert parse_guard_specs(["hr=/g/hr", "/g/legal"]) == {"hr": Path("/g/hr"), "legal": Path("/g/legal")}
    for bad, message in ((["a=/x", "a=/y"], "given twice"), (["=/x"], "NAME=DIR"), (["a b=/x"], "only letters")):
        with pytest.raises(InputError, match=message):
            parse_guard_specs(bad)


def _serve(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = run(["serve", *argv])
    return code, capsys.readouterr().err


def test_serve_refuses_bad_setups_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_KEY, raising=False)
    guard = tmp_path / "hr"
    guard.mkdir()
    code, err = _serve(capsys, "--guard", str(guard), "--host", "0.0.0.0")
    assert code == 2 and "--allow-unauthenticated" in err and "Traceback" not in err
    code, err = _serve(capsys, "--guard", f"hr={tmp_path / 'missing'}")
    assert code == 2 and "--guard hr=" in err and "not a directory" in err
    bad_keys = write_keys(tmp_path / "keys.yaml", [{"name": "a", "key_sha256": sha("k"), "guards": ["legal"]}])
    code, err = _serve(capsys, "--guard", str(guard), "--api-keys", str(bad_keys))
    assert code == 2 and "keys.yaml: keys[0].guards: no guard named 'legal'" in err
    code, err = _serve(capsys, "--guard", str(guard), "--api-keys", str(tmp_path / "nope.yaml"))
    assert code == 2 and "nope.yaml: cannot read the keys file" in err
    code, err = _serve(capsys, "--guard", str(guard), "--trace-content")
    assert code == 2 and "--trace-content" in err
