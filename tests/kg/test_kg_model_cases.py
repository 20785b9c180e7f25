"""One test case per registered KG embedding model (the generic tests are in kg_cases.ModelCase)."""

from __future__ import annotations

from kg_cases import ModelCase

from pathways_kg.models.complex import ComplEx
from pathways_kg.models.kg2e import KG2E
from pathways_kg.models.rotate import RotatE
from pathways_kg.models.transe import TransE


class TestTransE(ModelCase):
    cls = TransE


class TestRotatE(ModelCase):
    cls = RotatE


class TestComplEx(ModelCase):
    cls = ComplEx


class TestKG2E(ModelCase):
    cls = KG2E
