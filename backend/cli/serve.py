"""``archviz serve``: start the generation backend (FastAPI + uvicorn) on loopback.

Prints exactly one line ``archviz backend listening on http://HOST:PORT`` to stdout once
the socket accepts connections (``--port 0`` picks a free port); clients parse it.

Binding anything but a loopback address needs a token (``--token`` or ``$ARCHVIZ_TOKEN``);
a port already in use is a clear error (exit status 2). See docs/hardening.md.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import os
import socket
import sys
import threading
import time

LISTENING = "archviz backend listening on http://{host}:{port}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860, help="TCP port; 0 picks a free one (default 7860)")
    parser.add_argument("--device", choices=("auto", "cuda", "mps", "cpu"), default="auto",
                        help="where to run the models (auto: CUDA when torch sees one, then MPS, then the CPU)")
    parser.add_argument("--presets", action="append", default=[], metavar="DIR",
                        help="extra preset folder (repeatable; the user folder is always read)")
    parser.add_argument("--max-batch", type=int, default=None, help="cap on images per UNet batch")
    parser.add_argument("--memory-budget-gb", type=float, default=None,
                        help="LRU budget for warm models (default: 75%% of GPU memory / 50%% of RAM)")
    parser.add_argument("--exit-with-stdin", action="store_true",
                        help="stop when standard input closes (a parent that started this backend has ended)")
    parser.add_argument("--token", default=os.environ.get("ARCHVIZ_TOKEN") or None,
                        help="require 'Authorization: Bearer TOKEN' (default: $ARCHVIZ_TOKEN; none on loopback)")
    parser.add_argument("--output-root", action="append", default=[], metavar="DIR",
                        help="a folder jobs may write into besides the default output folder (repeatable; "
                             "also $ARCHVIZ_OUTPUT_ROOTS, separated by '%s')" % os.pathsep)
    parser.add_argument("--model-root", action="append", default=[], metavar="DIR",
                        help="a folder jobs may load model files from besides the Hugging Face cache "
                             "(repeatable; also $ARCHVIZ_MODEL_ROOTS)")
    parser.add_argument("--allow-pickle", action="append", default=[], metavar="MODEL",
                        help="allow pickle (.bin/.ckpt) weights for this model id or path only (repeatable; "
                             "default: safetensors only)")
    parser.add_argument("--max-body-mb", type=float, default=64.0,
                        help="largest request body in MiB (default 64; larger requests get 413)")
    parser.add_argument("--max-queued", type=int, default=None, metavar="N",
                        help="jobs that may wait in the queue (default 64); past it a submit gets 429 with Retry-After")
    parser.add_argument("--max-connections", type=int, default=None, metavar="N",
                        help="open connections at most (default 1000, or the open-file limit less 128); over it the "
                             "oldest idle connection is closed, or the new one gets 503")
    parser.add_argument("--header-timeout", type=float, default=None, metavar="S",
                        help="seconds a connection may take to send a whole request head (default 10)")
    parser.add_argument("--keep-alive", type=int, default=None, metavar="S",
                        help="seconds an idle kept-alive connection stays open (default 5)")
    parser.add_argument("--simulate-oom-above", type=int, default=None, metavar="N",
                        help=argparse.SUPPRESS)  # test hook: torch.OutOfMemoryError for UNet batches > N images
    parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE", dest="engine_options",
                        help="engine option, e.g. compile=true, quantize=int8, token_merging=0.5 (repeatable; also "
                             "ARCHVIZ_ENGINE_OPTIONS=name=value,name=value). Options that change images are recorded "
                             "in every image's parameters (README: engine options)")
    parser.add_argument("--memory-profile", default=os.environ.get("ARCHVIZ_MEMORY_PROFILE") or "auto",
                        help="FLUX.1 and Z-Image on CUDA: auto (by free GPU memory), full, 24gb, 16gb or 12gb "
                             "(backend/engine/memory.py; 8-bit profiles change pixels and are recorded)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    from ...distributed.options import add_arguments as add_ray_arguments  # --ray [ADDRESS]: docs/ray.md

    add_ray_arguments(parser)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def env_list(name: str) -> list[str]:
    return [p for p in os.environ.get(name, "").split(os.pathsep) if p.strip()]


def _quiet_libraries() -> None:
    # Tokenizer truncation notices and progress bars would flood the server log.
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    from ..engine.runner import Engine, EngineOptions
    from ..server.app import create_app

    from ..server.connections import (BACKLOG, DEFAULT_HEADER_TIMEOUT, DEFAULT_KEEP_ALIVE, check_max_connections,
                              default_max_connections, guarded_protocol, tcp_socket)
    from ..server.worker import DEFAULT_MAX_QUEUED

    if args.token is not None and not args.token.strip():
        print("archviz serve: the token is empty or only whitespace; no client can send it. Give a long random one: "
              "--token \"$(python -c 'import secrets; print(secrets.token_urlsafe(32))')\"", file=sys.stderr)
        return 2
    max_queued = DEFAULT_MAX_QUEUED if args.max_queued is None else args.max_queued
    max_connections = default_max_connections() if args.max_connections is None else args.max_connections
    header_timeout = DEFAULT_HEADER_TIMEOUT if args.header_timeout is None else args.header_timeout
    keep_alive = DEFAULT_KEEP_ALIVE if args.keep_alive is None else args.keep_alive
    problem = check_max_connections(max_connections)
    if problem is None and max_queued < 1:
        problem = f"--max-queued must be at least 1, got {max_queued}"
    if problem is None and not 0 < header_timeout <= 3600:
        problem = f"--header-timeout must be between 0 and 3600 seconds, got {header_timeout:g}"
    if problem is None and not 0 < keep_alive <= 3600:
        problem = f"--keep-alive must be between 1 and 3600 seconds, got {keep_alive}"
    if problem:
        print(f"archviz serve: {problem}", file=sys.stderr)
        return 2
    if not is_loopback(args.host) and not args.token:
        print(f"archviz serve: refusing to listen on {args.host} without a token: anyone who could reach it "
              "could run jobs and write files. Give --token TOKEN (or set ARCHVIZ_TOKEN), or bind 127.0.0.1",
              file=sys.stderr)
        return 2
    if args.token and len(args.token) < 16 and not is_loopback(args.host):
        print("archviz serve: warning: the token is shorter than 16 characters; use a long random one "
              "(python -c 'import secrets; print(secrets.token_urlsafe(32))')", file=sys.stderr)
    if args.token and not is_loopback(args.host):
        print(f"archviz serve: warning: listening on {args.host} over plain HTTP: the token and the images travel "
              "unencrypted. Put a TLS proxy in front (e.g. Caddy: caddy reverse-proxy --from gpu.example.com "
              f"--to 127.0.0.1:{args.port}, and serve on 127.0.0.1) when the network is not trusted", file=sys.stderr)
    if args.allow_pickle:
        os.environ["ARCHVIZ_ALLOW_PICKLE"] = os.pathsep.join(
            filter(None, [os.environ.get("ARCHVIZ_ALLOW_PICKLE", ""), *args.allow_pickle]))
    _quiet_libraries()
    budget = int(args.memory_budget_gb * 2**30) if args.memory_budget_gb else None
    try:
        env_options = [o for o in os.environ.get("ARCHVIZ_ENGINE_OPTIONS", "").split(",") if o.strip()]
        options = EngineOptions.parse([*env_options, *args.engine_options])  # the command line wins
        if args.ray is None:
            engine = Engine(args.device, budget_bytes=budget, max_batch=args.max_batch, options=options,
                            memory_profile=args.memory_profile)
        else:  # the same engine in Ray actors, one per GPU (distributed/engine.py)
            from ...distributed.options import make_engine

            engine = make_engine(args, budget, options)
    except (RuntimeError, ValueError) as exc:
        print(f"archviz serve: {exc}", file=sys.stderr)
        return 2
    oom_above = args.simulate_oom_above
    if oom_above is None and os.environ.get("ARCHVIZ_SIMULATE_OOM_ABOVE"):
        oom_above = int(os.environ["ARCHVIZ_SIMULATE_OOM_ABOVE"])
    if oom_above is not None:
        from ..server.worker import simulate_memory_budget

        simulate_memory_budget(engine, oom_above)
        logging.getLogger("archviz.backend").warning("simulating out-of-memory for batches over %d images", oom_above)
    app = create_app(engine, args.presets, token=args.token,
                     output_roots=[*env_list("ARCHVIZ_OUTPUT_ROOTS"), *args.output_root],
                     model_dirs=args.model_root, max_body_bytes=int(args.max_body_mb * 2**20),
                     max_queued=max_queued)

    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = tcp_socket(family)  # Nagle off on its connections (backend/server/connections.py)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        hint = " (another backend or program uses it: pick another --port, or --port 0 for any free one)" \
            if exc.errno == errno.EADDRINUSE else ""
        print(f"archviz serve: cannot bind {args.host}:{args.port}: {exc.strerror}{hint}", file=sys.stderr)
        sock.close()
        return 2
    host, port = sock.getsockname()[:2]
    # uvicorn's own limits (keep-alive timeout; 503 past limit_concurrency requests in
    # flight) plus a request-head timeout and an idle-eviction connection cap
    # (backend/server/connections.py) that uvicorn does not have.
    config = uvicorn.Config(app, log_level=args.log_level if args.log_level != "info" else "warning",
                            access_log=False, timeout_graceful_shutdown=2, timeout_keep_alive=keep_alive,
                            limit_concurrency=max_connections + 1, backlog=BACKLOG,
                            http=guarded_protocol(max_connections, header_timeout))
    server = uvicorn.Server(config)

    def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            time.sleep(0.02)
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        print(LISTENING.format(host=shown, port=port), flush=True)
        logging.getLogger("archviz.backend").info("device %s, dtype %s, pid %d", engine.device,
                                                  engine.dtype_name, os.getpid())
        if engine.image_changes:
            logging.getLogger("archviz.backend").warning(
                "engine options that change images are on: %s (recorded in every image's parameters)",
                ", ".join(f"{k}={v}" for k, v in engine.image_changes.items()))

    threading.Thread(target=announce, name="archviz-announce", daemon=True).start()
    if args.exit_with_stdin:
        def watch_parent() -> None:
            # The parent (Blender, a script) holds our stdin's other end and never writes:
            # end of file means it is gone, however it ended.
            while sys.stdin.buffer.read(4096):
                pass
            logging.getLogger("archviz.backend").info("stdin closed: the process that started us ended; stopping")
            server.should_exit = True

        threading.Thread(target=watch_parent, name="archviz-parent-watch", daemon=True).start()
    server.run(sockets=[sock])
    return 0
