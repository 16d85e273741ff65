"""Claims against measurement: each figure of the article beside ours, with a verdict and its arithmetic.

Verdicts, in the order they are tested:
- "physically impossible": (a) the claimed VRAM is below what the denoiser's weights alone take
  (parameters x bytes per parameter, fp8 unless the claim states 4-bit weights or offloading), or
  (b) the claimed seconds are below the FLOP floor on the article's card (FLOPs / bf16 peak; where
  the card has fp8 tensor cores and the claim is above the fp8 floor, it is judged against the
  measurement instead, saying what share of the fp8 peak it would need).
- "not measured": no row covers the case.
- "contradicted by measurement": the claim lies outside what we measured, by more than the
  tolerances below. VRAM for the same plan does not depend on the card, so it is compared
  directly (with any measured plan: the article does not say which one it used). Seconds measured
  on another card are first turned into a range for the article's card (physics.scaled_range).
- "consistent": otherwise.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lightdiff.errors import LightdiffError
from lightdiff.reports.load import Results, vram_seen
from lightdiff.reports.physics import (
    FlopTable,
    WeightFloor,
    card_of,
    denoiser_floor,
    flop_floor_s,
    row_card,
    scaled_range,
)

CONSISTENT = "consistent"
CONTRADICTED = "contradicted by measurement"
IMPOSSIBLE = "physically impossible"
NOT_MEASURED = "not measured"
VERDICTS = (CONSISTENT, CONTRADICTED, IMPOSSIBLE, NOT_MEASURED)

TIME_TOLERANCE = 0.25  # a claimed time may lie 25% outside the estimated range for the article's card
VRAM_TOLERANCE_FRAC = 0.15  # frontends, CUDA context and allocator settings move peaks a little
VRAM_TOLERANCE_GB = 1.0
TOLERANCE_TEXT = (f"Tolerances: VRAM within max({VRAM_TOLERANCE_GB:g} GB, {VRAM_TOLERANCE_FRAC:.0%}) of a measured "
                  f"plan; seconds within {TIME_TOLERANCE:.0%} of the range estimated for the article's card.")


@dataclass(frozen=True)
class Verdict:
    section: str
    subject: str
    claimed: str
    measured: str
    verdict: str
    arithmetic: str


def load_claims(path: str | Path | None = None) -> dict:
    """The article's figures: the packaged copy, or a file of the same shape."""
    try:
        if path is None:
            text = resources.files("lightdiff").joinpath("data/article-claims.json").read_text(encoding="utf-8")
            where = "lightdiff/data/article-claims.json"
        else:
            text = Path(path).read_text(encoding="utf-8")
            where = str(path)
    except OSError as e:
        raise LightdiffError(f"Cannot read claims file {path}: {e.strerror}.",
                             "Pass --claims with a JSON file shaped like lightdiff/data/article-claims.json.",
                             code="invalid_request") from None
    try:
        claims = json.loads(text)
    except json.JSONDecodeError as e:
        raise LightdiffError(f"Claims file {where} is not valid JSON (line {e.lineno}: {e.msg}).",
                             "Fix the file or pass another with --claims.", code="invalid_request") from None
    if not isinstance(claims, dict) or not (claims.get("hardware") or {}).get("gpu"):
        raise LightdiffError(f"Claims file {where} lacks hardware.gpu (the article's card).",
                             'Add "hardware": {"gpu": "NVIDIA RTX 4090D", "vram_gb": 24}.', code="invalid_request")
    return claims


def _num(x: float | None, unit: str = "", digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}g}{unit}"


def _bound(value) -> tuple[str, float] | None:
    """'<60' -> ('<', 60.0); 120 -> ('=', 120.0); None if no number."""
    if isinstance(value, (int, float)):
        return "=", float(value)
    m = re.match(r"\s*([<>]?)=?\s*([0-9.]+)", str(value or ""))
    return (m.group(1) or "=", float(m.group(2))) if m else None


def _describe_row(row: dict) -> str:
    budget = row.get("vram_budget_gb")
    card = row_card(row)
    parts = [row.get("plan") or "?", row.get("variant") or "?", f"budget {budget:g} GB" if budget else "whole card"]
    return f"{', '.join(parts)}; {card.name if card else (row.get('env') or {}).get('gpu', '?')}; {row['_source']}"


