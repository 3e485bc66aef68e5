"""A small kustomize for the subset k8s/ uses, for machines without `kubectl kustomize`.

Supported kustomization fields: `resources` (files and directories), `namespace` or
an inline builtin NamespaceTransformer (`setRoleBindingSubjects: allServiceAccounts`
also moves every ServiceAccount subject of a RoleBinding), `labels` (metadata labels
only, i.e. includeSelectors/includeTemplates false), `patches` (strategic-merge patch
files whose kind/name pick the target) and `images`.
Anything else raises, so a kustomization that grows past this subset fails loudly
instead of rendering differently from kubectl. tests/deploy/test_k8s.py checks that this
renderer and `kubectl kustomize` agree whenever kubectl is installed.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "transformers", "labels", "patches", "images"}
# Lists merged item by item on this key by a strategic-merge patch (Kubernetes'
# patchMergeKey for the fields k8s/ patches); every other list is replaced.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name", "env": "name",
              "volumeMounts": "mountPath", "ports": "containerPort"}


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _smp(base, patch, key: str | None = None):
    """Strategic-merge ``patch`` into ``base`` (new object); None deletes a field."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = _smp(out[k], v, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_KEYS:
        mk = MERGE_KEYS[key]
        out = [copy.deepcopy(x) for x in base]
        for item in patch:
            idx = next((i for i, x in enumerate(out) if x.get(mk) == item.get(mk)), None)
            if idx is None:
                out.append(copy.deepcopy(item))
            else:
                out[idx] = _smp(out[idx], item)
        return out
    return copy.deepcopy(patch)


def _split_image(image: str) -> tuple[str, str]:
    """'reg:5000/a/b:tag@sha' -> ('reg:5000/a/b', ':tag@sha')."""
    at = image.find("@")
    name, digest = (image[:at], image[at:]) if at >= 0 else (image, "")
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        return name[:colon], name[colon:] + digest
    return name, digest


def _set_images(obj: dict, images: list[dict]) -> None:
    def visit(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("containers", "initContainers") and isinstance(v, list):
                    for c in v:
                        if isinstance(c, dict) and "image" in c:
                            c["image"] = _new_image(c["image"], images)
                visit(v)
        elif isinstance(node, list):
            for v in node:
                visit(v)
    visit(obj)


def _new_image(image: str, images: list[dict]) -> str:
    name, suffix = _split_image(image)
    for rule in images:
        if rule["name"] != name:
            continue
        unknown = set(rule) - {"name", "newName", "newTag", "digest"}
        if unknown:
            raise NotImplementedError(f"images field(s) {sorted(unknown)}")
        new_name = rule.get("newName", name)
        if "digest" in rule:
            return f"{new_name}@{rule['digest']}"
        if "newTag" in rule:
            return f"{new_name}:{rule['newTag']}"
        return new_name + suffix
    return image


def _set_namespace(objs: list[dict], namespace: str, move_subject) -> None:
    for o in objs:
        if o["kind"] == "Namespace":    # cluster-scoped: kustomize leaves it (and its name) alone
            continue
        o["metadata"]["namespace"] = namespace
        if o["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            for s in o.get("subjects", []):
                if s.get("kind") == "ServiceAccount" and move_subject(s):
                    s["namespace"] = namespace


def build(directory: Path) -> list[dict]:
    """Render the kustomization in ``directory`` like `kubectl kustomize` (subset above)."""
    directory = Path(directory)
    kfile = directory / "kustomization.yaml"
    kust = yaml.safe_load(kfile.read_text())
    unknown = set(kust) - SUPPORTED
    if unknown:
        raise NotImplementedError(f"{kfile}: kustomization fields {sorted(unknown)} not supported")
    objs: list[dict] = []
    for res in kust.get("resources", []):
        path = directory / res
        objs.extend(build(path) if path.is_dir() else _docs(path))
    for entry in kust.get("patches", []):
        if set(entry) != {"path"}:
            raise NotImplementedError(f"{kfile}: only `patches: - path:` is supported")
        for patch in _docs(directory / entry["path"]):
            target = [o for o in objs if o["kind"] == patch["kind"]
                      and o["metadata"]["name"] == patch["metadata"]["name"]]
            if len(target) != 1:
                raise ValueError(f"{entry['path']}: patch matches {len(target)} objects")
            objs[objs.index(target[0])] = _smp(target[0], patch)
    if "namespace" in kust:
        # `namespace:` moves only the subjects that are ServiceAccounts of this build
        accounts = {o["metadata"]["name"] for o in objs if o["kind"] == "ServiceAccount"}
        _set_namespace(objs, kust["namespace"], lambda s: s["name"] in accounts)
    for text in kust.get("transformers", []):
        t = yaml.safe_load(text) if isinstance(text, str) else None
        if not t or t.get("kind") != "NamespaceTransformer" or set(t) - {
                "apiVersion", "kind", "metadata", "setRoleBindingSubjects"}:
            raise NotImplementedError(f"{kfile}: only an inline builtin NamespaceTransformer is supported")
        mode = t.get("setRoleBindingSubjects", "defaultOnly")
        if mode != "allServiceAccounts":
            raise NotImplementedError(f"{kfile}: setRoleBindingSubjects {mode}")
        _set_namespace(objs, t["metadata"]["namespace"], lambda s: True)
    for entry in kust.get("labels", []):
        if entry.get("includeSelectors") or entry.get("includeTemplates"):
            raise NotImplementedError(f"{kfile}: labels with includeSelectors/includeTemplates")
        for o in objs:
            o["metadata"].setdefault("labels", {}).update(entry["pairs"])
    if "images" in kust:
        for o in objs:
            _set_images(o, kust["images"])
    return objs
