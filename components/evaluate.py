"""The evaluate step (paper protocol: mIoU, EF1 per exposure bin, mEF1).

A plain function: ``components.build(image)`` turns it into a lightweight KFP component.
"""

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output


def evaluate(data: Input[Dataset], split: Input[Dataset], model: Input[Model], params_file: str, profile: str,
             overrides: list, mlflow_uri: str, evaluation: Output[Artifact], metrics: Output[Metrics],
             report: Output[HTML]):
    """`egnet evaluate` on the test split; metrics also go to the KFP Metrics artifact."""
    import json
    from pathlib import Path

    from egnet.cli import run_step
    from egnet.pipeline import steps as k

    k.use_tracking(mlflow_uri)
    run_step(["evaluate", "--data", k.data_root(data.path), "--split", split.path, "--model", model.path,
           "--out", evaluation.path], k.config_args(params_file, profile, overrides))
    out = Path(evaluation.path)
    doc = json.loads((out / "metrics.json").read_text())
    k.log_metrics(metrics, k.evaluation_metrics(doc))
    evaluation.metadata.update(mIoU=doc["mIoU"], mEF1=doc["mEF1"])
    k.write_text(report, k.evaluation_page(out, run_step, k.config_args(params_file, profile, overrides)))
