"""Static checks of k8s/: the kustomize overlays and the per-run training templates.

No cluster here: manifests are rendered (`kubectl kustomize`, or tests/support/kustomize.py)
and checked against the Kubernetes schemas of K8S_VERSION in strict mode, the pinned
Kubeflow CRD schemas, and the rules of issue 8 (security context, resources, pinned
images, no credentials, least-privilege RBAC, NetworkPolicy reachability). Cross-file
consistency is checked too: every Secret/ConfigMap key a pod reads exists, every
$(VAR) the kubelet must expand is defined, the images' user and HOME match the pods.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from tests.support import REPO
from tests.support.k8s import (
    K8S,
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
    load_docs,
    pod_views,
    render,
    render_kubectl,
    selector_matches,
    walk,
)

OVERLAYS = {"dev": K8S / "overlays" / "dev", "prod": K8S / "overlays" / "prod"}
TRAINJOB = K8S / "training" / "trainjob.yaml"
PYTORCHJOB = K8S / "training" / "pytorchjob.yaml"
ACCESS = {"egnet.io/pipeline-access": "true"}


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


# --- rendering ----------------------------------------------------------------------

@pytest.mark.parametrize("env", sorted(OVERLAYS))
def test_overlays_render_into_one_namespace(env):
    objs = render(OVERLAYS[env])
    assert len(objs) >= 9
    assert {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"} == {"egnet"}
    # the namespace itself (cluster-scoped), with Pod Security Admission `restricted` enforced
    assert find(objs, "Namespace", "egnet")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == \
        "restricted"
    assert all(o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "egnet" for o in objs)
    names = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert len(names) == len(set(names)), "duplicate objects"


def test_dev_runs_minio_and_postgres_in_cluster_and_prod_does_not():
    def kinds(env):
        return {(o["kind"], o["metadata"]["name"]) for o in render(OVERLAYS[env])}

    dev, prod = kinds("dev"), kinds("prod")
    in_cluster = {("StatefulSet", "egnet-minio"), ("StatefulSet", "egnet-postgres"),
                  ("Service", "egnet-minio"), ("Service", "egnet-postgres"),
                  ("Job", "egnet-minio-setup"), ("NetworkPolicy", "egnet-minio"),
                  ("NetworkPolicy", "egnet-postgres")}
    assert in_cluster <= dev
    assert not in_cluster & prod
    assert not any("minio" in n or "postgres" in n for _, n in prod)
    shared = {("Deployment", "egnet-mlflow"), ("Service", "egnet-mlflow"), ("NetworkPolicy", "egnet-mlflow"),
              ("ConfigMap", "egnet-endpoints"), ("PersistentVolumeClaim", "egnet-data"),
              ("ServiceAccount", "egnet-train"),
              ("Role", "egnet-pipeline"), ("RoleBinding", "egnet-pipeline")}
    assert shared <= dev and shared <= prod
    # prod points at external services, dev at the in-cluster ones
    dev_cm = find(render(OVERLAYS["dev"]), "ConfigMap", "egnet-endpoints")["data"]
    prod_cm = find(render(OVERLAYS["prod"]), "ConfigMap", "egnet-endpoints")["data"]
    assert dev_cm["POSTGRES_HOST"] == "egnet-postgres" and dev_cm["AWS_ENDPOINT_URL"] == "http://egnet-minio:9000"
    assert "egnet-" not in prod_cm["POSTGRES_HOST"] and prod_cm["AWS_ENDPOINT_URL"].startswith("https://")
    assert prod_cm["PGSSLMODE"] in ("require", "verify-ca", "verify-full")


@pytest.mark.skipif(kubectl() is None, reason="kubectl not installed: nothing to compare the fallback with")
@pytest.mark.parametrize("path", [K8S / "base", *OVERLAYS.values()], ids=["base", *OVERLAYS])
def test_fallback_renderer_matches_kubectl_kustomize(path):
    from tests.support.kustomize import build

    def key(o):
        return (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])

    ours = {key(o): o for o in build(path)}
    theirs = {key(o): o for o in render_kubectl(path)}
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert ours[k] == theirs[k], k


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

    runtime = tj["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]
    patch_pod = runtime["template"]["spec"]["replicatedJobs"][0]
    assert patch_pod["name"] == "node"
    # v2.1's field name is gone in v2.3
    assert errors(lambda o: o["spec"].update(podTemplateOverrides=[{"targetJobs": [{"name": "node"}]}]))
    # resources are not patchable per container in v2.3 (they go in trainer.resourcesPerNode)
    assert errors(lambda o: o["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
                  ["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]
                  .update(resources={"limits": {"cpu": "1"}}))
    # CEL rule on the name, list-map uniqueness, quantities, integer types
    assert errors(lambda o: o["metadata"].update(name="Egnet_Train"))
    assert errors(lambda o: o["spec"]["trainer"]["env"].append({"name": "TORCH_HOME", "value": "/x"}))
    assert errors(lambda o: o["spec"]["trainer"]["resourcesPerNode"]["limits"].update(cpu="lots"))
    assert errors(lambda o: o["spec"]["trainer"].update(numNodes="2"))
    assert errors(lambda o: o["metadata"].update(labelz={}))
    # int-or-string quantities take both forms
    assert not errors(lambda o: o["spec"]["trainer"]["resourcesPerNode"]["limits"].update(cpu=16))


def test_cel_subset_evaluator():
    dns_label = "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
    assert cel_holds(dns_label, {"metadata": {"name": "a-1"}})
    assert not cel_holds(dns_label, {"metadata": {"name": "a-"}})
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
    assert ("@sha256:" in image) or (name and tag and "/" not in tag), f"{where}: {image} has no tag"
    assert tag != "latest" and not image.endswith(":latest")


@pytest.mark.parametrize("item", containers(), ids=ids(containers()))
def test_kubelet_expansions_are_defined(item):
    """$(VAR) in command/args is expanded by the kubelet only from the container's env."""
    where, _, _, c = item
    defined = {e["name"] for e in c.get("env", [])}
    if where.startswith("training:PyTorchJob"):
        defined |= {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK"}  # set by the operator
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

def secret_templates() -> dict[str, set[str]]:
    out = {}
    for path in sorted((K8S / "secret-templates").glob("*.example.yaml")):
        (obj,) = load_docs(path)
        assert obj["kind"] == "Secret" and "data" not in obj, path
        assert all(v == "" for v in obj["stringData"].values()), f"{path}: holds a value"
        out[obj["metadata"]["name"]] = set(obj["stringData"])
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
        for node in walk(obj):
            if "secretKeyRef" in node:
                ref = node["secretKeyRef"]
                assert ref["key"] in templates.get(ref["name"], set()), f"{origin}: {ref}"
            if "secretRef" in node or "secretName" in node:
                raise AssertionError(f"{origin}: unexpected secret use {node}")
    for env, d in OVERLAYS.items():
        objs = render(d)
        data = find(objs, "ConfigMap", "egnet-endpoints")["data"]
        refs = [n["configMapKeyRef"] for o in [*objs, *training_objects()] for n in walk(o)
                if "configMapKeyRef" in n]
        assert refs
        for ref in refs:
            assert ref["name"] == "egnet-endpoints" and ref["key"] in data, f"{env}: {ref}"
        # secrets a dev pod reads are all documented for dev; prod needs no MinIO root
        used = {n["secretKeyRef"]["name"] for o in objs for n in walk(o) if "secretKeyRef" in n}
        assert used == ({"egnet-s3", "egnet-postgres", "egnet-minio-root"} if env == "dev"
                        else {"egnet-s3", "egnet-postgres"})


def test_pvcs_and_service_accounts_referenced_exist():
    base = render(OVERLAYS["dev"])
    claims = {o["metadata"]["name"] for o in base if o["kind"] == "PersistentVolumeClaim"}
    accounts = {o["metadata"]["name"] for o in base if o["kind"] == "ServiceAccount"}
    for obj in [*base, *training_objects()]:
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
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): r for r in role["rules"]}
    assert set(rules) == {(("trainer.kubeflow.org",), ("trainjobs",)), (("kubeflow.org",), ("pytorchjobs",)),
                          (("",), ("secrets",)), (("",), ("pods",)), (("",), ("pods/log",))}
    for r in role["rules"]:
        assert "*" not in r["verbs"] + r["apiGroups"] + r["resources"]
    # delete: a retried step re-creates a Failed/Suspended job; SIGTERM and the exit handler stop one
    for key in [(("trainer.kubeflow.org",), ("trainjobs",)), (("kubeflow.org",), ("pytorchjobs",))]:
        assert set(rules[key]["verbs"]) == {"create", "get", "list", "watch", "delete"}
    # the launcher reads its job's pods and rank 0's log, and changes no pod
    assert set(rules[(("",), ("pods",))]["verbs"]) == {"get", "list"}
    assert rules[(("",), ("pods/log",))]["verbs"] == ["get"]
    secrets = rules[(("",), ("secrets",))]
    assert secrets["verbs"] == ["get"] and secrets["resourceNames"] == ["egnet-s3"]
    assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    binding = find(objs, "RoleBinding", "egnet-pipeline")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "egnet-pipeline"}
    # KFP's run accounts (standalone: pipeline-runner, Kubeflow profile: default-editor)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": n, "namespace": "egnet"}
                                   for n in ("pipeline-runner", "default-editor")]
    # the servers and the training pods get no API token
    assert [o["metadata"]["name"] for o in objs if o["kind"] == "ServiceAccount"] == ["egnet-train"]
    assert find(objs, "ServiceAccount", "egnet-train")["automountServiceAccountToken"] is False
    for obj in objs:
        for where, _, spec, _ in pod_views(obj):
            assert spec.get("automountServiceAccountToken") is False, where


