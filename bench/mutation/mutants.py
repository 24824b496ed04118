"""Mutation sites of the security checks, found with ``ast`` (no third-party mutation tool).

A function is a *security function* when it raises an ``AttestationError`` subclass (found
statically across the ``attest`` package: every class whose bases lead to
``AttestationError``), appends to or extends a list of failures, or is named like a check
(``check_*``, ``verify_*``, ``appraise*``, ``authenticate*``, and their ``_`` variants). Only
code inside security functions is mutated, plus the entries of module-level collection
literals (``_REQUIRED = {...}``, ``frozenset({...})``) that a security function reads.

Operators (each mutant changes exactly one thing):

- comparison: ``==``↔``!=``, ``<``↔``<=``, ``>``↔``>=``, ``in``↔``not in``, ``is``↔``is not``;
- ``not x`` → ``x``; ``and``↔``or``;
- ``if cond:`` whose body raises or records a failure → ``if False:``;
- a ``raise`` → ``pass`` (unless it is alone in an ``if`` body: that is the previous mutant);
- ``failures.append(...)`` / ``.extend(...)`` → ``pass``;
- ``return True`` ↔ ``return False``;
- ``return`` inserted before the first statement of a function that returns nothing;
- one entry dropped from a module-level collection literal.

Mutants are applied as byte-range splices of the original source (AST offsets are UTF-8 byte
columns), so everything else in the file, line numbers included, is unchanged.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT_ERROR = "AttestationError"
CHECK_PREFIXES = ("check", "_check", "verify", "_verify", "appraise", "_appraise",
                  "authenticate", "_authenticate")
FAILURE_LISTS = ("failures", "problems", "errors")
_SWAPS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.LtE, ast.LtE: ast.Lt,
    ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.In: ast.NotIn, ast.NotIn: ast.In,
    ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}
FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass(frozen=True)
class Mutant:
    path: str  # relative to the repository root
    line: int
    function: str
    change: str
    start: tuple[int, int]  # (line, byte column) of the replaced range
    end: tuple[int, int]
    replacement: str

    def apply(self, source: bytes) -> bytes:
        starts = [0]
        for line in source.splitlines(keepends=True):
            starts.append(starts[-1] + len(line))
        a = starts[self.start[0] - 1] + self.start[1]
        b = starts[self.end[0] - 1] + self.end[1]
        return source[:a] + self.replacement.encode() + source[b:]


def error_classes(package: Path) -> set[str]:
    """Names of every class under ``package`` deriving (by name) from AttestationError."""
    bases: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_bytes())):
            if isinstance(node, ast.ClassDef):
                bases.setdefault(node.name, set()).update(_name(b) for b in node.bases)
    found = {ROOT_ERROR}
    grew = True
    while grew:
        new = {c for c, bs in bases.items() if bs & found} - found
        found |= new
        grew = bool(new)
    return found


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call):
        return _name(node.func)
    return ""


def own_nodes(fn: FunctionNode) -> Iterator[ast.AST]:
    """Every node in ``fn``'s body, not descending into nested functions, lambdas or classes."""
    stack: list[ast.AST] = list(reversed(fn.body))
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


def _is_failure_record(node: ast.AST) -> bool:
    if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
        return False
    func = node.value.func
    return (isinstance(func, ast.Attribute) and func.attr in ("append", "extend")
            and any(w in _name(func.value).lower() for w in FAILURE_LISTS))


def _raises_error(node: ast.AST, errors: set[str]) -> bool:
    return isinstance(node, ast.Raise) and (node.exc is None or _name(node.exc) in errors)


def is_security_function(fn: FunctionNode, errors: set[str]) -> bool:
    if fn.name.startswith(CHECK_PREFIXES):
        return True
    return any(_raises_error(n, errors) or _is_failure_record(n) for n in own_nodes(fn))


def functions(tree: ast.Module) -> Iterator[tuple[str, FunctionNode]]:
    """(qualified name, node) of every function and method, nested ones included."""
    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, FunctionNode]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                yield f"{prefix}{child.name}", child
                yield from walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
            else:
                yield from walk(child, prefix)
    yield from walk(tree, "")


