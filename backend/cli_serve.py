"""``archviz serve``: start the generation backend (FastAPI + uvicorn) on loopback.

Prints exactly one line ``archviz backend listening on http://HOST:PORT`` to stdout once
the socket accepts connections (``--port 0`` picks a free port); clients parse it.
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="where to run the models (auto: CUDA when torch sees one)")
    parser.add_argument("--presets", action="append", default=[], metavar="DIR",
                        help="extra preset folder (repeatable; the user folder is always read)")
    parser.add_argument("--max-batch", type=int, default=None, help="cap on images per UNet batch")
    parser.add_argument("--memory-budget-gb", type=float, default=None,
                        help="LRU budget for warm models (default: 75%% of GPU memory / 50%% of RAM)")
    parser.add_argument("--exit-with-stdin", action="store_true",
                        help="stop when standard input closes (a parent that started this backend has ended)")
    parser.add_argument("--token", default=os.environ.get("ARCHVIZ_TOKEN") or None,
                        help="require 'Authorization: Bearer TOKEN' (default: $ARCHVIZ_TOKEN; none on loopback)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


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

    from .engine import Engine
    from .server import create_app

    _quiet_libraries()
    budget = int(args.memory_budget_gb * 2**30) if args.memory_budget_gb else None
    try:
        engine = Engine(args.device, budget_bytes=budget, max_batch=args.max_batch)
    except RuntimeError as exc:
        print(f"archviz serve: {exc}", file=sys.stderr)
        return 2
    app = create_app(engine, args.presets, token=args.token)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.token:
        print(f"archviz serve: warning: listening on {args.host} without --token; anyone who can reach it "
              "can run jobs and write files", file=sys.stderr)

    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        print(f"archviz serve: cannot bind {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, log_level=args.log_level if args.log_level != "info" else "warning",
                            access_log=False, timeout_graceful_shutdown=2)
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
