"""One shape for every spatial-transcriptomics reader.

A platform is one subclass of :class:`Reader`. It reads its own files into :class:`Spots` (counts,
spot ids, genes, spot centres in level-0 pixels of the slide the user names, the spot size) and says
what its files know about the slide's microns per pixel (MPP). The base class does the rest the same
way for every platform (:meth:`Reader.read`):

1. match the count rows to the spot positions (:meth:`Reader.match`, for platforms that keep them
   in two tables), open the slide and check that every spot centre lies on it;
2. resolve the MPP: an explicit ``mpp``; else the platform's own calibration of the slide (Visium HD's
   ``microns_per_pixel``, Xenium's ``pixel_size``), checked against the slide's own metadata; else the
   slide's metadata; else a platform fallback for images without one (legacy ST: the spot pitch).
   Where the value came from is recorded in ``metadata["mpp_source"]``;
3. the spot diameter in slide pixels, from the platform's spot size (never a fixed 55 um);
4. the hires thumbnail and its scale factor, ``uns["spatial"]``, and the validated AnnData contract
   (:func:`histokg.st.contract.build_anndata`).

A reader declares its inputs once, as :class:`Input` values in its ``inputs``: each names an
``__init__`` parameter and says what kind of value it is and what it means; whether it is positional,
required and its default come from the ``__init__`` signature. ``histokg read NAME`` (:mod:`histokg.cli`)
and the ``read_<platform>`` functions (:meth:`Reader.as_function`) are made from that. Nothing here
imports click.

The readers themselves, and their registry, are the package :mod:`histokg.st.readers`.
"""

from __future__ import annotations

import inspect
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import numpy as np
import openslide
import pandas as pd
import scipy.sparse as sp

from histokg import budget
from histokg.errors import InputError, SlideError
from histokg.keys import Key
from histokg.st.contract import (
    build_anndata,
    check_coordinates,
    check_spots_in_image,
    match_ids,
    spatial_uns,
)
from histokg.wsi.slide import PLAIN_SUFFIXES, open_slide

log = logging.getLogger(__name__)

# A platform's calibration of the slide and the slide's own metadata may differ this much (relative).
MPP_TOLERANCE = 0.10
# what an Input can be: an existing folder or file, a number, an integer, a string
INPUT_KINDS = ("dir", "file", "float", "int", "str")


@dataclass(frozen=True)
class Input:
    """One input of a reader, declared once in its ``inputs``: the ``__init__`` parameter ``name``.

    ``kind`` is one of :data:`INPUT_KINDS` (``"dir"`` and ``"file"`` must exist); ``help`` says what it
    is; ``flag`` spells the command-line option when it is not ``--`` and the name with dashes
    (``--bin`` for ``bin_um``). Whether it is positional (an ``__init__`` parameter without default
    that can be passed by position: a command-line argument), required, and its default are read
    from the ``__init__`` signature, never written again.
    """

    name: str
    kind: str = "file"
    help: str = ""
    flag: str = ""

    def __post_init__(self) -> None:
        if self.kind not in INPUT_KINDS:
            raise ValueError(
                f"Input {self.name!r}: kind {self.kind!r} is not one of {', '.join(INPUT_KINDS)}"
            )

    @property
    def option(self) -> str:
        """The option's spelling on the command line."""
        return self.flag or "--" + self.name.replace("_", "-")


@dataclass
class Spots:
    """What a platform reader hands to :meth:`Reader.read`: the spots of one section.

    ``xy`` are spot centres in level-0 pixels of the slide, column 0 = x. The spot size is either
    ``spot_diameter_um`` (microns, converted with the resolved MPP) or ``spot_diameter_fullres``
    (slide pixels, as Space Ranger records it). ``source`` (the counts file) and ``positions`` (the
    file the centres come from) name the inputs in warnings and errors.
    """

    counts: sp.spmatrix
    barcodes: Sequence[str]
    genes: Sequence[str]
    xy: np.ndarray
    source: str
    positions: str
    spot_diameter_um: float | None = None
    spot_diameter_fullres: float | None = None
    spot_diameter_source: str = ""
    gene_ids: Sequence[str] | None = None
    in_tissue: np.ndarray | None = None
    obs_extra: pd.DataFrame | None = None
    extra_scalefactors: dict[str, float] = field(default_factory=dict)
    extra_metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class SlideView:
    """The image the spots are placed on, as the AnnData contract records it."""

    hires: np.ndarray
    hires_scalef: float
    mpp: float
    mpp_source: str
    path: Path | None


