import os

import numpy as np
import pytest
from PIL import Image

from jreid import plots


@pytest.fixture
def figures(monkeypatch):
  """Captures the figures instead of only writing PNGs (the PNG is still written)."""
  captured = []
  save = plots._save

  def keep(fig, path, **kwargs):
    captured.append(fig)
    texts = [t.get_text() for t in fig.findobj(lambda o: hasattr(o, "get_text"))]
    fig.jreid_texts = texts
    return save(fig, path, **kwargs)

  monkeypatch.setattr(plots, "_save", keep)
  return captured


def tile(value):
  return np.full((8, 4, 3), value, np.uint8)


def test_ranked_lists_name_the_score_have_a_legend_and_label_tiles(tmp_path, figures):
  path = str(tmp_path / "ranked_lists.png")
  matches = np.array([[True, False, True], [False, False, True]])
  plots.plot_ranked_lists(
      [tile(10), tile(20)], [[tile(30)] * 3, [tile(40)] * 3], matches, path,
      titles=["query id 5\ncam1", "query id 6\ncam2"], ranked_by="joint score",
      gallery_labels=[["id 5\ncam2", "id 9\ncam3", "id 5\ncam4"],
                      ["id 0\ncam1", "id -1\ncam1", "id 6\ncam3"]],
      scores=np.array([[0.9, 0.8, 0.7], [0.6, 0.5, 0.4]]))
  texts = figures[0].jreid_texts
  assert any("ranked by joint score" in t for t in texts)
  assert "true match (same id)" in texts and "other id, junk or distractor" in texts
  for label in ("id 5\ncam2", "id 9\ncam3", "id -1\ncam1", "query id 6\ncam2", "1: 0.900"):
    assert label in texts
  axes = figures[0].axes
  colours = [tuple(np.round(ax.spines["top"].get_edgecolor(), 2)) for ax in axes[1:4]]
  green, red = (tuple(np.round(plots.matplotlib.colors.to_rgba(c), 2))
                for c in (plots.MATCH_COLOUR, plots.OTHER_COLOUR))
  assert colours == [green, red, green]
  assert Image.open(path).format == "PNG"


def test_ranked_lists_old_call_and_unlabelled_gallery(tmp_path, figures):
  # The call of the training job before this change still works.
  plots.plot_ranked_lists([tile(1)], [[tile(2), tile(3)]], np.array([[True, False]]),
                          str(tmp_path / "a.png"), titles=["id 1 c1"])
  plots.plot_ranked_lists([tile(1)], [[tile(2), tile(3)]], None, str(tmp_path / "b.png"),
                          ranked_by="visual score", gallery_labels=[["gate", "hall"]])
  texts = figures[1].jreid_texts
  assert "true match (same id)" not in texts      # no labels, no legend
  assert any("ranked by visual score" in t for t in texts)
  assert "gate" in texts and "hall" in texts


def test_st_distributions_axis_labels_seconds_and_pair_counts(tmp_path, figures):
  table = np.zeros((3, 3, 50))
  table[1, 0, 10] = table[2, 1, 20] = 1.0
  counts = np.array([[0, 0, 0], [7, 0, 0], [0, 3, 0]])
  plots.plot_st_distributions(table, 100, str(tmp_path / "st.png"), ticks_per_second=25,
                              pair_counts=counts, camera_names=("gate", "hall", "lift"))
  fig = figures[0]
  assert "n=7" in fig.jreid_texts and "n=3" in fig.jreid_texts and "n=0" in fig.jreid_texts
  assert "gate \u2192 hall" in fig.jreid_texts   # panel [1, 0]: seen in hall after gate
  assert any("bin 4 s" in t for t in fig.jreid_texts)
  xlabels = {ax.get_xlabel() for ax in fig.axes if ax.get_xlabel()}
  assert xlabels == {"transit time (s)"}
  assert {ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()} == {"probability"}
  panel = fig.axes[3]   # row 1, column 0
  x, _ = panel.lines[0].get_data()
  assert x[10] == pytest.approx(10.5 * 100 / 25)    # bin centre in seconds
  # Frames when the rate is unknown (the old call).
  plots.plot_st_distributions(table, 100, str(tmp_path / "st2.png"))
  assert {ax.get_xlabel() for ax in figures[1].axes if ax.get_xlabel()} == {
      "transit time (frames)"}


def test_the_st_picture_of_many_cameras_shows_the_busiest_pairs(tmp_path):
  """60 cameras: 3,540 pairs would be a 60 x 60 grid (minutes to draw); the picture shows
  the 30 pairs with the most training transits, most first, and is written."""
  C = 60
  rng = np.random.default_rng(0)
  counts = rng.integers(0, 50, size=(C, C))
  np.fill_diagonal(counts, 0)
  counts[7, 3], counts[2, 9] = 1000, 999
  table = rng.uniform(size=(C, C, 5000)).astype(np.float32)
  pairs = plots.st_plot_pairs(table, counts)
  assert len(pairs) == plots.ST_PLOT_MAX_PANELS and pairs[:2] == [(7, 3), (2, 9)]
  flat = sorted(((counts[a, b], -(a * C + b)) for a in range(C) for b in range(C) if a != b),
                reverse=True)
  assert [counts[p] for p in pairs] == [n for n, _ in flat[:30]]
  # Six cameras: every pair, in the C x C grid.
  assert len(plots.st_plot_pairs(table[:6, :6], counts[:6, :6])) == 30
  path = plots.plot_st_distributions(table, 100, str(tmp_path / "st.png"), pair_counts=counts,
                                     ticks_per_second=25.0)
  assert os.path.getsize(path) > 0
