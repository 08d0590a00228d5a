"""Code generator of the batched engine's ``kernel="codegen"``: one RODAS4 step attempt for
``LANES`` = 8 lanes at once, straight-line and branch-free per lane (docs/benchmarks.md,
"Thirteenth pass").

The model's equations are not re-typed here: :func:`ketasim.mechanism.rhs_into` and
:func:`ketasim._batch_kernels.mood_rhs` are *traced* (their Python source executed on symbolic
values, with the configuration's constants — packed parameters, blockers, mood constants —
as numbers), so the right-hand side of the generated step is the shipped one with every
constant folded and every configuration branch resolved. The Jacobian's non-zeros are the
symbolic derivatives of the traced expressions (``max``/``min`` differentiated one-sided as
in :func:`ketasim.mechanism.jac_into`), the block lower-triangular factorisation and the
solves are unrolled over the Jacobian's fixed sparsity (diagonal blocks by LU without
pivoting: their diagonals dominate, ``W = I/(hγ) − J`` with ``J``'s diagonal ≤ 0), and the
stage sums and the error norm are unrolled over the states. All of it is one expression DAG
(hash-consed, so common subexpressions are computed once), emitted as one ``for ln in
range(8)`` loop whose body has no control flow (``max``/``min``/``a if c else b`` compile to
selects), so LLVM can vectorise it over the lanes.

:func:`emit_ir` writes the DAG as LLVM IR on vectors of 8 doubles (a numba intrinsic; what
the engine uses); :func:`emit` as a numba loop over the lanes (measured, not used: LLVM
does not vectorise a loop body this large, so it runs as scalar code). :func:`codegen_kernels`
loads the generated step together with the entry points of the one driver,
:func:`ketasim._batch_kernels._course_lanes`, with ``step8`` as its attempt core
(:func:`driver_text`).

Options: ``dfdt`` ``"fd"`` (the shipped forward difference of f over 10⁻⁸ h: one more
concentration and right-hand side) or ``"exact"`` (Σ_b ∂f/∂c_b·dc_b/dτ, from the same
exponentials); ``exp`` ``"libm"`` (math.exp: the loop then stays scalar, the exponentials are
computed in a first loop) or ``"vec"`` (a branch-free exp in the loop, ≤ 2 ulp from libm).
"""

from __future__ import annotations

import inspect
import math
import textwrap
import threading

import numpy as np

# --------------------------------------------------------------------------- expressions

_TABLE: dict[tuple, Ex] = {}


class Ex:
    """A node of the expression DAG (hash-consed: equal keys give the same object)."""

    __slots__ = ("op", "args", "val", "id", "__weakref__")

    def __new__(cls, op, args=(), val=None):
        key = (op, tuple(a.id for a in args), val)
        node = _TABLE.get(key)
        if node is None:
            node = object.__new__(cls)
            node.op, node.args, node.val, node.id = op, tuple(args), val, len(_TABLE)
            _TABLE[key] = node
        return node

    # arithmetic ---------------------------------------------------------
    def __add__(self, o):
        return add(self, o)

    def __radd__(self, o):
        return add(o, self)

    def __sub__(self, o):
        return sub(self, o)

    def __rsub__(self, o):
        return sub(o, self)

    def __mul__(self, o):
        return mul(self, o)

    def __rmul__(self, o):
        return mul(o, self)

    def __truediv__(self, o):
        return div(self, o)

    def __rtruediv__(self, o):
        return div(o, self)

    def __neg__(self):
        return _un("neg", self)

    def __gt__(self, o):
        return _cmp("gt", self, o)

    def __lt__(self, o):
        return _cmp("lt", self, o)

    def __ge__(self, o):
        return _cmp("ge", self, o)

    def __le__(self, o):
        return _cmp("le", self, o)

    def __bool__(self):
        raise TypeError("a branch on a traced value: the configuration is not straight-line")

    def __hash__(self):
        return self.id

    def __eq__(self, o):  # identity (hash-consed)
        return self is o


def C(x: float) -> Ex:
    """A constant node."""
    x = float(x)
    return Ex("c", (), repr(x) if x == x else "nan")


def V(name: str) -> Ex:
    """A variable (an input of the step)."""
    return Ex("v", (), name)


def _lift(x):
    return x if isinstance(x, Ex) else C(x)


def cval(e: Ex):
    """The value of a constant node, else None."""
    return float(e.val) if e.op == "c" else None


def _bin(op, a, b, f):
    a, b = _lift(a), _lift(b)
    if a.op == "c" and b.op == "c":
        return C(f(cval(a), cval(b)))
    return Ex(op, (a, b))


def add(a, b):
    """a + b, folded where both are constants or one is 0."""
    a, b = _lift(a), _lift(b)
    if cval(a) == 0.0 and a.op == "c":
        return b
    if cval(b) == 0.0 and b.op == "c":
        return a
    return _bin("+", a, b, lambda x, y: x + y)


