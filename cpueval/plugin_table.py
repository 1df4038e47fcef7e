"""`cpueval plugins [hydra.searchpath=[file:///dir]]`: every mode x precision on this machine, and its state.

States, from the same declarations and checks the runner applies before a model loads
(cpueval.plugins.check_job):
  native              runs, and the CPU has what makes it fast
  emulated (why)      runs, but without the CPU features it declares native (expect it slow)
  refused (why)       cannot run with this mode, precision or CPU; the reason the job would record
  missing (install)   needs a package that is not installed; the command that installs it
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from cpueval import plugins
from cpueval.environment import Capabilities, detect_capabilities
from cpueval.errors import Refused, UserError


def state(caps: Capabilities, mode_name: str, precision_name: str) -> tuple[str, str]:
    """(state, detail) of one mode x precision here, with every plug-in's defaults and the default task."""
    mode = plugins.create("mode", mode_name)
    precision = plugins.create("precision", precision_name)
    task = plugins.create("task", plugins.names("task")[0])
    missing = [r for p in (mode, precision) for r in p.requirements() if not r.present()]
    if missing:
        return "missing", "; ".join(f"{r.package}: {r.install}" for r in missing)
    try:
        plugins.check_job(caps, task, mode, precision)
    except Refused as refused:
        return "refused", str(refused)
    emulated = [p for p in (mode, precision) if not p.is_native(caps)]
    if emulated:
        return "emulated", "; ".join(p.emulated_note or f"{p.group}={p.name}: none of {p.native_with}" for p in emulated)
    return "native", ""


def table(caps: Capabilities) -> list[tuple[str, str, str, str]]:
    return [(m, p, *state(caps, m, p)) for m in plugins.names("mode") for p in plugins.names("precision")]


def render(caps: Capabilities, rows: Sequence[tuple[str, str, str, str]]) -> str:
    width = max(len(f"{m} x {p}") for m, p, _, _ in rows)
    lines = [f"cpueval plugins on {caps.summary()}", f"tasks: {', '.join(plugins.names('task'))}", ""]
    for mode, precision, what, detail in rows:
        lines.append(f"  {f'{mode} x {precision}'.ljust(width)}  {what:<8}  {detail}".rstrip())
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="cpueval plugins", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="hydra.searchpath=[file:///dir] or --config-dir dir: more plug-ins")
    args, rest = parser.parse_known_args(list(argv))
    plugins.add_search_dirs(plugins.search_dirs_from_argv([*args.overrides, *rest]))
    try:
        caps = detect_capabilities()
        print(render(caps, table(caps)))
    except UserError as err:
        print(f"cpueval plugins: error: {err}", file=sys.stderr)
        return 2
    return 0
