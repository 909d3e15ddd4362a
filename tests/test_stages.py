"""The reuse rule of the workdir stages, the training digest and config validation."""

import json

import numpy as np
import pytest

from experiments import eval_features
from experiments import tiny
from jreid import errors
from jreid import features
from jreid import stages
from jreid import stamps
from jreid import validation


@pytest.mark.parametrize("field, value", [
    ("model.width", 8), ("optimizer.lr", 0.02), ("train.seed", 1), ("train.batch_size", 16),
    ("data.image_size", (64, 32)), ("augment.erase_probability", 0.0),
    ("data.synthetic.seed", 3), ("optimizer.decay_epochs", (5,)),
])
def test_training_digest_changes_with_fields_that_shape_training(field, value):
  config = tiny.get_config()
  before = stages.training_digest(config, "data")
  section, *rest = field.split(".")
  node = config[section]
  for key in rest[:-1]:
    node = node[key]
  node[rest[-1]] = value
  assert stages.training_digest(config, "data") != before


@pytest.mark.parametrize("field, value", [
    ("st.num_bins", 10), ("fusion.st_gamma", 1.0), ("rerank.k1", 5), ("eval.batch_size", 16),
    ("eval.budget_elements", 1000), ("checkpoint.every_steps", 7), ("log_every_steps", 9),
    ("data_dir", "/elsewhere"), ("compilation_cache_dir", ""), ("train.epochs", 5),
    ("model.conv", "xla"), ("model.conv", "matmul"),
])
def test_training_digest_ignores_fields_that_do_not(field, value):
  config = tiny.get_config()
  before = stages.training_digest(config, "data")
  *path, key = field.split(".")
  node = config
  for p in path:
    node = node[p]
  node[key] = value
  assert stages.training_digest(config, "data") == before
  assert stages.training_digest(config, "other data") != before


def test_features_digest_adds_the_epochs():
  config = tiny.get_config()
  before = stages.features_digest(config, "d")
  config.train.epochs = 5
  assert stages.features_digest(config, "d") != before


def test_stamps_and_the_reuse_rule(tmp_path):
  workdir = str(tmp_path)
  assert not stamps.is_current(workdir, "fit_st", "abc")
  (tmp_path / "st_model.npz").write_bytes(b"x")
  stamps.write(workdir, "fit_st", "abc", products=("st_model.npz",), note=1)
  assert stamps.is_current(workdir, "fit_st", "abc", "st_model.npz")
  assert not stamps.is_current(workdir, "fit_st", "abd", "st_model.npz")
  assert not stamps.is_current(workdir, "fit_st", "abc", "missing.npz")
  assert stamps.read(workdir, "fit_st")["note"] == 1
  assert stamps.read(workdir, "fit_st")["version"] == 1
  assert stamps.read(workdir, "fit_st")["job"] is None  # no job has claimed the workdir
  stamps.claim(str(tmp_path / "claimed"), "evaluate_features", ())
  (tmp_path / "claimed" / "st_model.npz").write_bytes(b"x")
  stamps.write(str(tmp_path / "claimed"), "fit_st", "abc", products=("st_model.npz",))
  assert stamps.read(str(tmp_path / "claimed"), "fit_st")["job"] == "evaluate_features"
  assert stamps.digest({"a": np.arange(3)}) != stamps.digest({"a": np.arange(4)})


def test_a_product_is_reused_only_with_the_content_its_stamp_recorded(tmp_path):
  """Another job (or a person) replacing features.npz makes the stage stale: the stamp
  records each product's content digest, and reuse checks it."""
  workdir = str(tmp_path)
  (tmp_path / "features.npz").write_bytes(b"the main job's features")
  stamps.write(workdir, "extract", "abc", products=("features.npz",))
  assert stamps.is_current(workdir, "extract", "abc", "features.npz")
  (tmp_path / "features.npz").write_bytes(b"another job's features!")
  assert not stamps.is_current(workdir, "extract", "abc", "features.npz")
  (tmp_path / "features.npz").write_bytes(b"the main job's features")
  assert stamps.is_current(workdir, "extract", "abc", "features.npz")
  # A product the stamp does not record is not current either.
  (tmp_path / "st_model.npz").write_bytes(b"x")
  assert not stamps.is_current(workdir, "extract", "abc", "features.npz", "st_model.npz")


def test_a_stage_version_enters_its_digest(monkeypatch):
  """Version 1: the digest of the inputs alone; another version: another digest."""
  inputs = {"a": 1}
  assert stamps.digest_of("fit_st", inputs) == stamps.digest(inputs)
  monkeypatch.setitem(stamps.VERSIONS, "fit_st", 3)
  assert stamps.digest_of("fit_st", inputs) == stamps.digest(dict(a=1, stage_version=3))
  assert stamps.digest_of("fit_st", inputs) != stamps.digest(inputs)


