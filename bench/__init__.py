"""Benchmarks: scripts that print ratios measured side by side in one run; not tests."""

MODES = ("plain", "stemtrace", "celery-events")
"""Capture configurations compared: none, ``stemtrace.init(app)``, Celery's own events."""
