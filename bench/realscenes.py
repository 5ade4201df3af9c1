"""Build Blender scenes from the real files in ``../shared/realscenes`` and measure the
control passes on them.

- The KIT FZK-Haus (ArchiCAD 20 IFC, triangulated in ``AC20-FZK-Haus.npz``) becomes one
  object per IFC element named the Bonsai way (``IfcWallStandardCase/Wand-Ext-ERDG-1``),
  in ``IfcBuildingStorey/<storey>`` collections under ``IfcBuilding/...`` under
  ``IfcSite/...`` under ``IfcProject/...``, with one material per surface style name
  (Glas, Gras, Beton, Ziegel...) and the IFC PredefinedType as a custom property. Three
  cameras: an exterior view and one interior view on each storey.
- Sponza (``sponza_s_lod4.glb``) comes in through Blender's glTF importer as it is (one
  unnamed mesh), with two cameras in the atrium.

Run (from the repository root, with the project venv)::

    python -m archviz_controlnet.bench.realscenes --out /tmp/realscenes [--sizes 512,1024]

It saves ``fzk_house.blend`` and ``sponza.blend``, renders every view with ``archviz
passes`` settings at each size, and prints per view: depth levels used, clipped share
(near + far), fallback share and capture time. Files are read from
``../shared/realscenes`` beside the checkout, or ``--data``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "realscenes"
HOUSE_NPZ = "AC20-FZK-Haus.npz"
SPONZA_GLB = "sponza_s_lod4.glb"

#: Viewport colours for the house's surface styles (the beauty pass uses them).
HOUSE_COLOURS = {
    "Anstrich": (0.85, 0.83, 0.78), "Beton": (0.55, 0.55, 0.53), "Glas": (0.45, 0.6, 0.7),
    "Gras": (0.2, 0.45, 0.12), "Kiefer": (0.62, 0.45, 0.28), "Kiefer, glänzend": (0.55, 0.38, 0.22),
    "Kupfer": (0.72, 0.42, 0.25), "Ziegel": (0.55, 0.2, 0.12), "PEN_MATERIAL12": (0.3, 0.3, 0.32),
}

#: name -> (location, target, lens mm)
HOUSE_CAMERAS = {
    "Ext_SW": ((-13.0, -11.0, 1.7), (6.0, 5.0, 2.6), 28.0),
    "Int_EG": ((1.2, 1.0, 1.55), (9.0, 8.5, 1.2), 20.0),
    "Int_OG": ((10.6, 6.6, 3.9), (7.4, 2.4, 3.1), 22.0),
}
SPONZA_CAMERAS = {
    "Atrium": ((-11.0, -0.4, 1.7), (6.0, 0.4, 4.5), 20.0),
    "Aisle": ((9.0, 5.2, 1.7), (-9.0, 5.0, 2.8), 22.0),
}


def data_dir(path=None) -> Path:
    return Path(path) if path else DATA_DIR


def _camera(scene, name, location, target, lens):
    import bpy
    import mathutils

    data = bpy.data.cameras.new(name)
    data.lens = lens
    data.clip_start = 0.05
    data.clip_end = 50000.0
    obj = bpy.data.objects.new(name, data)
    scene.collection.objects.link(obj)
    obj.location = location
    direction = mathutils.Vector(target) - mathutils.Vector(location)
    obj.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()
    return obj


def _lights(scene):
    import bpy

    sun = bpy.data.lights.new("Sun", "SUN")
    sun.energy = 4.0
    obj = bpy.data.objects.new("Sun", sun)
    obj.rotation_euler = (math.radians(50), 0.0, math.radians(35))
    scene.collection.objects.link(obj)
    world = bpy.data.worlds.new("Sky")
    bg = world.node_tree.nodes.get("Background") if world.node_tree else None
    if bg is not None:
        bg.inputs["Color"].default_value = (0.55, 0.7, 0.9, 1.0)
        bg.inputs["Strength"].default_value = 0.8
    scene.world = world


def _material(name):
    import bpy

    mat = bpy.data.materials.get(name)
    if mat is None:
        mat = bpy.data.materials.new(name)
        colour = HOUSE_COLOURS.get(name, (0.7, 0.7, 0.7))
        mat.diffuse_color = (*colour, 1.0)
        bsdf = mat.node_tree.nodes.get("Principled BSDF") if mat.node_tree else None
        if bsdf is not None:
            bsdf.inputs["Base Color"].default_value = (*colour, 1.0)
    return mat


def build_house(npz_path=None, width=1600, height=1200, ground_plane=0.0):
    """A fresh scene with the FZK-Haus, the Bonsai way. ``ground_plane``: the side in
    metres of a square ground plane ("Terrain") 2 cm below the site, 0 for none."""
    import bpy
    import numpy as np

    npz_path = Path(npz_path) if npz_path else DATA_DIR / HOUSE_NPZ
    arrays = np.load(npz_path)
    meta = json.loads(bytes(arrays["meta"]).decode("utf-8"))
    verts, faces, mats = arrays["verts"], arrays["faces"], arrays["mats"]

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = width, height
    spatial = meta.get("spatial") or {}
    project = bpy.data.collections.new(f"IfcProject/{spatial.get('IfcProject', 'Project')}")
    scene.collection.children.link(project)
    site = bpy.data.collections.new(f"IfcSite/{spatial.get('IfcSite', 'Site')}")
    project.children.link(site)
    building = bpy.data.collections.new(f"IfcBuilding/{spatial.get('IfcBuilding', 'Building')}")
    site.children.link(building)
    storeys = {}
    for element in meta["elements"]:
        v0, v1 = element["v"]
        f0, f1 = element["f"]
        name = f"{element['ifc_class']}/{element['name'] or 'Unnamed'}"
        mesh = bpy.data.meshes.new(name)
        mesh.from_pydata(verts[v0:v1].astype(float).tolist(), [], faces[f0:f1].tolist())
        for mat_name in element["materials"] or ["Default"]:
            mesh.materials.append(_material(mat_name))
        if element["materials"]:
            mesh.polygons.foreach_set("material_index", mats[f0:f1].astype(np.int32))
        mesh.update()
        obj = bpy.data.objects.new(name, mesh)
        if element.get("predefined"):
            obj["PredefinedType"] = element["predefined"]
        obj["GlobalId"] = element.get("guid", "")
        storey = element.get("storey")
        if storey:
            key = f"{storey[0]}/{storey[1]}"
            if key not in storeys:
                storeys[key] = bpy.data.collections.new(key)
                building.children.link(storeys[key])
            storeys[key].objects.link(obj)
        else:
            site.objects.link(obj)
    if ground_plane:
        h = ground_plane / 2.0
        mesh = bpy.data.meshes.new("Terrain")
        mesh.from_pydata([(-h, -h, -0.02), (h, -h, -0.02), (h, h, -0.02), (-h, h, -0.02)], [], [(0, 1, 2, 3)])
        obj = bpy.data.objects.new("Terrain", mesh)
        scene.collection.objects.link(obj)
    for cam_name, (loc, target, lens) in HOUSE_CAMERAS.items():
        cam = _camera(scene, cam_name, loc, target, lens)
        if scene.camera is None:
            scene.camera = cam
    _lights(scene)
    bpy.context.view_layer.update()
    return scene


def build_sponza(glb_path=None, width=1600, height=1200):
    """A fresh scene with Sponza imported by Blender's glTF importer, and two cameras."""
    import bpy

    glb_path = Path(glb_path) if glb_path else DATA_DIR / SPONZA_GLB
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = width, height
    bpy.ops.import_scene.gltf(filepath=str(glb_path))
    for cam_name, (loc, target, lens) in SPONZA_CAMERAS.items():
        cam = _camera(scene, cam_name, loc, target, lens)
        if scene.camera is None:
            scene.camera = cam
    _lights(scene)
    bpy.context.view_layer.update()
    return scene


