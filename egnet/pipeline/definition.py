"""Where the pipeline definition comes from: the ``egnet.pipelines`` entry point.

The pipeline itself (``pipelines/nightcity_training.py``) is built from the components in
``components/``, which import egnet; egnet never imports them back (the import-linter
contract in pyproject.toml). `egnet pipeline compile | run | submit | schedule` find the
definition the way plug-ins are found: pyproject.toml declares it as an entry point of the
group ``egnet.pipelines``, and installing the project (``pip install -e .``, the images)
registers it. A module so registered provides ``build_pipeline(cfg)``,
``compile_pipeline(cfg, path)`` and ``COMPILED`` (its committed YAML).
"""

from __future__ import annotations

from importlib.metadata import entry_points
from types import ModuleType

from egnet.core.errors import ConfigError

GROUP = "egnet.pipelines"
DEFAULT = "nightcity-training"


def pipeline_module(name: str = DEFAULT) -> ModuleType:
    """The module the ``egnet.pipelines`` entry point ``name`` names, imported."""
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise ConfigError(f"pipeline '{name}' is not installed (entry points in group {GROUP}: {known}); "
                          "install the project with `pip install -e .` (make install)")
    return found[name].load()
