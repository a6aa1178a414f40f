"""``python -m tts_batch_client INPUT... --out DIR``: the bulk converter without the console script."""
from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m tts_batch_client"))
