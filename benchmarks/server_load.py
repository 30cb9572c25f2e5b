"""Server load benchmark (issue 6): does micro-batching turn concurrency into throughput?

Starts ``eco-guard serve`` on a free 127.0.0.1 port with a fresh audit file, then for each
concurrency level runs a fixed number of closed-loop clients (each sends its next request
when its last one returns) against POST /v1/chat/completions, half flagged prompts and half
not. Every request asks for exactly ``--max-tokens`` tokens (``ignore_eos``), so every
level does equal work per request. Reports aggregate generated tokens/s, p50/p99 latency
and errors per level, then checks that the audit file holds exactly one parseable line per
request sent. Writes benchmarks/results/server_load.{json,md}.

    .venv/bin/python benchmarks/server_load.py [--guard DIR] [--levels 1 4 8 16] [--rounds 2] [--repeats 2]

``--ray`` (issue 25) compares three servers of the same guard, all up at once so that the
levels can be interleaved across them (the shared machine's speed drifts): the plain
``eco-guard serve`` process, and Ray Serve with one and with two generation replicas (two
applications on one local Ray instance started by this process). Default levels 1, 8, 16.
Goal: overhead, not speedup, on one machine: Ray with one replica >= 0.8x the plain server's
tokens/s at 8 clients. Writes benchmarks/results/server_load_ray.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

import httpx

from spawn import spawn_server  # benchmarks/spawn.py, next to this file

HERE = Path(__file__).resolve().parent
PROMPTS = [
    ("Describe the history of France in detail.", True),
    ("Write a long story about a dragon who learns to cook.", False),
    ("Tell me everything about the culture and food of France.", True),
    ("Explain in detail how a steam engine works.", False),
    ("What rivers and mountains are there in France?", True),
    ("Describe the water cycle step by step.", False),
    ("Who governs France and how are they elected?", True),
    ("List ten fun facts about octopuses.", False),
]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] if s else float("nan")


def fit_demo_guard(work: Path) -> Path:
    """The bundled demo guard, fitted fresh (the same policy `eco-guard demo` uses)."""
    from eco_guard.fitting import fit_guard

    (work / "france.yaml").write_text(resources.files("eco_guard.demo").joinpath("france.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    fit_guard(work / "france.yaml", work / "guard", seed=0, progress=False)
    return work / "guard"


def generate_batches(base: str) -> tuple[float, float]:
    """(rows, batches) the server's generate batcher has run so far, from /metrics."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    values = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        for part in values:
            if line.startswith(f'eco_guard_batch_size_{part}{{stage="generate"}}'):
                values[part] = float(line.rsplit(" ", 1)[1])
    return values["sum"], values["count"]


async def run_level(base: str, concurrency: int, n_requests: int, max_tokens: int, time_limit: float) -> dict[str, Any]:
    """``concurrency`` closed-loop clients share ``n_requests``; stop early at ``time_limit``."""
    latencies: list[float] = []
    tokens = 0
    errors: list[str] = []
    sent = 0
    next_index = 0
    rows_before, batches_before = generate_batches(base)
    start = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=time_limit, limits=limits) as client:

        async def worker() -> None:
            nonlocal tokens, sent, next_index
            while next_index < n_requests and time.perf_counter() - start < time_limit:
                prompt, _ = PROMPTS[next_index % len(PROMPTS)]
                next_index += 1
                sent += 1
                body = {"model": "guard", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "ignore_eos": True}
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/chat/completions", json=body)
                    if r.status_code != 200:
                        errors.append(f"{r.status_code}: {r.text[:200]}")
                        continue
                    tokens += int(r.json()["usage"]["completion_tokens"])
                    latencies.append(time.perf_counter() - t0)
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    rows_after, batches_after = generate_batches(base)
    return {
        "concurrency": concurrency,
        "requests": sent,
        "latencies": latencies,
        "errors": errors,
        "tokens": tokens,
        "wall": wall,
        "rows": rows_after - rows_before,
        "batches": batches_after - batches_before,
    }


