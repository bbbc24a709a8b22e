"""Check python/embtab/_core.pyi against the signatures pybind11 gives the compiled module.

`mypy.stubtest` cannot see the arguments of pybind11 functions (they have no
``__text_signature__``; pybind11 writes the signature into the first line of the docstring
instead), so it checks only that the names exist. This script reads those docstring signatures and
compares, for every function and method of the stub: the argument names in order, which ones are
positional-only (pybind11 names an argument without ``py::arg`` ``arg0``, ``arg1``, ...: it cannot
be passed by keyword), which ones are keyword-only, which ones have a default, and the default's
value where the stub spells one out (``...`` stands for any).

Usage: python ci/check_core_stub.py [path/to/_core.pyi]   (exit status 1 on any mismatch)
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from typing import Any, List, Optional, Tuple

import embtab._core as core

_UNNAMED = re.compile(r"arg\d+")
# (name, kind, has default, default value or None); kind: "positional", "either", "keyword"
Param = Tuple[str, str, bool, Any]


def _params(fn: ast.FunctionDef, skip_self: bool) -> List[Param]:
    a = fn.args
    positional = [(p, "positional") for p in a.posonlyargs] + [(p, "either") for p in a.args]
    defaults: List[Optional[ast.expr]] = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    out: List[Param] = []
    for (p, kind), d in zip(positional, defaults):
        out.append((p.arg, kind, d is not None, _value(d)))
    for p, d in zip(a.kwonlyargs, a.kw_defaults):
        out.append((p.arg, "keyword", d is not None, _value(d)))
    return out[1:] if skip_self else out


def _value(node: Optional[ast.expr]) -> Any:
    if node is None or (isinstance(node, ast.Constant) and node.value is Ellipsis):
        return None
    try:
        return ast.literal_eval(node)
    except ValueError:
        return ast.unparse(node)


def _runtime(obj: Any, name: str, skip_self: bool) -> List[Param]:
    first = (getattr(obj, "__doc__", None) or "").split("\n", 1)[0]
    if not first.startswith(name + "("):
        raise ValueError(f"no pybind11 signature in its docstring (overloaded?): {first!r}")
    fn = ast.parse(f"def {first}: ...").body[0]
    assert isinstance(fn, ast.FunctionDef)
    params = _params(fn, skip_self)
    # pybind11's unnamed arguments cannot be passed by keyword: positional-only.
    return [(n, "positional" if _UNNAMED.fullmatch(n) else k, has, v) for n, k, has, v in params]


def _compare(where: str, stub: List[Param], runtime: List[Param]) -> List[str]:
    problems = []
    if len(stub) != len(runtime):
        problems.append(f"{where}: the stub has {len(stub)} arguments, the module {len(runtime)}: "
                        f"{[p[0] for p in stub]} vs {[p[0] for p in runtime]}")
        return problems
    for (sn, sk, sd, sv), (rn, rk, rd, rv) in zip(stub, runtime):
        if sk != rk:
            problems.append(f"{where}: argument {sn!r} is {sk} in the stub, {rk} ({rn!r}) in the module")
        elif rk != "positional" and sn != rn:
            problems.append(f"{where}: argument {sn!r} of the stub is {rn!r} in the module")
        if sd != rd:
            problems.append(f"{where}: argument {sn!r} {'has' if sd else 'lacks'} a default in the stub, "
                            f"{'has' if rd else 'lacks'} one in the module")
        elif sv is not None and sv != rv:
            problems.append(f"{where}: argument {sn!r} defaults to {sv!r} in the stub, {rv!r} in the module")
    return problems


def main(stub_path: Path) -> int:
    tree = ast.parse(stub_path.read_text(), str(stub_path))
    problems: List[str] = []
    checked = 0

    def check(fn: ast.FunctionDef, owner: Any, prefix: str, is_method: bool) -> None:
        nonlocal checked
        if any(isinstance(d, ast.Name) and d.id == "property" for d in fn.decorator_list):
            return  # properties have no arguments
        where = f"{prefix}{fn.name}"
        obj = getattr(owner, fn.name, None)
        if obj is None:
            problems.append(f"{where}: not in the module")
            return
        try:
            runtime = _runtime(obj, fn.name, skip_self=is_method)
        except (ValueError, SyntaxError) as exc:
            problems.append(f"{where}: {exc}")
            return
        problems.extend(_compare(where, _params(fn, skip_self=is_method), runtime))
        checked += 1

    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            check(node, core, "", is_method=False)
        elif isinstance(node, ast.ClassDef):
            cls = getattr(core, node.name, None)
            if cls is None:
                problems.append(f"{node.name}: not in the module")
                continue
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    check(item, cls, f"{node.name}.", is_method=True)
    for p in problems:
        print(p)
    print(f"check_core_stub: {checked} signatures checked, {len(problems)} mismatch(es)")
    return 1 if problems else 0


if __name__ == "__main__":
    default = Path(__file__).resolve().parent.parent / "python" / "embtab" / "_core.pyi"
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else default))
