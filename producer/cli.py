"""``embedq``: the operator's and evaluator's command (``status``, ``bulk``, ``bench``, ``eval``)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embedq.extras import MissingExtra, require

from .acl import ROLES
from .defaults import setting


def _ints(value: str) -> tuple[int, ...]:
    return tuple(int(v) for v in value.split(",") if v)


def _words(value: str) -> tuple[str, ...]:
    return tuple(v for v in value.split(",") if v)


def redacted(url: str) -> str:
    """``url`` without its password (for messages and logs)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def default_model() -> str:
    """EMBEDDING_MODEL if set, else the bundled offline all-MiniLM-L6-v2."""
    from .tools.local import bundled_model_path

    return setting("model") or bundled_model_path()


def build_parser() -> argparse.ArgumentParser:
    from embedq.bulk.cli import add_parser as add_bulk_parser

    parser = argparse.ArgumentParser(
        prog="embedq", description="embedq tools: status, bulk embedding, benchmark, evaluation."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_bulk_parser(sub)

    acl = sub.add_parser("acl", help="print the Redis ACL rules of a role (worker, producer, bulk, status)")
    acl.add_argument("--role", required=True, choices=ROLES)
    acl.add_argument("--user", required=True, help="the Redis user name")
    acl.add_argument("--password", required=True, help="the user's password")
    acl.add_argument("--queue", default=setting("queue"), help="the workers' queue (env EMBED_QUEUE)")
    acl.add_argument("--rq-prefix", default="rq:", help="RQ's key prefix, for the bulk role (default rq:)")
    acl.add_argument(
        "--format",
        choices=("command", "aclfile"),
        default="command",
        help="an ACL SETUSER command for redis-cli (default), or a line for Redis's aclfile",
    )

    bench = sub.add_parser("bench", help="the design record's sweep in three modes, and the targets")
    bench.add_argument("--model", help="hub id or path (default: EMBEDDING_MODEL, else the bundled MiniLM)")
    bench.add_argument("--texts", help="a file with one text per line (default: the design record's texts)")
    bench.add_argument("--threads", type=_ints, help="torch threads to sweep (default 1,2,4)")
    bench.add_argument("--batch", type=_ints, help="batch sizes to sweep (default 1,4,8,16)")
    bench.add_argument("--concurrency", type=_ints, help="concurrent requests to sweep (default 1,5,10)")
    bench.add_argument("--lengths", type=_words, help="short,long (default both)")
    bench.add_argument("--requests", type=int, help="requests per sweep cell (default 100)")
    bench.add_argument("--max-seconds", type=float, help="time cap per sweep cell (default 10)")
    bench.add_argument("--target-requests", type=int, help="requests per target cell (default 800)")
    bench.add_argument("--policies", type=_words, help="batching policies to compare (default all)")
    bench.add_argument("--overhead-batches", type=int, help="batches timed for target 4 (default 200)")
    bench.add_argument(
        "--backends",
        type=_words,
        help="worker backends to compare: torch,onnx,openvino (default torch,onnx; onnx and openvino "
        "serve an export of the model, made now unless --export names one; needs embedq[export])",
    )
    bench.add_argument("--export", help="an export of the model (embedq-worker export) for onnx/openvino")
    bench.add_argument(
        "--cache-hit-ratio",
        type=float,
        help="share of repeated texts in the query-cache variant, 0..1 (default 0.5; 0: no cache variant)",
    )
    bench.add_argument("--quick", action="store_true", help="a small preset: about 4 minutes on 2 cores")
    bench.add_argument(
        "--out",
        type=Path,
        required=True,
        help="report folder to write (name one: the committed reports in benchmarks/results are "
        "only replaced if you name that folder)",
    )

    serve = sub.add_parser("serve", help="the OpenAI-compatible HTTP front door (needs embedq[api])")
    serve.add_argument("--host", default=setting("api_host"), help="env EMBED_API_HOST (default 127.0.0.1)")
    serve.add_argument(
        "--port", type=int, default=setting("api_port"), help="env EMBED_API_PORT (default 8000)"
    )
    serve.add_argument("--redis-url", help="env REDIS_URL")
    serve.add_argument("--queue", help="env EMBED_QUEUE")
    serve.add_argument("--cache-url", help="env EMBED_CACHE_URL: the workers' query cache (default off)")
    serve.add_argument("--timeout", type=float, help="env EMBED_TIMEOUT (default 5)")
    serve.add_argument("--kind", choices=("query", "passage"), help="env EMBED_API_KIND (default query)")
    serve.add_argument(
        "--no-auth", action="store_true",
        help="serve a non-loopback address without API keys (env EMBED_API_NO_AUTH): only behind a "
        "gateway that authenticates; keys come from EMBED_API_KEYS / EMBED_API_KEYS_FILE",
    )  # fmt: skip

    pl = sub.add_parser(
        "plan",
        help="workers needed for a rate of questions at a p95, simulated from a measured batch-time curve",
    )
    pl.add_argument("--rate", type=float, required=True, help="questions per second to serve")
    pl.add_argument("--p95-ms", type=float, required=True, help="the p95 latency to meet, ms")
    pl.add_argument(
        "--curve", required=True,
        help="encode ms per batch size on one worker, '1:206,8:911' (measure it: benchmarks/capacity.py "
        "prints it; the default models' curves are in docs/performance.md)",
    )  # fmt: skip
    pl.add_argument(
        "--batch-log", type=Path, action="append", default=[],
        help="a running worker's log at EMBED_LOG_LEVEL=DEBUG (repeatable): its batches' times scale the "
        "curve, spread included (what the fleet's host really gives, neighbours and all)",
    )  # fmt: skip
    pl.add_argument("--max-batch", type=int, default=8, help="EMBED_MAX_BATCH (default 8)")
    pl.add_argument("--batch-wait-ms", type=float, default=50.0, help="EMBED_BATCH_WAIT_MS (default 50)")
    pl.add_argument("--policy", choices=("adaptive", "fixed"), default="adaptive", help="EMBED_BATCH_POLICY")
    pl.add_argument(
        "--overhead-ms", type=float, default=5.0,
        help="the queue's own cost per question, ms (a lone question through the queue minus in-process; "
        "default 5)",
    )  # fmt: skip
    pl.add_argument("--max-workers", type=int, default=64)
    pl.add_argument(
        "--max-busy", type=float, default=0.85,
        help="busiest a fleet may be and still count (default 0.85: headroom for bursts and restarts)",
    )  # fmt: skip

    st = sub.add_parser("status", help="queue depths, live workers, requests/s and p95 of the last minute")
    st.add_argument("--redis-url", default=setting("redis_url"), help="env REDIS_URL")
    st.add_argument("--queue", default=setting("queue"), help="env EMBED_QUEUE")
    st.add_argument("--json", action="store_true", help="machine-readable output")

    ev = sub.add_parser("eval", help="Recall@1/5/10 and MRR@10, in-process and through the queue")
    ev.add_argument("data", help="JSONL of query/passage pairs, or a SQuAD-format JSON (e.g. KorQuAD)")
    ev.add_argument("--sample", type=int, default=500, help="queries to sample (default 500)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument(
        "--model", action="append", help="model to evaluate; repeat to compare (default as bench)"
    )
    ev.add_argument("--query-prefix", default=None, help="override the query prefix (default: as the worker)")
    ev.add_argument("--passage-prefix", default=None, help="override the passage prefix")
    ev.add_argument("--query-field", default="query")
    ev.add_argument("--passage-field", default="passage")
    ev.add_argument("--redis-url", help="use the workers on this Redis instead of starting a local one")
    ev.add_argument("--queue", default=setting("queue"), help="queue of those workers (env EMBED_QUEUE)")
    ev.add_argument("--no-queue", action="store_true", help="in-process only")
    ev.add_argument("--tie-eps", type=float, default=1e-6, help="score gap under which a swap is a tie")
    ev.add_argument(
        "--backend",
        action="append",
        choices=("torch", "onnx", "openvino"),
        help="worker backend of the queue path; repeat to compare (default torch). onnx/openvino serve "
        "--export, made now from the model if not given (needs embedq[export]); each must rank as the "
        "in-process torch model does",
    )
    ev.add_argument("--export", help="the fp32 export (embedq-worker export) for the onnx/openvino backends")
    ev.add_argument(
        "--quantized",
        help="an int8 export (embedq-worker export --quantize int8): its Recall@k beside fp32's, and how "
        "many top-10 lists it keeps; reported, never a failure (int8 vectors differ by design)",
    )
    return parser


def cmd_bench(ns: argparse.Namespace) -> int:
    from .tools import bench

    plan = bench.Plan.quick() if ns.quick else bench.Plan()
    changes = {
        k: getattr(ns, k2)
        for k, k2 in (
            ("threads", "threads"),
            ("batches", "batch"),
            ("concurrency", "concurrency"),
            ("lengths", "lengths"),
            ("requests", "requests"),
            ("max_seconds", "max_seconds"),
            ("target_requests", "target_requests"),
            ("policies", "policies"),
            ("overhead_batches", "overhead_batches"),
            ("backends", "backends"),
            ("export", "export"),
            ("cache_hit_ratio", "cache_hit_ratio"),
        )
        if getattr(ns, k2) is not None
    }
    from dataclasses import replace

    plan = replace(plan, **changes)
    try:
        plan.check()
        if any(b != "torch" for b in plan.backends) and plan.export is None:
            require(
                "export", "onnx", "onnxscript", what="embedq bench --backends onnx (it exports the model)"
            )
    except (ValueError, MissingExtra) as exc:
        print(f"embedq bench: {exc}", file=sys.stderr)
        return 2
    texts = bench.Texts.from_file(ns.texts) if ns.texts else bench.Texts(bench.SHORT_TEXTS, [bench.LONG_TEXT])
    model = ns.model or default_model()
    started = time.monotonic()
    result = bench.run(plan, model, texts, log=lambda line: print(line, flush=True))
    result["seconds"] = round(time.monotonic() - started, 1)
    paths = bench.write_reports(result, ns.out)
    print()
    print(bench.markdown(result).split("## Sweep")[0])
    print(f"wrote {', '.join(str(p) for p in paths)} in {result['seconds']:.0f} s")
    return 0


def cmd_eval(ns: argparse.Namespace) -> int:
    from .tools import evaluate as ev
    from .tools.local import model_label

    pairs = ev.load_pairs(ns.data, query_field=ns.query_field, passage_field=ns.passage_field)
    data = ev.build_set(pairs, sample=ns.sample, seed=ns.seed)
    print(f"{len(data.queries)} queries against {len(data.corpus)} passages from {ns.data}", flush=True)
    models = ns.model or [default_model()]
    prefixes = {"query_prefix": ns.query_prefix, "passage_prefix": ns.passage_prefix}
    backends = list(dict.fromkeys(ns.backend or ["torch"]))
    rows = []
    failed = False
    for n, model in enumerate(models):
        name = model_label(model)
        started = time.monotonic()
        print(f"in-process {name}: encoding {len(data.queries) + len(data.corpus)} texts ...", flush=True)
        local = ev.InProcessEncoder(model, threads=2, **prefixes)
        q = local.encode(data.queries, "query")
        p = local.encode(data.corpus, "passage")
        top, scores = ev.rankings(q, p)
        rows.append(("in-process torch", name, ev.metrics(top, data.positives)))
        print(
            f"in-process {name}: done in {time.monotonic() - started:.0f} s; prefixes {local.prefixes} "
            f"({local.prefix_source})",
            flush=True,
        )
        if n > 0 or ns.no_queue:
            continue
        paths = _queue_paths(ns, model, backends)
        for label, env, exact in paths:
            started = time.monotonic()
            print(f"queue {label}: encoding the same texts through the queue ...", flush=True)
            q2, p2 = _queue_vectors(ns, env, data, prefixes)
            top2, _ = ev.rankings(q2, p2)
            rows.append((f"queue {label}", name, ev.metrics(top2, data.positives)))
            agree = ev.compare_rankings(top, top2, scores, ns.tie_eps)
            cos = float(np.min(np.sum(np.vstack([q, p]) * np.vstack([q2, p2]), axis=1)))
            print(
                f"queue {label} vs in-process torch: top-10 identical for {agree['identical']}/"
                f"{agree['queries']} queries ({agree['ties']} differ only within score ties < "
                f"{ns.tie_eps:g}); lowest cosine {cos:.7f}; {time.monotonic() - started:.0f} s"
                + ("" if exact else " (int8: differs by design; re-embed the store to use it)"),
                flush=True,
            )
            failed = failed or (exact and agree["differ"] > 0)
    print()
    print(ev.table(rows))
    if failed:
        print("\nFAIL: a queue path ranks differently from the in-process model", file=sys.stderr)
    return 1 if failed else 0


def _queue_paths(
    ns: argparse.Namespace, model: str, backends: list[str]
) -> list[tuple[str, dict[str, str], bool]]:
    """(label, worker environment, must it rank exactly as in-process torch) for each queue path
    asked for: a worker to start on a local Redis, or with ``--redis-url`` the workers already
    running there (one path, whatever they serve)."""
    if ns.redis_url:
        return [("(" + ns.queue + ")", {}, True)]
    export = ns.export
    if export is None and any(b != "torch" for b in backends):
        from .tools.bench import make_export

        export = make_export(model, lambda line: print(line, flush=True))
    paths = [
        (
            b,
            {"EMBEDDING_MODEL": model}
            if b == "torch"
            else {"EMBEDDING_MODEL": str(export), "EMBED_BACKEND": b},
            True,
        )
        for b in backends
    ]
    if ns.quantized:
        paths.append(("onnx-int8", {"EMBEDDING_MODEL": ns.quantized, "EMBED_BACKEND": "onnx"}, False))
    return paths


def _queue_vectors(
    ns: argparse.Namespace, env: dict[str, str], data: object, prefixes: dict[str, str | None]
) -> tuple[np.ndarray, np.ndarray]:
    from embedq import EmbeddingClient

    from .tools import evaluate as ev
    from .tools.local import RedisServer, WorkerProcess

    assert isinstance(data, ev.EvalSet)
    if ns.redis_url:
        client = EmbeddingClient.from_url(ns.redis_url, queue=ns.queue, timeout=300, max_queue=None)
        return ev.through_queue(client, data.queries, "query"), ev.through_queue(
            client, data.corpus, "passage"
        )
    server = RedisServer()
    env = {**env, **{f"EMBED_{k.upper()}": v for k, v in prefixes.items() if v is not None}}
    worker = WorkerProcess(server.url, "eval:requests", env)
    try:
        client = EmbeddingClient.from_url(server.url, queue=worker.queue, timeout=300, max_queue=None)
        return ev.through_queue(client, data.queries, "query"), ev.through_queue(
            client, data.corpus, "passage"
        )
    finally:
        worker.terminate()
        server.stop()


def cmd_plan(ns: argparse.Namespace) -> int:
    """``embedq plan``: the simulated fleet sizes, and the first that meets the target."""
    from .tools.capacity import Curve, Fleet, plan

    try:
        curve = Curve.of([tuple(map(float, item.split(":"))) for item in ns.curve.split(",")])  # type: ignore[misc]
    except ValueError as exc:
        print(f"embedq plan: --curve must read like '1:206,8:911' ({exc})", file=sys.stderr)
        return 2
    if ns.batch_log:
        from embedq.worker.report import logged_batches

        batches = [b for path in ns.batch_log for b in logged_batches(path.read_text(errors="replace"))]
        if not batches:
            print(
                "embedq plan: no batch lines in --batch-log (run the worker with EMBED_LOG_LEVEL=DEBUG)",
                file=sys.stderr,
            )
            return 2
        curve = curve.observed(batches)
        factors = sorted(curve.spread)
        print(
            f"{len(batches)} logged batches: {factors[len(factors) // 2]:.2f}x the curve at the median, "
            f"{factors[int(len(factors) * 0.9)]:.2f}x at p90"
        )
    fleet = Fleet(
        max_batch=ns.max_batch, batch_wait_ms=ns.batch_wait_ms, policy=ns.policy, overhead_ms=ns.overhead_ms
    )
    rows = plan(curve, ns.rate, ns.p95_ms, fleet, max_workers=ns.max_workers, max_busy=ns.max_busy)
    per_worker = curve.capacity(ns.max_batch)
    print(
        f"{ns.rate:g} questions/s, p95 <= {ns.p95_ms:g} ms, busy <= {ns.max_busy:.0%}; one worker answers at "
        f"most {per_worker:.1f}/s"
    )
    print("workers  busy   p50 ms   p95 ms  texts/batch")
    for r in rows:
        p50 = "    -" if r.p50_ms == float("inf") else f"{r.p50_ms:8.0f}"
        p95 = "saturated" if r.p95_ms == float("inf") else f"{r.p95_ms:8.0f}"
        print(f"{r.workers:7d}  {min(r.utilization, 9.99):4.0%} {p50} {p95:>8}  {r.mean_batch:5.1f}")
    met = next((r for r in rows if r.meets), None)
    if met is None:
        print(f"no fleet of up to {ns.max_workers} workers meets p95 <= {ns.p95_ms:g} ms at this rate")
        return 1
    print(f"-> {met.workers} worker(s) (simulated p95 {met.p95_ms:.0f} ms)")
    return 0


def cmd_status(ns: argparse.Namespace) -> int:
    import json

    import redis

    from .connection import connect
    from .defaults import STATUS_TIMEOUT_S
    from .status import collect, render

    try:
        client = connect(ns.redis_url, socket_timeout=STATUS_TIMEOUT_S)
        report = collect(client, ns.queue)
    except redis.exceptions.RedisError as exc:
        print(f"embedq status: cannot read {redacted(ns.redis_url)}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=1) if ns.json else render(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``embedq``."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        parser = build_parser()
    except ValueError as exc:  # an environment variable that does not parse
        print(f"embedq: {exc}", file=sys.stderr)
        return 2
    ns = parser.parse_args(argv)
    if ns.command in ("bench", "eval"):
        try:
            require("torch", "torch", "sentence_transformers", what=f"embedq {ns.command}")
        except MissingExtra as exc:
            print(f"embedq: {exc}", file=sys.stderr)
            return 2
    if ns.command == "bench":
        return cmd_bench(ns)
    if ns.command == "status":
        return cmd_status(ns)
    if ns.command == "plan":
        return cmd_plan(ns)
    if ns.command == "serve":
        try:
            require("api", "fastapi", "uvicorn", what="embedq serve")
        except MissingExtra as exc:
            print(f"embedq: {exc}", file=sys.stderr)
            return 2
        from embedq.api.serve import run

        return run(
            ns.host, ns.port, ns.no_auth or setting("api_no_auth"), redis_url=ns.redis_url, queue=ns.queue,
            timeout=ns.timeout, kind=ns.kind, cache_url=ns.cache_url,
        )  # fmt: skip
    if ns.command == "acl":
        from embedq.acl import AclRules

        rules = AclRules(ns.role, queue=ns.queue, rq_prefix=ns.rq_prefix)
        print(
            rules.command(ns.user, ns.password)
            if ns.format == "command"
            else rules.aclfile_line(ns.user, ns.password)
        )
        return 0
    if ns.command == "bulk":
        from embedq.bulk.cli import run_command

        return run_command(ns)
    return cmd_eval(ns)


if __name__ == "__main__":
    sys.exit(main())
