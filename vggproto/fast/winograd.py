"""Winograd minimal filtering F(m×m, 3×3) for stride-1 3×3 convolutions, built from batched matrix products.

Why: VGG spends >99 % of its convolution time in stride-1 3×3 convolutions.  F(m, r) computes m outputs of an
r-tap correlation with m + r − 1 multiplications instead of m·r, so the 2-D nest F(4×4, 3×3) needs 36 products per
16 outputs instead of 144 — a 4× cut in the dominant (channel-reducing) stage.  With α = m + 2 (Lavin & Gray 2016):

    Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A       per α×α input tile d, per 3×3 filter g

and, summed over input channels, the ⊙ stage becomes α² independent GEMMs ``U[ξ] (K×C) @ V[ξ] (C×tiles)``.
The filter transform ``U = G g Gᵀ`` is done once (:class:`WinogradConv`); the input and output transforms are
one GEMM each with the Kronecker products ``Bᵀ⊗Bᵀ`` (α²×α²) and ``Aᵀ⊗Aᵀ`` (m²×α²) over all tiles.

The matrices are derived exactly (``fractions.Fraction``) from the Toom-Cook interpolation points 0, ±1, ±2,
±1/2, …, ∞, so the same code gives F(2,3), F(4,3) and F(6,3).  Numerical error grows with m (the points grow):
see docs/notes/perf.md for the measured float32 error against ``F.conv2d``.
"""
from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

import torch
import torch.nn.functional as F

from vggproto.caffe.shapes import conv_output_size

#: Interpolation points in the order they are taken (∞ is always added last).
_POINTS = (Fraction(0), Fraction(1), Fraction(-1), Fraction(2), Fraction(-2), Fraction(1, 2), Fraction(-1, 2),
           Fraction(3), Fraction(-3), Fraction(1, 3), Fraction(-1, 3))
SUPPORTED_TILES = (2, 4, 6)


def _poly_mul(a: list[Fraction], b: list[Fraction]) -> list[Fraction]:
    out = [Fraction(0)] * (len(a) + len(b) - 1)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            out[i + j] += x * y
    return out


@lru_cache(maxsize=None)
def winograd_matrices(m: int, r: int = 3) -> tuple[list[list[Fraction]], list[list[Fraction]],
                                                   list[list[Fraction]]]:
    """Exact (Aᵀ, G, Bᵀ) of F(m, r): Aᵀ is m×α, G is α×r, Bᵀ is α×α, with α = m + r − 1.

    Correlation is the transpose of the Toom-Cook convolution s = V⁻¹((V_r g) ⊙ (V_m h)) evaluated at α
    points (the last one ∞): Aᵀ = V_mᵀ, G = V_r, Bᵀ = V⁻ᵀ, whose row j is the Lagrange polynomial of point j.
    The Lagrange denominators are moved from Bᵀ into G so that Bᵀ has small integer entries (Lavin's form).
    """
    alpha = m + r - 1
    if m < 1 or r < 1 or alpha - 1 > len(_POINTS):
        raise ValueError(f"F({m},{r}) needs {alpha - 1} finite points; at most {len(_POINTS)} are defined")
    pts = _POINTS[:alpha - 1]
    at = [[p ** i for p in pts] + [Fraction(1 if i == m - 1 else 0)] for i in range(m)]
    g_rows, bt_rows = [], []
    for j, p in enumerate(pts):
        others = [q for i, q in enumerate(pts) if i != j]
        denom = Fraction(1)
        poly = [Fraction(1)]
        for q in others:
            denom *= p - q
            poly = _poly_mul(poly, [-q, Fraction(1)])
        bt_rows.append(poly + [Fraction(0)])   # Lagrange polynomial × denom, degree α−2 (no x^(α−1) term)
        g_rows.append([p ** k / denom for k in range(r)])
    full = [Fraction(1)]
    for q in pts:
        full = _poly_mul(full, [-q, Fraction(1)])
    bt_rows.append(full)                       # M(x) = Π (x − p_j): the ∞ point's row
    g_rows.append([Fraction(1 if k == r - 1 else 0) for k in range(r)])
    return at, g_rows, bt_rows


