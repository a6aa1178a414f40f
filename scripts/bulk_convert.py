"""Bulk-convert folders of .txt and .md files through a running tts-batch API.

The same as ``tts-batch-bulk`` (and ``tts-batch bulk``) from a checkout, without installing:
the code is the client package :mod:`tts_batch_client`, which needs none of the server.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tts_batch_client.cli import main

if __name__ == "__main__":
    sys.exit(main())
