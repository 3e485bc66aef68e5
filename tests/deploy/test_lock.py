"""The images' lock files (requirements/, `make lock`) agree with pyproject.toml.

The images install requirements/images.lock (egnet's dependencies and the `server` extra,
everything but torch/torchvision) and requirements/torch-cpu.lock (the CPU image's torch) with
``pip install --require-hashes --no-deps``; the CUDA image takes torch from its base. So a
dependency added to or changed in pyproject.toml without `make lock` must fail here: every
direct requirement is locked at a version its specifier allows (its extras' packages too),
everything the lock says comes from pyproject.toml is still in it, every locked file has a
hash, and torch's pins match in all three places.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from importlib import metadata

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.support import REPO

REQ = REPO / "requirements"
#: torch/torchvision are pinned in pyproject and come from the CUDA base image or torch-cpu.lock
TORCH = {"torch", "torchvision"}
FROM_PYPROJECT = "egnet (pyproject.toml)"


@dataclass
class Locked:
    version: str
    hashes: list[str] = field(default_factory=list)
    via: set[str] = field(default_factory=set)


def parse_lock(text: str) -> dict[str, Locked]:
    """``name==version \\ --hash=...`` entries with their ``# via`` annotations (uv's format)."""
    out: dict[str, Locked] = {}
    current: Locked | None = None
    in_via = False
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==(\S+)", line)
        if m:
            current = out.setdefault(canonicalize_name(m[1]), Locked(m[3]))
            in_via = False
            continue
        if current is None:
            continue
        stripped = line.strip()
        if stripped.startswith("--hash=sha256:"):
            current.hashes.append(stripped.split(":", 1)[1].rstrip(" \\"))
        elif stripped.startswith("# via"):
            rest = stripped.removeprefix("# via").strip()
            in_via = not rest
            if rest:
                current.via.add(rest)
        elif in_via and stripped.startswith("#   "):
            current.via.add(stripped.removeprefix("#").strip())
        else:
            in_via = False
    return out


