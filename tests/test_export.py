"""Export: the ONNX graph (run by onnxruntime) and the jax.export artifact equal extraction."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jreid import export
from jreid import features as features_lib
from jreid import scoring
from jreid import sharding
from jreid.models import heads
from jreid.models import mobilenet
from jreid.models import resnet

# experiments/tiny.py sizes: 32 x 16 images, width 4, one block per stage.
SIZE = (32, 16)


def _trained_looking_model(head, parts, bottleneck_blocks=True):
  """A tiny model whose BatchNorm statistics and affine terms are far from the init.

  bottleneck_blocks: True / False for ResNet's block kind, "mobilenet_v2" for a
  MobileNetV2 of width 0.25 (depthwise convolutions, ReLU6, its residuals)."""
  if bottleneck_blocks == "mobilenet_v2":
    backbone = mobilenet.MobileNetV2Config(width_mult=0.25)
  else:
    backbone = resnet.BackboneConfig(depth=0, width=4, stage_blocks=(1, 1, 1, 1),
                                     bottleneck=bottleneck_blocks)
  model = heads.ReIDModel(heads.ModelConfig(backbone=backbone, head=head, parts=parts,
                                            bottleneck=8), 5, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(1)
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.BatchStat)):
    shape = var.get_value().shape
    var.set_value(jnp.asarray(rng.normal(0, 0.1, shape) if path[-1] == "mean"
                              else rng.uniform(0.5, 1.5, shape), jnp.float32))
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    shape = var.get_value().shape
    if path[-1] == "scale":
      var.set_value(jnp.asarray(rng.uniform(0.5, 1.5, shape), jnp.float32))
    elif path[-1] == "bias" and path[0] == "backbone":
      var.set_value(jnp.asarray(rng.uniform(0.0, 0.3, shape), jnp.float32))
  if bottleneck_blocks == "mobilenet_v2":
    # Random statistics swamp the 1 x 1 maps of MobileNet's last blocks on a 32 x 16
    # image (every image gives one feature): its statistics come from training-mode
    # passes over random images instead, as training would set them.
    model.train()
    calibrate = nnx.jit(lambda m, x: m.features(x))
    images = jnp.asarray(rng.normal(0, 1, (16, *SIZE, 3)), jnp.float32)
    for _ in range(30):
      calibrate(model, images)
  model.eval()
  return model


def _extraction(model, images_uint8):
  """jreid's extraction step (resize to the trained size on the device) of these crops."""
  mesh = sharding.make_mesh()
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  graphdef, state = nnx.split({"model": model, "optimizer": optimizer})
  step = features_lib.make_extract_step(graphdef, mesh, SIZE)
  f = np.array(step(state, jnp.asarray(images_uint8)))
  return scoring.l2_normalise_features(f.reshape(len(f), -1), f.shape[1])


# Crops at another transfer size than the trained one (the resize inside the models), and
# at the trained size itself (no resize).
CROP = (40, 24)


@pytest.mark.parametrize("head,parts,bottleneck_blocks,crop",
                         [("pcb", 2, True, CROP), ("bnneck", 1, True, SIZE),
                          ("pcb", 3, False, CROP), ("pcb", 2, "mobilenet_v2", CROP),
                          ("bnneck", 1, "mobilenet_v2", SIZE)])
def test_onnx_and_jax_export_equal_extraction(head, parts, bottleneck_blocks, crop):
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  model = _trained_looking_model(head, parts, bottleneck_blocks)
  images = np.random.default_rng(0).integers(0, 256, (5, *crop, 3), dtype=np.uint8)
  expected = _extraction(model, images)
  assert expected.shape == (5, parts * model.config.backbone.out_channels)
  # The images give distinct features, beyond the tolerance below (about 4e-6 here):
  # MobileNet's random features differ less, 3e-5 is still 7x the tolerance.
  distinct = 3e-5 if bottleneck_blocks == "mobilenet_v2" else 1e-3
  assert np.abs(expected[0] - expected[1]).max() > distinct

  session = ort.InferenceSession(export.export_onnx(model, crop, SIZE),
                                 providers=["CPUExecutionProvider"])
  assert [i.name for i in session.get_inputs()] == ["images"]
  assert session.get_inputs()[0].shape[1:] == [*crop, 3]
  for batch in (5, 2):  # the batch dimension is dynamic
    got = session.run(None, {"images": images[:batch]})[0]
    np.testing.assert_allclose(got, expected[:batch], rtol=1e-4, atol=1e-6)

  call = export.load_jax_export(export.export_jax(model, crop, SIZE))
  for batch in (5, 1):
    np.testing.assert_allclose(np.asarray(call(images[:batch])), expected[:batch], rtol=1e-4,
                               atol=1e-6)


def test_wrong_input_shape_or_dtype_gives_clear_errors():
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  model = _trained_looking_model("bnneck", 1)
  call = export.load_jax_export(export.export_jax(model, SIZE, SIZE))
  with pytest.raises(ValueError, match=r"images must be uint8 \[batch, 32, 16, 3\] \(RGB, NHWC "
                                       r"crops at the transfer size.*got uint8 \[2, 30, 16, 3\]"):
    call(np.zeros((2, 30, 16, 3), np.uint8))
  with pytest.raises(ValueError, match=r"got float32 \[2, 32, 16, 3\]"):
    call(np.zeros((2, 32, 16, 3), np.float32))
  session = ort.InferenceSession(export.export_onnx(model, SIZE, SIZE),
                                 providers=["CPUExecutionProvider"])
  with pytest.raises(Exception, match=r"(?s)input: images.*index: 1 Got: 30 Expected: 32"):
    session.run(None, {"images": np.zeros((2, 30, 16, 3), np.uint8)})


