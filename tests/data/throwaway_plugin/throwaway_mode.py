"""A throwaway mode that lives outside the cpueval package (tests/test_plugin_contract.py): eager calls,
a required package beyond cpueval's own, and a combination it refuses with its own reason."""

from __future__ import annotations

from dataclasses import dataclass

from cpueval.modes._common import Built, GuardedMode
from cpueval.modes.base import ModeConfig
from cpueval.plugins import Requirement


@dataclass
class ThrowawayConfig(ModeConfig):
    _target_: str = "throwaway_mode.ThrowawayMode"
    name: str = "throwaway"
    label: str = "thrown"


SCHEMA = ThrowawayConfig


class ThrowawayMode(GuardedMode):
    requires = (Requirement("jsonschema", "jsonschema", "pip install jsonschema"),)
    refuses = {"int8": "the throwaway mode does not run quantized models"}

    def build(self, model, precision, ctx):
        return Built(call=lambda inputs: model(**inputs), details={"label": self.config.label})
