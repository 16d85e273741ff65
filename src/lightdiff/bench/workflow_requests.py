"""The request each workflow case sends: the same prompt, size and seed as the txt2img case it is
compared with, plus the workflow's own inputs (a drawn test image for img2img/inpaint/ControlNet)."""

from __future__ import annotations

import base64
import io


def test_image(width: int, height: int):
    """Shapes with clear edges (for Canny) on a gradient: deterministic, no files needed."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(img)
    for y in range(0, height, 4):
        shade = int(60 + 120 * y / max(height - 1, 1))
        draw.rectangle([0, y, width, y + 3], fill=(shade, shade // 2, 200 - shade // 2))
    draw.ellipse([width * 0.15, height * 0.2, width * 0.55, height * 0.7], fill=(230, 200, 40), outline=(0, 0, 0))
    draw.rectangle([width * 0.6, height * 0.35, width * 0.9, height * 0.85], fill=(30, 160, 90), outline=(0, 0, 0))
    draw.polygon([(width * 0.5, height * 0.05), (width * 0.7, height * 0.3), (width * 0.3, height * 0.3)],
                 fill=(200, 40, 40))
    return img


def test_mask(width: int, height: int):
    from PIL import Image, ImageDraw

    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).ellipse([width * 0.3, height * 0.3, width * 0.7, height * 0.7], fill=255)
    return mask


def data_uri(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def request_for(name: str, spec, item) -> dict:
    """Fields beyond prompt/steps/guidance/seed (the case adds those) for workflow ``name``."""
    w, h = item.width, item.height
    size = {"width": w, "height": h, "batch_size": item.batch_size}
    if name == "controlnet":
        return {**size, "control_image": data_uri(test_image(w, h)), "controlnet": "twin" if spec.is_twin else "auto",
                "preprocessor": "canny"}
    if name == "hires_fix":
        rules = spec.rules
        scale = min(2.0, rules.max_size / max(w, h))  # 2x, or as far as the family's largest size allows
        return {**size, "hr_scale": scale}
    if name == "img2img":
        return {**size, "init_image": data_uri(test_image(w, h)), "strength": 0.75}
    if name == "inpaint":
        return {**size, "init_image": data_uri(test_image(w, h)), "mask_image": data_uri(test_mask(w, h)),
                "strength": 0.75}
    return size
