"""tts-batch-client: convert folders of text files to audio through a running tts-batch API.

A client of the service's REST API, installable and importable without the server: it needs
only ``requests`` and ``tqdm``, never Flask, Celery, onnxruntime, Redis, numpy or the server's
own packages. Run it as ``tts-batch-bulk INPUT... --out DIR`` (or ``tts-batch bulk``, or
``python -m tts_batch_client``); ``docs/bulk.md`` describes the options and the manifest.

Modules, one concept each:

``errors``
    The exceptions shared by the other modules (:class:`~tts_batch_client.errors.UsageError`,
    :class:`~tts_batch_client.errors.Interrupted`).
``environment``
    The client's environment variables (``TTS_API_URL``, ``TTS_API_KEY``); the only module
    that reads the environment.
``files``
    Input files: discovery of folders, files and globs, and classification of their bytes
    (empty, whitespace only, not UTF-8, binary).
``outputs``
    Output paths under ``--out``: planning, refusing paths that escape it, atomic writes.
``manifest``
    ``OUT/manifest.json``, the record of every file that makes reruns resume.
``api``
    :class:`~tts_batch_client.api.ApiClient`, the REST calls with retries and backoff.
``progress``
    The progress bar, or one log line per file.
``bulk``
    The conversion run: the converter, the thread pool and Ctrl-C handling.
``cli``
    The command line, :func:`tts_batch_client.cli.main`.
"""
