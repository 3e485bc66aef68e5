"""`egnet predict IMAGE... --model CKPT_OR_URI --out DIR`: segment images with the paper protocol.

Per image ``<stem>`` (output at the input image's size, same inference as
``egnet evaluate``: resize to ``evaluate.infer_size``, predict, resize logits
bilinearly back, argmax):

    OUT/<stem>_labelIds.png            Cityscapes labelIds (8-bit): `egnet score OUT` reads it
    OUT/color/<stem>_color.png         Cityscapes palette colours
    OUT/exposure/<stem>_exposure.png   predicted exposure map, V * 255 (8-bit), if the model has the head
    OUT/predictions.json               model source, protocol, one entry per image

Colour and exposure PNGs sit in subfolders so the top level holds exactly one
prediction per stem (tools that glob ``*<stem>*.png`` find one file).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tqdm import tqdm

from egnet.core.config import Config
from egnet.core.errors import ConfigError
from egnet.core.files import atomic_dir, write_json
from egnet.data import layout
from egnet.data.labels import colorize, to_label_ids
from egnet.evaluation import inference


def output_names(stem: str) -> dict[str, str]:
    """Relative output paths for one image stem."""
    return {
        "labelIds": f"{stem}_labelIds.png",
        "color": f"color/{stem}_color.png",
        "exposure": f"exposure/{stem}_exposure.png",
    }


def exposure_png(v: np.ndarray) -> np.ndarray:
    """HxW float V map in [0, 1] -> HxW uint8 (V * 255, rounded)."""
    return np.clip(np.rint(v * 255.0), 0, 255).astype(np.uint8)


def main(args: argparse.Namespace, cfg: Config) -> int:
    images = [Path(p) for p in args.images]
    stems: dict[str, Path] = {}
    for p in images:
        if p.stem in stems:
            raise ConfigError(f"{p}: same file name as {stems[p.stem]}; outputs are named by stem")
        stems[p.stem] = p
    for p in images:
        if not p.is_file():
            raise ConfigError(f"{p}: no such image file")
    loaded = inference.load(args.model, cfg)
    infer_size = cfg.evaluate.infer_size
    entries = []
    with atomic_dir(args.out) as tmp:
        (tmp / "color").mkdir()
        if loaded.has_exposure_head:
            (tmp / "exposure").mkdir()
        stream = inference.prefetch(lambda p: (p, layout.read_image(p)), images)
        for path, image in tqdm(stream, total=len(images), desc="predict", unit="img", disable=None):
            x = inference.to_tensor(image, loaded.device)
            size = (image.shape[1], image.shape[0])
            pred = inference.predict(loaded.model, x, size, infer_size)["paper"]
            train_ids = pred.train_ids.to("cpu").numpy().astype(np.uint8)
            names = output_names(path.stem)
            layout.write_png(tmp / names["labelIds"], to_label_ids(train_ids), rgb=False)
            layout.write_png(tmp / names["color"], colorize(train_ids))
            entry = {"image": str(path), "labelIds": names["labelIds"], "color": names["color"],
                     "size": list(size)}
            if pred.exposure is not None:
                layout.write_png(tmp / names["exposure"], exposure_png(pred.exposure.cpu().numpy()),
                                 rgb=False)
                entry["exposure"] = names["exposure"]
            entries.append(entry)
        write_json(tmp / "predictions.json", {
            "model": loaded.source.to_dict(),
            "protocol": {**inference.describe_protocol(cfg, ["paper"]),
                         "output_size": "the input image's size"},
            "images": entries,
        })
    print(f"wrote {len(entries)} prediction(s) to {args.out} (model {loaded.source.spec})")
    return 0
