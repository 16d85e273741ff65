"""The procedural demo dataset: deterministic samples, captions that invert, a clean held-out split."""

import subprocess
import sys

import numpy as np
import pytest

from lightdiff.demo.scenes import (
    CAPTION_FORMS,
    COLOURS,
    GAP,
    HELD_OUT_PAIRS,
    MARGIN,
    MIN_CONTRAST,
    PALETTE,
    POSITIONS,
    RELATIONS,
    SHAPES,
    Background,
    ObjectSpec,
    Scene,
    SceneDataset,
    SceneObject,
    SceneSpec,
    absolute_position,
    caption,
    caption_form,
    colour_distance,
    is_held_out,
    parse_caption,
    relation_between,
    render,
    sample_scene,
)
from lightdiff.errors import InvalidRequest


@pytest.fixture(scope="module")
def scenes():
    """300 scenes per split, not rendered."""
    out = []
    for split in ("train", "heldout"):
        ds = SceneDataset(seed=11, length=300, split=split)
        out += [ds.scene_and_caption(i)[0] for i in range(len(ds))]
    return out


def test_same_seed_and_index_give_the_same_sample_whatever_the_order_or_length():
    a = SceneDataset(seed=5, length=20, lang_mix=0.5)
    b = SceneDataset(seed=5, length=1000, lang_mix=0.5)
    late_first = [b[i] for i in (7, 3)]
    for index, sample in zip((7, 3), late_first):
        again = a[index]
        assert again.caption == sample.caption and again.scene == sample.scene
        assert np.array_equal(np.asarray(again.image), np.asarray(sample.image))
    assert a[3].caption != a[4].caption
    assert SceneDataset(seed=6, length=20)[3].scene != a[3].scene


def test_dataset_is_a_sequence_of_image_caption_scene():
    ds = SceneDataset(seed=0, length=3, size=64)
    samples = list(ds)
    assert len(samples) == 3
    image, text, scene = samples[0]
    assert image.size == (64, 64) and image.mode == "RGB"
    assert parse_caption(text) == scene.spec()
    assert ds[-1].caption == samples[2].caption
    with pytest.raises(IndexError):
        ds[3]


def test_bad_dataset_arguments_name_the_field():
    with pytest.raises(InvalidRequest) as err:
        SceneDataset(split="test")
    assert err.value.field == "split" and "test" in err.value.message
    with pytest.raises(InvalidRequest) as err:
        SceneDataset(lang_mix=1.5)
    assert err.value.field == "lang_mix"


def test_lang_mix_is_the_fraction_of_chinese_captions():
    def chinese(text):
        return any("\u4e00" <= ch <= "\u9fff" for ch in text)

    def fraction(mix):
        ds = SceneDataset(seed=2, length=200, lang_mix=mix)
        return sum(chinese(ds.scene_and_caption(i)[1]) for i in range(200)) / 200

    assert fraction(0.0) == 0.0 and fraction(1.0) == 1.0
    assert 0.35 < fraction(0.5) < 0.65


def test_the_briefs_example_captions_parse_to_the_scene_they_describe():
    expected = SceneSpec(
        objects=(ObjectSpec("circle", "red", "large"), ObjectSpec("square", "blue", "small")),
        background=Background("plain", ("yellow",)), relation="left of",
    )
    assert parse_caption("a large red circle left of a small blue square on a yellow background") == expected
    assert parse_caption("黄色背景上，一个大的红色圆形在一个小的蓝色正方形左边") == expected
    assert caption(expected, "en") == "a large red circle left of a small blue square on a yellow background"
    assert caption(expected, "zh") == "黄色背景上，一个大的红色圆形在一个小的蓝色正方形左边"


def test_parse_reads_lone_objects_gradients_surfaces_and_a_third_object():
    one = parse_caption("An outlined orange star in the center on a blue to white vertical gradient background.")
    assert one == SceneSpec((ObjectSpec("star", "orange", "medium", "outlined"),),
                            Background("vertical", ("blue", "white")), position="centre")
    three = parse_caption("从左到右由黑色渐变为白色的背景上，一个小的带条纹的绿色三角形在一个红色六边形下方，"
                          "还有一个大的带圆点的粉色菱形")
    assert three == SceneSpec(
        (ObjectSpec("triangle", "green", "small", "striped"), ObjectSpec("hexagon", "red"),
         ObjectSpec("diamond", "pink", "large", "dotted")),
        Background("horizontal", ("black", "white")), relation="below")


@pytest.mark.parametrize("text", ["a red circle", "a red dog left of a blue square on a yellow background",
                                  "一只猫", ""])
