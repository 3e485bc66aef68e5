"""Thin Kubeflow Pipelines components, one per step: each imports egnet and holds no logic.

The step functions live in the modules beside this file as plain functions;
:func:`build` wraps them as lightweight Python components on the project image
(``pipeline.image`` of params.yaml, read when the pipeline is compiled).
``install_kfp_package=False``: the image already has kfp and egnet installed, so a step
starts without pip, and the same definitions run under
``kfp.local.SubprocessRunner(use_venv=False)`` here.
"""

from __future__ import annotations

from types import SimpleNamespace

from kfp import dsl

from components import data, evaluate, registry, train

STEPS = {
    "resolve_data": data.resolve_data, "materialise": data.materialise, "validate": data.validate,
    "split": data.split, "stats": data.stats, "drift": data.drift,
    "train_resources": train.train_resources, "train": train.train, "evaluate": evaluate.evaluate,
    "register": registry.register, "gate": registry.gate, "promote": registry.promote,
    "finalize": train.finalize,
    "champion_check": registry.champion_check, "evaluate_champion": registry.evaluate_champion,
    "champion_ready": registry.champion_ready,
}


def build(image: str) -> SimpleNamespace:
    """The components on ``image``, by step name (``build(image).train(...)`` in a pipeline)."""
    make = dsl.component(base_image=image, install_kfp_package=False)
    return SimpleNamespace(**{name: make(func) for name, func in STEPS.items()})
