"""The train step, the small step that sizes its pod, and the run's exit handler.

Plain functions: ``components.build(image)`` turns them into lightweight KFP components.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output


def train_resources(nodes: int, gpus_per_node: int, image: str, cpu_image: str, accelerator: str,
                    node_selector: dict, tolerations: list, training: dict, launcher: dict) -> NamedTuple(
        "Resources", [("accelerator", str), ("gpus", str), ("cpu_request", str), ("cpu_limit", str),
                      ("memory_request", str), ("memory_limit", str), ("image", str), ("node_selector", dict),
                      ("tolerations", list)]):
    """What the train step's pod asks for: one node trains here (GPUs, CUDA image, GPU nodes); for
    nodes > 1 it only launches the job (no GPU, CPU image, any node). Quantities are strings:
    KFP resolves resource placeholders from STRING values only."""
    from collections import namedtuple

    from egnet.pipeline.steps import train_pod_resources

    r = train_pod_resources(nodes, gpus_per_node, training=training, launcher=launcher,
                            accelerator=accelerator, image=image, cpu_image=cpu_image,
                            node_selector=node_selector, tolerations=tolerations)
    return namedtuple("Resources", list(r))(**r)


def train(data: Input[Dataset], split: Input[Dataset], stats: Input[Artifact], params_file: str, profile: str,
          overrides: list,
          experiment: str, mlflow_uri: str, nodes: int, gpus_per_node: int, image: str, train_out: str,
          job_kind: str, run_id: str, run_name: str, pipeline_version: str, cluster: dict,
          model: Output[Model], metrics: Output[Metrics]):
    """`egnet train` in this pod (torchrun when gpus_per_node > 1), or a TrainJob/PyTorchJob
    when nodes > 1; the Model artifact gets model.pt, mlflow_run_id and train_summary.json."""
    from egnet.cli import run_step
    from egnet.pipeline import steps as k

    k.use_tracking(mlflow_uri)
    summary = k.run_training(
        data=k.data_root(data.path), split=split.path, quarantine=k.quarantine_file(data.path),
        model_dir=model.path, nodes=nodes, gpus_per_node=gpus_per_node, image=image, train_out=train_out,
        run_id=run_id, job_kind=job_kind, cluster=cluster, mlflow_uri=mlflow_uri, run_name=run_name,
        pipeline_version=pipeline_version, config=k.config_args(params_file, profile, overrides, experiment),
        run=run_step)
    k.log_stats_reference(summary["mlflow_run_id"], stats.path)  # drift reference of this model
    model.metadata.update(mlflow_run_id=summary["mlflow_run_id"], train_out=summary["train_out"],
                          params_hash=summary.get("params_hash"), iterations=summary.get("iteration"))
    k.log_metrics(metrics, k.train_metrics(summary))


def finalize(status: dsl.PipelineTaskFinalStatus, run_id: str, run_name: str, nodes: int, job_kind: str,
             cluster: dict, params_file: str, profile: str, overrides: list, experiment: str,
             mlflow_uri: str):
    """The exit handler: stops the run's training job if it still runs, tags the MLflow training
    run with the run's final state, prints one status line (runs however the run ended)."""
    from egnet.pipeline import steps as k

    k.use_tracking(mlflow_uri)
    k.finalize_run(status.state, run_id, run_name, nodes=nodes, job_kind=job_kind, cluster=cluster,
                   params_file=params_file, profile=profile, overrides=overrides, experiment=experiment)
