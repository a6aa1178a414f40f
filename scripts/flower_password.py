"""Flower's login: ``TTS_FLOWER_USER`` and a password that nobody published.

There is no default password. With ``TTS_FLOWER_PASSWORD`` set, that is the password. With
it empty, the first start makes a random one (:func:`secrets.token_urlsafe`) and keeps it in
``TTS_DATA_DIR/flower-password`` (mode 0600); every later start reads it back, so the
login stays the same across restarts. Delete the file to get a new one on the next start.

The file appears whole or not at all: the password is written to a private temporary file
that is then hard-linked into place, so two starts at once agree on one password and a
reader never sees half a file.

The Procfile's ``flower`` line hands the login to Flower through its ``FLOWER_BASIC_AUTH``
environment variable, never on the command line, where ``ps`` would show it to every user
of the machine::

    python -m scripts.flower_password --basic-auth   # prints user:password (for the Procfile)
    python -m scripts.flower_password --where        # prints where the password comes from
"""
from __future__ import annotations

import argparse
import logging
import os
import secrets
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from settings import Settings, SettingsError, get_settings

__all__ = ["PASSWORD_FILE", "FlowerLogin", "FlowerPasswordError", "flower_login", "main", "password_path"]

log = logging.getLogger(__name__)

#: Name of the password file in ``TTS_DATA_DIR``.
PASSWORD_FILE = "flower-password"
#: Random bytes in a generated password (32 URL-safe characters).
PASSWORD_BYTES = 24


class FlowerPasswordError(RuntimeError):
    """The password file cannot be read or written, or holds no usable password."""


@dataclass(frozen=True)
class FlowerLogin:
    """Flower's basic-auth login, and the file the password is kept in (None: from ``TTS_FLOWER_PASSWORD``)."""

    user: str
    password: str
    path: Path | None

    @property
    def basic_auth(self) -> str:
        """``user:password``, as Flower's ``--basic-auth`` / ``FLOWER_BASIC_AUTH`` take it."""
        return f"{self.user}:{self.password}"

    @property
    def where(self) -> str:
        """Where the password comes from, for people (never the password itself)."""
        return "TTS_FLOWER_PASSWORD" if self.path is None else str(self.path)


def password_path(settings: Settings) -> Path:
    """The password file of ``settings``: ``TTS_DATA_DIR/flower-password``."""
    return (settings.var_dir / PASSWORD_FILE).resolve()


def flower_login(settings: Settings) -> FlowerLogin:
    """The login: ``TTS_FLOWER_PASSWORD`` if set, else the kept password (made on first use)."""
    if settings.flower_password:
        return FlowerLogin(settings.flower_user, settings.flower_password, None)
    path = password_path(settings)
    return FlowerLogin(settings.flower_user, _read_or_create(path), path)


def _usable(password: str) -> bool:
    # Flower splits FLOWER_BASIC_AUTH at commas; whitespace would not survive the file's strip().
    return bool(password) and "," not in password and not any(c.isspace() for c in password)


def _read(path: Path) -> str:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("%s was readable by others (mode %o); making it the owner's only", path, mode)
            path.chmod(0o600)
        password = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise FlowerPasswordError(f"cannot read Flower's password file {path}: {exc}") from exc
    if not _usable(password):
        raise FlowerPasswordError(f"{path} holds no usable Flower password (one line, no spaces or commas); "
                                  "delete it to have a new one made, or set TTS_FLOWER_PASSWORD")
    return password


def _read_or_create(path: Path) -> str:
    if path.exists():
        return _read(path)
    password = secrets.token_urlsafe(PASSWORD_BYTES)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(password + "\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temporary, path)  # atomic, and never replaces a file another start just made
        except FileExistsError:
            return _read(path)
    except OSError as exc:
        raise FlowerPasswordError(f"cannot write Flower's password file {path}: {exc}") from exc
    finally:
        temporary.unlink(missing_ok=True)
    log.info("made a new Flower password in %s", path)
    return password


def main(argv: Sequence[str] | None = None) -> int:
    """Print the login (``--basic-auth``) or where the password is (``--where``); 2 on an error."""
    parser = argparse.ArgumentParser(prog="python -m scripts.flower_password", description=__doc__.split("\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--basic-auth", action="store_true", help="print user:password for FLOWER_BASIC_AUTH")
    what.add_argument("--where", action="store_true", help="print where the password comes from")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        login = flower_login(get_settings())
    except (SettingsError, FlowerPasswordError) as exc:
        print(f"flower_password: {exc}", file=sys.stderr)
        return 2
    print(login.basic_auth if args.basic_auth else login.where)
    return 0


if __name__ == "__main__":
    sys.exit(main())
