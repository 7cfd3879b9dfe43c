"""The REST API under /api/v1 (FastAPI): one router per resource, `create_app` in main."""
