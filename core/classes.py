"""Semantic classes for the seg control image: the ADE20K palette and how an object's
class is found: custom property, then the assembly it is a generic part of (an IfcMember
of an IfcStair is stairs), then the IFC class of a Bonsai-style name, then keywords
(English, German, French, Spanish, Italian, Dutch) over names, then a fallback. A class
may be a facing rule (floor where a surface faces up and lies near horizontal, ceiling
where it faces down), decided per pixel from the normal pass. IFC elements that are no
geometry (IfcSpace, IfcOpeningElement, ...) get no class: they are never drawn.

The rules live in one editable file, ``class_table.toml`` beside this module.
"""

import json
import os
import re
import tomllib
import unicodedata
from dataclasses import dataclass

import numpy as np

# ADE20K, 0-based class index and RGB, as the seg ControlNet was trained on.
ADE20K = {
    "wall": (0, (120, 120, 120)),
    "building": (1, (180, 120, 120)),
    "sky": (2, (6, 230, 230)),
    "floor": (3, (80, 50, 50)),
    "tree": (4, (4, 200, 3)),
    "ceiling": (5, (120, 120, 80)),
    "road": (6, (140, 140, 140)),
    "bed": (7, (204, 5, 255)),
    "windowpane": (8, (230, 230, 230)),
    "grass": (9, (4, 250, 7)),
    "cabinet": (10, (224, 5, 255)),
    "sidewalk": (11, (235, 255, 7)),
    "earth": (13, (120, 120, 70)),
    "door": (14, (8, 255, 51)),
    "table": (15, (255, 6, 82)),
    "plant": (17, (204, 255, 4)),
    "curtain": (18, (255, 51, 7)),
    "chair": (19, (204, 70, 3)),
    "car": (20, (0, 102, 200)),
    "water": (21, (61, 230, 250)),
    "painting": (22, (255, 6, 51)),
    "sofa": (23, (11, 102, 255)),
    "shelf": (24, (255, 7, 71)),
    "house": (25, (255, 9, 224)),
    "mirror": (27, (220, 220, 220)),
    "rug": (28, (255, 9, 92)),
    "fence": (32, (255, 184, 6)),
    "desk": (33, (10, 255, 71)),
    "wardrobe": (35, (7, 255, 255)),
    "lamp": (36, (224, 255, 8)),
    "bathtub": (37, (102, 8, 255)),
    "railing": (38, (255, 61, 6)),
    "cushion": (39, (255, 194, 7)),
    "column": (42, (255, 8, 41)),
    "counter": (45, (235, 12, 255)),
    "sink": (47, (0, 163, 255)),
    "skyscraper": (48, (140, 140, 140)),
    "fireplace": (49, (250, 10, 15)),
    "refrigerator": (50, (20, 255, 0)),
    "path": (52, (255, 31, 0)),
    "stairs": (53, (255, 224, 0)),
    "stairway": (59, (31, 0, 255)),
    "bookcase": (62, (0, 255, 245)),
    "blind": (63, (0, 61, 255)),
    "coffee table": (64, (0, 255, 112)),
    "toilet": (65, (0, 255, 133)),
    "flower": (66, (255, 0, 0)),
    "countertop": (70, (0, 143, 255)),
    "stove": (71, (51, 255, 0)),
    "kitchen island": (73, (0, 255, 41)),
    "light": (82, (255, 173, 0)),
    "chandelier": (85, (0, 31, 255)),
    "awning": (86, (0, 255, 61)),
    "streetlight": (87, (0, 71, 255)),
    "ottoman": (97, (255, 153, 0)),
    "swimming pool": (109, (0, 184, 255)),
    "stool": (110, (0, 214, 255)),
    "step": (121, (255, 0, 143)),
    "sconce": (134, (0, 41, 255)),
    "radiator": (146, (255, 214, 0)),
}

# What geometry-less pixels (the world, seen outside or through a window) are by default.
DEFAULT_BACKGROUND_CLASS = "sky"
# What an object is when nothing names its class. "wall" keeps an unnamed object part of
# the architecture rather than inventing furniture; passes.json lists such objects. A
# facing rule such as "surface" (floor / ceiling / wall by facing) may be given instead.
DEFAULT_FALLBACK_CLASS = "wall"

TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "class_table.toml")
LANGUAGES = ("en", "de", "fr", "es", "it", "nl")

#: Bonsai names spatial containers like elements ("IfcBuildingStorey/Erdgeschoss"); their
#: names never decide the class of what they hold.
SPATIAL_IFC_CLASSES = ("IfcProject", "IfcSite", "IfcBuilding", "IfcBuildingStorey", "IfcSpace", "IfcZone",
                       "IfcSpatialZone", "IfcExternalSpatialElement", "IfcFacility", "IfcFacilityPart")

#: IFC entities that are no geometry: a control image never draws them, whatever their
#: flags in Blender (CONVENTIONS.md, "IFC and Bonsai").
NON_PHYSICAL_IFC_CLASSES = ("IfcSpace", "IfcOpeningElement", "IfcOpeningStandardCase", "IfcVirtualElement",
                            "IfcAnnotation", "IfcGrid", "IfcGridAxis")

#: Rules that can give a class, in the words passes.json uses.
RULES = ("property", "aggregate", "ifc", "keyword", "facing", "fallback")

_IFC_NAME = re.compile(r"^(Ifc[A-Za-z]+)/(.*)$", re.S)
_SUFFIXES = ("", "s", "es", "en", "e", "n", "i")


class ClassError(ValueError):
    """A class name or class table entry is not usable; the message names it."""


@dataclass(frozen=True)
class Facing:
    """A class decided per pixel: ``up`` where the visible surface faces up and lies
    near horizontal (world normal z >= ``flat_cos``), ``sloped`` where it faces up but is
    inclined (``min_cos`` <= z < ``flat_cos``: a pitched roof), ``down`` where it faces
    down (z <= -``min_cos``), ``side`` in between (|z| < ``min_cos``)."""

    name: str
    up: str
    down: str
    side: str
    min_cos: float = 0.5
    sloped: str = ""  # empty: the same as up
    flat_cos: float = 0.0  # 0: every up-facing surface is up
    inclined: str = ""  # a class or facing rule for a whole object whose upward faces are mostly sloped

    def as_dict(self):
        out = {"up": self.up, "down": self.down, "side": self.side, "min_cos": self.min_cos}
        if self.sloped and self.flat_cos:
            out.update(sloped=self.sloped, flat_cos=self.flat_cos)
        if self.inclined:
            out["inclined"] = self.inclined
        return out


def check_class(name, what="class"):
    """Return the canonical ADE20K class name, or raise naming the bad value and the choices."""
    key = str(name).strip().lower().replace("_", " ")
    if key not in ADE20K:
        raise ClassError(f"unknown {what} {name!r}; use an ADE20K name such as " + ", ".join(sorted(ADE20K)[:12]) + ", ...")
    return key


def fold(text):
    """Lower case, no accents, ß -> ss: 'AußenTür' -> 'aussentur'."""
    text = unicodedata.normalize("NFKD", str(text).casefold())
    return "".join(c for c in text if not unicodedata.combining(c))


def words(name):
    """Folded words of an object/material/collection name: 'Chair_1' -> ['chair'],
    'CoffeeTable' -> ['coffee', 'table'], 'Außenwand-EG' -> ['aussenwand', 'eg']."""
    out = []
    for chunk in re.findall(r"[^\W\d_]+", name or ""):
        # camelCase and ACRONYMWord boundaries
        parts = re.findall(r"[^\W\d_a-zß-ÿ]+(?=[^\W\d_a-zß-ÿ][a-zß-ÿ])"
                           r"|[^\W\d_a-zß-ÿ]?[a-zß-ÿ]+|[^\W\d_]+", chunk)
        out.extend(fold(p) for p in parts if p)
    return [w for w in out if w]


def _word_matches(pattern, word):
    if pattern.startswith("*"):
        stem = pattern[1:]
        return any(word.endswith(stem + s) for s in _SUFFIXES) and len(word) > len(stem)
    if pattern.endswith("*"):
        return word.startswith(pattern[:-1])
    return any(word == pattern + s for s in _SUFFIXES)