def sub(a, b):
    """a − b, folded where both are constants or one is 0."""
    a, b = _lift(a), _lift(b)
    if b.op == "c" and cval(b) == 0.0:
        return a
    if a.op == "c" and cval(a) == 0.0:
        return _un("neg", b)
    return _bin("-", a, b, lambda x, y: x - y)


def mul(a, b):
    """a · b, folded where both are constants or one is 0, 1 or −1."""
    a, b = _lift(a), _lift(b)
    for x, y in ((a, b), (b, a)):
        if x.op == "c":
            v = cval(x)
            if v == 0.0:
                return C(0.0)
            if v == 1.0:
                return y
            if v == -1.0:
                return _un("neg", y)
    return _bin("*", a, b, lambda x, y: x * y)


def div(a, b):
    """a / b, folded where both are constants, a is 0 or b is 1."""
    a, b = _lift(a), _lift(b)
    if a.op == "c" and cval(a) == 0.0:
        return C(0.0)
    if b.op == "c" and cval(b) == 1.0:
        return a
    return _bin("/", a, b, lambda x, y: x / y)


def _un(op, a):
    a = _lift(a)
    if a.op == "c":
        v = cval(a)
        return C({"neg": lambda: -v, "sqrt": lambda: math.sqrt(v), "abs": lambda: abs(v),
                  "exp": lambda: math.exp(v)}[op]())
    if op == "neg" and a.op == "neg":
        return a.args[0]
    return Ex(op, (a,))


def _cmp(op, a, b):
    a, b = _lift(a), _lift(b)
    if a.op == "c" and b.op == "c":
        x, y = cval(a), cval(b)
        return C(float({"gt": x > y, "lt": x < y, "ge": x >= y, "le": x <= y}[op]))
    return Ex(op, (a, b))


def sel(c, a, b):
    """``a if c else b`` (c a comparison node or a 0/1 constant)."""
    c, a, b = _lift(c), _lift(a), _lift(b)
    if c.op == "c":
        return a if cval(c) != 0.0 else b
    if a is b:
        return a
    return Ex("sel", (c, a, b))


def tmax(a, b):
    """``max`` of the traced equations (Python's where neither is traced)."""
    if not isinstance(a, Ex) and not isinstance(b, Ex):
        return max(a, b)
    a, b = _lift(a), _lift(b)
    if a.op == "c" and b.op == "c":
        return C(max(cval(a), cval(b)))
    return Ex("max", (a, b))


def tmin(a, b):
    """``min`` of the traced equations (Python's where neither is traced)."""
    if not isinstance(a, Ex) and not isinstance(b, Ex):
        return min(a, b)
    a, b = _lift(a), _lift(b)
    if a.op == "c" and b.op == "c":
        return C(min(cval(a), cval(b)))
    return Ex("min", (a, b))


def tsqrt(a):
    """``np.sqrt`` of the traced equations."""
    return _un("sqrt", a) if isinstance(a, Ex) else math.sqrt(a)


def tabs(a):
    """``abs`` of the traced equations."""
    return _un("abs", a) if isinstance(a, Ex) else abs(a)


def texp(a):
    """e^a (a node)."""
    return _un("exp", a)


# --------------------------------------------------------------------------- derivatives

def diff(e: Ex, var: Ex, memo: dict) -> Ex:
    """∂e/∂var (one-sided at the kinks of max/min: the branch taken, ties to the second
    argument, as :func:`ketasim.mechanism.jac_into`)."""
    k = e.id
    if k in memo:
        return memo[k]
    op, a = e.op, e.args
    if e is var:
        r = C(1.0)
    elif op in ("c", "v"):
        r = C(0.0)
    elif op == "+":
        r = add(diff(a[0], var, memo), diff(a[1], var, memo))
    elif op == "-":
        r = sub(diff(a[0], var, memo), diff(a[1], var, memo))
    elif op == "neg":
        r = _un("neg", diff(a[0], var, memo))
    elif op == "*":
        r = add(mul(diff(a[0], var, memo), a[1]), mul(a[0], diff(a[1], var, memo)))
    elif op == "/":
        da, db = diff(a[0], var, memo), diff(a[1], var, memo)
        r = sub(div(da, a[1]), div(mul(a[0], db), mul(a[1], a[1])))
    elif op == "sqrt":
        r = div(mul(0.5, diff(a[0], var, memo)), e)
    elif op == "abs":
        r = mul(sel(_cmp("ge", a[0], 0.0), 1.0, -1.0), diff(a[0], var, memo))
    elif op == "max":
        r = sel(_cmp("gt", a[0], a[1]), diff(a[0], var, memo), diff(a[1], var, memo))
    elif op == "min":
        r = sel(_cmp("lt", a[0], a[1]), diff(a[0], var, memo), diff(a[1], var, memo))
    elif op == "sel":
        r = sel(a[0], diff(a[1], var, memo), diff(a[2], var, memo))
    elif op in ("gt", "lt", "ge", "le"):
        r = C(0.0)
    elif op == "exp":
        r = mul(e, diff(a[0], var, memo))
    elif op == "bind":
        r = diff(a[0], var, memo)
    else:
        raise ValueError(op)
    memo[k] = r
    return r


# --------------------------------------------------------------------------- tracing

