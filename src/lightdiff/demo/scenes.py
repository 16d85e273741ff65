"""Procedural scenes with English and Chinese captions: the training data of lightdiff's demo model.

A scene is 1 to 3 flat shapes on a plain or gradient background. Everything is drawn from a seeded
``numpy.random.Generator``, so a (seed, index) pair always gives the same image and caption.

Palette (RGB; every pair is at least 42 apart in CIE Lab, so a colour is named by nearest Lab):

    red (220,30,35)      orange (250,140,10)   yellow (250,225,40)  green (35,160,60)
    cyan (40,200,220)    blue (30,90,230)      purple (140,40,150)  pink (250,135,200)
    white (245,245,245)  black (20,20,20)

Shapes: circle, square, triangle, star, diamond, hexagon (triangle, star and hexagon point up; a
diamond is a square turned 45 degrees; polygons get up to 5 degrees of random tilt).
Sizes (radius of the circumscribed circle, as a fraction of the image side): small 0.075-0.09,
medium 0.115-0.13 (not named in captions), large 0.16-0.185.
Surface: plain fill; rarely striped or dotted (a darker or lighter shade of the fill), or outlined
(black on light fills, white on dark ones). A background never comes within ``MIN_CONTRAST`` Lab
units of any colour drawn on the shapes, anywhere along a gradient.

Caption grammar (``NP`` is one object; ``[x]`` optional; ``|`` alternatives)::

    NP_en  := a|an [small|large] [outlined|striped|dotted] COLOUR SHAPE
    BG_en  := a|an COLOUR background
            | a|an COLOUR to COLOUR vertical|horizontal gradient background
    one    := NP on the left|on the right|at the top|at the bottom|in the centre on BG
    two    := NP left of|right of|above|below NP on BG
    three  := NP REL NP, and NP, on BG

    NP_zh  := 一个 [小的|大的] [带描边的|带条纹的|带圆点的] 颜色 形状
    BG_zh  := 颜色背景上 | 从上到下|从左到右 由 颜色 渐变为 颜色 的背景上
    one    := BG，左边|右边|上方|下方|中间 有 NP
    two    := BG，NP 在 NP 左边|右边|上方|下方
    three  := BG，NP 在 NP REL，还有 NP

    The "places" form states a relation as two opposite places, each before its object (two or three
    objects; the third is still free):
    two_en := on the left NP, on the right NP, on BG     (or at the top / at the bottom; either order)
    three  := on the left NP, on the right NP, and NP, on BG
    two_zh := BG，左边有 NP，右边有 NP      three := ...，还有 NP

    Why two forms: CLIP's text transformer is causal, so in "NP left of NP" the first object's tokens
    never see the relation word, and in the Chinese form no object token does. In the places form
    every object's tokens come after its place word. ``CAPTION_FORMS`` names them; ``SceneDataset``
    draws the form per caption (``places_mix``, default 0), after the scene and language, so a seed's
    scenes and languages do not depend on it. Two fresh runs trained half and half (2026-11-27) did
    not place objects better in either form (docs/demo/README.md), so the default stays 0, the data
    the shipped weights were trained on.

    e.g. "a large red circle left of a small blue square on a yellow background"
         "黄色背景上，一个大的红色圆形在一个小的蓝色正方形左边"
         "on the left a large red circle, on the right a small blue square, on a yellow background"
         "黄色背景上，左边有一个大的红色圆形，右边有一个小的蓝色正方形"

A vertical gradient runs from its first colour at the top to its second at the bottom; a
horizontal one from left to right. The relation is between the first two objects; a single object
has an absolute position. Both are decided by the dominant axis (``relation_between`` and
``absolute_position``), the same functions the checker uses, so data and checker cannot disagree.

Held-out split: ``HELD_OUT_PAIRS`` (colour x shape) never appear in the training split; the
held-out split always contains at least one of them (see ``is_held_out``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from lightdiff.errors import InvalidRequest, LightdiffError

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "orange": (250, 140, 10),
    "yellow": (250, 225, 40),
    "green": (35, 160, 60),
    "cyan": (40, 200, 220),
    "blue": (30, 90, 230),
    "purple": (140, 40, 150),
    "pink": (250, 135, 200),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon")
SIZES = ("small", "medium", "large")
TEXTURES = ("plain", "striped", "dotted")
RELATIONS = ("left of", "right of", "above", "below")
POSITIONS = ("left", "right", "top", "bottom", "centre")
BACKGROUND_KINDS = ("plain", "vertical", "horizontal")
SPLITS = ("train", "heldout")
# How a two-object relation is laid out: "free", anywhere the relation clearly holds; "halves", the first object
# (left, or above) in the near third-and-a-bit of the canvas and the second in the far one, across the centre
# line, with the other axis in the middle band, as a lone object's place is drawn (``_place_alone``)
PAIR_LAYOUTS = ("free", "halves")
CAPTION_FORMS = ("relation", "places")  # "NP left of NP" | "on the left NP, on the right NP"

SIZE_RADIUS = {"small": (0.075, 0.09), "medium": (0.115, 0.13), "large": (0.16, 0.185)}
# Colour x shape pairs the training split never shows (compositional generalisation test).
HELD_OUT_PAIRS = frozenset({("purple", "star"), ("orange", "triangle"), ("cyan", "hexagon"), ("yellow", "diamond")})
MIN_CONTRAST = 40.0  # Lab distance between the background and a shape's fill
MIN_DETAIL_CONTRAST = 30.0  # ... and its outline or texture shade
MARGIN = 0.03  # shapes keep off the border, so the checker can read the background there
GAP = 0.05  # between circumscribed circles, so shapes never touch
STAR_INNER = 0.45  # inner/outer radius; chunkier than a pentagram (0.38) so arms survive 128 px

COLOUR_ZH = {
    "red": "红色", "orange": "橙色", "yellow": "黄色", "green": "绿色", "cyan": "青色",
    "blue": "蓝色", "purple": "紫色", "pink": "粉色", "white": "白色", "black": "黑色",
}
SHAPE_ZH = {
    "circle": "圆形", "square": "正方形", "triangle": "三角形", "star": "星形",
    "diamond": "菱形", "hexagon": "六边形",
}
SIZE_EN = {"small": "small", "medium": "", "large": "large"}
SIZE_ZH = {"small": "小的", "medium": "", "large": "大的"}
SURFACE_EN = {"outlined": "outlined", "striped": "striped", "dotted": "dotted"}
SURFACE_ZH = {"outlined": "带描边的", "striped": "带条纹的", "dotted": "带圆点的"}
POSITION_EN = {"left": "on the left", "right": "on the right", "top": "at the top",
               "bottom": "at the bottom", "centre": "in the centre"}
POSITION_ZH = {"left": "左边", "right": "右边", "top": "上方", "bottom": "下方", "centre": "中间"}
RELATION_ZH = {"left of": "左边", "right of": "右边", "above": "上方", "below": "下方"}
GRADIENT_ZH = {"vertical": "从上到下", "horizontal": "从左到右"}
# A relation as the places of its two objects (the places caption form), and back.
RELATION_PLACES = {"left of": ("left", "right"), "right of": ("right", "left"),
                   "above": ("top", "bottom"), "below": ("bottom", "top")}
PLACES_RELATION = {places: relation for relation, places in RELATION_PLACES.items()}

# Every word and phrase the grammar uses (the demo tokenizer's vocabulary is built from these).
ENGLISH_WORDS = tuple(sorted(
    set(COLOURS) | set(SHAPES) | {"small", "large", "outlined", "striped", "dotted"}
    | {"a", "an", "on", "the", "at", "in", "left", "right", "top", "bottom", "centre",
       "of", "above", "below", "and", "background", "to", "vertical", "horizontal", "gradient", ","}
))
CHINESE_PHRASES = tuple(sorted(
    set(COLOUR_ZH.values()) | set(SHAPE_ZH.values()) | set(SIZE_ZH.values()) - {""}
    | set(SURFACE_ZH.values()) | set(POSITION_ZH.values()) | set(GRADIENT_ZH.values())
    | {"一个", "有", "还有", "在", "由", "渐变为", "的", "背景上", "，"}
))


@dataclass(frozen=True)
class SceneObject:
    """One drawn shape. Coordinates are fractions of the image side (y grows downwards)."""

    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    radius: float  # of the circumscribed circle
    angle: float = 0.0  # tilt in degrees
    texture: str = "plain"
    outline: bool = False

    @property
    def surface(self) -> str | None:
        """The caption's surface word: outlined, striped, dotted or None."""
        return "outlined" if self.outline else (None if self.texture == "plain" else self.texture)


