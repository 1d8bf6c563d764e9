"""``deepforcing serve``: arguments, checks before the model loads, then uvicorn on the app of :mod:`.app`."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys

from deepforcing.cli_options import add_model_arguments

__all__ = ["add_serve_arguments", "run_serve", "TOKEN_ENV", "MIN_TOKEN_CHARS"]

TOKEN_ENV = "DEEPFORCING_SERVE_TOKEN"
MIN_TOKEN_CHARS = 16


def add_serve_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--max-sessions", type=int, default=2, help="concurrent streams (default 2); more get 'busy'")
    p.add_argument("--max-seconds", type=float, default=600.0, help="longest video of one session (default 600 s)")
    p.add_argument("--lead", type=float, default=0.5,
                   help="seconds generation may run ahead of playback (default 0.5; smaller = faster prompt switches)")
    p.add_argument("--idle-timeout", type=float, default=120.0,
                   help="close a tab that streams nothing for this long, freeing its slot (default 120 s)")
    p.add_argument("--token", default=None,
                   help=f"access token (at least {MIN_TOKEN_CHARS} characters; or set {TOKEN_ENV}): the page opens "
                        f"at /?token=TOKEN. Required when --host is not a loopback address")
    add_model_arguments(p)
    return p


def _check(args: argparse.Namespace) -> None:
    """Everything that can be wrong before the model loads: one-line errors (exit 2)."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ValueError("serve needs FastAPI and uvicorn: pip install 'deepforcing[serve]'") from None
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be 1..65535, got {args.port}")
    if args.max_sessions < 1:
        raise ValueError(f"--max-sessions must be at least 1, got {args.max_sessions}")
    if not args.max_seconds > 0:
        raise ValueError(f"--max-seconds must be positive, got {args.max_seconds}")
    if not args.lead >= 0:
        raise ValueError(f"--lead must be >= 0, got {args.lead}")
    if not args.idle_timeout > 0:
        raise ValueError(f"--idle-timeout must be positive, got {args.idle_timeout}")
    args.token = args.token if args.token is not None else (os.environ.get(TOKEN_ENV) or None)
    if args.token is not None and (len(args.token) < MIN_TOKEN_CHARS or not args.token.isprintable()
                                   or any(c.isspace() for c in args.token)):
        raise ValueError(f"--token must be at least {MIN_TOKEN_CHARS} printable characters without spaces; "
                         f"make one with: python -c 'import secrets; print(secrets.token_urlsafe())'")
    if args.token is None and not _loopback(args.host):
        raise ValueError(f"--host {args.host} serves the page beyond this machine: give --token SECRET (or set "
                         f"{TOKEN_ENV}) so only people you give the address to can use it, or bind --host 127.0.0.1")
    from deepforcing.model_spec import check_threads

    check_threads(args.threads)
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(args.host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET  # a host name: let the resolver decide below
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((args.host, args.port))
        except OSError as err:
            raise ValueError(f"cannot listen on {args.host}:{args.port} ({err.strerror}); "
                             f"choose another --port or stop the program using it") from None


def _loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or 0.0.0.0-like wildcard: assume the network can reach it


def run_serve(args: argparse.Namespace) -> int:
    from deepforcing.model_spec import ModelSpec, check_model, set_threads

    _check(args)
    model = check_model(ModelSpec.from_args(args))  # every refusal before the weights load (a mini file read once)
    generator = model.open()  # load now: a bad checkpoint fails here, not on the first page
    set_threads(generator, args.threads)
    device = generator.device

    import uvicorn

    from .app import MAX_FRAME_BYTES, ServeConfig, create_app

    app = create_app(lambda: generator, ServeConfig(max_sessions=args.max_sessions, max_seconds=args.max_seconds,
                                                    lead_seconds=args.lead, idle_timeout=args.idle_timeout,
                                                    token=args.token))
    where = f"[{args.host}]" if ":" in args.host else args.host
    query = f"?token={args.token}" if args.token else ""
    if not _loopback(args.host):
        print(f"warning: serving on {args.host}: the page is reachable from the network over plain http (the token "
              f"travels unencrypted; on networks you do not trust use an SSH tunnel or a TLS proxy)",
              file=sys.stderr, flush=True)
    print(f"deepforcing serve: {generator.bundle.name} on {device}; open http://{where}:{args.port}/{query} "
          f"(Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", ws_max_size=MAX_FRAME_BYTES)
    return 0