class ClaimJudge:
    def __init__(self, results: Results, claims: dict):
        self.results = results
        self.claims = claims
        hw = claims.get("hardware") or {}
        self.card = card_of(hw.get("gpu"))
        self.card_name = self.card.name if self.card else str(hw.get("gpu"))
        self.card_vram = float(hw.get("vram_gb") or (self.card.vram_gb if self.card else 0)) or None
        settings = claims.get("settings") or {}
        self.steps = settings.get("steps")
        self.base = int(settings.get("base_resolution") or 512)
        self.flops = FlopTable(results.rows)

    # --- the two physical tests ----------------------------------------------------------

    def _weight_floor(self, model: str, claim: dict) -> tuple[WeightFloor | None, str]:
        """The weight floor that applies to this claim, or None with the reason it does not."""
        stated = " ".join(str(claim.get(k, "")) for k in ("plan", "weights", "offload", "note")).lower()
        if claim.get("offload") is True or "offload" in stated:
            return None, "the claim states offloading, so resident weights set no floor"
        dtype = "4-bit" if any(w in stated for w in ("4-bit", "4bit", "nf4", "int4", "q4")) else "fp8"
        floor = denoiser_floor(model, dtype)
        if floor is None:
            return None, f"{model} has no spec with parameter counts, so no weight floor"
        return floor, ""

    def _vram(self, section: str, subject: str, model: str, claimed: float, claim: dict,
              rows: list[dict], block: str) -> Verdict:
        floor, why_none = self._weight_floor(model, claim)
        measured = [(v, how, r) for r in rows for v, how in [vram_seen(r.get(block))] if v is not None]
        closest = min(measured, key=lambda m: abs(m[0] - claimed)) if measured else None
        ours = f"{closest[0]:.3g} GB ({closest[1]}; {_describe_row(closest[2])})" if closest else "-"
        claimed_s = f"{claimed:g} GB"
        if floor and claimed < floor.gb:
            return Verdict(section, subject, claimed_s, ours, IMPOSSIBLE,
                           f"Weights alone: {floor.arithmetic()}, more than the claimed {claimed:g} GB. Only "
                           f"offloading or 4-bit weights could go below it, and the claim states neither.")
        physics = (f"Weight floor: {floor.arithmetic()} <= claimed {claimed:g} GB. " if floor else
                   f"No weight floor ({why_none}). ")
        if not closest:
            return Verdict(section, subject, claimed_s, ours, NOT_MEASURED,
                           physics + "No measured row for this model and case.")
        listing = _group_listing(measured)
        v = closest[0]
        tol = max(VRAM_TOLERANCE_GB, VRAM_TOLERANCE_FRAC * v)
        diff = abs(claimed - v)
        ok = diff <= tol
        return Verdict(section, subject, claimed_s, ours, CONSISTENT if ok else CONTRADICTED,
                       physics + f"Measured (VRAM for a plan is the same on any card): {listing}. Closest: "
                       f"|{claimed:g} - {v:.3g}| = {diff:.3g} GB {'<=' if ok else '>'} tolerance "
                       f"max({VRAM_TOLERANCE_GB:g}, {VRAM_TOLERANCE_FRAC:.0%} x {v:.3g}) = {tol:.3g} GB.")

    def _time(self, section: str, subject: str, model: str, size: int, claimed: float,
              times: list[tuple[float, dict]], n_images: int = 1, claim: dict | None = None,
              count_flops: bool = True) -> Verdict:
        claim = claim or {}
        claimed_s = f"{claimed:g} s"
        floor = None
        physics = ""
        hit = self.flops.lookup(model, size, size, self.steps) if count_flops else None
        if hit and self.card:
            flops, how = hit
            # fp8 matmuls only count where the claim states them and the card has fp8 tensor cores
            fp8 = "fp8" in str(claim.get("compute", "")).lower() and bool(self.card.fp8_tflops)
            floor = flop_floor_s(flops * n_images, self.card, "fp8" if fp8 else "bf16")
            peak = self.card.fp8_tflops if fp8 else self.card.bf16_tflops
            images = f" x {n_images} images" if n_images > 1 else ""
            physics = (f"FLOP floor on {self.card.name}: {how}{images} / {peak:g} TFLOP/s "
                       f"({'fp8' if fp8 else 'bf16'} dense peak) = {floor:.3g} s.")
            fp8_floor = flop_floor_s(flops * n_images, self.card, "fp8")
            if not fp8 and fp8_floor:
                physics += f" (fp8 matmuls, which the claim does not state, would lower it to {fp8_floor:.3g} s.)"
            if claimed < floor and not (fp8_floor and claimed >= fp8_floor and not fp8):
                ours = self._times_text(times)
                return Verdict(section, subject, claimed_s, ours, IMPOSSIBLE,
                               f"{physics} The claimed {claimed:g} s is below it: the card cannot do the arithmetic "
                               "that fast even at 100% of its peak.")
            if claimed < floor:  # only fp8 matmuls, which the claim does not state, could reach it
                physics += (f" Claimed {claimed:g} s is below the bf16 floor: possible only with fp8 matmuls at "
                            f"{fp8_floor / claimed:.0%} or more of the fp8 peak. ")
            else:
                physics += f" Claimed {claimed:g} s >= floor. "
        elif count_flops:
            physics = f"No FLOP count for {model} at {size}x{size} in any row, so no FLOP floor. "
        else:
            physics = "No FLOP floor (this part's FLOPs are not counted separately). "
        on_cards = [(t, row_card(r)) for t, r in times if row_card(r)]
        if not on_cards or not self.card:
            why = ("No measured row on a known card" if not on_cards else
                   f"The article's card {self.card_name!r} is not in lightdiff.specs.cards")
            return Verdict(section, subject, claimed_s, self._times_text(times), NOT_MEASURED, physics + why + ".")
        low, high, text = scaled_range([(t, c) for t, c in on_cards], self.card, floor)
        ok = low / (1 + TIME_TOLERANCE) <= claimed <= high * (1 + TIME_TOLERANCE)
        where = "inside" if ok else ("above" if claimed > high else "below")
        return Verdict(section, subject, claimed_s, self._times_text(times), CONSISTENT if ok else CONTRADICTED,
                       f"{physics}{text}. Claimed {claimed:g} s is {where} "
                       f"[{low / (1 + TIME_TOLERANCE):.3g}, {high * (1 + TIME_TOLERANCE):.3g}] s "
                       f"(the range widened by {TIME_TOLERANCE:.0%}). This is an estimate from another card, "
                       "not a measurement on the article's card.")

    @staticmethod
    def _times_text(times: list[tuple[float, dict]]) -> str:
        if not times:
            return "-"
        t, r = min(times, key=lambda x: x[0])
        more = f" (+{len(times) - 1} more plans)" if len(times) > 1 else ""
        return f"{t:.3g} s ({_describe_row(r)}){more}"

    # --- which rows stand for a claimed case ----------------------------------------------

    def _speed_rows(self, model: str, size: int) -> list[dict]:
        return [r for r in self.results.of("speed", ok=True, model=model, workflow="txt2img", batch_size=1)
                if r.get("width") == size and r.get("height") == size]

    def _fits_article_card(self, rows: list[dict]) -> tuple[list[dict], str]:
        """Rows whose plan fits the article's card (budget or measured peak); all rows if none does."""
        if not self.card_vram or not rows:
            return rows, ""
        fit = [r for r in rows if (r.get("vram_budget_gb") and r["vram_budget_gb"] <= self.card_vram)
               or ((vram_seen(r.get("peak_vram"))[0] or 1e9) <= self.card_vram)]
        if fit:
            return fit, ""
        return rows, f" None of the measured plans fits {self.card_vram:g} GB, so plans that do not fit set the range."

    # --- claim sections -------------------------------------------------------------------

    def speed_memory(self) -> list[Verdict]:
        out = []
        for c in self.claims.get("speed_memory") or []:
            model, size = c["model"], int(c["resolution"])
            rows = self._speed_rows(model, size)
            if c.get("peak_vram_gb") is not None:
                out.append(self._vram("speed and memory", f"{model} {size}x{size} peak VRAM", model,
                                      float(c["peak_vram_gb"]), c, rows, "peak_vram"))
            if c.get("sec_per_image") is not None:
                fit, note = self._fits_article_card(rows)
                v = self._time("speed and memory", f"{model} {size}x{size} s/image", model, size,
                               float(c["sec_per_image"]), [(r["sec_per_image"], r) for r in fit
                                                            if r.get("sec_per_image")], claim=c)
                out.append(_add_note(v, note))
        return out

    def deployment(self) -> list[Verdict]:
        out = []
        for c in self.claims.get("deployment") or []:
            model = c["model"]
            all_speed = [r for r in self.results.of("speed", ok=True, model=model, workflow="txt2img")]
            if c.get("idle_vram_gb") is not None:
                out.append(self._vram("deployment", f"{model} idle VRAM (model loaded)", model,
                                      float(c["idle_vram_gb"]), c, all_speed, "idle_vram"))
            if c.get("generating_vram_gb") is not None:
                rows = self._speed_rows(model, self.base)
                out.append(self._vram("deployment", f"{model} VRAM while generating ({self.base}x{self.base})",
                                      model, float(c["generating_vram_gb"]), c, rows, "peak_vram"))
            if c.get("startup_s") is not None:
                out.append(self._startup(model, c, all_speed))
        return out

    def _startup(self, model: str, c: dict, rows: list[dict]) -> Verdict:
        subject = f"{model} startup to first image ({c.get('frontend', 'frontend not stated')})"
        bound = _bound(c["startup_s"])
        starts = [(r["startup"]["total_s"], r) for r in rows if (r.get("startup") or {}).get("total_s")]
        if not bound or not starts:
            return Verdict("deployment", subject, str(c["startup_s"]) + " s", "-", NOT_MEASURED,
                           "No row measured a cold start for this model." if bound else "The claim has no number.")
        t, r = min(starts, key=lambda x: x[0])
        st = r["startup"]
        split = ", ".join(f"{k} {st[k]:.3g} s" for k in ("import_s", "load_s", "to_device_s", "warmup_s")
                          if st.get(k) is not None)
        disk = f"; disk read {st['disk_read_gbps']:.3g} GB/s" if st.get("disk_read_gbps") else ""
        op, x = bound
        if op == "<":
            ok = t <= x * (1 + TIME_TOLERANCE)
            rule = f"{t:.3g} s {'<=' if ok else '>'} {x:g} x {1 + TIME_TOLERANCE:g} = {x * (1 + TIME_TOLERANCE):.3g} s"
        else:
            ok = abs(t - x) <= TIME_TOLERANCE * x
            rule = (f"|{t:.3g} - {x:g}| = {abs(t - x):.3g} s {'<=' if ok else '>'} "
                    f"{TIME_TOLERANCE:.0%} x {x:g} = {TIME_TOLERANCE * x:.3g} s")
        return Verdict("deployment", subject, f"{c['startup_s']} s", f"{t:.3g} s ({_describe_row(r)})",
                       CONSISTENT if ok else CONTRADICTED,
                       f"lightdiff cold process to first image: {t:.3g} s ({split}{disk}). {rule}. Startup depends "
                       "on the disk and on the frontend (the article's includes its web UI, which lightdiff does "
                       "not run), so this compares the model's own startup on the measured host.")

    def batch_test(self) -> list[Verdict]:
        bt = self.claims.get("batch_test") or {}
        if not bt:
            return []
        images, bs = int(bt.get("images") or 0), int(bt.get("batch_size") or 1)
        out = []
        for c in bt.get("results") or []:
            model = c["model"]
            rows = [r for r in self.results.of("batch", model=model)
                    if r.get("images_requested") == images and r.get("batch_size") == bs]
            at_base = [r for r in rows if r.get("width") in (None, self.base)]
            rows = at_base or rows
            case = f"{model} {images} images at batch {bs}"
            out.append(self._batch_outcome(case, c, rows))
            if c.get("total_s") is not None:
                times = [(r["total_s"], r) for r in rows if r["status"] == "ok" and r.get("total_s")]
                out.append(self._time("batch test", f"{case}: total time", model, self.base,
                                      float(c["total_s"]), times, n_images=images, claim=c))
            if c.get("peak_vram_gb") is not None:
                out.append(self._vram("batch test", f"{case}: peak VRAM", model, float(c["peak_vram_gb"]),
                                      c, [r for r in rows if r["status"] == "ok"], "peak_vram"))
        return out

    def _batch_outcome(self, case: str, c: dict, rows: list[dict]) -> Verdict:
        outcome = str(c.get("outcome", ""))
        claimed_fail = bool(re.search(r"out of memory|oom|fail", outcome, re.I))
        if not rows:
            return Verdict("batch test", f"{case}: outcome", outcome, "-", NOT_MEASURED,
                           "No batch row with this image count and batch size.")
        summaries, clean_fits, clean_any = [], [], []
        for r in rows:
            peak, how = vram_seen(r.get("peak_vram"))
            clean = (r["status"] == "ok" and r.get("images_produced") == r.get("images_requested")
                     and not r.get("fallbacks"))
            fallbacks = ", ".join(r.get("fallbacks") or []) or "none"
            summaries.append(f"{r.get('images_produced', 0)}/{r.get('images_requested')} images, status {r['status']}, "
                             f"fallbacks {fallbacks}, peak {_num(peak, ' GB')} ({_describe_row(r)})")
            if clean:
                clean_any.append(r)
                if peak is not None and self.card_vram and peak <= self.card_vram:
                    clean_fits.append((peak, r))
        ours = summaries[0] if len(summaries) == 1 else f"{len(summaries)} runs: " + " | ".join(summaries)
        listing = "Measured: " + "; ".join(summaries) + "."
        if claimed_fail:
            if clean_fits:
                peak, r = min(clean_fits, key=lambda x: x[0])
                return Verdict("batch test", f"{case}: outcome", outcome, ours, CONTRADICTED,
                               f"{listing} Every image came out without a fallback at a peak of {peak:.3g} GB, "
                               f"which fits the article's {self.card_vram:g} GB card (VRAM for a plan is the same "
                               "on any card), so nothing forces an out-of-memory error at this batch size.")
            why = ("Our runs also failed or fell back." if not clean_any else
                   f"Our clean runs peaked above the article's {self.card_vram:g} GB card, so an out-of-memory "
                   "error there is expected.")
            return Verdict("batch test", f"{case}: outcome", outcome, ours, CONSISTENT, f"{listing} {why}")
        verdict = CONSISTENT if clean_any else CONTRADICTED
        return Verdict("batch test", f"{case}: outcome", outcome, ours, verdict,
                       f"{listing} " + ("At least one plan produced every image without a fallback."
                                        if clean_any else "None of our runs produced every image without fallback."))

    def controlnet(self) -> list[Verdict]:
        c = self.claims.get("controlnet_canny_overhead") or {}
        if not c:
            return []
        model = c["model"]
        rows = [r for r in self.results.of("workflow", ok=True, model=model, workflow="controlnet")]
        out = []
        if c.get("extra_vram_gb") is not None:
            measured = [r for r in rows if r.get("extra_vram_gb") is not None]
            claimed = float(c["extra_vram_gb"])
            if not measured:
                out.append(Verdict("ControlNet (canny)", f"{model} ControlNet extra VRAM", f"{claimed:g} GB", "-",
                                   NOT_MEASURED, "No controlnet workflow row with extra_vram_gb."))
            else:
                r = min(measured, key=lambda r: abs(r["extra_vram_gb"] - claimed))
                v = float(r["extra_vram_gb"])
                tol = max(VRAM_TOLERANCE_GB, VRAM_TOLERANCE_FRAC * v)
                ok = abs(claimed - v) <= tol
                out.append(Verdict("ControlNet (canny)", f"{model} ControlNet extra VRAM", f"{claimed:g} GB",
                                   f"{v:.3g} GB ({_describe_row(r)})", CONSISTENT if ok else CONTRADICTED,
                                   f"Extra peak VRAM over txt2img at {r.get('width')}x{r.get('height')} (same plan, "
                                   f"card-independent): |{claimed:g} - {v:.3g}| = {abs(claimed - v):.3g} GB "
                                   f"{'<=' if ok else '>'} tolerance {tol:.3g} GB. No weight floor: the ControlNet's "
                                   "parameter count is not in the specs."))
        if c.get("extra_s") is not None:
            times = [(float(r["extra_s"]), r) for r in rows if r.get("extra_s") is not None]
            out.append(self._time("ControlNet (canny)", f"{model} ControlNet extra seconds", model, self.base,
                                  float(c["extra_s"]), times, claim=c, count_flops=False))
        return out

    def judge(self) -> list[Verdict]:
        return self.deployment() + self.speed_memory() + self.batch_test() + self.controlnet()


def _group_listing(measured: list[tuple[float, str, dict]]) -> str:
    """One entry per plan/variant/budget/card, so a value repeated over many rows is listed once."""
    groups: dict[str, list] = {}
    for v, _, r in measured:
        key = _describe_row(r).rsplit(";", 1)[0]
        groups.setdefault(key, []).append((v, r["_source"]))
    parts = []
    for key, items in groups.items():
        shown = "/".join(f"{v:g}" for v in sorted({round(v, 2) for v, _ in items}))
        by_file: dict[str, list[str]] = {}
        for _, src in items:
            name, line = src.rsplit(":", 1)
            by_file.setdefault(name, []).append(line)
        where = "; ".join(f"{name}:{','.join(lines)}" for name, lines in by_file.items())
        parts.append(f"{shown} GB ({key}; {where})")
    return "; ".join(parts)


def _add_note(v: Verdict, note: str) -> Verdict:
    if not note:
        return v
    return Verdict(v.section, v.subject, v.claimed, v.measured, v.verdict, v.arithmetic + note)


def judge_claims(results: Results, claims: dict) -> list[Verdict]:
    return ClaimJudge(results, claims).judge()