def test_checkpoints_of_other_settings_stop_the_job(tmp_path):
  workdir = str(tmp_path)
  config = tiny.get_config()
  (tmp_path / "checkpoints" / "3").mkdir(parents=True)
  # No stamp at all: a workdir of an older jreid.
  with pytest.raises(errors.InputError, match="older jreid.*use a new workdir or "
                     "--config.overwrite=True"):
    stages.check_training_products(config, workdir, stages.training_digest(config, "d"))
  stamps.write(workdir, "train", stages.training_digest(config, "d"),
               sections=stages.training_sections(config))
  stages.check_training_products(config, workdir, stages.training_digest(config, "d"))
  config.optimizer.lr = 0.5
  with pytest.raises(errors.InputError, match=r"trained with other settings \(changed: "
                     r"optimizer.lr\)"):
    stages.check_training_products(config, workdir, stages.training_digest(config, "d"))
  config.overwrite = True
  stages.check_training_products(config, workdir, stages.training_digest(config, "d"))
  assert not (tmp_path / "checkpoints").exists()


def test_checkpoints_of_another_train_version_are_not_reused(tmp_path):
  """A stamp of train version 1 (no version field) with the same sections: not resumed."""
  workdir = str(tmp_path)
  config = tiny.get_config()
  config.data.sampler = "pk"
  (tmp_path / "checkpoints" / "3").mkdir(parents=True)
  sections = stages.training_sections(config)
  stamps.write(workdir, "train", stamps.digest(dict(sections=sections, data="d")),
               sections=sections)
  stamp = stamps.read(workdir, "train")
  del stamp["version"]
  (tmp_path / "stages" / "train.json").write_text(json.dumps(stamp))
  assert stamps.version("train") == 2
  with pytest.raises(errors.InputError, match=r"other settings \(by version 1 of the train "
                     r"stage; this jreid's is 2\)"):
    stages.check_training_products(config, workdir, stages.training_digest(config, "d"))


def test_pk_epoch_is_stamped_only_away_from_its_default():
  config = tiny.get_config()
  before = stages.training_digest(config, "data")
  config.data.pk_epoch = "identity_pass"  # no effect with the random sampler
  assert "pk_epoch" not in stages.training_sections(config)["data"]
  assert stages.training_digest(config, "data") == before
  config.data.sampler = "pk"
  config.data.pk_epoch = "images"
  pk = stages.training_digest(config, "data")
  assert "pk_epoch" not in stages.training_sections(config)["data"]
  config.data.pk_epoch = "identity_pass"
  assert stages.training_sections(config)["data"]["pk_epoch"] == "identity_pass"
  assert stages.training_digest(config, "data") != pk


def test_extraction_keeps_split_order_and_drops_padding():
  """Batches arrive in any order with padded rows; rows come back in split order."""
  index = np.array([[3, 0, -1, -1], [1, 4, 2, -1]])
  mask = index >= 0
  batches = [{"image": np.zeros((4, 2, 2, 3), np.uint8) + i[:, None, None, None].clip(0),
              "index": i, "mask": m, "id": i * 10, "camera": i, "time": i * 100}
             for i, m in zip(index, mask)]
  import jax  # pylint: disable=g-import-not-at-top
  from jreid import sharding  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh()
  # A "model" whose feature is the image's first pixel: [B, 1 part, 2 dims].
  step = lambda state, images: jax.numpy.stack(
      [images[:, 0, 0, 0].astype(np.float32) + 1, np.ones(images.shape[0], np.float32)],
      axis=-1)[:, None, :]
  out = features.extract(step, None, iter(batches), 2, sharding.data_sharding(mesh), 1)
  assert out.person_ids.tolist() == [0, 10, 20, 30, 40]
  assert out.cameras.tolist() == [0, 1, 2, 3, 4]
  assert out.times.tolist() == [0, 100, 200, 300, 400]
  expected = np.array([[i + 1, 1] for i in range(5)], np.float32)
  np.testing.assert_allclose(out.features,
                             expected / np.linalg.norm(expected, axis=1, keepdims=True))


