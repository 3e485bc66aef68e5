"""What the Kubeflow Pipelines components (components/*.py) call: glue, no step logic.

One module per step group (``common``, ``data``, ``train``, ``finalize``, ``registry``); the
components import them all from here (``from egnet.pipeline import steps as k``).

A component runs one ``egnet`` CLI command on artifact paths (``egnet.cli.run_step``, which
raises StepFailed on a non-zero exit), and uses the helpers here for what KFP adds around it: the
Dataset pointer, the Markdown/HTML reports, the KFP Metrics artifact, and the train
step's choice between one process, ``torchrun`` in the pod, and a TrainJob/PyTorchJob.

The Dataset artifact of the data steps is a **pointer**: ``dataset.json`` naming the
data root on the dataset PVC (NightCity is 4 GB; copying it through the artifact store
at every step would cost more than the steps). Small outputs (split lists, quarantine,
stats, metrics, models) are real artifacts.
"""

from __future__ import annotations

from egnet.pipeline.steps.common import (  # noqa: F401
    FINAL_STATE_TAG,
    KFP_TAGS,
    MODEL_FILES,
    POINTER,
    QUARANTINE,
    RESOURCE_KEYS,
    SUCCESS_STATES,
    Runner,
    config_args,
    log_metrics,
    use_tracking,
    write_text,
)
from egnet.pipeline.steps.data import (  # noqa: F401
    copy_pointer,
    data_root,
    drift_step,
    log_stats_reference,
    materialise_data,
    quarantine_file,
    read_pointer,
    resolve_data,
    stats_page,
    validate_markdown,
    write_pointer,
)
from egnet.pipeline.steps.finalize import (  # noqa: F401
    finalize_run,
)
from egnet.pipeline.steps.registry import (  # noqa: F401
    champion_check,
    confusion_matrix,
    evaluate_champion,
    evaluation_metrics,
    evaluation_page,
    experiment_of,
    gate_decision,
    record_evaluation,
    registration_links,
)
from egnet.pipeline.steps.train import (  # noqa: F401
    cpu_image_of,
    kfp_run_tags,
    run_training,
    torchrun_command,
    train_args,
    train_location,
    train_metrics,
    train_pod_resources,
    training_job,
)
