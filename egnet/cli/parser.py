"""The `egnet` argument parser: one subcommand per step, each bound to its handler."""

from __future__ import annotations

import argparse
from pathlib import Path

from egnet.cli import handlers as h
from egnet.cli.handlers import Handler


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        if w <= 0 or h <= 0:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 1024x512, got {text!r}") from None
    return w, h


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("configuration (base < profile < params.yaml edits < --set; egnet params show)")
    g.add_argument("--params", type=Path, default=None, metavar="FILE",
                   help="params file (default: ./params.yaml)")
    g.add_argument("--profile", default=None, metavar="NAME",
                   help="overlay configs/NAME.yaml on the base configs/paper.yaml "
                        "(default: params.yaml's `profile` key)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="SEC.KEY=VALUE",
                   help="override one param, value parsed as YAML (repeatable), e.g. --set train.lr=0.01")
    return p


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def _add(sub, name: str, handler: Handler, help: str, description: str | None = None):
    """Add a leaf command; ``handler(args, cfg)`` returns its exit code."""
    p = sub.add_parser(name, help=help, description=description or help,
                       parents=[_common()], formatter_class=_Formatter)
    p.set_defaults(handler=handler)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="egnet",
        description="NightCity night-time semantic segmentation (EGNet): data steps, training, "
                    "evaluation and the MLflow model registry.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `egnet COMMAND --help` for a command's options. Docs: README.md, docs/.",
    )
    parser.add_argument("--version", action=_Version, help="egnet version, git commit, torch/CUDA build")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _params_commands(sub)
    _data_commands(sub)
    _model_commands(sub)
    _registry_commands(sub)
    _pipeline_commands(sub)
    return parser


