"""Labelled text-line images rendered here (DejaVu fonts shipped in matplotlib's wheel).

Deterministic per seed: shop labels, prices, dates, serial and lot codes, as an edge box
would read them, in varied faces, sizes, contrasts, blur and noise. No downloads.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

_WORDS: tuple[str, ...] = tuple(
    (
        "open closed sale price total cash card change receipt store market fresh milk bread "
        "apple orange banana coffee tea water juice sugar salt butter cheese rice pasta "
        "sauce chicken beef fish soap paper towel bag box pack bottle can jar size small "
        "medium large extra item code serial model batch lot expiry best before use made in "
        "exit entry door gate floor room level parking zone area section aisle shelf row "
        "north south east west left right stop slow caution danger warning power input "
        "output voltage current battery charge device sensor camera network status error "
        "ready online offline service repair order number invoice date time week month year "
        "today daily weekly monday tuesday friday sunday hours welcome thank you please push "
        "pull press hold keep clean dry cold hot ice delivery pickup return refund discount "
        "offer special limited new only free each per unit weight net gross kg litre meter "
        "station platform track train bus route ticket adult child senior valid until from "
        "to via express local office public private staff members guest visitor reception "
        "lift stairs emergency fire alarm first aid "
    ).split()
)
_UPPER = "ABCDEFGHJKLMNPQRSTUVWXYZ"
_ALNUM = _UPPER + "0123456789"


def _font_paths() -> list[Path]:
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("matplotlib is not installed (needed for DejaVu fonts)")
    ttf = Path(next(iter(spec.submodule_search_locations))) / "mpl-data" / "fonts" / "ttf"
    names = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")
    return [ttf / n for n in names]


def _rand_text(rng: np.random.Generator) -> str:
    """One label-like string of 3..20 characters."""

    def word() -> str:
        w = str(rng.choice(_WORDS))
        style = rng.integers(3)
        return w.upper() if style == 0 else (w.capitalize() if style == 1 else w)

    def code(n: int) -> str:
        return "".join(str(c) for c in rng.choice(list(_ALNUM), size=n))

    kind = int(rng.integers(9))
    if kind == 0:
        text = " ".join(word() for _ in range(int(rng.integers(1, 4))))
    elif kind == 1:
        text = f"{word()} {rng.integers(1, 999)}.{rng.integers(0, 100):02d}"
    elif kind == 2:
        cur = str(rng.choice(["$", "USD ", "EUR ", ""]))
        text = f"{cur}{rng.integers(0, 2000)}.{rng.integers(0, 100):02d}"
    elif kind == 3:
        y, m, d = rng.integers(2018, 2031), rng.integers(1, 13), rng.integers(1, 29)
        fmt = int(rng.integers(3))
        text = (f"{y}-{m:02d}-{d:02d}", f"{d:02d}/{m:02d}/{y}", f"EXP {m:02d}/{y % 100:02d}")[fmt]
    elif kind == 4:
        text = f"SN:{code(int(rng.integers(6, 11)))}"
    elif kind == 5:
        text = f"{code(3)}-{rng.integers(1000, 99999)}"
    elif kind == 6:
        text = f"{rng.integers(0, 24):02d}:{rng.integers(0, 60):02d} {word()}"
    elif kind == 7:
        text = f"{rng.integers(5, 80)}% OFF {word()}"
    else:
        text = f"LOT {rng.integers(100, 999999)} {code(2)}"
    text = text.strip()
    if len(text) > 20:
        text = text[:20].rstrip()
    if len(text) < 3:
        text = text + code(3 - len(text))
    return text


def render_samples(n: int, seed: int) -> list[tuple[Image.Image, str]]:
    """Deterministically render ``n`` RGB text-line crops with their ground truth.

    Varies font (4 DejaVu faces), size 22..44 px, margins, light-on-dark or
    dark-on-light colours with varying contrast, mild Gaussian blur and noise.
    """
    rng = np.random.default_rng(seed)
    fonts = _font_paths()
    out: list[tuple[Image.Image, str]] = []
    for _ in range(n):
        text = _rand_text(rng)
        font = ImageFont.truetype(
            str(fonts[int(rng.integers(len(fonts)))]), int(rng.integers(22, 45))
        )
        left, top, right, bottom = font.getbbox(text)
        mx, my = int(rng.integers(2, 14)), int(rng.integers(2, 10))
        w, h = int(right - left) + 2 * mx, int(bottom - top) + 2 * my
        lo, hi = int(rng.integers(0, 90)), int(rng.integers(160, 256))
        tint = rng.integers(-25, 26, size=3)
        dark_text = bool(rng.random() < 0.7)
        bg_v, fg_v = (hi, lo) if dark_text else (lo, hi)
        bg = tuple(int(np.clip(bg_v + t, 0, 255)) for t in tint)
        fg = tuple(int(np.clip(fg_v - t, 0, 255)) for t in tint)
        img = Image.new("RGB", (w, h), bg)
        dx, dy = int(rng.integers(-2, 3)), int(rng.integers(-2, 3))
        ImageDraw.Draw(img).text((mx - left + dx, my - top + dy), text, font=font, fill=fg)
        radius = float(rng.uniform(0.0, 1.2))
        if radius > 0.3:
            img = img.filter(ImageFilter.GaussianBlur(radius))
        sigma = float(rng.uniform(0.0, 8.0))
        arr = np.asarray(img, dtype=np.float32) + rng.normal(0.0, sigma, size=(h, w, 3))
        out.append((Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), text))
    return out
