"""The core: the wire format, states and their precedence, JSON, bounds on untrusted values.

May import: nothing of stemtrace's; the standard library and orjson only.
"""
