"""Import hygiene: no TensorFlow outside jreid/data, and no import circle in jreid/."""

import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_core_modules_do_not_import_tensorflow():
  code = ("import sys; import jreid.jobs, jreid.stages, jreid.train, jreid.features, "
          "jreid.rerank, jreid.evaluate, jreid.models.heads, jreid.models.convert, "
          "jreid.data.synthetic, experiments.synthetic, experiments.market1501_tpu; "
          "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets')]; "
          "assert not bad, bad")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-2000:]


def _imports(path: str) -> set[str]:
  """Modules a file imports, at module or function level (absolute imports)."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      found.add(node.module)
      found.update(f"{node.module}.{a.name}" for a in node.names)
  return found


def test_no_import_circle_in_jreid():
  modules = {}
  for folder, _, names in os.walk(os.path.join(ROOT, "jreid")):
    for name in names:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
        modules[module] = path
  edges = {m: {t for t in _imports(p) if t in modules and t != m} for m, p in modules.items()}
  state, circles = {}, []

  def visit(m, stack):
    state[m] = "open"
    stack.append(m)
    for n in sorted(edges[m]):
      if state.get(n) == "open":
        circles.append(stack[stack.index(n):] + [n])
      elif n not in state:
        visit(n, stack)
    stack.pop()
    state[m] = "done"

  for m in sorted(modules):
    if m not in state:
      visit(m, [])
  assert not circles, circles
  assert "jreid.stages" in modules and "jreid.jobs" in modules


def test_every_module_states_its_job():
  for folder, _, names in os.walk(os.path.join(ROOT, "jreid")):
    for name in names:
      if name.endswith(".py") and name != "__init__.py":
        doc = ast.get_docstring(ast.parse(open(os.path.join(folder, name)).read()))
        assert doc and len(doc.split()) >= 5, name


def test_only_the_job_boundary_reads_configs():
  """jobs, stages and validation translate configs; every other module takes typed values."""
  readers = set()
  for folder, _, names in os.walk(os.path.join(ROOT, "jreid")):
    for name in names:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        if any(m.split(".")[0] == "ml_collections" for m in _imports(path)):
          readers.add(os.path.relpath(path, ROOT))
  assert readers == {os.path.join("jreid", f) for f in ("jobs.py", "stages.py", "validation.py")}
