"""dvc.yaml: stage deps/params match the code, and the real pipeline under the real `dvc` CLI.

- Static (fast): each stage's code deps are exactly the egnet modules its step imports
  (transitively, read with ``ast``), and its params exactly the ``cfg.<section>.<key>`` it
  reads, from the resolved outputs/params.yaml the first stage writes; a drift in either
  direction fails with the difference.
- Pipeline (slow): a temporary git+DVC repo with this project's dvc.yaml, .dvcignore,
  .gitignore, configs/ and egnet/ sources, 12 synthetic scenes at 256x128 and a tiny
  training schedule: ``dvc repro`` end to end, a no-op second repro, a param change that
  reruns only its readers, ``dvc exp run -S``, ``dvc metrics diff``, ``dvc plots diff``,
  and the MLflow ``data_version`` tag equal to the DVC hash.
- Remote (moto S3 on 127.0.0.1): ``dvc push`` then ``dvc pull`` in a fresh clone with
  credentials in ``.dvc/config.local``; ``materialise`` from a bare clone via the remote.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from egnet.core.config import Config, load_config
from egnet.data.versioning import DVC_PREFIX, materialise
from tests.support import PARAMS, REPO
from tests.support.dvc import (
    commit,
    dir_md5,
    dvc,
    git,
    init_repo,
    isolate_inprocess,
    project_repo,
    tool_env,
    tree_bytes,
)

STAGES = ["params", "validate", "split", "stats", "train", "evaluate"]
STEPS = STAGES[1:]  # the stages that run a step on the resolved params
RESOLVED = "outputs/params.yaml"


def _dvc_yaml() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


# --- static: deps and params follow the code -------------------------------


def _step_modules(cmd: str) -> set[str]:
    """The modules the handler of a stage's ``egnet ...`` command imports (from the real CLI parser)."""
    import inspect
    import textwrap

    from egnet.cli import build_parser

    argv = shlex.split(cmd)
    assert argv[0] == "egnet", cmd
    handler = build_parser().parse_args(argv[1:]).handler
    source = textwrap.dedent(inspect.getsource(handler))
    return {m for m in _imports_of(ast.parse(source), "egnet") if m.startswith("egnet.")}


def _module_file(name: str) -> Path | None:
    for p in (REPO / (name.replace(".", "/") + ".py"), REPO / name.replace(".", "/") / "__init__.py"):
        if p.is_file():
            return p
    return None


def _imports(path: Path, module: str) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return _imports_of(ast.parse(path.read_text()), package)


def _imports_of(tree: ast.AST, package: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):  # every import, lazy ones in functions too
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def _closure(modules: set[str]) -> set[Path]:
    """Files of every egnet module ``modules`` import, transitively."""
    seen: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        name = todo.pop()
        if not name.startswith("egnet") or name in seen or (path := _module_file(name)) is None:
            continue
        seen[name] = path
        todo.extend(_imports(path, name))
    return set(seen.values())


def _is_code(path: Path) -> bool:
    """False for an ``__init__.py`` holding nothing but a docstring."""
    body = ast.parse(path.read_text()).body
    return not (path.name == "__init__.py" and all(
        isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body))


def _declared_code(deps: list[str]) -> set[Path]:
    out: set[Path] = set()
    for dep in deps:
        if not dep.startswith("egnet"):
            continue
        p = REPO / dep
        assert p.exists(), f"dvc.yaml dep {dep} does not exist"
        out.update(f for f in p.rglob("*.py") if "__pycache__" not in f.parts) if p.is_dir() else out.add(p)
    return out


@pytest.mark.parametrize("stage", STAGES)
def test_stage_code_deps_are_exactly_the_modules_its_step_imports(stage):
    spec = _dvc_yaml()[stage]
    needed = {p for p in _closure(_step_modules(spec["cmd"])) if _is_code(p)}
    declared = _declared_code(spec["deps"])
    rel = lambda ps: sorted(str(p.relative_to(REPO)) for p in ps)  # noqa: E731
    assert not needed - declared, f"{stage}: add to deps: {rel(needed - declared)}"
    assert not declared - needed, f"{stage}: deps its step never imports: {rel(declared - needed)}"
    if stage == "params":  # resolves params.yaml (every key) with the base and the overlay it names
        assert {"configs/paper.yaml", "configs/${profile}.yaml"} <= set(spec["deps"])
        assert spec["params"] == [{"params.yaml": None}] and spec["outs"] == [{RESOLVED: {"cache": False}}]
    else:  # reads the resolved file only: the profile and overlays reach it through the params stage
        assert spec["cmd"].endswith(f"--params {RESOLVED}") and not any("configs/" in d for d in spec["deps"])
        assert [next(iter(p)) for p in spec["params"]] == [RESOLVED]


