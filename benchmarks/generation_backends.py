"""The transformers backend against the vLLM server on the same critique + revision + judge work.

SmolLM2-135M-Instruct; N prompts with fixed first answers; one critique → revision round (greedy, 64 new
tokens, principles drawn by the run's sampler); then the judge on 2N comparisons (both orders) of the same
answers and revisions, for both backends. The transformers backend runs first (batched), next plain HF
`generate` on the same conversations and batch size (the backend's overhead), then a vLLM server that this
script starts (or the one at --url). Tokens are counted with the same tokenizer for every backend.

Prints tokens/s and judgments/s per backend, their ratios and vLLM's prefix-cache hit rate; the last line is
machine-readable:

    speedup=<vLLM generated tokens/s ÷ transformers tokens/s> prefix_hit=<vLLM prefix-cache hit rate>

Usage: python benchmarks/generation_backends.py [--prompts 32] [--batch-size 32] [--dtype float32|bfloat16]
       [--url http://127.0.0.1:8000]
Needs the project's set-up (`make setup`); the vLLM environment is created under CAI_HOME if missing.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MAX_NEW_TOKENS, THREADS = 64, 2
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    generated_tokens: int
    generation_s: float
    judgments: int
    judge_s: float
    hit_rate: float | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.generation_s

    @property
    def judgments_per_s(self) -> float:
        return self.judgments / self.judge_s


def workload(n: int):
    from constitution import PrincipleSampler, load_constitution
    from loop.prompts import load_prompts, select_prompts

    pool = load_prompts(sorted((ROOT / "data" / "prompts").glob("*.jsonl")))
    prompts = [p.prompt for p in select_prompts(pool, n, seed=0, iteration=1)]
    return prompts, PrincipleSampler(load_constitution("default"), seed=0)


def count_tokens(tokenizer, texts: list[str]) -> int:
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)


def critique_revise_judge(generator, judge_generator, sampler, drafts, tokenizer, judged: list[str] | None = None):
    """One critique → revision round on `drafts`, then the judge on each answer against a revision (`judged`,
    default: this round's): (generated tokens, generation s, judge s, revisions)."""
    from critique.judge import Matchup, judge
    from critique.revision import critique_and_revise
    from policies.serving import SamplingParams

    started = time.perf_counter()
    chains = critique_and_revise(generator, sampler, drafts, rounds=1, params=SamplingParams(MAX_NEW_TOKENS))
    generation_s = time.perf_counter() - started
    tokens = count_tokens(tokenizer, [t for chain in chains for t in (chain[0].critique, chain[0].revision)])
    revisions = [chain[0].revision for chain in chains]
    matchups = [Matchup(d.prompt, d.response, r, sampler.sample(d.key, "judge"))
                for d, r in zip(drafts, judged or revisions, strict=True)]
    started = time.perf_counter()
    judge(judge_generator, matchups)
    return tokens, generation_s, time.perf_counter() - started, chains


def plain_generate(model, tokenizer, conversations, batch_size: int) -> tuple[int, float]:
    """HF `generate` as a user would call it: left-padded batches in input order, greedy, the model's eos."""
    import torch

    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    tokenizer.padding_side = "left"
    outputs, started = [], time.perf_counter()
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            generated = model.generate(**batch, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, top_p=None,
                                       top_k=None, temperature=None, pad_token_id=tokenizer.pad_token_id)
        outputs += tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return count_tokens(tokenizer, [o.strip() for o in outputs]), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32, help="transformers batch = vLLM concurrency")
    parser.add_argument("--judge-batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--url", help="use this running vLLM server (serving the model as smollm2-135m-instruct)")
    args = parser.parse_args()

    from critique.prompts import critique_conversation, revision_conversation
    from critique.revision import Draft
    from policies.models import DEFAULT_MODEL, load_model, resolve_model_dir
    from policies.runtime import configure_threads, quiet_model_libraries
    from policies.serving import SamplingParams
    from policies.serving.transformers_backend import TransformersGenerator
    from policies.serving.vllm_client import VllmAdmin, VllmServerGenerator
    from policies.serving.vllm_env import ensure_vllm_env
    from policies.serving.vllm_server import VllmServer, VllmServerSettings, free_port

    configure_threads(THREADS)
    quiet_model_libraries()
    home = Path(os.environ.get("CAI_HOME", "~/.cache/cai")).expanduser()
    model_dir = resolve_model_dir(DEFAULT_MODEL, home)
    model, tokenizer = load_model(model_dir, dtype=args.dtype, device="cpu")
    prompts, sampler = workload(args.prompts)
    policy = TransformersGenerator(model, tokenizer, name="hf", batch_size=args.batch_size)
    judge_hf = TransformersGenerator(model, tokenizer, name="hf", batch_size=args.judge_batch_size, use_adapter=False)
    # Fixed first answers, so both backends critique, revise and judge the same texts.
    answers = policy.generate([[{"role": "user", "content": p}] for p in prompts], SamplingParams(MAX_NEW_TOKENS))
    drafts = [Draft(key=i, prompt=p, response=a) for i, (p, a) in enumerate(zip(prompts, answers, strict=True))]

    print(f"workload: {len(prompts)} critiques + {len(prompts)} revisions (greedy, {MAX_NEW_TOKENS} new tokens), "
          f"{2 * len(prompts)} judgments (both orders); SmolLM2-135M-Instruct, {args.dtype}, {THREADS} threads, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, no GPU", flush=True)
    # Warm-up on other texts, so that vLLM's prefix cache holds nothing of the measured work beforehand.
    warm_up = [Draft(key=-1, prompt="Say hello to a new colleague.", response="Hello, and welcome!")]
    critique_revise_judge(policy, judge_hf, sampler, warm_up, tokenizer)
    tokens, gen_s, judge_s, chains = critique_revise_judge(policy, judge_hf, sampler, drafts, tokenizer)
    # The vLLM judge compares the same revisions: identical judge prompts for both backends.
    revisions = [chain[0].revision for chain in chains]
    hf = Result(tokens, gen_s, 2 * len(prompts), judge_s)
    print(f"transformers backend (batch {args.batch_size}): {hf.tokens_per_s:.1f} generated tokens/s; "
          f"judge (batch {args.judge_batch_size}, logits_to_keep=1): {hf.judgments_per_s:.2f} judgments/s", flush=True)

    conversations = [critique_conversation(d.prompt, d.response, sampler.sample(d.key, "revise", 0)) for d in drafts]
    conversations += [revision_conversation(d.prompt, d.response, c[0].critique, sampler.sample(d.key, "revise", 0))
                      for d, c in zip(drafts, chains, strict=True)]
    plain_tokens, plain_s = plain_generate(model, tokenizer, conversations, args.batch_size)
    plain = plain_tokens / plain_s
    print(f"plain HF generate (batch {args.batch_size}): {plain:.1f} tokens/s; the transformers backend runs at "
          f"{hf.tokens_per_s / plain:.2f}x of it", flush=True)
    del model, policy, judge_hf

    server = None
    url = args.url
    if url is None:
        settings = VllmServerSettings(url=f"http://127.0.0.1:{free_port()}", dtype=args.dtype, kv_cache_gib=2)
        log = Path(tempfile.mkdtemp(prefix="cai-bench-")) / "vllm.log"
        server = VllmServer.start(ensure_vllm_env(home), model_dir, served_name=DEFAULT_MODEL, settings=settings,
                                  lora_rank=16, log_path=log)
        print(f"vLLM server ready in {server.wait_ready(settings.start_timeout_s):.0f} s (log: {log})", flush=True)
        url = server.url
    try:
        served = VllmServerGenerator(url, DEFAULT_MODEL, concurrency=args.batch_size)
        admin = VllmAdmin(url)
        critique_revise_judge(served, served, sampler, warm_up, tokenizer)
        before = admin.metrics()
        tokens, gen_s, judge_s, _ = critique_revise_judge(served, served, sampler, drafts, tokenizer, revisions)
        after = admin.metrics()
    finally:
        if server is not None:
            server.stop()
    hits = after["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"]
    queries = after["vllm:prefix_cache_queries_total"] - before["vllm:prefix_cache_queries_total"]
    vllm = Result(tokens, gen_s, 2 * len(prompts), judge_s, hits / queries if queries else 0.0)
    print(f"vLLM server ({args.batch_size} concurrent requests): {vllm.tokens_per_s:.1f} generated tokens/s; "
          f"judge: {vllm.judgments_per_s:.2f} judgments/s; prefix-cache hit rate {vllm.hit_rate:.1%} "
          f"({hits:.0f} of {queries:.0f} prompt tokens)")
    print(f"generation: vLLM / transformers = {vllm.tokens_per_s / hf.tokens_per_s:.2f}x; "
          f"judge: vLLM / transformers = {vllm.judgments_per_s / hf.judgments_per_s:.2f}x")
    print(f"speedup={vllm.tokens_per_s / hf.tokens_per_s:.3f} prefix_hit={vllm.hit_rate:.3f}")


if __name__ == "__main__":
    main()