def pyproject_requirements(pyproject: dict) -> list[Requirement]:
    project = pyproject["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["server"]]


def extra_requirements(name: str, version: str, extras: set[str]) -> list[Requirement]:
    """What ``name[extras]`` adds, from the installed distribution's metadata when it is the locked
    version (the dev venv has the same MLflow); [] when it is not installed at that version."""
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return []
    if dist.version != version:
        return []
    out = []
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker and any(req.marker.evaluate({"extra": e}) for e in extras) \
                and not req.marker.evaluate({"extra": ""}):
            out.append(req)
    return out


def disagreements(pyproject: dict, lock: dict[str, Locked], torch_lock: dict[str, Locked]) -> list[str]:
    """Every way the locks and pyproject.toml disagree, one line each ([] when they agree)."""
    problems = []
    direct = set()
    for req in pyproject_requirements(pyproject):
        name = canonicalize_name(req.name)
        direct.add(name)
        if name in TORCH:
            locked = torch_lock.get(name)
            if locked is None or not req.specifier.contains(Version(locked.version).public):
                problems.append(f"{req}: torch-cpu.lock has {locked.version if locked else 'nothing'}")
            continue
        if name not in lock:
            problems.append(f"{req}: not in images.lock (run `make lock`)")
            continue
        if not req.specifier.contains(lock[name].version, prereleases=True):
            problems.append(f"{req}: images.lock pins {name}=={lock[name].version} (run `make lock`)")
        for sub in extra_requirements(req.name, lock[name].version, set(req.extras)):
            if canonicalize_name(sub.name) not in lock:
                problems.append(f"{req}: its extra needs {sub.name}, not in images.lock (run `make lock`)")
    for name, locked in lock.items():
        if FROM_PYPROJECT in locked.via and name not in direct:
            problems.append(f"{name}=={locked.version}: images.lock has it from pyproject.toml, "
                            "which no longer asks for it (run `make lock`)")
        if not locked.hashes:
            problems.append(f"{name}=={locked.version}: no hash in images.lock")
    if TORCH & set(lock):
        problems.append("images.lock holds torch/torchvision: they come from the base image / torch-cpu.lock")
    return problems


def load() -> tuple[dict, dict[str, Locked], dict[str, Locked]]:
    return (tomllib.loads((REPO / "pyproject.toml").read_text()),
            parse_lock((REQ / "images.lock").read_text()), parse_lock((REQ / "torch-cpu.lock").read_text()))


def test_the_locks_agree_with_pyproject():
    pyproject, lock, torch_lock = load()
    assert len(lock) > 100
    assert disagreements(pyproject, lock, torch_lock) == []
    # the server extra brought MLflow's basic-auth dependency
    assert "flask-wtf" in lock and "psycopg-binary" in lock


def test_a_change_on_either_side_is_caught():
    pyproject, lock, torch_lock = load()

    def problems_after(change) -> list[str]:
        p, lk, tl = copy.deepcopy(pyproject), copy.deepcopy(lock), copy.deepcopy(torch_lock)
        change(p, lk, tl)
        return disagreements(p, lk, tl)

    deps = "dependencies"
    # a pin moved in pyproject.toml, but not in the lock
    assert any("kfp" in x for x in problems_after(
        lambda p, lk, tl: p["project"][deps].__setitem__(
            next(i for i, d in enumerate(p["project"][deps]) if d.startswith("kfp>")), "kfp>=99")))
    # a new dependency, not locked
    assert any("brand-new-pkg" in x for x in problems_after(
        lambda p, lk, tl: p["project"][deps].append("brand-new-pkg>=1")))
    # a dependency dropped from pyproject.toml, still locked as coming from it
    def drop_tqdm(p, lk, tl):
        p["project"][deps] = [d for d in p["project"][deps] if not d.startswith("tqdm")]

    assert any(x.startswith("tqdm==") for x in problems_after(drop_tqdm))
    # an extra's package missing from the lock
    assert any("flask" in x.lower() for x in problems_after(lambda p, lk, tl: lk.pop("flask-wtf")))
    # torch pinned differently in pyproject.toml and torch-cpu.lock
    assert any("torch" in x for x in problems_after(
        lambda p, lk, tl: tl.__setitem__("torch", Locked("2.13.0+cpu", ["x"]))))
    # a hash-less entry
    assert any("no hash" in x for x in problems_after(lambda p, lk, tl: lk["numpy"].hashes.clear()))


def test_torch_runtime_input_matches_torch():
    """requirements/torch-runtime.in = what torch/torchvision need besides CUDA (the CPU image
    installs torch --no-deps from torch-cpu.lock, so images.lock must hold these)."""
    listed = {canonicalize_name(Requirement(line).name): Requirement(line)
              for line in (REQ / "torch-runtime.in").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    needed = set()
    for dist in ("torch", "torchvision"):
        assert metadata.version(dist).split("+")[0] in ("2.14.1", "0.29.1")
        for text in metadata.requires(dist) or []:
            req = Requirement(text)
            name = canonicalize_name(req.name)
            cuda = req.marker is not None and "platform_system" in str(req.marker)
            extra = req.marker is not None and "extra" in str(req.marker)
            if not cuda and not extra and name not in TORCH:
                needed.add(name)
                assert str(req.specifier) == str(listed[name].specifier) if name in listed else False, req
    assert set(listed) == needed
    lock = parse_lock((REQ / "images.lock").read_text())
    for name, req in listed.items():
        assert req.specifier.contains(lock[name].version), (name, lock[name].version)


def test_the_lock_header_is_the_make_lock_command():
    header = (REQ / "images.lock").read_text().splitlines()[1]
    makefile = (REPO / "Makefile").read_text()
    for part in ("pyproject.toml", "requirements/build.in", "requirements/torch-runtime.in", "--extra server",
                 "--override requirements/no-torch.txt", "--generate-hashes", "--python-version 3.11",
                 "--python-platform x86_64-manylinux_2_28"):
        assert part in header, part
        assert part in makefile, part
    torch_lock = (REQ / "torch-cpu.lock").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_lock
    assert re.search(r"^UV_VERSION := \d+\.\d+\.\d+$", makefile, re.M), "uv pinned (from PyPI)"
