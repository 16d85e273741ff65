"""Claims against measurement: verdicts follow from the rows, the specs and the card peaks."""

import copy
import json
from pathlib import Path

import pytest

from lightdiff import specs
from lightdiff.reports.claims import CONSISTENT, CONTRADICTED, IMPOSSIBLE, NOT_MEASURED, judge_claims, load_claims
from lightdiff.reports.load import Results, read_jsonl, vram_seen
from lightdiff.reports.physics import denoiser_floor
from lightdiff.specs.cards import find_card

FIXTURE = Path(__file__).parent / "fixtures" / "bench_sample.jsonl"
QWEN, SD = "qwen-image-2512", "sd15"


@pytest.fixture(scope="module")
def results():
    return Results.from_files([FIXTURE])


@pytest.fixture
def claims():
    return copy.deepcopy(load_claims())


def verdict(results, claims, subject):
    matches = [v for v in judge_claims(results, claims) if v.subject == subject]
    assert len(matches) == 1, [v.subject for v in judge_claims(results, claims)]
    return matches[0]


def speed_claim(claims, model, resolution):
    return next(c for c in claims["speed_memory"] if c["model"] == model and c["resolution"] == resolution)


def test_packaged_claims_are_the_reference_copy():
    # the steering repo's shared/ folder lies beside the project checkout (in CI too)
    ref = Path(__file__).resolve().parents[2] / "shared" / "reference" / "article-claims.json"
    if not ref.exists():
        pytest.skip("reference folder not present")
    assert load_claims() == json.loads(ref.read_text())


def test_every_claimed_figure_gets_a_verdict(results, claims):
    verdicts = judge_claims(results, claims)
    subjects = {v.subject for v in verdicts}
    for c in claims["speed_memory"]:
        size = f"{c['resolution']}x{c['resolution']}"
        assert f"{c['model']} {size} peak VRAM" in subjects and f"{c['model']} {size} s/image" in subjects
    for c in claims["deployment"]:
        assert sum(1 for s in subjects if s.startswith(c["model"]) and ("VRAM" in s or "startup" in s)) >= 3
    assert sum(1 for v in verdicts if v.section == "batch test") >= len(claims["batch_test"]["results"])
    assert sum(1 for v in verdicts if v.section.startswith("ControlNet")) == 2
    assert all(v.verdict in (CONSISTENT, CONTRADICTED, IMPOSSIBLE, NOT_MEASURED) and v.arithmetic for v in verdicts)


def test_qwen_peak_below_its_weights_is_impossible_and_shows_the_arithmetic(results, claims):
    v = verdict(results, claims, f"{QWEN} 512x512 peak VRAM")
    assert v.verdict == IMPOSSIBLE
    params_b = specs.get(QWEN).params_M("transformer") / 1000
    assert f"{params_b:.2f} B params x 1 byte (fp8)" in v.arithmetic
    assert f"{params_b:.2f} GB decimal" in v.arithmetic
    assert denoiser_floor(QWEN, "fp8").gb == pytest.approx(specs.get(QWEN).params_M("transformer") * 1e6 / 2**30)


def test_changing_the_claimed_peak_changes_the_verdict(results, claims):
    measured = [vram_seen(r["peak_vram"])[0] for r in results.of("speed", ok=True, model=QWEN, width=512,
                                                                   batch_size=1)]
    speed_claim(claims, QWEN, 512)["peak_vram_gb"] = 45.0  # above the weights, near the bf16 runs
    assert any(abs(45.0 - m) <= max(1.0, 0.15 * m) for m in measured)
    assert verdict(results, claims, f"{QWEN} 512x512 peak VRAM").verdict == CONSISTENT
    speed_claim(claims, QWEN, 512)["peak_vram_gb"] = 30.0  # above the weights, far from every plan
    assert verdict(results, claims, f"{QWEN} 512x512 peak VRAM").verdict == CONTRADICTED


def test_a_claim_that_states_4bit_weights_or_offloading_is_not_held_to_the_fp8_floor(results, claims):
    c = speed_claim(claims, QWEN, 512)
    c["weights"] = "4-bit (NF4)"  # 20.43 B x 0.5 byte = 9.5 GiB < 10.6 GB: possible, but no row measured it
    v = verdict(results, claims, f"{QWEN} 512x512 peak VRAM")
    assert v.verdict == CONTRADICTED and "0.5 byte (4-bit)" in v.arithmetic
    del c["weights"]
    c["offload"] = True
    assert verdict(results, claims, f"{QWEN} 512x512 peak VRAM").verdict == CONTRADICTED


