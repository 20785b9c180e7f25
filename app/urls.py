"""The API's own URLs that answers point to (thumbnails), built in one place."""

from __future__ import annotations


def slide_thumbnail_url(slide_id: str) -> str:
    return f"/api/slides/{slide_id}/thumbnail"


def region_thumbnail_url(region_id: int) -> str:
    return f"/api/regions/{region_id}/thumbnail"


def with_thumbs(rows: list[dict]) -> list[dict]:
    """Slide rows (``slide_id``) gain the URL of their thumbnail."""
    for r in rows:
        r["thumbnail_url"] = slide_thumbnail_url(r["slide_id"])
    return rows
