"""The HTTP API (FastAPI): the app, request and response models."""