@dataclass(frozen=True)
class Background:
    kind: str  # plain | vertical (first colour at the top) | horizontal (first colour on the left)
    colours: tuple[str, ...]


@dataclass(frozen=True)
class ObjectSpec:
    """What a caption says about one object (no coordinates)."""

    shape: str
    colour: str
    size: str = "medium"
    surface: str | None = None


@dataclass(frozen=True)
class SceneSpec:
    """What a caption says about a scene: ``parse_caption`` returns it, ``Scene.spec`` gives it."""

    objects: tuple[ObjectSpec, ...]
    background: Background
    relation: str | None = None  # objects[0] <relation> objects[1]
    position: str | None = None  # where a lone object is


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: Background
    relation: str | None = None
    position: str | None = None

    def spec(self) -> SceneSpec:
        objects = tuple(ObjectSpec(o.shape, o.colour, o.size, o.surface) for o in self.objects)
        return SceneSpec(objects, self.background, self.relation, self.position)


class DemoSample(NamedTuple):
    image: Image.Image
    caption: str
    scene: Scene


# ---------------------------------------------------------------- geometry shared with the checker

def absolute_position(cx: float, cy: float) -> str:
    """Where a point is, by the dominant axis: centre within 0.12 of the middle, else left/right/top/bottom."""
    dx, dy = cx - 0.5, cy - 0.5
    if max(abs(dx), abs(dy)) < 0.12:
        return "centre"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def relation_between(a: tuple[float, float], b: tuple[float, float]) -> str | None:
    """How point ``a`` sits relative to ``b`` along the dominant axis; None when they are nearly level."""
    dx, dy = a[0] - b[0], a[1] - b[1]
    if max(abs(dx), abs(dy)) < 0.05:
        return None
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def size_from_radius(radius: float) -> str:
    """Size class of a circumscribed radius (fraction of the side); thresholds sit between the ranges."""
    if radius < 0.102:
        return "small"
    return "medium" if radius < 0.145 else "large"


