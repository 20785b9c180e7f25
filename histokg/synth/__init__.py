"""Synthetic spatial-transcriptomics studies with planted truth (the project's embedded default data)."""

from histokg.synth.biology import REGION_NAMES, REGIONS
from histokg.synth.study import SynthConfig, generate_study

__all__ = ["REGIONS", "REGION_NAMES", "SynthConfig", "generate_study"]
