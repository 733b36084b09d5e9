"""Linear algebra and other linear maps: Gemm, MatMul, Einsum, CumSum, and TopK (which selects).

Weights held as initializers get no gradient: the rules skip them rather than compute products nobody reads.
"""

from __future__ import annotations

import string

from onnxcam.errors import GradientError
from onnxcam.graph.builder import Builder, Shape
from onnxcam.graph.reverse.gradients import Grads, Node, rule


def _wanted(b: Builder, name: str | None) -> bool:
    return name is not None and b.constant_value(name) is None


@rule("Gemm")
def gemm(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    """Y = alpha * A' B' + beta * C with A' = A or A^T, B' = B or B^T."""
    a, w, c = node.inputs[0], node.inputs[1], node.input(2)
    g = grads[0]
    assert g is not None
    alpha = node.attr("alpha", 1.0)
    scale = None if alpha == 1.0 else alpha
    ta, tb = node.attr("transA", 0), node.attr("transB", 0)
    da = dw = dc = None
    if _wanted(b, a):  # dA' = alpha G B'^T
        da = (b.op("Gemm", w, g, alpha=scale, transA=tb, transB=1) if ta else
              b.op("Gemm", g, w, alpha=scale, transB=1 - tb))
    if _wanted(b, w):  # dB' = alpha A'^T G
        dw = (b.op("Gemm", g, a, alpha=scale, transA=1, transB=ta) if tb else
              b.op("Gemm", a, g, alpha=scale, transA=1 - ta))
    if _wanted(b, c):
        beta = node.attr("beta", 1.0)
        dc = b.unbroadcast(g if beta == 1.0 else b.op("Mul", g, b.scalar_like(beta, node.outputs[0])),
                           c or "", node.outputs[0])
    return [da, dw, dc]


def _swap_last(b: Builder, x: str, rank: int) -> str:
    return b.op("Transpose", x, perm=list(range(rank - 2)) + [rank - 1, rank - 2])


def _sum_to(b: Builder, grad: str, shape: Shape | None, x: str) -> str:
    """Sum a batched product's gradient (static shape `shape`, if known) over the batch dims x was broadcast along."""
    if shape is not None and shape == b.static_shape(x) and None not in shape:
        return grad
    b.set_shape(grad, shape)
    return b.unbroadcast(grad, x, grad)


@rule("MatMul")
def matmul(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    """numpy matmul: dA = G @ B^T, dB = A^T @ G, summed over broadcast batch dims.

    A 1-D A takes part as a (1, K) row, a 1-D B as a (K, 1) column; the result has those unit dims dropped, so G
    gets them back first.
    """
    a, w = node.inputs
    g = grads[0]
    assert g is not None
    ra, rw = b.rank(a), b.rank(w)
    if ra is None or rw is None:
        raise GradientError(f"MatMul node '{node.name}': the rank of its inputs is unknown; run shape inference "
                            "on the model (onnx.shape_inference) or give its inputs shapes")
    unit = ([-2] if ra == 1 else []) + ([-1] if rw == 1 else [])
    g2 = b.unsqueeze(g, unit) if unit else g
    a2, w2 = (b.unsqueeze(a, [0]) if ra == 1 else a), (b.unsqueeze(w, [1]) if rw == 1 else w)
    a_shape, w_shape, out_shape = b.static_shape(a), b.static_shape(w), b.static_shape(node.outputs[0])
    if ra == 1 and a_shape is not None:
        b.set_shape(a2, (1, *a_shape))
    if rw == 1 and w_shape is not None:
        b.set_shape(w2, (*w_shape, 1))
    a2_shape, w2_shape = b.static_shape(a2), b.static_shape(w2)
    batch = None if out_shape is None else tuple(out_shape)[:len(out_shape) + len(unit) - 2]
    da = dw = None
    if _wanted(b, a):
        da = b.op("MatMul", g2, _swap_last(b, w2, max(rw, 2)))
        da = _sum_to(b, da, None if batch is None or a2_shape is None else batch + a2_shape[-2:], a2)
        da = b.squeeze(da, [0]) if ra == 1 else da
    if _wanted(b, w):
        dw = b.op("MatMul", _swap_last(b, a2, max(ra, 2)), g2)
        dw = _sum_to(b, dw, None if batch is None or w2_shape is None else batch + w2_shape[-2:], w2)
        dw = b.squeeze(dw, [1]) if rw == 1 else dw
    return [da, dw]


def _einsum_terms(b: Builder, node: Node) -> tuple[list[str], str]:
    """The operands' and the result's subscripts, explicit: ellipses become letters and an implicit result is
    spelled out (the letters that occur once, in alphabetical order, after the ellipsis dims)."""
    equation = node.attr("equation").replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if not arrow:
        letters = "".join(terms).replace(".", "")
        rhs = ("..." if "..." in lhs else "") + "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    if "..." in equation:
        ranks = [b.rank(x) for x in node.inputs]
        if None in ranks:
            raise GradientError(f"Einsum node '{node.name}': its equation has '...' but the rank of its inputs is "
                                "unknown; run shape inference on the model or give its inputs shapes")
        spare = [c for c in string.ascii_letters if c not in equation]
        widths = [rank - len(term.replace("...", "")) for term, rank in zip(terms, ranks)]  # type: ignore[operator]
        width = max(widths)
        ellipsis = "".join(spare[:width])
        terms = [term.replace("...", ellipsis[width - w:]) for term, w in zip(terms, widths)]
        rhs = rhs.replace("...", ellipsis)
    if any(len(set(term)) != len(term) for term in terms):
        raise GradientError(f"Einsum node '{node.name}' ('{equation}') repeats a subscript within one operand "
                            "(a diagonal or trace); its gradient is not supported: pick a layer after this node")
    return terms, rhs


@rule("Einsum")
def einsum(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    """The gradient of each operand is the Einsum of G with the other operands, into that operand's subscripts.

    Subscripts that only that operand has (summed away inside it) are put back by broadcasting; dims of size 1
    that Einsum broadcast against larger ones are summed back to 1.
    """
    g = grads[0]
    assert g is not None
    terms, rhs = _einsum_terms(b, node)
    sizes: dict[str, set[int]] = {}
    for term, x in zip(terms, node.inputs):
        for letter, dim in zip(term, b.static_shape(x) or ()):
            if isinstance(dim, int):
                sizes.setdefault(letter, set()).add(dim)
    result: list[str | None] = []
    for k, (term, x) in enumerate(zip(terms, node.inputs)):
        if not _wanted(b, x):
            result.append(None)
            continue
        others = [t for j, t in enumerate(terms) if j != k]
        operands = [o for j, o in enumerate(node.inputs) if j != k]
        present = set(rhs).union(*others)
        kept = "".join(c for c in term if c in present)
        if not others:
            grad = g if kept == rhs else b.op("Einsum", g, equation=f"{rhs}->{kept}")
        elif rhs:
            grad = b.op("Einsum", g, *operands, equation=f"{rhs},{','.join(others)}->{kept}")
        else:  # a scalar result: multiply by G afterwards (an empty subscript is not accepted everywhere)
            grad = b.op("Mul", b.op("Einsum", *operands, equation=f"{','.join(others)}->{kept}"), g)
        dims = dict(zip(term, b.static_shape(x) or ()))
        grad = b.reduce_sum(grad, [i for i, c in enumerate(kept) if dims.get(c) == 1 and sizes[c] - {1}])
        missing = [i for i, c in enumerate(term) if c not in present]
        if missing:
            grad = b.op("Expand", b.unsqueeze(grad, missing), b.shape(x))
        result.append(grad)
    return result


@rule("CumSum", inputs=(0,))
def cumsum(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    """The transpose of a running sum is the running sum in the other direction."""
    x, axis = node.inputs[:2]
    return [b.op("CumSum", grads[0], axis, exclusive=node.attr("exclusive", 0),
                 reverse=1 - node.attr("reverse", 0))]


@rule("TopK", inputs=(0,))
def topk(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    """Values go back to the positions their indices name; the other positions get zero."""
    x, indices = node.inputs[0], node.outputs[1]
    if grads[0] is None or not indices:
        return [None]
    return [b.op("ScatterElements", b.zeros_like(x), indices, grads[0], axis=node.attr("axis", -1))]
