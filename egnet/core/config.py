"""params.yaml -> typed, frozen config.

Precedence (docs/data.md, "Params"): **base < profile < explicit edits < --set**.

- base: ``configs/paper.yaml``, the paper's configuration, every key;
- profile: ``configs/<profile>.yaml``, an overlay naming only the keys it changes;
- explicit edits: the keys whose value in params.yaml differs from the base. params.yaml
  holds every key (so ``dvc exp run -S section.key=...`` can address any of them) and
  ships equal to the base; what a user (or DVC) changes there wins over the profile;
- ``--set section.key=value`` wins over everything.

The profile is itself a key of params.yaml (so DVC tracks it); ``--profile NAME``
overrides it. Unknown keys, missing keys, wrong types and out-of-range values are
errors that name the key and the file it came from, raised before any step does work.

``egnet params resolve --out F`` writes the result as a *resolved* params file (marked by
its ``resolved_from`` key): every value final, read back as it is (plus ``--set``); the
DVC stages read theirs from it, so ``dvc params diff`` shows what the steps used.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from egnet.core.errors import ConfigError
from egnet.core.schema import (  # noqa: F401 - the models are imported from here too
    VARIANTS,
    Config,
    DataConfig,
    DriftConfig,
    EvaluateConfig,
    ModelConfig,
    PipelineConfig,
    RegisterConfig,
    SplitConfig,
    StatsConfig,
    TrackingConfig,
    TrainConfig,
)


def default_params_path() -> Path:
    """``params.yaml`` in the working directory, else the one beside the package (editable installs)."""
    here = Path("params.yaml")
    if here.exists():
        return here
    beside = Path(__file__).resolve().parents[2] / "params.yaml"  # egnet/core/config.py -> repo root
    return beside if beside.exists() else here


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, with YAML 1.2 floats: ``1e-05`` is a number, as DVC (ruamel) writes
    it after ``dvc exp run -S train.lr=1e-5`` and as ``--set`` users type it (YAML 1.1 wants a dot)."""


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    try:
        data = _yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


#: the profile whose file is the base every other profile overlays
BASE_PROFILE = "paper"
#: top-level key that marks a resolved params file (`egnet params resolve`)
RESOLVED_KEY = "resolved_from"


