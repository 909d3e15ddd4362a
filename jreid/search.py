"""Search: for every query, the top-k gallery detections with their scores, as data and pictures.

``top_k`` scores queries in chunks against the whole gallery (one jitted kernel
built from ``jreid.scoring``: cosine -> ST probability -> joint score ->
``protocol.best_items``), so the largest array is [chunk, G] with chunk from
``records.chunk_rows`` and the memory budget. Ties go to the lower gallery index.
``rank_lists`` turns the result into plain dicts, ``write_rank_lists`` writes them
as ``rank_lists.json`` and ``ranked_list_picture`` draws a few queries' lists
(``jreid.plots.plot_ranked_lists``). No configs, no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jreid import errors
from jreid import files
from jreid import plots
from jreid import protocol
from jreid import records as records_lib
from jreid import scoring
from jreid import st as st_lib
from jreid import tracks as tracks_lib
from jreid.records import Records

RANK_LISTS_FILE = "rank_lists.json"


@functools.partial(jax.jit, static_argnames=("k", "bin_width", "fusion"))
def _chunk_top_k(query_features, query_cameras, query_times, gallery_features,
                 gallery_cameras, gallery_times, table, left_out, *, k, bin_width, fusion):
  """Top-k of a query chunk against the whole gallery.

  Args:
    query_features: float32 [B, D] normalised; query_cameras, query_times: int32 [B]
      (0-based cameras, ticks).
    gallery_features: float32 [G, D]; gallery_cameras, gallery_times: int32 [G].
    table: float32 [C, C, H] ST table, or None for visual-only ranking.
    left_out: None, or (query ids int32 [B], gallery ids int32 [G]): leave out the
      Market-1501 protocol's junk (gallery id -1; same id and same camera).
    k: results per query (static); bin_width: ticks per bin (static).
  Returns:
    (index int32 [B, k], visual [B, k], st probability [B, k], joint [B, k],
    pairs beyond the last bin int32 [B]); the last three are zeros without a table.
  """
  visual = scoring.cosine_scores(query_features, gallery_features)
  junk = None
  if left_out is not None:
    query_ids, gallery_ids = left_out
    junk = protocol.is_junk(query_ids[:, None], query_cameras[:, None], gallery_ids[None, :],
                            gallery_cameras[None, :])
  if table is None:
    order, index = protocol.best_items(visual, junk, k)
    top = protocol.scores_of(order)
    zeros = jnp.zeros_like(top)
    return index, top, zeros, zeros, jnp.zeros(visual.shape[0], jnp.int32)
  prob = scoring.st_probabilities(table, bin_width, query_cameras, query_times,
                                  gallery_cameras, gallery_times)
  joint = scoring.joint_scores(visual, prob, fusion)
  order, index = protocol.best_items(joint, junk, k)
  top = protocol.scores_of(order)
  take = lambda x: jnp.take_along_axis(x, index, axis=1)
  C, _, H = table.shape
  qc, gc = query_cameras[:, None], gallery_cameras[None, :]
  known_pair = (qc != gc) & (qc < C) & (gc < C)
  beyond = known_pair & (jnp.abs(query_times[:, None] - gallery_times[None, :]) // bin_width >= H)
  return index, take(visual), take(prob), top, beyond.sum(axis=1, dtype=jnp.int32)


def top_k(query: Records, gallery: Records, st_model: st_lib.STModel | None = None,
          fusion: scoring.FusionParams = scoring.FusionParams(), k: int = 10,
          chunk_elements: int = 1 << 22, progress: Callable[[int], Any] | None = None,
          leave_out_junk: bool = False) -> protocol.TopK:
  """The k best gallery detections of every query (joint score with an ST model, else visual).

  Args:
    query, gallery: ``Records`` with L2-normalised float32 features, 0-based cameras
      (indices >= the ST model's cameras get ST probability 0) and times in the ST
      model's ticks.
    st_model: the ST prior, or None to rank by the visual score alone.
    fusion: logistic smoothing constants of the joint score.
    k: results per query (at most the gallery size).
    chunk_elements: memory budget, in elements of a [chunk, G] score matrix.
    progress: called with the number of queries done after each chunk.
    leave_out_junk: rank as the Market-1501 protocol does (labelled records): gallery
      items with id -1, and those of the query's id in the query's camera, never
      appear (then at most G - that many results are real; the rest score -inf).
  Returns:
    The ``protocol.TopK``; ties go to the lower gallery index.
  """
  for side, r in (("query", query), ("gallery", gallery)):
    if r.features is None:
      raise ValueError(f"search: the {side} records have no features")
    if len(r) == 0:
      raise ValueError(f"search: the {side} set is empty")
  if query.features.shape[1] != gallery.features.shape[1]:
    raise ValueError(f"search: query features have {query.features.shape[1]} dims, gallery "
                     f"features {gallery.features.shape[1]}")
  if k < 1:
    raise ValueError(f"search: k must be >= 1, got {k}")
  for side, r in (("query", query), ("gallery", gallery)):
    if len(r.times) and (r.times.min() < 0 or r.times.max() > np.iinfo(np.int32).max):
      raise ValueError(f"search: {side} times must be ticks in [0, 2^31), got "
                       f"[{r.times.min()}, {r.times.max()}]")
  Q, G = len(query), len(gallery)
  k = min(int(k), G)
  chunk = records_lib.chunk_rows(Q, G, chunk_elements)
  gallery_features = jax.device_put(np.asarray(gallery.features, np.float32))
  gallery_cameras = jnp.asarray(gallery.cameras, jnp.int32)
  gallery_times = jnp.asarray(gallery.times, jnp.int32)
  table = None if st_model is None else jnp.asarray(st_model.table, jnp.float32)
  gallery_ids = jnp.asarray(gallery.person_ids, jnp.int32) if leave_out_junk else None
  bin_width = 1 if st_model is None else int(st_model.params.bin_width)
  out = [np.empty((Q, k), dt) for dt in (np.int64, np.float32, np.float32, np.float32)]
  beyond = 0
  for start in range(0, Q, chunk):
    stop = min(Q, start + chunk)
    rows = lambda x, v: records_lib.pad_rows(x[start:stop], chunk, v)
    found = _chunk_top_k(
        jnp.asarray(rows(np.asarray(query.features, np.float32), 0.0)),
        jnp.asarray(rows(query.cameras, 0), jnp.int32),
        jnp.asarray(rows(query.times, 0), jnp.int32),
        gallery_features, gallery_cameras, gallery_times, table,
        None if gallery_ids is None else (
            jnp.asarray(rows(query.person_ids, -2), jnp.int32), gallery_ids),
        k=k, bin_width=bin_width, fusion=fusion)
    found = [np.asarray(x)[:stop - start] for x in found]
    for dst, src in zip(out, found[:4]):
      dst[start:stop] = src
    beyond += int(found[4].sum())
    if progress is not None:
      progress(stop)
  index, visual, prob, joint = out
  if st_model is None:
    return protocol.TopK(index, visual, None, None, "visual", Q * G, 0)
  return protocol.TopK(index, visual, prob, joint, "joint", Q * G, beyond)


def attach_features(rows: Records, features: np.ndarray, feature_names: np.ndarray | None,
                    source: str, feature_ids: np.ndarray | None = None) -> Records:
  """``rows`` (from a tracks table) with the features of a features file's side.

  With ``feature_names`` (the file's ``*_names``), each row takes the feature whose
  name is its image path, or, failing that, its image's file name (when the file
  names are unique); without names, rows and features are matched by order.

  With ``feature_ids`` (the file's identities, for a labelled table) the matched
  rows must have the table's identities: a check that the match is right.

  Raises:
    errors.InputError: naming ``source`` when a row has no feature, a name is ambiguous,
      the counts differ or matched identities differ.
  """
  features = np.asarray(features)
  if feature_names is None or rows.names is None:
    if len(features) != len(rows):
      raise errors.InputError(
          f"{source}: {len(features)} feature rows for {len(rows)} table rows; without names "
          f"({source} lacks *_names) they are matched by order, so the counts must be equal")
    _check_ids(rows, np.arange(len(rows)), feature_ids, source, "by order")
    return rows.with_features(features)
  feature_names = [str(n) for n in np.asarray(feature_names).reshape(-1)]
  if len(feature_names) != len(features):
    raise errors.InputError(f"{source}: {len(feature_names)} names for {len(features)} "
                            f"feature rows")
  exact = {n: i for i, n in enumerate(feature_names)}
  base = {}
  for i, n in enumerate(feature_names):
    base.setdefault(n.replace("\\", "/").rsplit("/", 1)[-1], []).append(i)
  index = []
  for name in rows.names.tolist():
    if name in exact:
      index.append(exact[name])
      continue
    found = base.get(name.replace("\\", "/").rsplit("/", 1)[-1], [])
    if len(found) != 1:
      raise errors.InputError(
          f"{source}: {'no' if not found else len(found)} feature rows named like the table's "
          f"image {name!r}; names are matched as whole paths or, if unique, as file names")
    index.append(found[0])
  index = np.asarray(index, np.int64)
  _check_ids(rows, index, feature_ids, source, "by name")
  return rows.with_features(features[index])


def _check_ids(rows: Records, index: np.ndarray, feature_ids, source: str, how: str) -> None:
  if feature_ids is None:
    return
  differ = np.asarray(feature_ids).reshape(-1)[index] != rows.person_ids
  if differ.any():
    i = int(np.argmax(differ))
    raise errors.InputError(f"{source}: rows matched {how} disagree on the identity in "
                     f"{int(differ.sum())} of {len(rows)} rows, e.g. {str(rows.names[i])!r}: "
                     f"{int(rows.person_ids[i])} in the table, "
                     f"{int(np.asarray(feature_ids).reshape(-1)[index[i]])} in the file; "
                     f"give the file *_names, or rows in the table's order")


@dataclasses.dataclass(frozen=True)
class TableFit:
  """An ST model fitted from a tracks table, and the rows left out of the fit."""
  model: st_lib.STModel
  num_rows: int          # rows used
  num_junk: int          # rows with person_id -1 (left out)
  num_distractors: int   # rows with person_id 0 (left out)


def fit_st_from_table(table: tracks_lib.Table, params: st_lib.STParams) -> TableFit:
  """Fits the ST model from a labelled table: its 'train' rows (all rows without a
  split column), leaving out junk (-1) and distractors (0), which are no identity.

  Cameras are named as in the table (sorted); times are ms ticks since the table's
  earliest training row; ``params.bin_width`` is in those ticks
  (``tracks.bin_width_ticks(bin_seconds)``).
  """
  if not table.labelled:
    raise tracks_lib.TracksError(f"{table.path}: fitting the ST model needs identities: add a "
                                 f"person_id column")
  rows = table.split("train") if table.splits is not None else table
  if not len(rows):
    raise tracks_lib.TracksError(f"{table.path}: no 'train' rows to fit the ST model from")
  junk = int((rows.person_ids == records_lib.JUNK_ID).sum())
  distractors = int((rows.person_ids == records_lib.DISTRACTOR_ID).sum())
  rows = rows.select(rows.person_ids > 0)
  if not len(rows):
    raise tracks_lib.TracksError(f"{table.path}: every training row is junk (-1) or a "
                                 f"distractor (0); the ST model needs identities > 0")
  names = tracks_lib.camera_names(rows)
  records = tracks_lib.to_records(rows, names, tracks_lib.time_base(rows))
  model = st_lib.fit(records.person_ids, records.cameras, records.times, len(names), params,
                     camera_names=names, ticks_per_second=tracks_lib.TICKS_PER_SECOND)
  return TableFit(model, len(rows), junk, distractors)


def _camera_name(names: Sequence[str] | None, camera: int) -> str:
  if names is not None and 0 <= camera < len(names):
    return str(names[camera])
  return f"c{camera + 1}"  # Market/Duke: the 1-based camera of the file names


def rank_lists(result: protocol.TopK, query: Records, gallery: Records,
               camera_names: Sequence[str] | None = None,
               format_time: Callable[[int], Any] = int, labelled: bool = True) -> dict:
  """The search result as plain data (what ``rank_lists.json`` holds).

  Args:
    result: from ``top_k``.
    query, gallery: the records searched (``names`` give the images).
    camera_names: names of camera indices (None: ``c<index + 1>``, Market style).
    format_time: ticks -> what the file shows (e.g. ``tracks.TimeBase.format``).
    labelled: write person ids and, per result, whether it is a true match (same
      identity, not junk -1 or distractor 0).
  Returns:
    {"ranked_by", "k", "num_queries", "queries": [{"image", "camera", "time",
    ["person_id"], "results": [{"rank", "image", "camera", "time", "visual",
    "st_probability", "joint", ["person_id", "match"]}]}]}. Items the protocol left
    out (junk, ranked with score -inf after every real item) are not listed, so a
    query can have fewer than k results.
  """
  # Plain Python values first (indexing numpy arrays item by item is what would take the
  # time at Market scale), for the gallery items that appear only.
  def detections(r: Records, rows: np.ndarray) -> dict[int, dict]:
    names = [None] * len(rows) if r.names is None else [str(x) for x in r.names[rows].tolist()]
    cameras = [_camera_name(camera_names, c) for c in r.cameras[rows].tolist()]
    times = [format_time(t) for t in r.times[rows].tolist()]
    out = {}
    for row, name, camera, t, pid in zip(rows.tolist(), names, cameras, times,
                                         r.person_ids[rows].tolist()):
      out[row] = dict(image=name, camera=camera, time=t)
      if labelled:
        out[row]["person_id"] = pid
    return out

  index = np.asarray(result.index)
  query_items = detections(query, np.arange(len(query)))
  gallery_items = detections(gallery, np.unique(index))
  query_ids = query.person_ids.tolist()
  no_values = [[None] * index.shape[1]] * len(query)
  visual = result.visual.tolist()
  prob = no_values if result.st_probability is None else result.st_probability.tolist()
  joint = no_values if result.joint is None else result.joint.tolist()
  real = result.real.tolist()
  queries = []
  for q, row in enumerate(index.tolist()):
    results = []
    for rank, g in enumerate(row):
      if not real[q][rank]:
        break  # the rest are items left out
      item = dict(rank=rank + 1, **gallery_items[g], visual=visual[q][rank],
                  st_probability=prob[q][rank], joint=joint[q][rank])
      if labelled:
        item["match"] = query_ids[q] > 0 and item["person_id"] == query_ids[q]
      results.append(item)
    queries.append(dict(query_items[q], results=results))
  return dict(ranked_by=result.ranked_by, k=int(result.index.shape[1]),
              num_queries=len(query), queries=queries)


def write_rank_lists(path: str, lists: dict, **extra) -> str:
  """Writes ``rank_lists(...)`` (plus ``extra`` top-level fields) as compact JSON (one
  line: a third of the indented file's time and size at Market scale); returns path."""
  files.write_json(path, dict(extra, **lists), indent=None)
  return path


def load_rgb(path: str) -> np.ndarray:
  """An image file as uint8 [H, W, 3] (PIL; grey, palette and RGBA converted).

  Raises:
    errors.InputError: naming the file when it is a folder or not an image PIL reads.
  """
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if files.isdir(path):
    raise errors.InputError(f"{path}: a folder, not an image")
  try:
    return np.asarray(Image.open(io.BytesIO(files.read_bytes(path))).convert("RGB"))
  except (OSError, SyntaxError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
    if isinstance(e, FileNotFoundError):
      raise
    raise errors.InputError(f"{path}: not an image PIL can read ({e})") from None


def matches(result: protocol.TopK, query: Records, gallery: Records) -> np.ndarray:
  """bool [Q, k]: the result has the query's identity (ids > 0 only)."""
  ids = query.person_ids[:, None]
  return (ids > 0) & (gallery.person_ids[result.index] == ids)


def ranked_list_picture(result: protocol.TopK, query: Records, gallery: Records, path: str,
                        load_image: Callable[[str], np.ndarray],
                        camera_names: Sequence[str] | None = None, num_queries: int = 8,
                        k: int = 10, labelled: bool = True,
                        format_time: Callable[[int], Any] | None = None) -> str | None:
  """Draws ``num_queries`` evenly spread queries and their top ``k`` (``plots.plot_ranked_lists``).

  ``load_image(name)`` returns an HxWx3 uint8 image of ``Records.names[i]``. Under
  each gallery tile: its id (when ``labelled``) and camera name; tiles are framed
  green (true match) or red when ``labelled``, grey otherwise; a query with fewer than
  ``k`` results (the rest left out as junk, score -inf) shows empty places after its
  last one. Returns the path, or None when there is nothing to draw.
  """
  if query.names is None or gallery.names is None or not len(query) or num_queries < 1:
    return None
  picks = np.linspace(0, len(query) - 1, min(num_queries, len(query))).astype(int)
  k = min(k, result.index.shape[1])
  top = result.index[picks, :k]
  cam = lambda c: _camera_name(camera_names, int(c))
  def when(t) -> str:
    if format_time is None:
      return ""
    value = format_time(int(t))
    return f"\nt={value:g} s" if isinstance(value, float) else f"\n{value}"

  labels = [[(f"id {gallery.person_ids[g]}\n" if labelled else "") + cam(gallery.cameras[g])
             for g in row] for row in top]
  titles = [(f"query id {query.person_ids[q]}\n" if labelled else "query\n") +
            cam(query.cameras[q]) + when(query.times[q]) for q in picks]
  score, real = result.score[picks, :k], result.real[picks, :k]
  return plots.plot_ranked_lists(
      [load_image(str(query.names[q])) for q in picks],
      [[load_image(str(gallery.names[g])) if ok else None for g, ok in zip(row, oks)]
       for row, oks in zip(top, real)],
      matches(result, query, gallery)[picks, :k] if labelled else None, path, titles=titles,
      ranked_by=f"{result.ranked_by} score", gallery_labels=labels, scores=score)
