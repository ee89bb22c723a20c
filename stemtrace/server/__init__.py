"""The web layer: the JSON API router, the standalone app and its lifespan."""