def _merge(base: dict[str, Any], over: dict[str, Any], source: str, prefix: str = "") -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        name = f"{prefix}{key}"
        if key not in out:
            raise ConfigError(f"{source}: unknown key '{name}'")
        if isinstance(out[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{name}' must be a mapping, got {value!r}")
            out[key] = _merge(out[key], value, source, f"{name}.")
        else:
            out[key] = value
    return out


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``["train.lr=0.01", "model.egl_positions=[2,3]"]`` -> nested dict; values parsed as YAML."""
    nested: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        try:
            value = _yaml(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: '{part}' is set twice")
        node[parts[-1]] = value
    return nested


def _format_error(exc: ValidationError, source_of: Any) -> str:
    """One line for the first validation error, naming the file (``source_of(key)``) and the key."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
    source = source_of(loc) if callable(source_of) else source_of
    kind = err["type"]
    if kind == "missing":
        return f"{source}: missing key '{loc}'"
    if kind == "extra_forbidden":
        return f"{source}: unknown key '{loc}'"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    if isinstance(err.get("input"), dict) and kind == "value_error":  # a section's own check names its keys
        return f"{source}: '{loc}': {err['msg'].removeprefix('Value error, ')}{more}"
    return f"{source}: '{loc}' = {err.get('input')!r}: {err['msg']}{more}"


def leaves(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train.lr": 1e-5, ...}``: every non-mapping value by its dotted key (lists are values)."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _put(node: dict[str, Any], dotted: str, value: Any, source: Path) -> None:
    *parents, last = dotted.split(".")
    for i, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: '{'.'.join(parents[:i + 1])}' is a value, not a section")
    node[last] = copy.deepcopy(value)


def _same(a: Any, b: Any) -> bool:
    """YAML values equal as params (1e-5 == 1.0e-05, [1, 2] == (1, 2)); a bool never equals a number."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return False
    numbers = isinstance(a, (int, float)) and isinstance(b, (int, float))
    return (numbers or type(a) is type(b)) and a == b


@dataclass(frozen=True)
class Resolved:
    """params.yaml + profile + ``--set`` before validation: the values and where each came from.

    ``sources`` maps every dotted key (and ``profile``) to ``base``, ``profile``,
    ``params.yaml`` (the params file's name), ``--set`` or, for a resolved file, its name.
    ``files`` maps those words to the files behind them.
    """

    values: dict[str, Any]
    sources: dict[str, str]
    profile: str
    files: dict[str, str]
    origin: str  # e.g. "params.yaml, profile quick": written as ``resolved_from``

    def source_file(self, key: str) -> str:
        """The file (or ``--set``) a key's value came from, for error messages."""
        word = self.sources.get(key)
        if word is None:  # a whole section or a key nobody set: the params file is where it belongs
            word = self.sources.get(next((k for k in self.sources if k.startswith(f"{key}.")), ""), "params")
        return self.files.get(word, word)

    def validate(self) -> Config:
        try:
            # JSON mode: YAML lists validate as tuples, and strict types still apply.
            return Config.model_validate_json(json.dumps(self.values, default=str))
        except ValidationError as exc:
            raise ConfigError(_format_error(exc, self.source_file)) from None


def _apply_sets(values: dict[str, Any], sources: dict[str, str], sets: dict[str, Any]) -> dict[str, Any]:
    values = _merge(values, sets, "--set")
    for key in leaves(sets):
        sources[key] = "--set"
    return values


def resolve_params(
    params: str | Path | None = None,
    profile: str | None = None,
    overrides: list[str] | None = None,
) -> Resolved:
    """Resolve base < profile < explicit edits in params.yaml < ``--set`` (not validated yet)."""
    path = Path(params) if params else default_params_path()
    raw = _read_yaml(path, "params file")
    sets = parse_set(overrides)
    set_profile = sets.pop("profile", None)
    if RESOLVED_KEY in raw:
        return _resolve_resolved(path, raw, profile or set_profile, sets)

    chosen = profile or set_profile or raw.get("profile") or BASE_PROFILE
    if not isinstance(chosen, str):
        raise ConfigError(f"{path}: 'profile' = {chosen!r}: expected a profile name")
    configs = path.parent / "configs"
    base_path = configs / f"{BASE_PROFILE}.yaml"
    if not base_path.exists():
        raise ConfigError(f"base configuration {base_path} not found (the paper's configuration, every key; "
                          f"it lives in configs/ beside {path.name})")
    base = _read_yaml(base_path, "base configuration")
    overlay_path = configs / f"{chosen}.yaml"
    if not overlay_path.exists():
        raise ConfigError(f"profile '{chosen}': overlay {overlay_path} not found")
    overlay = _read_yaml(overlay_path, "profile overlay") if chosen != BASE_PROFILE else {}

    files = {"base": str(base_path), "profile": str(overlay_path), path.name: str(path), "--set": "--set"}
    base_leaves = leaves(base)
    edits = leaves({k: v for k, v in raw.items() if k != "profile"})
    values = copy.deepcopy(base)
    sources = dict.fromkeys(base_leaves, "base")
    known = set(base_leaves) | set(edits)
    for key, value in leaves(overlay).items():
        if key not in known and not any(k.startswith(f"{key}.") for k in known):
            raise ConfigError(f"{overlay_path}: unknown key '{key}'")
        _put(values, key, value, overlay_path)
        sources[key] = "profile"
    for key, value in edits.items():
        if key in base_leaves and _same(value, base_leaves[key]):
            continue  # as shipped: the profile (or the base) decides
        if key not in base_leaves and any(k.startswith(f"{key}.") for k in base_leaves):
            raise ConfigError(f"{path}: '{key}' must be a mapping, got {value!r}")
        _put(values, key, value, path)
        sources[key] = path.name
    missing = sorted(k for k in base_leaves if k not in edits)
    if missing:
        raise ConfigError(f"{path}: missing key '{missing[0]}'"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                          + f"; params.yaml holds every key of {base_path}: copy it from there")
    values = _apply_sets(values, sources, sets)
    values["profile"] = chosen
    sources["profile"] = ("--profile" if profile else "--set" if set_profile
                          else path.name if raw.get("profile") else "default")
    return Resolved(values, sources, chosen, files, f"{path.name}, profile {chosen}")


def _resolve_resolved(path: Path, raw: dict[str, Any], profile: str | None, sets: dict[str, Any]) -> Resolved:
    """A file `egnet params resolve` wrote: every value is final; only ``--set`` applies on top."""
    origin = raw[RESOLVED_KEY]
    raw = {k: v for k, v in raw.items() if k != RESOLVED_KEY}
    chosen = raw.get("profile")
    if profile and profile != chosen:
        raise ConfigError(f"{path} is resolved for profile {chosen!r}; --profile {profile} does not apply "
                          "to it (resolve again with that profile, or pass params.yaml)")
    sources = dict.fromkeys(leaves(raw), path.name)
    values = _apply_sets(raw, sources, sets)
    return Resolved(values, sources, str(chosen), {path.name: str(path), "--set": "--set"},
                    str(origin))


def load_config(
    params: str | Path | None = None,
    profile: str | None = None,
    overrides: list[str] | None = None,
) -> Config:
    """Resolve base + profile + params.yaml edits + ``--set`` into a validated Config."""
    return resolve_params(params, profile, overrides).validate()


class _FlowListDumper(yaml.SafeDumper):
    """Block mappings, flow lists: ``image_size: [1024, 512]`` as in params.yaml."""


_FlowListDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True))


def write_resolved(cfg: Config, resolved: Resolved, out: str | Path) -> Path:
    """``out``: the resolved params file (every key, final values), written atomically."""
    from egnet.core.files import atomic_file

    sets = any(v == "--set" for v in resolved.sources.values())
    doc = {RESOLVED_KEY: resolved.origin + (", --set" if sets else ""), **cfg.to_dict()}
    header = ("# Written by `egnet params resolve`: the values the steps run with (docs/data.md, Params).\n"
              "# Do not edit; edit params.yaml (or the profile) and resolve again (`dvc repro` does).\n")
    with atomic_file(out) as fh:
        fh.write(header + yaml.dump(doc, Dumper=_FlowListDumper, sort_keys=False, width=110))
    return Path(out)


#: Keys added after checkpoints were first written, with the value that reproduces what a run
#: saved without them did (a fact about those runs, not a default: defaults live in params.yaml).
_ADDED_KEYS: dict[tuple[str, str], Any] = {
    ("train", "input"): "crop",          # before `train.input` every run took scale-jittered crops
    ("train", "prefetch_factor"): 2,     # torch's DataLoader default, which those runs used
}


def config_from_dict(data: dict[str, Any], source: str = "checkpoint") -> Config:
    """Rebuild a Config saved with ``Config.to_dict()`` (e.g. inside a checkpoint).

    A config saved before a key existed gets that key's historical value (``_ADDED_KEYS``), so
    older checkpoints and registered models still load, and resume with what they trained with.
    """
    data = copy.deepcopy(data)
    for (section, key), value in _ADDED_KEYS.items():
        if isinstance(data.get(section), dict):
            data[section].setdefault(key, value)
    try:
        cfg = Config.model_validate_json(json.dumps(data, default=str))
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source)) from None
    return cfg