def _keyword_words(keyword):
    kw = fold(keyword).replace("-", " ").split()
    if not kw:
        raise ClassError(f"empty keyword {keyword!r} in the class table")
    return kw


def _match_at(keyword_words, name_words, i):
    n = len(keyword_words)
    return i + n <= len(name_words) and all(_word_matches(k, w) for k, w in zip(keyword_words, name_words[i:i + n]))


def parse_ifc_name(name):
    """('IfcWallStandardCase', 'Wand-Ext-ERDG-1') for a Bonsai-style name, else (None, name).
    Blender's '.001' suffix is dropped from the class."""
    m = _IFC_NAME.match(name or "")
    if not m:
        return None, name or ""
    return m.group(1), m.group(2)


def is_spatial_container(name):
    ifc_class, _ = parse_ifc_name(name)
    return ifc_class in SPATIAL_IFC_CLASSES


def is_non_physical(ifc_class):
    """Whether an IFC class is never geometry in a control image (IfcSpace, ...)."""
    return ifc_class in NON_PHYSICAL_IFC_CLASSES


class KeywordTable:
    """The class table: facing rules, IFC classes and ordered keywords.

    A user table comes first: its keywords are tried before the built-in ones, its IFC
    entries and facing rules replace built-in entries of the same name.
    """

    def __init__(self, entries=None, ifc=None, facing=None, builtin=True, aggregate=None):
        """``entries``: (keyword, class) pairs tried before the built-in keywords;
        ``ifc`` and ``facing``: entries that replace built-in ones of the same name;
        ``aggregate``: {"parts": [...], "parents": {IfcClass: class}}, its parts list
        replacing the built-in one and its parents added.
        ``builtin=False`` leaves the built-in table out."""
        base = _builtin_data() if builtin else {}
        self.facing = {}
        for name, spec in {**base.get("facing", {}), **(facing or {})}.items():
            self.facing[str(name).strip().lower()] = self._facing(name, spec)
        for f in self.facing.values():
            if f.inclined:
                self.check(f.inclined, what=f"'inclined' class of facing rule {f.name!r}")
        self.ifc = {}
        for key, spec in {**base.get("ifc", {}), **(ifc or {})}.items():
            self.ifc[str(key)] = self._ifc(key, spec)
        agg = {**base.get("aggregate", {}), **(aggregate or {})}
        self.aggregate_parts = self._parts(agg.get("parts", []))
        parents = {**base.get("aggregate", {}).get("parents", {}), **(aggregate or {}).get("parents", {})}
        self.aggregate_parents = {str(k): self.check(v, what=f"class for aggregate parent {k!r}")
                                  for k, v in parents.items()}
        pairs = list(entries or [])
        for block in base.get("keyword", []):
            pairs.extend(_keyword_block(block))
        self.entries = [(_keyword_words(k), self.check(c, what=f"class for keyword {k!r}")) for k, c in pairs]

    # ------------------------------------------------------------ building
    def _facing(self, name, spec):
        if not isinstance(spec, dict) or not {"up", "down"} <= set(spec):
            raise ClassError(f"facing rule {name!r} needs 'up' and 'down' classes (and optionally 'side', 'min_cos')")
        up = check_class(spec["up"], what=f"'up' class of facing rule {name!r}")
        down = check_class(spec["down"], what=f"'down' class of facing rule {name!r}")
        side = check_class(spec.get("side", spec["up"]), what=f"'side' class of facing rule {name!r}")
        min_cos = spec.get("min_cos", 0.5)
        if isinstance(min_cos, bool) or not isinstance(min_cos, (int, float)) or not 0.0 < min_cos <= 1.0:
            raise ClassError(f"facing rule {name!r}: min_cos must be a number in (0, 1], got {min_cos!r}")
        if str(name).strip().lower() in ADE20K:
            raise ClassError(f"facing rule {name!r} has the name of an ADE20K class; pick another name")
        sloped, flat_cos = "", 0.0
        if "sloped" in spec or "flat_cos" in spec:
            if not {"sloped", "flat_cos"} <= set(spec):
                raise ClassError(f"facing rule {name!r}: 'sloped' and 'flat_cos' go together")
            sloped = check_class(spec["sloped"], what=f"'sloped' class of facing rule {name!r}")
            flat_cos = spec["flat_cos"]
            if isinstance(flat_cos, bool) or not isinstance(flat_cos, (int, float)) or not min_cos < flat_cos <= 1.0:
                raise ClassError(f"facing rule {name!r}: flat_cos must be a number above min_cos ({min_cos}) "
                                 f"and at most 1, got {flat_cos!r}")
        inclined = str(spec.get("inclined", "")).strip().lower()
        if inclined and not flat_cos:
            raise ClassError(f"facing rule {name!r}: 'inclined' needs 'sloped' and 'flat_cos'")
        return Facing(str(name).strip().lower(), up, down, side, float(min_cos), sloped, float(flat_cos), inclined)

    @staticmethod
    def _parts(parts):
        if not isinstance(parts, list) or not all(isinstance(p, str) and p.startswith("Ifc") for p in parts):
            raise ClassError(f"aggregate parts must be a list of IFC class names such as 'IfcMember', got {parts!r}")
        return tuple(parts)

    def _ifc(self, key, spec):
        if isinstance(spec, str):
            cls, materials = spec, False
        elif isinstance(spec, dict) and "class" in spec:
            cls, materials = spec["class"], bool(spec.get("materials", False))
        else:
            raise ClassError(f"IFC entry {key!r} must be a class name or {{class = ..., materials = true}}, got {spec!r}")
        if str(cls).strip().lower() == "keyword":
            return ("keyword", materials)
        return (self.check(cls, what=f"class for IFC entry {key!r}"), materials)

    # ------------------------------------------------------------ queries
    def check(self, name, what="class"):
        """An ADE20K class name or the name of a facing rule."""
        key = str(name).strip().lower().replace("_", " ")
        if key in self.facing:
            return key
        try:
            return check_class(name, what=what)
        except ClassError:
            raise ClassError(f"unknown {what} {name!r}; use an ADE20K name such as "
                             + ", ".join(sorted(ADE20K)[:12]) + ", ... or a facing rule ("
                             + ", ".join(sorted(self.facing)) + ")") from None

    def is_facing(self, cls):
        return cls in self.facing

    def classes_of(self, cls):
        """The ADE20K classes a class or facing rule can give."""
        if cls in self.facing:
            f = self.facing[cls]
            return [f.up, f.down, f.side] + ([f.sloped] if f.sloped and f.flat_cos else [])
        return [cls]

    def aggregate_class(self, ifc_class, parents):
        """(class, parent name) when ``ifc_class`` is a generic part (IfcMember, IfcPlate,
        ...) and an aggregate above it decides (IfcStair, IfcRailing, ...), else None.
        ``parents``: (IFC class, name) of the aggregates above, nearest first; a generic
        parent in between (an IfcElementAssembly) is looked through."""
        if ifc_class not in self.aggregate_parts:
            return None
        for parent_class, parent_name in parents:
            if parent_class in self.aggregate_parents:
                return self.aggregate_parents[parent_class], parent_name
            if parent_class not in self.aggregate_parts:
                return None
        return None

    def lookup(self, name):
        name_words = words(name)
        for i in range(len(name_words)):
            for kw_words, cls in self.entries:
                if _match_at(kw_words, name_words, i):
                    return cls
        return None

    def ifc_lookup(self, ifc_class, predefined=""):
        """(class or "keyword", materials decide first) for an IFC class and predefined
        type, or None when the table has no entry."""
        if not ifc_class:
            return None
        if predefined:
            hit = self.ifc.get(f"{ifc_class}.{str(predefined).upper()}")
            if hit:
                return hit
        return self.ifc.get(ifc_class)

    # ------------------------------------------------------------ files
    @classmethod
    def with_user_entries(cls, user_entries, ifc=None, facing=None):
        return cls(entries=list(user_entries), ifc=ifc, facing=facing)

    @classmethod
    def from_file(cls, path):
        """A user table, TOML or JSON: either a flat object {"keyword": "class"} or the
        layout of class_table.toml (keyword blocks, [ifc], [facing]). Its entries come
        before the built-in ones."""
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except OSError as exc:
            raise ClassError(f"cannot read class table {path}: {exc.strerror}") from exc
        if str(path).lower().endswith(".toml"):
            try:
                data = tomllib.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise ClassError(f"class table {path} is not valid TOML: {exc}") from exc
        else:
            try:
                data = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ClassError(f"class table {path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ClassError(f"class table {path} must be an object of keyword -> class, or keyword/ifc/facing tables")
        structured = set(data) & {"keyword", "ifc", "facing", "aggregate"}
        if not structured:
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
                raise ClassError(f"class table {path} must be a JSON object of keyword -> class name strings")
            return cls.with_user_entries(data.items())
        unknown = set(data) - {"keyword", "ifc", "facing", "aggregate"}
        if unknown:
            raise ClassError(f"class table {path}: unknown section {sorted(unknown)[0]!r} "
                             "(known: keyword, ifc, facing, aggregate)")
        pairs = []
        blocks = data.get("keyword", [])
        if not isinstance(blocks, list):
            raise ClassError(f"class table {path}: 'keyword' must be a list of {{class = ..., en = [...]}} blocks")
        for block in blocks:
            pairs.extend(_keyword_block(block))
        for section in ("ifc", "facing", "aggregate"):
            if not isinstance(data.get(section, {}), dict):
                raise ClassError(f"class table {path}: '{section}' must be a table")
        if not isinstance(data.get("aggregate", {}).get("parents", {}), dict):
            raise ClassError(f"class table {path}: 'aggregate.parents' must be a table of IfcClass = class")
        return cls(entries=pairs, ifc=data.get("ifc"), facing=data.get("facing"), aggregate=data.get("aggregate"))


def _keyword_block(block):
    if not isinstance(block, dict) or "class" not in block:
        raise ClassError(f"keyword block {block!r} needs a 'class'")
    pairs = []
    for lang, kws in block.items():
        if lang == "class":
            continue
        if lang not in LANGUAGES:
            raise ClassError(f"keyword block for {block['class']!r}: unknown language {lang!r} "
                             f"(known: {', '.join(LANGUAGES)})")
        if not isinstance(kws, list) or not all(isinstance(k, str) for k in kws):
            raise ClassError(f"keyword block for {block['class']!r}: {lang} must be a list of strings")
        pairs.extend((k, block["class"]) for k in kws)
    return pairs


_BUILTIN = None


def _builtin_data():
    global _BUILTIN
    if _BUILTIN is None:
        try:
            with open(TABLE_PATH, "rb") as fh:
                _BUILTIN = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ClassError(f"cannot read the built-in class table {TABLE_PATH}: {exc}") from exc
    return _BUILTIN


@dataclass(frozen=True)
class Resolution:
    """How one (object, material) got its class: ``cls`` is an ADE20K name or a facing
    rule, ``rule`` one of RULES, ``source`` the detail ("object name", "IfcSlab.FLOOR")."""

    cls: str
    rule: str
    source: str
    parent: str = ""  # the aggregate that decided (rule "aggregate")

    def as_dict(self, table):
        out = {"class": self.cls, "rule": "facing" if table.is_facing(self.cls) else self.rule,
               "from": self.source}
        if self.parent:
            out["parent"] = self.parent
        if table.is_facing(self.cls):
            out["decided_by"] = self.rule
            out["facing"] = table.facing[self.cls].as_dict()
        return out


def classify(props, names, table, fallback=DEFAULT_FALLBACK_CLASS, predefined="", ifc_class=None, parents=()):
    """One object's (and one of its materials') class.

    ``props``: ``archviz_class`` custom property values of the object, its material and
    its collection (None where unset). ``names``: the object's, material's and
    collection's names. ``predefined``: the IFC PredefinedType if known; ``ifc_class``:
    the IFC class when known otherwise than from the name (Bonsai's IFC data);
    ``parents``: (IFC class, name) of the aggregates the object is a part of, nearest
    first. Order: property, the aggregate a generic part belongs to, IFC class of a
    Bonsai-style object name, keywords of the object's own name, material name,
    collection name (skipped for spatial containers), fallback.
    """
    for source, value in zip(("object property", "material property", "collection property"), props):
        if value not in (None, ""):
            return Resolution(table.check(value, what=f"archviz_class on the {source.split()[0]}"), "property", source)
    obj_name, mat_name, coll_name = (list(names) + ["", "", ""])[:3]
    named_class, own_name = parse_ifc_name(obj_name)
    ifc_class = ifc_class or named_class
    hit = table.aggregate_class(ifc_class, parents)
    if hit is not None:
        parent_class = next(pc for pc, pn in parents if pn == hit[1])
        return Resolution(hit[0], "aggregate", f"{ifc_class} in {parent_class}", parent=hit[1])
    if coll_name and is_spatial_container(coll_name):
        coll_name = ""
    ifc = table.ifc_lookup(ifc_class, predefined)
    if ifc is not None:
        cls, materials_first = ifc
        if cls != "keyword":
            if materials_first and mat_name:
                found = table.lookup(mat_name)
                if found:
                    return Resolution(found, "ifc", f"{ifc_class} + material name")
            return Resolution(cls, "ifc", f"{ifc_class}.{predefined.upper()}"
                              if predefined and f"{ifc_class}.{predefined.upper()}" in table.ifc else ifc_class)
    for source, name in zip(("object name", "material name", "collection name"), (own_name, mat_name, coll_name)):
        cls = table.lookup(name) if name else None
        if cls:
            return Resolution(cls, "keyword", source)
    return Resolution(table.check(fallback, what="fallback class"), "fallback", "fallback")


def resolve_class(props, names, table, fallback=DEFAULT_FALLBACK_CLASS):
    """(class, source) for one object: see :func:`classify`."""
    res = classify(props, names, table, fallback)
    return res.cls, res.source


def inclined_object(facing, normals_z, areas):
    """Whether an object under a facing rule with an ``inclined`` class is inclined as a
    whole: more of its upward area (world normal z >= min_cos) is sloped (z < flat_cos)
    than near horizontal. ``normals_z``, ``areas``: per face, in world space."""
    if not facing.inclined:
        return False
    nz, area = np.asarray(normals_z, dtype=np.float64), np.asarray(areas, dtype=np.float64)
    up = nz >= facing.min_cos
    sloped = float(area[up & (nz < facing.flat_cos)].sum())
    return sloped > float(area[up].sum()) - sloped


def facing_band(world_nz, facing):
    """Per-pixel band of a facing rule for the normals' z (turned toward the camera):
    0 up (z >= flat_cos, or >= min_cos where the rule has no sloped class), 1 down
    (z <= -min_cos), 2 side, 3 sloped (min_cos <= z < flat_cos)."""
    nz = np.asarray(world_nz, dtype=np.float64)
    band = np.where(nz >= facing.min_cos, 0, np.where(nz <= -facing.min_cos, 1, 2))
    if facing.sloped and facing.flat_cos:
        band = np.where((band == 0) & (nz < facing.flat_cos), 3, band)
    return band


def facing_labels(world_nz, facing):
    """Per-pixel ADE20K class names for the normals' z (turned toward the camera) under
    one facing rule: ``up`` where the surface faces up (and lies near horizontal, where
    the rule has a ``sloped`` class for inclined ones), ``down`` at z <= -min_cos, else
    ``side``."""
    names = np.array([facing.up, facing.down, facing.side, facing.sloped or facing.up])
    return names[facing_band(world_nz, facing)]


def palette_lut(class_names):
    """(N, 3) uint8 colours for a list of class names, for vectorised lookup."""
    return np.array([ADE20K[check_class(c)][1] for c in class_names], dtype=np.uint8).reshape(-1, 3)
