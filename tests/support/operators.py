"""Each training pod's command and environment as the Kubeflow controllers and the kubelet make
them from a TrainJob / PyTorchJob manifest, for running the "nodes" as local processes.

What each controller adds, read in its source (kubeflow/trainer tag ``v2.3.0``,
kubeflow/training-operator tag ``v1.9.0``; the pytorch env code is the same at v1.9.4):

- **Trainer v2.3.0**, ``pkg/runtime/framework/plugins/torch/torch.go`` ``EnforceMLPolicy``
  (l.110-166): ``spec.trainer.env`` is upserted into the runtime's ``node`` container (l.139-143),
  then ``PET_NNODES`` = numNodes (l.146-148), ``PET_NPROC_PER_NODE`` = numProcPerNode (l.121-124,
  "auto" only when unset), ``PET_NODE_RANK`` from the fieldRef
  ``metadata.annotations['batch.kubernetes.io/job-completion-index']`` (l.152-156: the pod's index
  in the JobSet's Indexed Job), ``PET_MASTER_ADDR`` = ``<job>-node-0-0.<job>`` (l.159-162) and
  ``PET_MASTER_PORT`` = ``ContainerTrainerPort`` = 29500 (l.163-165; ``pkg/constants/constants.go``
  l.72). No WORLD_SIZE, RANK, MASTER_*, PET_RDZV_* (the TODO at l.109: no elastic support).
  Command and args are the TrainJob's ``spec.trainer.command`` / ``args``.
- **Training Operator v1.9**, ``pkg/controller.v1/pytorch/envvar.go`` ``setPodEnv`` (l.43-127)
  appends to every container's own env, in this order: ``PYTHONUNBUFFERED=1``; with a Master
  replica the ``master.go`` ``Generate`` variables (l.33-61: MASTER_PORT, PET_MASTER_PORT = the
  ``pytorchjob-port`` container port, MASTER_ADDR, PET_MASTER_ADDR = ``<job>-master-0``), then
  ``WORLD_SIZE`` = pods x int(nprocPerNode) (l.62-64, ``getNprocPerNodeInt`` l.132-140), ``RANK`` =
  ``PET_NODE_RANK`` = replica index, +1 for Workers (l.77-96); ``PET_NPROC_PER_NODE`` =
  ``spec.nprocPerNode`` (l.99-104); with an ``elasticPolicy`` the ``elastic.go`` ``Generate``
  variables (l.68-122: PET_RDZV_ENDPOINT = ``<rdzvHost or job-worker-0>:<rdzvPort>`` l.146-169,
  PET_RDZV_BACKEND l.186-197, PET_NNODES = ``min:max`` l.124-144, PET_MAX_RESTARTS), else
  ``PET_NNODES`` = pods (l.117-123).
- **kubelet**: ``$(VAR)`` in command and args is replaced by the container's variable, ``$$(VAR)``
  stays literal ``$(VAR)``, an undefined reference is left as written (Kubernetes API reference,
  Container ``command``/``args``). ``valueFrom`` configMapKeyRef / secretKeyRef are resolved from the
  ConfigMap and Secret (``optional: true`` and missing: the variable is left out).

Local emulation (one machine): the pods' DNS names (``<job>-node-0-0.<job>``, ``<job>-master-0``)
become 127.0.0.1 and the fixed ports (29500, 23456) a free port, in every variable that holds them;
``torchrun`` becomes this interpreter's ``-m torch.distributed.run`` (the image's ``torchrun``
entry point runs the same module). Nothing else is changed.
"""

from __future__ import annotations

import re
import sys
from typing import Any

