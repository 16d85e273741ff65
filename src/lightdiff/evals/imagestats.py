"""Image statistics that need no learned weights, each tied to a remark of the review article.

The article's raters said one model had "more saturated colour", "cooler skin tones", "slight
noise in the product render", "less smooth edges (jaggies)" and "stronger light layering". Each
remark becomes one or more numbers here, so the claim can be checked on many images instead of
one impression. ``METRICS`` lists them with the remark they test; ``compute_all`` computes every
one at a common resolution; ``aggregate`` gives means with bootstrap intervals per model and
scenario.

Every statistic takes an RGB uint8 array of shape (H, W, 3); a PIL image is accepted too and
converted with ``as_rgb_array``. Functions are pure: no files, no global state.

The statistics are whole-image: "cooler skin tones" is measured as the image's overall colour
cast, not on detected skin. A portrait's cast is dominated by skin and light, but read the
numbers as "cooler image", not as a skin measurement.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from lightdiff.errors import InvalidRequest

# Rec. 709 luma weights, applied to gamma-encoded sRGB codes: the "luminance" of a camera histogram.
_LUMA = np.array([0.2126, 0.7152, 0.0722])


class Metric(NamedTuple):
    name: str
    remark: str  # the article's words this statistic tests
    direction: str  # "higher" or "lower": which way the value moves when the remark holds more strongly
    description: str


METRICS: tuple[Metric, ...] = (
    Metric("colourfulness", "more saturated colour", "higher",
           "Hasler & Suesstrunk (2003) colourfulness M on 0-255 codes; ~0 grey, ~33 'fairly', >59 'highly' colourful."),
    Metric("saturation_hsv", "more saturated colour", "higher",
           "Mean HSV saturation, 0-1."),
    Metric("chroma_lab", "more saturated colour", "higher",
           "Mean CIELAB chroma sqrt(a*^2 + b*^2) (D65)."),
    Metric("cct_kelvin", "cooler skin tones", "higher",
           "Correlated colour temperature of the image's mean chromaticity (McCamy 1992), kelvin; higher is "
           "bluer. NaN when the mean colour is too far from the black-body locus for a CCT to mean anything."),
    Metric("lab_b", "cooler skin tones", "lower",
           "Mean CIELAB b*: positive is a yellow/warm cast, negative a blue/cool cast."),
    Metric("noise_sigma", "slight noise in the product render", "higher",
           "Immerkaer (1996) noise standard deviation in 0-255 codes, on flat regions only (edges masked by "
           "Sobel magnitude, clipped pixels skipped), mean over R, G, B."),
    Metric("sharpness", "slight noise in the product render", "higher",
           "Variance of the Laplacian of luma. Rises with fine detail and with noise alike: read it next to "
           "noise_sigma."),
    Metric("jaggedness_deg", "less smooth edges (jaggies)", "higher",
           "Mean absolute change of gradient direction between neighbouring Canny edge pixels, degrees; "
           "staircase (aliased) edges wobble, smooth curves turn slowly."),
    Metric("dynamic_range", "stronger light layering", "higher",
           "Spread between the 1st and 99th percentile of luma, 0-255 codes."),
    Metric("clipped_highlights", "stronger light layering", "lower",
           "Fraction of pixels with luma >= 250 of 255 (blown highlights: no layering left there)."),
    Metric("clipped_shadows", "stronger light layering", "lower",
           "Fraction of pixels with luma <= 5 of 255 (crushed shadows)."),
    Metric("luma_entropy", "stronger light layering", "higher",
           "Shannon entropy of the 256-bin luma histogram, bits (0 flat, 8 all tones equally used)."),
)
METRIC_NAMES: tuple[str, ...] = tuple(m.name for m in METRICS)


# ---------------------------------------------------------------------------------------- input


def as_rgb_array(image: Any) -> np.ndarray:
    """A PIL image (any mode) or an array -> RGB uint8 array (H, W, 3). Errors name the shape or dtype."""
    if hasattr(image, "convert") and hasattr(image, "mode"):  # a PIL image; no PIL import needed
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InvalidRequest("image", f"expected an RGB array of shape (H, W, 3), got shape {arr.shape}.",
                             "Pass a PIL image or an array of shape (H, W, 3); convert greyscale or RGBA "
                             "with PIL's image.convert('RGB').")
    if arr.dtype != np.uint8:
        raise InvalidRequest("image", f"expected uint8 pixel values 0-255, got dtype {arr.dtype}.",
                             "Scale float images with (img * 255).round().clip(0, 255).astype(np.uint8).")
    if arr.shape[0] < 8 or arr.shape[1] < 8:
        raise InvalidRequest("image", f"image of {arr.shape[1]}x{arr.shape[0]} pixels is too small to measure.",
                             "Use images at least 8x8 pixels; compute_all resizes to 512 anyway.")
    return arr


def luma(img: Any) -> np.ndarray:
    """Rec. 709 luma of the gamma-encoded codes, float, 0-255."""
    return as_rgb_array(img).astype(np.float64) @ _LUMA


def resize_to(img: Any, size: int = 512) -> np.ndarray:
    """Resize so the shorter side is ``size`` (LANCZOS), keeping the aspect ratio.

    Noise, sharpness and jaggies depend on scale: a 1024 image shown at 512 hides half its noise.
    Comparing models at one resolution compares what a viewer sees at that size.
    """
    from PIL import Image

    arr = as_rgb_array(img)
    h, w = arr.shape[:2]
    scale = size / min(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    if new == (w, h):
        return arr
    return np.asarray(Image.fromarray(arr).resize(new, Image.Resampling.LANCZOS))


# --------------------------------------------------------------------------------------- colour


def colourfulness(img: Any) -> float:
    """Hasler & Suesstrunk (2003), "Measuring colourfulness in natural images", eq. 3.

    rg = R - G, yb = (R + G)/2 - B; M = sqrt(sd_rg^2 + sd_yb^2) + 0.3 sqrt(mean_rg^2 + mean_yb^2).
    Hand-written: the formula is two lines and no maintained library exposes it.
    """
    rgb = as_rgb_array(img).astype(np.float64)
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    return float(math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean()))


def saturation_hsv(img: Any) -> float:
    from skimage.color import rgb2hsv

    return float(rgb2hsv(as_rgb_array(img))[..., 1].mean())


def _lab(img: Any) -> np.ndarray:
    from skimage.color import rgb2lab

    return rgb2lab(as_rgb_array(img))  # sRGB (D65), linearised inside skimage


def chroma_lab(img: Any) -> float:
    lab = _lab(img)
    return float(np.hypot(lab[..., 1], lab[..., 2]).mean())


def lab_b(img: Any) -> float:
    """Mean b*: > 0 warm (yellow) cast, < 0 cool (blue) cast."""
    return float(_lab(img)[..., 2].mean())


def _planckian_uv(t: float) -> tuple[float, float]:
    # Krystek (1985) rational approximation of the black-body locus in CIE 1960 uv, 1000-15000 K.
    u = (0.860117757 + 1.54118254e-4 * t + 1.28641212e-7 * t * t) / (1 + 8.42420235e-4 * t + 7.08145163e-7 * t * t)
    v = (0.317398726 + 4.22806245e-5 * t + 4.20481691e-8 * t * t) / (1 - 2.89741816e-5 * t + 1.61456053e-7 * t * t)
    return u, v


def cct_kelvin(img: Any, max_duv: float = 0.05) -> float:
    """Correlated colour temperature of the image's mean colour, kelvin (higher = bluer, cooler look).

    sRGB codes are linearised and converted to XYZ (skimage.color.rgb2xyz, D65), averaged over the
    image (light adds linearly), reduced to chromaticity (x, y) and passed through McCamy's (1992)
    cubic: n = (x - 0.3320)/(0.1858 - y), CCT = 449 n^3 + 3525 n^2 + 6823.3 n + 5520.33.
    McCamy is accurate to a few kelvin from 2000 to 12500 K and meaningless far from the black-body
    locus (a pure blue image would come out "1700 K"). So the distance from the locus (Duv, CIE
    1960 uv, Krystek's approximation) is checked and NaN returned beyond ``max_duv``; the result is
    clipped to 1000-25000 K. Hand-written: colour-science has both formulas but is a large
    dependency for two polynomials.
    """
    from skimage.color import rgb2xyz

    xyz = rgb2xyz(as_rgb_array(img)).reshape(-1, 3).mean(axis=0)
    total = xyz.sum()
    if total <= 1e-9:
        return math.nan  # black image: no chromaticity
    x, y = xyz[0] / total, xyz[1] / total
    n = (x - 0.3320) / (0.1858 - y)
    cct = float(np.clip(449 * n**3 + 3525 * n**2 + 6823.3 * n + 5520.33, 1000.0, 25000.0))
    denom = -2 * x + 12 * y + 3
    u, v = 4 * x / denom, 6 * y / denom
    pu, pv = _planckian_uv(min(cct, 15000.0))
    if math.hypot(u - pu, v - pv) > max_duv:
        return math.nan
    return cct


# ---------------------------------------------------------------------------------- noise, edges


def _sobel_magnitude(grey: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return np.hypot(ndimage.sobel(grey, axis=0), ndimage.sobel(grey, axis=1))


def noise_sigma(img: Any, edge_fraction: float = 0.1) -> float:
    """Noise standard deviation (0-255 codes) by Immerkaer's fast method on flat regions.

    Immerkaer (1996), "Fast noise variance estimation": convolve with the difference of two
    Laplacians, N = [[1,-2,1],[-2,4,-2],[1,-2,1]], which cancels linear image structure, and
    sigma = sqrt(pi/2) * mean|I * N| / 6. Edges still leak into N, so, as Tai & Yang (2008)
    do, the ``edge_fraction`` of pixels with the strongest Sobel gradient (on luma) is left out.
    Pixels next to clipped values (0 or 255) are left out per channel too: clipping hides noise.
    Computed per channel and averaged, so independent per-channel noise of sigma s reads s.
    Returns NaN if nothing flat is left. Hand-written: skimage's estimate_sigma is wavelet-based
    (Donoho), not this estimator, and has no edge mask.
    """
    from scipy import ndimage

    rgb = as_rgb_array(img).astype(np.float64)
    grad = _sobel_magnitude(rgb @ _LUMA)
    flat = grad <= np.quantile(grad, 1.0 - edge_fraction) if edge_fraction > 0 else np.ones(grad.shape, bool)
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    sigmas = []
    for c in range(3):
        channel = rgb[..., c]
        clipped = ndimage.binary_dilation((channel <= 0) | (channel >= 255), structure=np.ones((3, 3)))
        mask = (flat & ~clipped)[1:-1, 1:-1]  # the border has no full 3x3 neighbourhood
        if mask.sum() < 64:
            continue
        response = ndimage.convolve(channel, kernel, mode="reflect")[1:-1, 1:-1]
        sigmas.append(math.sqrt(math.pi / 2) * np.abs(response[mask]).mean() / 6.0)
    return float(np.mean(sigmas)) if sigmas else math.nan


def sharpness(img: Any) -> float:
    """Variance of the Laplacian of luma (Pech-Pacheco et al. 2000): fine detail and noise both raise it."""
    from scipy import ndimage

    return float(ndimage.laplace(luma(img)).var())


def jaggedness_deg(img: Any, canny_sigma: float = 1.0) -> float:
    """Edge jaggedness: how much the gradient direction wobbles along edges, in degrees.

    Definition: find edge pixels with Canny (skimage, on luma scaled to 0-1, sigma ``canny_sigma``,
    hysteresis thresholds 0.05/0.15 so that weak noise does not count as edges). At each edge pixel
    take the gradient direction from a plain 3x3 Sobel of the unsmoothed luma, so staircase steps
    are not blurred away. For every pair of 8-connected edge pixels, take the absolute difference
    of their directions (wrapped to 0-180 degrees) and average over all pairs.

    A smooth curve of radius R turns by about 57/R degrees per pixel (under 1 degree for R > 60);
    an aliased (nearest-neighbour) edge alternates between 0, 45 and 90 degree steps, so its
    neighbours disagree by several degrees. Corners and junctions add a little to every image
    alike. Returns NaN when the image has fewer than 20 edge pixels. Hand-written: no library
    measures aliasing of edges.
    """
    from skimage.feature import canny

    grey = luma(img) / 255.0
    edges = canny(grey, sigma=canny_sigma, low_threshold=0.05, high_threshold=0.15)
    if edges.sum() < 20:
        return math.nan
    from scipy import ndimage

    angle = np.arctan2(ndimage.sobel(grey, axis=0), ndimage.sobel(grey, axis=1))
    h, w = edges.shape
    diffs = []
    # Each unordered neighbour pair once: right, down, down-right, down-left.
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        ys = slice(0, h - dy)
        xs = slice(max(0, -dx), w - max(0, dx))
        ys2 = slice(dy, h)
        xs2 = slice(max(0, dx), w - max(0, -dx))
        both = edges[ys, xs] & edges[ys2, xs2]
        d = angle[ys, xs][both] - angle[ys2, xs2][both]
        diffs.append(np.abs(np.angle(np.exp(1j * d))))
    all_diffs = np.concatenate(diffs)
    return float(np.degrees(all_diffs.mean())) if all_diffs.size else math.nan


# ---------------------------------------------------------------------------------------- light


def dynamic_range(img: Any, low: float = 1.0, high: float = 99.0) -> float:
    """Luma spread between the ``low`` and ``high`` percentiles, 0-255 codes (robust to a few outliers)."""
    lo, hi = np.percentile(luma(img), [low, high])
    return float(hi - lo)


def clipped_highlights(img: Any, threshold: float = 250.0) -> float:
    return float((luma(img) >= threshold).mean())


def clipped_shadows(img: Any, threshold: float = 5.0) -> float:
    return float((luma(img) <= threshold).mean())


def luma_entropy(img: Any) -> float:
    """Shannon entropy (bits) of the 256-bin histogram of luma rounded to 8-bit codes."""
    counts = np.bincount(np.clip(np.rint(luma(img)), 0, 255).astype(np.int64).ravel(), minlength=256)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


_FUNCTIONS = {
    "colourfulness": colourfulness,
    "saturation_hsv": saturation_hsv,
    "chroma_lab": chroma_lab,
    "cct_kelvin": cct_kelvin,
    "lab_b": lab_b,
    "noise_sigma": noise_sigma,
    "sharpness": sharpness,
    "jaggedness_deg": jaggedness_deg,
    "dynamic_range": dynamic_range,
    "clipped_highlights": clipped_highlights,
    "clipped_shadows": clipped_shadows,
    "luma_entropy": luma_entropy,
}


def compute_all(img: Any, size: int | None = 512) -> dict[str, float]:
    """Every statistic in METRICS, after resizing the shorter side to ``size`` (None keeps the size)."""
    arr = resize_to(img, size) if size else as_rgb_array(img)
    return {name: _FUNCTIONS[name](arr) for name in METRIC_NAMES}


# ----------------------------------------------------------------------------------- aggregation


def _finite(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def mean_ci(values: Sequence[float], confidence: float = 0.95, n_resamples: int = 2000,
            seed: int = 0) -> tuple[float, float, float]:
    """Mean and a bootstrap confidence interval (scipy.stats.bootstrap, BCa, seeded).

    One value gives (v, nan, nan): no interval can be had from one image. Identical values give
    a zero-width interval (BCa is undefined there).
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size == 1:
        return mean, math.nan, math.nan
    if np.ptp(x) == 0:
        return mean, mean, mean
    from scipy.stats import bootstrap

    res = bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                    method="BCa", rng=np.random.default_rng(seed))
    return mean, float(res.confidence_interval.low), float(res.confidence_interval.high)


