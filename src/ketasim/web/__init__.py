"""The web shell: a FastAPI app (JSON API + a static page) over the library.

``ketasim serve`` runs it with uvicorn on 127.0.0.1. See docs/web.md. Research tool, not
medical advice.
"""

from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
