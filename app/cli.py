"""The ``tts-batch`` command line.

``tts-batch voices [--json]``
    List the voices on this machine.
``tts-batch say TEXT | -f FILE -v VOICE -o OUT [--format F] [--speed S] [--seed N] ...``
    Synthesize directly with the engine, in this process (no queue, no Redis).
``tts-batch dlq list | show ID | replay ID | replay --all | delete ID | purge``
    Operate on the dead-letter queue in the Redis named by ``REDIS_URL``.
``tts-batch keys create --tenant NAME [--scopes submit,read] [--rate 10/s] [--max-queued N] [--chars-per-day N]``
``tts-batch keys list [--json]`` / ``tts-batch keys revoke ID``
    Manage API keys in the Redis named by ``REDIS_URL`` (``create`` prints the key last; it is shown once).
``tts-batch bulk INPUT... --out DIR [...]``
    Convert folders of text files through a running API: the client package
    :mod:`tts_batch_client` (also ``tts-batch-bulk``), imported only for this command.

Each subcommand is one ``cmd_*(args) -> int`` function registered in
:func:`build_parser`; add a subparser and a function to add a command. User
errors (unknown voice, empty text, unreadable file, bad option) print one line to
stderr and exit with status 2; never a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine import VoiceCatalog

log = logging.getLogger(__name__)

__all__ = ["UsageError", "build_catalog", "build_parser", "cmd_dlq", "cmd_keys", "cmd_say", "cmd_voices", "main"]

PROG = "tts-batch"
#: Exit status for a user error (bad input or options), as argparse uses.
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: File extensions that are not a format's own name but clearly mean one.
_EXTRA_EXTENSIONS = {"ogg": "opus", "oga": "opus", "raw": "pcm", "s16le": "pcm", "adts": "aac"}
_MARKDOWN_SUFFIXES = {".md", ".markdown", ".mdown", ".mkd"}


class UsageError(Exception):
    """A mistake in what the user asked for: reported in one line, exit status 2."""


# --- helpers ------------------------------------------------------------------------------
def build_catalog() -> VoiceCatalog:
    """The voice catalog configured from settings (voices folder, Kokoro voices, threads, model cache)."""
    from engine import VoiceCatalog
    from settings import get_settings

    settings = get_settings()
    return VoiceCatalog(
        voices_dir=settings.voices_dir or None,
        kokoro_voices=settings.kokoro_voices or None,
        onnx_threads=settings.onnx_threads,
        model_cache_dir=settings.model_cache,
    )


def format_for_output(output: str, explicit: str | None, default: str) -> str:
    """The audio format to write: ``explicit``, else the output file's extension, else ``default`` for stdout."""
    from engine.audio import FORMATS

    if explicit:
        return explicit.strip().lower()
    if output == "-":
        return default
    suffix = Path(output).suffix.lower().lstrip(".")
    by_extension = {f.extension: name for name, f in FORMATS.items()}
    fmt = by_extension.get(suffix) or _EXTRA_EXTENSIONS.get(suffix)
    if not fmt:
        raise UsageError(
            f"cannot tell the audio format from {output!r}; name a file ending in "
            f".{', .'.join(f.extension for f in FORMATS.values())} or pass --format"
        )
    return fmt


def read_text(source: str) -> str:
    """Text of a UTF-8 file (a leading BOM is dropped), or of stdin when ``source`` is ``-``."""
    name = "standard input" if source == "-" else source
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except IsADirectoryError:
        raise UsageError(f"cannot read {name}: it is a directory") from None
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{name} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "convert it first, e.g. iconv -f latin1 -t utf-8"
        ) from None