class _Shim:
    sqrt = staticmethod(tsqrt)
    isfinite = staticmethod(lambda x: True)


class _Mat:
    """A 2-D numpy array of constants indexable as ``m[i, j]`` and ``m[i]`` (→ a row)."""

    def __init__(self, a):
        self.a = np.asarray(a, dtype=float)
        self.shape = self.a.shape

    def __getitem__(self, k):
        if isinstance(k, tuple):
            return float(self.a[k])
        return _Vec([float(x) for x in self.a[k]])


class _Vec(list):
    @property
    def shape(self):
        return (len(self),)


def _pyfunc(f, glb):
    src = textwrap.dedent(inspect.getsource(f.py_func))
    src = src[src.index("def "):]
    ns = dict(glb)
    exec(compile(src, f"<traced {f.__name__}>", "exec"), ns)
    return ns[f.py_func.__name__]


def traced_rhs(P, kd0, kesc, mgf, mc, nblk):
    """Python functions f(y, conc, mpat) → list of Ex, from the shipped equations."""
    from ketasim import _batch_kernels as K
    from ketasim import mechanism as M

    glb = {"max": tmax, "min": tmin, "np": _Shim, "int": int, "float": float, "range": range}
    glb["_pow"] = _pyfunc(M._pow, glb)
    glb["qss_total"] = _pyfunc(M.qss_total, glb)
    rhs_into = _pyfunc(M.rhs_into, glb)
    mood_rhs = _pyfunc(K.mood_rhs, glb)
    Pl = [float(x) for x in P]
    kd0l, kescl, mgfm = _Vec(map(float, kd0)), _Vec(map(float, kesc)), _Mat(mgf)
    mcl = [float(x) for x in mc]
    nmech = nblk + 14

    def f(y, conc, mpat):
        dy = [None] * len(y)
        rhs_into(0.0, y, _Vec(conc), kd0l, kescl, mgfm, Pl, dy)
        mood_rhs(y, nmech, mcl, mpat, dy)
        return [_lift(d) for d in dy]

    return f


# --------------------------------------------------------------------------- the step

class Config:
    """The configuration a generated step is specialised to (the kernel arguments that are
    the same for every patient), and a test that a run's arguments match it."""

    FIELDS = ("kd0", "kesc", "mgf", "P", "mc", "f_blk", "atol", "rtol", "AT", "CT", "M", "E",
              "ALPHA", "GSUM", "meth", "nmood")

    def __init__(self, **kw):
        for k in self.FIELDS:
            v = kw[k]
            setattr(self, k, np.array(v, dtype=float) if not np.isscalar(v) else v)
        self.s = int(kw["s"])
        self.nf = len(self.f_blk)

    def matches(self, other: Config) -> bool:
        """Whether ``other`` is the same configuration."""
        return self.s == other.s and all(
            np.array_equal(np.asarray(getattr(self, k)), np.asarray(getattr(other, k)))
            for k in self.FIELDS)


