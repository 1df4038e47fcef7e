"""Intel Extension for PyTorch, shared by mode=ipex and mode=ipex_jit.

IPEX is imported lazily: this venv may not have it, and a mismatched IPEX refuses to import
(it must match torch's major.minor). `check` refuses before the model loads.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Optional

import torch

from cpueval.environment import Capabilities, package_version
from cpueval.errors import Refused
from cpueval.modes.base import ModeConfig
from cpueval.plugins import Requirement
from cpueval.precisions.base import Precision

INSTALL_HINT = (
    "intel-extension-for-pytorch 2.8 with torch 2.8: build the IPEX environment with "
    "`bash jobs/envs/ipex/build.sh` and run its cpueval"
)
IPEX_REQUIREMENT = Requirement("intel-extension-for-pytorch", "intel_extension_for_pytorch",
                               "it needs torch 2.8; build the IPEX environment with `bash jobs/envs/ipex/build.sh` "
                               "and run its cpueval")
IPEX_INT8_REFUSED = ("IPEX's int8 path needs its own static calibration flow, not built here; "
                     "use mode=eager, jit or compile")
# IPEX 2.8 refuses bf16 on CPUs without these (all three) or AVX-NE-CONVERT.
IPEX_BF16_FLAGS = ("avx512bw", "avx512vl", "avx512dq")


def ipex_status() -> dict[str, Any]:
    """Whether IPEX is installed and matches torch's major.minor (it refuses to load otherwise)."""
    version = package_version("intel-extension-for-pytorch") or package_version("intel_extension_for_pytorch")
    torch_mm = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    if version is None:
        return {"installed": False, "version": None, "matches_torch": False}
    ipex_mm = ".".join(version.split("+")[0].split(".")[:2])
    return {"installed": True, "version": version, "matches_torch": ipex_mm == torch_mm}


def ipex_bf16_ok(caps: Capabilities) -> bool:
    return all(caps.has(f) for f in IPEX_BF16_FLAGS) or caps.has("avx_ne_convert")


@dataclass
class IpexOptions(ModeConfig):
    """ipex.optimize arguments (documented for IPEX 2.8); null leaves IPEX's default."""

    level: str = "O1"
    # False keeps the loaded model intact, so a configured fallback can still run it.
    inplace: bool = False
    weights_prepack: Optional[bool] = None
    auto_kernel_selection: Optional[bool] = None


def _refuse(mode: str, precision: str, why: str) -> Refused:
    return Refused(f"mode={mode} precision={precision}: {why}")


def check_ipex(mode: str, caps: Capabilities, precision: Precision) -> None:
    """Refuse when IPEX is absent, mismatched, unimportable, or cannot do bf16 on this CPU."""
    status = ipex_status()
    if not status["matches_torch"]:
        raise _refuse(
            mode, precision.name,
            f"intel-extension-for-pytorch {status['version']} does not match torch {torch.__version__} "
            f"(major.minor must be equal); use {INSTALL_HINT}",
        )
    import_ipex(mode, precision.name)
    if precision.compute_dtype == torch.bfloat16 and not ipex_bf16_ok(caps):
        raise _refuse(
            mode, precision.name,
            "IPEX refuses bf16 on CPUs without AVX512-BW/VL/DQ or AVX-NE-CONVERT; use precision=fp32 or another mode",
        )


def import_ipex(mode: str, precision: str) -> ModuleType:
    try:
        return importlib.import_module("intel_extension_for_pytorch")
    except Exception as e:  # ImportError, or IPEX's own RuntimeError on a torch mismatch
        raise _refuse(mode, precision, f"importing intel_extension_for_pytorch failed ({e}); mode={mode} needs {INSTALL_HINT}") from e


def ipex_optimize(model: torch.nn.Module, precision: Precision, options: IpexOptions, mode: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """ipex.optimize for inference; dtype only for bf16 (IPEX: None means keep fp32 weights)."""
    ipex = import_ipex(mode, precision.name)
    kwargs: dict[str, Any] = {"level": options.level, "inplace": options.inplace}
    if precision.compute_dtype == torch.bfloat16:
        kwargs["dtype"] = torch.bfloat16
    for name in ("weights_prepack", "auto_kernel_selection"):
        if getattr(options, name) is not None:
            kwargs[name] = getattr(options, name)
    optimized = ipex.optimize(model.eval(), **kwargs)
    details = {"ipex_version": getattr(ipex, "__version__", None), "ipex_optimize": {k: str(v) for k, v in kwargs.items()}}
    return optimized, details