class _Finder:
    def __init__(self, rel: str, source: bytes, errors: set[str]) -> None:
        self.rel, self.source, self.errors = rel, source, errors
        self.tree = ast.parse(source)
        self.out: list[Mutant] = []
        self.function = ""

    def add(self, node: ast.AST, replacement: str, change: str, *,
            start: tuple[int, int] | None = None, end: tuple[int, int] | None = None) -> None:
        s = start or (node.lineno, node.col_offset)  # type: ignore[attr-defined]
        e = end or (node.end_lineno, node.end_col_offset)  # type: ignore[attr-defined]
        self.out.append(Mutant(self.rel, s[0], self.function, change, s, e, replacement))

    def expr(self, node: ast.expr, new: ast.expr, change: str) -> None:
        self.add(node, f"({ast.unparse(new)})", change)

    def function_sites(self, fn: FunctionNode) -> None:
        sole_raises = set()
        for node in own_nodes(fn):
            if isinstance(node, ast.If) and len(node.body) == 1 \
                    and isinstance(node.body[0], ast.Raise):
                sole_raises.add(id(node.body[0]))
        for node in own_nodes(fn):
            self.node_sites(node, sole_raises)
        self.early_return(fn)

    def node_sites(self, node: ast.AST, sole_raises: set[int]) -> None:
        if isinstance(node, ast.Compare):
            self.compare(node)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            self.expr(node, node.operand, f"`{short(node)}` → `{short(node.operand)}`")
        elif isinstance(node, ast.BoolOp):
            flipped = ast.BoolOp(op=ast.Or() if isinstance(node.op, ast.And) else ast.And(),
                                 values=node.values)
            self.expr(node, flipped, f"`{short(node)}` → `{short(flipped)}`")
        else:
            self.statement_sites(node, sole_raises)

    def statement_sites(self, node: ast.AST, sole_raises: set[int]) -> None:
        if isinstance(node, ast.If) and any(
                isinstance(n, ast.Raise) or _is_failure_record(n)
                for stmt in node.body for n in ast.walk(stmt)):
            self.expr(node.test, ast.Constant(False), f"`if {short(node.test)}:` → `if False:`")
        elif (isinstance(node, ast.Raise) and id(node) not in sole_raises) \
                or _is_failure_record(node):
            self.add(node, "pass", f"`{short(node)}` removed")
        elif isinstance(node, ast.Return) and isinstance(node.value, ast.Constant) \
                and isinstance(node.value.value, bool):
            self.expr(node.value, ast.Constant(not node.value.value),
                      f"`return {node.value.value}` → `return {not node.value.value}`")

    def compare(self, node: ast.Compare) -> None:
        for i, op in enumerate(node.ops):
            swap = _SWAPS.get(type(op))
            if swap is None:
                continue
            ops = list(node.ops)
            ops[i] = swap()
            new = ast.Compare(left=node.left, ops=ops, comparators=node.comparators)
            self.expr(node, new, f"`{short(node)}` → `{short(new)}`")

    def early_return(self, fn: FunctionNode) -> None:
        own = list(own_nodes(fn))
        if any(isinstance(n, ast.Return) and n.value is not None for n in own) or any(
                isinstance(n, ast.Yield | ast.YieldFrom) for n in own):
            return
        body = fn.body
        first = body[1] if (len(body) > 1 and isinstance(body[0], ast.Expr)
                            and isinstance(body[0].value, ast.Constant)) else body[0]
        line = self.source.splitlines()[first.lineno - 1]
        if line[:first.col_offset].strip():
            return  # `def f(): x` on one line
        indent = line[:first.col_offset].decode()
        pos = (first.lineno, first.col_offset)
        self.add(first, f"return\n{indent}", f"`return` before the first statement of "
                 f"`{fn.name}`", start=pos, end=pos)

    def constant_sites(self, used: set[str]) -> None:
        self.function = "<module>"
        for stmt in self.tree.body:
            target, value = _assigned(stmt)
            if target not in used or value is None:
                continue
            literal, wrap = _literal(value)
            if literal is None:
                continue
            for i, dropped in enumerate(_elements(literal)):
                new = _without(literal, i)
                rendered = ast.unparse(new) if _elements(new) else _empty(literal)
                if wrap is not None:
                    rendered = f"{wrap}({rendered})"
                self.add(value, rendered, f"`{target}`: entry `{short(dropped)}` dropped")


def _assigned(stmt: ast.stmt) -> tuple[str, ast.expr | None]:
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 \
            and isinstance(stmt.targets[0], ast.Name):
        return stmt.targets[0].id, stmt.value
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
        return stmt.target.id, stmt.value
    return "", None


def _literal(value: ast.expr) -> tuple[ast.expr | None, str | None]:
    """The collection literal in ``value`` and the call wrapping it (``frozenset``), if any."""
    if isinstance(value, ast.Dict | ast.Set | ast.List | ast.Tuple):
        return value, None
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) \
            and value.func.id in ("frozenset", "set", "tuple", "list") \
            and len(value.args) == 1 and not value.keywords \
            and isinstance(value.args[0], ast.Set | ast.List | ast.Tuple):
        return value.args[0], value.func.id
    return None, None


def _elements(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.Dict):
        return [k if k is not None else v for k, v in zip(node.keys, node.values, strict=True)]
    assert isinstance(node, ast.Set | ast.List | ast.Tuple)
    return list(node.elts)


def _without(node: ast.expr, i: int) -> ast.expr:
    if isinstance(node, ast.Dict):
        return ast.Dict(keys=node.keys[:i] + node.keys[i + 1:],
                        values=node.values[:i] + node.values[i + 1:])
    assert isinstance(node, ast.Set | ast.List | ast.Tuple)
    elts = node.elts[:i] + node.elts[i + 1:]
    return type(node)(elts=elts, ctx=ast.Load()) if not isinstance(node, ast.Set) \
        else ast.Set(elts=elts)


def _empty(node: ast.expr) -> str:
    return {ast.Dict: "{}", ast.Set: "set()", ast.List: "[]", ast.Tuple: "()"}[type(node)]


def short(node: ast.AST, limit: int = 70) -> str:
    text = " ".join(ast.unparse(node).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def find_mutants(root: Path, rel: str, errors: set[str]) -> list[Mutant]:
    """Every distinct mutant of ``root/rel`` that parses, in source order."""
    source = (root / rel).read_bytes()
    finder = _Finder(rel, source, errors)
    used: set[str] = set()
    for qualname, fn in functions(finder.tree):
        if not is_security_function(fn, errors):
            continue
        finder.function = qualname
        finder.function_sites(fn)
        used |= {n.id for n in own_nodes(fn) if isinstance(n, ast.Name)}
    finder.constant_sites(used)
    return list(_valid(finder.out, source))


def _valid(mutants: Iterable[Mutant], source: bytes) -> Iterator[Mutant]:
    seen = {hashlib.sha256(ast.dump(ast.parse(source)).encode()).digest()}
    for m in sorted(mutants, key=lambda m: (m.start, m.change)):
        try:
            tree = ast.parse(m.apply(source))
        except SyntaxError as exc:  # a splice that does not parse is a bug in this file
            raise AssertionError(f"{m.path}:{m.line} {m.change} does not parse: {exc}") from None
        key = hashlib.sha256(ast.dump(tree).encode()).digest()
        if key not in seen:
            seen.add(key)
            yield m
