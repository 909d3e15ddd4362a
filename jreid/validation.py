"""Every rule a config must satisfy, checked once, before any data is read.

``validate`` collects every problem of the config (naming each field, its value
and what was expected) and raises one ``errors.InputError`` listing them all.
Libraries still check their own arguments; this is where a user's settings are
judged against each other and against the devices of the run.
"""

from __future__ import annotations

import math
import os

import ml_collections

from jreid import errors
from jreid import evaluate as evaluate_lib
from jreid import names as names_lib
from jreid import st as st_lib
from jreid import stages
from jreid.data import options as data_options
from jreid.models import heads
from jreid.models import layers
from jreid.models import resnet


# The longest CMC curve stored (a float per rank, for each method).
MAX_RANK = 100_000


def _number(problems: list[str], field: str, value, low=None, high=None, *, integer=False,
            low_open=False) -> None:
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  if ok and integer:
    ok = float(value).is_integer()
  if ok and low is not None:
    ok = value > low if low_open else value >= low
  if ok and high is not None:
    ok = value <= high
  if not ok:
    what = "a whole number" if integer else "a finite number"
    bounds = []
    if low is not None:
      bounds.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
      bounds.append(f"<= {high}")
    problems.append(f"{field}={value!r}: expected {what}{' ' if bounds else ''}"
                    f"{' and '.join(bounds)}")


def _st_and_eval(config: ml_collections.ConfigDict, problems: list[str]) -> None:
  s = config.st
  _number(problems, "st.bin_width", s.bin_width, 0, low_open=True, integer=True)
  # Even two cameras' table of that many bins would exceed the ST table bound.
  _number(problems, "st.num_bins", s.num_bins, 0, st_lib.MAX_TABLE_BYTES // (2 * 2 * 8),
          low_open=True, integer=True)
  _number(problems, "st.sigma", s.sigma, 0)
  _number(problems, "st.truncate", s.truncate, 0, low_open=True)
  _number(problems, "st.eps", s.eps, 0, low_open=True)
  _number(problems, "st.fps", s.fps, 0, low_open=True)
  for field in ("visual_lambda", "visual_gamma", "st_lambda", "st_gamma"):
    _number(problems, f"fusion.{field}", config.fusion[field], 0)
  e = config.eval
  unknown = [m for m in e.methods if m not in evaluate_lib.METHODS]
  if unknown or not e.methods:
    problems.append(f"eval.methods={tuple(e.methods)!r}: expected some of "
                    f"{tuple(evaluate_lib.METHODS)}")
  elif len(set(e.methods)) < len(e.methods):
    twice = sorted({m for m in e.methods if list(e.methods).count(m) > 1})
    problems.append(f"eval.methods={tuple(e.methods)!r}: {', '.join(twice)} named more than "
                    f"once; expected each method once")
  elif not config.rerank.enabled and all(evaluate_lib.METHODS[m].rerank for m in e.methods):
    problems.append(f"eval.methods={tuple(e.methods)!r}: only re-ranking methods, with "
                    f"rerank.enabled=False nothing would be evaluated; expected a method "
                    f"without re-ranking or rerank.enabled=True")
  _number(problems, "eval.budget_elements", e.budget_elements, 1, integer=True)
  _number(problems, "eval.max_rank", e.max_rank, 1, MAX_RANK, integer=True)
  _number(problems, "eval.top_k", e.top_k, 1, integer=True)
  _number(problems, "eval.ranked_list_queries", e.ranked_list_queries, 0, integer=True)
  if "batch_size" in e:  # the jobs that run the visual model
    _number(problems, "eval.batch_size", e.batch_size, 1, integer=True)
  r = config.rerank
  _number(problems, "rerank.k1", r.k1, 1, integer=True)
  _number(problems, "rerank.k2", r.k2, 1, integer=True)
  _number(problems, "rerank.lambda_value", r.lambda_value, 0, 1)


