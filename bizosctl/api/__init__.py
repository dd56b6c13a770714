"""The embedded API server: a thin FastAPI face over the same core functions as the CLI."""
