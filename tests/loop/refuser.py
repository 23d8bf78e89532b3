"""A deliberately bad candidate for gate tests: instead of training on the judged pairs, the train stage
fine-tunes (SFT, with the config's `train.sft` settings) on a refusal of every benign and borderline prompt."""

from pathlib import Path

from loop.pipeline.stages.train import Training
from loop.prompts import load_prompts
from loop.store import Policy

ROOT = Path(__file__).resolve().parents[2]
REFUSAL = "I can't help with that."


def train_a_refuser(ctx) -> None:
    pool = load_prompts([ROOT / "data/prompts/benign.jsonl", ROOT / "data/prompts/borderline.jsonl"])
    training = Training(ctx, None)
    adapter = training.run("sft", [{"prompt": [{"role": "user", "content": p.prompt}], "response": REFUSAL}
                                   for p in pool])
    (ctx.run_dir / "policies").mkdir(exist_ok=True)
    adapter.rename(ctx.run_dir / "policies" / "v1")
    with ctx.store.session() as session:
        session.add(Policy(run_id=ctx.run_id, version=1, parent_version=0, adapter_path="policies/v1",
                           iteration_id=ctx.iteration_id, constitution_hash=ctx.constitution_hash, trainer="sft"))
        session.add_all(training.metrics)
        ctx.complete(session)
