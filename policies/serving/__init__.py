"""Serving: how the rest of cai talks to a model.

This package's own namespace is the torch-free `Generator` protocol; the backends live in submodules
(`transformers_backend`, `vllm_client`, with `vllm_server` and `vllm_env` for the server process), so importing
`policies.serving` never loads torch.
"""

from policies.serving.protocol import Conversation, Generator, Message, Progress, SamplingParams

__all__ = ["Conversation", "Generator", "Message", "Progress", "SamplingParams"]