@pytest.mark.parametrize("field, value, message", [
    ("st.eps", 0.0, r"st.eps=0.0: expected a finite number > 0"),
    ("fusion.visual_gamma", -1.0, r"fusion.visual_gamma=-1.0: expected a finite number >= 0"),
    ("fusion.st_lambda", -2.0, r"fusion.st_lambda=-2.0"),
    ("num_parts", 0, r"num_parts=0: expected a whole number >= 1"),
    ("eval.max_rank", 0, r"eval.max_rank=0: expected a whole number >= 1"),
    ("eval.max_rank", 10 ** 9, r"eval.max_rank=1000000000: expected a whole number >= 1 and "
     r"<= 100000"),
    ("rerank.lambda_value", 1.5, r"rerank.lambda_value=1.5"),
    ("eval.methods", ("visual", "nope"), r"eval.methods=.*expected some of"),
    ("eval.methods", ("visual", "st", "visual"), r"eval.methods=\('visual', 'st', 'visual'\): "
     r"visual named more than once; expected each method once"),
])
def test_features_job_config_errors_name_the_field(field, value, message):
  config = eval_features.get_config()
  config.features, config.train_dir = "f.npz", "train"
  *path, key = field.split(".")
  node = config
  for p in path:
    node = node[p]
  node[key] = value
  with pytest.raises(errors.InputError, match=message):
    validation.validate(config)


def test_re_ranking_methods_alone_without_re_ranking_are_an_error():
  """Otherwise the job evaluates nothing: an empty table and exit 0."""
  config = eval_features.get_config()
  config.features, config.train_dir = "f.npz", "train"
  config.eval.methods = ("visual_rerank", "st_rerank")
  config.rerank.enabled = False
  with pytest.raises(errors.InputError, match=r"only re-ranking methods, with "
                     r"rerank.enabled=False nothing would be evaluated"):
    validation.validate(config)
  config.eval.methods = ("visual", "st_rerank")
  validation.validate(config)  # "visual" is evaluated; st_rerank is left out


def test_training_config_errors_are_listed_together():
  config = tiny.get_config()
  config.data.sampler = "pk"
  config.data.ids_per_batch, config.data.images_per_id = 3, 2
  config.model.depth = 20
  with pytest.raises(errors.InputError) as e:
    validation.validate(config, device_count=1)
  assert "train.batch_size / shards = 8 images, expected data.ids_per_batch x " \
         "data.images_per_id = 6" in str(e.value)
  assert "model.depth=20" in str(e.value)
  config = tiny.get_config()
  config.optimizer.warmup_law, config.optimizer.warmup_factor = "cosine", 1.5
  config.data.pk_epoch = "pass"
  config.model.conv = "fft"
  with pytest.raises(errors.InputError) as e:
    validation.validate(config, device_count=1)
  assert "model.conv='fft': expected one of ('auto', 'xla', 'matmul')" in str(e.value)
  assert "data.pk_epoch='pass': expected one of ('images', 'identity_pass')" in str(e.value)
  assert "optimizer.warmup_law='cosine': expected one of ('step', 'epoch')" in str(e.value)
  assert "optimizer.warmup_factor=1.5" in str(e.value)
  config = tiny.get_config()
  config.job = "nope"
  with pytest.raises(errors.InputError, match="job='nope': expected one of"):
    validation.validate(config, jobs=("train_and_evaluate",))


def test_every_backbone_has_a_config_translation():
  """stages.BACKBONE_CONFIGS (config -> typed backbone config) covers heads.BACKBONES."""
  from jreid.models import heads  # pylint: disable=g-import-not-at-top
  assert set(stages.BACKBONE_CONFIGS) == set(heads.BACKBONES)
  for name, (config_class, _) in heads.BACKBONES.items():
    config = tiny.get_config()
    config.model.backbone = name
    assert isinstance(stages.model_config(config).backbone, config_class)


def test_a_workdir_from_before_job_records_keeps_its_owner(tmp_path):
  """A main-job workdir of an earlier jreid (stamps, no stages/job.json) is the main
  job's: it reaches the train stage's version check, and other jobs are refused."""
  from experiments import search as search_config  # pylint: disable=g-import-not-at-top
  from jreid import jobs  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "w"
  (workdir / "checkpoints" / "3").mkdir(parents=True)
  (workdir / "stages").mkdir()
  config = tiny.get_config()
  config.compilation_cache_dir = ""
  sections = stages.training_sections(config)
  (workdir / "stages" / "train.json").write_text(json.dumps(dict(
      digest=stamps.digest(dict(sections=sections, data="d")), sections=sections)))
  search = search_config.get_config()
  search.tracks.train = search.tracks.query = search.features = "x"
  with pytest.raises(errors.InputError, match="holds the products of the train_and_evaluate "
                     "job .*; the search job would replace"):
    jobs.run(search, str(workdir))
  with pytest.raises(errors.InputError, match=r"trained with other settings \(by version 1 "
                     r"of the train stage; this jreid's is 2\): use a new workdir or "
                     r"--config.overwrite=True"):
    jobs.run(config, str(workdir))
  assert json.loads((workdir / "stages" / "job.json").read_text())["job"] == "train_and_evaluate"
  assert (workdir / "checkpoints" / "3").is_dir()