def aggregate(rows: Iterable[Mapping[str, Any]], by: Sequence[str] = ("model", "scenario"),
              metric: str | Sequence[str] | None = None, confidence: float = 0.95,
              n_resamples: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """Group rows (dicts, e.g. JSONL records with model, scenario and metric values) and summarise.

    Returns one dict per (group, metric): the ``by`` keys, ``metric``, ``n`` (rows with a finite
    value), ``mean``, ``ci_low``, ``ci_high``. Missing or NaN values are skipped, not counted.
    ``metric`` None means every METRICS name found in the rows. Groups come out sorted.
    """
    rows = list(rows)
    by = (by,) if isinstance(by, str) else tuple(by)
    if metric is None:
        present = {k for r in rows for k in r}
        metrics = [m for m in METRIC_NAMES if m in present]
    else:
        metrics = [metric] if isinstance(metric, str) else list(metric)
    for i, r in enumerate(rows):
        missing = [k for k in by if k not in r]
        if missing:
            raise InvalidRequest("by", f"row {i} has no {', '.join(map(repr, missing))} to group by "
                                 f"(its keys: {', '.join(sorted(r))}).",
                                 "Group by keys every row has, or add them to the rows.")
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in by), []).append(r)
    out = []
    for key in sorted(groups, key=lambda k: tuple(str(v) for v in k)):
        for name in metrics:
            values = [v for v in (_finite(r.get(name)) for r in groups[key]) if v is not None]
            mean, lo, hi = mean_ci(values, confidence, n_resamples, seed)
            out.append({**dict(zip(by, key)), "metric": name, "n": len(values),
                        "mean": mean, "ci_low": lo, "ci_high": hi})
    return out
