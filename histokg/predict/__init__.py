"""``histokg predict``: expression, pathway scores, clusters and their uncertainty on H&E-only slides.

:mod:`histokg.predict.grid` (Visium-like hexagonal pseudo-spots), :mod:`histokg.predict.slide`
(:func:`~histokg.predict.slide.predict_slide`, :class:`~histokg.predict.slide.PredictConfig`),
:mod:`histokg.predict.cli` (the ``predict`` and ``export`` commands; importing it loads no model code).
"""

from __future__ import annotations

__all__ = ["PredictConfig", "predict_slide"]


def __getattr__(name: str):
    if name in __all__:
        from histokg.predict import slide

        return getattr(slide, name)
    raise AttributeError(f"module 'histokg.predict' has no attribute {name!r}")
