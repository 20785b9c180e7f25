"""Registries of named classes, and the one "unknown name; did you mean" error of histokg.

:class:`Registry` is a thin layer over class_resolver's ``ClassResolver.from_subclasses`` (the
pattern of pykeen's losses): every subclass of a base class that sets a ``name`` is registered
under that name, in the order the classes were defined (a subclass of a registered class comes
just before it). Names are looked up exactly (``kg_soft``,
not ``KG-Soft``); an unknown name or keyword argument raises :func:`unknown_name`'s error::

    loss_registry = Registry(ContrastiveLoss, "loss")
    loss_registry.make("kg_soft", {"embed_dim": 128}, lam=0.3)

:func:`unknown_name_message` formats the error for every unknown name a user can give (a loss, a
loss kwarg, a reader, a pretrained weights name, a prior family): the kind, the bad name, the
nearest valid name (difflib) and the valid names, e.g.
``unknown loss 'kg_sfot'; did you mean 'kg_soft'? (valid losses: infonce, bleep, ...)``.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable, Mapping
from typing import Any, Generic, TypeVar

from class_resolver import ClassResolver
from class_resolver.utils import get_subclasses

from histokg.errors import ConfigError, HistokgError

__all__ = ["NameResolver", "Registry", "unknown_name", "unknown_name_message"]

X = TypeVar("X")


def unknown_name_message(
    kind: str,
    name: object,
    valid: Iterable[str],
    *,
    plural: str | None = None,
    where: str = "",
    listing: str | None = None,
    spellings: Mapping[str, str] | None = None,
    cutoff: float = 0.6,
    note: str = "",
) -> str:
    """``"{where}: unknown {kind} {name!r}; did you mean {nearest!r}? ({listing}: {valid names}{note})"``.

    ``name`` may be a list of unknown names (the message then says ``unknown {plural} [...]`` and
    suggests the nearest name for each). ``plural`` defaults to ``kind + "s"`` (``"es"`` after an s), ``listing`` to
    ``"valid " + plural``. ``spellings`` maps other accepted spellings (synonyms) to the name to
    suggest for them. Matching ignores case; ``cutoff`` is difflib's similarity threshold.
    """
    valid = list(valid)
    plural = plural or _plural(kind)
    candidates = {s.lower(): s for s in valid}
    candidates.update({s.lower(): target for s, target in (spellings or {}).items()})
    bad = list(name) if isinstance(name, list | tuple) else [name]
    nearest: list[str] = []
    for one in bad:
        close = difflib.get_close_matches(str(one).lower(), list(candidates), n=1, cutoff=cutoff)
        if close and candidates[close[0]] not in nearest:
            nearest.append(candidates[close[0]])
    shown = f"{plural} {list(bad)!r}" if isinstance(name, list | tuple) else f"{kind} {name!r}"
    hint = f"; did you mean {', '.join(map(repr, nearest))}?" if nearest else ""
    prefix = f"{where}: " if where else ""
    names = ", ".join(valid) if valid else "none"
    return f"{prefix}unknown {shown}{hint} ({listing or f'valid {plural}'}: {names}{note})"


def unknown_name(
    kind: str, name: object, valid: Iterable[str], *, error: type[HistokgError] = ConfigError, **options: Any
) -> HistokgError:
    """The error (``error``, ConfigError by default) for an unknown name: raise it.

    ``options`` are those of :func:`unknown_name_message`, which writes the message.
    """
    return error(unknown_name_message(kind, name, valid, **options))


class NameResolver(ClassResolver[X]):
    """A class_resolver ``ClassResolver`` that registers each class under its ``name`` attribute."""

    def extract_name(self, element: type[X]) -> str:
        return element.name  # type: ignore[attr-defined]


class Registry(Generic[X]):
    """The subclasses of ``base`` that set a ``name``, registered under it.

    ``kind`` (and ``plural``) name them in errors, which are of type ``error``. The classes must be
    imported (defined) before the registry is built.
    """

    def __init__(
        self,
        base: type[X],
        kind: str,
        *,
        plural: str | None = None,
        error: type[HistokgError] = ConfigError,
    ):
        self.kind = kind
        self.plural = plural or _plural(kind)
        self.error = error
        self.resolver: NameResolver[X] = NameResolver.from_subclasses(
            base, suffix="", exclude_predicate=lambda cls: not getattr(cls, "name", "")
        )
        registered = set(self.resolver)
        # in definition order, subclasses first (from_subclasses registers a set, in no fixed order)
        self.classes: dict[str, type[X]] = {
            cls.name: cls  # type: ignore[attr-defined]
            for cls in get_subclasses(base)
            if cls in registered
        }

    @property
    def names(self) -> list[str]:
        return list(self.classes)

    def __contains__(self, name: object) -> bool:
        return name in self.classes

    def lookup(self, name: str) -> type[X]:
        """The class registered as exactly ``name``; otherwise the unknown-name error."""
        if not isinstance(name, str) or name not in self.classes:
            raise unknown_name(self.kind, name, self.classes, error=self.error, plural=self.plural)
        return self.resolver.lookup(name)

    def kwargs(self, name: str) -> dict[str, Any]:
        """The keyword-only arguments of ``name``'s ``__init__`` (its options), with their defaults."""
        params = inspect.signature(self.lookup(name).__init__).parameters
        return {p: v.default for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY}

    def check_kwargs(self, name: str, kwargs: Mapping[str, Any]) -> None:
        """Raise the unknown-name error for the first key of ``kwargs`` that ``name`` does not take."""
        valid = self.kwargs(name)
        for key in kwargs:
            if key not in valid:
                raise unknown_name("kwarg", key, valid, error=self.error, where=f"{self.kind} {name!r}")

    def make(self, name: str, pos_kwargs: Mapping[str, Any] | None = None, **kwargs: Any) -> X:
        """Build ``name`` with ``pos_kwargs`` (arguments every class takes) and its own ``kwargs``."""
        self.check_kwargs(name, kwargs)  # looks the name up first
        return self.resolver.make(name, pos_kwargs=pos_kwargs, **kwargs)

    def __repr__(self) -> str:
        return f"Registry({self.kind}: {', '.join(self.classes)})"


def _plural(kind: str) -> str:
    return f"{kind}es" if kind.endswith("s") else f"{kind}s"
