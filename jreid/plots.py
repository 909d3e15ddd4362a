"""Pictures of results: CMC curves, ST distributions, ranked lists (PNG files)."""

from __future__ import annotations

import io
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from jreid import files


def _save(fig, path: str) -> str:
  """PNG to a local path or a gs:// URI."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
  plt.close(fig)
  files.write_bytes(path, buffer.getvalue())
  return path


def plot_cmc(curves: Mapping[str, np.ndarray], path: str, title: str = "CMC") -> str:
  """CMC curves (fractions, cmc[k-1] = CMC@k) of several methods on one axis."""
  fig, ax = plt.subplots(figsize=(6, 4.2))
  for name, cmc in curves.items():
    ranks = np.arange(1, len(cmc) + 1)
    ax.plot(ranks, 100 * np.asarray(cmc), label=f"{name} (rank-1 {100 * cmc[0]:.1f}%)", lw=2)
  ax.set_xscale("log")
  ax.set_xlabel("rank")
  ax.set_ylabel("matching rate (%)")
  ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(loc="lower right")
  return _save(fig, path)


def plot_st_distributions(table: np.ndarray, bin_width: int, path: str,
                          max_frames: float | None = None) -> str:
  """Grid of per-camera-pair transit-time distributions (as the paper's figure).

  Panel (a, b) shows P[a, b, :]: a person seen in camera a+1 after camera b+1.
  """
  C, _, H = table.shape
  t = (np.arange(H) + 0.5) * bin_width
  if max_frames is None:
    used = np.nonzero(table.max(axis=(0, 1)) > 0.01 * table.max())[0] if table.max() > 0 \
        else np.array([H - 1])
    max_frames = min(H, int(used.max()) + 1 + H // 50) * bin_width if used.size else H * bin_width
  fig, axes = plt.subplots(C, C, figsize=(2.0 * C, 1.5 * C), sharex=True, squeeze=False)
  for a in range(C):
    for b in range(C):
      ax = axes[a, b]
      if a == b:
        ax.axis("off")
        continue
      ax.fill_between(t, table[a, b], color="tab:blue", alpha=0.5, lw=0)
      ax.plot(t, table[a, b], color="tab:blue", lw=0.8)
      ax.set_xlim(0, max_frames)
      ax.tick_params(labelsize=6)
      ax.set_title(f"c{b + 1} \u2192 c{a + 1}", fontsize=7)
  fig.suptitle(f"ST model: transit time (frames) between cameras, bin {bin_width} frames",
               fontsize=9)
  fig.tight_layout()
  return _save(fig, path)


def plot_ranked_lists(query_images: Sequence[np.ndarray], gallery_images: Sequence[Sequence[np.ndarray]],
                      matches: np.ndarray, path: str, titles: Sequence[str] | None = None) -> str:
  """Rows of a query image and its top-k gallery images, framed green/red.

  Args:
    query_images: per row an HxWx3 uint8 image.
    gallery_images: per row k HxWx3 uint8 images, best first.
    matches: bool [rows, k], True where the gallery image is a true match.
  """
  rows = len(query_images)
  k = matches.shape[1] if rows else 0
  fig, axes = plt.subplots(rows, k + 1, figsize=(1.0 * (k + 1), 2.0 * rows), squeeze=False)
  for r in range(rows):
    axes[r, 0].imshow(query_images[r])
    axes[r, 0].set_title(titles[r] if titles else "query", fontsize=6)
    for c in range(k + 1):
      axes[r, c].set_xticks([])
      axes[r, c].set_yticks([])
    for c in range(k):
      ax = axes[r, c + 1]
      ax.imshow(gallery_images[r][c])
      colour = "limegreen" if matches[r, c] else "red"
      for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3)
      ax.set_title(str(c + 1), fontsize=6)
  return _save(fig, path)
