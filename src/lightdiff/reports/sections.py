"""The report's sections, built from rows: the article's tables, physics, claims and predictions.

Each builder returns a Section or None when no row feeds it, so a report of one model or one
kind of run shows only what was measured.
"""

from __future__ import annotations

from collections import Counter

from lightdiff.reports import charts as charts_mod
from lightdiff.reports.claims import TOLERANCE_TEXT, VERDICTS, Verdict
from lightdiff.reports.document import Note, Paragraph, Section, Table, budget_text, num, size_text
from lightdiff.reports.load import Results, vram_seen
from lightdiff.reports.physics import BYTES_PER_PARAM, GIB, FlopTable, card_of, flop_floor_s, row_card
from lightdiff.specs.cards import Card

SYNTHETIC_TEXT = ("Synthetic weights: rows marked 'synthetic' ran with random weights at the real size and "
                  "architecture. Their speed and memory stand for the real models (weight values change neither "
                  "FLOPs nor bytes); their images are noise and say nothing about quality.")


def _order(r: dict) -> tuple:
    return (r["model"], r.get("variant") or "", r.get("vram_budget_gb") or 0, r.get("plan") or "",
            r.get("workflow") or "", r.get("width") or 0, r.get("batch_size") or 1)


def _vram3(block: dict | None) -> str:
    """allocated / reserved / nvml used, the three views of one peak."""
    if not block:
        return "-"
    return " / ".join(num(block.get(k)) for k in ("allocated_gb", "reserved_gb", "nvml_used_gb"))


def _weights(r: dict) -> str:
    return "synthetic" if r.get("synthetic") else (r.get("weights") or "-")


def _status(r: dict) -> str:
    if r["status"] == "ok":
        return "ok"
    reason = (r.get("reason") or "").strip()
    return f"{r['status']}: {reason[:90]}{'...' if len(reason) > 90 else ''}" if reason else r["status"]


def _synthetic_note(rows: list[dict]) -> list:
    return [Note(SYNTHETIC_TEXT)] if any(r.get("synthetic") for r in rows) else []


STEP_CACHE_TEXT = ("Step cache: rows whose variant says '+ <kind> step cache' reused denoiser work across steps "
                   "(diffusers' First Block Cache or TaylorSeer). They change the image, so they are not the same "
                   "work as the other rows; a speed-up measured on synthetic weights is not evidence of its quality.")


def _cache_suffix(r: dict) -> str:
    cache = (r.get("step_cache") or {}).get("kind")
    return f" + {cache} step cache" if cache else ""


def _variant(r: dict) -> str:
    return (r.get("variant") or "-") + _cache_suffix(r)


def _step_cache_note(rows: list[dict]) -> list:
    return [Note(STEP_CACHE_TEXT)] if any(r.get("step_cache") for r in rows) else []


def stamp_section(results: Results) -> Section:
    s = Section("Setup and stamp")
    s.add(Paragraph("Read from: " + ", ".join(results.files) + f" ({len(results.rows)} rows; "
                    f"{len(results.measured())} measured, {len(results.rows) - len(results.measured())} predictions)."))
    keys = ("gpu", "gpu_total_gb", "driver", "cuda", "torch", "diffusers", "transformers", "lightdiff", "python",
            "date", "host")
    envs = results.envs()
    if envs:
        s.add(Table(["card", "GPU GB", "driver", "CUDA", "torch", "diffusers", "transformers", "lightdiff", "python",
                     "date", "host", "rows"],
                    [[num(env.get(k)) for k in keys] + [str(n)] for env, n in envs],
                    "Environment stamp carried by the measured rows."))
    s.add(*_synthetic_note(results.measured()), *_step_cache_note(results.measured()))
    return s


