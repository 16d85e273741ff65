"""Learned image-quality metrics as optional plugins: used only when the user has the weights locally.

* ``clip_score``: CLIPScore (Hessel et al. 2021) = 100 * max(cos(image, text), 0), with any
  transformers CLIP model saved in a local folder (``--clip PATH``: model, tokenizer and image
  processor, as ``save_pretrained`` writes them). Measures prompt adherence, not beauty.
* ``pickscore``: PickScore (Kirstain et al. 2023) is a fine-tuned CLIP-H; its score is
  logit_scale * cos(image, text) with the same code, from a local folder (``--pickscore PATH``).
* ``imagereward``: needs the ``image-reward`` package and its checkpoint file (``--imagereward PATH``).
* ``hps``: HPS v2 needs open_clip and its checkpoint; not wired up yet, always reported as skipped.

Nothing is downloaded: a metric without local weights is reported as "skipped: weights not
available", never silently missing. Torch and transformers are imported only when a metric runs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightdiff.errors import InvalidRequest

LEARNED = ("clip_score", "pickscore", "imagereward", "hps")
SKIPPED_NO_WEIGHTS = "skipped: weights not available"
RESULTS = "learned.jsonl"  # one line per image path: {"path", <metric>: value}
STATUS = "learned_status.json"  # metric -> "ok" or why it was skipped


def _folder(path: str | Path, flag: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise InvalidRequest(flag, f"{flag} {str(p)!r} is not a folder.",
                             "Give a folder written by save_pretrained (config.json, weights, tokenizer, "
                             "preprocessor_config.json).")
    return p


class ClipScorer:
    """CLIP similarity of each image to its prompt. ``kind`` 'clip' gives CLIPScore; 'pickscore'
    gives PickScore (logit_scale * cosine, as its authors compute it)."""

    def __init__(self, path: str | Path, kind: str = "clip", device: str = "cpu"):
        import torch
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        folder = _folder(path, "--clip" if kind == "clip" else "--pickscore")
        self.kind, self.device = kind, device
        self.model = CLIPModel.from_pretrained(folder).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.processor = AutoImageProcessor.from_pretrained(folder)
        self.max_tokens = int(getattr(self.model.config.text_config, "max_position_embeddings", 77))
        self._torch = torch

    @property
    def name(self) -> str:
        return "clip_score" if self.kind == "clip" else "pickscore"

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        torch = self._torch
        if len(images) != len(prompts):
            raise InvalidRequest("prompts", f"{len(images)} images but {len(prompts)} prompts.",
                                 "Pass one prompt per image.")
        pixels = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_tokens,
                                return_tensors="pt")
        with torch.no_grad():
            img = self.model.get_image_features(pixel_values=pixels.to(self.device))
            txt = self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                               attention_mask=tokens["attention_mask"].to(self.device))
            img = getattr(img, "pooler_output", img)  # some versions return an output object
            txt = getattr(txt, "pooler_output", txt)
            cos = torch.nn.functional.cosine_similarity(img.float(), txt.float(), dim=-1)
        if self.kind == "clip":
            return [100.0 * max(float(c), 0.0) for c in cos]
        scale = float(self.model.logit_scale.detach().exp())
        return [scale * float(c) for c in cos]


class ImageRewardScorer:
    name = "imagereward"

    def __init__(self, path: str | Path, device: str = "cpu"):
        try:
            import ImageReward as reward  # the image-reward package
        except ImportError:
            raise InvalidRequest("--imagereward", "ImageReward needs the image-reward package.",
                                 "pip install image-reward, or leave --imagereward out.") from None
        p = Path(path).expanduser()
        if not p.is_file():
            raise InvalidRequest("--imagereward", f"{str(p)!r} is not a checkpoint file.",
                                 "Give the path of ImageReward.pt.")
        self.model = reward.load(str(p), device=device)

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        return [float(self.model.score(p, [im])) for im, p in zip(images, prompts)]


def scorers(clip: str | None = None, pickscore: str | None = None, imagereward: str | None = None,
            hps: str | None = None, device: str = "cpu") -> tuple[list, dict[str, str]]:
    """The scorers whose weights were given, and a status per learned metric ("ok" or why skipped)."""
    status = {name: SKIPPED_NO_WEIGHTS for name in LEARNED}
    found = []
    if clip:
        found.append(ClipScorer(clip, "clip", device))
    if pickscore:
        found.append(ClipScorer(pickscore, "pickscore", device))
    if imagereward:
        found.append(ImageRewardScorer(imagereward, device))
    if hps:
        status["hps"] = "skipped: HPS v2 scoring is not implemented yet (needs open_clip)"
    for s in found:
        status[s.name] = "ok"
    return found, status


def score_run(run_dir: str | Path, found: list, status: dict[str, str], batch: int = 8) -> list[dict]:
    """Score every recorded image of an eval folder; write learned.jsonl and learned_status.json."""
    from PIL import Image

    from lightdiff.evals.run import load_manifest, load_records

    run = Path(run_dir)
    prompts = {p["id"]: p for p in load_manifest(run).get("prompts", [])}
    records = load_records(run)
    rows = {r["path"]: {"path": r["path"]} for r in records}
    for scorer in found:
        for i in range(0, len(records), batch):
            chunk = records[i:i + batch]
            images = []
            for r in chunk:
                with Image.open(run / r["path"]) as im:
                    images.append(im.convert("RGB"))
            texts = [prompts.get(r["prompt"], {}).get(r.get("lang", "en"), r["prompt"]) for r in chunk]
            for r, value in zip(chunk, scorer.score(images, texts)):
                rows[r["path"]][scorer.name] = value if math.isfinite(value) else None
    (run / RESULTS).write_text("".join(json.dumps(v) + "\n" for v in rows.values()), encoding="utf-8")
    (run / STATUS).write_text(json.dumps(status, indent=2), encoding="utf-8")
    return list(rows.values())


def load_learned(run_dir: str | Path) -> tuple[dict[str, dict], dict[str, str]]:
    """(path -> learned values, metric -> status); every metric 'skipped' when nothing was scored."""
    run = Path(run_dir)
    values: dict[str, dict] = {}
    if (run / RESULTS).is_file():
        for line in (run / RESULTS).read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                values[row["path"]] = row
    status = (json.loads((run / STATUS).read_text(encoding="utf-8")) if (run / STATUS).is_file()
              else {name: SKIPPED_NO_WEIGHTS for name in LEARNED})
    return values, status
