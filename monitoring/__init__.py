"""Monitoring for tts-batch: metrics in Redis, the Prometheus exporter, health checks,
JSON logs with correlation ids and webhook alerts.

This package reads Redis and the process, and never imports ``app``, ``tasks`` or ``engine``:
the pipeline calls into it, not the other way round.
"""
from __future__ import annotations
