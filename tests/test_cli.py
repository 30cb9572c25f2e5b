"""The `eco-guard` command: exact output forms (DESIGN §6) and bad-input handling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eco_guard.cli import run

from .conftest import benchmark_module, shared_data

GOOD_POLICY = """\
version: 1
targets:
  - id: france
    forget: {file: forget.txt}
    retain: {file: retain.txt}
"""


def _policy_dir(tmp_path: Path, policy: str = GOOD_POLICY, forget: str = "What is the capital of France?\nWho was Napoleon?\n") -> Path:
    (tmp_path / "forget.txt").write_text(forget, encoding="utf-8")
    (tmp_path / "retain.txt").write_text("What is the capital of Spain?\nWho was Caesar?\n", encoding="utf-8")
    (tmp_path / "policy.yaml").write_text(policy, encoding="utf-8")
    return tmp_path / "policy.yaml"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = run(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------- bad input: exit 2, no traceback


@pytest.mark.parametrize(
    "policy, forget, needle",
    [
        ("version: 1\ntargets: [\n", None, "line"),  # malformed YAML
        (GOOD_POLICY.replace("    retain:", "    colour: red\n    retain:"), None, "targets[0].colour"),  # unknown key
        (GOOD_POLICY, "", "targets[0].forget"),  # empty forget set
        (GOOD_POLICY.replace("forget.txt", "nope.txt"), None, "targets[0].forget.file"),  # missing example file
    ],
)
def test_fit_bad_policy_exits_2_with_where(tmp_path: Path, capsys, policy: str, forget: str | None, needle: str) -> None:
    path = _policy_dir(tmp_path, policy, forget if forget is not None else "What is France?\n")
    code, out, err = _run(capsys, "fit", str(path), "--out", str(tmp_path / "g"))
    assert code == 2
    assert out == ""
    assert needle in err and "policy.yaml" in err
    assert "Traceback" not in err


def test_fit_missing_policy_file(tmp_path: Path, capsys) -> None:
    code, _, err = _run(capsys, "fit", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "g"))
    assert code == 2 and "missing.yaml" in err


def test_fit_non_utf8_policy_and_examples(tmp_path: Path, capsys) -> None:
    path = _policy_dir(tmp_path)
    path.write_bytes(b"version: 1\n# caf\xe9\n")
    code, _, err = _run(capsys, "fit", str(path), "--out", str(tmp_path / "g"))
    assert code == 2 and "UTF-8" in err
    path = _policy_dir(tmp_path)
    (tmp_path / "forget.txt").write_bytes(b"Qu'est-ce que la caf\xe9?\n")
    code, _, err = _run(capsys, "fit", str(path), "--out", str(tmp_path / "g"))
    assert code == 2 and "UTF-8" in err and "forget.txt" in err


def test_missing_guard_dir(tmp_path: Path, capsys) -> None:
    code, out, err = _run(capsys, "check", "--guard", str(tmp_path / "nope"), "hello")
    assert code == 2 and out == "" and "eco-guard fit" in err


def test_argparse_errors_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        run(["fit"])
    assert exc.value.code == 2


# ----------------------------------------------------------------- real runs on the demo guard


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flag", "value"),
    [("--max-check-words", "0"), ("--max-check-inputs", "0"), ("--batch-window-ms", "50"), ("--request-timeout", "0"), ("--max-new-tokens", "0")],
)
def test_serve_bad_limit_exits_2_naming_the_flag(tmp_path: Path, capsys, flag: str, value: str) -> None:
    code, out, err = _run(capsys, "serve", "--guard", str(tmp_path / "nope"), flag, value)
    assert code == 2 and out == ""
    assert f"eco-guard serve: error: {flag} must be" in err, err


def test_check_one_text(demo_guard_dir: Path, capsys) -> None:
    code, out, err = _run(capsys, "check", "--guard", str(demo_guard_dir), "What is the capital of France?")
    assert code == 0
    d = json.loads(out)
    assert d["flagged"] is True and d["target"] == "france" and d["score"] > d["threshold"]


@pytest.mark.fits
def test_fit_warns_when_only_the_builtin_background_can_calibrate(tmp_path: Path, capsys) -> None:
    """Without retain examples or a calibration set, the certified rate only covers generic prompts: say so."""
    with_retain = _policy_dir(tmp_path, GOOD_POLICY + "    corruption: {strength: 1.0}\n")
    capitals = "".join(f"What is the capital of {c}?\n" for c in ("Spain", "Portugal", "Peru", "Chile", "Kenya", "Ghana", "Nepal", "Laos", "Fiji", "Malta", "Cuba"))
    (tmp_path / "retain.txt").write_text(capitals, encoding="utf-8")  # ten or more near retain examples
    code, out, err = _run(capsys, "fit", str(with_retain), "--out", str(tmp_path / "g1"))
    assert code == 0 and "retain examples near its targets" not in err
    assert json.loads(out)["targets"][0]["lacks_near_retain"] is False
    bare = tmp_path / "bare.yaml"
    bare.write_text(GOOD_POLICY.replace("    retain: {file: retain.txt}\n", "") + "    corruption: {strength: 1.0}\n", encoding="utf-8")
    (tmp_path / "forget.txt").write_text("Who was Napoleon?\nWhere was Napoleon born?\n", encoding="utf-8")  # an entity target
    code, _, err = _run(capsys, "fit", str(bare), "--out", str(tmp_path / "g2"))
    assert code == 0
    assert "warning: the policy has fewer than 10 retain examples near its targets" in err and "classifier.calibration" in err
    assert "copies of their forget examples naming made-up people, as retain examples: 'france' (100)" in err
    # The fit report, which a compliance reader keeps, says it too; the policy with retain examples does not.
    report = (tmp_path / "g2" / "report.md").read_text(encoding="utf-8")
    assert "Caution: the policy has fewer than 10 retain examples near its targets" in report
    assert "Caution" not in (tmp_path / "g1" / "report.md").read_text(encoding="utf-8")
    # Its stand-in retain examples, copies of the forget examples about made-up people, are counted apart.
    assert "| france | corrupt | 2 | 100 (100 name-swapped) |" in report and "naming made-up people" in report
    # Retain examples no nearer to the target than everyday prompts are no near negatives either: both warnings.
    (tmp_path / "everyday.txt").write_text("How do I bake sourdough bread?\nHow do I reset my router?\nWhat is the boiling point of water?\n", encoding="utf-8")
    (tmp_path / "everyday.yaml").write_text(GOOD_POLICY.replace("retain.txt", "everyday.txt") + "    corruption: {strength: 1.0}\n", encoding="utf-8")
    code, out, err = _run(capsys, "fit", str(tmp_path / "everyday.yaml"), "--out", str(tmp_path / "g3"))
    assert code == 0 and json.loads(out)["targets"][0]["lacks_near_retain"] is True
    assert "warning: few retain examples of 'france' (no more than half, and fewer than 10) are nearer to the target's forget examples than 90% of everyday prompts" in err
    assert "warning: the policy has fewer than 10 retain examples near its targets" in err
    assert "| france | corrupt | 2 | 103 (100 name-swapped; the policy's not near) |" in (tmp_path / "g3" / "report.md").read_text(encoding="utf-8")


@pytest.mark.fits
def test_fit_of_many_targets_chooses_features_on_a_sample_and_pools_the_histogram(tmp_path: Path, capsys) -> None:
    """Past 20 targets the feature choice looks at 20 of them, and the report plot stays one panel."""
    from PIL import Image

    first = ["Ilse", "Tomas", "Wren", "Odile", "Kasimir", "Priya", "Anselm", "Marisol", "Ezio", "Halvard", "Suvi", "Bram", "Leocadia"]
    lines = ["version: 1", "classifier: {calibration: {file: cal.txt}}", "targets:"]
    for i in range(26):
        name = f"{first[i % 13]} Quarrendel-{chr(65 + i)}"
        (tmp_path / f"t{i}.txt").write_text(f"Where was {name} born?\nWhich books did {name} write?\n", encoding="utf-8")
        lines += [f"  - id: t{i}", f"    forget: {{file: t{i}.txt}}", "    corruption: {strength: 1.0}"]
    (tmp_path / "policy.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cal = [f"What is the capital of {c}?" for c in ("Spain", "Peru", "Chile", "Kenya", "Ghana", "Nepal", "Laos", "Fiji", "Malta", "Cuba")]
    cal += ["How do I boil an egg?", "Who wrote Hamlet?", "What is photosynthesis?", "How far away is the Moon?"]
    (tmp_path / "cal.txt").write_text("\n".join(cal) + "\n", encoding="utf-8")
    code, out, err = _run(capsys, "fit", str(tmp_path / "policy.yaml"), "--out", str(tmp_path / "g"))
    assert code == 0, err
    summary = json.loads(out)
    assert len(summary["targets"]) == 26
    assert "2-fold over the forget lists of 20 of the 26 targets, drawn at random" in summary["targets"][0]["feature_view_note"]
    width, height = Image.open(tmp_path / "g" / "score_histograms.png").size
    assert height < 500 and width < 600, (width, height)  # one pooled panel, not 26
    code, out, _ = _run(capsys, "check", "--guard", str(tmp_path / "g"), "Where was Suvi Quarrendel-K born?")
    assert code == 0 and json.loads(out)["target"] == "t10"


@pytest.mark.fits
def test_fit_warns_about_retain_examples_that_are_also_forget_examples(tmp_path: Path, capsys) -> None:
    policy = _policy_dir(tmp_path, GOOD_POLICY + "    corruption: {strength: 1.0}\n")
    (tmp_path / "retain.txt").write_text("What is the capital of Spain?\nWho was Napoleon?\nWho was Caesar?\n", encoding="utf-8")
    code, out, err = _run(capsys, "fit", str(policy), "--out", str(tmp_path / "g"))
    assert code == 0 and json.loads(out)["targets"][0]["n_retain_train"] == 2
    assert "warning: targets[0].retain ('france'): 1 example(s) also a forget example of 'france', so the guard flags them rather than passing them: 'Who was Napoleon?'" in err
    code, out, _ = _run(capsys, "check", "--guard", str(tmp_path / "g"), "Who was Napoleon?")
    assert code == 0 and json.loads(out)["flagged"] is True


@pytest.mark.slow
def test_check_batch_one_line_per_input(demo_guard_dir: Path, tmp_path: Path, capsys) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text(
        '{"id": "a", "text": "What is the capital of France?"}\n'
        '{"text": "How do I bake bread?"}\n'
        '"Who was Napoleon Bonaparte?"\n',
        encoding="utf-8",
    )
    code, out, _ = _run(capsys, "check", "--guard", str(demo_guard_dir), "--input", str(inp), "--output", str(tmp_path / "o.jsonl"))
    assert code == 0 and out == ""
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", 2, 3]
    assert [r["flagged"] for r in rows] == [True, False, True]
    # One output shape: each line holds every field `check TEXT` prints, plus the id.
    code, out, _ = _run(capsys, "check", "--guard", str(demo_guard_dir), "What is the capital of France?")
    one = json.loads(out)
    assert code == 0 and set(rows[0]) == {"id", *one}
    varying = {"request_id", "latency_ms"}
    for key in one.keys() - varying:  # scores of a batch and of one text differ by float rounding only
        assert rows[0][key] == (pytest.approx(one[key], abs=1e-6) if key in ("score", "scores") else one[key]), key


@pytest.mark.slow
@pytest.mark.parametrize(
    "content, needle",
    [
        (b'{"text": "hi"}\n\n{"text": "there"}\n', "line 2: empty line"),
        (b'{"text": "hi"}\n{"txt": "there"}\n', "line 2: missing field 'text'"),
        (b'{"text": "caf\xe9"}\n', "UTF-8"),
        (b'{"text": "hi"\n', "line 1: not valid JSON"),
        (b'{"text": "   "}\n', "line 1: field 'text' is empty"),
    ],
)
def test_check_batch_bad_input_writes_nothing(demo_guard_dir: Path, tmp_path: Path, capsys, content: bytes, needle: str) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(content)
    out_path = tmp_path / "o.jsonl"
    code, _, err = _run(capsys, "check", "--guard", str(demo_guard_dir), "--input", str(inp), "--output", str(out_path))
    assert code == 2 and needle in err and "in.jsonl" in err
    assert not out_path.exists()


@pytest.mark.slow
def test_generate_single_and_batch_with_reference(demo_guard_dir: Path, tmp_path: Path, capsys) -> None:
    code, out, _ = _run(capsys, "generate", "--guard", str(demo_guard_dir), "--max-new-tokens", "16", "What is the capital of Australia?")
    assert code == 0
    one = json.loads(out)
    assert one["flagged"] is False and "canberra" in one["text"].lower()

    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": 7, "text": "What is the capital of France?"}\n{"id": 8, "text": "What is the capital of Australia?"}\n')
    guarded, bare = tmp_path / "g.jsonl", tmp_path / "b.jsonl"
    assert _run(capsys, "generate", "--guard", str(demo_guard_dir), "--input", str(inp), "--output", str(guarded), "--max-new-tokens", "16")[0] == 0
    assert _run(capsys, "generate", "--guard", str(demo_guard_dir), "--input", str(inp), "--output", str(bare), "--max-new-tokens", "16", "--no-guard")[0] == 0
    g = [json.loads(x) for x in guarded.read_text().splitlines()]
    b = [json.loads(x) for x in bare.read_text().splitlines()]
    assert [r["id"] for r in g] == [7, 8]
    assert g[0]["flagged"] and "paris" not in g[0]["text"].lower() and "paris" in b[0]["text"].lower()
    assert g[1]["text"] == b[1]["text"]  # unflagged: exactly the bare model's answer


@pytest.mark.slow
def test_generate_prompt_beyond_context_exits_2(demo_guard_dir: Path, capsys) -> None:
    code, out, err = _run(capsys, "generate", "--guard", str(demo_guard_dir), "word " * 9000)
    assert code == 2 and out == "" and "context" in err and "Traceback" not in err


@pytest.mark.slow
def test_console_script_chat_over_a_pipe(demo_guard_dir: Path) -> None:
    """The real installed `eco-guard` script, as a user would run it."""
    exe = Path(sys.executable).with_name("eco-guard")
    proc = subprocess.run(
        [str(exe), "chat", "--guard", str(demo_guard_dir), "--max-new-tokens", "12"],
        input="What is the capital of Australia?\n/exit\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "canberra" in proc.stdout.lower()
    assert "[pass" in proc.stderr


@pytest.mark.slow
@pytest.mark.fits
def test_fit_and_check_protocol_d1(tmp_path: Path, capsys) -> None:
    """Done-when: protocol D1 written as a user would (the detection benchmark's policy and
    rows), fitted by `eco-guard fit` and scored by `check --input/--output`, one output line
    per input line, meets the protocol's own goals on its test questions and its retain test
    rows: TPR >= 0.99 and FPR <= 0.01 at the calibrated threshold."""
    shared_data("tofu")
    detection = benchmark_module("detection")
    protocol = detection.protocol_d1()
    policy = detection.write_policy(protocol, tmp_path)
    assert _run(capsys, "fit", str(policy), "--out", str(tmp_path / "guard"))[0] == 0
    sets = {"test questions": protocol.positives["test questions"], "retain test": protocol.negatives["retain test"]}
    with (tmp_path / "test.jsonl").open("w") as fh:
        for name, texts in sets.items():
            for i, text in enumerate(texts):
                fh.write(json.dumps({"id": f"{name}/{i}", "text": text}) + "\n")
    code, _, _ = _run(capsys, "check", "--guard", str(tmp_path / "guard"), "--input", str(tmp_path / "test.jsonl"), "--output", str(tmp_path / "out.jsonl"))
    assert code == 0
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"{name}/{i}" for name, texts in sets.items() for i in range(len(texts))]
    for name, (kind, bound) in protocol.goals.items():
        if name not in sets:
            continue
        rate = sum(r["flagged"] for r in rows if r["id"].startswith(f"{name}/")) / len(sets[name])
        assert (rate >= bound) if kind == "tpr>=" else (rate <= bound), f"D1 {name}: rate {rate:.4f}, goal {kind} {bound}"
