"""The ``tts-batch-bulk`` command line (also ``tts-batch bulk`` and ``python -m tts_batch_client``).

Usage::

    tts-batch-bulk INPUT... --out DIR [--voice V] [--format F] [--speed S] [--concurrency N]
                   [--api URL] [--api-key KEY] [--timeout SECONDS] [--quiet]

Each INPUT is a folder (searched recursively), a file, or a glob (``'notes/**/*.md'``).
Outputs mirror the tree under ``--out``, relative to each input's root (the folder itself,
a file's parent, or a glob's fixed leading folders), with the format as extension:
``corpus/letters/welcome.txt`` becomes ``OUT/letters/welcome.mp3``. Markdown files are
sent with ``markdown: true`` so markup is not read aloud.

``--api`` defaults to ``$TTS_API_URL``, else to the caller's default (``tts-batch bulk``
passes the server settings' address), else ``http://127.0.0.1:8354``; ``--api-key``
defaults to ``$TTS_API_KEY`` (see :mod:`tts_batch_client.environment`).

Exit status: 0 when every file was converted or skipped, 1 when any file failed, 2 for a
usage error (no inputs, API unreachable, unknown voice), 130 after Ctrl-C.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from .api import FORMATS
from .bulk import EXIT_INTERRUPTED, EXIT_USAGE, Options, run
from .environment import API_KEY_VARIABLE, API_URL_VARIABLE, read_environment
from .errors import UsageError

__all__ = ["DEFAULT_API", "build_parser", "main"]

#: The API's address when neither ``--api``, ``TTS_API_URL`` nor the caller names one.
DEFAULT_API = "http://127.0.0.1:8354"


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def build_parser(prog: str | None = None, default_api: str = DEFAULT_API) -> argparse.ArgumentParser:
    """The command-line parser; ``default_api`` is the ``--api`` shown when ``TTS_API_URL`` is unset."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Convert folders of .txt and .md files to audio through a running tts-batch API.",
        epilog="Exit status: 0 all converted or skipped, 1 some file failed, 2 usage error, 130 interrupted.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="folder (recursive), file, or glob of .txt/.md")
    parser.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder (the tree is mirrored under it)")
    parser.add_argument("--voice", "-v", default="heart", metavar="VOICE", help="voice id (default: heart)")
    parser.add_argument("--format", "-f", default="mp3", choices=FORMATS, metavar="FORMAT",
                        help=f"audio format: {', '.join(FORMATS)} (default: mp3)")
    parser.add_argument("--speed", "-s", type=_positive_float, default=1.0, metavar="S", help="speaking rate (default: 1.0)")
    parser.add_argument("--concurrency", "-c", type=_positive_int, default=4, metavar="N",
                        help="files in flight at once (default: 4)")
    parser.add_argument("--api", default=None, metavar="URL",
                        help=f"API base URL (default: ${API_URL_VARIABLE}, else {default_api})")
    parser.add_argument("--api-key", default=None, metavar="KEY",
                        help=f"sent as 'Authorization: Bearer KEY' (default: ${API_KEY_VARIABLE}; needed when the "
                             f"server sets TTS_API_KEYS)")
    parser.add_argument("--timeout", type=_positive_float, default=1800.0, metavar="SECONDS",
                        help="seconds to wait for one file's job before giving up (default: 1800)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar: one log line per file")
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str | None = None, default_api: str | None = None) -> int:
    """Command-line entry point; returns the exit status.

    ``prog``: the name shown in usage messages. ``default_api``: the API address to use when
    neither ``--api`` nor ``TTS_API_URL`` gives one (``None``: ``http://127.0.0.1:8354``).
    """
    environment = read_environment()
    fallback_api = default_api or DEFAULT_API
    args = build_parser(prog, fallback_api).parse_args(argv)
    api_url = args.api or environment.api_url or fallback_api
    api_key = args.api_key or environment.api_key
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        options = Options(voice=args.voice, format=args.format, speed=args.speed, timeout=args.timeout)
        return run(args.inputs, args.out, options, api_url=api_url, api_key=api_key,
                   concurrency=args.concurrency, quiet=args.quiet)
    except UsageError as exc:
        print(f"bulk_convert: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # before the work started
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt()
