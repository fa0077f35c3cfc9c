"""Synthetic OCT B-scans with retinal fluid (IRF, SRF, PED) and pixel-exact masks.

The default dataset of labelmix, so the whole platform runs without RETOUCH. One *volume* is a
stack of B-scans through a 3-D macula; its geometry and its fluid are sampled once per volume and
cut at every slice, so the retina changes smoothly from slice to slice and a fluid pocket shows up
in several neighbouring B-scans, as in real data.

Coordinates: ``u`` in (0, 1) across a B-scan (columns), ``v`` in (0, 1) across the slices of a
volume (the same physical extent as ``u``: a square macular scan), depths in fractions of the image
height. Everything is sampled in these units and scaled to pixels at the end, so any image size
(non-square included) gives the same anatomy.

A B-scan is rendered in display units (0 black .. 1 white, i.e. after OCT's log compression):

1. Layer geometry per column, top to bottom: vitreous | inner retina (ILM..OPL) | outer retina
   (ONL..photoreceptor tips) | SRF gap | RPE | PED gap | Bruch's membrane, choroid, sclera.
   SRF and PED are gaps inserted into this stack, so the tissue above them is lifted, as in real
   detachments. IRF cysts are ellipsoid cuts inside the neurosensory retina.
2. A continuous layer coordinate per pixel is mapped through a brightness profile (bright RNFL,
   dark nuclear layers, bright ellipsoid zone and RPE), choroid texture is added, vessels and their
   shadows are drawn, and fluid pixels take the fluid brightness. The mask is the same geometry, so
   every fluid pixel drawn is labelled and nothing else is.
3. Acquisition: slight blur, vessel shadows, column gain, and strong multiplicative speckle (a
   gamma field smoothed to grains of about a pixel, additive after the log). Speckle strength and
   fluid brightness vary between volumes, so fluid is always darker than its surroundings but its
   edges are noisy: a small U-Net learns the task without solving it perfectly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pydantic.dataclasses
from pydantic import ConfigDict, Field
from scipy import ndimage

from labelmix.errors import UserError

SYNTH_CLASSES: tuple[str, ...] = ("background", "IRF", "SRF", "PED")
BACKGROUND, IRF, SRF, PED = 0, 1, 2, 3
# Where fluid regions could overlap, the later class in this order wins (PED > SRF > IRF). By
# construction they are disjoint (IRF lies in the neurosensory retina, SRF under it, PED under
# the RPE), so the order only matters if the geometry changes.
_PAINT_ORDER = (IRF, SRF, PED)

# Share of volumes that carry each fluid type (a volume may carry several). With the extents
# sampled in _Volume, seed 0 at 200 volumes x 12 slices gives B-scans with IRF 35.3%, SRF 18.6%,
# PED 16.2%, no fluid 50.9% (pixels: IRF 0.32%, SRF 0.19%, PED 0.19%); a class present in a
# B-scan is present in a neighbouring B-scan 98.6% of the time. Generator version 2 made PED
# taller, wider, darker and more frequent (version 1: 0.07% of pixels, hardly learnable at 128x128).
# Version 3 made IRF cysts smaller, widened the volume-to-volume spread of contrast, gain, speckle
# and fluid brightness, added dark choroidal vessel lumens (look like fluid, are not), and the
# default went from 60 x 24 to 120 x 12 B-scans: as many images, twice as many independent
# volumes, so a full mask set covers more of the anatomy and acquisition than 5% of it does.
_P_IRF, _P_SRF, _P_PED = 0.7, 0.45, 0.4

# Brightness profile along the layer coordinate L: 0 = ILM, 1 = OPL/ONL border, 2 = photoreceptor
# tips (top of the RPE), 3 = Bruch's membrane, 3..5 choroid fading into the sclera.
_PROFILE_L = np.array([
    0.00, 0.05, 0.20, 0.26, 0.43, 0.49, 0.62, 0.68, 0.82, 0.87, 0.97,  # RNFL GCL IPL INL OPL
    1.04, 1.50, 1.58, 1.63, 1.68, 1.75, 1.80, 1.86, 1.92, 1.97,        # ONL ELM IS EZ OS IZ
    2.00, 2.15, 2.85, 3.00,                                            # RPE
    3.05, 3.50, 4.10, 4.80,                                            # choroid, sclera
])
_PROFILE_I = np.array([
    0.80, 0.80, 0.68, 0.46, 0.46, 0.60, 0.60, 0.34, 0.34, 0.58, 0.58,
    0.27, 0.27, 0.50, 0.36, 0.36, 0.86, 0.86, 0.44, 0.62, 0.62,
    0.80, 0.95, 0.95, 0.85,
    0.58, 0.50, 0.26, 0.02,
])
_VITREOUS = -0.1


@pydantic.dataclasses.dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class SynthSettings:
    """How many synthetic volumes, of which size, from which seed: the config's ``dataset.synthetic``."""

    volumes: int = Field(120, ge=1)
    slices: int = Field(12, ge=1)  # B-scans per volume
    height: int = Field(128, ge=32)
    width: int = Field(128, ge=32)
    seed: int = Field(0, ge=0)


