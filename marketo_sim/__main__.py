"""``python -m marketo_sim --host 127.0.0.1 --port 8765 [--set FIELD=JSON ...]``."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence

from marketo_sim.config import SimConfig
from marketo_sim.server import run


def _parse_set(item: str) -> tuple[str, object]:
    name, sep, raw = item.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {item!r}")
    try:
        return name.strip(), json.loads(raw)
    except json.JSONDecodeError:
        return name.strip(), raw  # a bare string such as --set user_id=abc


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m marketo_sim", description="Marketo SOAP and REST simulator"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--set",
        dest="fields",
        action="append",
        type=_parse_set,
        default=[],
        metavar="FIELD=VALUE",
        help="override a SimConfig field; VALUE is JSON (e.g. latency_s=0.05, timestamp_window_s=null)",
    )
    args = parser.parse_args(argv)
    try:
        config = SimConfig().patched(dict(args.fields))
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run(args.host, args.port, config)


if __name__ == "__main__":
    main()
