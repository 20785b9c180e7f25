"""Names users type: one naming rule, one registry class, one "unknown name; did you mean" message.

A copy of ``histokg.registry`` (``pathways_kg`` must not import ``histokg``): the same code, only the
imports differ, and ``tests/test_registry.py`` checks that the two stay the same. Here the registries
are the KG sources (:mod:`pathways_kg.sources`) and the KG models (:mod:`pathways_kg.models`), and the
errors are :class:`~pathways_kg.errors.KGError`.

The naming rule (:func:`normalize`): a name is matched without regard to case or to the separators
``-``, ``_`` and spaces (``TransE``, ``trans-e`` and ``transe`` are one name); what is stored and
recorded is the registered ``name`` itself (:meth:`Registry.canonical`). :func:`did_you_mean` is the
package's only user of difflib (``"; did you mean 'member_of'?"``), :func:`unknown_name_message` the
one message for an unknown name: ``unknown KG model 'rotat'; did you mean 'rotate'? (valid KG models:
complex, kg2e, rotate, transe)``. :func:`import_modules` imports every module of a plug-in folder, so
that a new source or model is one new file.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from pathways_kg.errors import KGError as DefaultError

__all__ = [
    "Registry",
    "check_kwargs",
    "did_you_mean",
    "nearest",
    "import_modules",
    "init_kwargs",
    "normalize",
    "subclasses",
    "unknown_name",
    "unknown_name_message",
]

X = TypeVar("X")

_SEPARATORS = re.compile(r"[-_\s]+")


def normalize(name: object) -> str:
    """The naming rule: lower case, without ``-``, ``_`` and spaces (``KG-Soft`` -> ``kgsoft``)."""
    return _SEPARATORS.sub("", str(name)).lower()


def nearest(
    name: object,
    valid: Iterable[str],
    n: int = 1,
    cutoff: float = 0.5,
    spellings: Mapping[str, str] | None = None,
) -> list[str]:
    """Up to ``n`` valid names closest to ``name`` under the naming rule (a synonym suggests its name)."""
    candidates: dict[str, str] = {}
    for spelling in valid:
        candidates.setdefault(normalize(spelling), spelling)
    for spelling, target in (spellings or {}).items():
        candidates.setdefault(normalize(spelling), target)
    close = difflib.get_close_matches(normalize(name), list(candidates), n=n, cutoff=cutoff)
    return list(dict.fromkeys(candidates[c] for c in close))


def did_you_mean(
    name: object,
    valid: Iterable[str],
    *,
    n: int = 1,
    cutoff: float = 0.5,
    spellings: Mapping[str, str] | None = None,
) -> str:
    """``"; did you mean 'x'?"`` (up to ``n`` names) for the valid names nearest ``name``, or ``""``.

    Matching follows the naming rule; ``cutoff`` is difflib's similarity threshold; ``spellings``
    maps other accepted spellings (synonyms) to the name to suggest for them.
    """
    close = nearest(name, valid, n, cutoff, spellings)
    return f"; did you mean {', '.join(map(repr, close))}?" if close else ""


def unknown_name_message(
    kind: str,
    name: object,
    valid: Iterable[str],
    *,
    plural: str | None = None,
    where: str = "",
    listing: str | bool | None = None,
    spellings: Mapping[str, str] | None = None,
    cutoff: float = 0.5,
    n: int = 1,
    note: str = "",
) -> str:
    """``"{where}: unknown {kind} {name!r}; did you mean {nearest!r}? (valid {plural}: {names}{note})"``.

    ``name`` may be a list of unknown names (the message then says ``unknown {plural} [...]`` and
    suggests the nearest name for each). ``plural`` defaults to ``kind + "s"`` (``"es"`` after an s);
    ``listing`` replaces ``"valid " + plural`` before the names, and ``listing=False`` leaves the valid
    names out (when there are thousands, e.g. genes). ``n`` names are suggested for each bad name;
    ``cutoff`` and ``spellings`` are those of :func:`did_you_mean`.
    """
    valid = list(valid)
    plural = plural or _plural(kind)
    several = isinstance(name, list | tuple)
    found: list[str] = []
    for one in name if several else [name]:
        found += [s for s in nearest(one, valid, n, cutoff, spellings) if s not in found]
    shown = f"{plural} {list(name)!r}" if several else f"{kind} {name!r}"
    hint = f"; did you mean {', '.join(map(repr, found))}?" if found else ""
    prefix = f"{where}: " if where else ""
    if listing is False:
        return f"{prefix}unknown {shown}{hint}{note}"
    names = ", ".join(valid) if valid else "none"
    return f"{prefix}unknown {shown}{hint} ({listing or f'valid {plural}'}: {names}{note})"


def unknown_name(
    kind: str, name: object, valid: Iterable[str], *, error: type[Exception] = DefaultError, **options: Any
) -> Exception:
    """The error (``error``, this package's config error by default) for an unknown name: raise it.

    ``options`` are those of :func:`unknown_name_message`, which writes the message.
    """
    return error(unknown_name_message(kind, name, valid, **options))


def check_kwargs(
    cls: type,
    given: Iterable[str],
    where: str,
    *,
    keyword_only: bool = True,
    skip: Iterable[str] = (),
    error: type[Exception] = DefaultError,
) -> None:
    """Raise the unknown-name error for the first of ``given`` that ``cls.__init__`` does not take.

    The valid names are the keyword-only parameters of ``cls.__init__`` (with ``keyword_only=False``,
    every parameter that can be passed by keyword), less ``skip``; ``where`` starts the message
    (``"loss 'kg_soft': unknown kwarg 'lamb'; did you mean 'lam'? (valid kwargs: lam, ...)"``).
    """
    valid = init_kwargs(cls, keyword_only=keyword_only, skip=skip)
    for key in given:
        if key not in valid:
            raise unknown_name("kwarg", key, valid, error=error, where=where)


def init_kwargs(cls: type, *, keyword_only: bool = True, skip: Iterable[str] = ()) -> dict[str, Any]:
    """The parameters of ``cls.__init__`` passed by keyword (only the keyword-only ones unless told), with defaults."""
    kinds = {inspect.Parameter.KEYWORD_ONLY}
    if not keyword_only:
        kinds.add(inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # without self
    return {p.name: p.default for p in params if p.kind in kinds and p.name not in set(skip)}


def import_modules(package: str, path: Iterable[str]) -> list[str]:
    """Import every public module of ``package`` (whose ``__path__`` is ``path``); their names, sorted.

    A package of plug-ins calls this in its ``__init__`` (``import_modules(__name__, __path__)``), so a
    new plug-in is a new file and no list of imports is kept by hand.
    """
    names = sorted(m.name for m in pkgutil.iter_modules(list(path)) if not m.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{package}.{name}")
    return names


def subclasses(base: type[X]) -> list[type[X]]:
    """The subclasses of ``base`` that a registry holds, in the order they were defined (each subclass
    just before its parent): defined in ``base``'s top-level package, public (no ``_`` in the class's
    or its module's name), with a ``name``, and not abstract."""
    package = base.__module__.split(".")[0]
    found: list[type[X]] = []

    def walk(cls: type[X]) -> None:
        for sub in cls.__subclasses__():
            walk(sub)
            private = sub.__name__.startswith("_") or any(
                part.startswith("_") for part in sub.__module__.split(".")
            )
            if (
                sub.__module__.split(".")[0] == package
                and not private
                and getattr(sub, "name", "")
                and not inspect.isabstract(sub)
                and sub not in found
            ):
                found.append(sub)

    walk(base)
    return found


class Registry(Generic[X]):
    """Named entries found by the naming rule or a synonym; unknown names are one error with the nearest.

    An entry is a class or object with a ``name`` (and optionally ``synonyms``, a tuple of other
    spellings it accepts), or a plain string. ``kind`` (and ``plural``) name the entries in errors,
    which are of type ``error``; ``note`` ends the list of valid names in them.
    """

    def __init__(
        self,
        entries: Iterable[X],
        kind: str,
        *,
        plural: str | None = None,
        error: type[Exception] = DefaultError,
        note: str = "",
    ) -> None:
        self.kind = kind
        self.plural = plural or _plural(kind)
        self.error = error
        self.note = note
        self.entries: dict[str, X] = {}  # name -> entry, in the order given
        self._keys: dict[str, X] = {}  # every accepted spelling, normalised -> entry
        self.synonyms: dict[str, str] = {}  # synonym -> the name it stands for
        for entry in entries:
            self.register(entry)

    @classmethod
    def from_subclasses(cls, base: type[X], kind: str, **options: Any) -> Registry[type[X]]:
        """The :func:`subclasses` of ``base`` (import their modules first), in definition order."""
        return cls(subclasses(base), kind, **options)

    def register(self, entry: X) -> None:
        """Add ``entry`` under its name and synonyms; a spelling two entries share is a ``ValueError``."""
        name = _name_of(entry)
        for spelling in (name, *getattr(entry, "synonyms", ())):
            key = normalize(spelling)
            if not key or (key in self._keys and self._keys[key] is not entry):
                raise ValueError(f"{self.kind} {name!r}: the spelling {spelling!r} is empty or already taken")
            self._keys[key] = entry
            if spelling != name:
                self.synonyms[spelling] = name
        self.entries[name] = entry

    @property
    def names(self) -> list[str]:
        return list(self.entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalize(name) in self._keys

    def __iter__(self) -> Iterator[X]:
        return iter(self.entries.values())

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, name: object) -> X | None:
        """The entry ``name`` stands for, or None."""
        return self._keys.get(normalize(name)) if isinstance(name, str) else None

    def lookup(self, name: object, *, where: str = "") -> X:
        """The entry ``name`` stands for; otherwise the unknown-name error (prefixed with ``where``)."""
        entry = self.get(name)
        if entry is None:
            raise self.unknown(name, where=where)
        return entry

    def canonical(self, name: str) -> str:
        """The registered name that ``name`` stands for; an unknown ``name`` is returned as it is."""
        entry = self.get(name)
        return name if entry is None else _name_of(entry)

    def unknown(self, name: object, *, where: str = "") -> Exception:
        """The error for ``name`` (one name, or a list of names) that is not registered: raise it."""
        return unknown_name(
            self.kind,
            name,
            self.names,
            error=self.error,
            plural=self.plural,
            where=where,
            spellings=self.synonyms,
            note=self.note,
        )

    def kwargs(self, name: str) -> dict[str, Any]:
        """The keyword-only arguments of the class ``name``'s ``__init__`` (its options), with their defaults."""
        return init_kwargs(self.lookup(name))  # type: ignore[arg-type]

    def check_kwargs(self, name: str, kwargs: Iterable[str], *, where: str = "") -> None:
        """Raise the unknown-name error for the first of ``kwargs`` that the class ``name`` does not take."""
        cls = self.lookup(name, where=where)
        label = f"{self.kind} {_name_of(cls)!r}"
        check_kwargs(cls, kwargs, f"{where}: {label}" if where else label, error=self.error)  # type: ignore[arg-type]

    def make(self, name: str, pos_kwargs: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        """Build the class ``name`` with ``pos_kwargs`` (arguments every class takes) and its own ``kwargs``."""
        self.check_kwargs(name, kwargs)
        return self.lookup(name)(**(pos_kwargs or {}), **kwargs)  # type: ignore[operator]

    def __repr__(self) -> str:
        return f"Registry({self.kind}: {', '.join(self.entries)})"


def _name_of(entry: Any) -> str:
    return entry if isinstance(entry, str) else entry.name


def _plural(kind: str) -> str:
    return f"{kind}es" if kind.endswith("s") else f"{kind}s"