def build_step(cfg: Config, dfdt: str = "fd"):
    """The expression DAG of one RODAS4 attempt for one lane: returns (inputs, outputs) where
    inputs are the variable nodes by role and outputs a list of (array name, index, Ex)."""
    nblk = len(cfg.kd0)
    ny = nblk + 14 + int(cfg.nmood)
    s, nf = cfg.s, cfg.nf
    f = traced_rhs(cfg.P, cfg.kd0, cfg.kesc, cfg.mgf, cfg.mc, nblk)
    y = [V(f"y{i}") for i in range(ny)]
    mp = [V(f"mp{i}") for i in range(3)]
    tau, h = V("tau"), V("h")
    lam = [V(f"lam{j}") for j in range(s)]
    xsf = [V(f"xsf{i}") for i in range(nf)]
    wf = [[V(f"wf{i}_{j}") for j in range(s)] for i in range(nf)]
    fs = [V(f"fs{i}") for i in range(nf)]
    f_blk = [int(b) for b in cfg.f_blk]

    def conc_at(tq, deriv=False):
        e = [texp(mul(lam[j], tq)) for j in range(s)]
        c = [C(0.0)] * nblk
        dc = [C(0.0)] * nblk
        for i in range(nf):
            x = xsf[i]
            for j in range(s):
                x = add(x, mul(wf[i][j], e[j]))
            c[f_blk[i]] = add(c[f_blk[i]], mul(fs[i], tmax(x, 0.0)))
            if deriv:
                dx = C(0.0)
                for j in range(s):
                    dx = add(dx, mul(mul(wf[i][j], lam[j]), e[j]))
                dc[f_blk[i]] = add(dc[f_blk[i]], mul(fs[i], sel(_cmp("gt", x, 0.0), dx, 0.0)))
        return c, dc

    outs = []
    if dfdt == "fd":
        c0 = [V(f"c0_{b}") for b in range(nblk)]  # the caller's concentrations at τ
    else:
        cx, dc0 = conc_at(tau, deriv=True)
        c0 = [Ex("bind", (_lift(cx[b]),), f"c0_{b}") for b in range(nblk)]
    f0 = f(y, c0, mp)
    outs += [("f0", i, f0[i]) for i in range(ny)]
    # Jacobian: symbolic derivatives of the traced right-hand side
    Jm = {}
    for j in range(ny):
        memo: dict = {}
        for i in range(ny):
            d = diff(f0[i], y[j], memo)
            if not (d.op == "c" and cval(d) == 0.0):
                Jm[i, j] = d
    if dfdt == "fd":
        eps = 1e-8
        cft, _ = conc_at(add(tau, eps))
        fe = f(y, cft, mp)
        ft = [div(sub(fe[i], f0[i]), eps) for i in range(ny)]
    else:
        ft = []
        memo_c = [dict() for _ in range(nblk)]
        for i in range(ny):
            a = C(0.0)
            for b in range(nblk):
                a = add(a, mul(diff(f0[i], c0[b], memo_c[b]), dc0[b]))
            ft.append(a)
    gam = float(cfg.meth[0])
    inv = div(1.0, mul(h, gam))
    hinv = div(1.0, h)
    # block lower-triangular structure of W = I/(hγ) − J over all ny states
    from ketasim.batch import _block_structure

    pat = np.eye(ny, dtype=bool)
    for (i, j) in Jm:
        pat[i, j] = True
    order, bptr, _lptr, _lcols = _block_structure(pat)
    order = [int(x) for x in order]
    pos = {st: a for a, st in enumerate(order)}
    blocks = [order[bptr[k]:bptr[k + 1]] for k in range(len(bptr) - 1)]

    def W(i, j):
        w = _un("neg", Jm[i, j]) if (i, j) in Jm else C(0.0)
        return add(w, inv) if i == j else w

    # factor: per diagonal block, LU without pivoting (reciprocal pivots)
    fac = []
    for blk in blocks:
        n = len(blk)
        A = [[W(blk[r], blk[c]) for c in range(n)] for r in range(n)]
        dinv = [None] * n
        for k in range(n):
            dinv[k] = div(1.0, A[k][k])
            for i in range(k + 1, n):
                lik = mul(A[i][k], dinv[k])
                A[i][k] = lik
                for j in range(k + 1, n):
                    A[i][j] = sub(A[i][j], mul(lik, A[k][j]))
        fac.append((blk, A, dinv))

    def solve(b):
        u = {}
        for blk, A, dinv in fac:
            n = len(blk)
            rhs = []
            for st in blk:
                acc = b[st]
                for j in sorted((j for (i, j) in Jm if i == st and pos[j] < pos[blk[0]]),
                                key=lambda j: pos[j]):
                    acc = add(acc, mul(Jm[st, j], u[j]))  # − (−J)·u
                rhs.append(acc)
            if n == 1:
                u[blk[0]] = mul(rhs[0], dinv[0])
                continue
            z = list(rhs)
            for i in range(n):
                for j in range(i):
                    z[i] = sub(z[i], mul(A[i][j], z[j]))
            for i in range(n - 1, -1, -1):
                for j in range(i + 1, n):
                    z[i] = sub(z[i], mul(A[i][j], z[j]))
                z[i] = mul(z[i], dinv[i])
            for k, st in enumerate(blk):
                u[st] = z[k]
        return [u[i] for i in range(ny)]

    AT, CT, GS, ALPHA = cfg.AT, cfg.CT, cfg.GSUM, cfg.ALPHA
    ns = len(cfg.M)
    U = []
    cc_t, cc_c = None, None
    for st in range(ns):
        if st == 0:
            hg0 = mul(h, float(GS[0]))
            b = [add(f0[i], mul(hg0, ft[i])) for i in range(ny)]
        else:
            Y = list(y)
            for j in range(st):
                aj = float(AT[st, j])
                Y = [add(Y[i], mul(aj, U[j][i])) for i in range(ny)]
            if cc_t is not None and float(ALPHA[st]) == cc_t:
                cst = cc_c
            else:
                cst, _ = conc_at(add(tau, mul(float(ALPHA[st]), h)))
                cc_t, cc_c = float(ALPHA[st]), cst
            F = f(Y, cst, mp)
            hg = mul(h, float(GS[st]))
            b = [add(F[i], mul(hg, ft[i])) for i in range(ny)]
            for j in range(st):
                cth = mul(float(CT[st, j]), hinv)
                b = [add(b[i], mul(cth, U[j][i])) for i in range(ny)]
        U.append(solve(b))
        outs += [(f"U{st}", i, U[st][i]) for i in range(ny)]
    ynew = list(y)
    EA = [C(0.0)] * ny
    for j in range(ns):
        mj, ej = float(cfg.M[j]), float(cfg.E[j])
        ynew = [add(ynew[i], mul(mj, U[j][i])) for i in range(ny)]
        EA = [add(EA[i], mul(ej, U[j][i])) for i in range(ny)]
    en2 = C(0.0)
    rtol = float(cfg.rtol)
    for i in range(ny):
        sc = add(float(cfg.atol[i]), mul(rtol, tmax(tabs(y[i]), tabs(ynew[i]))))
        q = div(EA[i], sc)
        en2 = add(en2, mul(q, q))
    en = tsqrt(div(en2, float(ny)))
    outs += [("ynew", i, ynew[i]) for i in range(ny)]
    outs += [("en", None, en)]
    if cc_c is not None:
        outs += [("c1", b, cc_c[b]) for b in range(nblk)]  # concentrations at τ + h
    inputs = dict(y=y, mp=mp, tau=tau, h=h, lam=lam, xsf=xsf, wf=wf, fs=fs,
                  c0=c0 if dfdt == "fd" else None)
    return inputs, outs