class _Version(argparse.Action):
    """``egnet --version``: printed and exit 0, before any command or config is read."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from egnet.core.version import version_text

        print(version_text())
        parser.exit()


def _params_commands(sub) -> None:
    """`egnet params show | resolve`."""
    params = sub.add_parser("params", help="the resolved params and where each value comes from",
                            description="Precedence: base (configs/paper.yaml) < profile "
                                        "(configs/<profile>.yaml) < params.yaml values that differ from "
                                        "the base < --set (docs/data.md, Params).")
    psub = params.add_subparsers(dest="params_command", metavar="ACTION", required=True)
    p = _add(psub, "show", h.params_show, "print each key's value and where it comes from",
             "Each key's resolved value and its source: base (configs/paper.yaml), profile\n"
             "(configs/<profile>.yaml), params.yaml (an explicit edit: differs from the base) or --set.\n"
             "  egnet params show --profile quick train      # the train section under quick\n"
             "  egnet params show --changed                  # only what differs from the paper")
    p.add_argument("keys", nargs="*", metavar="KEY", help="sections or keys to show (default: all)")
    p.add_argument("--changed", action="store_true", help="only keys whose value is not the base's")
    p = _add(psub, "resolve", h.params_resolve,
             "write the resolved params (every key, final values) to a file",
             "The first DVC stage: `egnet params resolve --out outputs/params.yaml`; the other stages\n"
             "read that file (--params outputs/params.yaml) and declare their params from it, so\n"
             "`dvc params diff` and `dvc exp show` show the values the steps used.")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="resolved params file to write")


def _data_commands(sub) -> None:
    """`egnet data synth | import | validate | split | stats | drift`."""
    # --- data ------------------------------------------------------------
    data = sub.add_parser("data", help="NightCity data steps: synth, import, validate, split, stats, drift")
    dsub = data.add_subparsers(dest="data_command", metavar="STEP", required=True)

    p = _add(dsub, "synth", h.data_synth,
             "generate synthetic night street scenes in the NightCity release layout",
             "Procedural night scenes (road, buildings, cars with headlights, lights, persons, ...)\n"
             "written exactly as the NightCity release is laid out, with a train/val split.\n"
             "Deterministic for a seed. Used by the demo and the tests; the real data cannot\n"
             "be downloaded here.")
    p.add_argument("--out", type=Path, required=True, help="output dataset root (replaced atomically)")
    p.add_argument("--num", type=int, default=None, help="number of scenes (default: data.synth_num)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: data.synth_seed)")
    p.add_argument("--size", type=_size, default=None, help="WIDTHxHEIGHT (default: data.image_size)")

    p = _add(dsub, "import", h.data_import,
             "bring a downloaded NightCity release (folders or zips) into the layout, verifying it")
    p.add_argument("src", type=Path, help="folder holding the release folders or its .zip files")
    p.add_argument("--out", type=Path, default=Path("data/nightcity"), help="dataset root to create")
    p.add_argument("--dvc-add", action="store_true", help="`dvc add` the result (in a DVC repo)")

    p = _add(dsub, "validate", h.data_validate,
             "check every image/label pair (never modifies the data)",
             "Checks: both files decode; image 8-bit RGB; label 8-bit single channel; sizes\n"
             "(data.image_size, or 2x for NightCity+ labels); label values are Cityscapes\n"
             "labelIds; no orphans; no duplicate content; names follow <City>_<NNNN>.\n"
             "Exit 1 listing the first problems when anything is bad. With --quarantine the\n"
             "bad pairs go to a list later steps skip, and the exit is 0 if at least\n"
             "data.min_good_pairs good pairs remain.")
    p.add_argument("data", type=Path, help="dataset root")
    p.add_argument("--report", type=Path, default=None, help="write the JSON report here")
    p.add_argument("--quarantine", type=Path, default=None,
                   help="write bad stems here (later steps skip them); "
                        "DATA/quarantine.txt is read by default")

    p = _add(dsub, "split", h.data_split, "write train.txt / test.txt and a split report")
    p.add_argument("data", type=Path, help="dataset root")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--mode", choices=["official", "stratified"], default=None,
                   help="official: release folders; stratified: pooled re-split (default: split.mode)")
    p.add_argument("--seed", type=int, default=None, help="seed for stratified (default: split.seed)")
    p.add_argument("--quarantine", type=Path, default=None,
                   help="stems to skip (default: DATA/quarantine.txt)")

    p = _add(dsub, "stats", h.data_stats,
             "class-pixel and exposure statistics per split (paper Figs. 3 and 4)")
    p.add_argument("data", type=Path, help="dataset root")
    p.add_argument("--split", type=Path, required=True, help="directory with train.txt and test.txt")
    p.add_argument("--out", type=Path, required=True, help="output directory (stats.json + PNG charts)")
    p.add_argument("--quarantine", type=Path, default=None,
                   help="stems to skip (default: DATA/quarantine.txt)")

    p = _add(dsub, "drift", h.data_drift,
             "compare incoming data with the champion's training data (exposure bins, classes)",
             "Statistics of every pair of DATA (as `egnet data stats`) against a reference stats.json:\n"
             "a file or its folder, runs:/RUN_ID, or models:/NAME@ALIAS (its training run's\n"
             "data/stats.json artifact). Measures: js_exposure, wasserstein_exposure, js_class,\n"
             "class_mean_exposure_shift, each against its drift.* threshold. Exit 1 naming the\n"
             "measures over threshold (drift.action=fail), or a warning and exit 0 (flag).")
    p.add_argument("data", type=Path, help="dataset root of the incoming data (all its pairs, no split)")
    p.add_argument("--reference", required=True, metavar="STATS_JSON_OR_MODEL_URI",
                   help="stats.json (or its folder), runs:/RUN_ID, "
                        "or models:/NAME@ALIAS | models:/NAME/VERSION")
    p.add_argument("--out", type=Path, default=None,
                   help="output directory: drift.json, the new data's stats.json, overlay PNGs; "
                        "none: print only")
    p.add_argument("--quarantine", type=Path, default=None,
                   help="stems to skip (default: DATA/quarantine.txt)")
    p.add_argument("--allow-missing-reference", action="store_true",
                   help="a models:/ reference naming no version (no champion yet): "
                        "write a 'skipped' drift.json, exit 0")


def _model_commands(sub) -> None:
    """`egnet score | train | weights fetch | evaluate`."""
    # --- scoring ---------------------------------------------------------
    p = _add(sub, "score", h.score,
             "score prediction PNGs from any tool with mIoU and the exposure-aware EF1/mEF1",
             "Predictions are <stem>.png or <stem>_labelIds.png holding labelIds or trainIds\n"
             "(detected and stated). Exposure is computed from the dataset's images.")
    p.add_argument("pred_dir", type=Path, help="folder of prediction PNGs")
    p.add_argument("--data", type=Path, required=True, help="dataset root")
    p.add_argument("--split", type=Path, required=True, help="directory with test.txt")
    p.add_argument("--out", type=Path, default=None, help="write metrics.json here")
    p.add_argument("--ids", choices=["auto", "labelIds", "trainIds"], default="auto",
                   help="what prediction values are (auto: detected over the set, docs/metrics.md)")

    # --- training --------------------------------------------------------
    p = _add(sub, "train", h.train,
             "train EGNet (or a variant/baseline); one process or under torchrun",
             "Single process:   egnet train --data DATA --split SPLIT --out OUT\n"
             "One node, 4 GPUs: torchrun --nproc_per_node=4 -m egnet.cli train --data ...\n"
             "Resumes from the latest checkpoint in --out unless --no-resume.")
    p.add_argument("--data", type=Path, required=True, help="dataset root")
    p.add_argument("--split", type=Path, required=True, help="directory with train.txt and test.txt")
    p.add_argument("--out", required=True, help="output directory or s3://bucket/prefix")
    p.add_argument("--no-resume", action="store_true", help="start fresh even if checkpoints exist")
    p.add_argument("--stats", type=Path, default=None, metavar="DIR",
                   help="`egnet data stats` output: its stats.json is logged to the run (drift reference)")
    p.add_argument("--quarantine", type=Path, default=None,
                   help="stems to skip (default: DATA/quarantine.txt)")

    weights = sub.add_parser("weights", help="ImageNet backbone weights: fetch them ahead of time",
                             description="Training never downloads weights: model.backbone_weights = "
                                         "imagenet reads $TORCH_HOME/hub/checkpoints/ (docs/models.md).")
    wsub = weights.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    p = _add(wsub, "fetch", h.weights_fetch,
             "download torchvision's ImageNet weights of the configured backbone, sha256-checked",
             "Downloads the weights `model.backbone_weights: imagenet` reads (the model.backbone of the\n"
             "config; resnet101 for the torchvision baselines) into $TORCH_HOME/hub/checkpoints/ (or\n"
             "--dir), checked against the sha256 pinned in egnet/models/backbone.py. The CUDA image\n"
             "runs it at build time; a file already there with the right sha256 is kept.")
    p.add_argument("--arch", default=None, choices=["resnet18", "resnet34", "resnet50", "resnet101"],
                   help="backbone (default: the config's)")
    p.add_argument("--dir", type=Path, default=None,
                   help="folder to put the file in (default: $TORCH_HOME/hub/checkpoints)")

    p = _add(sub, "evaluate", h.evaluate,
             "evaluate a checkpoint or registered model on the test split (mIoU, EF1, mEF1)")
    p.add_argument("--data", type=Path, required=True, help="dataset root")
    p.add_argument("--split", type=Path, required=True, help="directory with test.txt")
    p.add_argument("--model", required=True, help="checkpoint path, train dir, or models:/NAME@ALIAS")
    p.add_argument("--out", type=Path, required=True, help="output directory (metrics.json, charts)")


def _registry_commands(sub) -> None:
    """`egnet register | promote | registry grant | models | compare | predict | report`."""
    # --- registry --------------------------------------------------------
    p = _add(sub, "register", h.register,
             "log the trained model to its MLflow run and register a version (alias: challenger)")
    p.add_argument("--train-dir", required=True, help="egnet train --out directory")
    p.add_argument("--eval-dir", type=Path, required=True, help="egnet evaluate --out directory")
    p.add_argument("--name", default=None, help="registered model name (default: register.model_name)")
    p.add_argument("--out", type=Path, default=None, metavar="FILE",
                   help="write the registration (name, version, run_id, aliases, model_uri) as JSON here")

    p = _add(sub, "promote", h.promote,
             "champion/challenger gate: move the champion alias if the challenger is better",
             "Compares champion and challenger on the same test images (the challenger's): a paired\n"
             "bootstrap of challenger - champion over those images, then three rules from params.yaml's\n"
             "register section: mIoU interval's lower bound > min_delta_miou; mEF1's > -max_mef1_drop;\n"
             "no exposure bin's EF1 drops by more than max_bin_ef1_drop. When the champion was tested on\n"
             "other data, --data/--split (the challenger's test data) re-evaluate it first; without them\n"
             "the gate refuses (exit 1) naming both data versions. docs/registry.md.")
    p.add_argument("--name", default=None, help="registered model name (default: register.model_name)")
    p.add_argument("--version", default=None, help="version to consider (default: @challenger)")
    p.add_argument("--data", default=None, metavar="DATA",
                   help="the challenger's test data: re-evaluate the champion on it when needed")
    p.add_argument("--split", default=None, metavar="SPLIT", help="directory with test.txt (with --data)")
    p.add_argument("--rollback", action="store_true", help="make previous-champion the champion again")
    p.add_argument("--dry-run", action="store_true",
                   help="show the decision as a Markdown table, move no alias (a re-evaluation with "
                        "--data is still logged: it is evidence)")
    p.add_argument("--force", action="store_true", help="promote even if the gate refuses")

    reg = sub.add_parser("registry", help="MLflow registry administration: users and permissions",
                         description="Administration of the MLflow server's basic-auth users "
                                     "(docs/registry.md, \"Who may do what\").")
    rsub = reg.add_subparsers(dest="registry_command", metavar="ACTION", required=True)
    p = _add(rsub, "grant", h.registry_grant,
             "create the MLflow users of a folder and give each its role's permissions (idempotent)",
             "Run with the MLflow admin's login (MLFLOW_TRACKING_USERNAME/_PASSWORD). DIR holds one\n"
             "file per user, named <role>.<username>, with the password (12+ characters); roles:\n"
             "reviewer (READ on the experiment and the registered model), pipeline (EDIT on both),\n"
             "ops (MANAGE on the registered model, READ on the experiment). Makes the experiment and\n"
             "the registered model exist first. Re-running sets passwords and levels again.")
    p.add_argument("--users", type=Path, required=True, metavar="DIR",
                   help="folder of <role>.<username> password files (k8s: the Secret egnet-mlflow-users)")
    p.add_argument("--name", default=None, help="registered model name (default: register.model_name)")
    p.add_argument("--experiment", default=None, help="experiment name (default: tracking.experiment)")

    p = _add(sub, "models", h.models,
             "list registered versions with aliases, key metrics and data version")
    p.add_argument("--name", default=None, help="registered model name (default: register.model_name)")

    p = _add(sub, "compare", h.compare,
             "compare MLflow runs: differing params and metric deltas against the first")
    p.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    p.add_argument("--format", choices=["table", "markdown"], default="table")

    p = _add(sub, "predict", h.predict,
             "segment images: colour mask, labelIds PNG and exposure map per image")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    p.add_argument("--model", required=True, help="checkpoint path, train dir, or models:/NAME@ALIAS")
    p.add_argument("--out", type=Path, required=True, help="output directory")

    p = _add(sub, "report", h.report,
             "self-contained HTML report of an evaluated run (optionally against another run)",
             "Reads the evaluation `egnet evaluate` logged into the run (evaluation/metrics.json,\n"
             "confusion.npy, per_image.json, worst/): headline metrics, EF1 per exposure bin\n"
             "against the paper's Table 2, IoU per class, the most confused classes in the\n"
             "darkest and brightest bins, the worst test images. One HTML file, no network assets;\n"
             "logged into RUN_ID's run as report/report.html (report/vs_<VS>.html with --vs).")
    p.add_argument("run_id", metavar="RUN_ID",
                   help="MLflow run (a training run evaluated by `egnet evaluate`)")
    p.add_argument("--vs", default=None, metavar="RUN_ID",
                   help="second run, side by side; deltas are RUN_ID - VS")
    p.add_argument("--out", type=Path, required=True, help="output directory (report.html, report.json)")
    p.add_argument("--no-log", action="store_true", help="do not log the page into the MLflow run")


def _pipeline_commands(sub) -> None:
    """`egnet pipeline compile | run | submit | schedule | schedules` (docs/pipeline.md)."""
    # --- pipeline (Kubeflow Pipelines; docs/pipeline.md) ------------------
    pipe = sub.add_parser("pipeline", help="Kubeflow Pipelines: compile, run locally, submit, schedule",
                          description="The retraining pipeline (materialise -> validate -> split -> "
                                      "stats -> train -> evaluate -> register -> gate -> promote) "
                                      "on Kubeflow Pipelines.")
    psub = pipe.add_subparsers(dest="pipeline_command", metavar="ACTION", required=True)
    p = _add(psub, "compile", h.pipeline_compile,
             "compile the pipeline to YAML (defaults and image from the pipeline section of params.yaml)")
    p.add_argument("--out", type=Path, default=None,
                   help="YAML file (default: pipelines/nightcity_training.yaml)")
    p = _add(psub, "run", h.pipeline_run,
             "run the pipeline on this machine with kfp.local, then print a summary",
             "Runs the same pipeline function as the cluster, each step a subprocess of this venv.\n"
             "Data: --data, else data/nightcity, else synthetic scenes made under --workdir.\n"
             "Profile: quick unless --profile; MLflow: MLFLOW_TRACKING_URI, else tracking.uri\n"
             "(sqlite:///mlflow.db). A second run registers a second version and gates it.\n"
             "Prints one line per step (a progress bar while training); each step's full log is\n"
             "in the run's folder, under logs/; --verbose streams them as well.")
    p.add_argument("--local", action="store_true", help="run here with kfp.local (the only mode of `run`)")
    p.add_argument("--data", type=Path, default=None,
                   help="dataset root (default: data/nightcity or synthetic)")
    p.add_argument("--workdir", type=Path, default=Path("local_outputs"),
                   help="synthetic data and step outputs (each step's log: kfp/<run>/logs/<step>.log)")
    p.add_argument("--verbose", action="store_true",
                   help="stream every step's full output (kfp's executor input, MLflow INFO lines) "
                        "besides the one line per step")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="set a pipeline parameter (repeatable), "
                        "e.g. --param data_repo=URL --param data_rev=v1")
    for name, handler, what in (
            ("submit", h.pipeline_submit, "upload the pipeline (a new version) and start a run"),
            ("schedule", h.pipeline_schedule, "upload the pipeline and create a recurring run")):
        p = _add(psub, name, handler, what,
                 f"{what.capitalize()} on a Kubeflow Pipelines server. The pipeline is compiled\n"
                 "from params.yaml now (or --package); steps run pipeline.image, overridable per run\n"
                 "with --param image=REGISTRY/egnet:TAG. A bearer token is read from $KFP_TOKEN.")
        p.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080")
        p.add_argument("--experiment", default=None, help="KFP experiment (default: tracking.experiment)")
        p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                       help="set a pipeline parameter of the run (repeatable), e.g. --param nodes=2")
        p.add_argument("--namespace", default=None, help="Kubeflow profile namespace (multi-user installs)")
        p.add_argument("--package", type=Path, default=None,
                       help="upload this compiled YAML instead of compiling")
        p.add_argument("--run-name", default=None,
                       help="name of the run / recurring run (schedule: default the pipeline's name)")
        if name == "schedule":
            p.add_argument("--cron", default=None,
                           help='KFP cron, 6 fields with seconds first: "0 0 3 * * 0" = Sundays 03:00; '
                                "creates the recurring run, or replaces the one of the same name")
            state = p.add_mutually_exclusive_group()
            for flag, what in (("pause", "disable"), ("resume", "enable"), ("delete", "delete")):
                state.add_argument(f"--{flag}", action="store_true",
                                   help=f"{what} the existing recurring run of that name (no upload)")
    p = _add(psub, "render-job", h.pipeline_render_job,
             "print the TrainJob / PyTorchJob the train step would create (YAML)",
             "Prints the multi-node training job the train step creates for --nodes >= 2, built by\n"
             "the step's own function from params.yaml (pipeline section, train.max_restarts), as\n"
             "`kubectl apply --dry-run=client -o yaml` shows it (keys sorted; without kubectl's\n"
             "last-applied-configuration annotation). Run-specific values have stand-ins (options).\n"
             "The pods get --profile and the --set items outside `pipeline.` (docs/training.md).")
    p.add_argument("--nodes", type=int, required=True, help="training pods (>= 2)")
    p.add_argument("--gpus-per-node", type=int, required=True, help="processes (GPUs) per pod")
    p.add_argument("--kind", choices=["trainjob", "pytorchjob"], default=None,
                   help="Kubeflow Trainer v2.3 TrainJob or Training Operator v1.9 PyTorchJob "
                        "(default: pipeline.job_kind)")
    p.add_argument("--run-id", default="example", help="KFP run id the job name and label derive from")
    p.add_argument("--image", default=None, help="training image (default: pipeline.image)")
    p.add_argument("--data", default=None, help="dataset root in the pods (default: pipeline.data_path)")
    p.add_argument("--split", default=None,
                   help="split folder in the pods (default: <pipeline.data_mount>/runs/<job>/split)")
    p.add_argument("--quarantine", default=None, help="quarantine list in the pods (default: none)")
    p.add_argument("--out", default=None, help="train output (default: <pipeline.train_out>/<job>)")
    p.add_argument("--mlflow-uri", default=None,
                   help="MLFLOW_TRACKING_URI of the pods (default: from the endpoints ConfigMap)")
    p = _add(psub, "schedules", h.pipeline_schedules, "list the pipeline's recurring runs on a KFP server")
    p.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080")
    p.add_argument("--namespace", default=None, help="Kubeflow profile namespace (multi-user installs)")
