"""Register, gate, promote: the MLflow model registry steps.

Plain functions: ``components.build(image)`` turns them into lightweight KFP components.
"""

from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output


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


def gate(version: str, champion_evaluation: str, params_file: str, profile: str, overrides: list,
         mlflow_uri: str) -> str:
    """`egnet promote --version V --dry-run`: "promote" if the challenger beats the champion on the
    same test images, else "keep". ``champion_evaluation``: the evaluate-champion run (or a note),
    an input so that the gate waits for that step when it runs."""
    from egnet.pipeline import steps as k

    k.use_tracking(mlflow_uri)
    print(f"champion evidence: {champion_evaluation or 'the champion evaluation as registered'}")
    return k.gate_decision(version, params_file, profile, overrides)


def champion_check(version: str, params_file: str, profile: str, overrides: list, mlflow_uri: str) -> str:
    """"reevaluate" when the champion was tested on other data than ``version``, else "ready"."""
    from egnet.pipeline import steps as k

    k.use_tracking(mlflow_uri)
    return k.champion_check(version, params_file, profile, overrides)


def evaluate_champion(data: Input[Dataset], split: Input[Dataset], version: str, params_file: str,
                      profile: str, overrides: list, mlflow_uri: str, evaluation: Output[Artifact]) -> str:
    """The champion on this run's test data (GPU, as evaluate), logged as its own MLflow run."""
    from egnet.pipeline import steps as k

    k.use_tracking(mlflow_uri)
    return k.evaluate_champion(version, k.data_root(data.path), split.path, evaluation.path, params_file,
                               profile, overrides)


def champion_ready(reason: str) -> str:
    """The branch where the champion needs no re-evaluation (its output joins evaluate-champion's)."""
    return f"no re-evaluation ({reason})"


def promote(version: str, params_file: str, profile: str, overrides: list, mlflow_uri: str):
    """`egnet promote --version V`: move the champion alias (run only when the gate passed)."""
    from egnet.cli import run_step
    from egnet.pipeline import steps as k

    k.use_tracking(mlflow_uri)
    run_step(["promote", "--version", version], k.config_args(params_file, profile, overrides))
