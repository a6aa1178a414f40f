"""Bulk-convert folders of .txt and .md files through a running tts-batch API.

The same as ``tts-batch bulk``; the code lives in :mod:`app.bulk`.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.bulk import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
