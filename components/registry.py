"""Register, gate, promote: the MLflow model registry steps.

Plain functions: ``components.build(image)`` turns them into lightweight KFP components.
"""

from kfp.dsl import Artifact, Input, Markdown, Model, Output


def register(model: Input[Model], evaluation: Input[Artifact], params_file: str, profile: str,
             overrides: list, mlflow_uri: str, registration: Output[Artifact],
             links: Output[Markdown]) -> str:
    """`egnet register`: a new model version with the alias challenger; returns the version. The
    Markdown artifact links the MLflow run and the model version for the KFP UI."""
    import json
    from pathlib import Path

    from egnet.cli import run_step
    from egnet.pipeline import steps as k

    k.use_tracking(mlflow_uri)
    run_step(["register", "--train-dir", model.path, "--eval-dir", evaluation.path,
              "--out", registration.path],
             k.config_args(params_file, profile, overrides))
    reg = json.loads(Path(registration.path).read_text())
    registration.metadata.update(name=reg["name"], version=reg["version"], run_id=reg["run_id"],
                                 model_uri=reg["model_uri"])
    k.write_text(links, k.registration_links(reg, k.experiment_of(reg["run_id"])))
    return str(reg["version"])


def gate(version: str, params_file: str, profile: str, overrides: list, mlflow_uri: str) -> str:
    """`egnet promote --version V --dry-run`: "promote" if the challenger beats the champion, else "keep"."""
    from egnet.pipeline import steps as k

    k.use_tracking(mlflow_uri)
    return k.gate_decision(version, params_file, profile, overrides)


def promote(version: str, params_file: str, profile: str, overrides: list, mlflow_uri: str):
    """`egnet promote --version V`: move the champion alias (run only when the gate passed)."""
    from egnet.cli import run_step
    from egnet.pipeline import steps as k

    k.use_tracking(mlflow_uri)
    run_step(["promote", "--version", version], k.config_args(params_file, profile, overrides))
