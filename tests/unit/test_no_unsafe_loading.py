"""No pickle, marshal, eval or exec anywhere on data from Kafka, S3 or files.

Every Python file of the project is parsed (AST, so comments and strings never count and
aliases such as ``import numpy as np`` or ``from pickle import loads as l`` are resolved)
and each finding names its file and line. Product code may not even import a pickle-like
module; tests may (to craft a malicious payload and check it is refused) but never load
one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from app.settings import PROJECT_ROOT

PICKLE_LIKE = frozenset({"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle",
                         "joblib", "jsonpickle"})  # fmt: skip
UNSAFE_CALLS = frozenset(
    {"eval", "exec", "builtins.eval", "builtins.exec", "pandas.read_pickle", "torch.load"}
    | {f"{m}.{f}" for m in PICKLE_LIKE for f in ("load", "loads", "Unpickler", "open", "decode")}
    | {f"yaml.{f}" for f in ("unsafe_load", "unsafe_load_all", "full_load", "full_load_all")}
)
SAFE_YAML_LOADERS = frozenset({"yaml.SafeLoader", "yaml.CSafeLoader"})
SKIP_DIRS = frozenset({".venv", ".cache", "var", ".git", "node_modules", "build", "dist"})


def project_sources(root: Path = PROJECT_ROOT) -> list[Path]:
    return sorted(
        p for p in root.rglob("*.py") if not SKIP_DIRS & set(p.relative_to(root).parts[:-1])
    )


def _dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
    """``np.lib.format.read_array`` -> ``numpy.lib.format.read_array`` (aliases resolved)."""
    if isinstance(node, ast.Name):
        return aliases.get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value, aliases)
        return None if base is None else f"{base}.{node.attr}"
    return None


def unsafe_uses(source: str, *, allow_pickle_imports: bool = False) -> list[tuple[int, str]]:
    """``(line, what)`` for every unsafe deserialisation or dynamic evaluation in ``source``."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = (
                    a.name if a.asname else a.name.split(".")[0]
                )
                if a.name.split(".")[0] in PICKLE_LIKE and not allow_pickle_imports:
                    found.append((node.lineno, f"import {a.name}"))
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            if node.module.split(".")[0] in PICKLE_LIKE and not allow_pickle_imports:
                found.append((node.lineno, f"from {node.module} import ..."))
    # A loader class of this module is safe when it subclasses a safe one (it may add tags).
    safe_loaders = set(SAFE_YAML_LOADERS)
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(
            _dotted(base, aliases) in SAFE_YAML_LOADERS for base in node.bases
        ):
            safe_loaders.add(node.name)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases) or ""
        keywords = {kw.arg: kw.value for kw in node.keywords if kw.arg}
        if name in UNSAFE_CALLS:
            found.append((node.lineno, f"{name}()"))
        flag = keywords.get("allow_pickle")
        refused = isinstance(flag, ast.Constant) and flag.value is False
        loads = name.rsplit(".", 1)[-1] in ("load", "loads", "read_array", "fromfile")
        if flag is not None and not refused and loads:
            found.append((node.lineno, f"{name}(allow_pickle=...) not False"))
        if name in ("yaml.load", "yaml.load_all"):
            loader = keywords.get("Loader", node.args[1] if len(node.args) > 1 else None)
            if loader is None or _dotted(loader, aliases) not in safe_loaders:
                found.append((node.lineno, f"{name}() without Loader=yaml.SafeLoader"))
    return sorted(found)


def test_no_source_file_unpickles_or_evaluates():
    sources = project_sources()
    assert len(sources) > 50, "the scan found too few files; is PROJECT_ROOT right?"
    problems = []
    for path in sources:
        relative = path.relative_to(PROJECT_ROOT)
        uses = unsafe_uses(path.read_text(), allow_pickle_imports=relative.parts[0] == "tests")
        problems += [f"{relative}:{line}: {what}" for line, what in uses]
    assert not problems, "unsafe loading or evaluation:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "snippet, expected",
    [
        ("import pickle\npickle.loads(b)", ["import pickle", "pickle.loads()"]),
        ("from pickle import loads as l\nl(b)", ["from pickle import ...", "pickle.loads()"]),
        ("import marshal as m\nm.loads(b)", ["import marshal", "marshal.loads()"]),
        ("import joblib\njoblib.load(f)", ["import joblib", "joblib.load()"]),
        ("eval(text)", ["eval()"]),
        ("exec(code, {})", ["exec()"]),
        ("import numpy as np\nnp.load(f, allow_pickle=True)", ["allow_pickle"]),
        ("from numpy import load\nload(f, allow_pickle=flag)", ["allow_pickle"]),
        ("import yaml\nyaml.load(text)", ["without Loader"]),
        ("import yaml\nyaml.load(text, Loader=yaml.FullLoader)", ["without Loader"]),
        (
            "import yaml\nclass L(yaml.FullLoader): pass\nyaml.load(text, Loader=L)",
            ["without Loader"],
        ),
        ("import yaml\nyaml.unsafe_load(text)", ["yaml.unsafe_load()"]),
        ("import pandas as pd\npd.read_pickle(p)", ["pandas.read_pickle()"]),
    ],
)
def test_the_scan_catches(snippet: str, expected: list[str]):
    found = [what for _, what in unsafe_uses(snippet)]
    assert len(found) == len(expected) and all(
        e in w for e, w in zip(expected, found, strict=True)
    ), found


@pytest.mark.parametrize(
    "snippet",
    [
        "import numpy as np\nnp.load(f, allow_pickle=False)\nnp.load(f)",
        "import numpy as np\nnp.save(f, a, allow_pickle=True)",  # writing, e.g. a bad payload
        "import yaml\nyaml.load(t, Loader=yaml.SafeLoader)\nyaml.safe_load(t)",
        "import yaml\nclass Tags(yaml.SafeLoader): pass\nyaml.load(t, Loader=Tags)",
        "import re, json\nre.compile('x').match(s)\njson.loads(s)",
        "model.eval()\n# pickle.loads(b) in a comment\ns = 'eval(x)'",
    ],
)
def test_the_scan_accepts(snippet: str):
    assert unsafe_uses(snippet) == []


def test_tests_may_craft_pickles_but_never_load_them():
    source = "import pickle\npayload = pickle.dumps(obj)\npickle.loads(payload)"
    assert unsafe_uses(source, allow_pickle_imports=True) == [(3, "pickle.loads()")]
