"""Author warnings: near-duplicate wording, starved weights, unused snippets and assignments."""

from constitution import check_constitution


def write(tmp_path, principles: str, head: str = "") -> str:
    path = tmp_path / "c.yaml"
    path.write_text("schema: 2\nname: lint\n" + head + "principles:\n" + principles)
    return path


PRINCIPLE = """  - id: {id}
    weight: {weight}
    critique_request: {critique}
    revision_request: Rewrite it so that this is fixed; {critique}
    comparison_question: Which response is better on this; {critique}
"""


def test_near_duplicate_principles_are_a_warning_at_the_second(tmp_path):
    path = write(tmp_path, PRINCIPLE.format(id="a", weight=1, critique="Point out any made up facts in it.")
                 + PRINCIPLE.format(id="b", weight=1, critique="Point out any made-up facts in it.")
                 + PRINCIPLE.format(id="c", weight=1, critique="Is the tone of the answer kind to the reader?"))
    checked = check_constitution(path)
    assert checked.constitution is not None
    (warning,) = checked.warnings
    assert str(warning).startswith(f"{path}:9:9: warning: principles[1].id: principle 'b' is worded almost like "
                                   f"'a' ({path}:4)")


def test_a_weight_that_starves_a_principle_is_a_warning(tmp_path):
    path = write(tmp_path, PRINCIPLE.format(id="a", weight=10, critique="Is anything made up?")
                 + PRINCIPLE.format(id="b", weight=0.1, critique="Is the tone kind?"))
    (warning,) = check_constitution(path).warnings
    # 0.1 / 10.1 = 0.99 %, below a tenth of the equal share (5 %).
    assert str(warning) == (f"{path}:10:13: warning: principles[1].weight: weight 0.1 gives 'b' a 0.99% chance per "
                            "draw (about once in 101 draws): practically never sampled (hint: an equal share here is "
                            "50.0%; raise the weight or `remove` the principle)")


def test_unused_snippets_and_assignments_are_warnings(tmp_path):
    principle = PRINCIPLE.format(id="a", weight=1, critique="'{% set unused = 1 %}Is anything made up?'")
    principle = principle.replace("; '{% set unused = 1 %}", "; '")
    path = write(tmp_path, principle, head="snippets:\n  spare: Never used.\n")
    assert [str(w).split(" (hint")[0] for w in check_constitution(path).warnings] == [
        f"{path}:8:31: warning: principles[0].critique_request: `{{% set unused %}}` is never used",
        f"{path}:4:10: warning: snippets.spare: snippet 'spare' is never used",
    ]


def test_the_shipped_constitution_has_no_warnings():
    checked = check_constitution("default")
    assert checked.constitution is not None and checked.problems == ()
