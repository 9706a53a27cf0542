"""The ML-Decoder head (``odir_core.model.model_spec.MLDecoder``) in PyTorch.

Its state_dict keys, under the head's ``head.<i>.`` (``MLDecoder.state_names``):

- ``embed.weight`` (dim, C), ``embed.bias`` (dim,): the token embedding ``relu(Linear(C, dim))``;
- ``eye_embed`` (2, dim): added to the left (row 0) and right (row 1) eye's tokens;
- ``query_embed`` (K, dim): the learned queries;
- ``attn.in_proj_weight`` (3 dim, dim), ``attn.in_proj_bias`` (3 dim,), ``attn.out_proj.weight`` (dim, dim),
  ``attn.out_proj.bias`` (dim,): ``nn.MultiheadAttention`` (rows: query, key, value projections);
- ``norm1.*``, ``norm2.*`` (dim,): the LayerNorms after the attention and after the feed-forward;
- ``ff1.weight`` (ff, dim), ``ff1.bias``, ``ff2.weight`` (dim, ff), ``ff2.bias``: the feed-forward;
- ``group_weight`` (K, dim, group), ``group_bias`` (units,): the group fully connected layer.
"""

from __future__ import annotations

import torch
from torch import nn

from odir_core.model.model_spec import MLDecoder as MLDecoderSpec


class MLDecoder(nn.Module):
    """Left and right feature maps (B, C, H, W) -> ``spec.units`` logits (B, units)."""

    def __init__(self, spec: MLDecoderSpec, channels: int):
        super().__init__()
        self.spec = spec
        self.out_features = spec.units
        self.embed = nn.Linear(channels, spec.dim)
        self.eye_embed = nn.Parameter(torch.randn(2, spec.dim) * 0.02)
        self.query_embed = nn.Parameter(torch.randn(spec.queries, spec.dim))  # nn.Embedding's init
        self.attn = nn.MultiheadAttention(spec.dim, spec.heads, dropout=spec.dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(spec.dim)
        self.ff1 = nn.Linear(spec.dim, spec.ff)
        self.ff2 = nn.Linear(spec.ff, spec.dim)
        self.norm2 = nn.LayerNorm(spec.dim)
        self.dropout = nn.Dropout(spec.dropout)  # after the attention, inside and after the feed-forward
        self.group_weight = nn.Parameter(torch.empty(spec.queries, spec.dim, spec.group))
        nn.init.xavier_normal_(self.group_weight)
        self.group_bias = nn.Parameter(torch.zeros(spec.units))

    def tokens(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """Both maps as embedded tokens, left then right, each with its eye's embedding: (B, N + M, dim)."""
        eyes = [torch.relu(self.embed(m.flatten(2).transpose(1, 2))) + self.eye_embed[i]
                for i, m in enumerate((left, right))]
        return torch.cat(eyes, dim=1)

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        tokens = self.tokens(left, right)
        queries = self.query_embed.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        attended = self.attn(queries, tokens, tokens, need_weights=False)[0]
        x = self.norm1(queries + self.dropout(attended))
        x = self.norm2(x + self.dropout(self.ff2(self.dropout(torch.relu(self.ff1(x))))))
        logits = torch.einsum("bkd,kdg->bkg", x, self.group_weight).flatten(1)
        return logits[:, : self.spec.units] + self.group_bias