def slide_own_mpp(path: str | Path) -> float | None:
    """The MPP a slide's own metadata records, or None (plain images, no MPP property, unreadable).

    An unreadable file returns None here; opening it later raises the slide reader's own message.
    """
    path = Path(path)
    if path.suffix.lower() in PLAIN_SUFFIXES or not path.is_file():
        return None
    try:
        if openslide.OpenSlide.detect_format(str(path)) is None:
            return None
        with openslide.OpenSlide(str(path)) as osr:
            raw = osr.properties.get(openslide.PROPERTY_NAME_MPP_X)
    except (openslide.OpenSlideError, OSError):
        return None
    try:
        value = float(raw) if raw is not None else math.nan
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


class Reader(ABC):
    """Base of every spatial-transcriptomics reader; subclasses implement :meth:`load`.

    Class attributes a platform sets: ``name`` (the ``histokg read NAME`` command and
    ``metadata["reader"]``), ``synonyms`` (other names the registry accepts besides the spellings of
    ``name`` in any case and with any separators), ``inputs`` (its :class:`Input` values besides
    ``library_id`` and ``mpp``, whose help is ``library_id_help`` and ``mpp_help``), ``image_label``
    (how errors call the image), ``platform_mpp_checked`` (whether the platform's MPP must agree with
    the slide's own metadata), ``slide_error_hint`` (appended when the slide cannot be opened).
    """

    name: ClassVar[str]
    synonyms: ClassVar[tuple[str, ...]] = ()
    inputs: ClassVar[tuple[Input, ...]] = ()
    image_label: ClassVar[str] = "slide"
    platform_mpp_checked: ClassVar[bool] = True
    slide_error_hint: ClassVar[str] = ""
    mpp_mismatch_hint: ClassVar[str] = ""
    library_id_help: ClassVar[str] = "Slide id (default: the input's folder or file name)."
    mpp_help: ClassVar[str] = "Microns per pixel of the slide (overrides every other source)."
    hires_max_px: int = 2000
    min_match: float = 1.0  # least fraction of count rows that must have a spot position

    def __init__(self, *, slide: str | Path | None, library_id: str, mpp: float | None = None) -> None:
        self.slide = Path(slide) if slide is not None else None
        self.library_id = str(library_id)
        self.mpp = mpp
        if mpp is not None and not (math.isfinite(float(mpp)) and float(mpp) > 0):
            raise InputError(f"mpp: must be a positive number of microns per pixel, got {mpp!r}")

    # -- what a platform implements ------------------------------------------------------------
    @abstractmethod
    def load(self) -> Spots:
        """Read the platform's files: counts, spot ids, genes, spot centres in slide pixels, spot size."""

    def platform_mpp(self, spots: Spots) -> tuple[float, str] | None:
        """The platform's own calibration of the slide's level-0 pixels: (MPP, where it came from)."""
        return None

    def fallback_mpp(self, spots: Spots) -> tuple[float, str] | None:
        """An MPP for a slide whose metadata has none (e.g. from the spot pitch), or None."""
        return None

    def platform_hires(self) -> tuple[np.ndarray, float] | None:
        """A hires image the platform ships (with its scale to level-0 pixels), used instead of a thumbnail."""
        return None

    def without_slide(self, spots: Spots) -> SlideView:
        """The image to use when no slide is named; most platforms need the slide."""
        raise InputError(f"histokg read {self.name}: a slide is required (the image the spots lie on)")

    def resolve_spot_diameter(self, spots: Spots, mpp: float) -> tuple[float, str]:
        """Spot diameter in slide pixels and where it came from."""
        if spots.spot_diameter_fullres is not None:
            return float(spots.spot_diameter_fullres), spots.spot_diameter_source or "platform (px)"
        if spots.spot_diameter_um is None:
            raise InputError(f"{spots.source}: the {self.name} reader found no spot size")
        return float(spots.spot_diameter_um) / mpp, spots.spot_diameter_source or "platform (um)"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        params = inspect.signature(cls).parameters
        unknown = [i.name for i in cls.cli_inputs() if i.name not in params]
        if unknown:
            raise TypeError(f"{cls.__name__}.inputs name {unknown}, which its __init__ does not take")

    @classmethod
    def cli_inputs(cls) -> tuple[Input, ...]:
        """Every input of ``histokg read NAME`` (besides ``-o``): the reader's ``inputs``, ``library_id``, ``mpp``."""
        return (
            *cls.inputs,
            Input(Key.obs.library_id, "str", cls.library_id_help),  # the parameter that fills this obs column
            Input("mpp", "float", cls.mpp_help),
        )

    @classmethod
    def as_function(cls, name: str) -> Callable[..., ad.AnnData]:
        """A function ``name(*args, **kwargs)`` that reads one section with this reader.

        It is ``cls(*args, **kwargs).read()`` with the reader's signature, and a docstring made of the
        reader's docstring and the help of its inputs: the platform's module writes
        ``read_visium = VisiumReader.as_function("read_visium")`` instead of repeating its arguments.
        """

        def read_section(*args: Any, **kwargs: Any) -> ad.AnnData:
            return cls(*args, **kwargs).read()

        read_section.__name__ = read_section.__qualname__ = name
        read_section.__module__ = cls.__module__
        read_section.__signature__ = inspect.signature(cls).replace(return_annotation=ad.AnnData)  # type: ignore[attr-defined]
        inputs = "\n".join(f"    {i.name}: {i.help}" for i in cls.cli_inputs())
        read_section.__doc__ = (
            f"Read one section into the AnnData contract with :class:`{cls.__name__}` "
            f"(``{cls.__name__}(*args, **kwargs).read()``).\n\n{inspect.cleandoc(cls.__doc__ or '')}\n\n"
            f"Inputs (as ``histokg read {cls.name}`` takes them):\n{inputs}\n"
        )
        return read_section

    # -- the shared skeleton ---------------------------------------------------------------------
    def match(
        self, count_ids: Sequence[str], table_ids: Sequence[str], counts_name: str, table_name: str
    ) -> np.ndarray:
        """Mask over the count rows that have a spot position (``min_match`` of them at least; see
        :func:`histokg.st.contract.match_ids`)."""
        return match_ids(
            count_ids, table_ids, counts_name=counts_name, table_name=table_name, min_match=self.min_match
        )

    def read(self) -> ad.AnnData:
        """Read the section into the AnnData contract."""
        spots = self.load()
        if len(spots.barcodes) == 0:
            raise InputError(f"{spots.source}: no spots to read")
        spots.xy = check_coordinates(spots.xy, [str(b) for b in spots.barcodes], spots.positions)
        view = self._open_slide(spots) if self.slide is not None else self.without_slide(spots)
        diameter_px, diameter_source = self.resolve_spot_diameter(spots, view.mpp)
        budget.check_spot_diameter(diameter_px, view.mpp, f"{spots.source}: spot size from {diameter_source}")
        spatial = spatial_uns(
            view.hires,
            view.hires_scalef,
            diameter_px,
            view.path,
            view.mpp,
            extra_scalefactors=spots.extra_scalefactors,
            extra_metadata={
                Key.metadata.mpp_source: view.mpp_source,
                Key.metadata.reader: self.name,
                Key.metadata.spot_diameter_um: float(diameter_px * view.mpp),
                Key.metadata.spot_diameter_source: diameter_source,
                **spots.extra_metadata,
            },
        )
        return build_anndata(
            spots.counts,
            spots.barcodes,
            spots.genes,
            spots.xy,
            self.library_id,
            spatial,
            in_tissue=spots.in_tissue,
            gene_ids=spots.gene_ids,
            obs_extra=spots.obs_extra,
            source=spots.source,
        )

    def _open_slide(self, spots: Spots) -> SlideView:
        assert self.slide is not None
        mpp, mpp_source = self._resolve_mpp(spots)
        if mpp is not None and mpp_source != "given":  # a given MPP is named as the slide's (open_slide)
            budget.check_mpp(mpp, f"{self.image_label} {self.slide}: the MPP from {mpp_source}")
        try:
            opened = open_slide(self.slide, mpp=mpp)
        except SlideError as exc:
            if self.slide_error_hint:
                raise InputError(f"{exc}; {self.slide_error_hint}") from None
            raise
        with opened as slide:
            check_spots_in_image(
                spots.xy,
                *slide.dimensions,
                [str(b) for b in spots.barcodes],
                f"{spots.positions} vs {self.image_label} {self.slide}",
            )
            hires = self.platform_hires()
            if hires is None:
                hires = slide.thumbnail(self.hires_max_px)
            return SlideView(hires[0], hires[1], float(slide.mpp), mpp_source, self.slide)

    def _resolve_mpp(self, spots: Spots) -> tuple[float | None, str]:
        """(MPP to open the slide with, or None for its own metadata; where it came from)."""
        assert self.slide is not None
        if self.mpp is not None:
            return float(self.mpp), "given"
        platform = self.platform_mpp(spots)
        if platform is not None:
            value, source = platform
            own = slide_own_mpp(self.slide) if self.platform_mpp_checked else None
            if own is not None and abs(own / value - 1) > MPP_TOLERANCE:
                raise InputError(
                    f"{source}: {value:.4g} um/px, but {self.image_label} {self.slide} records {own:.4g} um/px "
                    f"in its own metadata (more than {MPP_TOLERANCE:.0%} apart); is it the image the data were "
                    f"registered to{self.mpp_mismatch_hint}? Pass --mpp to override"
                )
            return value, source
        if slide_own_mpp(self.slide) is not None:
            return None, "slide"
        fallback = self.fallback_mpp(spots)
        if fallback is not None:
            return fallback
        return None, "slide"  # open_slide names the missing MPP
