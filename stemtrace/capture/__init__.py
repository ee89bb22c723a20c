"""Capture: the code that runs inside the user's Celery processes.

It imports :mod:`stemtrace.core.events` and the transport it publishes to, never
the web stack or the store.
"""
