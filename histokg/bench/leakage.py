"""The leakage check of ``histokg bench``: nothing fitted or chosen may have seen a held-out section, or,
under leave-one-patient-out, any section of a held-out patient.

Every step of a fold that fits or chooses something (the gene panel, HEG/HVG genes, the prior's tuning,
standardisations, ridge probes and their alpha, kNN references, the heads' training, early stopping)
reports the sections of the rows it actually used to the fold's :class:`Ledger` (taken from the data's
``obs["library_id"]`` or the row provenance array, not from the fold's intentions). A section that must
stay unseen fails the run at once with :class:`LeakageError`. The ledger's :meth:`Ledger.protocol` is
the protocol that was enforced, written into the results.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from histokg.bench.data import Fold
from histokg.errors import HistokgError

__all__ = ["Ledger", "LeakageError"]


class LeakageError(HistokgError):
    """Something fitted or chosen saw held-out data."""


@dataclass
class Ledger:
    """What was fitted on which sections, for one fold."""

    fold: Fold
    patients: dict[str, str]
    by_patient: bool  # leave-one-patient-out: a held-out patient's sections are all unseen
    entries: dict[str, list[str]] = field(default_factory=dict)

    @property
    def unseen(self) -> set[str]:
        """Sections nothing may be fitted on."""
        held = set(self.fold.test)
        if self.by_patient:
            patients = {self.patients[s] for s in held}
            held |= {s for s, p in self.patients.items() if p in patients}
        return held

    def fitted(self, what: str, sections: Iterable | np.ndarray) -> None:
        """Record that ``what`` was fitted on rows of ``sections``; a held-out one raises LeakageError."""
        used = sorted({str(s) for s in np.asarray(list(sections), dtype=object).ravel()})
        seen = sorted(set(used) & self.unseen)
        if seen:
            who = "patient" if self.by_patient else "section"
            raise LeakageError(
                f"leakage in fold {self.fold.name}: {what} was fitted on held-out section(s) {seen} "
                f"(held-out {who}s must stay unseen; it used {used})"
            )
        known = self.entries.setdefault(what, [])
        self.entries[what] = sorted(set(known) | set(used))

    def protocol(self) -> dict:
        """The protocol this fold enforced: unseen sections and what each step was fitted on."""
        held_patients = sorted({self.patients[s] for s in self.fold.test})
        return {
            "unit": "patient" if self.by_patient else "section",
            "held_out_sections": list(self.fold.test),
            "held_out_patients": held_patients,
            "unseen": sorted(self.unseen),
            "fitted_on": dict(self.entries),
        }