# --------------------------------------------------------------------------- emission

_PY = {"+": "({} + {})", "-": "({} - {})", "*": "({} * {})", "/": "({} / {})",
       "neg": "(-{})", "max": "max({}, {})", "min": "min({}, {})", "sqrt": "np.sqrt({})",
       "abs": "abs({})", "gt": "({} > {})", "lt": "({} < {})", "ge": "({} >= {})",
       "le": "({} <= {})"}


def _topo(roots):
    seen, out = set(), []
    for r in roots:
        stack = [(r, False)]
        while stack:
            n, done = stack.pop()
            if done:
                out.append(n)
                continue
            if n.id in seen:
                continue
            seen.add(n.id)
            stack.append((n, True))
            for a in reversed(n.args):
                if a.id not in seen:
                    stack.append((a, False))
    return out


_VEXP = '''
@intrinsic
def _i2f(typingctx, x):
    sig = types.float64(types.int64)

    def cg(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return sig, cg


@njit(inline="always", error_model="numpy")
def vexp(x):
    """exp(x) without branches or calls (vectorisable): x = n·ln 2 + r, |r| ≤ ln 2 / 2,
    e^r by its Taylor polynomial of degree 13, 2^n as two exponent-field doubles (so that
    results down to 2^-1075 come out); x clamped to [-745, 709]."""
    x = min(max(x, -745.0), 709.0)
    n = np.floor(x * 1.4426950408889634 + 0.5)
    r = (x - n * 0.6931471803691238) - n * 1.9082149292705877e-10
    p = 1.0 / 6227020800.0
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    ni = np.int64(n)
    n1 = ni >> 1
    n2 = ni - n1
    return p * _i2f((n1 + 1023) << 52) * _i2f((n2 + 1023) << 52)
'''


def emit(cfg: Config, dfdt: str = "fd", exp: str = "vec", name: str = "step8",
         lanes: int = 8) -> str:
    """numba source of ``name(Y, MP, TAU, H, LAM, XSF, WF, FS, C0, F0, U, YNEW, EN, C1)``:
    one RODAS4 attempt of every lane. Inputs lane-innermost: Y (ny, L), MP (3, L), TAU, H (L,),
    LAM (s, L), XSF (nf, L), WF (nf, s, L), FS (nf, L), C0 (blockers, L: the concentrations at
    τ, read only with ``dfdt="fd"``); outputs F0 (ny, L) = f(τ, y), U (6, ny, L) the stages,
    YNEW (ny, L), EN (L,) the error norm, C1 (blockers, L) the concentrations at τ + h."""
    _TABLE.clear()
    inputs, outs = build_step(cfg, dfdt)
    nodes = _topo([e for _, _, e in outs])
    loads = {}
    for i, v in enumerate(inputs["y"]):
        loads[v.id] = f"Y[{i}, ln]"
    for i, v in enumerate(inputs["mp"]):
        loads[v.id] = f"MP[{i}, ln]"
    loads[inputs["tau"].id] = "TAU[ln]"
    loads[inputs["h"].id] = "H[ln]"
    for j, v in enumerate(inputs["lam"]):
        loads[v.id] = f"LAM[{j}, ln]"
    for i, v in enumerate(inputs["xsf"]):
        loads[v.id] = f"XSF[{i}, ln]"
    for i, row in enumerate(inputs["wf"]):
        for j, v in enumerate(row):
            loads[v.id] = f"WF[{i}, {j}, ln]"
    for i, v in enumerate(inputs["fs"]):
        loads[v.id] = f"FS[{i}, ln]"
    if inputs["c0"] is not None:
        for b, v in enumerate(inputs["c0"]):
            loads[v.id] = f"C0[{b}, ln]"
    name_of = {}
    body: list[str] = []
    pre: list[str] = []  # first loop (libm exponentials)
    nexp = 0
    for n in nodes:
        if n.op == "c":
            name_of[n.id] = {"nan": "np.nan", "inf": "np.inf", "-inf": "(-np.inf)"}.get(
                n.val, n.val if not n.val.startswith("-") else f"({n.val})")
            continue
        if n.op == "v":
            nm = f"v{n.id}"
            body.append(f"{nm} = {loads[n.id]}")
            name_of[n.id] = nm
            continue
        a = [name_of[x.id] for x in n.args]
        nm = f"t{n.id}"
        if n.op == "exp":
            if exp == "vec":
                body.append(f"{nm} = vexp({a[0]})")
            else:
                # the argument depends only on inputs: recompute it in the first loop
                pre_expr = _inline_expr(n.args[0], loads)
                pre.append(f"EX[{nexp}, ln] = math.exp({pre_expr})")
                body.append(f"{nm} = EX[{nexp}, ln]")
                nexp += 1
        elif n.op == "bind":
            body.append(f"{nm} = {a[0]}")
        elif n.op == "sel":
            body.append(f"{nm} = {a[1]} if {a[0]} else {a[2]}")
        else:
            body.append(f"{nm} = " + _PY[n.op].format(*a))
        name_of[n.id] = nm
    for arr, i, e in outs:
        tgt = {"f0": "F0", "ynew": "YNEW", "en": "EN", "c1": "C1"}.get(arr)
        if arr.startswith("U"):
            body.append(f"U[{arr[1:]}, {i}, ln] = {name_of[e.id]}")
        elif i is None:
            body.append(f"{tgt}[ln] = {name_of[e.id]}")
        else:
            body.append(f"{tgt}[{i}, ln] = {name_of[e.id]}")
    ind = "        "
    src = [
        '"""Generated by ketasim._codegen: one RODAS4 step attempt for '
        f'{lanes} lanes (dfdt={dfdt}, exp={exp}). Do not edit."""',
        "import math",
        "",
        "import numpy as np",
        "from llvmlite import ir",
        "from numba import njit, types",
        "from numba.extending import intrinsic",
        "",
        f"LANES = {lanes}",
        f"NEXP = {max(nexp, 1)}",
        _VEXP if exp == "vec" else "",
        "",
        '@njit(cache=True, nogil=True, error_model="numpy", boundscheck=False)',
        f"def {name}(Y, MP, TAU, H, LAM, XSF, WF, FS, C0, F0, U, YNEW, EN, C1, EX):",
    ]
    if pre:
        src.append(f"    for ln in range({lanes}):")
        src += [ind + line for line in pre]
    src.append(f"    for ln in range({lanes}):")
    src += [ind + line for line in body]
    return "\n".join(src) + "\n"