def test_captions_outside_the_grammar_are_rejected_with_an_example(text):
    with pytest.raises(InvalidRequest) as err:
        parse_caption(text)
    assert err.value.field == "caption" and "grammar" in err.value.hint


def test_every_caption_inverts_in_both_languages(scenes):
    for scene in scenes:
        for lang in ("en", "zh"):
            for form in CAPTION_FORMS:
                text = caption(scene, lang, form)
                assert parse_caption(text) == scene.spec(), text
                assert caption_form(text) == (form if scene.relation else "relation"), text


def test_places_form_names_each_objects_place_before_it():
    spec = SceneSpec((ObjectSpec("circle", "red", "large"), ObjectSpec("square", "blue", "small")),
                     Background("plain", ("yellow",)), relation="right of")
    assert caption(spec, "en", "places") == "on the right a large red circle, on the left a small blue square, on a yellow background"
    assert caption(spec, "zh", "places") == "黄色背景上，右边有一个大的红色圆形，左边有一个小的蓝色正方形"
    below = parse_caption("at the bottom a red circle, at the top a blue square, and a green star, on a white background")
    assert below.relation == "below" and [o.shape for o in below.objects] == ["circle", "square", "star"]


@pytest.mark.parametrize("text", ["on the left a red circle, on the left a blue square, on a yellow background",
                                  "黄色背景上，左边有一个红色圆形，上方有一个蓝色正方形"])
def test_places_that_are_not_opposite_are_rejected(text):
    with pytest.raises(InvalidRequest) as err:
        parse_caption(text)
    assert err.value.field == "caption" and "opposite" in err.value.hint


def test_places_mix_is_the_fraction_of_relations_in_the_places_form_and_zero_keeps_the_old_captions():
    def captions(mix):
        ds = SceneDataset(seed=3, length=300, places_mix=mix)
        return [ds.scene_and_caption(i) for i in range(300)]

    old, half, full = captions(0.0), captions(0.5), captions(1.0)
    assert [scene for scene, _ in old] == [scene for scene, _ in half] == [scene for scene, _ in full]
    assert all(caption(scene, "en" if text.isascii() else "zh") == text for scene, text in old)
    related = [i for i, (scene, _) in enumerate(old) if scene.relation]
    assert all(caption_form(full[i][1]) == "places" for i in related)
    share = sum(caption_form(half[i][1]) == "places" for i in related) / len(related)
    assert 0.4 < share < 0.6
    with pytest.raises(InvalidRequest) as err:
        SceneDataset(places_mix=1.5)
    assert err.value.field == "places_mix"


def test_train_split_never_shows_a_held_out_pair_and_heldout_always_does(scenes):
    train, heldout = scenes[:300], scenes[300:]
    assert not any(is_held_out(s) for s in train)
    assert all(is_held_out(s) for s in heldout)
    seen = {(o.colour, o.shape) for s in heldout for o in s.objects}
    assert HELD_OUT_PAIRS <= seen


def test_scenes_cover_the_vocabulary(scenes):
    objects = [o for s in scenes for o in s.objects]
    assert {o.shape for o in objects} == set(SHAPES)
    assert {o.colour for o in objects} == set(COLOURS)
    assert {s.relation for s in scenes if s.relation} == set(RELATIONS)
    assert {s.position for s in scenes if s.position} == set(POSITIONS)
    assert {s.background.kind for s in scenes} == {"plain", "vertical", "horizontal"}
    assert {len(s.objects) for s in scenes} == {1, 2, 3}
    textured = sum(o.texture != "plain" or o.outline for o in objects) / len(objects)
    assert 0.05 < textured < 0.35  # present, but rare


def test_layout_matches_the_caption_and_shapes_never_touch(scenes):
    for s in scenes:
        objs = s.objects
        if s.relation:
            assert relation_between((objs[0].cx, objs[0].cy), (objs[1].cx, objs[1].cy)) == s.relation
        else:
            assert absolute_position(objs[0].cx, objs[0].cy) == s.position
        for o in objs:
            assert MARGIN <= o.cx - o.radius and o.cx + o.radius <= 1 - MARGIN
            assert MARGIN <= o.cy - o.radius and o.cy + o.radius <= 1 - MARGIN
        for i, a in enumerate(objs):
            for b in objs[i + 1:]:
                assert np.hypot(a.cx - b.cx, a.cy - b.cy) >= a.radius + b.radius + GAP - 1e-9
                assert (a.colour, a.shape) != (b.colour, b.shape)