def test_seconds_below_the_flop_floor_are_impossible(results, claims):
    v = verdict(results, claims, f"{QWEN} 1024x1024 s/image")
    assert v.verdict == IMPOSSIBLE
    flops = next(r["flops_per_image"] for r in results.rows if r["model"] == QWEN and r.get("width") == 1024
                 and r.get("flops_per_image"))
    floor = flops / (find_card("RTX 4090D").bf16_tflops * 1e12)
    assert 9.6 < floor
    assert f"= {floor:.3g} s" in v.arithmetic


def test_seconds_only_fp8_matmuls_could_reach_are_judged_against_the_measurement(results, claims):
    # between the fp8 and the bf16 FLOP floors: not impossible (a 4090D has fp8 tensor cores), but the
    # arithmetic says what share of the fp8 peak it would take
    flops = next(r["flops_per_image"] for r in results.rows if r["model"] == QWEN and r.get("width") == 1024
                 and r.get("flops_per_image"))
    card = find_card("RTX 4090D")
    bf16_floor, fp8_floor = flops / (card.bf16_tflops * 1e12), flops / (card.fp8_tflops * 1e12)
    speed_claim(claims, QWEN, 1024)["sec_per_image"] = round((bf16_floor + fp8_floor) / 2, 2)
    v = verdict(results, claims, f"{QWEN} 1024x1024 s/image")
    assert v.verdict in (CONSISTENT, CONTRADICTED)
    assert "possible only with fp8 matmuls" in v.arithmetic and "of the fp8 peak" in v.arithmetic


def test_seconds_are_judged_against_a_card_scaled_range(results, claims):
    c = speed_claim(claims, QWEN, 1024)
    c["sec_per_image"] = 30.0  # above the 4090D floor and inside the H100 run scaled by 989/147
    v = verdict(results, claims, f"{QWEN} 1024x1024 s/image")
    assert v.verdict == CONSISTENT
    assert "989" in v.arithmetic and "147" in v.arithmetic and "estimate" in v.arithmetic
    c["sec_per_image"] = 200.0  # far slower than even the compute-bound scaling allows
    assert verdict(results, claims, f"{QWEN} 1024x1024 s/image").verdict == CONTRADICTED


def test_verdict_follows_the_measured_rows(tmp_path, claims):
    """Same claim, different measurement: sd15's 14.8 GB becomes consistent if we had measured ~14.5 GB."""
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]
    assert verdict(Results.from_files([FIXTURE]), claims, f"{SD} 512x512 peak VRAM").verdict == CONTRADICTED
    for r in rows:
        if r["model"] == SD and r["kind"] == "speed" and r["width"] == 512 and r["batch_size"] == 1:
            r["peak_vram"] = {"allocated_gb": 13.9, "reserved_gb": 14.2, "nvml_used_gb": 14.5}
    p = tmp_path / "changed.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert verdict(Results.from_files([p]), claims, f"{SD} 512x512 peak VRAM").verdict == CONSISTENT


def test_sd15_batch_oom_claim_is_contradicted_only_while_our_peak_fits_the_card(tmp_path, claims):
    subject = f"{SD} 10 images at batch 2: outcome"
    v = verdict(Results.from_files([FIXTURE]), claims, subject)
    assert v.verdict == CONTRADICTED and "fits the article's 24 GB card" in v.arithmetic
    rows = read_jsonl(FIXTURE)
    for r in rows:
        r.pop("_source")
        if r["kind"] == "batch" and r["model"] == SD:
            r["peak_vram"] = {"allocated_gb": 26.0, "reserved_gb": 27.0, "nvml_used_gb": 28.0}
    p = tmp_path / "big.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert verdict(Results.from_files([p]), claims, subject).verdict == CONSISTENT


def test_cases_without_rows_are_not_measured(results, claims):
    claims["speed_memory"].append({"model": SD, "resolution": 2048, "sec_per_image": 30.0, "peak_vram_gb": 20.0})
    assert verdict(results, claims, f"{SD} 2048x2048 peak VRAM").verdict == NOT_MEASURED
    assert verdict(results, claims, f"{SD} 2048x2048 s/image").verdict == NOT_MEASURED
    claims["controlnet_canny_overhead"]["model"] = SD
    assert verdict(results, claims, f"{SD} ControlNet extra VRAM").verdict == NOT_MEASURED


def test_startup_claim_uses_the_bound(results, claims):
    qwen = next(c for c in claims["deployment"] if c["model"] == QWEN)
    subject = f"{QWEN} startup to first image (ComfyUI)"
    measured = min(r["startup"]["total_s"] for r in results.of("speed", ok=True, model=QWEN) if r.get("startup"))
    qwen["startup_s"] = f"<{measured * 2:.0f}"
    assert verdict(results, claims, subject).verdict == CONSISTENT
    qwen["startup_s"] = f"<{measured / 3:.0f}"
    assert verdict(results, claims, subject).verdict == CONTRADICTED
