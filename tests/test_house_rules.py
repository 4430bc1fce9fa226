"""House rules for src/organseg: short modules, short functions, no print() outside the
command line, no copy-pasted blocks. Each test lists every item that breaks its rule."""

from __future__ import annotations

import ast
import contextlib
import io
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "organseg"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MIN_DUPLICATE_LINES = 6
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _modules() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts)


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _functions(tree: ast.Module) -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every def and async def, methods and nested functions included, with a dotted name."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, FUNCTIONS):
                found.append((prefix + child.name, child))
                visit(child, f"{prefix}{child.name}.<locals>.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def _in_cli(path: Path) -> bool:
    """organseg.cli, whether it is the module cli.py or the package cli/."""
    return path.relative_to(PACKAGE).parts[0] in ("cli.py", "cli")


def test_no_module_is_over_400_lines() -> None:
    long = []
    for path in _modules():
        count = len(path.read_text(encoding="utf-8").splitlines())
        if count > MAX_MODULE_LINES:
            long.append(f"{_name(path)}: {count} lines")
    assert not long, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(long)


def test_no_function_is_over_60_lines() -> None:
    long = []
    for path in _modules():
        for name, node in _functions(_tree(path)):
            count = node.end_lineno - node.lineno + 1  # from the def line to the last line
            if count > MAX_FUNCTION_LINES:
                long.append(f"{_name(path)}:{node.lineno} {name}: {count} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_only_the_command_line_prints() -> None:
    prints = []
    for path in _modules():
        if _in_cli(path):
            continue
        calls = [node for node in ast.walk(_tree(path)) if isinstance(node, ast.Call)]
        lines = sorted(call.lineno for call in calls if isinstance(call.func, ast.Name) and call.func.id == "print")
        prints += [f"{_name(path)}:{line}" for line in lines]
    assert not prints, "print() outside organseg.cli:\n" + "\n".join(prints)


def _pieces(tree: ast.Module) -> list[set[int]]:
    """The line numbers of each function (nested ones stay in theirs) and of the rest of the
    module, less imports and def signatures. pylint compares pieces pairwise, never a piece
    with itself: splitting modules lets it find a block repeated inside one module too."""
    functions: list[set[int]] = []
    rest: set[int] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, FUNCTIONS):
                functions.append(set(range(node.lineno, node.end_lineno + 1)))
            elif isinstance(node, ast.ClassDef):
                rest.update(range(node.lineno, node.body[0].lineno))
                visit(node.body)
            else:
                rest.update(range(node.lineno, node.end_lineno + 1))

    visit(tree.body)
    ignored: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            ignored.update(range(node.lineno, node.end_lineno + 1))
        elif isinstance(node, FUNCTIONS):
            ignored.update(range(node.lineno, node.body[0].lineno))
    return [piece - ignored for piece in [*functions, rest]]


def test_no_block_of_6_lines_is_duplicated() -> None:
    """pylint's duplicate-code engine (symilar), comments and docstrings ignored; imports and
    signatures are blanked here with ast, as pylint's own options would do, because pylint's
    astroid parse of src/ takes seconds. Symilar reports only blocks longer than min_lines."""
    from pylint.checkers.symilar import Symilar

    symilar = Symilar(min_lines=MIN_DUPLICATE_LINES - 1, ignore_comments=True, ignore_docstrings=True)
    for path in _modules():
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        for piece in _pieces(_tree(path)):
            text = "".join(line if number in piece else "\n" for number, line in enumerate(lines, 1))
            symilar.append_stream(_name(path), io.StringIO(text))
    report = io.StringIO()
    with contextlib.redirect_stdout(report):
        symilar.run()
    output = report.getvalue()
    blocks = []
    for match in re.finditer(r"^(\d+) similar lines in \d+ files\n((?:==.*\n)+)", output, re.M):
        places = re.findall(r"^==(.+):\[(\d+):(\d+)\]$", match[2], re.M)  # [first line - 1:last line]
        blocks.append(f"{match[1]} lines: " + ", ".join(f"{name}:{int(a) + 1}-{b}" for name, a, b in places))
    assert "duplicates=0 " in output, "duplicated blocks:\n" + "\n".join(blocks) + "\n" + output
