"""Synthetic NightCity-format data: procedural night street scenes in the release layout.

``generate`` writes datasets (`egnet data synth`); ``scene`` holds the camera, layers and
lighting, ``street`` the street's structure, ``objects`` the things placed in it.
"""

from egnet.data.synth.generate import render_scene, scene_name, split_of, synthesize

__all__ = ["render_scene", "scene_name", "split_of", "synthesize"]
