"""Exports of a slide's observations for other tools: QuPath (GeoJSON) and SpatialData (zarr).

``histokg.export.geojson``: :func:`~histokg.export.geojson.write_geojson` (a FeatureCollection of polygons
in level-0 pixels with QuPath's ``objectType``, ``classification`` and ``measurements``);
``histokg.export.spatialdata``: :func:`~histokg.export.spatialdata.export_spatialdata` (the slide as a
multiscale image, the observations as shapes, a table annotating them); ``histokg.export.shapes``: what
both share (one slide's shapes, its measurements and classes). SpatialData is imported only when used.
"""

from histokg.export.geojson import to_geojson, write_geojson

__all__ = ["to_geojson", "write_geojson"]
