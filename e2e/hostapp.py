"""A host FastAPI app with stemtrace mounted, as the README shows, for the e2e tests.

Configured from the environment: ``STEMTRACE_BROKER``, ``STEMTRACE_STREAM``,
``STEMTRACE_DB`` (read by the extension) and ``HOSTAPP_PREFIX``.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from stemtrace.server import StemtraceExtension

flow = StemtraceExtension()
app = FastAPI(lifespan=flow.lifespan)
app.include_router(flow.router, prefix=os.environ.get("HOSTAPP_PREFIX", "/stemtrace"))


@app.get("/")
def home() -> dict[str, str]:
    return {"app": "the host"}
