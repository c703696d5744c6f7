"""PyTorch modules for the wheels that ship state dicts only (recipe entrypoints; copied beside a recipe).

`rnet`: MTCNN's refinement net as facenet-pytorch 2.6.0 defines it (facenet_pytorch/models/mtcnn.py),
without importing facenet_pytorch (it needs torchvision). `minilm`: a BERT encoder with the parameter
names of the all-MiniLM-L6-v2 checkpoint, mean pooling over the attention mask and L2 normalization,
as sentence-transformers' modules.json for that model says.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class RNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.softmax5_1 = nn.Softmax(dim=1)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
        return self.dense5_2(x), self.softmax5_1(self.dense5_1(x))  # bbox [N, 4], prob [N, 2]


def rnet() -> nn.Module:
    return RNet().eval()


class _SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)

    def forward(self, x, bias):
        n, t, h = x.shape
        d = h // self.heads

        def split(y):
            return y.view(n, t, self.heads, d).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + bias, dim=-1)
        return (att @ v).transpose(1, 2).reshape(n, t, h)


class _Dense(nn.Module):
    def __init__(self, a: int, b: int):
        super().__init__()
        self.dense = nn.Linear(a, b)
        self.LayerNorm = nn.LayerNorm(b, eps=1e-12)


class _Attention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.self = _SelfAttention(hidden, heads)
        self.output = _Dense(hidden, hidden)


class _Intermediate(nn.Module):
    def __init__(self, a: int, b: int):
        super().__init__()
        self.dense = nn.Linear(a, b)


class _Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, inter: int):
        super().__init__()
        self.attention = _Attention(hidden, heads)
        self.intermediate = _Intermediate(hidden, inter)
        self.output = _Dense(inter, hidden)

    def forward(self, x, bias):
        a = self.attention.output
        x = a.LayerNorm(x + a.dense(self.attention.self(x, bias)))
        h = nn.functional.gelu(self.intermediate.dense(x))
        return self.output.LayerNorm(x + self.output.dense(h))


class _Embeddings(nn.Module):
    def __init__(self, vocab: int, hidden: int, positions: int):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.position_embeddings = nn.Embedding(positions, hidden)
        self.token_type_embeddings = nn.Embedding(2, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=1e-12)


class _Encoder(nn.Module):
    def __init__(self, layers: int, hidden: int, heads: int, inter: int):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(hidden, heads, inter) for _ in range(layers))


class MiniLM(nn.Module):
    """(input_ids, attention_mask) int64 [N, T] -> embedding [N, 384] (mean-pooled, unit length)."""

    def __init__(self, vocab=30522, hidden=384, layers=6, heads=12, inter=1536, positions=512):
        super().__init__()
        self.embeddings = _Embeddings(vocab, hidden, positions)
        self.encoder = _Encoder(layers, hidden, heads, inter)

    def forward(self, input_ids, attention_mask):
        e = self.embeddings
        t = input_ids.shape[1]
        pos = torch.arange(t, device=input_ids.device).unsqueeze(0)
        x = e.word_embeddings(input_ids) + e.position_embeddings(pos) + e.token_type_embeddings(torch.zeros_like(input_ids))
        x = e.LayerNorm(x)
        mask = attention_mask.to(x.dtype)
        bias = ((1.0 - mask) * -10000.0)[:, None, None, :]
        for layer in self.encoder.layer:
            x = layer(x, bias)
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)


def minilm() -> nn.Module:
    return MiniLM().eval()
