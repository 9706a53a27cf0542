"""Serving layer: a trained model as a local web page and JSON API (FastAPI on uvicorn), above evaluation:
uploads read into memory with limits, a bounded inference pool, the predict chain on bytes, the page."""
