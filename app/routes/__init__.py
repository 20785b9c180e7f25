"""The app's HTTP routes, one ``APIRouter`` per resource; :data:`ROUTERS` in the order they are matched.

``pages`` (the page and its static files), ``slides`` (the index and its slides: metadata,
thumbnails, overlays, similar slides), ``regions`` (similar regions, region images), ``pathways``
(completion and slides ranked by a pathway), ``uploads`` (embed and query a new slide); the
``fallback`` router answers any other ``/api/`` path with a JSON 404 and comes last.
"""

from __future__ import annotations

from app.routes import pages, pathways, regions, slides, uploads

ROUTERS = (pages.router, slides.router, regions.router, pathways.router, uploads.router, pages.fallback)
