r"""``python -m mlops_assets.serving``: serve NAME@ALIAS and follow the alias (``cd-serving``).

    MLFLOW_TRACKING_URI=http://mlflow:5000 python -m mlops_assets.serving \\
        --model change-detection-unet@champion --port 8080 --poll-seconds 30 --max-body-mb 64

The registry is polled every ``--poll-seconds``; when the alias moves, the new version is loaded
and swapped in (the old one serves until then). ``/health`` is 503 until a version has loaded.
An /invocations body over ``--max-body-mb`` MiB is answered 413 without being read, and at most
``--max-concurrent`` requests are read and predicted at once: together they bound the memory
requests can take (about 1.5 GiB each at the default 64 MiB).
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading

from mlops_assets.serving.follower import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONCURRENT


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, start following the alias and serve until stopped."""
    parser = argparse.ArgumentParser(prog="python -m mlops_assets.serving", description=__doc__)
    parser.add_argument("--model", default="change-detection-unet@champion", help="NAME@ALIAS")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--poll-seconds", type=float, default=30.0)
    parser.add_argument(
        "--max-body-mb",
        type=float,
        default=DEFAULT_MAX_BODY_BYTES / 2**20,
        help="largest /invocations body, MiB (bounds the memory one request takes)",
    )
    parser.add_argument(
        "--max-concurrent",
        type=int,
        default=DEFAULT_MAX_CONCURRENT,
        help="requests parsed and predicted at once (the others wait, unread)",
    )
    args = parser.parse_args(argv)
    name, _, alias = str(args.model).partition("@")
    if not name or not alias:
        sys.stderr.write(f"error: --model {args.model!r}: expected NAME@ALIAS\n")
        return 1
    if args.poll_seconds <= 0:
        sys.stderr.write("error: --poll-seconds must be positive\n")
        return 1
    if not args.max_body_mb > 0:
        sys.stderr.write("error: --max-body-mb must be positive\n")
        return 1
    if args.max_concurrent < 1:
        sys.stderr.write("error: --max-concurrent must be at least 1\n")
        return 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    import uvicorn

    from mlops_assets.core.redact import redact_uri
    from mlops_assets.serving.follower import build_app, registry_follower
    from mlops_assets.settings import Settings

    settings = Settings.from_env()
    follower = registry_follower(settings.tracking_uri, name, alias)
    logging.info("following %s@%s in %s", name, alias, redact_uri(settings.tracking_uri))
    stop = threading.Event()
    poller = threading.Thread(
        target=follower.follow, args=(args.poll_seconds, stop), name="alias-poller", daemon=True
    )
    poller.start()
    try:
        app = build_app(follower, int(args.max_body_mb * 2**20), args.max_concurrent)
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    finally:
        stop.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
