"""Pictures of results: CMC curves, ST distributions, ranked lists (PNG files)."""

from __future__ import annotations

import io
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches  # pylint: disable=g-import-not-at-top
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from jreid import files


def _save(fig, path: str, tight: bool = True) -> str:
  """PNG to a local path or a gs:// URI (``tight``: cropped to the drawn extent, which
  costs a layout pass over every tick of every panel)."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight" if tight else None)
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


# Panels of the ST picture: up to this many camera pairs (Market's 6 cameras: all 30),
# else the pairs with the most training transits; each curve at most this many points.
ST_PLOT_MAX_PANELS = 30
ST_PLOT_MAX_POINTS = 500


def st_plot_pairs(table: np.ndarray, pair_counts: np.ndarray | None,
                  max_panels: int = ST_PLOT_MAX_PANELS) -> list[tuple[int, int]]:
  """The (later, earlier) camera pairs the ST picture shows: every pair of two cameras
  when there are at most ``max_panels``, else the ``max_panels`` with the most training
  transits (``pair_counts``; without it, the most probability mass), most first, ties
  by pair index."""
  C = table.shape[0]
  if C * (C - 1) <= max_panels:
    return [(a, b) for a in range(C) for b in range(C) if a != b]
  weight = (np.asarray(pair_counts, np.float64) if pair_counts is not None
            else np.asarray(table, np.float64).sum(axis=2)).reshape(-1)
  off_diagonal = np.nonzero(np.arange(C * C) % (C + 1) != 0)[0]
  order = off_diagonal[np.lexsort((off_diagonal, -weight[off_diagonal]))][:max_panels]
  return [divmod(int(i), C) for i in order]


def plot_st_distributions(table: np.ndarray, bin_width: int, path: str,
                          max_frames: float | None = None, *,
                          ticks_per_second: float = 0.0,
                          pair_counts: np.ndarray | None = None,
                          camera_names: Sequence[str] | None = None) -> str:
  """Grid of per-camera-pair transit-time distributions (as the paper's figure).

  Panel (a, b) (row a, column b) shows P[a, b, :]: a person seen in camera a after
  camera b. Times are ticks (frames for Market/Duke); with ``ticks_per_second``
  (Market: 25 fps, tracks tables: 1000) the x axis is in seconds. With more than
  ``ST_PLOT_MAX_PANELS`` pairs only those of ``st_plot_pairs`` are drawn, in rows;
  curves of more than ``ST_PLOT_MAX_POINTS`` bins show each group's maximum, so the
  picture costs the same whatever the number of cameras and bins.

  Args:
    table: float [C, C, H] ST probabilities.
    bin_width: ticks per bin.
    path: PNG to write.
    max_frames: x range in ticks (default: up to the last bin holding > 1% of the peak).
    ticks_per_second: ticks per second of the times; 0 when unknown (x in ticks).
    pair_counts: int [C, C] training transits per pair, shown as "n=..." per panel.
    camera_names: names of the C cameras (default c1..cC).
  """
  C, _, H = table.shape
  if max_frames is None:
    used = np.nonzero(table.max(axis=(0, 1)) > 0.01 * table.max())[0] if table.max() > 0 \
        else np.array([H - 1])
    max_frames = min(H, int(used.max()) + 1 + H // 50) * bin_width if used.size else H * bin_width
  scale = 1.0 / ticks_per_second if ticks_per_second else 1.0
  unit = "s" if ticks_per_second else "frames"
  shown = min(H, int(np.ceil(max_frames / bin_width)) + 1)  # only the bins in view are drawn
  names = list(camera_names) if camera_names else [f"c{c + 1}" for c in range(C)]
  pairs = st_plot_pairs(table, pair_counts)
  group = max(1, -(-shown // ST_PLOT_MAX_POINTS))
  points = -(-shown // group)
  curves = {}
  for a, b in pairs:  # only the pairs drawn, each at most ST_PLOT_MAX_POINTS points
    padded = np.zeros(points * group, np.float64)
    padded[:shown] = table[a, b, :shown]
    curves[a, b] = padded.reshape(points, group).max(axis=1)
  t = (np.arange(points) * group + group / 2) * bin_width * scale
  grid = len(pairs) == C * (C - 1)
  rows, cols = (C, C) if grid else (-(-len(pairs) // 6), 6)
  fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 1.7 * rows), sharex=True,
                           squeeze=False)
  cells = list(pairs) if grid else [divmod(i, cols) for i in range(len(pairs))]
  for ax in axes.reshape(-1):
    ax.axis("off")
  for (a, b), (r, c) in zip(pairs, cells):
    ax = axes[r, c]
    ax.axis("on")
    ax.fill_between(t, curves[a, b], color="tab:blue", alpha=0.5, lw=0)
    ax.plot(t, curves[a, b], color="tab:blue", lw=0.8)
    ax.set_xlim(0, max_frames * scale)
    ax.tick_params(labelsize=6)
    ax.set_title(f"{names[b]} \u2192 {names[a]}", fontsize=7)
    if pair_counts is not None:
      n = int(pair_counts[a, b])
      ax.text(0.97, 0.92, f"n={n}", transform=ax.transAxes, ha="right", va="top",
              fontsize=6, color="black" if n else "red")
    if r == rows - 1 or (grid and r == rows - 2 and c == cols - 1):
      ax.set_xlabel(f"transit time ({unit})", fontsize=6)
    if c == 0 or (grid and c == 1 and r == 0):
      ax.set_ylabel("probability", fontsize=6)
  bin_text = (f"{bin_width * scale:g} s" if ticks_per_second else f"{bin_width} frames")
  counts = ("; n = training transits per pair" if pair_counts is not None else "")
  if not grid:
    counts += (f"; the {len(pairs)} of {C * (C - 1)} pairs with the most "
               f"{'transits' if pair_counts is not None else 'probability'}")
  fig.suptitle(f"ST model: P(transit time | earlier camera \u2192 later camera), "
               f"bin {bin_text}{counts}", fontsize=9)
  # Fixed margins: tight_layout and a tight bounding box measure every tick label of
  # every panel, seconds for a 6 x 6 grid.
  fig.subplots_adjust(left=0.06, right=0.98, bottom=0.07, top=0.92, wspace=0.35, hspace=0.55)
  return _save(fig, path, tight=False)


MATCH_COLOUR, OTHER_COLOUR, UNLABELLED_COLOUR = "limegreen", "red", "0.6"


def plot_ranked_lists(query_images: Sequence[np.ndarray],
                      gallery_images: Sequence[Sequence[np.ndarray]],
                      matches: np.ndarray | None, path: str,
                      titles: Sequence[str] | None = None, *, ranked_by: str = "joint score",
                      gallery_labels: Sequence[Sequence[str]] | None = None,
                      scores: np.ndarray | None = None) -> str:
  """Rows of a query image and its top-k gallery images, framed green/red.

  Args:
    query_images: per row an HxWx3 uint8 image.
    gallery_images: per row k HxWx3 uint8 images, best first; None where a row has
      fewer than k results (an empty place, no frame, no caption).
    matches: bool [rows, k], True where the gallery image is a true match (green,
      else red); None for an unlabelled gallery (grey frames, no legend).
    path: PNG to write.
    titles: per row the query's caption (e.g. "query id 12\ncam3").
    ranked_by: the score the lists are sorted by, named in the title.
    gallery_labels: per row and rank the caption under the tile (e.g. "id 12\ncam1").
    scores: float [rows, k] shown above each tile with its rank.
  """
  rows = len(query_images)
  k = len(gallery_images[0]) if rows else 0
  fig, axes = plt.subplots(rows, k + 1, figsize=(1.0 * (k + 1), 2.3 * rows + 0.6),
                           squeeze=False)
  for r in range(rows):
    axes[r, 0].imshow(query_images[r])
    axes[r, 0].set_title(titles[r] if titles else "query", fontsize=6)
    for spine in axes[r, 0].spines.values():
      spine.set_edgecolor("tab:blue")
      spine.set_linewidth(3)
    for c in range(k + 1):
      axes[r, c].set_xticks([])
      axes[r, c].set_yticks([])
    for c in range(k):
      ax = axes[r, c + 1]
      if gallery_images[r][c] is None:
        ax.axis("off")
        continue
      ax.imshow(gallery_images[r][c])
      colour = UNLABELLED_COLOUR if matches is None else (
          MATCH_COLOUR if matches[r, c] else OTHER_COLOUR)
      for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3)
      ax.set_title(f"{c + 1}" + ("" if scores is None else f": {scores[r, c]:.3f}"),
                   fontsize=6)
      if gallery_labels is not None:
        ax.set_xlabel(gallery_labels[r][c], fontsize=5.5, labelpad=2)
  title = (f"Top-{k} gallery images of each query, ranked by {ranked_by}"
           + ("" if scores is None else " (rank: score)"))
  handles = [] if matches is None else [
      matplotlib.patches.Patch(facecolor="white", edgecolor=MATCH_COLOUR, lw=3,
                               label="true match (same id)"),
      matplotlib.patches.Patch(facecolor="white", edgecolor=OTHER_COLOUR, lw=3,
                               label="other id, junk or distractor")]
  fig.suptitle(title, fontsize=8)
  fig.tight_layout(rect=(0, 0.035 if handles else 0, 1, 0.97))
  if handles:
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=7, frameon=False)
  return _save(fig, path)