def deployment_section(results: Results) -> Section | None:
    rows = sorted([r for r in results.of("speed", ok=True) if r.get("startup")], key=_order)
    if not rows:
        return None
    table = []
    for r in rows:
        st = r["startup"]
        table.append([r["model"], r.get("variant") or "-", r.get("plan") or "-", budget_text(r.get("vram_budget_gb")),
                      size_text(r), _weights(r),
                      *(num(st.get(k)) for k in ("import_s", "load_s", "load_gb", "load_gbps", "disk_read_gbps",
                                                 "to_device_s", "warmup_s", "total_s")),
                      _vram3(r.get("idle_vram")), _vram3(r.get("peak_vram")), num(r.get("host_ram_peak_gb"))])
    s = Section("Deployment: startup and idle VRAM")
    s.add(Paragraph("Cold process to first image, split into its parts, and VRAM idle (model loaded) against "
                    "peak while generating. VRAM columns are allocated / reserved / nvidia-smi used, in GB (GiB)."))
    s.add(Table(["model", "variant", "plan", "budget", "size", "weights", "import s", "load s", "load GB",
                 "load GB/s", "disk GB/s", "to device s", "warmup s", "total s", "idle VRAM GB", "peak VRAM GB",
                 "host RAM GB"], table, "Startup time split and VRAM (speed rows that measured a cold start)."))
    s.add(*_synthetic_note(rows))
    return s


def speed_section(results: Results, budget_lines: dict[str, float], draw: bool) -> Section | None:
    rows = sorted(results.of("speed", workflow="txt2img"), key=_order)
    if not rows:
        return None
    table = []
    for r in rows:
        pred = r.get("predicted") or {}
        table.append([r["model"], _variant(r), r.get("plan") or "-", budget_text(r.get("vram_budget_gb")),
                      size_text(r), str(r.get("batch_size")), _status(r), num(r.get("sec_per_image")),
                      num(r.get("first_s")), num(r.get("it_per_s")), num(r.get("images_per_s")),
                      _vram3(r.get("peak_vram")),
                      f"{num(pred.get('peak_vram_gb'))} GB / {num(pred.get('sec_per_image'))} s" if pred else "-",
                      num(r.get("compile_s")), _weights(r), ", ".join(r.get("fallbacks") or []) or "-"])
    s = Section("Speed and memory by size")
    s.add(Paragraph("Seconds per image is the median call time divided by the batch size; peak VRAM is "
                    "allocated / reserved / nvidia-smi used, in GB. 'predicted' is the planner's own forecast for "
                    "the same case, to check the planner against the measurement."))
    pivot = size_pivot(rows)
    if pivot:
        s.add(pivot)
    s.add(Table(["model", "variant", "plan", "budget", "size", "batch", "status", "s/image", "first call s", "it/s",
                 "images/s", "peak VRAM GB", "predicted peak / s", "compile s", "weights", "fallbacks"], table,
                "Every speed row (txt2img), including out-of-memory and failed runs."))
    s.add(*_synthetic_note(rows), *_step_cache_note(rows))
    ratio = ratio_table(results)
    if ratio:
        s.add(ratio)
    if draw:
        for chart in (charts_mod.speed_by_size(results), charts_mod.vram_by_size(results, budget_lines)):
            if chart:
                s.add(chart)
    return s


def size_pivot(rows: list[dict]) -> Table | None:
    """The article's layout: one line per model and plan, seconds and peak VRAM per size (batch 1)."""
    batch1 = [r for r in rows if r.get("batch_size") == 1 and r.get("width") and r.get("height")]
    sizes = sorted({(r["width"], r["height"]) for r in batch1})
    if not batch1:
        return None
    lines: dict[tuple, dict] = {}
    for r in batch1:
        key = (r["model"], _variant(r), r.get("plan") or "-", budget_text(r.get("vram_budget_gb")))
        lines.setdefault(key, {})[(r["width"], r["height"])] = r
    table = []
    for key, by_size in lines.items():
        cells = []
        for size in sizes:
            r = by_size.get(size)
            if r is None:
                cells += ["-", "-"]
            elif r["status"] != "ok":
                cells += [r["status"], "-"]  # an OOM is a result, not a gap
            else:
                cells += [num(r.get("sec_per_image")), num(vram_seen(r.get("peak_vram"))[0])]
        table.append(list(key) + cells)
    headers = ["model", "variant", "plan", "budget"]
    for w, h in sizes:
        headers += [f"{w}x{h} s/image", f"{w}x{h} peak GB"]
    return Table(headers, table, "The article's layout: seconds per image and peak VRAM (as nvidia-smi shows it) "
                 "by size, batch 1.")