def _features_job(config: ml_collections.ConfigDict, problems: list[str]) -> None:
  if not config.features:
    problems.append("features is empty: expected a features file (.mat or .npz)")
  if not config.train_dir:
    problems.append("train_dir is empty: expected the folder of training images (e.g. "
                    "Market-1501's bounding_box_train); only the names are read")
  if config.grammar and config.grammar not in names_lib.GRAMMARS:
    problems.append(f"grammar={config.grammar!r}: expected one of {names_lib.GRAMMARS} or '' "
                    f"(any)")
  _number(problems, "num_parts", config.num_parts, 1, integer=True)


def _search_job(config: ml_collections.ConfigDict, problems: list[str]) -> None:
  t = config.tracks
  if bool(config.features) == bool(config.trained_workdir):
    problems.append("search: set one of features (a features file) and trained_workdir "
                    "(extract the tables' images with the model trained there)")
  if bool(config.st_model) == bool(t.train):
    problems.append("search: set one of tracks.train (labelled tracks to fit the ST model) "
                    "and st_model (a saved st_model.npz)")
  if not t.query:
    problems.append("search: tracks.query is empty: expected the table of the queries (with "
                    "a split column, its 'query' rows; the 'gallery' rows are the gallery "
                    "unless tracks.gallery is set)")
  _number(problems, "st.bin_seconds", config.st.bin_seconds, 0, low_open=True)
  _number(problems, "num_parts", config.num_parts, 1, integer=True)


def _extract_job(config: ml_collections.ConfigDict, problems: list[str]) -> None:
  if not config.trained_workdir or not config.tracks.query:
    problems.append("extract: set trained_workdir (a trained workdir) and tracks.query "
                    "(a tracks table, or an image folder)")


