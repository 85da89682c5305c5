"""A strict grammar for the expressions a ``.pt2`` carries as text.

torch evaluates two kinds of strings from an archive: symbolic shape expressions (parsed with
``sympy.sympify``, which calls Python's ``eval``) and guard code (turned into Python with
``exec`` when guards are checked). Both are checked here before anything loads the archive.

The text is parsed with :func:`ast.parse` (which never runs anything) and every node of the
tree must be one of: an integer, ``True``/``False``, a symbol name such as ``s0`` or ``u12``,
``+ - * // %`` and unary minus, comparisons, ``and``/``or``/``not``, or a call of one of the
sympy constructors in :data:`FUNCTIONS` on such expressions. ``Symbol('s77', positive=True,
integer=True)`` (sympy's ``srepr`` form, as torch writes it) is the only place a string may
appear, and only a symbol name. No attribute access, subscripts, other names, strings, lambdas
or dunders.

Guard strings name inputs as ``L['x'].size()[0]``; :func:`check_guard` replaces exactly that
shape of source (``L['<identifier>']`` with optional ``[<int>]`` indices, then
``.size()[<int>]``, ``.stride()[<int>]`` or ``.storage_offset()``) by a symbol before checking
the rest against the same grammar.
"""

from __future__ import annotations

import ast
import re

from meshcompute.errors import BadInput

SYMBOL_NAME = re.compile(r"^[a-z]{1,4}[0-9]{1,9}$")
FUNCTIONS = frozenset({
    "Symbol", "Integer", "Add", "Mul", "Mod", "PythonMod", "FloorDiv", "CleanDiv", "CeilDiv",
    "Min", "Max", "Eq", "Ne", "Le", "Lt", "Ge", "Gt", "And", "Or", "Not", "PowByNatural",
})
SYMBOL_ASSUMPTIONS = frozenset({"positive", "integer", "nonnegative", "real", "finite"})
MAX_CHARS = 4096
MAX_NODES = 1024
MAX_INT = 1 << 63

_ALLOWED_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Mod)
_ALLOWED_CMPOPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)
_GUARD_SOURCE = re.compile(
    r"L\['[A-Za-z_][A-Za-z0-9_]{0,100}'\](?:\[[0-9]{1,4}\])*"
    r"(?:\.size\(\)\[[0-9]{1,4}\]|\.stride\(\)\[[0-9]{1,4}\]|\.storage_offset\(\))"
)


def check_sym_expr(text: object, where: str) -> None:
    """Raise :class:`BadInput` naming ``where`` unless ``text`` is in the grammar."""
    _check(text, where, "symbolic shape expression")


def check_guard(text: object, where: str) -> None:
    """Raise :class:`BadInput` naming ``where`` unless guard ``text`` is in the grammar."""
    if not isinstance(text, str):
        raise BadInput(f"{where}: guard must be a string, got {type(text).__name__}")
    _check(_GUARD_SOURCE.sub("s0", text), where, "guard")


def check_symbol_name(name: object, where: str) -> None:
    if not isinstance(name, str) or not SYMBOL_NAME.match(name):
        raise BadInput(f"{where}: {name!r} is not a symbol name like s0 or u12")


def _check(text: object, where: str, what: str) -> None:
    if not isinstance(text, str):
        raise BadInput(f"{where}: {what} must be a string, got {type(text).__name__}")
    if len(text) > MAX_CHARS:
        raise BadInput(f"{where}: {what} is longer than {MAX_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise BadInput(f"{where}: {what} {text[:80]!r} does not parse: {exc}") from None
    nodes = list(ast.walk(tree))
    if len(nodes) > MAX_NODES:
        raise BadInput(f"{where}: {what} has more than {MAX_NODES} parts")
    try:
        _node(tree.body)
    except _Refused as exc:
        raise BadInput(f"{where}: {what} {text[:120]!r} refused: {exc}") from None


class _Refused(Exception):
    pass


def _node(node: ast.AST) -> None:
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool):
            return
        if isinstance(value, int):
            if abs(value) >= MAX_INT:
                raise _Refused(f"integer {value} out of range")
            return
        raise _Refused(f"constant {value!r} is not an integer")
    if isinstance(node, ast.Name):
        if SYMBOL_NAME.match(node.id):
            return
        raise _Refused(f"name {node.id!r} is not a symbol")
    if isinstance(node, ast.BinOp):
        if not isinstance(node.op, _ALLOWED_BINOPS):
            raise _Refused(f"operator {type(node.op).__name__} not allowed")
        _node(node.left)
        _node(node.right)
        return
    if isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, (ast.USub, ast.UAdd, ast.Not)):
            raise _Refused(f"operator {type(node.op).__name__} not allowed")
        _node(node.operand)
        return
    if isinstance(node, ast.Compare):
        if not all(isinstance(op, _ALLOWED_CMPOPS) for op in node.ops):
            raise _Refused("comparison operator not allowed")
        _node(node.left)
        for comparator in node.comparators:
            _node(comparator)
        return
    if isinstance(node, ast.BoolOp):
        for value in node.values:
            _node(value)
        return
    if isinstance(node, ast.Call):
        _call(node)
        return
    raise _Refused(f"{type(node).__name__} is not allowed")


def _call(node: ast.Call) -> None:
    if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
        raise _Refused(f"call of {ast.unparse(node.func)[:40]!r} is not allowed")
    name = node.func.id
    if name == "Symbol":
        if len(node.args) != 1 or not isinstance(node.args[0], ast.Constant):
            raise _Refused("Symbol takes one symbol name")
        symbol = node.args[0].value
        if not isinstance(symbol, str) or not SYMBOL_NAME.match(symbol):
            raise _Refused(f"Symbol name {symbol!r} is not like s0 or u12")
        for keyword in node.keywords:
            if keyword.arg not in SYMBOL_ASSUMPTIONS or not (
                isinstance(keyword.value, ast.Constant) and isinstance(keyword.value.value, bool)
            ):
                raise _Refused(f"Symbol assumption {keyword.arg!r} not allowed")
        return
    if node.keywords:
        raise _Refused(f"{name} takes no keyword arguments")
    if name == "Integer":
        if len(node.args) != 1:
            raise _Refused("Integer takes one integer")
        arg = node.args[0]
        if isinstance(arg, ast.UnaryOp) and isinstance(arg.op, ast.USub):
            arg = arg.operand
        if not (isinstance(arg, ast.Constant) and type(arg.value) is int):
            raise _Refused("Integer takes one integer")
        _node(arg)
        return
    for arg in node.args:
        _node(arg)
