"""Random GPTQ layers (packed as AutoGPTQ packs them) for the kernel tests and the GPU suite."""

from __future__ import annotations

import torch

from kernels import gptq_torch


def random_layer(in_f: int, out_f: int, bits: int, group: int, act_order: bool, *, zero_offset: int = 1,
                 device: str = "cpu", seed: int = 0) -> gptq_torch.GPTQTensors:
    generator = torch.Generator().manual_seed(seed)
    n_groups = 1 if group == -1 else -(-in_f // group)
    q = torch.randint(0, 2**bits, (in_f, out_f), generator=generator, dtype=torch.int32)
    zeros = torch.randint(zero_offset, 2**bits, (n_groups, out_f), generator=generator, dtype=torch.int32)
    scales = (torch.rand(n_groups, out_f, generator=generator) * 0.02 + 0.001).half()
    g_idx = gptq_torch.default_g_idx(in_f, group)
    if act_order:
        g_idx = g_idx[torch.randperm(in_f, generator=generator)]
    tensors = gptq_torch.GPTQTensors(gptq_torch.pack_rows(q, bits), gptq_torch.pack_cols(zeros - zero_offset, bits),
                                     scales, g_idx, bits, zero_offset)
    return gptq_torch.GPTQTensors(*(t.to(device) for t in (tensors.qweight, tensors.qzeros, tensors.scales,
                                                          tensors.g_idx)), bits, zero_offset)