def _training_job(config: ml_collections.ConfigDict, device_count: int, process_count: int,
                  problems: list[str]) -> None:
  d, t, m = config.data, config.train, config.model
  if d.dataset not in stages.DATASETS:
    problems.append(f"data.dataset={d.dataset!r}: expected one of {tuple(stages.DATASETS)}")
  if len(d.image_size) != 2 or any(not isinstance(x, int) or x < 8 for x in d.image_size):
    problems.append(f"data.image_size={tuple(d.image_size)!r}: expected (height, width), "
                    f"whole numbers >= 8")
  size = tuple(d.transfer_size)
  if size and (len(size) != 2 or any(not isinstance(x, int) or x < 8 for x in size)):
    problems.append(f"data.transfer_size={size!r}: expected () (the dataset's box size) or "
                    f"(height, width), whole numbers >= 8")
  _number(problems, "train.batch_size", t.batch_size, 1, integer=True)
  _number(problems, "train.epochs", t.epochs, 0, low_open=True)
  if problems:
    return
  if t.batch_size % device_count:
    problems.append(f"train.batch_size={t.batch_size}: expected a multiple of the "
                    f"{device_count} devices")
  if config.eval.batch_size % device_count:
    problems.append(f"eval.batch_size={config.eval.batch_size}: expected a multiple of the "
                    f"{device_count} devices")
  shards = d.shards or process_count
  if shards % process_count or t.batch_size % shards:
    problems.append(f"data.shards={shards}: expected a multiple of the {process_count} "
                    f"processes that divides train.batch_size {t.batch_size}")
  elif d.sampler == "pk" and t.batch_size // shards != d.ids_per_batch * d.images_per_id:
    problems.append(f"data.sampler='pk': each of the {shards} shards draws "
                    f"train.batch_size / shards = {t.batch_size // shards} images, expected "
                    f"data.ids_per_batch x data.images_per_id = "
                    f"{d.ids_per_batch * d.images_per_id}")
  if d.sampler not in data_options.SAMPLERS:
    problems.append(f"data.sampler={d.sampler!r}: expected one of {data_options.SAMPLERS}")
  if d.get("pk_epoch", "images") not in data_options.PK_EPOCHS:
    problems.append(f"data.pk_epoch={d.pk_epoch!r}: expected one of {data_options.PK_EPOCHS}")
  if m.dtype not in ("float32", "bfloat16"):
    problems.append(f"model.dtype={m.dtype!r}: expected 'float32' or 'bfloat16'")
  if m.imagenet and not os.path.isfile(m.imagenet):
    problems.append(f"model.imagenet={m.imagenet!r}: no such file (an ImageNet state dict: "
                    f".pth/.pt, .safetensors or .npz)")
  if m.get("conv", "auto") not in layers.CONV_IMPLS:
    problems.append(f"model.conv={m.conv!r}: expected one of {layers.CONV_IMPLS}")
  if m.get("backbone", "resnet") not in stages.BACKBONE_CONFIGS:
    problems.append(f"model.backbone={m.backbone!r}: expected one of "
                    f"{tuple(stages.BACKBONE_CONFIGS)}")
  elif m.get("backbone", "resnet") == "mobilenet_v2":
    _number(problems, "model.width_mult", m.get("width_mult", 1.0), 0.05, 4)
  elif m.depth not in (0, *resnet.STAGE_BLOCKS) or (m.depth == 0 and not m.stage_blocks):
    problems.append(f"model.depth={m.depth!r}: expected 18, 34 or 50 (or 0 with "
                    f"model.stage_blocks)")
  _number(problems, "model.parts", m.parts, 1, integer=True)
  if m.head not in heads.HEADS:
    problems.append(f"model.head={m.head!r}: expected one of {tuple(heads.HEADS)}")
  elif m.head == "bnneck" and m.parts != 1:
    problems.append(f"model.parts={m.parts!r}: expected 1 with model.head='bnneck'")
  from jreid import train  # pylint: disable=g-import-not-at-top  (optax, orbax: training only)
  o = config.optimizer
  if o.name not in train.OPTIMIZERS:
    problems.append(f"optimizer.name={o.name!r}: expected one of {train.OPTIMIZERS}")
  if o.get("warmup_law", "step") not in train.WARMUP_LAWS:
    problems.append(f"optimizer.warmup_law={o.warmup_law!r}: expected one of "
                    f"{train.WARMUP_LAWS}")
  _number(problems, "optimizer.warmup_factor", o.get("warmup_factor", 0.01), 0, 1)
  _number(problems, "loss.label_smoothing", config.loss.label_smoothing, 0, 1)
  _number(problems, "loss.triplet_weight", config.loss.triplet_weight, 0)
  _number(problems, "loss.margin", config.loss.margin, 0)
  _number(problems, "augment.pad", config.augment.pad, 0, integer=True)
  _number(problems, "model.dropout", m.dropout, 0, 1)
  a = config.augment
  _number(problems, "augment.erase_probability", a.erase_probability, 0, 1)
  lo, hi = tuple(a.erase_area)
  if not 0 < lo <= hi <= 1:
    problems.append(f"augment.erase_area={(lo, hi)!r}: expected 0 < low <= high <= 1")
  _number(problems, "augment.erase_min_aspect", a.erase_min_aspect, 0, 1, low_open=True)
  _number(problems, "checkpoint.every_steps", config.checkpoint.every_steps, 1, integer=True)
  _number(problems, "checkpoint.keep", config.checkpoint.keep, 1, integer=True)
  _number(problems, "log_every_steps", config.log_every_steps, 1, integer=True)


def validate(config: ml_collections.ConfigDict, device_count: int = 1,
             process_count: int = 1, jobs: tuple[str, ...] = ()) -> None:
  """Raises ``errors.InputError`` listing every problem of ``config`` for this run.

  ``jobs``: the job names there are (``jreid.jobs.JOBS``); empty: not checked.
  """
  problems: list[str] = []
  if jobs and config.job not in jobs:
    raise errors.InputError(f"config: job={config.job!r}: expected one of {jobs}")
  _st_and_eval(config, problems)
  if config.job == "evaluate_features":
    _features_job(config, problems)
  if config.job == "train_and_evaluate":
    _training_job(config, device_count, process_count, problems)
  if config.job == "search":
    _search_job(config, problems)
  if config.job == "extract":
    _extract_job(config, problems)
  if problems:
    raise errors.InputError("config: " + "; ".join(problems))
