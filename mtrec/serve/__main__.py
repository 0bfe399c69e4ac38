"""Serve a run folder over HTTP.

  python -m mtrec.serve --run runs/NAME                       http://127.0.0.1:8000 (/docs: the API)
  python -m mtrec.serve --run runs/NAME --host 0.0.0.0 --port 9000 --admin-token "$TOKEN"

Concurrent requests of one kind are batched: each waits at most --batch-wait-ms for others, up
to --max-batch per model call. More than --max-queue waiting requests, or one not answered within
--timeout seconds, get 503 with Retry-After. /admin/reload is off unless an admin token is given
(--admin-token, or the MTREC_ADMIN_TOKEN environment variable, which keeps it out of `ps`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mtrec.cli import exit_with


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mtrec.serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", type=Path, required=True, help="the run folder to serve")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--precision",
        default=None,
        choices=["fp32", "bf16", "int8"],
        help="backbone precision (default bf16 on a GPU, fp32 on a CPU; int8: CPU only)",
    )
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a request waits for others (5)")
    p.add_argument(
        "--max-batch", type=int, default=32, help="most requests per model call (32; 1 = no batching)"
    )
    p.add_argument(
        "--forward-batch",
        type=int,
        default=None,
        help="prompts per forward pass within a model call (default 8 on a CPU, 32 on a GPU)",
    )
    p.add_argument(
        "--max-queue", type=int, default=256, help="most requests waiting at once; more get 503 (256)"
    )
    p.add_argument(
        "--timeout", type=float, default=30.0, help="seconds before a waiting request gets 503 (30)"
    )
    p.add_argument("--max-body", type=int, default=64 * 1024, help="largest request body in bytes (65536)")
    p.add_argument(
        "--admin-token",
        default=os.environ.get("MTREC_ADMIN_TOKEN"),
        help="enables POST /admin/reload with this X-Admin-Token header (default $MTREC_ADMIN_TOKEN)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    numbers = {
        "--port": (args.port, 0, 65535),
        "--max-batch": (args.max_batch, 1, None),
        "--max-queue": (args.max_queue, 1, None),
        "--forward-batch": (1 if args.forward_batch is None else args.forward_batch, 1, None),
        "--max-body": (args.max_body, 1, None),
    }
    for name, (value, low, high) in numbers.items():
        if value < low or (high is not None and value > high):
            print(
                f"error: {name} {value}: must be {low} or more" + (f" and at most {high}" if high else ""),
                file=sys.stderr,
            )
            return 2
    if args.batch_wait_ms < 0 or args.timeout <= 0:
        print("error: --batch-wait-ms must be >= 0 and --timeout > 0", file=sys.stderr)
        return 2
    import torch
    import uvicorn

    from mtrec.run import RunFolderError
    from mtrec.serve.app import Settings, create_app

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings(
        max_wait_ms=args.batch_wait_ms,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        timeout_s=args.timeout,
        forward_batch=args.forward_batch,
        max_body=args.max_body,
        admin_token=args.admin_token or None,
        device=args.device,
        precision=args.precision,
    )
    try:
        app = create_app(args.run, settings)
    except (RunFolderError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0


if __name__ == "__main__":
    exit_with(main)
