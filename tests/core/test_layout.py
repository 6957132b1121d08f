"""The layout's rules, read from the source's import statements (every ``import`` and ``from ... import``,
at module level or inside functions): the core never imports a system, systems never import each other,
only the CLI imports the CLI, and no module imports itself back through others. Old module paths keep
working as aliases of the new ones."""
import ast
import importlib
import warnings
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "convformer"
SYSTEMS = ("vision", "sr", "pose", "asr")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every convformer module ``path`` imports; ``from pkg import name`` counts as ``pkg.name`` when that is
    a module, else as ``pkg``."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "convformer")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "convformer":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    return found


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}
GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _area(module: str) -> str:
    """'cli', a system's name, or 'core'."""
    parts = module.split(".")
    if module == "convformer.__main__":  # `python -m convformer` is the CLI's entry point
        return "cli"
    if len(parts) > 1 and parts[1] in (*SYSTEMS, "cli"):
        return parts[1]
    return "core"


def _violations(rule) -> list[str]:
    return sorted(f"{m} imports {t}" for m, targets in GRAPH.items() for t in targets if rule(_area(m), _area(t)))


def test_the_scan_sees_the_whole_package():
    assert {"convformer.registry", "convformer.engine.train", "convformer.vision.metaformer", "convformer.sr.cfsr",
            "convformer.pose.lifter", "convformer.asr.conformer", "convformer.cli"} <= set(MODULES)
    assert "convformer.engine.tasks" in GRAPH["convformer.engine.train"] or \
        "convformer.engine.tasks" in GRAPH["convformer.engine"]


def test_the_core_imports_no_system_and_no_cli():
    assert _violations(lambda src, dst: src == "core" and dst != "core") == []


def test_systems_import_neither_each_other_nor_the_cli():
    assert _violations(lambda src, dst: src in SYSTEMS and dst != src and dst != "core") == []


def test_there_are_no_import_cycles():
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(GRAPH.get(node, ())):
            if nxt not in GRAPH:
                continue
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_rules_catch_what_they_forbid(tmp_path):
    """The checker itself: a core module importing a system, or two modules importing each other, is seen."""
    global GRAPH
    saved = GRAPH
    try:
        GRAPH = {**saved, "convformer.registry": saved["convformer.registry"] | {"convformer.vision.metaformer"}}
        assert _violations(lambda src, dst: src == "core" and dst != "core") == \
            ["convformer.registry imports convformer.vision.metaformer"]
    finally:
        GRAPH = saved


# old path -> the module that holds its code now (a sample of the documented ones; the whole table is
# convformer._aliases.MOVED_MODULES)
ALIASES = [("convformer.models.detection", "convformer.vision.detection"),
           ("convformer.models.cfsr", "convformer.sr.cfsr"),
           ("convformer.models.conformer_stream", "convformer.asr.streaming"),
           ("convformer.data.sr", "convformer.sr.data"),
           ("convformer.engine.sr_metrics", "convformer.sr.metrics"),
           ("convformer.engine.pose", "convformer.pose.task"),
           ("convformer.bench.nemo", "convformer.asr.nemo_reference")]


@pytest.mark.parametrize("old,new", ALIASES)
def test_old_module_paths_are_deprecated_aliases_of_the_new_modules(old, new):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert module.__spec__.name == new  # the alias did not take over the real module's identity
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)


def test_every_alias_points_at_a_module_that_exists():
    from convformer._aliases import MOVED_MODULES, MOVED_NAMES
    assert [new for new in MOVED_MODULES.values() if new not in MODULES] == []
    for target in MOVED_NAMES.values():
        module, name = target.split(":")
        assert hasattr(importlib.import_module(module), name)


def test_public_names_keep_working():
    import convformer
    for name in ("create_model", "list_models", "model_card", "load_weights", "save_weights", "optimize",
                 "register_with_timm", "ConvformerError"):
        assert callable(getattr(convformer, name))
    from convformer.mixers import SepConvMixer  # documented module paths that did not move
    from convformer.models.detection import fpn_backbone
    from convformer.vision.detection import fpn_backbone as new_fpn_backbone
    assert fpn_backbone is new_fpn_backbone and SepConvMixer.__module__ == "convformer.mixers.sepconv"
    with pytest.warns(DeprecationWarning, match="convformer.vision.config"):
        from convformer.engine import TrainConfig
    from convformer.vision.config import TrainConfig as NewTrainConfig
    assert TrainConfig is NewTrainConfig
    with pytest.warns(DeprecationWarning, match="convformer.vision.data"):
        from convformer.data import build_image_data
    from convformer.vision.data import build_image_data as new_build
    assert build_image_data is new_build


def test_names_that_moved_out_of_engine_modules_still_resolve():
    from convformer.asr.config import AsrTrainConfig
    from convformer.pose.config import PoseTrainConfig
    from convformer.sr.config import SRTrainConfig
    from convformer.vision.task import ImageClassification
    with pytest.warns(DeprecationWarning):
        from convformer.engine.config import AsrTrainConfig as a, PoseTrainConfig as p, SRTrainConfig as s
    with pytest.warns(DeprecationWarning):
        from convformer.engine.tasks import ImageClassification as ic
    assert (a, p, s, ic) == (AsrTrainConfig, PoseTrainConfig, SRTrainConfig, ImageClassification)
    with pytest.raises(ImportError):
        from convformer.engine.config import NoSuchName  # noqa: F401


def test_engine_evaluate_stays_the_function_after_the_old_module_path_is_imported():
    """Before the move, ``convformer.engine.evaluate`` was both a module and (the package's attribute) the
    evaluation function; importing the old module path must not turn the attribute into the module."""
    import sys
    code = ("import warnings; warnings.simplefilter('ignore')\n"
            "import convformer.engine.evaluate as m\n"
            "from convformer.engine.evaluate import evaluate as f1\n"
            "from convformer.engine import evaluate as f2\n"
            "from convformer.vision.evaluate import evaluate\n"
            "assert f1 is f2 is evaluate and callable(f2), (f1, f2)\n"
            "assert sys.modules['convformer.engine.evaluate'].__name__ == 'convformer.vision.evaluate'\n")
    import subprocess
    done = subprocess.run([sys.executable, "-c", "import sys\n" + code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-1500:]