def test_backgrounds_stand_off_every_shape_colour(scenes):
    for s in scenes:
        for o in s.objects:
            for bg in s.background.colours:
                assert colour_distance(PALETTE[o.colour], PALETTE[bg]) >= MIN_CONTRAST


def test_render_paints_shapes_in_their_colour_on_the_background():
    scene = Scene(
        objects=(SceneObject("square", "red", "large", 0.3, 0.5, 0.17),
                 SceneObject("circle", "blue", "small", 0.75, 0.5, 0.08)),
        background=Background("vertical", ("white", "black")), relation="left of",
    )
    px = np.asarray(render(scene, 128)).astype(int)
    assert np.abs(px[64, int(0.3 * 128)] - PALETTE["red"]).max() <= 2
    assert np.abs(px[64, int(0.75 * 128)] - PALETTE["blue"]).max() <= 2
    assert np.abs(px[0, 64] - PALETTE["white"]).max() <= 3  # gradient: first colour at the top
    assert np.abs(px[127, 64] - PALETTE["black"]).max() <= 3
    # a horizontal gradient runs left to right
    flipped = Scene(scene.objects, Background("horizontal", ("white", "black")), "left of")
    px = np.asarray(render(flipped, 128)).astype(int)
    assert np.abs(px[2, 0] - PALETTE["white"]).max() <= 3 and np.abs(px[2, 127] - PALETTE["black"]).max() <= 3


def test_render_is_anti_aliased():
    scene = Scene((SceneObject("circle", "black", "large", 0.5, 0.5, 0.18),), Background("plain", ("white",)),
                  position="centre")
    grey = np.asarray(render(scene, 128).convert("L"))
    between = ((grey > 40) & (grey < 215)).sum()
    assert 20 < between < 400  # a soft rim of partial pixels, not a hard edge and not a blur


def test_sample_scene_rejects_an_unknown_split():
    with pytest.raises(InvalidRequest):
        sample_scene(np.random.default_rng(0), split="validation")


def test_demo_modules_do_not_import_torch():
    code = ("import sys, lightdiff.demo.scenes, lightdiff.demo.checker, lightdiff.demo.vocab\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_background_canvas_is_the_whole_canvas_ramp():
    """The renderer builds gradients from one line (fast); the values are those of the per-pixel formula."""
    from lightdiff.demo.scenes import _background_array

    side = 96
    t = np.linspace(0.0, 1.0, side, dtype=np.float32)
    for kind, ramp in (("plain", np.zeros((side, side, 1), np.float32)),
                       ("vertical", np.broadcast_to(t[:, None, None], (side, side, 1))),
                       ("horizontal", np.broadcast_to(t[None, :, None], (side, side, 1)))):
        colours = ("orange",) if kind == "plain" else ("purple", "cyan")
        a, b = (np.asarray(PALETTE[c], np.float32) for c in (colours[0], colours[-1]))
        expected = np.round(a + (b - a) * ramp).astype(np.uint8)
        assert np.array_equal(_background_array(Background(kind, colours), side), expected), kind


def test_halves_layout_puts_related_objects_across_the_centre_and_free_is_unchanged():
    """pair_layout "halves" draws a relation as two lone places (near side, far side, middle band), so the
    words map to fixed regions as "on the left" does; the default "free" gives the same scenes as before."""
    from lightdiff.demo.checker import score_many

    halves = SceneDataset(seed=11, length=400, size=64, split="train", pair_layout="halves")
    seen = 0
    for i in range(len(halves)):
        scene, _ = halves.scene_and_caption(i)
        if scene.relation is None:
            continue
        seen += 1
        a, b = scene.objects[:2]
        horizontal = scene.relation in ("left of", "right of")
        main = (a.cx, b.cx) if horizontal else (a.cy, b.cy)
        other = a.cy if horizontal else a.cx
        assert min(main) <= 0.42 and max(main) >= 0.58 and 0.3 <= other <= 0.7
        assert relation_between((a.cx, a.cy), (b.cx, b.cy)) == scene.relation
    assert seen > 200
    # the checker reads the rendered ground truth of this layout as well as of the free one
    rendered = [halves[i] for i in range(60)]
    assert score_many([s.image for s in rendered], [s.caption for s in rendered])["percent"]["position"] >= 98.0
    free, default = SceneDataset(seed=11, length=50, pair_layout="free"), SceneDataset(seed=11, length=50)
    assert all(free.scene_and_caption(i) == default.scene_and_caption(i) for i in range(50))
    with pytest.raises(InvalidRequest) as err:
        SceneDataset(pair_layout="centred")
    assert err.value.field == "pair_layout"
