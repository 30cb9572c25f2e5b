"""Policy loading and example reading: valid files, defaults and every error message.

Error tests assert on substrings (file name, key path, line) because those are the
contract with a compliance author editing YAML: the message must say where to look.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from eco_guard.errors import InputError, PolicyError, UserError
from eco_guard.examples import Example, load_examples, read_text_rows
from eco_guard.policy import (
    CorruptionSpec,
    ExampleSource,
    LoadedPolicy,
    load_policy,
    parse_policy,
    policy_to_dict,
)

MINIMAL = "version: 1\ntargets:\n  - id: t1\n    forget: {file: forget.txt}\n"

FULL = """\
version: 1
model:
  path: models/smol
  device: cuda:0
  dtype: bfloat16
classifier:
  encoder: enc/minilm
  target_fpr: 0.05
on_error: fail_open
audit: {path: logs/audit.jsonl, prompts: full}
targets:
  - id: fictitious-authors
    description: Authors in forget.jsonl
    forget: {file: data/forget.jsonl, field: question, answer_field: answer}
    retain: {examples: ["What is the capital of France?"], field: text}
    action: refuse
    corruption:
      method: zero_out_top_k
      dims: 3
      strength: 2.5
      scope: entities
      terms: [Basil Mahfouz]
    objective: {metric: mc_accuracy, target: 0.25}
    refusal: No.
  - id: second.target_2
    forget: {examples: [a, b]}
"""


def write(path: Path, text: str | bytes) -> Path:
    """Write a test file, creating parent directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def policy_error(tmp_path: Path, text: str | bytes) -> PolicyError:
    """Load a policy expected to be invalid and return the error."""
    path = write(tmp_path / "policy.yaml", text)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert "policy.yaml" in str(info.value)
    assert info.value.file == str(path)
    return info.value


def target_yaml(extra: str = "", forget: str = "{file: forget.txt}") -> str:
    """A one-target policy with ``extra`` lines appended to the target."""
    return f"version: 1\ntargets:\n  - id: t1\n    forget: {forget}\n{extra}"


# ---------------------------------------------------------------- valid policies


def test_full_policy_round_trips(tmp_path: Path) -> None:
    loaded = load_policy(write(tmp_path / "policy.yaml", FULL))
    policy = loaded.policy
    target = policy.target("fictitious-authors")
    assert policy.model.device == "cuda:0" and policy.model.dtype == "bfloat16"
    assert policy.classifier.target_fpr == 0.05 and policy.on_error == "fail_open"
    assert policy.audit.prompts == "full"
    assert target.action == "refuse" and target.refusal == "No."
    assert target.corruption == CorruptionSpec(
        method="zero_out_top_k", dims=3, strength=2.5, scope="entities", terms=["Basil Mahfouz"]
    )
    assert target.forget.answer_field == "answer"
    assert target.objective.metric == "mc_accuracy" and target.objective.target == 0.25

    data = policy_to_dict(policy)
    text = yaml.safe_dump(data)
    json.dumps(data)  # JSON-safe as well
    again = parse_policy(yaml.safe_load(text), source="guard.yaml", base_dir=tmp_path)
    assert again.policy == policy
    assert policy_to_dict(again.policy) == data
    assert data["targets"][1]["retain"] is None  # defaults spelled out, None included


def test_defaults(tmp_path: Path) -> None:
    loaded = load_policy(write(tmp_path / "policy.yaml", MINIMAL))
    policy = loaded.policy
    assert policy.model.path == "default" and policy.model.device == "auto" and policy.model.dtype == "auto"
    assert policy.classifier.encoder == "default" and policy.classifier.target_fpr == 0.01
    assert policy.on_error == "fail_closed"
    assert policy.audit.path is None and policy.audit.prompts == "hash"
    target = policy.targets[0]
    assert target.retain is None and target.action == "corrupt" and target.description == ""
    assert target.forget.field == "text" and target.forget.answer_field is None
    assert target.corruption == CorruptionSpec()
    assert target.corruption.method == "rand_noise_first_n" and target.corruption.dims == 1
    assert target.corruption.strength == "auto" and target.corruption.scope == "prompt"
    assert target.corruption.terms == []
    assert target.objective.metric == "answer_recall" and target.objective.target == 0.0


