"""The evaluate step (paper protocol: mIoU, EF1 per exposure bin, mEF1).

A plain function: ``components.build(image)`` turns it into a lightweight KFP component.
"""

from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output


def evaluate(data: Input[Dataset], split: Input[Dataset], model: Input[Model], params_file: str, profile: str,
             overrides: list, mlflow_uri: str, evaluation: Output[Artifact], metrics: Output[Metrics],
             confusion: Output[ClassificationMetrics], report: Output[HTML]):
    """`egnet evaluate` on the test split; metrics also go to the KFP Metrics artifact, the class
    confusion (19 classes, pixels) to a ClassificationMetrics artifact."""
    from egnet.cli import run_step
    from egnet.pipeline import steps as k

    k.use_tracking(mlflow_uri)
    run_step(["evaluate", "--data", k.data_root(data.path), "--split", split.path, "--model", model.path,
              "--out", evaluation.path], k.config_args(params_file, profile, overrides))
    doc = k.record_evaluation(evaluation.path, metrics, confusion)
    evaluation.metadata.update(mIoU=doc["mIoU"], mEF1=doc["mEF1"])
    k.write_text(report, k.evaluation_page(evaluation.path, run_step,
                                           k.config_args(params_file, profile, overrides)))