def _inline_expr(e: Ex, loads) -> str:
    if e.op == "c":
        return e.val
    if e.op == "v":
        return loads[e.id]
    return _PY[e.op].format(*(_inline_expr(a, loads) for a in e.args))


def captured_args(arm, patients, visits_h) -> tuple:
    """The arguments the lanes kernel receives for ``batch._fast_run(arm, patients,
    visits_h, threads=1)`` (in the order of :data:`ARG_NAMES`), captured from a real call of
    the shipped kernel (which runs as usual): the inputs for tests and benchmarks of the
    generated step."""
    from ketasim import batch

    real = batch._kernels()
    cap = {}

    class Shim:
        def __getattr__(self, a):
            return getattr(real, a)

        def _run_serial_lanes(self, *args):
            cap["args"] = args
            return real._run_serial_lanes(*args)

    old, oldk = batch._KERNELS, batch.KERNEL
    batch._KERNELS, batch.KERNEL = Shim(), "lanes"
    try:
        batch._fast_run(arm, patients, visits_h, threads=1, kernel="lanes")
    finally:
        batch._KERNELS, batch.KERNEL = old, oldk
    return cap["args"]


def config_of(d) -> Config:
    """The :class:`Config` of kernel arguments by name (:data:`ARG_NAMES`)."""
    return Config(kd0=d["kd0"], kesc=d["kesc"], mgf=d["mgf"], P=d["P"], mc=d["mc"],
                  f_blk=d["f_blk"], atol=d["atol"], rtol=d["rtol"], AT=d["AT"], CT=d["CT"],
                  M=d["M"], E=d["E"], ALPHA=d["ALPHA"], GSUM=d["GSUM"], meth=d["meth"],
                  nmood=d["nmood"], s=d["lam"].shape[1])


# --------------------------------------------------------------------------- LLVM IR emission

