"""The web layer: ``StemtraceExtension`` (pages, JSON API, live updates) and the standalone app."""

from stemtrace.server.extension import StemtraceExtension

__all__ = ["StemtraceExtension"]