# --- network ------------------------------------------------------------------------

def pods(objs) -> dict[str, tuple[dict, dict]]:
    return {where: (meta.get("labels", {}), spec) for o in objs for where, meta, spec, _ in pod_views(o)}


@pytest.mark.parametrize("env", sorted(OVERLAYS))
def test_only_pipeline_and_training_pods_reach_mlflow_and_minio(env):
    objs = render(OVERLAYS[env])
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    labels = {w: lab for w, (lab, _) in pods(objs).items()}
    mlflow = labels["Deployment/egnet-mlflow"]
    pipeline_pod = {**ACCESS, "pipelines.kubeflow.org/v2_component": "true"}
    stranger = {"app": "something-else"}
    training = [meta.get("labels", {}) for o in training_objects() for _, meta, _, _ in pod_views(o)]
    for src in [pipeline_pod, *training]:
        assert ingress_allowed(policies, src, mlflow, 5000)
    assert not ingress_allowed(policies, stranger, mlflow, 5000)
    assert not ingress_allowed(policies, pipeline_pod, mlflow, 22)
    if env == "dev":
        minio, postgres = labels["StatefulSet/egnet-minio"], labels["StatefulSet/egnet-postgres"]
        for src in [pipeline_pod, *training, mlflow, labels["Job/egnet-minio-setup"]]:
            assert ingress_allowed(policies, src, minio, 9000)
        assert not ingress_allowed(policies, stranger, minio, 9000)
        assert ingress_allowed(policies, mlflow, postgres, 5432)
        for src in [pipeline_pod, *training, stranger]:
            assert not ingress_allowed(policies, src, postgres, 5432)
    # every policy protects something that exists
    for p in policies:
        assert any(selector_matches(p["spec"]["podSelector"], lab) for lab in labels.values()), p["metadata"]


