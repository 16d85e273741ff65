"""The prompt-adherence checker: right on ground truth, and it notices captions that lie."""

import dataclasses
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from lightdiff.demo.checker import check, detect, score_many
from lightdiff.demo.scenes import COLOURS, PALETTE, SceneDataset, caption, caption_language, render
from lightdiff.errors import InvalidRequest

OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above",
            "left": "right", "right": "left", "top": "bottom", "bottom": "top", "centre": "left"}


@pytest.fixture(scope="module")
def ground_truth():
    """160 rendered scenes from each split, 128 px, captions in both languages."""
    samples = []
    for split in ("train", "heldout"):
        ds = SceneDataset(seed=2024, length=160, size=128, lang_mix=0.5, split=split)
        samples += list(ds)
    return samples


def test_checker_is_right_on_ground_truth_scenes(ground_truth):
    images = [s.image for s in ground_truth]
    summary = score_many(images, [s.caption for s in ground_truth])
    assert summary["n"] == 320
    pct = summary["percent"]
    assert pct["colour_shape"] >= 98.0, pct
    assert pct["position"] >= 98.0, pct
    assert pct["count"] >= 98.0, pct
    assert pct["size"] >= 95.0, pct


def _lie_about_colour(scene):
    """The first object's colour swapped for one no object in the scene has."""
    spec = scene.spec()
    used = {o.colour for o in spec.objects}
    other = next(c for c in COLOURS if c not in used)
    objects = (dataclasses.replace(spec.objects[0], colour=other),) + spec.objects[1:]
    return dataclasses.replace(spec, objects=objects)


def _lie_about_shape(scene):
    spec = scene.spec()
    used = {o.shape for o in spec.objects}
    other = next(s for s in ("circle", "square", "triangle", "star", "diamond", "hexagon") if s not in used)
    objects = (dataclasses.replace(spec.objects[0], shape=other),) + spec.objects[1:]
    return dataclasses.replace(spec, objects=objects)


def _lie_about_place(scene):
    spec = scene.spec()
    if spec.relation:
        return dataclasses.replace(spec, relation=OPPOSITE[spec.relation])
    return dataclasses.replace(spec, position=OPPOSITE[spec.position])


@pytest.mark.parametrize("lie, criterion", [(_lie_about_colour, "colour"), (_lie_about_shape, "shape"),
                                            (_lie_about_place, "position")])
def test_a_wrong_caption_scores_low_on_what_it_got_wrong(ground_truth, lie, criterion):
    samples = ground_truth[::4]
    honest = score_many([s.image for s in samples], [s.caption for s in samples])["percent"]
    lang = [caption_language(s.caption) for s in samples]
    wrong = [caption(lie(s.scene), lg) for s, lg in zip(samples, lang)]
    lied = score_many([s.image for s in samples], wrong)["percent"]
    assert honest[criterion] >= 98.0
    assert lied[criterion] <= 5.0, (criterion, lied)
    assert lied["all"] <= 5.0


def test_an_object_that_is_not_there_fails_count_and_colour(ground_truth):
    sample = next(s for s in ground_truth if len(s.scene.objects) == 2)
    spec = sample.scene.spec()
    used = {o.colour for o in spec.objects}
    extra = dataclasses.replace(spec.objects[1], colour=next(c for c in COLOURS if c not in used))
    result = check(sample.image, dataclasses.replace(spec, objects=spec.objects + (extra,)))
    assert not result.count_ok and not result.colour_ok
    assert result.assignment[2] is None
    assert check(sample.image, sample.scene).all_ok


def _drawn_by_hand():
    """Shapes drawn with OpenCV, independent of scenes.render: a hard-edged, differently made image."""
    img = np.full((160, 160, 3), PALETTE["white"], np.uint8)
    cv2.circle(img, (40, 80), 18, PALETTE["blue"], -1, lineType=cv2.LINE_AA)
    cv2.rectangle(img, (100, 62), (136, 98), PALETTE["red"], -1)
    triangle = np.array([[80, 10], [96, 38], [64, 38]], np.int32)
    cv2.fillPoly(img, [triangle], PALETTE["green"], lineType=cv2.LINE_AA)
    return img


def test_detect_finds_hand_drawn_shapes_their_colours_and_places():
    blobs = detect(_drawn_by_hand())
    found = {(b.colour, b.shape) for b in blobs}
    assert found == {("blue", "circle"), ("red", "square"), ("green", "triangle")}
    by_shape = {b.shape: b for b in blobs}
    assert by_shape["circle"].cx == pytest.approx(40.5 / 160, abs=0.01)
    assert by_shape["square"].cy == pytest.approx(80.5 / 160, abs=0.01)
    assert by_shape["triangle"].cy < by_shape["circle"].cy


