"""A synthetic Market-1501 world: the embedded default when the real data is absent.

A deterministic (by seed) world model writes a folder with the real layout and
file-name grammar, which the ``market1501`` TFDS builder then prepares like the
real thing:

* Cameras stand along a walking route (a line of ``num_cameras`` cameras with
  random spacings, in metres). Every identity walks a contiguous stretch of the
  route in one direction at its own speed, so the time between two cameras is
  distance / speed (plus dwell noise): a real transit-time distribution per camera
  pair, which is what the ST model learns.
* Each identity is rendered as a small person-like figure: head, torso with a
  clothing pattern (plain, stripes, checks), legs, an optional bag, with pose and
  scale jitter, under camera-specific background, illumination (colour cast and
  gain) and noise. Identities come in groups that dress alike, so that appearance
  alone is ambiguous and the camera/time prior matters.
* Train and test identities are disjoint. For every test identity and camera one
  image is a query and the others go to the gallery; the gallery also holds junk
  (``-1``: background and body-part boxes) and distractors (``0000``: other
  passers-by).

Times are global frames (25 fps); names carry (camera, sequence, local frame)
through the reference's Market-1501 sequence offsets (``jreid.names``), so the
offsets matter exactly as on the real data. No TensorFlow here.

Beside the images the world writes its ground truth twice: ``manifest.json`` and
``tracks.csv``, a tracks table (``jreid.tracks``) with image paths relative to it,
string camera names (``cam1``..``cam6``), times in seconds (frame / 25) and the
split, so that the camera-network path (fit from a table, search) runs on it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile

import numpy as np
from PIL import Image

from jreid import files
from jreid import names as names_lib

ROOT_NAME = "Market-1501-v15.09.15"
TRACKS_FILE = "tracks.csv"
FOLDERS = {"train": "bounding_box_train", "gallery": "bounding_box_test", "query": "query"}
FPS = 25.0
# Frames recorded by each Market camera (sum of its sequences' maxima); the world
# keeps every time below the smallest so that every name maps to a real sequence.
_RECORDED = min(sum(m) for m in names_lib.MARKET_SEQUENCE_MAX_FRAMES.values())


@dataclasses.dataclass(frozen=True)
class WorldParams:
  """Size and character of the synthetic world.

  Attributes:
    num_train_ids, num_test_ids: identities in each (disjoint) part.
    num_cameras: cameras along the route (at most 6, as Market).
    image_height, image_width: pixels of every box (Market: 128 x 64).
    camera_spacing_m: (min, max) metres between neighbouring cameras.
    walking_speed: (mean, std) metres per second.
    dwell_s: std of the extra time spent between cameras, seconds.
    route_length: (min, max) cameras an identity passes.
    images_per_visit: (min, max) boxes of an identity per camera passed.
    group_size: identities that dress alike.
    num_junk, num_distractors: extra gallery images with ids -1 and 0.
    time_span: frames in which walks start and end.
    seed: everything above is drawn from this seed.
  """
  num_train_ids: int = 150
  num_test_ids: int = 150
  num_cameras: int = 6
  image_height: int = 128
  image_width: int = 64
  camera_spacing_m: tuple[float, float] = (60.0, 200.0)
  walking_speed: tuple[float, float] = (1.3, 0.15)
  dwell_s: float = 8.0
  route_length: tuple[int, int] = (2, 6)
  images_per_visit: tuple[int, int] = (2, 4)
  group_size: int = 5
  num_junk: int = 60
  num_distractors: int = 120
  time_span: int = 300_000
  seed: int = 0

  def __post_init__(self):
    if not 2 <= self.num_cameras <= 6:
      raise ValueError(f"num_cameras must be in 2..6 (Market's cameras), got {self.num_cameras}")
    if self.images_per_visit[0] < 2:
      raise ValueError("images_per_visit must start at 2: each test visit needs a query and "
                       "a gallery image")
    if self.time_span > _RECORDED:
      raise ValueError(f"time_span must be <= {_RECORDED} frames (recorded by every camera)")


@dataclasses.dataclass(frozen=True)
class Manifest:
  """Ground truth of a generated world, one row per image (int64 arrays but names)."""
  filenames: tuple[str, ...]
  split: tuple[str, ...]
  person_id: np.ndarray
  camera: np.ndarray
  time: np.ndarray
  camera_position_m: np.ndarray
  walking_speed: dict[int, float]

  def to_json(self) -> str:
    return json.dumps(dict(filenames=list(self.filenames), split=list(self.split),
                           person_id=self.person_id.tolist(), camera=self.camera.tolist(),
                           time=self.time.tolist(),
                           camera_position_m=self.camera_position_m.tolist(),
                           walking_speed={str(k): v for k, v in self.walking_speed.items()}))


@dataclasses.dataclass(frozen=True)
class _Look:
  """How an identity looks (colours are RGB in [0, 1])."""
  skin: np.ndarray
  hair: np.ndarray
  shirt: np.ndarray
  shirt2: np.ndarray
  pattern: int          # 0 plain, 1 horizontal stripes, 2 vertical stripes, 3 checks
  trousers: np.ndarray
  bag: np.ndarray | None
  build: float          # torso width factor


def _group_looks(rng: np.random.Generator, num_ids: int, group_size: int) -> list[_Look]:
  """Identities in groups of ``group_size`` that dress (nearly) alike: members share
  clothing, pattern, bag, skin and build, up to small colour jitter."""
  looks = []
  base = None
  for i in range(num_ids):
    if i % group_size == 0:
      base = dict(shirt=rng.uniform(0.05, 0.95, 3), shirt2=rng.uniform(0.05, 0.95, 3),
                  pattern=int(rng.integers(0, 4)), trousers=rng.uniform(0.05, 0.7, 3),
                  skin=np.array([0.85, 0.65, 0.5]) * rng.uniform(0.45, 1.1),
                  hair=rng.uniform(0.0, 0.5) * np.ones(3),
                  bag=rng.uniform(0, 1, 3) if rng.random() < 0.35 else None,
                  build=rng.uniform(0.85, 1.15))
    jitter = lambda c, s=0.035: np.clip(c + rng.normal(0, s, 3), 0, 1)
    looks.append(_Look(
        skin=jitter(base["skin"], 0.02), hair=jitter(base["hair"], 0.02),
        shirt=jitter(base["shirt"]), shirt2=jitter(base["shirt2"]),
        pattern=base["pattern"], trousers=jitter(base["trousers"]),
        bag=None if base["bag"] is None else jitter(base["bag"]),
        build=base["build"] * rng.uniform(0.97, 1.03)))
  return looks


@dataclasses.dataclass(frozen=True)
class _Camera:
  background: np.ndarray   # RGB
  texture: float
  gain: np.ndarray         # per-channel illumination
  noise: float


def _cameras(rng: np.random.Generator, n: int) -> list[_Camera]:
  return [_Camera(background=rng.uniform(0.2, 0.8, 3), texture=rng.uniform(0.02, 0.08),
                  gain=rng.uniform(0.75, 1.25) * rng.uniform(0.85, 1.15, 3),
                  noise=rng.uniform(0.02, 0.06)) for _ in range(n)]


def render(look: _Look | None, camera: _Camera, rng: np.random.Generator, height: int,
           width: int, part: str = "full") -> np.ndarray:
  """One box: uint8 [height, width, 3]. part: "full", "background" or "fragment"."""
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  y, x = y / height, x / width
  img = np.empty((height, width, 3), np.float32)
  img[:] = camera.background
  img += camera.texture * np.sin(rng.uniform(5, 30) * y + rng.uniform(0, 6))[..., None]
  img += (y[..., None] - 0.5) * rng.uniform(-0.15, 0.15)
  if look is not None and part != "background":
    scale = rng.uniform(0.85, 1.0)
    cx = 0.5 + rng.normal(0, 0.04)
    top = 0.04 + rng.uniform(0, 0.06)
    h = scale * (0.95 - top)
    head_r = 0.075 * h
    head_cy = top + head_r * 1.2
    torso_top, torso_bot = head_cy + head_r * 1.1, top + 0.55 * h
    half_w = 0.2 * look.build * scale
    # Head with hair on top.
    head = ((x - cx) * width / height) ** 2 + (y - head_cy) ** 2 < head_r ** 2
    img[head] = look.skin
    img[head & (y < head_cy - head_r * 0.3)] = look.hair
    # Torso with its pattern.
    torso = (np.abs(x - cx) < half_w) & (y > torso_top) & (y < torso_bot)
    if look.pattern == 1:
      alt = (np.floor((y - torso_top) / (0.035 * h)) % 2) == 1
    elif look.pattern == 2:
      alt = (np.floor((x - cx + half_w) / (0.09 * scale)) % 2) == 1
    elif look.pattern == 3:
      alt = ((np.floor((y - torso_top) / (0.05 * h)) + np.floor((x - cx) / (0.12 * scale))) % 2) == 1
    else:
      alt = np.zeros_like(torso)
    img[torso] = look.shirt
    img[torso & alt] = look.shirt2
    # Arms, legs (pose: spread), bag.
    arm = (np.abs(np.abs(x - cx) - half_w - 0.05) < 0.045) & (y > torso_top) & (y < torso_bot - 0.03)
    img[arm] = look.shirt * 0.9
    spread = rng.uniform(0.0, 0.08)
    for side in (-1, 1):
      leg_x = cx + side * (0.08 * scale + spread * (y - torso_bot) / max(h, 1e-3))
      leg = (np.abs(x - leg_x) < 0.075 * scale) & (y >= torso_bot) & (y < top + h)
      img[leg] = look.trousers
    if look.bag is not None:
      bag = (np.abs(x - (cx + half_w + 0.1)) < 0.08) & (y > torso_bot - 0.2 * h) & (y < torso_bot)
      img[bag] = look.bag
    if part == "fragment":  # a bad detection: only a slice of the person
      keep = y < rng.uniform(0.3, 0.5) if rng.random() < 0.5 else y > rng.uniform(0.5, 0.7)
      img = np.where(keep[..., None], img, camera.background)
  img = img * camera.gain + rng.normal(0, camera.noise, img.shape)
  return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def _walks(params: WorldParams, rng: np.random.Generator, positions: np.ndarray,
           first_id: int, num_ids: int, speeds: dict[int, float]):
  """Yields (pid, camera 1-based, time, visit index) for every box of every walk."""
  lo, hi = params.route_length
  for pid in range(first_id, first_id + num_ids):
    length = int(rng.integers(lo, min(hi, params.num_cameras) + 1))
    start_cam = int(rng.integers(0, params.num_cameras - length + 1))
    route = list(range(start_cam, start_cam + length))
    if rng.random() < 0.5:
      route = route[::-1]
    speed = max(0.5, rng.normal(*params.walking_speed))
    speeds[pid] = float(speed)
    legs = [abs(positions[b] - positions[a]) / speed + abs(rng.normal(0, params.dwell_s))
            for a, b in zip(route[:-1], route[1:])]
    total = FPS * (sum(legs) + 10)
    t = float(rng.uniform(100, params.time_span - total))
    for v, cam in enumerate(route):
      if v:
        t += FPS * legs[v - 1]
      n = int(rng.integers(params.images_per_visit[0], params.images_per_visit[1] + 1))
      for k in range(n):
        yield pid, cam + 1, int(round(t + k * rng.uniform(3, 12))), v


def generate(out_dir: str, params: WorldParams = WorldParams(), make_zip: bool = False
             ) -> Manifest:
  """Writes ``out_dir/Market-1501-v15.09.15/{bounding_box_train,bounding_box_test,query}``.

  Also writes ``manifest.json`` and ``tracks.csv`` (ground truth) beside the folder, and with
  ``make_zip`` the official-style ``Market-1501-v15.09.15.zip``. Deterministic
  given ``params.seed``. Returns the manifest.
  """
  rng = np.random.default_rng(params.seed)
  root = files.join(out_dir, ROOT_NAME)
  for folder in FOLDERS.values():
    files.makedirs(files.join(root, folder))
  positions = np.concatenate([[0.0], np.cumsum(rng.uniform(*params.camera_spacing_m,
                                                             params.num_cameras - 1))])
  cameras = _cameras(rng, params.num_cameras)
  n_ids = params.num_train_ids + params.num_test_ids
  looks = _group_looks(rng, n_ids + params.num_distractors, params.group_size)
  order = rng.permutation(n_ids)  # groups straddle train and test
  speeds: dict[int, float] = {}
  rows = []  # (filename, split, pid, camera, time)
  encoded: dict[tuple[str, str], bytes] = {}
  used_names: set[str] = set()

  def add(split, pid, cam, time, look, part="full"):
    box = 1
    name = names_lib.market_name(pid, cam, time, box)
    while name in used_names:
      box += 1
      name = names_lib.market_name(pid, cam, time, box)
    used_names.add(name)
    img = render(look, cameras[cam - 1], rng, params.image_height, params.image_width, part)
    buffer = io.BytesIO()
    Image.fromarray(img).save(buffer, format="JPEG", quality=92)
    encoded[(split, name)] = buffer.getvalue()
    files.write_bytes(files.join(root, FOLDERS[split], name), encoded[(split, name)])
    rows.append((name, split, pid, cam, time))

  for pid, cam, t, _ in _walks(params, rng, positions, 1, params.num_train_ids, speeds):
    add("train", pid, cam, t, looks[order[pid - 1]])
  test_boxes: dict[tuple[int, int], list[int]] = {}
  for pid, cam, t, _ in _walks(params, rng, positions, params.num_train_ids + 1,
                               params.num_test_ids, speeds):
    test_boxes.setdefault((pid, cam), []).append(t)
  for (pid, cam), times in sorted(test_boxes.items()):
    q = int(rng.integers(0, len(times)))
    for k, t in enumerate(times):
      add("query" if k == q else "gallery", pid, cam, t, looks[order[pid - 1]])
  for j in range(params.num_distractors):
    cam = int(rng.integers(1, params.num_cameras + 1))
    add("gallery", 0, cam, int(rng.integers(100, params.time_span)), looks[n_ids + j])
  for _ in range(params.num_junk):
    cam = int(rng.integers(1, params.num_cameras + 1))
    look = looks[int(rng.integers(0, len(looks)))]
    add("gallery", -1, cam, int(rng.integers(100, params.time_span)), look,
        "background" if rng.random() < 0.5 else "fragment")

  manifest = Manifest(
      filenames=tuple(r[0] for r in rows), split=tuple(r[1] for r in rows),
      person_id=np.array([r[2] for r in rows], np.int64),
      camera=np.array([r[3] for r in rows], np.int64),
      time=np.array([r[4] for r in rows], np.int64),
      camera_position_m=positions, walking_speed=speeds)
  files.write_bytes(files.join(out_dir, "manifest.json"), manifest.to_json().encode())
  write_tracks_table(out_dir, manifest)
  if make_zip:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
      for name, split in zip(manifest.filenames, manifest.split):
        z.writestr(f"{ROOT_NAME}/{FOLDERS[split]}/{name}", encoded[(split, name)])
    files.write_bytes(files.join(out_dir, ROOT_NAME + ".zip"), buffer.getvalue())
  return manifest


def camera_name(camera: int) -> str:
  """The tracks-table name of 1-based camera ``camera``."""
  return f"cam{camera}"


def tracks_table(manifest: Manifest) -> str:
  """The manifest as a tracks table (CSV text): image,person_id,camera,time,split.

  Images are relative to the table's folder (the world's folder); times are seconds
  (frame / 25 fps, exact to the hundredth).
  """
  lines = ["image,person_id,camera,time,split"]
  for name, split, pid, cam, t in zip(manifest.filenames, manifest.split, manifest.person_id,
                                      manifest.camera, manifest.time):
    lines.append(f"{ROOT_NAME}/{FOLDERS[split]}/{name},{int(pid)},{camera_name(int(cam))},"
                 f"{int(t) / FPS:.2f},{split}")
  return "\n".join(lines) + "\n"


def write_tracks_table(out_dir: str, manifest: Manifest) -> str:
  """Writes ``out_dir/tracks.csv``; returns its path."""
  path = files.join(out_dir, TRACKS_FILE)
  files.write_bytes(path, tracks_table(manifest).encode())
  return path


def read_manifest(out_dir: str) -> Manifest:
  """The ``manifest.json`` of a generated world."""
  raw = json.loads(files.read_bytes(files.join(out_dir, "manifest.json")).decode())
  return Manifest(filenames=tuple(raw["filenames"]), split=tuple(raw["split"]),
                  person_id=np.asarray(raw["person_id"], np.int64),
                  camera=np.asarray(raw["camera"], np.int64),
                  time=np.asarray(raw["time"], np.int64),
                  camera_position_m=np.asarray(raw["camera_position_m"]),
                  walking_speed={int(k): v for k, v in raw["walking_speed"].items()})