def contact_sheet(pass_dir, out_path, names=("depth", "lines", "normal", "seg"), width=256):
    """A one-row sheet of the named PNGs of one passes folder, each scaled to ``width``
    (seg by nearest neighbour so its colours stay exact, the others by area so thin lines
    stay visible). Uses Pillow (bench side only)."""
    from PIL import Image

    tiles = []
    for name in names:
        img = Image.open(os.path.join(pass_dir, f"{name}.png")).convert("RGB")
        tiles.append(img.resize((width, round(img.height * width / img.width)),
                                Image.NEAREST if name == "seg" else Image.BOX))
    sheet = Image.new("RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), max(t.height for t in tiles)),
                      (255, 255, 255))
    x = 0
    for tile in tiles:
        sheet.paste(tile, (x, 0))
        x += tile.width + 4
    sheet.save(out_path, optimize=True)
    return out_path


def view_figures(info):
    """The figures the report gives for one view, from its passes.json."""
    stats = info["depth_stats"]
    return {"levels": stats["levels_used"], "clipped": stats["clipped_near"] + stats["clipped_far"],
            "fallback": info["fallback_share"]}


def measure(scene, cameras, sizes, out_dir, repeats=1, **options):
    """Render each camera at each long side (the median time of ``repeats`` captures);
    return rows of figures."""
    import statistics

    from ..blender.capture.render import CaptureOptions, render_controls

    rows = []
    for cam in cameras:
        row = {"scene": scene.name, "camera": cam}
        for size in sizes:
            opts = CaptureOptions(camera=cam, long_side=size, **options)
            times = []
            for _ in range(max(1, repeats)):
                t0 = time.perf_counter()
                result = render_controls(scene, os.path.join(out_dir, f"{cam}_{size}"), opts)
                times.append(time.perf_counter() - t0)
            row[f"s{size}"] = statistics.median(times)
            if size == sizes[0]:
                row.update(view_figures(result.info))
                row["render_s"] = result.info["timings"]["render"]
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m archviz_controlnet.bench.realscenes")
    parser.add_argument("--out", required=True, help="folder for the .blend files and the passes")
    parser.add_argument("--data", default="", help=f"folder with {HOUSE_NPZ} and {SPONZA_GLB} (default: {DATA_DIR})")
    parser.add_argument("--sizes", default="512,1024", help="long sides to time, comma-separated")
    parser.add_argument("--supersample", type=int, default=2)
    parser.add_argument("--views", default="", help="comma-separated camera names (default: all)")
    parser.add_argument("--repeats", type=int, default=1, help="captures per view and size (median time)")
    args = parser.parse_args(argv)
    import bpy

    data = data_dir(args.data)
    missing = [n for n in (HOUSE_NPZ, SPONZA_GLB) if not (data / n).is_file()]
    if missing:
        print(f"realscenes: missing {', '.join(missing)} in {data}", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    views = [v.strip() for v in args.views.split(",") if v.strip()]
    rows = []
    for label, build, cams, blend in (("FZK-Haus", build_house, HOUSE_CAMERAS, "fzk_house.blend"),
                                      ("Sponza", build_sponza, SPONZA_CAMERAS, "sponza.blend")):
        scene = build(data / (HOUSE_NPZ if build is build_house else SPONZA_GLB))
        bpy.ops.wm.save_as_mainfile(filepath=str(out / blend))
        wanted = [c for c in cams if not views or c in views]
        for row in measure(scene, wanted, sizes, str(out / "passes"), repeats=args.repeats,
                           supersample=args.supersample):
            row["scene"] = label
            rows.append(row)
    head = f"{'scene':9s} {'view':8s} {'levels':>6s} {'clipped':>8s} {'fallback':>9s}" + "".join(
        f" {'t' + str(s):>7s}" for s in sizes)
    print(head)
    for r in rows:
        print(f"{r['scene']:9s} {r['camera']:8s} {r['levels']:6d} {r['clipped']:8.1%} {r['fallback']:9.1%}"
              + "".join(f" {r[f's{s}']:6.2f}s" for s in sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
