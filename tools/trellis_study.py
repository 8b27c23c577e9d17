"""Study of trellis code structures for the turbo_kv_Nb_tcq codecs (issue 11): how much of
the trellis gain survives tables small enough for a cheap SIMD lookup.

Every candidate codes a vector as N-bit symbols whose reconstruction depends on the newest
symbol and some bits of earlier ones (a trellis; as lib/codec/trellis.c, oldest bits low):
  - free k: a free table of 2^k entries read by the newest k bits of the stream at each
    symbol (a window of k bits, 2^(k - N) states; today's codecs are k = 8, 9, 8 for
    N = 4, 3, 2);
  - additive: A[s_j] + B[s_{j-1}], two tables of 2^N entries;
  - sign codes: +-M[s_j], the sign a parity of the top bits of earlier symbols (and, for
    "own", of s_j's own top bit).
The Viterbi search of the table forms is the generator's on the expanded table (any table
of the form T[h(w)] searches alike; only a fast decoder needs to know h); the sign codes
search their states of earlier top bits, two branches each, after the best magnitude of
each (top bit, sign) per coordinate.  Tables are trained as tools/gen_trellis_tables.py
trains today's: Lloyd iterations on the trellis from shuffled N(0, 1) quantiles (each entry
becomes the mean of what it reconstructed, times the sign for sign codes).

Reported per candidate: held-out mean squared error per coordinate (Gaussian vectors of
dimension 64 at norm sqrt(64), free start, no rescaling: the generator's measure), its
ratio to the Lloyd-Max quantizer of the same width and to the Gaussian bound 4^-N, the
table entries a decoder must hold, the effective trellis states (windows that differ only
in bits h and sign ignore are one state) and the encoder's work per coordinate (effective
states x 2^N branches).

    python tools/trellis_study.py [--train 3000] [--test 3000] [--iters 10] [--only 4]
                                  [--family table|sign|both] [--match NAME]

Results and what they mean for the codecs: docs/CODECS.md ("Code structures with smaller
tables"), benchmarks/results/trellis_study.md.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_trellis_tables  # noqa: E402  (the tables' own search and training data)

DIM = gen_trellis_tables.DIM
LLOYD_MAX = {2: 0.11748, 3: 0.03454, 4: 0.009497}  # N(0, 1) Lloyd-Max mse per coordinate


@dataclass
class Candidate:
    name: str
    n_bits: int
    m: float  # window symbols (k / N for a k-bit window)
    entries: int
    # window array -> (entry index array, sign array); None for additive
    build: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None
    decode: str  # what a decoder does per coordinate


def sym(w: np.ndarray, n_bits: int, m: int, age: int) -> np.ndarray:
    """Symbol `age` steps before the newest (0 = s_j) of windows w."""
    return (w >> ((m - 1 - age) * n_bits)) & ((1 << n_bits) - 1)


def viterbi(x: np.ndarray, table: np.ndarray, n_bits: int, m: float) -> np.ndarray:
    """Window indices (n, d) of the least-error free-start path for each row of x (the
    generator's search, in float32)."""
    return gen_trellis_tables.viterbi(x, table, n_bits, m, dtype=np.float32)


def samples(rng: np.random.Generator, n: int) -> np.ndarray:
    return gen_trellis_tables.samples(rng, n, dtype=np.float32)


def effective_states(table: np.ndarray, n_bits: int, m: float) -> int:
    """States that differ in what they reconstruct over the next symbols (the windows of
    those steps still hold bits of the state); table: a generic instance."""
    P, k = int(round((m - 1) * n_bits)), 1 << n_bits
    steps = -(-P // n_bits)
    if (1 << P) * k ** steps > 1 << 22:  # too many to compare: report all states
        return 1 << P
    grids = np.meshgrid(np.arange(1 << P), *[np.arange(k)] * steps, indexing="ij")
    cur, vals = grids[0], []
    for t in range(steps):
        w = cur | (grids[t + 1] << P)
        vals.append(table[w])
        cur = w >> n_bits
    sig = np.stack(vals, -1).reshape(1 << P, -1)
    return len(np.unique(np.round(sig, 9), axis=0))


def train(c: Candidate, n_train: int, n_test: int, iters: int, log) -> dict:
    n_bits, m = c.n_bits, c.m
    L = int(round(n_bits * m))
    w = np.arange(1 << L)
    nd = NormalDist()
    rng = np.random.default_rng(1000 + n_bits)
    if c.build is not None:
        h, sg = c.build(w)
        half = bool(np.any(sg < 0))  # sign codes: magnitudes from |N(0, 1)| quantiles
        if half:
            q = np.array([nd.inv_cdf(0.5 + 0.5 * (i + 0.5) / c.entries) for i in range(c.entries)])
        else:
            q = np.array([nd.inv_cdf((i + 0.5) / c.entries) for i in range(c.entries)])
        T = q[rng.permutation(c.entries)]
        full = lambda T: sg * T[h]  # noqa: E731
    else:  # additive: A[s_j] + B[s_{j-1}]
        k = 1 << n_bits
        sj, sj1 = sym(w, n_bits, m, 0), sym(w, n_bits, m, 1)
        qa = np.array([nd.inv_cdf((i + 0.5) / k) for i in range(k)]) * 0.97
        A = qa[rng.permutation(k)]
        B = 0.12 * np.array([nd.inv_cdf((i + 0.5) / k) for i in range(k)])[rng.permutation(k)]
        T = np.concatenate([A, B])
        full = lambda T: T[:k][sj] + T[k:][sj1]  # noqa: E731
    data_rng = np.random.default_rng(2000 + n_bits)
    for it in range(iters):
        x = samples(data_rng, n_train)
        idx = viterbi(x, full(T), n_bits, m)
        xi, wi = x.ravel().astype(np.float64), idx.ravel()
        if c.build is not None:
            e = h[wi]
            sums = np.bincount(e, sg[wi] * xi, minlength=c.entries)
            cnt = np.bincount(e, minlength=c.entries)
            T = np.where(cnt > 0, sums / np.maximum(cnt, 1), T)
        else:
            a, b = sj[wi], sj1[wi]
            for _ in range(3):  # alternate the two tables (least squares)
                A = np.bincount(a, xi - T[k:][b], minlength=k) / np.maximum(
                    np.bincount(a, minlength=k), 1)
                T = np.concatenate([A, T[k:]])
                B = np.bincount(b, xi - T[:k][a], minlength=k) / np.maximum(
                    np.bincount(b, minlength=k), 1)
                T = np.concatenate([T[:k], B])
        log(f"  {c.name} iteration {it}: training mse {np.mean((x - full(T)[idx]) ** 2):.5f}")
    x = samples(np.random.default_rng(3000 + n_bits), n_test)
    tab = full(T)
    mse = float(np.mean((x - tab[viterbi(x, tab, n_bits, m)]) ** 2))
    generic = full(T + 1e-3 * np.random.default_rng(7).standard_normal(T.shape))
    eff = effective_states(generic, n_bits, m)
    return {"mse": mse, "T": T, "eff_states": eff}


def candidates() -> list[Candidate]:
    out: list[Candidate] = []
    # free tables on windows of k bits (the newest k bits of the stream at each symbol):
    # 2^(k - N) states; today's codecs are k = mN
    today = {4: 8, 3: 9, 2: 8}
    for n_bits, ks in [(4, [9, 8, 7, 6, 5]), (3, [10, 9, 8, 7, 6]), (2, [10, 9, 8, 7, 6])]:
        for k in ks:
            out.append(Candidate(
                f"{n_bits}b free k={k}" + (" (today)" if k == today[n_bits] else ""), n_bits,
                k / n_bits, 1 << k, lambda w: (w, np.ones(w.shape)),
                f"{1 << k}-entry table by the newest {k} bits"))
    for n_bits in (4, 3, 2):
        out.append(Candidate(f"{n_bits}b additive (m=2)", n_bits, 2, 2 << n_bits, None,
                             "A[s_j] + B[s_j-1], two tables"))
    return out


# ---- sign codes: value_j = (-1)^sigma_j * M[s_j] -------------------------------------------
#
# sigma_j = u_j xor (the u of some earlier symbols), u = the top bit of a symbol.  The lags
# may differ between even and odd coordinates (a byte holds coordinates 2i and 2i + 1 at
# 4 bits, and a rule that reads the same bit of the byte for both is cheaper to decode).
# Only the u bits connect coordinates, so the search runs over states of the last D u's
# with 2 branches, after the best magnitude of each (u, sign) per coordinate.


@dataclass
class SignCode:
    name: str
    n_bits: int
    lags: tuple[tuple[int, ...], tuple[int, ...]]  # (even j, odd j): earlier u's in sigma_j
    decode: str
    own: bool = False  # sigma_j also takes u_j (then M >= 0 magnitudes, else M signed)


def sign_best(x: np.ndarray, M: np.ndarray, n_bits: int):
    """Per coordinate and (u, sign): the least error and the symbol reaching it."""
    k = 1 << n_bits
    half = k // 2
    out_e = np.empty(x.shape + (2, 2))
    out_s = np.empty(x.shape + (2, 2), dtype=np.int64)
    for u in range(2):
        syms = np.arange(u * half, (u + 1) * half)
        for sg in range(2):
            v = (1 - 2 * sg) * M[syms]
            e = (x[..., None] - v) ** 2
            a = np.argmin(e, axis=-1)
            out_e[..., u, sg] = np.take_along_axis(e, a[..., None], -1)[..., 0]
            out_s[..., u, sg] = syms[a]
    return out_e, out_s


def sign_viterbi(x: np.ndarray, M: np.ndarray, c: SignCode):
    """(symbols, signs) of the least-error path; start state 0 (earlier u's are 0)."""
    n, d = x.shape
    D = max(max(c.lags[0], default=1), max(c.lags[1], default=1))
    S = 1 << D  # state: u_{j-1} in bit 0, u_{j-2} in bit 1, ...
    e, sy = sign_best(x, M, c.n_bits)
    cost = np.full((n, S), np.inf)
    cost[:, 0] = 0.0
    st = np.arange(S)
    back = np.empty((d, n, S), dtype=np.int8)
    for j in range(d):
        par = np.zeros(S, dtype=np.int64)
        for lag in c.lags[j % 2]:
            par ^= (st >> (lag - 1)) & 1
        own = 1 if c.own else 0
        new = np.full((n, S), np.inf)
        arg = np.zeros((n, S), dtype=np.int8)
        for u in range(2):
            sg = par ^ (u * own)  # per old state
            cand = cost + e[:, j, u, :][:, sg]  # (n, S old)
            ns = ((st << 1) | u) & (S - 1)
            # each new state has two predecessors (the dropped top bit): take the min
            for old_top in range(2):
                olds = st[(st >> (D - 1)) == old_top] if D > 0 else st
                tgt = ns[olds]
                better = cand[:, olds] < new[:, tgt]
                new[:, tgt] = np.where(better, cand[:, olds], new[:, tgt])
                arg[:, tgt] = np.where(better, olds[None, :], arg[:, tgt])
        cost = new
        back[j] = arg
    s = np.argmin(cost, axis=1)
    syms = np.empty((n, d), dtype=np.int64)
    signs = np.empty((n, d), dtype=np.int64)
    rows = np.arange(n)
    for j in range(d - 1, -1, -1):
        u = s & 1
        old = back[j][rows, s].astype(np.int64)
        par = np.zeros(n, dtype=np.int64)
        for lag in c.lags[j % 2]:
            par ^= (old >> (lag - 1)) & 1
        sg = par ^ (u if c.own else 0)
        syms[:, j] = sy[rows, j, u, sg]
        signs[:, j] = sg
        s = old
    return syms, signs


def train_sign(c: SignCode, n_train: int, n_test: int, iters: int, log) -> dict:
    k = 1 << c.n_bits
    nd = NormalDist()
    # magnitudes: the |N(0,1)| quantiles, interleaved between the two u halves
    if c.own:  # magnitudes: |N(0,1)| quantiles, interleaved between the two u halves
        q = np.array([nd.inv_cdf(0.5 + 0.5 * (i + 0.5) / k) for i in range(k)])
    else:  # signed levels, interleaved between the u halves, off-centre (M and -M differ)
        q = np.array([nd.inv_cdf((i + 0.75) / (k + 0.5)) for i in range(k)])
    M = np.concatenate([q[0::2], q[1::2]])
    data_rng = np.random.default_rng(2000 + c.n_bits)
    for it in range(iters):
        x = samples(data_rng, n_train).astype(np.float64)
        syms, signs = sign_viterbi(x, M, c)
        v = (1 - 2 * signs) * x
        sums = np.bincount(syms.ravel(), v.ravel(), minlength=k)
        cnt = np.bincount(syms.ravel(), minlength=k)
        M = np.where(cnt > 0, sums / np.maximum(cnt, 1), M)
        rec = (1 - 2 * signs) * M[syms]
        log(f"  {c.name} iteration {it}: training mse {np.mean((x - rec) ** 2):.5f}")
    x = samples(np.random.default_rng(3000 + c.n_bits), n_test).astype(np.float64)
    syms, signs = sign_viterbi(x, M, c)
    mse = float(np.mean((x - (1 - 2 * signs) * M[syms]) ** 2))
    D = max(max(c.lags[0], default=1), max(c.lags[1], default=1))
    return {"mse": mse, "M": M, "states": 1 << D}


def sign_codes() -> list[SignCode]:
    out = []
    for n in (4, 3, 2):
        out += [
            SignCode(f"{n}b sign own+u(j-1)", n, ((1,), (1,)),
                     "magnitudes; sign = own u xor the previous u", own=True),
            SignCode(f"{n}b sign own+D6", n, ((1, 2, 3, 6), (1, 2, 3, 6)),
                     "magnitudes; sign = own u xor u(j-1,2,3,6)", own=True),
            SignCode(f"{n}b sign u(j-1)", n, ((1,), (1,)), "signed table, negated by u(j-1)"),
            SignCode(f"{n}b sign pair", n, ((1,), (2,)),
                     "signed table; both symbols of a pair negated by the previous pair's 2nd u"),
            SignCode(f"{n}b sign pair B12", n, ((1, 3), (2, 4)),
                     "signed table; pair negated by the 2nd u of the two previous pairs"),
            SignCode(f"{n}b sign pair B123", n, ((1, 3, 5), (2, 4, 6)),
                     "signed table; pair negated by the 2nd u of the three previous pairs"),
            SignCode(f"{n}b sign D2", n, ((1, 2), (1, 2)), "signed table, negated by u(j-1, j-2)"),
            SignCode(f"{n}b sign D3", n, ((1, 3), (1, 3)), "signed table, negated by u(j-1, j-3)"),
            SignCode(f"{n}b sign D6", n, ((1, 2, 3, 6), (1, 2, 3, 6)),
                     "signed table, negated by u(j-1,2,3,6)"),
        ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--test", type=int, default=3000)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--only", type=int, default=0, help="one width N")
    ap.add_argument("--match", default="", help="only candidates whose name contains this")
    ap.add_argument("--family", default="both", choices=["table", "sign", "both"])
    args = ap.parse_args()
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    print("| bits | structure | entries | eff. states | encode work / coord | mse | "
          "/ Lloyd-Max | / 4^-N | decoder |")
    print("|---|---|---|---|---|---|---|---|---|")
    if args.family in ("sign", "both"):
        for c in sign_codes():
            if (args.only and c.n_bits != args.only) or args.match not in c.name:
                continue
            r = train_sign(c, args.train, args.test, args.iters, log)
            log(f"  {c.name}: M = {np.round(r['M'], 3).tolist()}")
            print(f"| {c.n_bits} | {c.name} | {1 << c.n_bits} (+-) | {r['states']} | "
                  f"{2 * r['states']} + {2 << c.n_bits} | {r['mse']:.5f} | "
                  f"{r['mse'] / LLOYD_MAX[c.n_bits]:.3f} | {r['mse'] * 4 ** c.n_bits:.2f} | "
                  f"{c.decode} |", flush=True)
    if args.family == "sign":
        return
    for c in candidates():
        if (args.only and c.n_bits != args.only) or args.match not in c.name:
            continue
        r = train(c, args.train, args.test, args.iters, log)
        eff = r["eff_states"]
        print(f"| {c.n_bits} | {c.name} | {c.entries} | {eff} | {eff << c.n_bits} | "
              f"{r['mse']:.5f} | {r['mse'] / LLOYD_MAX[c.n_bits]:.3f} | "
              f"{r['mse'] * 4 ** c.n_bits:.2f} | {c.decode} |", flush=True)


if __name__ == "__main__":
    main()