def test_paths_resolve_against_the_policy_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "conf" / "policy.yaml", MINIMAL)
    monkeypatch.chdir(tmp_path)
    loaded = load_policy("conf/policy.yaml")
    assert loaded.path == tmp_path.resolve() / "conf" / "policy.yaml"
    assert loaded.base_dir == tmp_path.resolve() / "conf"
    assert loaded.resolve("data/x.txt") == tmp_path.resolve() / "conf" / "data" / "x.txt"
    assert loaded.resolve("../x.txt") == tmp_path.resolve() / "x.txt"
    assert loaded.resolve("/abs/x.txt") == Path("/abs/x.txt")
    parsed = parse_policy(yaml.safe_load(MINIMAL), source="out/guard.yaml", base_dir=tmp_path / "conf")
    assert parsed.path == tmp_path.resolve() / "out" / "guard.yaml"
    assert parsed.base_dir == tmp_path.resolve() / "conf"
    assert parse_policy(yaml.safe_load(MINIMAL)).base_dir == tmp_path.resolve()
    assert LoadedPolicy(policy=parsed.policy, path=tmp_path / "p.yaml").base_dir == tmp_path


def test_target_lookup(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path / "policy.yaml", FULL)).policy
    assert policy.target("second.target_2").forget.examples == ["a", "b"]
    with pytest.raises(UserError, match="unknown target 'nope'.*fictitious-authors, second.target_2"):
        policy.target("nope")


def test_policy_is_frozen(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path / "policy.yaml", MINIMAL)).policy
    with pytest.raises(ValueError):
        policy.on_error = "fail_open"  # type: ignore[misc]


@pytest.mark.parametrize("strength, expected", [("auto", "auto"), (0.5, 0.5), (3, 3.0), (0, 0.0), ("1e3", 1000.0)])
def test_strength_values(tmp_path: Path, strength: object, expected: object) -> None:
    text = target_yaml(f"    corruption: {{strength: {strength}}}\n")
    loaded = load_policy(write(tmp_path / "policy.yaml", text))
    assert loaded.policy.targets[0].corruption.strength == expected


# ---------------------------------------------------------------- file-level errors


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="policy file not found") as info:
        load_policy(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value)


def test_policy_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="policy file not found.*is a directory"):
        load_policy(tmp_path)


def test_non_utf8_policy(tmp_path: Path) -> None:
    error = policy_error(tmp_path, b"version: 1\n# caf\xe9\n")
    assert "UTF-8" in str(error) and "byte offset 16" in str(error) and "line 2" in str(error)


def test_malformed_yaml_names_line_and_column(tmp_path: Path) -> None:
    error = policy_error(tmp_path, "version: 1\ntargets:\n  - id: [unclosed\n")
    assert "malformed YAML at line 4" in str(error) and "flow sequence started at line 3" in str(error)
    error = policy_error(tmp_path, "version: 1\non_error: fail_open\n on_error: x\n")
    assert "malformed YAML at line 3" in str(error)


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    error = policy_error(tmp_path, MINIMAL + "version: 1\n")
    assert "duplicate key 'version'" in str(error) and "line 5" in str(error)


def test_yaml_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    text = "version: 1\nx: &src {file: a.txt, field: q}\n"
    error = policy_error(tmp_path, text + "targets:\n  - id: t\n    forget: {<<: *src, field: r}\n")
    assert error.key == "x" and "unknown key 'x'" in str(error)  # parsed fine; only 'x' is rejected


