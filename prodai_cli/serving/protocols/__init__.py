"""The ecosystem's protocols as thin adapters onto the prediction pipeline.

Each module turns a protocol's request into the pipeline's inputs and its result back, through
:meth:`~prodai_cli.serving.pipeline.PredictPipeline.serve`: every route, whatever it speaks, runs the same
auth, rate limits, cache, A/B routing, breaker/fallback, filters and metrics as ``/predict``.

- :mod:`.oip_v2`: Open Inference Protocol v2 (KServe/Triton) over HTTP/REST.
- :mod:`.oip_grpc`: the same protocol over gRPC, on ``serving.grpc_port`` (started by the server's lifespan).
- :mod:`.openai_compat`: OpenAI-compatible ``/v1/models`` and ``/v1/embeddings``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from prodai_cli.serving.state import ServerState


def register_protocols(app: FastAPI, state: ServerState) -> None:
    """Add every protocol's routes to the server app."""
    from prodai_cli.serving.protocols.oip_v2 import OipV2
    from prodai_cli.serving.protocols.openai_compat import OpenAICompat

    OipV2(state).register(app)
    OpenAICompat(state).register(app)
