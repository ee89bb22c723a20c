"""The front door: the `stemtrace` command, `celery -A proj stemtrace`, the demo, gc tuning.

May import: any layer (it is on top).
"""