@pytest.mark.parametrize("env", sorted(OVERLAYS))
def test_services_select_pods_and_ports_exist(env):
    objs = render(OVERLAYS[env])
    all_pods = pods(objs)
    for svc in [o for o in objs if o["kind"] == "Service"]:
        hits = [(w, spec) for w, (lab, spec) in all_pods.items() if selector_matches(
            {"matchLabels": svc["spec"]["selector"]}, lab)]
        assert len(hits) == 1, svc["metadata"]["name"]
        ports = {p["name"] for c in hits[0][1]["containers"] for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports
    for where, (_, spec) in all_pods.items():
        for c in spec["containers"]:
            ports = {p["name"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                assert port is None or port in ports, f"{where}: {probe}"


# --- MLflow server ----------------------------------------------------------------

def mlflow_args(env: str) -> dict[str, str]:
    dep = find(render(OVERLAYS[env]), "Deployment", "egnet-mlflow")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["mlflow", "server"]
    return dict(a.removeprefix("--").split("=", 1) for a in c["args"])


@pytest.mark.parametrize("env", sorted(OVERLAYS))
def test_mlflow_server_uses_postgres_proxied_s3_and_host_checks(env):
    args = mlflow_args(env)
    assert args["backend-store-uri"] == "postgresql+psycopg://$(POSTGRES_HOST):$(POSTGRES_PORT)/$(POSTGRES_DB)"
    assert args["artifacts-destination"].startswith("s3://$(S3_BUCKET)/")
    assert "no-serve-artifacts" not in args and "default-artifact-root" not in args
    dep = find(render(OVERLAYS[env]), "Deployment", "egnet-mlflow")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"
    env_from_secret = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"]
                       if "secretKeyRef" in e.get("valueFrom", {})}
    assert env_from_secret["PGPASSWORD"] == {"name": "egnet-postgres", "key": "POSTGRES_PASSWORD"}

    # The server's own host check (mlflow.server.security_utils) against our list.
    from mlflow.server.security_utils import is_allowed_host_header

    allowed = args["allowed-hosts"].split(",")
    tracking = find(render(OVERLAYS[env]), "ConfigMap", "egnet-endpoints")["data"]["MLFLOW_TRACKING_URI"]
    for host in [tracking.removeprefix("http://"), "egnet-mlflow.egnet.svc.cluster.local:5000",
                 "egnet-mlflow.egnet.svc:5000", "localhost:5000", "127.0.0.1:5000"]:
        assert is_allowed_host_header(allowed, host), host
    for host in ["evil.example.com", "10.1.2.3:5000", "egnet-mlflowx.attacker.net"]:
        assert not is_allowed_host_header(allowed, host), host


def test_pods_running_the_egnet_image_match_its_user_and_home():
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    uid = int(re.search(r"^USER (\d+)", dockerfile, re.M)[1])
    home = re.search(r"HOME=(\S+)", dockerfile)[1]
    checked = 0
    for where, _, spec, c in containers():
        if re.search(r"/egnet:|^egnet", c["image"]):
            assert effective(c, spec, "runAsUser") == uid, where
            assert home in {m["mountPath"] for m in c["volumeMounts"]}, f"{where}: HOME not writable"
            checked += 1
    assert checked >= 5


def test_training_templates_are_not_in_the_kustomizations():
    for env, d in OVERLAYS.items():
        assert not [o for o in render(d) if o["kind"] in ("TrainJob", "PyTorchJob")], env
    for k in (K8S / "base" / "kustomization.yaml", *(d / "kustomization.yaml" for d in OVERLAYS.values())):
        assert "training" not in k.read_text().split("resources:")[1], k


def test_documented_in_deploy_guide():
    guide = (REPO / "docs" / "deploy.md").read_text()
    assert re.search(r"kubectl (-n \S+ )?create secret generic egnet-s3", guide)
    for needle in ["make image", "kubectl apply -k k8s/overlays/dev", "kubectl apply -k k8s/overlays/prod",
                   "dvc remote modify cluster endpointurl", "dvc push", "egnet pipeline submit --host",
                   "egnet pipeline schedule --host",
                   '--cron "0 0 3 * * 0"', "egnet promote", "egnet promote --rollback", "port-forward",
                   "GPU sizing", "benchmarks/gpu_train.sh"]:
        assert needle in guide, needle
    for path in Path(K8S / "secret-templates").glob("*.example.yaml"):
        assert path.name.split(".")[0] in guide, path.name

