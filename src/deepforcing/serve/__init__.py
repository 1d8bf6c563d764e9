"""``deepforcing serve``: a live streaming web page — watch a video as it is generated and steer it while it runs.

* :mod:`.live` — one endless, steerable rollout with cache telemetry (no web dependencies);
* :mod:`.app` — the FastAPI app (page, WebSocket protocol, session limits, MP4 download);
* :mod:`.command` — the command line (validates everything, loads the model, runs uvicorn).
"""

from .live import LiveChunk, LiveOptions, LiveSession

__all__ = ["LiveChunk", "LiveOptions", "LiveSession"]
