"""ZOODiP's Subspace Gradient (SG): drop the gradient's components along low-variance directions of the token's
recent trajectory (paper section 3.3, Alg. 2; diffusion_methods.md section 6.3).

Every ``tau`` steps, the last ``tau`` updated tokens ``B`` (tau x d) are standardised per feature
(``(B - mean) / std``, as sklearn's ``StandardScaler``: population std, a constant feature keeps scale 1), and
decomposed by SVD, ``B = U S V^T`` with variances ``lambda_i = S_ii^2``. With ``i*`` the first (0-based) index whose
cumulative variance ratio exceeds ``1 - nu``, the rows ``V^T[i*+1:]`` span the low-variance directions ``P``, and
each later gradient is projected as ``g <- g - g P^T P``.

Code vs paper (we follow the official code):
- the buffer is a circular list of the last ``tau`` tokens and is not cleared after a refresh (the paper clears it);
- the PCA keeps ``min(tau, d)`` components; with tau < d (SD-1.5: 128 < 768) directions outside the span are kept,
  so at most tau dimensions can be removed [RECON from code]. The zoo's d = 64 < tau = 128, so here the PCA spans the
  whole token space and the projection removes every low-variance direction, as the paper describes.
The PCA runs on standardised tokens while the projection acts on raw gradients: that is the code's choice.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class SubspaceProjector:
    """Trajectory buffer of a d-dim token and the projection it defines.

    Args:
        dim: the token's dimension d.
        tau: buffer length, and steps between refreshes.
        nu: variance fraction treated as noise (keep 1 - nu of it).
    """

    def __init__(self, dim: int, tau: int = 128, nu: float = 1e-3) -> None:
        if tau < 2 or not 0 < nu < 1:
            raise ValueError(f"subspace needs tau >= 2 and 0 < nu < 1, got tau={tau}, nu={nu}")
        self.dim, self.tau, self.nu = dim, tau, nu
        self.buffer = torch.zeros(tau, dim)
        self.count = 0  # tokens pushed so far; slot count % tau is the next to overwrite
        self.basis = torch.zeros(0, dim)  # rows: the removed (low-variance) directions

    @property
    def removed(self) -> int:
        """Dimensions the projection currently removes."""
        return self.basis.shape[0]

    def push(self, token: Tensor) -> None:
        """Record an updated token (the circular buffer overwrites the oldest)."""
        self.buffer[self.count % self.tau] = token.detach().float().reshape(-1).cpu()
        self.count += 1

    def refresh(self) -> None:
        """Recompute the removed directions from the buffer (needs at least 2 tokens)."""
        rows = self.buffer[: min(self.count, self.tau)].double()
        if len(rows) < 2:
            raise ValueError("the subspace refresh needs at least 2 recorded tokens")
        self.basis = low_variance_directions(rows, self.nu).float()

    def project(self, grad: Tensor) -> Tensor:
        """``grad - grad P^T P`` (``grad`` unchanged before the first refresh)."""
        if self.removed == 0:
            return grad
        flat = grad.reshape(-1).float()
        basis = self.basis.to(flat.device)
        return (flat - (flat @ basis.T) @ basis).to(grad.dtype).reshape(grad.shape)

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.clone(), "count": self.count, "basis": self.basis.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer, self.count, self.basis = state["buffer"].clone(), int(state["count"]), state["basis"].clone()


def low_variance_directions(rows: Tensor, nu: float) -> Tensor:
    """Rows of ``V^T`` past the first index whose cumulative variance ratio of the standardised ``rows`` > 1 - nu."""
    std = rows.std(dim=0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))  # StandardScaler leaves constant features at scale 1
    scaled = (rows - rows.mean(dim=0)) / std
    _, s, vt = torch.linalg.svd(scaled, full_matrices=False)  # PCA centres again: already centred
    ratio = torch.cumsum(s**2, 0) / (s**2).sum().clamp_min(torch.finfo(s.dtype).tiny)
    first = int(torch.nonzero(ratio > 1 - nu)[0]) if bool((ratio > 1 - nu).any()) else len(s) - 1
    return vt[first + 1:]
