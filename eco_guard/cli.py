"""The ``eco-guard`` command (DESIGN section 6).

Contract: stdout carries only the result, so output can be piped; progress and
diagnostics go to stderr. Exit codes: 0 ok, 2 bad input or policy (the message says
what and where), 1 internal error. No traceback reaches the user unless
``ECO_GUARD_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .errors import EcoGuardError, InputError
from .jsonl_inputs import read_jsonl_inputs

DEFAULT_MAX_NEW_TOKENS = 128


def _quiet_libraries() -> None:
    """Keep library chatter off the terminal; our own progress goes to stderr."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Read by transformers when (and only when) it is imported: setting its verbosity here
    # through its API would import it, and with it torch, for every command, including
    # ones that only report a typo in a policy (seconds under load, issue 23).
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")


def _emit(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- input files


def _write_jsonl_atomic(path: Path, records: Iterator[dict[str, Any]]) -> int:
    """Write records to a temporary file and rename it into place when all succeeded,
    so an interrupted run never leaves a truncated output that looks complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                count += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _progress(total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="row", file=sys.stderr, disable=total < 64 or None)


# --------------------------------------------------------------------------- commands


def _load_guard(args: argparse.Namespace) -> Any:
    from .guard import Guard

    return Guard.load(args.guard, progress=True)


def _decision_row(row_id: Any, d: Any) -> dict[str, Any]:
    return {"id": row_id, "flagged": d.flagged, "target": d.target, "score": d.score, "threshold": d.threshold}


def cmd_fit(args: argparse.Namespace) -> int:
    from .policy import load_policy

    loaded = load_policy(args.policy)  # a bad policy fails here, before torch and the models are imported
    from .fitting import fit_guard

    result = fit_guard(loaded, args.out, seed=args.seed, progress=True, use_cache=not args.no_cache)
    _emit(result.to_dict())
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    if (args.text is None) == (args.input is None):
        raise InputError("check: give either one TEXT or --input IN.jsonl --output OUT.jsonl")
    if args.input is not None and args.output is None:
        raise InputError("check: --input needs --output OUT.jsonl")
    if args.text is not None and not args.text.strip():
        raise InputError("check: TEXT is empty")
    rows = read_jsonl_inputs(Path(args.input), args.field) if args.input else []
    guard = _load_guard(args)
    if args.text is not None:
        _emit(guard.check(args.text).to_dict())
        return 0

    def records() -> Iterator[dict[str, Any]]:
        with _progress(len(rows), "check") as bar:
            for chunk in _chunks(rows, 256):
                for (row_id, _), d in zip(chunk, guard.check_batch([t for _, t in chunk])):
                    yield {"id": row_id, **d.to_dict()}  # the fields `check TEXT` prints, and the row's id
                bar.update(len(chunk))

    n = _write_jsonl_atomic(Path(args.output), records())
    print(f"eco-guard check: wrote {n} decisions to {args.output}", file=sys.stderr)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .runner.base import GenerationOptions

    if (args.text is None) == (args.input is None):
        raise InputError("generate: give either one PROMPT or --input IN.jsonl --output OUT.jsonl")
    if args.input is not None and args.output is None:
        raise InputError("generate: --input needs --output OUT.jsonl")
    if args.text is not None and not args.text.strip():
        raise InputError("generate: PROMPT is empty")
    if args.batch_size < 1:
        raise InputError("generate: --batch-size must be at least 1")
    options = GenerationOptions(max_new_tokens=args.max_new_tokens)
    rows = read_jsonl_inputs(Path(args.input), args.field) if args.input else [(1, args.text)]
    guard = _load_guard(args)

    def answer(chunk: Sequence[tuple[Any, str]]) -> list[dict[str, Any]]:
        prompts = [t for _, t in chunk]
        if args.no_guard:
            # The bare model; decisions are still computed so comparisons can see what
            # the guard would have done, but they do not change the answers.
            decisions = guard.check_batch(prompts, audit=False)
            texts = guard.answer_unguarded(prompts, options)
        else:
            results = guard.batch(prompts, options)
            decisions = [r.decision for r in results]
            texts = [r.text for r in results]
        return [
            {
                **_decision_row(row_id, d),
                "text": text,
                "action": "pass" if args.no_guard else d.action,
                "stage": None if args.no_guard else d.stage,
                "guarded": not args.no_guard,
            }
            for (row_id, _), d, text in zip(chunk, decisions, texts)
        ]

    if args.text is not None:
        rec = answer(rows)[0]
        rec.pop("id")
        _emit(rec)
        return 0

    def records() -> Iterator[dict[str, Any]]:
        with _progress(len(rows), "generate") as bar:
            for chunk in _chunks(rows, args.batch_size):
                yield from answer(chunk)
                bar.update(len(chunk))

    n = _write_jsonl_atomic(Path(args.output), records())
    print(f"eco-guard generate: wrote {n} answers to {args.output}", file=sys.stderr)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from .runner.base import GenerationOptions

    guard = _load_guard(args)
    options = GenerationOptions(max_new_tokens=args.max_new_tokens)
    history: list[dict[str, str]] = []
    interactive = sys.stdin.isatty()
    if interactive:
        print("eco-guard chat: type a message; /reset clears the conversation, /exit quits.", file=sys.stderr)
    while True:
        if interactive:
            print("you> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return 0
        msg = line.strip()
        if not msg:
            continue
        if msg in ("/exit", "/quit"):
            return 0
        if msg == "/reset":
            history.clear()
            continue
        history.append({"role": "user", "content": msg})
        stream = guard.stream(history, options)
        d = stream.decision
        tag = f"[{d.action}{' ' + d.target if d.target else ''} score={d.score:.3f} thr={d.threshold:.3f}]"
        print(tag, file=sys.stderr, flush=True)
        pieces: list[str] = []
        for piece in stream:
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": "".join(pieces)})


#: ServerConfig's fields by the `serve` flag that sets them: the config is built from this
#: table, and a bad value is named as the user typed it
_SERVE_FLAGS = {
    "max_body_bytes": "--max-body-bytes",
    "request_timeout_s": "--request-timeout",
    "batch_window_ms": "--batch-window-ms",
    "max_batch_size": "--max-batch-size",
    "default_max_tokens": "--max-new-tokens",
    "max_check_inputs": "--max-check-inputs",
    "max_check_words": "--max-check-words",
}


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the guards over an OpenAI-compatible HTTP API until SIGINT/SIGTERM (SIGHUP reloads)."""
    from .server.config import ServerConfig, ServeSetup

    try:
        from .server.registry import parse_guard_specs
        from .server.run import serve
    except ImportError as exc:
        raise InputError(f"serve: the server extra is not installed ({exc}); pip install 'eco-guard[server]'") from exc
    try:
        config = ServerConfig(
            **{field: getattr(args, flag[2:].replace("-", "_")) for field, flag in _SERVE_FLAGS.items()},
            protect_metrics=args.protect_metrics,
        )
    except ValueError as exc:
        field, _, rest = str(exc).partition(" ")
        raise InputError(f"{_SERVE_FLAGS.get(field, field)} {rest}") from exc
    guards = parse_guard_specs(args.guard)
    for name, directory in guards.items():
        if not directory.is_dir():
            raise InputError(f"--guard {name}={directory}: not a directory (expected one written by `eco-guard fit`)")
    api_keys = Path(args.api_keys) if args.api_keys else None
    if args.trace_content and not args.otel:
        raise InputError("--trace-content: only meaningful with --otel")
    if args.otel:
        from .server.tracing import available

        if not available():
            raise InputError("--otel: the otel extra is not installed; pip install 'eco-guard[otel]'")
    setup = ServeSetup(
        guards, host=args.host, port=args.port, config=config, audit_path=Path(args.audit) if args.audit else None, api_keys=api_keys,
        allow_unauthenticated=args.allow_unauthenticated, otel=args.otel, trace_content=args.trace_content,
    )
    if args.ray:
        try:
            from .server.ray_app import serve_ray
        except ImportError as exc:
            raise InputError(f"--ray: the ray extra is not installed ({exc}); pip install 'eco-guard[ray]'") from exc
        if args.classify_replicas < 1 or args.generate_replicas < 1:
            raise InputError("--classify-replicas and --generate-replicas must be at least 1")
        serve_ray(setup, address=args.ray_address, classify_replicas=args.classify_replicas, generate_replicas=args.generate_replicas)
        return 0
    serve(setup)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Efficacy of a fitted guard on a forget and a retain set, guard on vs off (DESIGN §8)."""
    from .evaluation.data import read_mc_rows, read_qa_rows
    from .evaluation.evaluate import evaluate_mc, evaluate_qa
    from .evaluation.report import write_eval
    from .runner.base import GenerationOptions

    if args.batch_size < 1:
        raise InputError("eval: --batch-size must be at least 1")
    options = GenerationOptions(max_new_tokens=args.max_new_tokens)
    files = {"forget": Path(args.forget), "retain": Path(args.retain)}
    answer_field = args.answer_field or None
    # Read and validate both files before loading any model.
    if args.mc:
        mc_sets = {name: read_mc_rows(path, field=args.field) for name, path in files.items()}
    else:
        qa_sets = {name: read_qa_rows(path, field=args.field, answer_field=answer_field) for name, path in files.items()}
    guard = _load_guard(args)
    if args.mc:
        sets = {name: evaluate_mc(guard, items, name=name) for name, items in mc_sets.items()}
    else:
        sets = {name: evaluate_qa(guard, rows, options=options, batch_size=args.batch_size, name=name) for name, rows in qa_sets.items()}
    result = {"guard": str(Path(args.guard).resolve()), "mc": args.mc, "files": {k: str(v) for k, v in files.items()}, "sets": sets}
    paths = write_eval(Path(args.out), result)
    summary = {name: (s["summary"] if "summary" in s else s) for name, s in sets.items()}
    _emit({"out": str(Path(args.out)), "files": [str(p) for p in paths], "sets": summary})
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(out_dir=Path(args.out) if args.out else None, max_new_tokens=args.max_new_tokens)


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eco-guard",
        description="Inference-time unlearning guardrail: Embedding-COrrupted (ECO) prompts.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="self-contained tour on the bundled models")
    p.add_argument("--out", help="keep the demo policy and fitted guard in this directory")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("fit", help="fit a policy into a guard directory")
    p.add_argument("policy", help="policy YAML file")
    p.add_argument("--out", required=True, help="output guard directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="recompute clean answers and strength searches instead of reusing earlier fits'")
    p.set_defaults(func=cmd_fit)

    def guard_arg(q: argparse.ArgumentParser) -> None:
        q.add_argument("--guard", required=True, help="fitted guard directory (from `eco-guard fit`)")

    p = sub.add_parser("check", help="classify text without generating")
    guard_arg(p)
    p.add_argument("text", nargs="?", help="one text to check")
    p.add_argument("--input", help="JSONL file, one object per line")
    p.add_argument("--output", help="JSONL file to write, one decision per input line")
    p.add_argument("--field", default="text", help="input field holding the text (default: text)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("generate", help="answer prompts through the guard")
    guard_arg(p)
    p.add_argument("text", nargs="?", help="one prompt")
    p.add_argument("--input", help="JSONL file, one object per line")
    p.add_argument("--output", help="JSONL file to write, one answer per input line")
    p.add_argument("--field", default="text", help="input field holding the prompt (default: text)")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-guard", action="store_true", help="answer every prompt with the bare model (reference)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="interactive guarded chat")
    guard_arg(p)
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    p.set_defaults(func=cmd_chat)

    from .server.config import ServerConfig  # plain dataclass: no server extra needed to parse

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server with the guard(s) in front")
    p.add_argument(
        "--guard", action="append", required=True, metavar="[NAME=]DIR",
        help="a fitted guard directory, served as model NAME (default: the directory's name); repeat for several guards",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--audit", help="audit JSONL file (default: the policy's audit.path)")
    p.add_argument("--max-body-bytes", type=int, default=ServerConfig.max_body_bytes, help="larger requests get 413")
    p.add_argument("--request-timeout", type=float, default=ServerConfig.request_timeout_s, help="seconds before a request gets 504")
    p.add_argument("--batch-window-ms", type=float, default=ServerConfig.batch_window_ms, help="micro-batch gathering window (<= 10)")
    p.add_argument("--max-batch-size", type=int, default=ServerConfig.max_batch_size)
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, help="default max_tokens")
    p.add_argument("--max-check-inputs", type=int, default=ServerConfig.max_check_inputs, help="most inputs per /v1/guard/check request")
    p.add_argument(
        "--max-check-words", type=int, default=ServerConfig.max_check_words,
        help="most words one /v1/guard/check request may classify (each input's last user turn); more gets 400",
    )
    p.add_argument("--api-keys", metavar="FILE", help="YAML keys file: keys: [{name, key_sha256, guards: [NAME, ...]}]; clients send 'Authorization: Bearer <key>'")
    p.add_argument("--allow-unauthenticated", action="store_true", help="allow a non-loopback --host without API keys (prints a warning)")
    p.add_argument("--protect-metrics", action="store_true", help="/metrics needs an API key too")
    p.add_argument("--otel", action="store_true", help="export OpenTelemetry traces (otel extra; OTLP when its exporter is installed, else stderr)")
    p.add_argument("--trace-content", action="store_true", help="put prompts and answers in spans (off by default)")
    p.add_argument("--ray", action="store_true", help="serve the same routes on Ray Serve (ray extra)")
    p.add_argument("--ray-address", help="Ray cluster to join (default: start a local Ray instance)")
    p.add_argument("--classify-replicas", type=int, default=1, help="--ray: replicas of the classification deployment")
    p.add_argument("--generate-replicas", type=int, default=1, help="--ray: replicas of the generation deployment")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("eval", help="efficacy of a guard: recall/accuracy with the guard on and off, flags, fluency")
    guard_arg(p)
    p.add_argument("--forget", required=True, help="questions the guard should make the model forget")
    p.add_argument("--retain", required=True, help="questions that must keep working")
    p.add_argument("--mc", action="store_true", help="multiple choice: JSONL rows with question, choices, answer index")
    p.add_argument("--out", required=True, help="directory for eval.json, eval.md and eval.png")
    p.add_argument("--field", default="question", help="field holding the question (default: question)")
    p.add_argument("--answer-field", default="answer", help="field holding the gold answer; '' for none")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=cmd_eval)

    return parser


def run(argv: Sequence[str] | None = None, *, handler: Callable[[argparse.Namespace], int] | None = None) -> int:
    """Parse and run; return the exit code (used by tests and by :func:`main`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    try:
        return (handler or args.func)(args)
    except EcoGuardError as exc:
        print(f"eco-guard {args.command}: error: {exc}", file=sys.stderr)
        if os.environ.get("ECO_GUARD_DEBUG"):
            traceback.print_exc()
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"eco-guard {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no tracebacks for users
        print(
            f"eco-guard {args.command}: internal error: {type(exc).__name__}: {exc}\n"
            "This is a bug in eco-guard; re-run with ECO_GUARD_DEBUG=1 for a traceback and report it.",
            file=sys.stderr,
        )
        if os.environ.get("ECO_GUARD_DEBUG"):
            traceback.print_exc()
        return 1


def main() -> None:
    sys.exit(run())