# ---------------------------------------------------------------- colours

@lru_cache(maxsize=None)
def lab(rgb: tuple[int, int, int]) -> np.ndarray:
    """CIE Lab of one sRGB colour (L 0-100), via OpenCV, the conversion the checker also uses."""
    import cv2

    px = np.asarray(rgb, np.float32).reshape(1, 1, 3) / 255.0
    return cv2.cvtColor(px, cv2.COLOR_RGB2LAB).reshape(3)


def colour_distance(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    return _colour_distance(tuple(int(v) for v in a), tuple(int(v) for v in b))


@lru_cache(maxsize=65536)
def _colour_distance(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    return float(np.linalg.norm(lab(a) - lab(b)))


def texture_rgb(colour: str) -> tuple[int, int, int]:
    """The stripe/dot shade: darker for light fills, lighter for dark ones."""
    rgb = np.asarray(PALETTE[colour], np.float64)
    target, t = (0.0, 0.4) if lab(PALETTE[colour])[0] > 50 else (255.0, 0.45)
    return tuple(int(round(v)) for v in rgb * (1 - t) + target * t)


def outline_rgb(colour: str) -> tuple[int, int, int]:
    return PALETTE["black"] if lab(PALETTE[colour])[0] > 55 else PALETTE["white"]


def _gradient_samples(colours: tuple[str, ...], n: int = 9) -> list[tuple[int, int, int]]:
    a, b = (np.asarray(PALETTE[c], np.float64) for c in (colours[0], colours[-1]))
    return [tuple(int(round(v)) for v in a + (b - a) * t) for t in np.linspace(0, 1, n)]


def background_contrasts(background: Background, objects: tuple[SceneObject, ...]) -> bool:
    """True when every background colour (all along a gradient) stands off every shape colour."""
    # only colours and surface details matter: cached on them (scene sampling calls this thousands of times)
    looks = tuple((o.colour, o.texture, o.outline) for o in objects)
    return _contrasts(background.colours, looks)


@lru_cache(maxsize=65536)
def _contrasts(colours: tuple[str, ...], looks: tuple[tuple[str, str, bool], ...]) -> bool:
    samples = _gradient_samples(colours)
    for colour, texture, outline in looks:
        details = []
        if texture != "plain":
            details.append(texture_rgb(colour))
        if outline:
            details.append(outline_rgb(colour))
        for bg in samples:
            if colour_distance(PALETTE[colour], bg) < MIN_CONTRAST:
                return False
            if any(colour_distance(c, bg) < MIN_DETAIL_CONTRAST for c in details):
                return False
    return True


# ---------------------------------------------------------------- sampling

def is_held_out(scene: Scene | SceneSpec) -> bool:
    """True when any object is a held-out colour x shape pair (never shown in training)."""
    return any((o.colour, o.shape) in HELD_OUT_PAIRS for o in scene.objects)


def _pick(rng: np.random.Generator, options, p=None):
    return options[int(rng.choice(len(options), p=p))]


def _sample_look(rng: np.random.Generator, forced_pair: tuple[str, str] | None, allow_held_out: bool,
                 taken: set) -> tuple[str, str, str, float, float, str, bool]:
    while True:
        colour, shape = forced_pair or (_pick(rng, COLOURS), _pick(rng, SHAPES))
        if (colour, shape) in taken or (not allow_held_out and (colour, shape) in HELD_OUT_PAIRS):
            forced_pair = None
            continue
        break
    size = _pick(rng, SIZES, p=[0.35, 0.35, 0.30])
    radius = float(rng.uniform(*SIZE_RADIUS[size]))
    angle = 0.0 if shape == "circle" else float(rng.uniform(-5, 5))
    texture = _pick(rng, TEXTURES, p=[0.86, 0.07, 0.07])
    outline = texture == "plain" and bool(rng.random() < 0.12)
    return shape, colour, size, radius, angle, texture, outline


def _bounds(r: float) -> tuple[float, float]:
    return MARGIN + r, 1 - MARGIN - r


def _place_pair(rng, ra: float, rb: float, relation: str, layout: str = "free"):
    """Centres for A and B such that ``relation_between(A, B) == relation`` clearly holds (``PAIR_LAYOUTS``)."""
    horizontal = relation in ("left of", "right of")
    a_first = relation in ("left of", "above")  # A has the smaller main-axis coordinate
    lo_a, hi_a = _bounds(ra)
    lo_b, hi_b = _bounds(rb)
    for _ in range(50):
        ma, mb = rng.uniform(lo_a, hi_a), rng.uniform(lo_b, hi_b)
        sep = (mb - ma) if a_first else (ma - mb)
        if sep < ra + rb + GAP:
            continue
        if layout == "halves" and not (min(ma, mb) <= 0.42 and max(ma, mb) >= 0.58):
            continue
        oa = rng.uniform(lo_a, hi_a) if layout == "free" else rng.uniform(max(lo_a, 0.3), min(hi_a, 0.7))
        # the other axis stays within half the separation, so the stated relation dominates
        ob_lo, ob_hi = max(lo_b, oa - 0.5 * sep), min(hi_b, oa + 0.5 * sep)
        if ob_lo >= ob_hi:
            continue
        ob = rng.uniform(ob_lo, ob_hi)
        return ((ma, oa), (mb, ob)) if horizontal else ((oa, ma), (ob, mb))
    return None


def _place_alone(rng, r: float, position: str) -> tuple[float, float]:
    lo, hi = _bounds(r)
    near, mid = (lo, max(lo, 0.32)), (0.42, 0.58)
    far = (min(hi, 0.68), hi)
    ranges = {"left": (near, mid), "right": (far, mid), "top": (mid, near), "bottom": (mid, far),
              "centre": ((0.46, 0.54), (0.46, 0.54))}[position]
    return float(rng.uniform(*ranges[0])), float(rng.uniform(*ranges[1]))


def _place_free(rng, r: float, placed: list[tuple[float, float, float]]):
    lo, hi = _bounds(r)
    for _ in range(100):
        x, y = rng.uniform(lo, hi), rng.uniform(lo, hi)
        if all(np.hypot(x - px, y - py) >= r + pr + GAP for px, py, pr in placed):
            return float(x), float(y)
    return None


def _sample_background(rng, objects: tuple[SceneObject, ...]) -> Background | None:
    plain = [c for c in COLOURS if background_contrasts(Background("plain", (c,)), objects)]
    if not plain:
        return None
    kind = _pick(rng, BACKGROUND_KINDS, p=[0.7, 0.15, 0.15])
    if kind != "plain":
        pairs = [(a, b) for a in plain for b in plain
                 if a != b and background_contrasts(Background(kind, (a, b)), objects)]
        if pairs:
            return Background(kind, _pick(rng, pairs))
    return Background("plain", (_pick(rng, plain),))


def _try_sample(rng: np.random.Generator, split: str | None, pair_layout: str = "free") -> Scene | None:
    n = int(_pick(rng, (1, 2, 3), p=[0.3, 0.45, 0.25]))
    forced_index = int(rng.integers(n)) if split == "heldout" else -1
    held = sorted(HELD_OUT_PAIRS)
    looks, taken = [], set()
    for i in range(n):
        forced = held[int(rng.integers(len(held)))] if i == forced_index else None
        look = _sample_look(rng, forced, allow_held_out=split != "train", taken=taken)
        taken.add((look[1], look[0]))
        looks.append(look)
    relation = position = None
    if n == 1:
        position = _pick(rng, POSITIONS)
        centres = [_place_alone(rng, looks[0][3], position)]
    else:
        relation = _pick(rng, RELATIONS)
        pair = _place_pair(rng, looks[0][3], looks[1][3], relation, pair_layout)
        if pair is None:
            return None
        centres = list(pair)
        if n == 3:
            third = _place_free(rng, looks[2][3], [(x, y, lk[3]) for (x, y), lk in zip(centres, looks)])
            if third is None:
                return None
            centres.append(third)
    objects = tuple(
        SceneObject(shape, colour, size, float(x), float(y), radius, angle, texture, outline)
        for (shape, colour, size, radius, angle, texture, outline), (x, y) in zip(looks, centres)
    )
    background = _sample_background(rng, objects)
    if background is None:
        return None
    return Scene(objects, background, relation, position)


def _check_pair_layout(pair_layout: str) -> None:
    if pair_layout not in PAIR_LAYOUTS:
        raise InvalidRequest("pair_layout", f"pair_layout {pair_layout!r} is not one of {PAIR_LAYOUTS}.",
                             "Use 'free' (the default) or 'halves'.")


def sample_scene(rng: np.random.Generator, split: str | None = "train", pair_layout: str = "free") -> Scene:
    """A random scene. split "train" avoids ``HELD_OUT_PAIRS``; "heldout" contains one; None mixes.
    ``pair_layout`` places two related objects (``PAIR_LAYOUTS``)."""
    if split not in (*SPLITS, None):
        raise InvalidRequest("split", f"split {split!r} is not one of {SPLITS}.", "Use split='train' or 'heldout'.")
    _check_pair_layout(pair_layout)
    for _ in range(1000):
        scene = _try_sample(rng, split, pair_layout)
        if scene is not None:
            return scene
    raise LightdiffError("could not lay out a scene in 1000 tries.", "This is a bug in lightdiff.demo.scenes.")


# ---------------------------------------------------------------- rendering

def _vertices(obj: SceneObject, scale: float) -> list[tuple[float, float]]:
    cx, cy, r = obj.cx * scale, obj.cy * scale, obj.radius * scale
    if obj.shape == "star":
        angles = [-90 + obj.angle + 36 * k for k in range(10)]
        radii = [r if k % 2 == 0 else r * STAR_INNER for k in range(10)]
    else:
        first, count = {"square": (-45, 4), "diamond": (-90, 4), "triangle": (-90, 3), "hexagon": (-90, 6)}[obj.shape]
        angles = [first + obj.angle + 360 / count * k for k in range(count)]
        radii = [r] * count
    return [(cx + rr * np.cos(np.radians(a)), cy + rr * np.sin(np.radians(a))) for a, rr in zip(angles, radii)]


def _draw_shape(draw: ImageDraw.ImageDraw, obj: SceneObject, scale: float, **ink) -> None:
    if obj.shape == "circle":
        cx, cy, r = obj.cx * scale, obj.cy * scale, obj.radius * scale
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], **ink)
    else:
        draw.polygon(_vertices(obj, scale), **ink)