def test_check_reads_a_caption_against_a_hand_drawn_image():
    image = Image.fromarray(_drawn_by_hand())
    assert check(image, "a blue circle left of a red square, and a small green triangle, "
                        "on a white background").all_ok
    result = check(image, "白色背景上，一个红色正方形在一个蓝色圆形左边，还有一个小的绿色三角形")
    assert result.count_ok and result.colour_ok and result.shape_ok and not result.position_ok


def test_position_outcome_tells_a_mirrored_relation_from_one_on_the_wrong_axis():
    """What a failed position was, so a training run knows whether relations are confused or not learned."""
    image = Image.fromarray(_drawn_by_hand())  # blue circle left of red square, level with it
    tail = ", and a small green triangle, on a white background"
    assert check(image, "a blue circle left of a red square" + tail).position_outcome == "ok"
    assert check(image, "a blue circle right of a red square" + tail).position_outcome == "swapped"
    assert check(image, "a blue circle above a red square" + tail).position_outcome == "other axis"


def test_position_outcomes_are_counted_apart_for_relations_and_places(ground_truth):
    samples = ground_truth[::4]
    honest = score_many([s.image for s in samples], [s.caption for s in samples])["position_outcomes"]
    assert set(honest["relation"]) == {"ok"} and set(honest["place"]) == {"ok"}
    lied = score_many([s.image for s in samples], [_lie_about_place(s.scene) for s in samples])
    outcomes = lied["position_outcomes"]
    assert outcomes["relation"] == {"swapped": honest["relation"]["ok"]}  # each relation turned around
    assert outcomes["place"] == {"wrong place": honest["place"]["ok"]}
    assert json.loads(json.dumps(lied["results"][0].to_dict()))["position_outcome"] in ("swapped", "wrong place")


def test_position_is_reported_per_caption_wording(ground_truth):
    samples = ground_truth[::3]
    texts = [caption(s.scene, lang, form) for s in samples for lang in ("en", "zh") for form in ("relation", "places")]
    images = [s.image for s in samples for _ in range(4)]
    honest = score_many(images, texts)["position_by_wording"]
    assert {"relation en", "relation zh", "places en", "places zh", "place en", "place zh"} == set(honest)
    assert all(v["percent"] == 100.0 for v in honest.values())
    assert sum(v["n"] for v in honest.values()) == len(texts)
    # lie only in the places wording: only those rows drop
    lied = [caption(_lie_about_place(s.scene), lang, form) if form == "places" and s.scene.relation
            else caption(s.scene, lang, form)
            for s in samples for lang in ("en", "zh") for form in ("relation", "places")]
    scored = score_many(images, lied)["position_by_wording"]
    assert scored["places en"]["percent"] == scored["places zh"]["percent"] == 0.0
    assert scored["relation en"]["percent"] == scored["place zh"]["percent"] == 100.0


def test_empty_background_has_nothing_to_find():
    flat = np.zeros((128, 128, 3), np.uint8)
    flat[:] = PALETTE["yellow"]
    result = check(flat, "a red circle in the centre on a yellow background")
    assert result.blobs == [] and not result.count_ok and not result.colour_ok and not result.position_ok
    assert result.position_outcome == "missing"


def test_noise_like_a_models_output_does_not_fool_it(ground_truth):
    rng = np.random.default_rng(0)
    samples = ground_truth[1::8]
    noisy = [Image.fromarray(np.clip(np.asarray(s.image) + rng.normal(0, 6, (128, 128, 3)), 0, 255).astype(np.uint8))
             for s in samples]
    pct = score_many(noisy, [s.scene for s in samples])["percent"]
    assert pct["colour_shape"] >= 95.0 and pct["position"] >= 95.0, pct


def test_larger_images_work_the_same():
    ds = SceneDataset(seed=9, length=12, size=256, lang_mix=0.0)
    pct = score_many([s.image for s in ds], [s.caption for s in ds])["percent"]
    assert pct["all"] == 100.0, pct


def test_score_many_reports_percent_per_criterion():
    ds = SceneDataset(seed=3, length=8, lang_mix=0.0)
    samples = list(ds)
    captions = [s.caption if i % 2 == 0 else caption(_lie_about_place(s.scene), "en") for i, s in enumerate(samples)]
    summary = score_many([s.image for s in samples], captions)
    assert summary["n"] == 8 and len(summary["results"]) == 8
    assert summary["percent"]["position"] == 50.0
    assert summary["percent"]["colour"] == 100.0
    assert set(summary["percent"]) == {"count", "colour", "shape", "colour_shape", "position", "size", "all"}
    assert json.loads(json.dumps(summary["results"][1].to_dict()))["position_ok"] is False


def test_score_many_needs_one_caption_per_image():
    with pytest.raises(InvalidRequest) as err:
        score_many([render(SceneDataset(length=1)[0].scene)], [])
    assert err.value.field == "captions"