#: Trainer v2.3.0 pkg/constants/constants.go l.72; Training Operator v1.9 PyTorchJobDefaultPort
TRAINER_PORT, PYTORCHJOB_PORT = 29500, 23456
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def _resolve(env: list[dict[str, Any]], index: int, configmaps: dict[str, dict[str, str]],
             secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for e in env:
        if "value" in e:
            out[e["name"]] = str(e["value"])
            continue
        src = e["valueFrom"]
        if "fieldRef" in src:
            assert src["fieldRef"]["fieldPath"] == COMPLETION_INDEX, src
            out[e["name"]] = str(index)
            continue
        ref, store = ((src["configMapKeyRef"], configmaps) if "configMapKeyRef" in src
                      else (src["secretKeyRef"], secrets))
        value = store.get(ref["name"], {}).get(ref["key"])
        if value is None:
            assert ref.get("optional"), f"{e['name']}: {ref['name']}/{ref['key']} missing and not optional"
            continue
        out[e["name"]] = value
    return out


def expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion of one command/args item."""
    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return re.sub(r"\$\$|\$\((\w+)\)", sub, text)


def trainjob_pods(tj: dict[str, Any], configmaps, secrets) -> list[tuple[list[str], dict[str, str]]]:
    """(command + args, env) of each ``node`` pod of a TrainJob (Trainer v2.3.0 torch plugin)."""
    name, trainer = tj["metadata"]["name"], tj["spec"]["trainer"]
    nodes = int(trainer["numNodes"])
    nproc = str(trainer["numProcPerNode"]) if trainer.get("numProcPerNode") is not None else "auto"
    pods = []
    for i in range(nodes):
        env = list(trainer.get("env", [])) + [
            {"name": "PET_NNODES", "value": str(nodes)},
            {"name": "PET_NPROC_PER_NODE", "value": nproc},
            {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}}},
            {"name": "PET_MASTER_ADDR", "value": f"{name}-node-0-0.{name}"},
            {"name": "PET_MASTER_PORT", "value": str(TRAINER_PORT)},
        ]
        values = _resolve(env, i, configmaps, secrets)
        pods.append(([*trainer["command"], *trainer.get("args", [])], values))
    return pods


def _port(container: dict[str, Any]) -> int:
    return next((p["containerPort"] for p in container.get("ports", []) if p["name"] == "pytorchjob-port"),
                PYTORCHJOB_PORT)


def pytorchjob_pods(pj: dict[str, Any], configmaps, secrets) -> list[tuple[list[str], dict[str, str]]]:
    """(command + args, env) of each pod of a PyTorchJob (Training Operator v1.9), Master first."""
    name, spec = pj["metadata"]["name"], pj["spec"]
    replicas = spec["pytorchReplicaSpecs"]
    total = sum(int(r.get("replicas", 1)) for r in replicas.values())
    nproc_raw = spec.get("nprocPerNode", "auto")
    nproc = int(nproc_raw) if str(nproc_raw).isdigit() else 1
    elastic = spec.get("elasticPolicy")
    pods = []
    for rtype in ("Master", "Worker"):
        if rtype not in replicas:
            continue
        for index in range(int(replicas[rtype].get("replicas", 1))):
            (c,) = [c for c in replicas[rtype]["template"]["spec"]["containers"] if c["name"] == "pytorch"]
            env = list(c.get("env", [])) + [{"name": "PYTHONUNBUFFERED", "value": "1"}]
            if "Master" in replicas:
                port = _port(replicas["Master"]["template"]["spec"]["containers"][0])
                rank = index + (1 if rtype == "Worker" else 0)
                env += [{"name": "MASTER_PORT", "value": str(port)},
                        {"name": "PET_MASTER_PORT", "value": str(port)},
                        {"name": "MASTER_ADDR", "value": f"{name}-master-0"},
                        {"name": "PET_MASTER_ADDR", "value": f"{name}-master-0"},
                        {"name": "WORLD_SIZE", "value": str(total * nproc)},
                        {"name": "RANK", "value": str(rank)}, {"name": "PET_NODE_RANK", "value": str(rank)}]
            env.append({"name": "PET_NPROC_PER_NODE", "value": str(nproc_raw)})
            if elastic is not None:
                host = elastic.get("rdzvHost", f"{name}-worker-0")
                worker_pod = replicas["Worker"]["template"]["spec"]
                rport = elastic.get("rdzvPort", _port(worker_pod["containers"][0]))
                workers = int(replicas["Worker"].get("replicas", 1))
                lo, hi = elastic.get("minReplicas", workers), elastic.get("maxReplicas", workers)
                env += [{"name": "PET_RDZV_ENDPOINT", "value": f"{host}:{rport}"},
                        {"name": "PET_RDZV_BACKEND", "value": elastic.get("rdzvBackend", "c10d")},
                        {"name": "PET_NNODES", "value": f"{lo}:{hi}"}]
                if "maxRestarts" in elastic:
                    env.append({"name": "PET_MAX_RESTARTS", "value": str(elastic["maxRestarts"])})
            else:
                env.append({"name": "PET_NNODES", "value": str(total)})
            values = _resolve(env, index, configmaps, secrets)
            pods.append(([*c["command"], *c.get("args", [])], values))
    return pods


def local_pods(manifest: dict[str, Any], *, configmaps: dict[str, dict[str, str]],
               secrets: dict[str, dict[str, str]], port: int) -> list[tuple[list[str], dict[str, str]]]:
    """Each pod's (argv, env) on this machine: the controller's env, DNS names -> 127.0.0.1, the
    fixed port -> ``port``, the kubelet's ``$(VAR)`` expansion, ``torchrun`` -> this interpreter."""
    name = manifest["metadata"]["name"]
    if manifest["kind"] == "TrainJob":
        pods = trainjob_pods(manifest, configmaps, secrets)
        hosts, fixed = [f"{name}-node-0-0.{name}"], TRAINER_PORT
    else:
        pods = pytorchjob_pods(manifest, configmaps, secrets)
        hosts, fixed = [f"{name}-master-0"], PYTORCHJOB_PORT
    out = []
    for argv, env in pods:
        local = {}
        for k, v in env.items():
            for h in hosts:
                v = v.replace(f"{h}:{fixed}", f"127.0.0.1:{port}").replace(h, "127.0.0.1")
            local[k] = str(port) if v == str(fixed) and k.endswith("_PORT") else v
        cmd = [expand(a, local) for a in argv]
        if cmd[0] == "torchrun":
            cmd = [sys.executable, "-m", "torch.distributed.run", *cmd[1:]]
        out.append((cmd, local))
    return out
