"""The plug-in contract shared by tasks, modes and precisions, and the one place that finds and builds them.

A plug-in is one module + one yaml in `<config dir>/<group>/<name>.yaml`. The yaml names its class
(`_target_`); the class's module exposes `SCHEMA`, the dataclass the yaml extends (stored in Hydra's
ConfigStore as `<group>/<name>_schema`). Config dirs are cpueval's own `conf/` plus any given on the
command line with `hydra.searchpath=[file:///dir]` or `--config-dir dir`, so a plug-in can live
outside this package. Nothing else lists plug-in names: the runner, `cpueval plugins`, the report's
ordering, the benchmarks and the tests all ask this module.

Each plug-in class declares what it needs and what it works with (`Plugin` below): the packages it
imports (checked before the model loads; their versions are recorded in results.json and decide whether
an earlier refusal still stands), the CPU features that make it native, and the other plug-ins it
refuses to run with, with the reason.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping, Optional, Sequence

import yaml

from cpueval.environment import Capabilities
from cpueval.errors import Refused, UserError

log = logging.getLogger(__name__)

GROUPS = ("task", "mode", "precision")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@dataclass(frozen=True)
class Requirement:
    """A package a plug-in imports: `package` as pip knows it (its version is recorded), `module` as
    Python imports it, and how to install it."""

    package: str
    module: str
    install: str

    def present(self) -> bool:
        return importlib.util.find_spec(self.module) is not None


class Plugin:
    """Base of every task, mode and precision class. Subclasses set the declarations below."""

    group: ClassVar[str] = ""
    # Packages imported by this plug-in beyond cpueval's own dependencies.
    requires: ClassVar[tuple[Requirement, ...]] = ()
    # CPU features (Capabilities flag names) any one of which makes this run natively; () = native anywhere.
    native_with: ClassVar[tuple[str, ...]] = ()
    # Shown and recorded when none of native_with is present: it runs, but emulated.
    emulated_note: ClassVar[str] = ""
    # Another plug-in's name -> why this one does not run with it (refused before the model loads).
    refuses: ClassVar[Mapping[str, str]] = {}

    def __init__(self, config: Any):
        self.config = config
        self.warnings: list[str] = []  # facts the user must see, recorded in results.json

    @property
    def name(self) -> str:
        return self.config.name

    def requirements(self) -> tuple[Requirement, ...]:
        """The packages this configured plug-in needs (a config option may add some)."""
        return self.requires

    def refusal(self, other: "Plugin") -> Optional[str]:
        """Why this plug-in does not run together with `other`, or None."""
        return self.refuses.get(other.name)

    @classmethod
    def is_native(cls, caps: Capabilities) -> bool:
        return not cls.native_with or any(caps.has(flag) for flag in cls.native_with)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)


@dataclass(frozen=True)
class PluginInfo:
    group: str
    name: str
    target: str  # the class, as module.Class
    yaml_path: Path

    def load_class(self) -> type[Plugin]:
        module_name, _, class_name = self.target.rpartition(".")
        try:
            module = importlib.import_module(module_name)
            return getattr(module, class_name)
        except (ImportError, AttributeError) as err:
            raise UserError(f"{self.yaml_path}: _target_={self.target} cannot be imported ({err}); put its module "
                            f"on PYTHONPATH") from None

    def load_schema(self) -> type:
        return getattr(sys.modules[self.load_class().__module__], "SCHEMA")


# -- finding plug-ins ---------------------------------------------------------------------------------
_extra_dirs: list[Path] = []


def add_search_dirs(dirs: Iterable[Path]) -> None:
    """Config dirs beyond cpueval's own conf/ (from the command line); their plug-ins join the registry."""
    for path in map(Path, dirs):
        if path.resolve() not in [p.resolve() for p in _extra_dirs]:
            _extra_dirs.append(path)
    discover.cache_clear()


def search_dirs() -> list[Path]:
    return [CONF_DIR, *_extra_dirs]


def forget_search_dirs(keep: Iterable[Path] = ()) -> None:
    """Undo add_search_dirs (and register_configs) for all but `keep`: the dirs and the `<name>_schema`
    entries of the plug-ins only they gave leave. For a process that runs several commands (the tests'
    in-process runs): Hydra's joblib launcher pickles the ConfigStore, so a schema left behind would make
    a later sweep's workers import a plug-in module they cannot find."""
    from hydra.core.config_store import ConfigStore

    kept = list(map(Path, keep))
    dropped = [path for path in _extra_dirs if path not in kept]
    _extra_dirs[:] = kept
    discover.cache_clear()
    repo = ConfigStore.instance().repo
    for group in GROUPS:
        gone = {yaml.stem for path in dropped for yaml in (path / group).glob("*.yaml")} - set(discover()[group])
        for name in gone:
            repo.get(group, {}).pop(f"{name}_schema.yaml", None)