@pytest.mark.parametrize("text, expected", [("", "empty"), ("# only a comment\n", "empty"), ("- a\n- b\n", "mapping")])
def test_empty_or_non_mapping_policy(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in str(policy_error(tmp_path, text))


# ---------------------------------------------------------------- schema errors


def test_unknown_top_level_key(tmp_path: Path) -> None:
    error = policy_error(tmp_path, MINIMAL + "colour: blue\n")
    assert error.key == "colour"
    assert "unknown key 'colour' (allowed: version, model, classifier, on_error, audit, languages, targets)" in str(error)


def test_unknown_nested_key(tmp_path: Path) -> None:
    error = policy_error(tmp_path, target_yaml("    corruption: {sigma: 1}\n"))
    assert error.key == "targets[0].corruption.sigma"
    assert "key targets[0].corruption.sigma: unknown key 'sigma' (allowed: method, dims, strength" in str(error)
    error = policy_error(tmp_path, target_yaml("    corruption: {stength: 1}\n"))
    assert "unknown key 'stength' (did you mean 'strength'? allowed: method" in str(error)


def test_bad_action_literal(tmp_path: Path) -> None:
    error = policy_error(tmp_path, target_yaml("    action: delete\n"))
    assert error.key == "targets[0].action"
    assert "expected one of 'corrupt', 'refuse' or 'flag'; got 'delete'" in str(error)


@pytest.mark.parametrize("strength", ["banana", "-1", ".nan", ".inf", "true"])
def test_bad_strength(tmp_path: Path, strength: str) -> None:
    error = policy_error(tmp_path, target_yaml(f"    corruption: {{strength: {strength}}}\n"))
    assert error.key == "targets[0].corruption.strength"
    assert "expected 'auto' or a finite number >= 0" in str(error)
    assert str(error).count("\n") == 0  # one message, not one per union branch


def test_several_errors_are_all_reported(tmp_path: Path) -> None:
    error = policy_error(tmp_path, target_yaml("    action: delete\n    corruption: {dims: 0, method: blur}\n"))
    lines = str(error).splitlines()
    assert len(lines) == 3
    assert error.key == "targets[0].action"
    assert all(line.startswith(str(tmp_path / "policy.yaml")) for line in lines)
    assert any("key targets[0].corruption.dims: input should be greater than or equal to 1" in ln for ln in lines)
    assert any("key targets[0].corruption.method: expected one of 'rand_noise_first_n'" in ln for ln in lines)


def test_internal_pydantic_tags_never_appear_in_keys(tmp_path: Path) -> None:
    error = policy_error(tmp_path, target_yaml(forget="{file: a.txt, examples: [x]}"))
    assert error.key == "targets[0].forget"
    assert "function" not in str(error) and "exactly one of 'file'" in str(error)


@pytest.mark.parametrize(
    "text, key, fragment",
    [
        ("version: 2\ntargets: []\n", "version", "expected one of 1; got 2"),
        ("targets: []\n", "version", "required key 'version' is missing"),
        ("version: 1\ntargets: []\n", "targets", "at least one target"),
        ("version: 1\n", "targets", "required key 'targets' is missing"),
        ("version: 1\ntargets: t1\n", "targets", "expected a list"),
        (target_yaml(forget="data.txt"), "targets[0].forget", "expected a mapping"),
        (target_yaml(forget="{field: q}"), "targets[0].forget", "exactly one of"),
        (target_yaml(forget="{examples: [1]}"), "targets[0].forget.examples[0]", "expected a string"),
        (target_yaml(forget="{examples: [a], answer_field: b}"), "targets[0].forget", "needs a 'file'"),
        ("version: 1\ntargets:\n  - forget: {file: f.txt}\n", "targets[0].id", "required key 'id'"),
        ("version: 1\ntargets:\n  - id: bad id\n    forget: {file: f.txt}\n", "targets[0].id", "got 'bad id'"),
        (MINIMAL + "model: {device: gpu}\n", "model.device", "got 'gpu'"),
        (MINIMAL + "classifier: {target_fpr: 0.5}\n", "classifier.target_fpr", "less than 0.5"),
        (MINIMAL + "audit: {prompts: some}\n", "audit.prompts", "expected one of 'none', 'hash' or 'full'"),
        (MINIMAL + "on_error: ignore\n", "on_error", "expected one of 'fail_closed' or 'fail_open'"),
        (target_yaml("    objective: {target: 1.5}\n"), "targets[0].objective.target", "less than or equal to 1"),
        (target_yaml("    corruption: {dims: 1.5}\n"), "targets[0].corruption.dims", "valid integer"),
        (target_yaml("    retain: {file: r.txt, colour: x}\n"), "targets[0].retain.colour", "unknown key"),
        (MINIMAL + "1: x\n", None, "keys must be strings; got 1"),
    ],
)
def test_schema_errors(tmp_path: Path, text: str, key: str | None, fragment: str) -> None:
    error = policy_error(tmp_path, text)
    assert error.key == key
    assert fragment in str(error)
    if key:
        assert f"key {key}:" in str(error)


def test_duplicate_target_ids(tmp_path: Path) -> None:
    text = MINIMAL + "  - id: t2\n    forget: {file: f.txt}\n  - id: t1\n    forget: {file: g.txt}\n"
    error = policy_error(tmp_path, text)
    assert error.key == "targets[2].id"
    assert "duplicate target id 't1' (already used by targets[0].id)" in str(error)


def test_parse_policy_rejects_non_mapping() -> None:
    with pytest.raises(PolicyError, match="<policy>: expected a mapping at the top level"):
        parse_policy(["version", 1])


# ---------------------------------------------------------------- example files


def load_target_examples(tmp_path: Path, forget: str, files: dict[str, str | bytes]) -> list[Example]:
    """Write ``files`` next to a one-target policy and load its forget set."""
    for name, content in files.items():
        write(tmp_path / name, content)
    loaded = load_policy(write(tmp_path / "policy.yaml", target_yaml(forget=forget)))
    return load_examples(loaded.policy.targets[0].forget, loaded=loaded, key="targets[0].forget")


def example_error(tmp_path: Path, forget: str, files: dict[str, str | bytes]) -> PolicyError:
    """Load a forget set expected to be invalid and return the error."""
    with pytest.raises(PolicyError) as info:
        load_target_examples(tmp_path, forget, files)
    assert info.value.file == str(tmp_path.resolve() / "policy.yaml")
    return info.value


def test_txt_examples(tmp_path: Path) -> None:
    examples = load_target_examples(tmp_path, "{file: f.txt}", {"f.txt": "  first  \n\n\t\nsecond\n"})
    assert examples == [Example("first"), Example("second")]


def test_jsonl_examples_with_answers(tmp_path: Path) -> None:
    rows = [{"question": "Who?", "answer": "Her."}, {"question": "When?", "answer": "1990", "x": 1}]
    content = "\n".join(json.dumps(r) for r in rows[:1]) + "\n\n" + json.dumps(rows[1]) + "\n"
    examples = load_target_examples(
        tmp_path, "{file: d/f.jsonl, field: question, answer_field: answer}", {"d/f.jsonl": content}
    )
    assert examples == [Example("Who?", "Her."), Example("When?", "1990")]


def test_json_array_examples(tmp_path: Path) -> None:
    content = json.dumps([{"q": "one", "a": "1"}, {"q": "two", "a": "2"}], indent=2)
    examples = load_target_examples(tmp_path, "{file: f.json, field: q, answer_field: a}", {"f.json": content})
    assert examples == [Example("one", "1"), Example("two", "2")]
    examples = load_target_examples(tmp_path, "{file: s.json}", {"s.json": json.dumps(["x", "y"])})
    assert examples == [Example("x"), Example("y")]


def test_tofu_multi_array_json(tmp_path: Path) -> None:
    content = (
        json.dumps([{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "a2"}])
        + "\n\n"
        + json.dumps([{"question": "q3", "answer": "a3"}])
        + "\n"
        + json.dumps({"question": "q4", "answer": "a4"})
        + "\n"
    )
    examples = load_target_examples(
        tmp_path, "{file: f.json, field: question, answer_field: answer}", {"f.json": content}
    )
    assert examples == [Example(f"q{i}", f"a{i}") for i in range(1, 5)]


def test_csv_examples(tmp_path: Path) -> None:
    content = '\ufeffprompt,gold\n"Hello, who?",Me\n"multi\nline",You\n'
    examples = load_target_examples(tmp_path, "{file: f.CSV, field: prompt, answer_field: gold}", {"f.CSV": content})
    assert examples == [Example("Hello, who?", "Me"), Example("multi\nline", "You")]


def test_inline_examples(tmp_path: Path) -> None:
    assert load_target_examples(tmp_path, "{examples: [' a ', b]}", {}) == [Example("a"), Example("b")]
    error = example_error(tmp_path, "{examples: [a, '  ']}", {})
    assert error.key == "targets[0].forget.examples[1]"
    error = example_error(tmp_path, "{examples: []}", {})
    assert "forget set is empty" in str(error)


def test_missing_example_file(tmp_path: Path) -> None:
    error = example_error(tmp_path, "{file: data/nope.txt}", {})
    assert error.key == "targets[0].forget.file"
    assert str(tmp_path.resolve() / "data" / "nope.txt") in str(error) and "does not exist" in str(error)


def test_empty_forget_set(tmp_path: Path) -> None:
    error = example_error(tmp_path, "{file: f.txt}", {"f.txt": "\n  \n"})
    assert error.key == "targets[0].forget"
    assert "key targets[0].forget: the forget set is empty" in str(error)
    loaded = load_policy(tmp_path / "policy.yaml")
    assert load_examples(loaded.policy.targets[0].forget, loaded=loaded, key="targets[0].retain", required=False) == []


def test_unknown_extension(tmp_path: Path) -> None:
    error = example_error(tmp_path, "{file: f.xlsx}", {"f.xlsx": "x"})
    assert error.key == "targets[0].forget.file"
    assert "'.xlsx'" in str(error) and ".txt, .jsonl, .json, .csv" in str(error)


def test_non_utf8_example_file(tmp_path: Path) -> None:
    error = example_error(tmp_path, "{file: f.txt}", {"f.txt": b"ok\n\xff\xfebad\n"})
    message = str(error)
    assert "f.txt" in message and "UTF-8" in message and "byte offset 3" in message and "line 2" in message


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("f.jsonl", '{"text": "a"}\n\n{"text": "b"\n', "f.jsonl, line 3, column"),
        ("f.jsonl", '{"text": "a"}\n{"other": "b"}\n', "line 2: missing field 'text' (fields present: other)"),
        ("f.jsonl", '{"text": "a"}\n{"text": 5}\n', "line 2: field 'text' must be a string; got number 5"),
        ("f.jsonl", '{"text": "a"}\n{"text": "  "}\n', "line 2: field 'text' is empty"),
        ("f.jsonl", '{"text": "a"}\n[1]\n', "line 2: expected an object with key 'text'; got an array"),
        ("f.json", '[\n  {"text": "a"},\n  {"text": }\n]', "f.json, line 3, column"),
        ("f.json", '[{"text": "a"}, {"text": null}]', "item [1]: field 'text' must be a string; got null"),
        ("f.json", '{"text": "a"}', "expected a JSON array"),
        ("f.json", '[{"text": "a"}]\n[{"text": ""}]\n', "line 2, item [0]: field 'text' is empty"),
        ("f.json", '[{"text": "a"}]\n[{"text": "b"}\n', "f.json, line 2, column"),
        ("f.csv", "text\na\n\"\"\n", "f.csv, line 3: field 'text' is empty"),
        ("f.csv", "prompt\na\n", "line 1: no column 'text' in the header (columns: prompt)"),
    ],
)
def test_bad_example_rows(tmp_path: Path, name: str, content: str, fragment: str) -> None:
    error = example_error(tmp_path, f"{{file: {name}}}", {name: content})
    assert error.key == "targets[0].forget"
    assert fragment in str(error)