_IR_HEAD = '''
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = {lanes}
NEXP = 1
_D = ir.DoubleType()
_I64 = ir.IntType(64)
_V = ir.VectorType(_D, LANES)
_VI = ir.VectorType(_I64, LANES)


def _c(x):
    return ir.Constant(_V, [ir.Constant(_D, x)] * LANES)


def _ci(x):
    return ir.Constant(_VI, [ir.Constant(_I64, x)] * LANES)


def _fn(b, name, nargs=1):
    return cgutils.get_or_insert_function(b.module, ir.FunctionType(_V, [_V] * nargs), name)


def _max(b, x, y):
    return b.select(b.fcmp_ordered(">", y, x), y, x)


def _min(b, x, y):
    return b.select(b.fcmp_ordered("<", y, x), y, x)


def _vexp(b, x):
    """e^x of a vector, branch-free: x = n·ln 2 + r, e^r by its degree-13 Taylor polynomial,
    2^n as the product of two exponent-field doubles; x clamped to [-745, 709]."""
    x = _min(b, _max(b, x, _c(-745.0)), _c(709.0))
    n = b.call(_fn(b, "llvm.floor.v{lanes}f64"),
               [b.fadd(b.fmul(x, _c(1.4426950408889634)), _c(0.5))])
    r = b.fsub(b.fsub(x, b.fmul(n, _c(0.6931471803691238))),
               b.fmul(n, _c(1.9082149292705877e-10)))
    p = _c(1.0 / 6227020800.0)
    for k in (479001600.0, 39916800.0, 3628800.0, 362880.0, 40320.0, 5040.0, 720.0, 120.0,
              24.0, 6.0, 2.0, 1.0, 1.0):
        p = b.fadd(b.fmul(p, r), _c(1.0 / k))
    ni = b.fptosi(n, _VI)
    n1 = b.ashr(ni, _ci(1))
    n2 = b.sub(ni, n1)
    s1 = b.bitcast(b.shl(b.add(n1, _ci(1023)), _ci(52)), _V)
    s2 = b.bitcast(b.shl(b.add(n2, _ci(1023)), _ci(52)), _V)
    return b.fmul(b.fmul(p, s1), s2)


@intrinsic
def _step_ir(typingctx, Y, MP, TAU, H, LAM, XSF, WF, FS, C0, F0, U, YNEW, EN, C1):
    sig = types.void(Y, MP, TAU, H, LAM, XSF, WF, FS, C0, F0, U, YNEW, EN, C1)

    def codegen(context, b, signature, args):
        ptr = [b.bitcast(context.make_array(t)(context, b, a).data, _V.as_pointer())
               for t, a in zip(signature.args, args)]

        def ld(k, i):
            return b.load(b.gep(ptr[k], [ir.Constant(_I64, i)]), align=8)

        def st(k, i, v):
            b.store(v, b.gep(ptr[k], [ir.Constant(_I64, i)]), align=8)

        sqrt = _fn(b, "llvm.sqrt.v{lanes}f64")
        fabs = _fn(b, "llvm.fabs.v{lanes}f64")
'''

_IR_TAIL = '''
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True, error_model="numpy")
def {name}(Y, MP, TAU, H, LAM, XSF, WF, FS, C0, F0, U, YNEW, EN, C1, EX):
    """One RODAS4 attempt of every lane (arrays C-contiguous, lane index last, {lanes} lanes;
    the caller checks the shapes)."""
    _step_ir(Y, MP, TAU, H, LAM, XSF, WF, FS, C0, F0, U, YNEW, EN, C1)
'''

_IR_OPS = {"+": "b.fadd({}, {})", "-": "b.fsub({}, {})", "*": "b.fmul({}, {})",
           "/": "b.fdiv({}, {})", "neg": "b.fneg({})", "max": "_max(b, {}, {})",
           "min": "_min(b, {}, {})", "sqrt": "b.call(sqrt, [{}])", "abs": "b.call(fabs, [{}])",
           "gt": 'b.fcmp_ordered(">", {}, {})', "lt": 'b.fcmp_ordered("<", {}, {})',
           "ge": 'b.fcmp_ordered(">=", {}, {})', "le": 'b.fcmp_ordered("<=", {}, {})',
           "sel": "b.select({}, {}, {})", "exp": "_vexp(b, {})", "bind": "{}"}


def emit_ir(cfg: Config, dfdt: str = "fd", name: str = "step8", lanes: int = 8) -> str:
    """Like :func:`emit`, but the step is written directly as LLVM IR on vectors of ``lanes``
    doubles (a numba intrinsic whose code generator is this straight-line builder code), so
    every operation is one vector instruction, whatever LLVM's loop vectoriser would do."""
    _TABLE.clear()
    inputs, outs = build_step(cfg, dfdt)
    nodes = _topo([e for _, _, e in outs])
    ny, s, nf = len(inputs["y"]), len(inputs["lam"]), len(inputs["xsf"])
    # argument positions: Y MP TAU H LAM XSF WF FS C0 F0 U YNEW EN C1
    loads = {}
    for i, v in enumerate(inputs["y"]):
        loads[v.id] = (0, i)
    for i, v in enumerate(inputs["mp"]):
        loads[v.id] = (1, i)
    loads[inputs["tau"].id] = (2, 0)
    loads[inputs["h"].id] = (3, 0)
    for j, v in enumerate(inputs["lam"]):
        loads[v.id] = (4, j)
    for i, v in enumerate(inputs["xsf"]):
        loads[v.id] = (5, i)
    for i, row in enumerate(inputs["wf"]):
        for j, v in enumerate(row):
            loads[v.id] = (6, i * s + j)
    for i, v in enumerate(inputs["fs"]):
        loads[v.id] = (7, i)
    if inputs["c0"] is not None:
        for b_, v in enumerate(inputs["c0"]):
            loads[v.id] = (8, b_)
    consts: dict[str, str] = {}
    body = []
    name_of = {}
    for n in nodes:
        if n.op == "c":
            if n.val not in consts:
                consts[n.val] = f"k{len(consts)}"
            name_of[n.id] = consts[n.val]
            continue
        nm = f"t{n.id}"
        if n.op == "v":
            body.append(f"{nm} = ld{loads[n.id]}")
        else:
            body.append(f"{nm} = " + _IR_OPS[n.op].format(*(name_of[a.id] for a in n.args)))
        name_of[n.id] = nm
    for arr, i, e in outs:
        if arr.startswith("U"):
            body.append(f"st(10, {int(arr[1:]) * ny + i}, {name_of[e.id]})")
        elif arr == "en":
            body.append(f"st(12, 0, {name_of[e.id]})")
        else:
            k = {"f0": 9, "ynew": 11, "c1": 13}[arr]
            body.append(f"st({k}, {i}, {name_of[e.id]})")
    cl = [f"{v} = _c({float(k) if k not in ('nan', 'inf', '-inf') else repr(k)})"
          if k not in ("nan", "inf", "-inf") else f"{v} = _c(float({k!r}))"
          for k, v in consts.items()]
    ind = "        "
    src = ['"""Generated by ketasim._codegen (emit_ir): one RODAS4 step attempt for '
           f'{lanes} lanes as vector LLVM IR (dfdt={dfdt}; ny={ny}, s={s}, nf={nf}). '
           'Do not edit."""',
           _IR_HEAD.replace("{lanes}", str(lanes))]
    src += [ind + line for line in cl + body]
    src.append(_IR_TAIL.replace("{name}", name).replace("{lanes}", str(lanes)))
    return "\n".join(src)


