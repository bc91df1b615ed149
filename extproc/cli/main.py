"""The ``semantic-cache`` command: run, serve, check-config, create-collection, admin, eval,
train-verifier, render-envoy."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from extproc import __version__
from extproc.cli.config_commands import cmd_check_config, cmd_create_collection
from extproc.cli.envoy import envoy_command, render_envoy_config, validate_envoy_config
from extproc.config.settings import DEFAULT_CONFIG_PATH, CacheSettings, default_config_path, load_config
from extproc.errors import ConfigError
from extproc.observability.logs import setup_logging
from extproc.observability.tracing import setup_tracing, shutdown_tracing

log = logging.getLogger("semantic_cache")


def _load(path: str | None) -> CacheSettings:
    file = default_config_path(path)
    settings = load_config(file)
    log.info("config %s loaded (backend=%s, enabled=%s)", file, settings.backend_type, settings.enabled)
    return settings


def cmd_render_envoy(args: argparse.Namespace) -> int:
    """Print (or write) the Envoy config rendered from the environment and the processor's config.

    Envoy strips the tenant header clients send: it must be the one the processor scopes by
    (``scope_header`` of its config), or any client picks its tenant."""
    env = dict(os.environ)
    path = default_config_path(args.config)
    if args.config or Path(path).is_file():
        wanted = load_config(path).scope_header.lower()
        given = env.setdefault("SCOPE_HEADER", wanted).lower()
        if given != wanted:
            raise ConfigError(
                f"SCOPE_HEADER is {given!r} but the processor ({path}) scopes by {wanted!r}: Envoy would "
                "strip the wrong header and let clients pick their tenant; unset SCOPE_HEADER"
            )
    text = render_envoy_config(env)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the processor alone (Envoy runs elsewhere)."""
    from extproc.app import serve

    asyncio.run(serve(_load(args.config)))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run processor + Envoy (+ the demo upstream when UPSTREAM_URL is unset) until Ctrl-C."""
    settings = _load(args.config)
    return asyncio.run(_run(settings, args.envoy_log_level))


async def _wait_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return True
        await asyncio.sleep(0.1)
    return False


async def _run(settings: CacheSettings, envoy_log_level: str) -> int:
    from extproc.admin.api import admin_preflight
    from extproc.app import build_server, start_listeners
    from extproc.cli.demo_upstream import start_demo_upstream

    admin_preflight(settings)

    env = dict(os.environ)
    # The Envoy config's own errors (no template, a bad UPSTREAM_URL or duration) before anything
    # starts: the real render below only adds the processor's port and the demo upstream's.
    render_envoy_config(
        env | {"UPSTREAM_URL": env.get("UPSTREAM_URL") or "http://127.0.0.1:1", "EXTPROC_PORT": "1"}
    )
    demo = None
    if not env.get("UPSTREAM_URL"):
        demo, demo_port = await start_demo_upstream("127.0.0.1", int(env.get("DEMO_UPSTREAM_PORT", "0")))
        env["UPSTREAM_URL"] = f"http://127.0.0.1:{demo_port}"
        log.warning(
            "UPSTREAM_URL is not set: started the built-in DEMO upstream on %s (canned answers, not "
            "a model). Point at vLLM with UPSTREAM_URL=http://127.0.0.1:8000 semantic-cache run",
            env["UPSTREAM_URL"],
        )
    else:
        log.info("upstream %s", env["UPSTREAM_URL"])
    server = await build_server(settings)
    try:
        port, admin = await start_listeners(server, settings)
    except BaseException:
        if demo is not None:
            await demo.cleanup()
        raise
    grpc_host = settings.server.grpc_address.rpartition(":")[0]
    env.setdefault("EXTPROC_HOST", grpc_host)
    env.setdefault("SCOPE_HEADER", settings.scope_header.lower())
    env["EXTPROC_PORT"] = str(port)
    try:
        return await _serve_behind_envoy(env, envoy_log_level)
    finally:
        log.info("stopping")
        await admin.stop()
        await server.stop(settings.server.shutdown_grace_seconds)
        await server.shared.cache.close()
        if demo is not None:
            await demo.cleanup()
        log.info("stopped")


async def _serve_behind_envoy(env: dict[str, str], envoy_log_level: str) -> int:
    """Render, check and run Envoy until it exits or a signal comes; its exit code for ``run``."""
    workdir = Path(tempfile.mkdtemp(prefix="semantic-cache-"))
    config_file = workdir / "envoy.yaml"
    config_file.write_text(render_envoy_config(env), encoding="utf-8")
    checked = validate_envoy_config(config_file)
    if checked.returncode != 0:
        log.error("rendered Envoy config is invalid:\n%s", checked.stdout + checked.stderr)
        return 2
    envoy = await asyncio.create_subprocess_exec(*envoy_command(config_file, envoy_log_level))
    listen = (env.get("ENVOY_LISTEN_ADDRESS", "127.0.0.1"), int(env.get("ENVOY_LISTEN_PORT", "8801")))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    try:
        if not await _wait_port(*listen, timeout=30):
            log.error("Envoy did not start listening on %s:%d", *listen)
            return 3
        log.info("Envoy listening on http://%s:%d (config %s)", *listen, config_file)
        log.info(
            "ready: curl -s http://%s:%d/v1/chat/completions -H 'content-type: application/json' "
            '-d \'{"model":"demo","messages":[{"role":"user","content":"What is Envoy?"}]}\' -i',
            *listen,
        )
        envoy_exit = asyncio.create_task(envoy.wait())
        stop_wait = asyncio.create_task(stop.wait())
        await asyncio.wait({envoy_exit, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if envoy_exit.done():
            log.error("Envoy exited with code %s", envoy.returncode)
            code = 1
        stop_wait.cancel()
    finally:
        if envoy.returncode is None:
            envoy.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(envoy.wait(), 10)
            if envoy.returncode is None:
                envoy.kill()
    return code


def cmd_eval(args: argparse.Namespace) -> int:
    """Measure answer correctness on labelled pairs (see extproc/cli/evaluate.py for the protocol)."""
    import json

    from extproc.cli.evaluate import (
        CONFIDENCE_SWEEP,
        SWEEP,
        eval_settings,
        evaluate,
        format_report,
        read_pairs,
    )
    from extproc.cli.files import check_writable

    if args.outcomes:
        check_writable(args.outcomes)
    pairs = read_pairs(args.pairs, args.limit)
    settings = eval_settings(
        _eval_config(args.config),
        len(pairs),
        args.threshold,
        args.guards,
        args.min_confidence,
        args.verifier_model,
    )
    thresholds = SWEEP if args.sweep else ()
    confidences = CONFIDENCE_SWEEP if args.sweep and settings.verifier_model else ()
    report = asyncio.run(
        evaluate(
            settings,
            pairs,
            thresholds,
            concurrency=args.concurrency,
            confidences=confidences,
            with_pairwise=args.pairwise,
        )
    )
    print(format_report(report, args.sweep))
    if args.show_errors:
        from extproc.cli.eval_errors import format_errors

        print()
        print(format_errors(report))
    if args.outcomes:
        with Path(args.outcomes).open("w", encoding="utf-8") as out:
            for record in report.outcomes():
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
    if args.json:
        print(json.dumps(report.to_json(), sort_keys=True))
    return 0


def _eval_config(path: str | None) -> CacheSettings:
    """The config eval measures: the one named or found, else the defaults (and it says so)."""
    file = default_config_path(path)
    if path is None and file == DEFAULT_CONFIG_PATH and not Path(file).is_file():
        # Outside the repository: the defaults are a complete cache, no file is needed to measure it.
        print(
            f"semantic-cache eval: no {DEFAULT_CONFIG_PATH} here; using the default settings", file=sys.stderr
        )
        return CacheSettings()
    return _load(path)


def cmd_train_verifier(args: argparse.Namespace) -> int:
    """Fit the learned verifier on labelled pairs and write its model file."""
    import json

    from extproc.cli.evaluate import read_pairs
    from extproc.cli.files import check_writable, weights_fingerprint
    from extproc.cli.train_verifier import train
    from extproc.embedding.base import resolve_model_path
    from extproc.embedding.loader import load_sentence_model

    settings = _load(args.config)
    if settings.embedding_endpoint:
        raise ConfigError(
            f"train-verifier embeds with a local model, and this config serves embeddings from "
            f"{settings.embedding_endpoint}: a model trained on other vectors would give wrong "
            "confidences. Train with a config whose embedding_model is that model's local folder "
            "(the same weights), without embedding_endpoint"
        )
    check_writable(args.out)
    pairs = read_pairs(args.pairs, args.limit)
    extra = [p for path in args.extra_pairs or () for p in read_pairs(path)]
    model = load_sentence_model(
        settings.embedding_model, settings.embedding_threads, settings.embedding_backend
    )
    weights = resolve_model_path(settings.embedding_model)
    min_similarity = settings.similarity_threshold if args.min_similarity is None else args.min_similarity
    fitted, report = train(
        pairs,
        model,
        min_similarity,
        Path(args.cache_dir) if args.cache_dir else None,
        Path(args.split_dir) if args.split_dir else None,
        source=Path(args.pairs).name,
        embedding_model=settings.embedding_identity,
        with_embeddings=not args.text_only,
        extra=extra,
        extra_weight=args.extra_weight,
        model_key=f"{settings.embedding_identity}|{weights.resolve()}|{weights_fingerprint(weights)}",
    )
    fitted.save(args.out)
    print(
        f"wrote {args.out}: trained on {report['train_pairs']} pairs, "
        f"calibrated on {report['calibrate_pairs']}"
    )
    print(
        f"held-out {report['test_pairs']} pairs: ROC-AUC {report['test_auc']:.4f} (cosine alone "
        f"{report['test_cosine_auc']:.4f}), expected calibration error {report['test_ece']:.4f}"
    )
    print("| confidence | pairs | mean confidence | observed paraphrases |")
    print("| --- | ---: | ---: | ---: |")
    for row in report["test_reliability"]:
        print(f"| {row['bin']} | {row['pairs']} | {row['confidence']:.4f} | {row['observed']:.4f} |")
    if args.json:
        print(json.dumps(report, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``semantic-cache`` command."""
    parser = argparse.ArgumentParser(prog="semantic-cache", description=__doc__)
    parser.add_argument("--version", action="version", version=f"semantic-cache {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "info"))
    sub = parser.add_subparsers(dest="command", required=True)
    config_help = "config file (default: $SEMANTIC_CACHE_CONFIG, else config/config.yaml)"

    run = sub.add_parser("run", help="processor + Envoy (+ demo upstream if UPSTREAM_URL is unset)")
    run.add_argument("--config", help=config_help)
    run.add_argument("--envoy-log-level", default="warning")
    run.set_defaults(func=cmd_run)

    serve = sub.add_parser("serve", help="the processor alone")
    serve.add_argument("--config", help=config_help)
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate a config.yaml or a milvus.yaml and exit")
    check.add_argument("file", nargs="?", help=config_help)
    # As every other command reads it (and as "config file … not found. Pass --config FILE" says).
    check.add_argument("--config", dest="config_file", metavar="FILE", help="the same as FILE")
    check.set_defaults(func=cmd_check_config)

    create = sub.add_parser("create-collection", help="create the Milvus collection from milvus.yaml")
    create.add_argument("--config", help=config_help)
    create.set_defaults(func=cmd_create_collection)

    from extproc.cli.admin import add_admin_parser

    add_admin_parser(sub)

    ev = sub.add_parser("eval", help="answer correctness on labelled question pairs (JSON lines)")
    ev.add_argument("--pairs", required=True, help='JSON lines {"a","b","label"} or {"origin","similar"}')
    ev.add_argument("--config", help=config_help + "; none found: the defaults")
    ev.add_argument("--threshold", type=float, help="similarity_threshold to report (default: the config's)")
    ev.add_argument("--sweep", action="store_true", help="also print the table over thresholds 0.70-0.98")
    ev.add_argument("--limit", type=int, help="use only the first N pairs")
    ev.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ev.add_argument(
        "--guards", help="override the config's guards: none, all, or e.g. numbers,negation,content"
    )
    ev.add_argument("--concurrency", type=int, default=64, help="lookups in flight (default 64)")
    ev.add_argument(
        "--show-errors",
        action="store_true",
        help="also print every hit not judged correct and every rejected candidate, with its pair",
    )
    ev.add_argument("--min-confidence", type=float, help="min_confidence to report (default: the config's)")
    ev.add_argument("--verifier-model", help='override verifier_model: "builtin", a file, or none')
    ev.add_argument("--pairwise", action="store_true", help="also judge each b against its own a only")
    ev.add_argument(
        "--outcomes", help="write one JSON line per pair (a, b, label, served, similarity, confidence)"
    )
    ev.set_defaults(func=cmd_eval)

    tv = sub.add_parser("train-verifier", help="fit the learned verifier on labelled pairs")
    tv.add_argument("--pairs", required=True, help='JSON lines {"a","b","label"}')
    tv.add_argument("--out", required=True, help="the model file to write (JSON)")
    tv.add_argument("--config", help=config_help + "; gives the embedding model")
    tv.add_argument(
        "--min-similarity",
        type=float,
        help="train on pairs at this cosine or more (default: similarity_threshold)",
    )
    tv.add_argument("--limit", type=int, help="use only the first N pairs")
    tv.add_argument("--cache-dir", help="where to keep the computed features (default: the temp folder)")
    tv.add_argument(
        "--text-only",
        action="store_true",
        help="do not read the two embeddings (a smaller model of the text features alone)",
    )
    tv.add_argument(
        "--extra-pairs",
        action="append",
        help="labelled pairs added to training only (e.g. hand-written look-alikes; repeatable)",
    )
    tv.add_argument(
        "--extra-weight",
        type=float,
        default=10.0,
        help="how many --pairs pairs each extra pair counts for (default 10)",
    )
    tv.add_argument("--split-dir", help="also write train.jsonl, calibrate.jsonl and test.jsonl here")
    tv.add_argument("--json", action="store_true", help="print the report as JSON last")
    tv.set_defaults(func=cmd_train_verifier)

    render = sub.add_parser("render-envoy", help="render envoy/envoy.yaml from the environment")
    render.add_argument("-o", "--output", help="write to this file instead of stdout")
    render.add_argument("--config", help=config_help + " (its scope_header is the header Envoy strips)")
    render.set_defaults(func=cmd_render_envoy)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``semantic-cache`` console script."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        if args.command in ("run", "serve"):
            setup_tracing()
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"semantic-cache: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `check-config | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        shutdown_tracing()


if __name__ == "__main__":
    sys.exit(main())