def test_l2_normalise_features_by_hand():
  # Two parts: (3, 4) -> (0.6, 0.8) and (0, 2) -> (0, 1); then the whole vector / sqrt(2).
  # A zero row stays zero; the input is normalised in place.
  f = np.array([[3, 4, 0, 2], [0, 0, 0, 0]], np.float32)
  out = scoring.l2_normalise_features(f, 2)
  assert out is f
  np.testing.assert_allclose(out, [[0.6 / 2 ** 0.5, 0.8 / 2 ** 0.5, 0, 1 / 2 ** 0.5],
                                   [0, 0, 0, 0]], rtol=1e-6)


def test_l2_normalise_parts_in_jax_matches_numpy():
  f = np.random.default_rng(2).normal(size=(4, 3, 5)).astype(np.float32)
  f[1] = 0.0  # zero stays zero
  np.testing.assert_allclose(scoring.l2_normalise_parts(jnp.asarray(f), jnp),
                             scoring.l2_normalise_features(f.reshape(4, 15).copy(), 3),
                             rtol=1e-6, atol=1e-7)


def _deploy_snippet(onnx_path, query_path, gallery_paths):
  """docs/deploy.md's onnxruntime snippet as written, with its paths replaced."""
  import os  # pylint: disable=g-import-not-at-top
  doc = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                          "deploy.md")).read()
  code = doc.split("## Features with onnxruntime")[1].split("```python\n")[1].split("```")[0]
  for old, new in (("/tmp/jreid_synthetic/export/model.onnx", onnx_path),
                   ('"query.jpg"', repr(query_path)),
                   ('["g1.jpg", "g2.jpg"]', repr(list(gallery_paths)))):
    assert code.count(old) == 1, old
    code = code.replace(old, new)
  namespace = {}
  exec(compile(code, "docs/deploy.md", "exec"), namespace)  # pylint: disable=exec-used
  return namespace["query"], namespace["gallery"]


def test_export_job_on_a_trained_workdir_reproduces_its_features(tmp_path):
  """main.py trains tiny at 40 x 20 from its 32 x 16 crops, the export job writes both files;
  fed the crops extraction read, they give features.npz's rows, and so does the deploy
  snippet of docs/deploy.md as written (PIL decoding the crops' JPEG files)."""
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  from jreid import feature_files  # pylint: disable=g-import-not-at-top
  from jreid.data import market1501  # pylint: disable=g-import-not-at-top
  from jreid.data import pipeline  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  flags = ["--config.train.epochs=1", "--config.rerank.enabled=False",
           "--config.eval.ranked_list_queries=0", "--config.model.head=bnneck",
           "--config.model.parts=1", "--config.loss.triplet_weight=1.0",
           "--config.data.image_size=(40,20)"]
  workdir = str(tmp_path / "run")
  for command in (["--config=experiments/tiny.py", *flags], ["--config=experiments/export.py"]):
    proc = subprocess.run([sys.executable, "main.py", f"--workdir={workdir}", *command],
                          cwd=root, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
  query, _, _ = feature_files.load_features(os.path.join(workdir, "features.npz"))
  builder = market1501.prepare(os.path.join(workdir, "tfds"))
  n = min(len(query), 6)
  images = market1501.decoded_images(builder, "query", range(n))
  images = np.stack([images[i] for i in range(n)])
  assert images.shape[1:] == (*SIZE, 3)  # the crops: the tiny world's 32 x 16 boxes
  onnx_path = os.path.join(workdir, "export", "model.onnx")
  session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
  assert session.get_inputs()[0].shape[1:] == [*SIZE, 3]
  np.testing.assert_allclose(session.run(None, {"images": images})[0], query.features[:n],
                             rtol=1e-4, atol=1e-5)
  with open(os.path.join(workdir, "export", "model.jax_export"), "rb") as f:
    call = export.load_jax_export(f.read())
  np.testing.assert_allclose(np.asarray(call(images)), query.features[:n], rtol=1e-4, atol=1e-5)
  # The deploy snippet on the crops' own JPEG files (the bytes the builder stored).
  encoded = pipeline.read_records(builder, "query")["image"][:3]
  paths = []
  for i, data in enumerate(encoded):
    paths.append(str(tmp_path / f"crop{i}.jpg"))
    with open(paths[-1], "wb") as f:
      f.write(data)
  got_query, got_gallery = _deploy_snippet(onnx_path, paths[0], paths[1:])
  np.testing.assert_allclose(got_query, query.features[:1], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got_gallery, query.features[1:3], rtol=1e-4, atol=1e-5)
  # Without a checkpoint, the job says so in one line.
  proc = subprocess.run([sys.executable, "main.py", f"--workdir={tmp_path / 'empty'}",
                         "--config=experiments/export.py"], cwd=root, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode != 0 and "no stages/train.json" in proc.stderr, proc.stderr[-2000:]
