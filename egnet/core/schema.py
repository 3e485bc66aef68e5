"""The typed, frozen shape of the params: one pydantic model per params.yaml section, and
:class:`Config`, all of them. Unknown keys, wrong types and out-of-range values fail here;
``egnet.core.config`` reads the files, applies the precedence and names the file of a bad key.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0, lt=1)]
Size2 = tuple[PosInt, PosInt]

VARIANTS = (
    "egnet", "no_egl", "no_exposure_stream", "concat", "sum",
    "extra_input", "attention_map", "fcn_resnet101", "deeplabv3_resnet101",
)


class _Section(BaseModel):
    # strict: "1" is not an int, 1 is not a bool; ints are accepted where floats are.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataConfig(_Section):
    image_size: Size2            # (width, height)
    min_good_pairs: PosInt
    workers: NonNegInt
    synth_num: PosInt
    synth_seed: NonNegInt
    synth_val_fraction: Fraction


class SplitConfig(_Section):
    mode: Literal["official", "stratified"]
    seed: NonNegInt
    test_fraction: Fraction
    max_js_distance: PosFloat


class StatsConfig(_Section):
    workers: NonNegInt


class DriftConfig(_Section):
    """Data drift gate of `egnet data drift` (docs/drift_and_report.md): a measure passes at or
    below its threshold."""

    js_exposure: PosFloat                  # JS distance (base 2, in [0, 1]) of exposure-bin histograms
    wasserstein_exposure: PosFloat         # earth mover's distance of the same histograms, in HSV V
    js_class: PosFloat                     # JS distance of labelled-pixel class distributions
    class_mean_exposure_shift: PosFloat    # largest |mean V of a class| change, in HSV V
    min_class_fraction: Annotated[float, Field(ge=0, lt=1)]
    reference_split: Annotated[str, Field(min_length=1)]
    action: Literal["fail", "flag"]
    workers: NonNegInt


class ModelConfig(_Section):
    variant: Literal[VARIANTS]  # type: ignore[valid-type]
    backbone: Literal["resnet18", "resnet34", "resnet50", "resnet101"]
    output_stride: Literal[8, 16, 32]
    backbone_weights: Annotated[str, Field(min_length=1)]
    num_classes: PosInt
    egl_positions: tuple[Literal[2, 3, 4], ...]
    egl_w1: float
    egl_w2: float


class TrainConfig(_Section):
    iterations: PosInt
    batch_size: PosInt
    lr: PosFloat
    momentum: Annotated[float, Field(ge=0, lt=1)]
    weight_decay: NonNegFloat
    poly_power: PosFloat
    input: Literal["resize", "crop"]   # resize: whole image to crop_size^2 (paper); crop: scale jitter + crop
    crop_size: PosInt
    scale_min: PosFloat
    scale_max: PosFloat
    hflip: bool
    alpha: NonNegFloat
    beta: NonNegFloat
    eval_size: Size2
    checkpoint_every: PosInt
    log_every: PosInt
    val_every: PosInt
    val_max_images: PosInt
    seed: NonNegInt
    workers: NonNegInt | Literal["auto"]   # auto: cores per process (GPU) minus one
    prefetch_factor: PosInt
    pin_memory: bool
    persistent_workers: bool
    amp: bool
    channels_last: bool
    compile: bool
    deterministic: bool
    max_restarts: NonNegInt

    @model_validator(mode="after")
    def _scale_range(self) -> TrainConfig:
        if self.scale_min > self.scale_max:
            raise ValueError(f"scale_min ({self.scale_min}) > scale_max ({self.scale_max})")
        return self


class EvaluateConfig(_Section):
    ef1_average: Literal["weighted", "macro", "micro"]
    infer_size: Size2
    extra_modes: tuple[Literal["native", "flip", "multiscale"], ...]
    multiscale_scales: tuple[PosFloat, ...]
    num_qualitative: NonNegInt
    amp: bool
    channels_last: bool
    workers: NonNegInt


class RegisterConfig(_Section):
    model_name: Annotated[str, Field(min_length=1)]
    min_delta_miou: float
    max_mef1_drop: NonNegFloat
    max_bin_ef1_drop: NonNegFloat
    confidence: Fraction
    bootstrap_resamples: PosInt
    bootstrap_seed: NonNegInt
    serialization_format: Literal["pt2", "pickle"]
    lock_uri: Annotated[str, Field(pattern=r"^(|file://.+|s3://[^/]+/.+|[^:]+)$")]
    lock_ttl_s: PosFloat
    lock_timeout_s: PosFloat


class TrackingConfig(_Section):
    uri: Annotated[str, Field(min_length=1)]
    experiment: Annotated[str, Field(min_length=1)]


K8sName = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]
Quantity = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")]


# Kubernetes/OCI syntax, so a typo fails at `egnet pipeline compile`, not when the cluster refuses a pod
_IMAGE = (r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*"
          r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$")
ImageRef = Annotated[str, Field(pattern=_IMAGE)]
OptionalImageRef = Annotated[str, Field(pattern=r"^$|" + _IMAGE)]
ResourceName = Annotated[str, Field(pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?"
                                            r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")]
LabelKey = Annotated[str, Field(pattern=r"^(([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?"
                                        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")]
LabelValue = Annotated[str, Field(pattern=r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")]
OptionalK8sName = Annotated[str, Field(pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$", max_length=63)]


class PipelineConfig(_Section):
    """Kubeflow Pipelines defaults, read at compile time (docs/pipeline.md)."""

    name: Annotated[str, Field(min_length=1)]
    image: ImageRef
    nodes: PosInt
    gpus_per_node: NonNegInt
    accelerator: ResourceName
    gpu_node_selector_key: LabelKey
    gpu_node_selector_value: LabelValue
    gpu_toleration_key: LabelKey
    gpu_toleration_value: LabelValue
    gpu_toleration_effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]
    shm_size: Quantity
    cpu_request: Quantity
    cpu_limit: Quantity
    memory_request: Quantity
    memory_limit: Quantity
    data_cpu_request: Quantity
    data_cpu_limit: Quantity
    data_memory_request: Quantity
    data_memory_limit: Quantity
    step_cpu_request: Quantity
    step_cpu_limit: Quantity
    step_memory_request: Quantity
    step_memory_limit: Quantity
    cpu_image: OptionalImageRef
    data_pvc: K8sName
    data_mount: Annotated[str, Field(pattern=r"^/")]
    data_path: str
    data_repo: str
    data_repo_path: Annotated[str, Field(min_length=1)]
    data_rev: str
    data_cache: str
    data_cache_max_age_days: NonNegFloat
    train_out: str
    train_retries: NonNegInt
    train_retry_window_s: PosInt
    s3_secret: K8sName
    mlflow_secret: OptionalK8sName
    endpoints_configmap: K8sName
    image_pull_secrets: tuple[K8sName, ...]
    service_account: K8sName
    job_kind: Literal["trainjob", "pytorchjob"]
    trainjob_runtime: K8sName
    cleanup: Literal["never", "on_success", "always"]
    wait_timeout_s: PosInt
    poll_s: PosInt
    active_deadline_s: PosInt
    run_deadline_s: NonNegInt
    run_ttl_s: NonNegInt

    @model_validator(mode="after")
    def _deadlines(self) -> PipelineConfig:
        # Argo counts the retry window from the first attempt's start: shorter than the job's
        # deadline and a long first attempt is never retried
        if self.train_retry_window_s < self.active_deadline_s:
            raise ValueError(f"train_retry_window_s ({self.train_retry_window_s}) < active_deadline_s "
                             f"({self.active_deadline_s}): a training that fails late would never be retried")
        if self.run_deadline_s and self.run_deadline_s <= self.train_retry_window_s:
            raise ValueError(f"run_deadline_s ({self.run_deadline_s}) <= train_retry_window_s "
                             f"({self.train_retry_window_s}): the run would end before its retries")
        # a data version is reclaimed when no run has used it for this long: a run still reading it must not
        longest = self.run_deadline_s or self.train_retry_window_s
        if self.data_cache_max_age_days and self.data_cache_max_age_days * 86400 <= longest:
            raise ValueError(f"data_cache_max_age_days ({self.data_cache_max_age_days:g}) is not longer "
                             f"than a run may take ({longest} s): a running step's data could be reclaimed")
        return self


with warnings.catch_warnings():
    # `register` is a section name users type; it only shadows ABCMeta.register, which we never call
    warnings.filterwarnings("ignore", message='Field name "register"')

    class Config(_Section):
        profile: Annotated[str, Field(min_length=1)]
        data: DataConfig
        split: SplitConfig
        stats: StatsConfig
        drift: DriftConfig
        model: ModelConfig
        train: TrainConfig
        evaluate: EvaluateConfig
        register: RegisterConfig
        tracking: TrackingConfig
        pipeline: PipelineConfig

        def to_dict(self) -> dict[str, Any]:
            """Plain JSON-able dict (tuples as lists), e.g. for checkpoints and MLflow params."""
            return json.loads(self.model_dump_json())

        def flat(self) -> dict[str, Any]:
            """``{"train.lr": 1e-5, ...}`` for logging as MLflow params."""
            out: dict[str, Any] = {}
            for section, values in self.to_dict().items():
                if isinstance(values, dict):
                    out.update({f"{section}.{k}": v for k, v in values.items()})
                else:
                    out[section] = values
            return out

        def params_hash(self) -> str:
            """Short content hash of the resolved config (the `params_hash` tag)."""
            blob = json.dumps(self.to_dict(), sort_keys=True).encode()
            return hashlib.sha256(blob).hexdigest()[:12]