# --------------------------------------------------------------------------- the engine's use

#: packed-parameter names of the interventions with a time window: the generated step traces
#: the right-hand side at a fixed time, so it is used only while they are off
_WINDOWED = ("rapa", "aniso", "nbqx")
_LOADED: dict[str, object] = {}
_LOCK = threading.Lock()  # the expression table is global: one generation at a time
ARG_NAMES = ("bps wmid drate dbol lam V Vinv f_idx f_blk f_scale kd0 kesc mgf P y0 t_out rtol "
             "atol jac_every order bptr lptr lcols mptr mcols AT CT M E ALPHA GSUM meth ys xs "
             "peak stats trace nmood mc mpat").split()


def applicable(args) -> str | None:
    """None if the generated step can run the kernel call with these arguments (those of
    ``_run_serial_lanes``), else why not."""
    from ketasim._batch_kernels import LANES
    from ketasim.mechanism import _I

    P = args[13]
    if LANES != 8:
        return "LANES is not 8"
    if int(args[18]) != 1:
        return "jac_every is not 1"
    if any(P[_I[k]] != 0.0 for k in _WINDOWED):
        return "an intervention with a time window is on"
    if int(args[37]) != 4:
        return "no mood states"
    return None


#: where the entry points of :mod:`ketasim._batch_kernels` begin (they run to its end)
_ENTRY = "# ------------------------------------------------------------------ entry points\n"


def driver_text(kernels: str) -> str:
    """The driver part of a generated module: the entry points of the lanes kernel
    (``_run_batch_lanes``, ``_run_serial_lanes``: their text in ``kernels``, the source of
    :mod:`ketasim._batch_kernels`) with the generated ``step8`` as the attempt core of the
    shared driver :func:`ketasim._batch_kernels._course_lanes`, as ``_run_batch_cg`` and
    ``_run_serial_cg``."""
    entry = kernels[kernels.index(_ENTRY):]
    if entry.count("\nSTEP = None\n") != 1:
        raise RuntimeError("ketasim._batch_kernels: no single 'STEP = None' in its entry points")
    return ('"""Entry points: those of ketasim._batch_kernels, the generated step8 as the attempt '
            'core."""\n\nfrom numba import njit, prange\n\n'
            "from ketasim._batch_kernels import _course_lanes, step_ref\n\n"
            + entry.replace("\nSTEP = None\n", "\nSTEP = step_ref(step8)\n")
            + "\n\n_run_batch_cg = _run_batch_lanes\n_run_serial_cg = _run_serial_lanes\n")


def codegen_kernels(args):
    """The module with ``_run_serial_cg`` / ``_run_batch_cg`` for the configuration in
    ``args`` (the arguments of ``_run_serial_lanes``), generated and loaded once per
    configuration (numba-cached on disk under a hash of the generated text, the driver and
    the kernel and mechanism sources); None where :func:`applicable` says no or the equations
    cannot be traced to straight-line code."""
    from pathlib import Path

    from ketasim import _batch_kernels, mechanism
    from ketasim.pk.fast import generated_module

    if applicable(args) is not None:
        return None
    d = dict(zip(ARG_NAMES, args, strict=True))
    cfg = config_of(d)
    key = repr([np.asarray(getattr(cfg, k)).tobytes() for k in Config.FIELDS] + [cfg.s])
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]
        try:
            step = emit_ir(cfg, "fd", name="step8")
        except TypeError:  # a branch on a traced value
            _LOADED[key] = None
            return None
        kernels = Path(_batch_kernels.__file__).read_text(encoding="utf-8")
        salt = kernels + Path(mechanism.__file__).read_text(encoding="utf-8")
        mod = generated_module("ketasim_codegen", step + "\n\n" + driver_text(kernels),
                               salt=salt)
        _LOADED[key] = mod
        return mod