def ratio_table(results: Results) -> Table | None:
    """lightdiff against baseline for the same model, workflow, size, batch and budget."""
    cases: dict[tuple, dict[str, dict]] = {}
    for r in results.of("speed") + results.of("workflow"):
        key = (r["model"], r.get("workflow"), r.get("width"), r.get("height"), r.get("batch_size"),
               r.get("vram_budget_gb"))
        cases.setdefault(key, {}).setdefault(r.get("variant") or "", r)
    table = []
    for key, by_variant in sorted(cases.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        ld, base = by_variant.get("lightdiff"), by_variant.get("baseline")
        if not (ld and base):
            continue
        model, workflow, w, h, bs, budget = key
        case = [model, workflow, f"{w}x{h}", str(bs), budget_text(budget),
                f"{base.get('plan')} -> {ld.get('plan')}{_cache_suffix(ld)}"]
        if ld["status"] == "ok" and base["status"] == "ok" and ld.get("sec_per_image") and base.get("sec_per_image"):
            vb, vl = vram_seen(base.get("peak_vram"))[0], vram_seen(ld.get("peak_vram"))[0]
            table.append(case + [num(base["sec_per_image"]), num(ld["sec_per_image"]),
                                 f"{base['sec_per_image'] / ld['sec_per_image']:.2f}x",
                                 num(vb), num(vl), f"{vl / vb:.2f}x" if vb and vl else "-"])
        else:
            table.append(case + [_status(base) if base["status"] != "ok" else num(base.get("sec_per_image")),
                                 _status(ld) if ld["status"] != "ok" else num(ld.get("sec_per_image")),
                                 "baseline fails, lightdiff runs" if ld["status"] == "ok" else "-", "-", "-", "-"])
    if not table:
        return None
    return Table(["model", "workflow", "size", "batch", "budget", "plan (baseline -> lightdiff)", "baseline s/image",
                  "lightdiff s/image", "speedup (baseline / lightdiff)", "baseline peak GB", "lightdiff peak GB",
                  "VRAM ratio (lightdiff / baseline)"], table,
                 "lightdiff against plain diffusers for the same case (peak VRAM as nvidia-smi shows it).")


def batch_section(results: Results, draw: bool) -> Section | None:
    rows = sorted(results.of("batch"), key=_order)
    chart = charts_mod.throughput_by_batch(results) if draw else None
    if not rows and not chart:
        return None
    s = Section("Batch test")
    if rows:
        table = []
        for r in rows:
            produced = r.get("images_produced")
            per = r["total_s"] / produced if r.get("total_s") and produced else None
            table.append([r["model"], r.get("variant") or "-", r.get("plan") or "-",
                          budget_text(r.get("vram_budget_gb")), size_text(r), str(r.get("batch_size")),
                          num(r.get("images_requested")), num(produced), ", ".join(r.get("fallbacks") or []) or "none",
                          num(r.get("total_s")), num(per), _vram3(r.get("peak_vram")), _status(r), _weights(r)])
        s.add(Paragraph("N images of different prompts at a fixed batch size: images requested and produced, the "
                        "out-of-memory fallbacks taken (e.g. halving the batch), and the total time."))
        s.add(Table(["model", "variant", "plan", "budget", "size", "batch", "requested", "produced", "fallbacks",
                     "total s", "s/image", "peak VRAM GB", "status", "weights"], table, "Batch stability runs."))
        s.add(*_synthetic_note(rows))
    if chart:
        s.add(chart)
    return s


def boundary_section(results: Results) -> Section | None:
    rows = sorted(results.of("boundary"), key=_order)
    if not rows:
        return None
    table = [[r["model"], r.get("variant") or "-", r.get("plan") or "-",
              num(r.get("budget_gb") if r.get("budget_gb") is not None else r.get("vram_budget_gb")),
              size_text(r), num(r.get("max_batch")), num(r.get("max_size")), _status(r), _weights(r)] for r in rows]
    s = Section("Out-of-memory boundary")
    s.add(Paragraph("The largest batch that runs at the given size, and the largest square size that runs at "
                    "batch 1, under the VRAM budget."))
    s.add(Table(["model", "variant", "plan", "budget GB", "size", "max batch at size", "max size at batch 1",
                 "status", "weights"], table, "OOM boundary search results."))
    s.add(*_synthetic_note(rows))
    return s


def workflow_section(results: Results) -> Section | None:
    rows = sorted(results.of("workflow"), key=_order)
    if not rows:
        return None
    table = [[r["model"], r.get("workflow") or "-", r.get("variant") or "-", r.get("plan") or "-",
              budget_text(r.get("vram_budget_gb")), size_text(r), _status(r), num(r.get("sec_per_image")),
              _vram3(r.get("peak_vram")), num(r.get("extra_vram_gb")), num(r.get("extra_s")), _weights(r)]
             for r in rows]
    s = Section("Workflows")
    s.add(Table(["model", "workflow", "variant", "plan", "budget", "size", "status", "s/image", "peak VRAM GB",
                 "extra VRAM GB", "extra s", "weights"], table,
                "Extra VRAM and seconds are against the txt2img row of the same model and size."))
    s.add(*_synthetic_note(rows))
    return s


def weights_table(models: list[str]) -> Table | None:
    from lightdiff import specs
    from lightdiff.errors import LightdiffError

    table = []
    for model in models:
        try:
            spec = specs.get(model)
        except LightdiffError:
            continue
        for comp in spec.weight_components():
            p = spec.params_M(comp)
            table.append([model, comp, f"{p:,.1f}"] +
                         [f"{p * 1e6 * BYTES_PER_PARAM[d] / GIB:.2f}" for d in ("bf16", "fp8", "4-bit")])
    if not table:
        return None
    return Table(["model", "component", "params (M)", "bf16 GB", "fp8 GB", "4-bit GB"], table,
                 "Weight bytes = parameters x bytes per parameter (bf16 2, fp8 1, 4-bit 0.5), in GiB; "
                 "parameter counts from lightdiff.specs.")


def physics_section(results: Results, article: Card | None) -> Section:
    s = Section("FLOPs and physics")
    s.add(Paragraph("A card cannot finish an image faster than its FLOPs divided by the card's dense peak: "
                    "the floor. Achieved share = floor / measured seconds = achieved FLOP/s / peak. "
                    "Peaks are dense bf16 datasheet figures (lightdiff.specs.cards)."
                    + (f" The article's card is the {article.name} ({article.bf16_tflops:g} TFLOP/s bf16, "
                       f"{num(article.fp8_tflops)} fp8, {article.vram_gb:g} GB)." if article else "")))
    wt = weights_table(results.models())
    if wt:
        s.add(wt)
    rows = sorted([r for r in results.of("speed", ok=True) + results.of("workflow", ok=True)
                   if r.get("flops_per_image")], key=_order)
    table = []
    for r in rows:
        card, flops, t = row_card(r), float(r["flops_per_image"]), r.get("sec_per_image")
        floor = flop_floor_s(flops, card) if card else None
        share = floor / t if floor and t else None
        a_floor = flop_floor_s(flops, article) if article else None
        scaled = t * card.bf16_tflops / article.bf16_tflops if (t and card and article) else None
        table.append([r["model"], r.get("workflow") or "-", r.get("variant") or "-", r.get("plan") or "-",
                      size_text(r), str(r.get("batch_size")), f"{flops / 1e12:.4g}",
                      card.name if card else (r.get("env") or {}).get("gpu", "?"),
                      num(card.bf16_tflops if card else None), num(floor), num(t),
                      num(flops / t / 1e12 if t else None), f"{share:.1%}" if share else "-",
                      f"{r['peak_share']:.1%}" if r.get("peak_share") is not None else "-",
                      num(a_floor), num(scaled)])
    if table:
        art = article.name if article else "article card"
        s.add(Table(["model", "workflow", "variant", "plan", "size", "batch", "TFLOP/image", "measured card",
                     "card peak TFLOP/s", "floor s", "measured s/image", "achieved TFLOP/s", "share of peak",
                     "share reported by row", f"floor on {art} s", f"scaled to {art} s"], table,
                    f"'scaled to {art}' multiplies the measured time by the ratio of bf16 peaks: what a "
                    "compute-bound run would take there. A run at a low share of peak (launch- or memory-bound) "
                    "scales less, so it is an upper estimate, not a measurement."))
    else:
        s.add(Paragraph("No row counted FLOPs (flops_per_image), so no floors."))
    s.add(*_synthetic_note(rows))
    return s


def claims_section(verdicts: list[Verdict], claims: dict) -> Section:
    s = Section("Claims against measurement")
    hw = claims.get("hardware") or {}
    s.add(Paragraph(f"Source: {claims.get('source', 'claims file')}. The article's card: {hw.get('gpu')} "
                    f"({hw.get('vram_gb')} GB); settings: {_settings_text(claims.get('settings') or {})}. "
                    "Each claim is tested for physical possibility first (weight bytes against VRAM; FLOPs "
                    "against the card's peak), then against our rows. " + TOLERANCE_TEXT + " Speeds measured on "
                    "another card are never taken as the article card's speed: they are scaled by the ratio of "
                    "bf16 peaks into a range, as each row shows."))
    counts = Counter(v.verdict for v in verdicts)
    s.add(Paragraph("Verdicts: " + ", ".join(f"{counts.get(k, 0)} {k}" for k in VERDICTS) + "."))
    s.add(Table(["article section", "claim", "claimed", "ours", "verdict", "arithmetic"],
                [[v.section, v.subject, v.claimed, v.measured, v.verdict, v.arithmetic] for v in verdicts],
                "Every figure of the article's deployment, speed and memory, batch test and ControlNet claims.",
                verdict_column=4))
    if claims.get("quality_scores_1_to_10"):
        s.add(Paragraph("The article's quality scores (three raters, 1-10) are not judged here: this report reads "
                        "speed and memory rows. Image quality is the job of `lightdiff eval`."))
    return s


def _settings_text(settings: dict) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in settings.items()) or "not stated"