@dataclass(frozen=True)
class SynthSlice:
    """One B-scan: ``image`` uint8 HxW, ``mask`` uint8 HxW indexing SYNTH_CLASSES."""

    volume_id: str
    slice_index: int
    image: np.ndarray
    mask: np.ndarray


def volume_id(volume_index: int) -> str:
    return f"synth-{volume_index:04d}"


def synthesize(settings: SynthSettings) -> Iterator[SynthSlice]:
    """All B-scans of all volumes: volumes in order, slices in order."""
    for index in range(settings.volumes):
        yield from synthesize_volume(settings, index)


def synthesize_volume(settings: SynthSettings, volume_index: int) -> list[SynthSlice]:
    """The B-scans of one volume; its own RNG, so any volume can be made alone (and in parallel)."""
    if not 0 <= volume_index < settings.volumes:
        raise UserError(f"volume_index must be in 0..{settings.volumes - 1}, got {volume_index}")
    rng = np.random.default_rng([settings.seed, volume_index])
    volume = _Volume(rng, settings.height, settings.width)
    vid = volume_id(volume_index)
    out = []
    for s in range(settings.slices):
        image, mask = volume.render((s + 0.5) / settings.slices, rng)
        out.append(SynthSlice(vid, s, image, mask))
    return out


class _Volume:
    """The anatomy of one volume, sampled once; ``render(v)`` cuts it at slice position v."""

    def __init__(self, rng: np.random.Generator, height: int, width: int) -> None:
        H, W = height, width
        self.H, self.W = H, W
        self.u = (np.arange(W) + 0.5) / W  # column centres, (W,)
        self.y = np.arange(H, dtype=np.float64)[:, None]  # row index, (H, 1)

        # Retina position and shape: Bruch's membrane as a smooth bowl, tilted, varying with v.
        self.bruch0 = rng.uniform(0.64, 0.74)
        self.tilt_u, self.tilt_v = rng.normal(0, 0.07), rng.normal(0, 0.05)
        self.bowl_u, self.bowl_v = rng.uniform(0.0, 0.09), rng.uniform(0.0, 0.05)
        self.wobble = rng.uniform(0, 0.012), rng.uniform(1.5, 3.5), rng.uniform(0, 2 * np.pi)
        # Fovea: a pit where the inner retina thins out; slightly off-centre.
        self.fovea_u, self.fovea_v = rng.normal(0.5, 0.07), rng.normal(0.5, 0.07)
        self.fovea_sigma = rng.uniform(0.07, 0.1)
        self.t_inner = rng.uniform(0.10, 0.13)
        self.t_outer = rng.uniform(0.075, 0.095)
        self.asymmetry = rng.uniform(-0.6, 0.6)  # thicker inner retina towards the optic disc
        self.t_rpe = rng.uniform(0.022, 0.03)
        self.t_choroid = rng.uniform(0.10, 0.16)

        # IRF: a cluster of 3-D cysts in a thickened (oedematous) region, usually near the fovea.
        self.cysts = np.zeros((0, 6))
        self.edema = None
        if rng.random() < _P_IRF:
            cu = self.fovea_u + rng.normal(0, 0.12)
            cv = self.fovea_v + rng.normal(0, 0.12)
            su, sv = rng.uniform(0.07, 0.18), rng.uniform(0.1, 0.25)
            self.edema = (cu, cv, su, sv, rng.uniform(0.03, 0.1))
            n = int(rng.integers(4, 26))
            radius = np.exp(rng.uniform(np.log(2.0), np.log(7.0), n)) / 128  # 2..7 px at 128
            self.cysts = np.stack([
                np.clip(cv + rng.normal(0, sv * 0.7, n), 0.0, 1.0),  # v centre
                np.clip(cu + rng.normal(0, su * 0.7, n), 0.02, 0.98),  # u centre
                rng.uniform(0.3, 0.8, n),  # depth within the neurosensory retina
                radius * rng.uniform(1.2, 2.2, n),  # v radius (slices are sparser than columns)
                radius * rng.uniform(0.9, 1.6, n),  # u radius
                radius * rng.uniform(0.7, 1.1, n),  # depth radius
            ], axis=1)
        # SRF: one dome under the fovea. PED: one or two domes of the RPE.
        self.srf = []
        if rng.random() < _P_SRF:
            self.srf.append(self._dome(rng, self.fovea_u + rng.normal(0, 0.05), self.fovea_v + rng.normal(0, 0.05),
                                       (0.10, 0.25), (0.15, 0.35), (0.03, 0.10), (0.6, 1.0)))
        self.ped = []
        if rng.random() < _P_PED:
            for _ in range(1 + int(rng.random() < 0.3)):
                self.ped.append(self._dome(rng, self.fovea_u + rng.normal(0, 0.15), self.fovea_v + rng.normal(0, 0.12),
                                           (0.08, 0.18), (0.12, 0.28), (0.05, 0.12), (0.5, 0.9)))

        # Choroidal vessel lumens: dark ellipsoids just under Bruch's membrane, as dark as fluid but
        # not fluid. They sit right below where PED sits (above Bruch's membrane), so telling the two
        # apart takes the layer context, not only brightness.
        n = int(rng.integers(3, 12))
        radius = np.exp(rng.uniform(np.log(2.0), np.log(6.0), n)) / 128
        self.lumens = np.stack([
            rng.uniform(0.0, 1.0, n),  # v centre
            rng.uniform(0.02, 0.98, n),  # u centre
            rng.uniform(0.1, 0.6, n),  # depth within the choroid
            radius * rng.uniform(1.5, 3.0, n),  # v radius
            radius * rng.uniform(1.0, 2.5, n),  # u radius
            radius * rng.uniform(0.6, 1.0, n),  # depth radius
        ], axis=1)
        self.lumen_brightness = rng.uniform(0.08, 0.3)

        # Vessels in the inner retina, running across slices; each casts a shadow below it.
        n = int(rng.integers(2, 7))
        self.vessels = np.stack([
            rng.uniform(0.03, 0.97, n),  # u at v = 0.5
            rng.normal(0, 0.25, n),  # du/dv: vessels cross slices at an angle
            rng.uniform(0.8, 2.0, n) / 128,  # half-width (u units)
            rng.uniform(0.1, 0.35, n),  # depth within the inner retina
            rng.uniform(0.08, 0.3, n),  # shadow strength (display units)
        ], axis=1)

        # Acquisition: speckle (gamma shape; lower = stronger), dynamic range, tissue contrast, gain.
        # These differ between devices and patients, so they vary widely between volumes: a model
        # that has seen few volumes has seen few of these settings.
        self.speckle_shape = rng.uniform(0.25, 0.55)
        self.speckle_scale = 10 / rng.uniform(24, 36) / np.log(10)  # display units per neper (dB range)
        self.contrast = rng.uniform(0.65, 1.15)  # tissue brightness spread around mid-grey
        self.gain = rng.uniform(-0.07, 0.07)
        # Fluid brightness varies between volumes (devices, turbidity): always darker than the
        # tissue around it, but not by a fixed margin.
        self.fluid_brightness = np.array([0.0, rng.uniform(0.08, 0.24), rng.uniform(0.06, 0.22), rng.uniform(0.08, 0.28)])

    @staticmethod
    def _dome(rng, cu, cv, width_u, width_v, height, power) -> tuple[float, ...]:
        return (cu, cv, rng.uniform(*width_u), rng.uniform(*width_v), rng.uniform(*height), rng.uniform(*power))

    def _dome_height(self, domes, v: float) -> np.ndarray:
        """Height (pixels) of the union of domes along the columns at slice v; 0 where under half a pixel."""
        h = np.zeros(self.W)
        for cu, cv, au, av, height, power in domes:
            r2 = ((self.u - cu) / au) ** 2 + ((v - cv) / av) ** 2
            h = np.maximum(h, height * self.H * np.clip(1 - r2, 0, None) ** power)
        return np.where(h >= 0.5, h, 0.0)

    def render(self, v: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        H, W, u, y = self.H, self.W, self.u, self.y

        # Per-column boundaries (pixels, shape (W,)), bottom up.
        wob_a, wob_f, wob_p = self.wobble
        bruch = H * (self.bruch0 + self.tilt_u * (u - 0.5) + self.tilt_v * (v - 0.5)
                     - self.bowl_u * (2 * u - 1) ** 2 - self.bowl_v * (2 * v - 1) ** 2
                     + wob_a * np.sin(2 * np.pi * wob_f * u + wob_p + 3 * v))
        pit = np.exp(-((u - self.fovea_u) ** 2 + (v - self.fovea_v) ** 2) / (2 * self.fovea_sigma ** 2))
        t_in = H * self.t_inner * (1 - 0.9 * pit) * (1 + self.asymmetry * (u - self.fovea_u))
        t_out = H * self.t_outer * (1 + 0.35 * pit)
        if self.edema is not None:
            cu, cv, su, sv, amount = self.edema
            swell = H * amount * np.exp(-0.5 * (((u - cu) / su) ** 2 + ((v - cv) / sv) ** 2))
            t_in, t_out = t_in + 0.4 * swell, t_out + 0.6 * swell
        t_in = np.maximum(t_in, 0.3)
        t_rpe = max(H * self.t_rpe, 0.8)
        h_ped = self._dome_height(self.ped, v)
        h_srf = self._dome_height(self.srf, v)
        rpe_bottom = bruch - h_ped
        rpe_top = rpe_bottom - t_rpe
        tips = rpe_top - h_srf  # photoreceptor tips
        opl = tips - t_out
        ilm = opl - t_in

        # Continuous layer coordinate (see _PROFILE_L); constant inside the SRF and PED gaps.
        t_ch = H * self.t_choroid
        L = (np.clip((y - ilm) / t_in, 0, 1) + np.clip((y - opl) / t_out, 0, 1)
             + np.clip((y - rpe_top) / t_rpe, 0, 1) + np.clip((y - bruch) / t_ch, 0, 1.8))
        img = 0.5 + self.contrast * (np.interp(L, _PROFILE_L, _PROFILE_I) - 0.5)
        img[y < ilm] = _VITREOUS

        # Choroid: smooth texture (vessel lumens and stroma), strongest just below Bruch's membrane.
        sy, sx = max(1.0, 1.6 * H / 128), max(1.0, 2.8 * W / 128)
        texture = ndimage.gaussian_filter(rng.standard_normal((H, W)), (sy, sx), mode="nearest")
        texture *= np.sqrt(4 * np.pi * sy * sx)  # unit variance
        img += 0.22 * np.tanh(texture) * np.clip(L - 3, 0, 1) * np.clip(4.6 - L, 0, 1)

        # Vessels: a bright spot in the inner retina and a shadow in every row below it.
        x = np.arange(W)
        shadow = np.zeros((H, W))
        for u0, slope, half, depth, strength in self.vessels:
            xc = (u0 + slope * (v - 0.5)) * W - 0.5
            if not -3 * half * W < xc < W + 3 * half * W:
                continue
            col = int(np.clip(round(xc), 0, W - 1))
            strength *= 1 - pit[col]  # no vessels in the foveal centre
            yc = ilm[col] + depth * t_in[col]
            profile = np.exp(-0.5 * ((x - xc) / max(half * W, 0.6)) ** 2)  # (W,)
            shadow += strength * profile * (y > yc)
            spot = np.exp(-0.5 * ((y - yc) / max(0.7 * half * H, 0.6)) ** 2) * profile
            img += 0.8 * strength * spot * (L > 0)

        # Choroidal lumens: dark, and not in the mask.
        img[_ellipsoid_cut(self.lumens, v, bruch, bruch + t_ch, H, W) & (y >= bruch)] = self.lumen_brightness

        # Fluid: the mask is the geometry; the image takes the fluid brightness on exactly those pixels.
        mask = np.zeros((H, W), np.uint8)
        regions = {
            IRF: _ellipsoid_cut(self.cysts, v, ilm, tips, H, W) & (y >= ilm) & (y < tips),
            SRF: (y >= tips) & (y < rpe_top),
            PED: (y >= rpe_bottom) & (y < bruch),
        }
        for cls in _PAINT_ORDER:
            mask[regions[cls]] = cls
        fluid = mask > 0
        if fluid.any():
            img[fluid] = self.fluid_brightness[mask[fluid]]

        # Acquisition: soften edges, shadows, column gain, speckle (additive after log compression).
        img = ndimage.gaussian_filter(img, 0.6, mode="nearest")
        columns = ndimage.gaussian_filter1d(rng.normal(0, 0.06, W), max(1.0, 2 * W / 128), mode="wrap")
        img -= shadow
        img += columns + self.gain + rng.normal(0, 0.02)  # per-B-scan gain jitter
        # Speckle grains span more than one pixel (wider than tall, as OCT's lateral resolution is
        # coarser): smooth a gamma field in linear units, then take the log.
        grain = (max(0.5, 0.5 * H / 128), max(0.5, 0.8 * W / 128))
        speckle = np.log(ndimage.gaussian_filter(rng.standard_gamma(self.speckle_shape, (H, W)), grain, mode="nearest") + 1e-6)
        img += self.speckle_scale * (speckle - speckle.mean())
        image = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
        return image, mask


def _ellipsoid_cut(
    ellipsoids: np.ndarray, v: float, top: np.ndarray, bottom: np.ndarray, H: int, W: int
) -> np.ndarray:
    """Union of 3-D ellipsoids cut at slice v, as a boolean (H, W) mask.

    Each row of ``ellipsoids`` is (v centre, u centre, depth, v radius, u radius, depth radius) in
    volume units; depth is a fraction of the band between the per-column rows ``top`` and ``bottom``
    (pixels, shape (W,)) at the centre column. Callers clip the result to the band they want.
    """
    out = np.zeros((H, W), bool)
    if not len(ellipsoids):
        return out
    cv, cu, depth, rv, ru, ry = ellipsoids.T
    t = (v - cv) / rv
    for i in np.flatnonzero(np.abs(t) < 1):
        scale = np.sqrt(1 - t[i] ** 2)
        rx_px, ry_px = ru[i] * scale * W, ry[i] * scale * H
        if rx_px < 1.0 or ry_px < 1.0:
            continue
        xc = cu[i] * W - 0.5
        col = int(np.clip(round(xc), 0, W - 1))
        yc = top[col] + depth[i] * (bottom[col] - top[col])
        y0, y1 = max(int(yc - ry_px), 0), min(int(yc + ry_px) + 2, H)
        x0, x1 = max(int(xc - rx_px), 0), min(int(xc + rx_px) + 2, W)
        if y0 >= y1 or x0 >= x1:
            continue
        yy = np.arange(y0, y1)[:, None]
        xx = np.arange(x0, x1)[None, :]
        out[y0:y1, x0:x1] |= ((yy - yc) / ry_px) ** 2 + ((xx - xc) / rx_px) ** 2 <= 1
    return out


def save_montage(
    slices: Sequence[SynthSlice] | Sequence[tuple[np.ndarray, np.ndarray]],
    path: str | os.PathLike,
    class_names: Sequence[str] = SYNTH_CLASSES,
    columns: int = 4,
) -> None:
    """A PNG of B-scans, each shown plain and with its mask overlaid, and a legend naming the classes."""
    if len(slices) == 0:
        raise UserError("save_montage: no slices to show")
    if columns < 1:
        raise UserError(f"columns must be >= 1, got {columns}")
    # matplotlib without pyplot: no global backend state, works headless.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    items = []
    for i, item in enumerate(slices):
        if isinstance(item, SynthSlice):
            items.append((item.image, item.mask, f"{item.volume_id} #{item.slice_index}"))
        else:
            image, mask = item
            items.append((np.asarray(image), np.asarray(mask), f"#{i}"))
    colors = _class_colors(len(class_names))

    columns = min(columns, len(items))
    rows = -(-len(items) // columns)
    h, w = items[0][0].shape
    panel = 2.2  # inches per panel width
    fig = Figure(figsize=(2 * columns * panel, rows * panel * h / w * 1.15 + 0.6), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 2 * columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for k, (image, mask, title) in enumerate(items):
        r, c = divmod(k, columns)
        scale = 255.0 if image.dtype == np.uint8 else max(1.0, float(np.max(image)))
        gray = np.repeat((np.asarray(image, np.float64) / scale)[..., None], 3, axis=2)  # (H, W, 3)
        overlay = gray.copy()
        fg = mask > 0
        overlay[fg] = 0.45 * gray[fg] + 0.55 * colors[np.clip(mask[fg], 0, len(colors) - 1)]
        present = [class_names[j] for j in np.unique(mask) if 0 < j < len(class_names)]
        axes[r, 2 * c].imshow(gray, interpolation="nearest")
        axes[r, 2 * c].set_title(title, fontsize=8)
        axes[r, 2 * c + 1].imshow(overlay, interpolation="nearest")
        nothing = "no fluid" if tuple(class_names) == SYNTH_CLASSES else f"{class_names[0]} only"
        axes[r, 2 * c + 1].set_title(", ".join(present) or nothing, fontsize=8)
    handles = [Patch(facecolor="none", edgecolor="black", label=f"{class_names[0]} (no overlay)")]
    handles += [Patch(facecolor=colors[j], edgecolor="black", label=name) for j, name in enumerate(class_names) if j > 0]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=10, frameon=False)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.95, bottom=0.6 / fig.get_figheight() + 0.02, wspace=0.04, hspace=0.18)
    fig.savefig(os.fspath(path), format="png")


def _class_colors(n: int) -> np.ndarray:
    """RGB per class: IRF red, SRF yellow, PED blue for the RETOUCH classes, tab10 beyond."""
    base = [(0.0, 0.0, 0.0), (1.0, 0.2, 0.2), (1.0, 0.85, 0.1), (0.2, 0.6, 1.0)]
    if n <= len(base):
        return np.array(base[:n])
    from matplotlib import colormaps

    extra = [colormaps["tab10"](i % 10)[:3] for i in range(n - len(base))]
    return np.array(base + extra)