def test_answer_field_errors(tmp_path: Path) -> None:
    error = example_error(tmp_path, "{file: f.jsonl, answer_field: a}", {"f.jsonl": '{"text": "q"}\n'})
    assert "line 1: missing field 'a'" in str(error)
    error = example_error(tmp_path, "{file: f.json, answer_field: a}", {"f.json": '["q"]'})
    assert "item [0]: row is a plain string" in str(error)
    error = example_error(tmp_path, "{file: f.txt, answer_field: a}", {"f.txt": "q\n"})
    assert error.key == "targets[0].forget.answer_field"


def test_read_text_rows_standalone_raises_input_error(tmp_path: Path) -> None:
    path = write(tmp_path / "in.jsonl", '{"text": "a"}\n{"prompt": "b"}\n')
    with pytest.raises(InputError, match=r"in\.jsonl, line 2: missing field 'text'"):
        read_text_rows(path, field="text")
    with pytest.raises(InputError, match="input file .*nope.jsonl does not exist"):
        read_text_rows(tmp_path / "nope.jsonl", field="text")
    good = write(tmp_path / "ok.csv", "id,text\n1,hello\n")
    assert read_text_rows(good, field="text") == [Example("hello")]


def test_classifier_calibration_source(tmp_path: Path) -> None:
    """Optional held-out negatives for the shared threshold; strict like every example source."""
    text = MINIMAL.replace("version: 1\n", "version: 1\nclassifier:\n  calibration: {file: cal.jsonl, field: question}\n")
    loaded = load_policy(write(tmp_path / "policy.yaml", text))
    source = loaded.policy.classifier.calibration
    assert source == ExampleSource(file="cal.jsonl", field="question")
    assert load_policy(write(tmp_path / "min.yaml", MINIMAL)).policy.classifier.calibration is None
    write(tmp_path / "cal.jsonl", "")
    with pytest.raises(PolicyError, match="the calibration set is empty"):
        load_examples(source, loaded=loaded, key="classifier.calibration")
    bad = MINIMAL.replace("version: 1\n", "version: 1\nclassifier:\n  calibration: {file: a.txt, examples: [b]}\n")
    with pytest.raises(PolicyError, match="classifier.calibration"):
        load_policy(write(tmp_path / "bad.yaml", bad))


