"""The layering rules of docs/architecture.md, checked on the source."""

import ast
from pathlib import Path

import lightning_viz

PACKAGE = Path(lightning_viz.__file__).parent
TAG_PREFIXES = (
    "filters/",
    "activations/",
    "gradcam/",
    "deconv/",
    "evolution/",
    "occlusion/",
    "saliency/",
    "activation_grid/",
    "cam/",
    "lime/",
    "alerts/",
)
PRIVATE_LIGHTNING = (
    "fit_loop",
    "_data_source",
    "_generate_state_key",
    "_compiler_ctx",
    "_get_file_writer",
)


def modules():
    return sorted(PACKAGE.rglob("*.py"))


def imported(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def string_constants(tree: ast.AST) -> list[str]:
    """String literals in code, docstrings left out."""
    docstrings = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            docstrings.add(id(body[0].value))
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            docstrings.add(id(node.value))  # attribute docstrings
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def test_functional_imports_nothing_above_it():
    for path in (PACKAGE / "functional").glob("*.py"):
        ours = {n for n in imported(ast.parse(path.read_text())) if n.startswith("lightning_viz")}
        assert all(n.startswith("lightning_viz.functional") for n in ours), (path.name, ours)


def test_no_tag_is_spelled_outside_the_tags_module():
    for path in modules():
        if path.name == "tags.py":
            continue
        spelled = [
            s for s in string_constants(ast.parse(path.read_text())) if s.startswith(TAG_PREFIXES)
        ]
        assert not spelled, (path.name, spelled)


def test_private_lightning_apis_only_in_compat():
    for path in modules():
        if path.name == "_compat.py":
            continue
        text = path.read_text()
        assert not [name for name in PRIVATE_LIGHTNING if name in text], path.name