def search_dirs_from_argv(argv: Sequence[str]) -> list[Path]:
    """The config dirs a command line adds: `hydra.searchpath=[file:///a,pkg://b.conf]` and `--config-dir`/`-cd`."""
    dirs: list[Path] = []
    for i, arg in enumerate(argv):
        if arg.startswith(("hydra.searchpath=", "+hydra.searchpath=", "++hydra.searchpath=")):
            items = arg.split("=", 1)[1].strip("[]")
            dirs += [d for d in (_search_path_dir(item.strip(" '\"")) for item in items.split(",") if item) if d]
        elif arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(Path(argv[i + 1]))
        elif arg.startswith("--config-dir="):
            dirs.append(Path(arg.split("=", 1)[1]))
    return dirs


def _search_path_dir(item: str) -> Optional[Path]:
    if item.startswith("file://"):
        return Path(item[len("file://"):])
    if item.startswith("pkg://"):
        spec = importlib.util.find_spec(item[len("pkg://"):])
        locations = list(spec.submodule_search_locations or []) if spec else []
        return Path(locations[0]) if locations else None
    return Path(item) if item else None


@lru_cache(maxsize=1)
def discover() -> dict[str, dict[str, PluginInfo]]:
    """group -> name -> PluginInfo, from every `<config dir>/<group>/*.yaml` that names a `_target_`.
    A later config dir overrides an earlier one's plug-in of the same name (Hydra's order too)."""
    found: dict[str, dict[str, PluginInfo]] = {group: {} for group in GROUPS}
    for root in search_dirs():
        for group in GROUPS:
            for path in sorted((root / group).glob("*.yaml")):
                target = _yaml_target(path)
                if target:
                    found[group][path.stem] = PluginInfo(group, path.stem, target, path)
    return found


def _yaml_target(path: Path) -> Optional[str]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{path}: not readable as YAML ({err})") from None
    target = data.get("_target_") if isinstance(data, dict) else None
    return str(target) if target else None


def names(group: str) -> list[str]:
    """The plug-in names of a group, in the order their classes declare (`order`), then by name."""
    infos = discover()[group]
    return sorted(infos, key=lambda n: (getattr(infos[n].load_class(), "order", 100), n))


def reference(group: str) -> str:
    """The group's reference plug-in (lowest `order`: eager, fp32), what others are compared with."""
    return names(group)[0]


def info(group: str, name: str) -> PluginInfo:
    infos = discover()[group]
    if name not in infos:
        raise UserError(f"unknown {group} {name!r}; choose one of {', '.join(names(group))}")
    return infos[name]


def register_configs() -> None:
    """Store every plug-in's SCHEMA in Hydra's ConfigStore as `<group>/<name>_schema` (idempotent)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for group in GROUPS:
        for name, plugin in discover()[group].items():
            store.store(group=group, name=f"{name}_schema", node=plugin.load_schema())


# -- building plug-ins ---------------------------------------------------------------------------------
def build(node: Any) -> Plugin:
    """A plug-in from its composed config node (a DictConfig with `_target_`), typed by its SCHEMA."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    return get_class(node._target_)(OmegaConf.to_object(node))


def create(group: str, name: str, **fields_: Any) -> Plugin:
    """A plug-in by group and name, with its schema's defaults and `fields_` overriding them, validated
    as Hydra validates a composed config (types, choices)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    plugin = info(group, name)
    try:
        config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(plugin.load_schema()), fields_))
    except OmegaConfBaseException as err:
        key = getattr(err, "key", None) or "?"
        reason = str(err).splitlines()[0]
        raise UserError(f"{group}.{key}={fields_.get(str(key))!r}: {reason}") from None
    return plugin.load_class()(config)


def schema_default(schema: type, field_name: str) -> Any:
    return next(f.default for f in fields(schema) if f.name == field_name)


# -- the combination check -------------------------------------------------------------------------------
def check_job(caps: Capabilities, task: Plugin, mode: Any, precision: Any) -> list[str]:
    """Refuse (before the model loads) what cannot run here; return the warnings for what runs emulated.

    Order: missing packages (with the install command), declared refusals between the plug-ins
    (either side may refuse the other), then the mode's and precision's own checks (versions, CPU)."""
    check_together(caps, mode, precision, task)
    for plugin in (task, mode, precision):
        if not plugin.is_native(caps):
            plugin.warn(plugin.emulated_note or f"{plugin.group}={plugin.name} is emulated on this CPU "
                                                f"(none of {', '.join(plugin.native_with)})")
    return [w for plugin in (task, mode, precision) for w in plugin.warnings]


def check_together(caps: Capabilities, mode: Any, precision: Any, *others: Plugin) -> None:
    """Raise Refused if these plug-ins cannot run together here (see check_job)."""
    job = (*others, mode, precision)
    for plugin in job:
        for requirement in plugin.requirements():
            if not requirement.present():
                raise Refused(f"{plugin.group}={plugin.name} needs the package {requirement.package}, which is "
                              f"not installed: {requirement.install}")
    for plugin in job:
        for other in job:
            why = plugin.refusal(other) if other is not plugin else None
            if why:
                raise Refused(f"{other.group}={other.name} with {plugin.group}={plugin.name}: {why}")
    precision.check(caps, mode)
    mode.check(caps, precision)