def _background_array(background: Background, side: int) -> np.ndarray:
    a = np.asarray(PALETTE[background.colours[0]], np.float32)
    b = np.asarray(PALETTE[background.colours[-1]], np.float32)
    t = np.linspace(0.0, 1.0, side, dtype=np.float32)
    # one row (or column) of the ramp, then broadcast: the same values as the whole-canvas formula, faster
    line = np.round(a + (b - a) * t[:, None]).astype(np.uint8)  # [side, 3]
    if background.kind == "vertical":
        out = np.broadcast_to(line[:, None, :], (side, side, 3))
    elif background.kind == "horizontal":
        out = np.broadcast_to(line[None, :, :], (side, side, 3))
    else:
        out = np.broadcast_to(np.round(a).astype(np.uint8), (side, side, 3))
    return np.ascontiguousarray(out)


def _pattern(texture: str, side: int, period: float) -> np.ndarray:
    """Boolean texture pattern: diagonal stripes (a third of the period) or a grid of dots."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    if texture == "striped":
        return ((xx + yy) % period) < period / 3
    dx = (xx % period) - period / 2
    dy = (yy % period) - period / 2
    return dx * dx + dy * dy < (0.25 * period) ** 2


def render(scene: Scene, size: int = 128, supersample: int = 4) -> Image.Image:
    """Draw at ``supersample`` x the size and downsample with LANCZOS, for clean anti-aliased edges."""
    if size < 16:
        raise InvalidRequest("size", f"size {size} is too small to draw a scene.",
                             "Use size >= 16 (128 is the demo default).")
    side = size * supersample
    canvas = Image.fromarray(_background_array(scene.background, side), "RGB")
    for obj in scene.objects:
        mask = Image.new("L", (side, side), 0)
        _draw_shape(ImageDraw.Draw(mask), obj, side, fill=255)
        canvas.paste(PALETTE[obj.colour], (0, 0, side, side), mask)
        if obj.texture != "plain":
            pattern = _pattern(obj.texture, side, period=6.0 * side / 128)
            texture_mask = Image.fromarray((np.asarray(mask) > 127) & pattern)
            canvas.paste(texture_rgb(obj.colour), (0, 0, side, side), texture_mask)
        if obj.outline:
            width = max(1, round(1.5 * side / 128))
            _draw_shape(ImageDraw.Draw(canvas), obj, side, outline=outline_rgb(obj.colour), width=width)
    return canvas.resize((size, size), Image.LANCZOS)


# ---------------------------------------------------------------- captions

def _article(next_word: str) -> str:
    return "an" if next_word[:1] in "aeiou" else "a"


def _np_en(o: ObjectSpec) -> str:
    words = [w for w in (SIZE_EN[o.size], SURFACE_EN.get(o.surface or "", ""), o.colour, o.shape) if w]
    return f"{_article(words[0])} {' '.join(words)}"


def _np_zh(o: ObjectSpec) -> str:
    return "一个" + SIZE_ZH[o.size] + SURFACE_ZH.get(o.surface or "", "") + COLOUR_ZH[o.colour] + SHAPE_ZH[o.shape]


def _bg_en(bg: Background) -> str:
    if bg.kind == "plain":
        return f"{_article(bg.colours[0])} {bg.colours[0]} background"
    return f"{_article(bg.colours[0])} {bg.colours[0]} to {bg.colours[1]} {bg.kind} gradient background"


def _bg_zh(bg: Background) -> str:
    if bg.kind == "plain":
        return f"{COLOUR_ZH[bg.colours[0]]}背景上"
    return f"{GRADIENT_ZH[bg.kind]}由{COLOUR_ZH[bg.colours[0]]}渐变为{COLOUR_ZH[bg.colours[1]]}的背景上"


def caption(scene: Scene | SceneSpec, lang: str = "en", form: str = "relation") -> str:
    """The scene in words, following the grammar in this module's docstring.

    ``form`` is how a relation is worded (``CAPTION_FORMS``); a lone object's caption has one form.
    """
    if form not in CAPTION_FORMS:
        raise InvalidRequest("form", f"caption form {form!r} is not one of {CAPTION_FORMS}.",
                             "Use form='relation' or form='places'.")
    spec = scene.spec() if isinstance(scene, Scene) else scene
    objs = spec.objects
    places = RELATION_PLACES.get(spec.relation) if form == "places" else None
    if lang == "en":
        if len(objs) == 1:
            return f"{_np_en(objs[0])} {POSITION_EN[spec.position]} on {_bg_en(spec.background)}"
        if places:
            text = f"{POSITION_EN[places[0]]} {_np_en(objs[0])}, {POSITION_EN[places[1]]} {_np_en(objs[1])},"
            if len(objs) == 3:
                text += f" and {_np_en(objs[2])},"
            return f"{text} on {_bg_en(spec.background)}"
        text = f"{_np_en(objs[0])} {spec.relation} {_np_en(objs[1])}"
        if len(objs) == 3:
            text += f", and {_np_en(objs[2])},"
        return f"{text} on {_bg_en(spec.background)}"
    if lang == "zh":
        bg = _bg_zh(spec.background)
        if len(objs) == 1:
            return f"{bg}，{POSITION_ZH[spec.position]}有{_np_zh(objs[0])}"
        if places:
            text = f"{bg}，{POSITION_ZH[places[0]]}有{_np_zh(objs[0])}，{POSITION_ZH[places[1]]}有{_np_zh(objs[1])}"
        else:
            text = f"{bg}，{_np_zh(objs[0])}在{_np_zh(objs[1])}{RELATION_ZH[spec.relation]}"
        if len(objs) == 3:
            text += f"，还有{_np_zh(objs[2])}"
        return text
    raise InvalidRequest("lang", f"caption language {lang!r} is not supported.", "Use lang='en' or lang='zh'.")


# ---------------------------------------------------------------- parsing (the grammar, inverted)

def _alt(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


def _np_en_re(p: str) -> str:
    return (rf"an? (?:(?P<{p}size>small|large) )?(?:(?P<{p}surface>{_alt(SURFACE_EN)}) )?"
            rf"(?P<{p}colour>{_alt(COLOURS)}) (?P<{p}shape>{_alt(SHAPES)})")


def _np_zh_re(p: str) -> str:
    return (rf"一个(?P<{p}size>小的|大的)?(?P<{p}surface>{_alt(SURFACE_ZH.values())})?"
            rf"(?P<{p}colour>{_alt(COLOUR_ZH.values())})(?P<{p}shape>{_alt(SHAPE_ZH.values())})")


_BG_EN = (rf"an? (?:(?P<bg>{_alt(COLOURS)})|(?P<g1>{_alt(COLOURS)}) to (?P<g2>{_alt(COLOURS)}) "
          rf"(?P<gkind>vertical|horizontal) gradient) background")
_BG_ZH = (rf"(?:(?P<bg>{_alt(COLOUR_ZH.values())})|(?P<gkind>{_alt(GRADIENT_ZH.values())})由"
          rf"(?P<g1>{_alt(COLOUR_ZH.values())})渐变为(?P<g2>{_alt(COLOUR_ZH.values())})的)背景上")
_EN_ONE = re.compile(rf"^{_np_en_re('a')} (?P<pos>{_alt(POSITION_EN.values())}) on {_BG_EN}$")
_EN_MANY = re.compile(rf"^{_np_en_re('a')} (?P<rel>{_alt(RELATIONS)}) {_np_en_re('b')}"
                      rf"(?:, and {_np_en_re('c')},)? on {_BG_EN}$")
_ZH_ONE = re.compile(rf"^{_BG_ZH}，(?P<pos>{_alt(POSITION_ZH.values())})有{_np_zh_re('a')}$")
_ZH_MANY = re.compile(rf"^{_BG_ZH}，{_np_zh_re('a')}在{_np_zh_re('b')}(?P<rel>{_alt(RELATION_ZH.values())})"
                      rf"(?:，还有{_np_zh_re('c')})?$")
_PLACE_EN = _alt(POSITION_EN[p] for p in ("left", "right", "top", "bottom"))
_PLACE_ZH = _alt(POSITION_ZH[p] for p in ("left", "right", "top", "bottom"))
_EN_PLACES = re.compile(rf"^(?P<pa>{_PLACE_EN}) {_np_en_re('a')}, (?P<pb>{_PLACE_EN}) {_np_en_re('b')},"
                        rf"(?: and {_np_en_re('c')},)? on {_BG_EN}$")
_ZH_PLACES = re.compile(rf"^{_BG_ZH}，(?P<pa>{_PLACE_ZH})有{_np_zh_re('a')}，(?P<pb>{_PLACE_ZH})有{_np_zh_re('b')}"
                        rf"(?:，还有{_np_zh_re('c')})?$")


def _normalise(text: str) -> str:
    text = " ".join(text.strip().lower().split()).rstrip(".。")
    text = text.replace("center", "centre").replace(" ,", ",")
    if caption_language(text) == "zh":
        text = text.replace(" ", "").replace(",", "，")
    return text


def parse_caption(text: str) -> SceneSpec:
    """Invert ``caption`` for either language: the objects, relation/position and background it names."""
    norm = _normalise(text)
    zh = caption_language(norm) == "zh"
    colour_of = {v: k for k, v in COLOUR_ZH.items()} if zh else {c: c for c in COLOURS}
    shape_of = {v: k for k, v in SHAPE_ZH.items()} if zh else {s: s for s in SHAPES}
    size_of = {"小的": "small", "大的": "large"} if zh else {"small": "small", "large": "large"}
    surface_of = {v: k for k, v in (SURFACE_ZH if zh else SURFACE_EN).items()}
    place_of = {v: k for k, v in (POSITION_ZH if zh else POSITION_EN).items()}
    relation_of = {v: k for k, v in RELATION_ZH.items()} if zh else {r: r for r in RELATIONS}
    gradient_of = {v: k for k, v in GRADIENT_ZH.items()} if zh else {"vertical": "vertical", "horizontal": "horizontal"}

    match = ((_ZH_ONE if zh else _EN_ONE).match(norm) or (_ZH_MANY if zh else _EN_MANY).match(norm)
             or (_ZH_PLACES if zh else _EN_PLACES).match(norm))
    if match is None:
        example = ("黄色背景上，一个大的红色圆形在一个小的蓝色正方形左边" if zh
                   else "a large red circle left of a small blue square on a yellow background")
        raise InvalidRequest("caption", f"caption {text!r} does not follow the demo grammar.",
                             f"Write it like {example!r} (grammar: lightdiff.demo.scenes docstring).")
    g = match.groupdict()
    objects = tuple(
        ObjectSpec(shape_of[g[f"{p}shape"]], colour_of[g[f"{p}colour"]], size_of.get(g[f"{p}size"] or "", "medium"),
                   surface_of.get(g[f"{p}surface"] or ""))
        for p in "abc" if g.get(f"{p}shape")
    )
    if g["bg"]:
        background = Background("plain", (colour_of[g["bg"]],))
    else:
        background = Background(gradient_of[g["gkind"]], (colour_of[g["g1"]], colour_of[g["g2"]]))
    relation = relation_of[g["rel"]] if g.get("rel") else None
    position = place_of[g["pos"]] if g.get("pos") else None
    if g.get("pa"):
        places = (place_of[g["pa"]], place_of[g["pb"]])
        if places not in PLACES_RELATION:
            raise InvalidRequest("caption", f"caption {text!r} puts its two objects at {places[0]} and {places[1]}, "
                                 "which are not opposite places on one axis.",
                                 "Name opposite places: left and right, or top and bottom.")
        relation = PLACES_RELATION[places]
    return SceneSpec(objects, background, relation, position)


def caption_language(text: str) -> str:
    """"zh" for a caption with Chinese characters, else "en"."""
    return "zh" if re.search(r"[\u4e00-\u9fff]", text) else "en"


def caption_form(text: str) -> str:
    """Which of ``CAPTION_FORMS`` a caption uses (lone-object captions count as "relation")."""
    norm = _normalise(text)
    return "places" if _EN_PLACES.match(norm) or _ZH_PLACES.match(norm) else "relation"


# ---------------------------------------------------------------- dataset

class SceneDataset:
    """Deterministic (image, caption, scene) samples: index i of a seed is always the same sample.

    ``lang_mix`` is the fraction of Chinese captions, ``places_mix`` the fraction of two- and three-object
    captions in the places form (``CAPTION_FORMS``), ``pair_layout`` how related objects are placed
    (``PAIR_LAYOUTS``). The rng of sample i is seeded by (seed, split, i), so samples are independent of the
    order they are read in and of ``length``; the form is drawn last,
    so ``places_mix=0`` gives the captions this dataset gave before the places form existed.
    """

    def __init__(self, seed: int = 0, length: int = 10_000, size: int = 128, lang_mix: float = 0.5,
                 split: str = "train", places_mix: float = 0.0, pair_layout: str = "free"):
        if split not in SPLITS:
            raise InvalidRequest("split", f"split {split!r} is not one of {SPLITS}.", "Use split='train' or 'heldout'.")
        if not 0.0 <= lang_mix <= 1.0:
            raise InvalidRequest("lang_mix", f"lang_mix {lang_mix} is not a fraction.",
                                 "Use 0 (all English) to 1 (all Chinese).")
        if not 0.0 <= places_mix <= 1.0:
            raise InvalidRequest("places_mix", f"places_mix {places_mix} is not a fraction.",
                                 "Use 0 (relations as 'A left of B') to 1 (all as 'on the left A, on the right B').")
        if length < 0 or seed < 0:
            raise InvalidRequest("length" if length < 0 else "seed", f"seed {seed} and length {length} must be >= 0.",
                                 "Pass non-negative integers.")
        self.seed, self.length, self.size, self.lang_mix, self.split = seed, length, size, lang_mix, split
        _check_pair_layout(pair_layout)
        self.places_mix, self.pair_layout = places_mix, pair_layout

    def __len__(self) -> int:
        return self.length

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLITS.index(self.split), index])

    def _index(self, index: int) -> int:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} is out of range for a SceneDataset of length {self.length}")
        return index % self.length

    def scene_and_caption(self, index: int) -> tuple[Scene, str]:
        """The sample without drawing it (cheap)."""
        rng = self._rng(self._index(index))
        scene = sample_scene(rng, self.split, self.pair_layout)
        lang = "zh" if rng.random() < self.lang_mix else "en"
        form = "places" if rng.random() < self.places_mix else "relation"
        return scene, caption(scene, lang, form)

    def __getitem__(self, index: int) -> DemoSample:
        scene, text = self.scene_and_caption(index)
        return DemoSample(render(scene, self.size), text, scene)

    def __iter__(self):
        return (self[i] for i in range(self.length))