def predictions_section(results: Results) -> Section | None:
    rows = sorted(results.of("prediction"), key=lambda r: (r.get("card") or "", r["model"], r.get("width") or 0))
    if not rows:
        return None
    flops = FlopTable(results.rows)
    table = []
    for r in rows:
        pred = r.get("predicted") or {}
        card = card_of(r.get("card"))
        hit = flops.lookup(r["model"], r.get("width"), r.get("height"), r.get("steps")) if r.get("width") else None
        floor = flop_floor_s(hit[0], card) if hit and card else None
        spi = pred.get("sec_per_image")
        check = "-" if floor is None or spi is None else ("ok" if spi >= floor else "below the FLOP floor")
        table.append([r.get("card") or "-", num(r.get("vram_gb")), r["model"], size_text(r), r.get("plan") or "-",
                      num(r.get("fits")), num(pred.get("peak_vram_gb")), num(pred.get("host_ram_gb")), num(spi),
                      num(floor), check])
    s = Section("Predictions for cards not measured")
    s.add(Note("PREDICTIONS, not measurements: the planner's estimates for cards no benchmark ran on.",
               kind="prediction"))
    s.add(Table(["card", "card GB", "model", "size", "plan", "fits", "predicted peak GB", "host RAM GB",
                 "predicted s/image", "FLOP floor s (bf16)", "check"], table,
                "Planner predictions (kind 'prediction'); the FLOP floor is FLOPs per image from the measured rows "
                "divided by the card's bf16 peak."))
    return s
