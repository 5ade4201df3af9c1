"""Semantic classes for the seg control image: the ADE20K palette and how an object's
class is found (custom property, then keyword table over names, then a fallback)."""

import json
import re

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
# the architecture rather than inventing furniture; passes.json lists such objects.
DEFAULT_FALLBACK_CLASS = "wall"

# Keyword -> class, tried in this order against the words of the object's, then the
# material's, then the collection's name. The first word of a name that matches decides
# ("Window_Frame" is a window, "Table_Lamp" a table); at one word, longer phrases come
# before the words they contain ("coffee table" before "table"). A keyword matches the
# word itself or its plural ("Chairs", "Windows.001"); several words must follow each other.
DEFAULT_KEYWORDS = (
    ("coffee table", "coffee table"),
    ("kitchen island", "kitchen island"),
    ("swimming pool", "swimming pool"),
    ("street light", "streetlight"),
    ("streetlight", "streetlight"),
    ("countertop", "countertop"),
    ("worktop", "countertop"),
    ("bookcase", "bookcase"),
    ("bookshelf", "bookcase"),
    ("window", "windowpane"),
    ("glass", "windowpane"),
    ("glazing", "windowpane"),
    ("pane", "windowpane"),
    ("door", "door"),
    ("floor", "floor"),
    ("parquet", "floor"),
    ("ceiling", "ceiling"),
    ("wall", "wall"),
    ("facade", "building"),
    ("building", "building"),
    ("roof", "building"),
    ("armchair", "chair"),
    ("chair", "chair"),
    ("stool", "stool"),
    ("ottoman", "ottoman"),
    ("sofa", "sofa"),
    ("couch", "sofa"),
    ("cushion", "cushion"),
    ("pillow", "cushion"),
    ("bed", "bed"),
    ("wardrobe", "wardrobe"),
    ("closet", "wardrobe"),
    ("cabinet", "cabinet"),
    ("cupboard", "cabinet"),
    ("drawer", "cabinet"),
    ("dresser", "cabinet"),
    ("sideboard", "cabinet"),
    ("shelf", "shelf"),
    ("shelves", "shelf"),
    ("desk", "desk"),
    ("table", "table"),
    ("counter", "counter"),
    ("chandelier", "chandelier"),
    ("sconce", "sconce"),
    ("pendant", "lamp"),
    ("lamp", "lamp"),
    ("light", "light"),
    ("plant", "plant"),
    ("leaf", "plant"),
    ("leaves", "plant"),
    ("flower", "flower"),
    ("tree", "tree"),
    ("grass", "grass"),
    ("lawn", "grass"),
    ("rug", "rug"),
    ("carpet", "rug"),
    ("curtain", "curtain"),
    ("drape", "curtain"),
    ("blind", "blind"),
    ("stairway", "stairway"),
    ("staircase", "stairs"),
    ("stair", "stairs"),
    ("step", "step"),
    ("railing", "railing"),
    ("handrail", "railing"),
    ("balustrade", "railing"),
    ("banister", "railing"),
    ("column", "column"),
    ("pillar", "column"),
    ("fireplace", "fireplace"),
    ("radiator", "radiator"),
    ("mirror", "mirror"),
    ("painting", "painting"),
    ("picture", "painting"),
    ("poster", "painting"),
    ("sink", "sink"),
    ("basin", "sink"),
    ("bathtub", "bathtub"),
    ("bath", "bathtub"),
    ("toilet", "toilet"),
    ("stove", "stove"),
    ("oven", "stove"),
    ("cooktop", "stove"),
    ("fridge", "refrigerator"),
    ("refrigerator", "refrigerator"),
    ("fence", "fence"),
    ("awning", "awning"),
    ("road", "road"),
    ("sidewalk", "sidewalk"),
    ("pavement", "sidewalk"),
    ("path", "path"),
    ("water", "water"),
    ("pool", "swimming pool"),
    ("car", "car"),
    ("terrain", "earth"),
    ("ground", "earth"),
)

_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+")


class ClassError(ValueError):
    """A class name or keyword table entry is not usable; the message names it."""


def check_class(name, what="class"):
    """Return the canonical class name, or raise naming the bad value and the choices."""
    key = str(name).strip().lower().replace("_", " ")
    if key not in ADE20K:
        raise ClassError(f"unknown {what} {name!r}; use an ADE20K name such as " + ", ".join(sorted(ADE20K)[:12]) + ", ...")
    return key


def words(name):
    """Lower-case words of an object/material/collection name: 'Chair_1' -> ['chair']."""
    return [w.lower() for w in _WORD.findall(name or "")]


def _word_matches(keyword, word):
    return word == keyword or word == keyword + "s" or word == keyword + "es"


def _match_at(keyword_words, name_words, i):
    n = len(keyword_words)
    return i + n <= len(name_words) and all(_word_matches(k, w) for k, w in zip(keyword_words, name_words[i:i + n]))


class KeywordTable:
    """Ordered keyword -> class table. User entries come first, then the defaults."""

    def __init__(self, entries=DEFAULT_KEYWORDS):
        self.entries = []
        for keyword, cls in entries:
            kw_words = words(keyword) or [str(keyword).lower()]
            self.entries.append((kw_words, check_class(cls, what=f"class for keyword {keyword!r}")))

    @classmethod
    def with_user_entries(cls, user_entries):
        return cls(tuple(user_entries) + DEFAULT_KEYWORDS)

    @classmethod
    def from_file(cls, path):
        """A JSON file {"keyword": "class", ...}; its entries take priority over the defaults."""
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except OSError as exc:
            raise ClassError(f"cannot read class table {path}: {exc.strerror}") from exc
        except json.JSONDecodeError as exc:
            raise ClassError(f"class table {path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise ClassError(f"class table {path} must be a JSON object of keyword -> class name strings")
        return cls.with_user_entries(data.items())

    def lookup(self, name):
        name_words = words(name)
        for i in range(len(name_words)):
            for kw_words, cls in self.entries:
                if _match_at(kw_words, name_words, i):
                    return cls
        return None


def resolve_class(props, names, table, fallback=DEFAULT_FALLBACK_CLASS):
    """Find one object's class.

    ``props``: the ``archviz_class`` custom property values of the object, its material and
    its collection, in that order (None where unset). ``names``: the object's, material's
    and collection's names, in that order. Returns (class name, how it was found).
    """
    for source, value in zip(("object property", "material property", "collection property"), props):
        if value not in (None, ""):
            return check_class(value, what=f"archviz_class on the {source.split()[0]}"), source
    for source, name in zip(("object name", "material name", "collection name"), names):
        cls = table.lookup(name) if name else None
        if cls:
            return cls, source
    return check_class(fallback, what="fallback class"), "fallback"


def palette_lut(class_names):
    """(N, 3) uint8 colours for a list of class names, for vectorised lookup."""
    return np.array([ADE20K[check_class(c)][1] for c in class_names], dtype=np.uint8).reshape(-1, 3)