#: keys a step's imported modules mention that the stage does not take from params.yaml
NOT_FROM_PARAMS = {
    "evaluate": {
        "model": "the model is built from the config saved in the checkpoint",
        "tracking.experiment": "metrics go into the training run; evaluate never creates a run",
    },
}
_WHOLE_CONFIG = {"flat", "to_dict", "params_hash", "model_dump", "model_dump_json"}  # logging, hashing


def _keys_read(files: set[Path]) -> set[str]:
    """``section.key`` (or ``section`` when a whole section is passed on) for each ``cfg.`` access."""
    sections = {name: Config.model_fields[name].annotation for name in Config.model_fields}
    found: set[str] = set()
    for path in files:
        for sec, key in re.findall(r"\bcfg\.(\w+)(?:\.(\w+))?", path.read_text()):
            if sec in _WHOLE_CONFIG or sec not in sections:
                continue
            fields = getattr(sections[sec], "model_fields", {})
            found.add(f"{sec}.{key}" if key in fields else sec)
    return found


@pytest.mark.parametrize("stage", STEPS)
def test_stage_params_are_exactly_the_keys_its_step_reads(stage):
    spec = _dvc_yaml()[stage]
    declared = set(spec["params"][0][RESOLVED])
    skip = NOT_FROM_PARAMS.get(stage, {})
    files = _closure(_step_modules(spec["cmd"]))
    read = {k for k in _keys_read(files) if k not in skip and k.split(".")[0] not in skip}
    covered = lambda k: k in declared or k.split(".")[0] in declared  # noqa: E731
    used = lambda d: any(k == d or k.split(".")[0] == d for k in read)  # noqa: E731
    assert not {k for k in read if not covered(k)}, f"{stage}: reads params not listed: " \
        f"{sorted(k for k in read if not covered(k))}"
    assert not {d for d in declared if not used(d)}, f"{stage}: lists params it never reads: " \
        f"{sorted(d for d in declared if not used(d))}"


def test_dvc_config_holds_no_credentials_and_config_local_is_gitignored():
    text = (REPO / ".dvc" / "config").read_text().lower()
    for word in ("access_key", "secret", "token", "password"):
        assert word not in text
    assert "/config.local" in (REPO / ".dvc" / ".gitignore").read_text().splitlines()


# --- the pipeline under dvc -------------------------------------------------

#: on the tiny profile, a schedule that trains for seconds on 2 cores (written out in full: see _write_params)
SCHEDULE = [
    "data.workers=1", "stats.workers=1",
    "train.iterations=4", "train.batch_size=2", "train.checkpoint_every=2", "train.log_every=2",
    "train.val_every=4", "evaluate.infer_size=[128,64]", "evaluate.num_qualitative=1",
]


