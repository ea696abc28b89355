"""`cdp serve` for the benchmark: the CLI's own server (`Running`, the same uvicorn, middleware
and routes) plus one route only the benchmark has, `POST /bench/constant`, answering a constant
without a key check or reading the body: the ceiling a route of this stack can reach.

    python -m benchmarks.serve_server --config F --port P
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fastapi import Response

from config.settings import load_settings
from flows.serve.server import Running

CONSTANT = b'{"status":"ok"}'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    running = Running(load_settings(args.config), config_path=args.config, port=args.port)

    @running.app.post("/bench/constant", include_in_schema=False)
    async def constant() -> Response:
        return Response(CONSTANT, media_type="application/json")

    running.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
