"""The train step and the small step that sizes its pod.

Plain functions: ``components.build(image)`` turns them into lightweight KFP components.
"""

from typing import NamedTuple

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output


def train_resources(nodes: int, gpus_per_node: int, cpu_request: str, cpu_limit: str, memory_request: str,
                    memory_limit: str) -> NamedTuple("Resources", [("gpus", int), ("cpu_request", str),
                                                                  ("cpu_limit", str), ("memory_request", str),
                                                                  ("memory_limit", str)]):
    """What the train step's pod requests: the training's GPUs/CPU/memory for one node; a
    launcher's (no GPU) when a multi-node TrainJob does the training."""
    from collections import namedtuple

    from egnet.pipeline.steps import train_pod_resources

    r = train_pod_resources(nodes, gpus_per_node, cpu_request, cpu_limit, memory_request, memory_limit)
    return namedtuple("Resources", list(r))(**r)


def train(data: Input[Dataset], split: Input[Dataset], stats: Input[Artifact], params_file: str, profile: str,
          overrides: list,
          experiment: str, mlflow_uri: str, nodes: int, gpus_per_node: int, image: str, train_out: str,
          job_kind: str, run_id: str, cluster: dict, model: Output[Model], metrics: Output[Metrics]):
    """`egnet train` in this pod (torchrun when gpus_per_node > 1), or a TrainJob/PyTorchJob
    when nodes > 1; the Model artifact gets model.pt, mlflow_run_id and train_summary.json."""
    from egnet.cli import run_step
    from egnet.pipeline import steps as k

    k.use_tracking(mlflow_uri)
    summary = k.run_training(
        data=k.data_root(data.path), split=split.path, quarantine=k.quarantine_file(data.path),
        model_dir=model.path, nodes=nodes, gpus_per_node=gpus_per_node, image=image, train_out=train_out,
        run_id=run_id, job_kind=job_kind, cluster=cluster, mlflow_uri=mlflow_uri,
        config=k.config_args(params_file, profile, overrides, experiment), run=run_step)
    k.log_stats_reference(summary["mlflow_run_id"], stats.path)  # drift reference of this model
    model.metadata.update(mlflow_run_id=summary["mlflow_run_id"], train_out=summary["train_out"],
                          params_hash=summary.get("params_hash"), iterations=summary.get("iteration"))
    k.log_metrics(metrics, k.train_metrics(summary))