def _check_writable(output: str) -> Path | None:
    """Fail before synthesizing when the output file cannot be written."""
    if output == "-":
        return None
    path = Path(output)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UsageError(f"cannot write {output}: it is a directory")
    if not folder.is_dir():
        raise UsageError(f"cannot write {output}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"cannot write {output}: folder {folder} is not writable")
    return path


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None


def _clock(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{secs:04.1f}" if hours else f"{minutes}:{secs:04.1f}"


# --- commands -----------------------------------------------------------------------------
def cmd_voices(args: argparse.Namespace) -> int:
    """``tts-batch voices``: a table of the voices on this machine, or JSON with ``--json``."""
    voices = build_catalog().list()
    if args.json:
        json.dump([v.to_dict() for v in voices], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    header = ("ID", "FAMILY", "LANGUAGE", "GENDER", "RATE", "LICENCE")
    rows = [(v.id, v.family, v.language, v.gender, str(v.sample_rate), v.license) for v in voices]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    print(f"{len(voices)} voices; blend Kokoro voices as e.g. jf_alpha*0.7+jm_kumo*0.3", file=sys.stderr)
    return 0


def cmd_say(args: argparse.Namespace) -> int:
    """``tts-batch say``: synthesize text (argument, file or stdin) into an audio file, in process."""
    from engine import audio
    from engine.synthesis import SynthesisOptions, prepare, stream_chunks
    from settings import get_settings

    settings = get_settings()
    text = read_text(args.file) if args.file is not None else args.text
    markdown = args.markdown or (args.file not in (None, "-") and Path(args.file).suffix.lower() in _MARKDOWN_SUFFIXES)
    fmt = format_for_output(args.output, args.format, settings.default_format)
    path = _check_writable(args.output)
    if path is None and sys.stdout.isatty():
        raise UsageError("refusing to write audio to a terminal; redirect standard output or use -o FILE")

    catalog = build_catalog()
    options = SynthesisOptions(voice=args.voice or settings.default_voice, speed=args.speed, format=fmt,
                               sample_rate=args.sample_rate, seed=args.seed, markdown=markdown)
    started = time.perf_counter()
    info = options.validate(catalog)
    chunks = prepare(text, options, catalog)
    total_chars = sum(len(c) for c in chunks)
    progress = _progress(total_chars, enabled=not args.quiet and sys.stderr.isatty())
    try:
        with audio.AudioEncoder(fmt, options.output_rate(info), input_rate=info.sample_rate) as encoder:
            for piece in stream_chunks(chunks, options, catalog):
                encoder.write(piece.samples)
                progress(len(piece.text), encoder.duration_seconds)
        data = encoder.finish()
    finally:
        progress(0, -1.0)  # clear the progress line, also before an error message
    elapsed = time.perf_counter() - started
    if path is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        _write_atomically(path, data)
    if not args.quiet:
        speed = encoder.duration_seconds / elapsed if elapsed > 0 else 0.0
        target = "stdout" if path is None else args.output
        plural = "chunk" if len(chunks) == 1 else "chunks"
        print(f"{target}: {_clock(encoder.duration_seconds)} of {encoder.format.name} at {encoder.sample_rate} Hz "
              f"({len(data):,} bytes) from {total_chars:,} characters in {len(chunks)} {plural}, "
              f"voice {info.id}, {elapsed:.1f} s, {speed:.1f}x real time", file=sys.stderr)
    return 0


def _progress(total_chars: int, enabled: bool) -> Callable[[int, float], None]:
    """A callback drawing a one-line progress indicator on stderr (a no-op when disabled).

    Called with (characters just spoken, audio seconds so far); a negative audio length clears the line.
    """
    done = 0
    last = 0.0

    def update(chars: int, audio_seconds: float) -> None:
        nonlocal done, last
        if not enabled:
            return
        if audio_seconds < 0:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            return
        done += chars
        now = time.monotonic()
        if now - last >= 0.25 or done >= total_chars:
            last = now
            pct = 100.0 * done / total_chars if total_chars else 100.0
            sys.stderr.write(f"\r{pct:5.1f}%  {done:,}/{total_chars:,} characters, {_clock(audio_seconds)} of audio")
            sys.stderr.flush()

    return update


def _bulk_default_api() -> str | None:
    """``http://TTS_API_HOST:TTS_API_PORT`` from the settings, the API ``tts-batch bulk`` talks to when
    neither ``--api`` nor ``TTS_API_URL`` is given; None (the client's own default) when settings are unusable."""
    from settings import SettingsError, get_settings

    try:
        settings = get_settings()
    except SettingsError as exc:
        log.debug("settings unusable for the bulk API address: %s", exc)
        return None
    host = settings.api_host if settings.api_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return f"http://{host}:{settings.api_port}"


# --- parser and entry point -----------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one subparser per command, each with ``func`` set to its ``cmd_*``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Queued batch text-to-speech: voices and say run the engine directly; dlq and bulk talk "
                    "to a running stack.",
    )
    parser.add_argument("--log-level", default="WARNING", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log messages at this level and above to stderr (default: WARNING)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    voices = sub.add_parser("voices", help="list the voices on this machine",
                            description="List the voices on this machine (id, family, language, gender, "
                                        "sample rate, licence).")
    voices.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    voices.set_defaults(func=cmd_voices)

    say = sub.add_parser(
        "say", help="synthesize text to an audio file, in this process",
        description="Synthesize TEXT (or a UTF-8 file) into an audio file with the engine, without the queue.",
        epilog="The format follows OUT's extension (.wav .mp3 .opus .flac .aac .pcm) unless --format is given. "
               "Files ending in .md are read as Markdown.",
    )
    source = say.add_mutually_exclusive_group(required=True)
    source.add_argument("text", nargs="?", metavar="TEXT", help="the text to speak")
    source.add_argument("-f", "--file", metavar="FILE", help="read the text from a UTF-8 file ('-' for stdin)")
    say.add_argument("-v", "--voice", metavar="VOICE",
                     help="voice id or Kokoro blend such as jf_alpha*0.7+jm_kumo*0.3 "
                          "(default: TTS_DEFAULT_VOICE, 'heart'); see 'tts-batch voices'")
    say.add_argument("-o", "--output", metavar="OUT", required=True,
                     help="audio file to write ('-' for stdout)")
    say.add_argument("--format", metavar="F", help="wav, mp3, opus, flac, aac or pcm (default: from OUT)")
    say.add_argument("--speed", type=float, default=1.0, metavar="S", help="0.5 to 2.0 (default 1.0)")
    say.add_argument("--seed", type=int, metavar="N", help="seed for stochastic voices: same seed, same audio")
    say.add_argument("--sample-rate", type=int, metavar="R", help="output sample rate in Hz (default: the voice's)")
    say.add_argument("--markdown", action="store_true", help="strip Markdown markup before speaking")
    say.add_argument("-q", "--quiet", action="store_true", help="no progress and no summary on stderr")
    say.set_defaults(func=cmd_say)

    dlq = sub.add_parser("dlq", help="list, replay or purge dead-lettered jobs (needs the stack's Redis)",
                         description="Operate on the dead-letter queue in the Redis named by REDIS_URL.")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    dlq_list = dlq_sub.add_parser("list", help="list records, newest first")
    dlq_list.add_argument("--json", action="store_true", help="print the records as JSON")
    dlq_list.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    dlq_show = dlq_sub.add_parser("show", help="one record with its traceback")
    dlq_show.add_argument("job_id")
    dlq_replay = dlq_sub.add_parser("replay", help="send jobs through a fresh series of attempts")
    target = dlq_replay.add_mutually_exclusive_group(required=True)
    target.add_argument("job_id", nargs="?", help="the job to replay")
    target.add_argument("--all", action="store_true", help="replay every record")
    dlq_delete = dlq_sub.add_parser("delete", help="drop one record (the job stays failed)")
    dlq_delete.add_argument("job_id")
    dlq_sub.add_parser("purge", help="drop every record")
    dlq.set_defaults(func=cmd_dlq)

    keys_parser = sub.add_parser("keys", help="create, list or revoke API keys (needs the stack's Redis)",
                                 description="Manage API keys in the Redis named by REDIS_URL. A key belongs to "
                                             "one tenant and sees only that tenant's jobs and batches.")
    keys_sub = keys_parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = keys_sub.add_parser("create", help="make a key; prints it as the last line (shown once)")
    create.add_argument("--tenant", required=True, help="the tenant the key belongs to (lower-case name)")
    create.add_argument("--scopes", default="submit,read",
                        help="comma-separated: read, submit, admin (default submit,read)")
    create.add_argument("--rate", help="requests allowed, e.g. 10/s, 600/minute (default: unlimited)")
    create.add_argument("--max-queued", type=int, help="unfinished jobs the tenant may have when this key submits")
    create.add_argument("--chars-per-day", type=int, help="characters this key may submit per 24 hours")
    keys_list = keys_sub.add_parser("list", help="every key: id, tenant, scopes, limits, revoked or not")
    keys_list.add_argument("--json", action="store_true", help="print the keys as JSON")
    revoke = keys_sub.add_parser("revoke", help="stop a key working at once")
    revoke.add_argument("key_id")
    keys_parser.set_defaults(func=cmd_keys)

    sub.add_parser("bulk", help="convert folders of .txt/.md files through a running API (see 'tts-batch bulk -h')",
                   add_help=False)
    return parser


def run_on_redis(command: str, broker_url: str, action: Callable[[], None]) -> int:
    """Run a subcommand's ``action`` against Redis: its refusal is a usage error (exit 2), an
    unreachable Redis one line on stderr and exit 1."""
    import redis.exceptions

    from tasks.exceptions import PipelineError

    try:
        action()
    except PipelineError as exc:
        raise UsageError(str(exc)) from exc
    except redis.exceptions.RedisError as exc:
        where = broker_url.rsplit("@", 1)[-1]  # never the password of the URL (TTS_EMBEDDED_REDIS_PASSWORD, ACL users)
        print(f"{PROG} {command}: error: cannot reach Redis at {where}: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    """``tts-batch dlq list | show ID | replay ID | replay --all | delete ID | purge``."""
    from tasks.runtime import Runtime
    from tasks.service import JobService

    rt = Runtime()
    service = JobService(rt)

    def run() -> None:
        if args.dlq_command == "list":
            records = rt.dlq.list(limit=max(1, args.limit))
            if args.json:
                print(json.dumps(records, indent=2))
            else:
                for r in records:
                    print(f"{r['job_id']}  {r['failed_at']}  attempts={r['attempts']}  "
                          f"{r['error_type']}: {r['error'][:80]}")
                print(f"{len(rt.dlq)} dead-lettered job(s)", file=sys.stderr)
        elif args.dlq_command == "show":
            print(json.dumps(rt.dlq.get(args.job_id), indent=2))
        elif args.dlq_command == "replay":
            ids = rt.dlq.ids() if args.all else [args.job_id]
            for job_id in ids:
                service.replay(job_id)
                print(f"replayed {job_id}")
        elif args.dlq_command == "delete":
            rt.dlq.remove(args.job_id)
            print(f"deleted {args.job_id}")
        elif args.dlq_command == "purge":
            print(f"purged {rt.dlq.purge()} record(s)")

    return run_on_redis("dlq", rt.settings.effective_redis_url, run)


def cmd_keys(args: argparse.Namespace) -> int:
    """``tts-batch keys create --tenant T [...] | list [--json] | revoke ID``."""
    from tasks.runtime import Runtime
    from tasks.tenants import KeyStore, parse_scopes

    rt = Runtime()
    store = KeyStore(rt.redis, bootstrap=rt.settings.api_keys)

    def run() -> None:
        if args.keys_command == "create":
            record, key = store.create(args.tenant, parse_scopes(args.scopes), rate=args.rate,
                                       max_queued=args.max_queued, chars_per_day=args.chars_per_day)
            print(f"created key {record.id} for tenant {record.tenant!r} (scopes {','.join(record.scopes)})",
                  file=sys.stderr)
            print(f"callback secret (signs this key's job callbacks; shown once): {record.callback_secret}")
            print(key)
        elif args.keys_command == "list":
            records = [r.public() for r in store.list()]
            if args.json:
                print(json.dumps(records, indent=2))
            else:
                for r in records:
                    limits = [f"{name}={r[name]}" for name in ("rate", "max_queued", "chars_per_day") if r[name]]
                    state = "revoked" if r["revoked_at"] else "live"
                    print(f"{r['id']}  {state:7}  tenant={r['tenant']}  scopes={','.join(r['scopes'])}  "
                          + "  ".join(limits))
                print(f"{sum(1 for r in records if not r['revoked_at'])} live key(s); "
                      f"{len(rt.settings.api_keys)} bootstrap key(s) in TTS_API_KEYS", file=sys.stderr)
        elif args.keys_command == "revoke":
            record = store.revoke(args.key_id)
            print(f"revoked {record.id} (tenant {record.tenant!r})")

    return run_on_redis("keys", rt.settings.effective_redis_url, run)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tts-batch`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bulk"]:
        from tts_batch_client.cli import main as bulk_main

        return bulk_main(argv[1:], prog=f"{PROG} bulk", default_api=_bulk_default_api())
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from engine import EngineError
    from settings import SettingsError

    try:
        return int(args.func(args))
    except (UsageError, EngineError, SettingsError) as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of our stdout went away (e.g. `tts-batch voices | head`): not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