def _write_params(path: Path, **changes: object) -> None:
    """params.yaml with every value written out and profile ``paper`` (the base itself).

    The tiny schedule as explicit edits (values that differ from the base win over any
    profile); tests/dvc/test_dvc_exp_params.py runs `dvc exp run -S` under ``profile: quick``.
    """
    doc = load_config(PARAMS, "tiny", SCHEDULE).to_dict()
    doc["profile"] = "paper"
    for dotted, value in changes.items():
        sec, key = dotted.split("__")
        doc[sec][key] = value
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([\w-]+)'", output)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """(repo, env, first `dvc repro` output): the project's pipeline reproduced once on tiny data."""
    from egnet.data.synth import synthesize

    tmp = tmp_path_factory.mktemp("dvc-pipeline")
    env = tool_env(tmp)
    repo = project_repo(tmp / "repo", env)
    _write_params(repo / "params.yaml")
    synthesize(repo / "data" / "nightcity", num=12, seed=5, size=(256, 128), workers=1)
    dvc(repo, env, "add", "-q", "data/nightcity")
    commit(repo, env, "data and pipeline")
    out = dvc(repo, env, "repro").stdout
    return repo, env, out


@pytest.mark.slow
@pytest.mark.dvc
def test_repro_runs_every_stage_and_tags_the_run_with_the_dvc_hash(pipeline):
    repo, env, out = pipeline
    assert _ran(out) == STAGES
    m = json.loads((repo / "outputs/eval/metrics.json").read_text())
    assert 0 <= m["mIoU"] <= 1 and len(m["EF1"]) == 10 and m["num_images"] == 4
    assert (repo / "outputs/train/model.pt").is_file()
    assert (repo / "outputs/stats/stats.json").is_file()
    assert "up to date" in dvc(repo, env, "status").stdout

    # lineage: the training run's data_version is the hash data/nightcity.dvc records
    import mlflow

    recorded = yaml.safe_load((repo / "data/nightcity.dvc").read_text())["outs"][0]["md5"]
    assert recorded == dir_md5(repo / "data/nightcity")
    run_id = (repo / "outputs/train/mlflow_run_id").read_text().strip()
    run = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}").get_run(run_id)
    assert run.data.tags["data_version"] == DVC_PREFIX + recorded

    # a second repro changes nothing and runs nothing
    before = {p: p.stat().st_mtime_ns for p in (repo / "outputs").rglob("*") if p.is_file()}
    again = dvc(repo, env, "repro").stdout
    assert _ran(again) == [] and re.findall(r"Stage '([\w-]+)' didn't change", again) == STAGES
    assert {p: p.stat().st_mtime_ns for p in (repo / "outputs").rglob("*") if p.is_file()} == before


@pytest.mark.slow
@pytest.mark.dvc
def test_a_param_change_reruns_only_the_stages_that_read_it(pipeline):
    repo, env, _ = pipeline
    model_mtime = (repo / "outputs/train/model.pt").stat().st_mtime_ns
    _write_params(repo / "params.yaml", stats__workers=2)  # read by split and stats only
    out = dvc(repo, env, "repro").stdout
    # split reruns but writes the same lists, so train and evaluate stay as they are
    assert _ran(out) == ["params", "split", "stats"]
    assert (repo / "outputs/train/model.pt").stat().st_mtime_ns == model_mtime

    # an overlay reaches the steps only through the resolved file: editing one marks the
    # params stage changed, and an edit that changes no value reruns nothing after it
    overlay = repo / "configs/paper.yaml"
    original = overlay.read_text()
    overlay.write_text(original + "# touched\n")
    status = json.loads(dvc(repo, env, "status", "--json").stdout)
    assert sorted(status) == ["params"]
    assert _ran(dvc(repo, env, "repro").stdout) == ["params"]
    overlay.write_text(original)
    dvc(repo, env, "repro")
    assert "up to date" in dvc(repo, env, "status").stdout
    commit(repo, env, "stats.workers 2")


@pytest.mark.slow
@pytest.mark.dvc
def test_exp_run_set_param_then_metrics_and_plots_diff(pipeline, tmp_path):
    repo, env, _ = pipeline
    out = dvc(repo, env, "exp", "run", "-S", "train.lr=0.05").stdout
    assert _ran(out) == ["params", "train", "evaluate"]

    params = json.loads(dvc(repo, env, "params", "diff", "--json").stdout)
    assert params["params.yaml"]["train.lr"]["new"] == 0.05
    assert list(params[RESOLVED]) == ["train.lr"] and params[RESOLVED]["train.lr"]["new"] == 0.05
    diff = json.loads(dvc(repo, env, "metrics", "diff", "--json").stdout)
    miou = diff["outputs/eval/metrics.json"]["mIoU"]
    assert 0 <= miou["old"] <= 1 and 0 <= miou["new"] <= 1
    assert "outputs/stats/stats.json" not in diff  # same data, same stats

    dvc(repo, env, "plots", "diff", "HEAD", "-o", str(tmp_path / "plots"))
    images = {p.name for p in (tmp_path / "plots" / "static").iterdir()}
    assert {"HEAD_outputs_eval_ef1_per_bin.png", "workspace_outputs_eval_ef1_per_bin.png"} <= images
    assert (tmp_path / "plots" / "index.html").is_file()

    assert len(dvc(repo, env, "exp", "list", "--name-only").stdout.split()) == 1


# --- remote: push, pull, materialise ---------------------------------------


def _small_data(dest: Path, seed: int) -> Path:
    from egnet.data.synth import synthesize

    synthesize(dest, num=6, seed=seed, size=(128, 64), workers=1)
    return dest


def _with_s3_remote(repo: Path, env: dict[str, str], url: str, endpoint: str) -> None:
    dvc(repo, env, "remote", "add", "-d", "s3", url)
    dvc(repo, env, "remote", "modify", "s3", "endpointurl", endpoint)


@pytest.mark.slow
@pytest.mark.s3
@pytest.mark.dvc
def test_push_then_pull_in_a_fresh_clone_restores_identical_data(moto_s3, tmp_path):
    s3 = moto_s3
    bucket = s3.bucket()
    creds = {k: v for k, v in s3.env.items() if k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env = tool_env(tmp_path, {"AWS_DEFAULT_REGION": "us-east-1", **creds})
    repo = init_repo(tmp_path / "origin", env)
    shutil.copy(REPO / ".gitignore", repo / ".gitignore")
    data = _small_data(repo / "data" / "nightcity", seed=1)
    dvc(repo, env, "add", "-q", "data/nightcity")
    _with_s3_remote(repo, env, f"s3://{bucket}/dvcstore", s3.endpoint)
    commit(repo, env, "data")
    dvc(repo, env, "push")
    assert "testing" not in (repo / ".dvc/config").read_text()  # credentials came from the env

    # another machine: a git clone, credentials only in .dvc/config.local (never committed)
    clone_env = tool_env(tmp_path / "other", {"AWS_DEFAULT_REGION": "us-east-1"})
    clone = tmp_path / "clone"
    git(tmp_path, clone_env, "clone", "-q", str(repo), str(clone))
    assert not (clone / "data/nightcity").exists()
    dvc(clone, clone_env, "remote", "modify", "--local", "s3", "access_key_id", creds["AWS_ACCESS_KEY_ID"])
    dvc(clone, clone_env, "remote", "modify", "--local", "s3", "secret_access_key",
        creds["AWS_SECRET_ACCESS_KEY"])
    assert git(clone, clone_env, "status", "--porcelain") == ""  # config.local is ignored by git
    dvc(clone, clone_env, "pull")
    assert tree_bytes(clone / "data/nightcity") == tree_bytes(data)
    recorded = yaml.safe_load((clone / "data/nightcity.dvc").read_text())["outs"][0]["md5"]
    assert dir_md5(clone / "data/nightcity") == recorded


@pytest.mark.slow
@pytest.mark.s3
@pytest.mark.dvc
def test_materialise_fetches_a_revision_from_the_remote_without_a_checkout(moto_s3, tmp_path, monkeypatch):
    s3 = moto_s3
    bucket = s3.bucket()
    env = tool_env(tmp_path, {k: v for k, v in s3.env.items()
                              if k.startswith("AWS_") and k != "AWS_ENDPOINT_URL"})
    repo = init_repo(tmp_path / "origin", env)
    data = _small_data(repo / "data" / "nightcity", seed=2)
    dvc(repo, env, "add", "-q", "data/nightcity")
    # the committed endpoint is the cluster's MinIO, unreachable here; this machine overrides
    # it in .dvc/config.local, and materialise's callers override it too
    _with_s3_remote(repo, env, f"s3://{bucket}/dvcstore", "http://minio.invalid:9000")
    dvc(repo, env, "remote", "modify", "--local", "s3", "endpointurl", s3.endpoint)
    rev1, files1 = commit(repo, env, "v1"), tree_bytes(data)
    dvc(repo, env, "push", "-q")
    shutil.rmtree(data)
    _small_data(data, seed=3)
    dvc(repo, env, "add", "-q", "data/nightcity")
    rev2, files2 = commit(repo, env, "v2"), tree_bytes(data)
    dvc(repo, env, "push", "-q")
    assert files1 != files2
    bare = tmp_path / "origin.git"
    git(tmp_path, env, "clone", "-q", "--bare", str(repo), str(bare))
    shutil.rmtree(repo / ".dvc" / "cache")  # the remote is now the only copy of the data

    isolate_inprocess(monkeypatch, tmp_path / "consumer")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, s3.env[key])
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    got1 = tree_bytes(materialise(f"file://{bare}", rev1, out=tmp_path / "v1",
                                  remote_config={"endpointurl": s3.endpoint}))
    monkeypatch.setenv("EGNET_DVC_ENDPOINT_URL", s3.endpoint)  # the same, from the environment
    got2 = tree_bytes(materialise(f"file://{bare}", rev2, out=tmp_path / "v2"))
    for got in (got1, got2):
        marker = json.loads(got.pop(".egnet-data-version.json"))
        assert marker["md5"].endswith(".dir")
    assert got1 == files1 and got2 == files2