def summarize(concurrency: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool the interleaved repeats of one level: total tokens over total wall time."""
    latencies = [x for r in runs for x in r["latencies"]]
    errors = [e for r in runs for e in r["errors"]]
    tokens = sum(r["tokens"] for r in runs)
    wall = sum(r["wall"] for r in runs)
    return {
        "concurrency": concurrency,
        "requests": sum(r["requests"] for r in runs),
        "ok": len(latencies),
        "errors": len(errors),
        "error_samples": errors[:3],
        "generated_tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 2) if wall > 0 else 0.0,
        "tokens_per_s_by_repeat": [round(r["tokens"] / r["wall"], 2) for r in runs if r["wall"] > 0],
        "p50_ms": round(pct(latencies, 0.5) * 1000, 1),
        "p99_ms": round(pct(latencies, 0.99) * 1000, 1),
        "mean_batch": round(sum(r["rows"] for r in runs) / max(1.0, sum(r["batches"] for r in runs)), 2),
    }


def check_audit(path: Path, expected: int) -> dict[str, Any]:
    """Exactly one complete, parseable line per request sent."""
    raw = path.read_bytes() if path.exists() else b""
    lines = raw.decode("utf-8").splitlines()
    parsed = 0
    for line in lines:
        try:
            json.loads(line)
            parsed += 1
        except json.JSONDecodeError:
            pass
    return {"lines": len(lines), "parseable": parsed, "expected": expected, "ends_with_newline": raw.endswith(b"\n") or not raw, "ok": parsed == len(lines) == expected}


def write_results(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "server_load.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    rows = [
        f"| {lv['concurrency']} | {lv['requests']} | {lv['errors']} | {lv['generated_tokens']} | {lv['tokens_per_s']} | {lv['speedup_vs_1']}x | {lv['p50_ms']} | {lv['p99_ms']} | {lv['mean_batch']} |"
        for lv in result["levels"]
    ]
    audit = result["audit"]
    md = "\n".join(
        [
            "# Server load benchmark",
            "",
            f"`{result['command']}` on {result['machine']}; {result['max_tokens']} tokens per request "
            "(`ignore_eos`), closed-loop clients over loopback HTTP, half the prompts flagged (corrupted); "
            f"levels interleaved {result['repeats']}x, tokens/s = all tokens / all wall time of a level.",
            "",
            "| clients | requests | errors | tokens | tokens/s | vs 1 client | p50 ms | p99 ms | rows per generate |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"Audit: {audit['parseable']} parseable lines of {audit['lines']} for {audit['expected']} requests sent "
            f"({'OK' if audit['ok'] else 'MISMATCH'}).",
            f"Goal (8 clients >= 3x one client's tokens/s): {'met' if result['goal_met'] else 'NOT met'} "
            f"({result['speedup_at_8']}x).",
            "",
        ]
    )
    (out / "server_load.md").write_text(md, encoding="utf-8")


def load_average() -> str:
    """The 1/5/15-minute load averages: the machine is shared, so every result carries it."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def start_ray_apps(guard: Path, work: Path, replicas: list[int], max_batch_size: int, torch_threads: int) -> tuple[dict[str, str], dict[str, Path]]:
    """One local Ray instance, one Serve application per replica count, under its own prefix."""
    import ray
    from ray import serve

    from eco_guard.server.config import ServerConfig
    from eco_guard.server.ray_app import build_app
    from spawn import free_port

    ray.init(include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    bases, audit_dirs = {}, {}
    for n in replicas:
        name = f"ray-{n}-replica{'s' if n > 1 else ''}"
        audit_dirs[name] = work / name
        audit_dirs[name].mkdir()
        app = build_app(
            {"guard": guard}, config=ServerConfig(max_batch_size=max_batch_size), audit_path=audit_dirs[name] / "audit.jsonl", generate_replicas=n, torch_threads=torch_threads
        )
        serve.run(app, name=name, route_prefix=f"/{name}")
        bases[name] = f"http://127.0.0.1:{port}/{name}"
    for base in bases.values():
        deadline = time.monotonic() + 600
        while httpx.get(f"{base}/healthz", timeout=30).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{base} did not come up")
            time.sleep(1)
    return bases, audit_dirs


def check_ray_audit(directory: Path, expected: int) -> dict[str, Any]:
    """The replicas' audit files together: one parseable line per request sent."""
    lines = [line for path in sorted(directory.glob("audit.*.jsonl")) for line in path.read_text(encoding="utf-8").splitlines()]
    parsed = sum(1 for line in lines if json.loads(line).get("replica", "").startswith("Classifier#"))
    return {"files": len(list(directory.glob("audit.*.jsonl"))), "lines": len(lines), "parseable": parsed, "expected": expected, "ok": parsed == len(lines) == expected}


def main_ray(args: argparse.Namespace) -> int:
    """Plain server vs Ray Serve (1 and 2 generation replicas), levels interleaved across all three."""
    from ray import serve

    work = Path(tempfile.mkdtemp(prefix="eco-guard-serverload-ray-"))
    guard = args.guard or fit_demo_guard(work)
    levels = args.levels or [1, 8, 16]
    load_before = load_average()
    # The same intra-op threads per model copy everywhere: on a shared, oversubscribed
    # machine two torch threads spin against each other (measured at load ~23: 32 tokens in
    # 25-38 s with 2 threads, 6 s with 1), which would measure the neighbours, not Ray.
    os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)  # the plain server inherits it
    proc, plain = spawn_server(f"guard={guard}", audit=work / "audit.jsonl", log=work / "serve.log", extra_args=["--max-batch-size", str(max(levels))])
    setups = {"plain": plain}
    audit_dirs: dict[str, Path] = {}
    sent = {name: 0 for name in ("plain", "ray-1-replica", "ray-2-replicas")}
    raw: dict[tuple[str, int], list[dict[str, Any]]] = {}
    try:
        ray_bases, audit_dirs = start_ray_apps(guard, work, [1, 2], max(levels), args.torch_threads)
        setups.update(ray_bases)
        for name, base in setups.items():
            sent[name] += asyncio.run(run_level(base, 2, 2, args.max_tokens, args.time_limit))["requests"]  # first-call costs
        for repeat in range(args.repeats):
            for c in levels:
                for name, base in setups.items():
                    run = asyncio.run(run_level(base, c, max(4, args.rounds * c), args.max_tokens, args.time_limit))
                    sent[name] += run["requests"]
                    raw.setdefault((name, c), []).append(run)
                    print(f"repeat {repeat} {name} clients {c}: {run['tokens'] / run['wall']:.2f} tok/s, {len(run['errors'])} errors (load {load_average()})", file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait(60)
        serve.shutdown()
    levels_out = {name: [summarize(c, raw[(name, c)]) for c in levels] for name in setups}
    at = {name: {lv["concurrency"]: lv["tokens_per_s"] for lv in rows} for name, rows in levels_out.items()}
    ratio = {name: {c: round(at[name][c] / at["plain"][c], 3) if at["plain"][c] else None for c in levels} for name in setups}
    audits = {"plain": check_audit(work / "audit.jsonl", sent["plain"])}
    audits.update({name: check_ray_audit(d, sent[name]) for name, d in audit_dirs.items()})
    errors = sum(lv["errors"] for rows in levels_out.values() for lv in rows)
    ray1_at_8 = ratio["ray-1-replica"].get(8)
    result = {
        "command": "python benchmarks/server_load.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), {platform.python_version()}",
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "max_tokens": args.max_tokens,
        "repeats": args.repeats,
        "torch_threads_per_model_copy": args.torch_threads,
        "levels": levels_out,
        "ratio_vs_plain": ratio,
        "audit": audits,
        "errors": errors,
        "goal": "ray-1-replica tokens/s >= 0.8x plain at 8 clients",
        "goal_met": bool(ray1_at_8 is not None and ray1_at_8 >= 0.8 and errors == 0),
    }
    write_ray_results(result, args.out)
    print((args.out / "server_load_ray.md").read_text(encoding="utf-8"))
    return 0 if errors == 0 and all(a["ok"] for a in audits.values()) else 1


def write_ray_results(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "server_load_ray.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    rows = []
    for name, levels in result["levels"].items():
        for lv in levels:
            rows.append(
                f"| {name} | {lv['concurrency']} | {lv['requests']} | {lv['errors']} | {lv['tokens_per_s']} | "
                f"{result['ratio_vs_plain'][name][lv['concurrency']]}x | {lv['p50_ms']} | {lv['p99_ms']} |"
            )
    audit = "; ".join(f"{name}: {a['parseable']}/{a['expected']} lines{' in ' + str(a['files']) + ' replica files' if 'files' in a else ''} ({'OK' if a['ok'] else 'MISMATCH'})" for name, a in result["audit"].items())
    ratio8 = result["ratio_vs_plain"]["ray-1-replica"].get(8)
    md = "\n".join(
        [
            "# Server load: plain vs Ray Serve",
            "",
            f"`{result['command']}` on {result['machine']}; load average {result['load_average_before']} before, "
            f"{result['load_average_after']} after (1/5/15 min). {result['max_tokens']} tokens per request (`ignore_eos`), "
            "closed-loop clients over loopback HTTP, half the prompts flagged; all three servers up at once, "
            f"levels interleaved across them {result['repeats']}x; {result['torch_threads_per_model_copy']} torch thread(s) per model copy "
            "in every server; tokens/s = all tokens / all wall time of a level.",
            "",
            "| server | clients | requests | errors | tokens/s | vs plain | p50 ms | p99 ms |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"Audit: {audit}.",
            f"Goal ({result['goal']}): {'met' if result['goal_met'] else 'NOT met'} ({ratio8}x).",
            "",
        ]
    )
    (out / "server_load_ray.md").write_text(md, encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--guard", type=Path, help="fitted guard directory (default: fit the demo policy)")
    ap.add_argument("--levels", type=int, nargs="+", default=None, help="default 1 4 8 16 (--ray: 1 8 16)")
    ap.add_argument("--ray", action="store_true", help="plain server vs Ray Serve with 1 and 2 generation replicas")
    ap.add_argument("--torch-threads", type=int, default=1, help="--ray: torch threads per model copy, the same for every server")
    ap.add_argument("--rounds", type=int, default=2, help="requests per level and repeat = rounds x clients (at least 4)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repetitions of the whole sequence of levels")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--time-limit", type=float, default=120.0, help="seconds per level")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    if args.ray:
        return main_ray(args)
    args.levels = args.levels or [1, 4, 8, 16]

    work = Path(tempfile.mkdtemp(prefix="eco-guard-serverload-"))
    guard = args.guard or fit_demo_guard(work)
    audit = work / "audit.jsonl"
    proc, base = spawn_server(f"guard={guard}", audit=audit, log=work / "serve.log", extra_args=["--max-batch-size", str(max(args.levels))])
    raw: dict[int, list[dict[str, Any]]] = {c: [] for c in args.levels}
    sent = 0
    try:
        warm = asyncio.run(run_level(base, 2, 2, args.max_tokens, args.time_limit))  # first-call costs
        sent += warm["requests"]
        # Levels are interleaved and repeated: the machine is shared, and its speed drifts
        # over minutes; neighbours in time compare fairly, a level run once at the start does not.
        for repeat in range(args.repeats):
            for c in args.levels:
                run = asyncio.run(run_level(base, c, max(4, args.rounds * c), args.max_tokens, args.time_limit))
                sent += run["requests"]
                raw[c].append(run)
                print(
                    f"repeat {repeat} clients {c}: {run['tokens'] / run['wall']:.2f} tok/s, "
                    f"{len(run['errors'])} errors, {run['rows']:.0f} rows in {run['batches']:.0f} batches",
                    file=sys.stderr,
                )
    finally:
        proc.terminate()  # graceful: drains in-flight requests, then closes the audit file
        proc.wait(60)
    levels = [summarize(c, raw[c]) for c in args.levels]
    one = next((lv["tokens_per_s"] for lv in levels if lv["concurrency"] == 1), None)
    for lv in levels:
        lv["speedup_vs_1"] = round(lv["tokens_per_s"] / one, 2) if one else None
    at8 = next((lv["speedup_vs_1"] for lv in levels if lv["concurrency"] == 8), None)
    result = {
        "command": "python benchmarks/server_load.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), {platform.python_version()}",
        "max_tokens": args.max_tokens,
        "repeats": args.repeats,
        "levels": levels,
        "audit": check_audit(audit, sent),
        "speedup_at_8": at8,
        "goal_met": bool(at8 and at8 >= 3.0 and all(lv["errors"] == 0 for lv in levels)),
    }
    write_results(result, args.out)
    print((args.out / "server_load.md").read_text(encoding="utf-8"))
    return 0 if result["audit"]["ok"] and all(lv["errors"] == 0 for lv in levels) else 1


if __name__ == "__main__":
    raise SystemExit(main())
