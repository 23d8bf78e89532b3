from constitution import Constitution, PrincipleSampler
from critique.revision import Draft, critique_and_revise
from policies.serving import SamplingParams
from tests.critique.fakes import ScriptedGenerator

CONSTITUTION = Constitution.model_validate({"name": "t", "principles": [
    {"id": f"p{i}", "category": "harm", "critique_request": f"critique by p{i}",
     "revision_request": f"revise by p{i}", "comparison_question": "q?"} for i in range(3)]})


def reply(conversation):
    last = conversation[-1]["content"]
    answer = conversation[1]["content"]
    return f"critique of <{answer}>" if last.startswith("critique") else f"revised <{answer}>"


def test_rounds_chain_each_revision_into_the_next_critique():
    fake = ScriptedGenerator(reply)
    sampler = PrincipleSampler(CONSTITUTION, seed=3)
    drafts = [Draft(key=1, prompt="q1", response="a1"), Draft(key=2, prompt="q2", response="a2")]
    chains = critique_and_revise(fake, sampler, drafts, rounds=2, params=SamplingParams())
    assert [len(c) for c in chains] == [2, 2]
    first, second = chains[0]
    assert first.critique == "critique of <a1>" and first.revision == "revised <a1>"
    assert second.critique == "critique of <revised <a1>>"
    assert second.revision == "revised <revised <a1>>"
    # Each step's principle is the sampler's choice for (key, "revise", round), and its text is what was asked.
    for draft, chain in zip(drafts, chains, strict=True):
        for step in chain:
            assert step.principle_id == sampler.sample(draft.key, "revise", step.round).id
    critique_prompt = fake.generated[0]
    assert critique_prompt[-1]["content"] == f"critique by {chains[0][0].principle_id}"
    revision_prompt = fake.generated[2]
    assert revision_prompt[-2] == {"role": "assistant", "content": "critique of <a1>"}
    # One batched call per (round, critique|revision): 2 rounds x 2 kinds x 2 drafts.
    assert len(fake.generated) == 8
