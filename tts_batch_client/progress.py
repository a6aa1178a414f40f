"""Progress of a run on stderr: a tqdm bar (files done, audio minutes, failures, ETA by characters),
or with ``--quiet`` one log line per file."""
from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

from .manifest import FileResult

log = logging.getLogger(__name__)

__all__ = ["Progress", "describe"]


class Progress:
    """A tqdm bar (files done, audio minutes, ETA by characters) or, quiet, one log line per file."""

    def __init__(self, total: int, chars_total: int, quiet: bool) -> None:
        self.quiet = quiet
        self.chars_total = chars_total
        self.chars_done = 0
        self.audio_seconds = 0.0
        self.failed = 0
        self.started = time.monotonic()
        self.bar: tqdm | None = None
        if not quiet:
            self.bar = tqdm(total=total, unit="file", dynamic_ncols=True, file=sys.stderr,
                            bar_format="{desc}{n_fmt}/{total_fmt} files |{bar}| {elapsed}{postfix}",
                            desc="converting ")
            self._postfix()
            self.bar.refresh()

    def _eta(self) -> str:
        elapsed = time.monotonic() - self.started
        if self.chars_done <= 0 or elapsed <= 0:
            return "?"
        remaining = max(self.chars_total - self.chars_done, 0) * elapsed / self.chars_done
        minutes, seconds = divmod(int(remaining), 60)
        return f"{minutes}:{seconds:02d}"

    def _postfix(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"audio {self.audio_seconds / 60:.1f} min, failed {self.failed}, "
                                     f"eta {self._eta()}", refresh=False)

    def done(self, result: FileResult, chars: int) -> None:
        """One file finished (converted, skipped or failed); ``chars``: its size, for the ETA."""
        if result.skipped:  # no work: take it out of the estimate instead of speeding it up
            self.chars_total -= chars
        else:
            self.chars_done += chars
        if result.status == "succeeded" and not result.skipped:
            self.audio_seconds += result.duration or 0.0
        if result.status == "failed":
            self.failed += 1
        line = describe(result)
        if self.bar is not None:
            if result.status == "failed":
                self.bar.write(line, file=sys.stderr)
            self._postfix()
            self.bar.update(1)  # redraws with the new postfix
        else:
            (log.warning if result.status == "failed" else log.info)("%s", line)

    def tick(self) -> None:
        """Redraw the bar (elapsed time and ETA move on while a long file is in flight)."""
        if self.bar is not None:
            self._postfix()
            self.bar.refresh()

    def close(self) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.close()


def describe(result: FileResult) -> str:
    """The one-line report of a finished file: ``converted ...``, ``skipped ...`` or ``FAILED ...``."""
    if result.status == "failed":
        return f"FAILED {result.source}: {result.error}"
    if result.skipped:
        return f"skipped {result.source} (unchanged; {result.output} is current)"
    return (f"converted {result.source} -> {result.output} ({result.chars} chars, "
            f"{(result.duration or 0):.1f} s audio, {result.seconds or 0:.1f} s)")