# ---------------------------------------------------------------- retain groups


def load_retain(tmp_path: Path, retain: str, files: dict[str, str]) -> list[Example]:
    """Write ``files`` next to a one-target policy with ``retain`` and load its retain set."""
    for name, content in files.items():
        write(tmp_path / name, content)
    loaded = load_policy(write(tmp_path / "policy.yaml", target_yaml(f"    retain: {retain}\n")))
    return load_examples(loaded.policy.targets[0].retain, loaded=loaded, key="targets[0].retain", required=False)


def test_retain_groups_are_read(tmp_path: Path) -> None:
    rows = '{"q": "What is a cell?", "s": "biology"}\n{"q": "What is DNA?", "s": "genetics"}\n'
    examples = load_retain(tmp_path, "{file: r.jsonl, field: q, group_field: s}", {"r.jsonl": rows})
    assert examples == [Example("What is a cell?", group="biology"), Example("What is DNA?", group="genetics")]
    csv_rows = "question,subject\nWhat is a cell?,biology\n"
    examples = load_retain(tmp_path, "{file: r.csv, field: question, group_field: subject}", {"r.csv": csv_rows})
    assert examples == [Example("What is a cell?", group="biology")]


@pytest.mark.parametrize(
    "retain, files, key, fragment",
    [
        ("{file: r.jsonl, group_field: s}", {"r.jsonl": '{"text": "q"}\n'}, "targets[0].retain", "line 1: missing field 's'"),
        ("{file: r.jsonl, group_field: s}", {"r.jsonl": '{"text": "q", "s": 3}\n'}, "targets[0].retain", "field 's' must be a string"),
        ("{file: r.json, group_field: s}", {"r.json": '["q"]'}, "targets[0].retain", "row is a plain string, so it has no group field 's'"),
        ("{file: r.txt, group_field: s}", {"r.txt": "q\n"}, "targets[0].retain.group_field", "a .txt file"),
        ("{file: r.csv, group_field: s}", {"r.csv": "text\nq\n"}, "targets[0].retain", "no column 's'"),
    ],
)
def test_retain_group_errors_name_file_and_key(tmp_path: Path, retain: str, files: dict[str, str], key: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as info:
        load_retain(tmp_path, retain, files)
    assert info.value.key == key
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "text, key, fragment",
    [
        (target_yaml(forget="{file: f.jsonl, group_field: g}"), "targets[0].forget", "read only on a target's retain examples"),
        (target_yaml("    retain: {examples: [a], group_field: g}\n"), "targets[0].retain", "needs a 'file'"),
        (
            MINIMAL.replace("version: 1\n", "version: 1\nclassifier:\n  calibration: {file: c.jsonl, group_field: g}\n"),
            "classifier.calibration",
            "read only on a target's retain examples",
        ),
    ],
)
def test_group_field_schema_errors(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    error = policy_error(tmp_path, text)
    assert error.key == key
    assert fragment in str(error)
