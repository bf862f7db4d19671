"""The model server: FastAPI app factory and its parts (routing, batching, cache, limits, metrics)."""