@lru_cache(maxsize=None)
def _kron_matrices(m: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CPU tensors (Aᵀ⊗Aᵀ, G⊗G, Bᵀ⊗Bᵀ) in ``dtype`` (built in float64, rounded once)."""
    at, g, bt = (torch.tensor([[float(v) for v in row] for row in mat], dtype=torch.float64)
                 for mat in winograd_matrices(m))
    return tuple(torch.kron(a, a).to(dtype) for a in (at, g, bt))


def transform_weights(weight: torch.Tensor, m: int = 4) -> torch.Tensor:
    """``U = G g Gᵀ`` for every (K, C, 3, 3) filter, laid out (α², K, C) for the batched GEMM stage."""
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"expected (K, C, 3, 3) weights, got {tuple(weight.shape)}")
    _, kg, _ = _kron_matrices(m, torch.float64)
    k, c = weight.shape[:2]
    u = kg.to(weight.device) @ weight.detach().to(torch.float64).reshape(k * c, 9).T   # (α², K·C)
    return u.reshape(-1, k, c).to(weight.dtype).contiguous()


def _transform_input(x: torch.Tensor, m: int, pad: tuple[int, int], tiles: tuple[int, int]) -> torch.Tensor:
    """``V = Bᵀ d B`` of every α×α tile (stride m) of the zero-padded input, as (α², C, N·th·tw).

    The tiling and the transform are one strided convolution of each channel with the α² basis images
    ``(Bᵀ⊗Bᵀ)`` reshaped to α×α (the library's direct convolution reads the overlapping tiles in place, which
    is about twice as fast as materialising them and multiplying by the Kronecker matrix)."""
    alpha = m + 2
    (ph, pw), (th, tw) = pad, tiles
    n, c, h, w = x.shape
    xp = F.pad(x, (pw, tw * m + 2 - w - pw, ph, th * m + 2 - h - ph))
    basis = _input_basis(m, x.dtype, x.device)
    v = F.conv2d(xp.reshape(n * c, 1, th * m + 2, tw * m + 2), basis, stride=m)    # (N·C, α², th, tw)
    v = v.view(n, c, alpha * alpha, th * tw)
    if n == 1:
        return v[0].transpose(0, 1)                   # a strided view: the batched GEMM reads it as it is
    return v.permute(2, 1, 0, 3).reshape(alpha * alpha, c, n * th * tw)


def _input_basis(m: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    _, _, kb = _kron_matrices(m, dtype)
    alpha = m + 2
    return kb.reshape(alpha * alpha, 1, alpha, alpha).to(device)


def winograd_conv2d(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None = None, *,
                    pad: tuple[int, int] = (1, 1), m: int = 4, relu: bool = False) -> torch.Tensor:
    """Stride-1, dilation-1, ungrouped 3×3 cross-correlation of ``x`` (N, C, H, W) with pre-transformed
    filters ``u = transform_weights(w, m)``, optional bias and fused ReLU.  Any H, W (edge tiles are padded
    with zeros and the surplus outputs cropped)."""
    alpha = m + 2
    n, c, h, w = x.shape
    a2, k, cu = u.shape
    if a2 != alpha * alpha or cu != c:
        raise ValueError(f"transformed weights {tuple(u.shape)} do not match F({m},3) on {c} input channels")
    ho, wo = conv_output_size(h, 3, 1, pad[0]), conv_output_size(w, 3, 1, pad[1])
    th, tw = -(-ho // m), -(-wo // m)
    v = _transform_input(x, m, pad, (th, tw))                    # (α², C, T)
    mm = torch.bmm(u, v)                                          # (α², K, T): the channel reduction
    if bias is not None:
        # Aᵀ⊗Aᵀ maps the point-1 × point-1 component to all ones: a bias there is a bias on every output
        one = _POINT_ONE_INDEX * alpha + _POINT_ONE_INDEX
        mm[one] += bias.to(mm.dtype).view(k, 1)
    ka = _kron_matrices(m, x.dtype)[0].to(x.device)
    y = (ka @ mm.view(a2, k * n * th * tw)).view(m, m, k, n, th, tw)
    y = y.permute(3, 2, 4, 0, 5, 1)                              # (N, K, th, m, tw, m)
    if torch.compiler.is_compiling():   # inductor fuses the ReLU into the layout copy by itself
        out = (torch.relu(y) if relu else y).contiguous()
    else:                               # eager: one pass writes the NCHW layout and applies the ReLU
        out = torch.empty((n, k, th, m, tw, m), dtype=x.dtype, device=x.device)
        if relu:
            torch.clamp(y, min=0, out=out)
        else:
            out.copy_(y)
    out = out.view(n, k, th * m, tw * m)
    if th * m != ho or tw * m != wo:
        out = out[:, :, :ho, :wo].contiguous()
    return out


#: Index of the interpolation point 1 (column of Aᵀ that is all ones).
_POINT_ONE_INDEX = 1
