"""Parameters and GFLOPs of every model variant, counted (never typed in), as a markdown table.

    .venv/bin/python benchmarks/count_flops.py              # print, and rewrite the tables in docs/models.md
    .venv/bin/python benchmarks/count_flops.py --no-write   # print only
    .venv/bin/python benchmarks/count_flops.py --configs resnet50:16 --no-write

By default two tables: the paper's configuration (resnet101, stride 8) and the quick
profile's (resnet18, stride 16).

Models are built on the meta device, so nothing is computed or allocated: the counts
come from torch.utils.flop_counter.FlopCounterMode over one inference forward pass
(batch 1; a multiply-add = 2 FLOPs; convolutions/matmuls only). The table in
docs/models.md sits between the BEGIN/END markers below and is replaced as a whole.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from egnet.core.config import VARIANTS, ModelConfig
from egnet.core.files import atomic_file
from egnet.models import BASELINES, build_model, count_flops, count_parameters

BEGIN = "<!-- count_flops:begin (written by benchmarks/count_flops.py; do not edit by hand) -->"
END = "<!-- count_flops:end -->"
SIZES = ((300, 300), (1024, 512))  # (width, height): the paper's training crop and NightCity images
REFERENCE = "fcn_resnet101"


def model_config(variant: str, backbone: str, output_stride: int) -> ModelConfig:
    """The paper's model section for ``variant`` (19 classes, EGL after S2-S4, w1=1, w2=0.3).

    The torchvision baselines are ResNet-101 at stride 8 whatever ``backbone`` says.
    """
    if variant in BASELINES:
        backbone, output_stride = "resnet101", 8
    return ModelConfig(
        variant=variant, backbone=backbone, output_stride=output_stride, backbone_weights="none",
        num_classes=19, egl_positions=(2, 3, 4), egl_w1=1.0, egl_w2=0.3,
    )


def measure(backbone: str, output_stride: int, sizes=SIZES) -> dict[str, dict[str, float]]:
    """{variant: {"params": count, "W x H": FLOPs, ...}} for every variant."""
    rows: dict[str, dict[str, float]] = {}
    for variant in VARIANTS:
        with torch.device("meta"):
            model = build_model(model_config(variant, backbone, output_stride))
        row: dict[str, float] = {"params": count_parameters(model)}
        for w, h in sizes:
            row[f"{w}x{h}"] = count_flops(model, height=h, width=w)
        rows[variant] = row
    return rows


def table(rows: dict[str, dict[str, float]], backbone: str, output_stride: int, sizes=SIZES) -> str:
    """Markdown: params (M) and GFLOPs per input size, with the ratio to FCN-ResNet101."""
    ref = rows[REFERENCE]
    head = ["variant", "params"] + [f"GFLOPs {w}x{h}" for w, h in sizes] + [f"FLOPs / {REFERENCE}"]
    lines = [
        f"**EGNet family: {backbone}, output stride {output_stride}**; "
        "baselines always ResNet-101, stride 8. "
        "19 classes, batch 1, inference forward; 1 multiply-add = 2 FLOPs.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    last = f"{sizes[-1][0]}x{sizes[-1][1]}"
    for variant, row in rows.items():
        cells = [f"`{variant}`", f"{row['params']:,}"]
        cells += [f"{row[f'{w}x{h}'] / 1e9:.0f}" for w, h in sizes]
        cells.append(f"{row[last] / ref[last]:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_section(doc: Path, body: str) -> None:
    """Replace the text between BEGIN and END in ``doc`` (append the block if absent)."""
    text = doc.read_text() if doc.exists() else ""
    block = f"{BEGIN}\n{body}\n{END}"
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        text = before + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    with atomic_file(doc) as fh:
        fh.write(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="resnet101:8,resnet18:16", help="backbone:output_stride,...")
    parser.add_argument("--doc", type=Path,
                        default=Path(__file__).resolve().parents[1] / "docs" / "models.md")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    tables = []
    for item in args.configs.split(","):
        backbone, _, stride = item.partition(":")
        tables.append(table(measure(backbone, int(stride)), backbone, int(stride)))
    body = "\n\n".join(tables)
    print(body)
    if not args.no_write:
        write_section(args.doc, body)
        print(f"\nwritten to {args.doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
