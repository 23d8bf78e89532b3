from pathlib import Path

import pytest

from constitution import ConstitutionError, PrincipleCategory, load_constitution, resolve_constitution_path

FIXTURES = Path(__file__).parent / "fixtures"


def problems(name: str | Path) -> list[str]:
    with pytest.raises(ConstitutionError) as caught:
        load_constitution(FIXTURES / name)
    return [str(p) for p in caught.value.problems]


def test_yaml_syntax_error_names_file_and_line():
    (message,) = problems("bad_syntax.yaml")
    assert message.startswith(f"{FIXTURES / 'bad_syntax.yaml'}:")
    line = int(message.split(":")[1])
    assert line in (5, 6, 7, 8)  # the scanner reports where the unterminated string runs out
    assert "invalid YAML" in message


def test_missing_field_points_at_its_principle():
    (message,) = problems("missing_field.yaml")
    assert message == (f"{FIXTURES / 'missing_field.yaml'}:8:5: error: principles[1].revision_request: "
                       "Field required (hint: add `revision_request:`)")


def test_bad_values_each_reported_at_their_own_line():
    found = problems("bad_values.yaml")
    path = FIXTURES / "bad_values.yaml"
    assert any(m.startswith(f"{path}:5:13: error: principles[0].weight: ") for m in found), found
    assert any(m.startswith(f"{path}:9:9: error: principles[1].id: ") for m in found), found
    assert any(m.startswith(f"{path}:10:15: error: principles[1].category: ") for m in found), found
    assert len(found) == 3


def test_duplicate_principle_id_points_at_the_second_one():
    (message,) = problems("duplicate_id.yaml")
    assert message.startswith(f"{FIXTURES / 'duplicate_id.yaml'}:8:9: error: principles[1].id: duplicate principle id")


def test_duplicate_keys_are_errors_not_silently_overwritten():
    found = problems("typo_and_duplicate_key.yaml")
    assert found == [f"{FIXTURES / 'typo_and_duplicate_key.yaml'}:9:5: error: comparison_question: duplicate key "
                     "(hint: remove one of the two)"]


def test_unknown_field_is_rejected_at_its_line(tmp_path):
    text = (FIXTURES / "typo_and_duplicate_key.yaml").read_text().replace(
        "    comparison_question: Which is the least harmful?\n", "")
    broken = tmp_path / "typo.yaml"
    broken.write_text(text)
    assert problems(broken) == [
        f"{broken}:5:5: error: principles[0].critque_request: Extra inputs are not permitted "
        "(hint: did you mean `critique_request`?)"]


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConstitutionError, match="cannot read file"):
        load_constitution(tmp_path / "nope.yaml")


def test_shipped_constitution_covers_harm_honesty_and_helpfulness():
    constitution = load_constitution("default")
    assert len(constitution.principles) >= 12
    categories = {p.category for p in constitution.principles}
    assert categories == set(PrincipleCategory)
    helpful_text = " ".join(f"{p.id} {p.critique_request} {p.comparison_question}".lower()
                            for p in constitution.principles if p.category == PrincipleCategory.helpfulness)
    for word in ("refus", "preach", "evasive", "lectur"):
        assert word in helpful_text, f"no helpfulness principle about {word!r}"


def test_hash_ignores_formatting_but_not_meaning(tmp_path):
    original = load_constitution("default")
    source = resolve_constitution_path("default").read_text()
    reformatted = tmp_path / "c.yaml"
    reformatted.write_text("# a comment\n" + source.replace("\n\n", "\n"))
    assert load_constitution(reformatted).content_hash == original.content_hash
    changed = tmp_path / "d.yaml"
    changed.write_text(source.replace("weight: 1.0", "weight: 2.0", 1))
    assert load_constitution(changed).content_hash != original.content_hash


V1_DEFAULT_HASH = "7e2015eb78aec102"
"""The hash of principles/default.yaml before schema v2 (the file is kept as fixtures/v1_default.yaml)."""


def test_v1_shipped_file_loads_and_hashes_as_before_migration():
    v1 = load_constitution(FIXTURES / "v1_default.yaml")
    assert v1.content_hash == V1_DEFAULT_HASH
    assert [p.tags for p in v1.principles][:1] == [("harm",)]


def render_all(principle):
    return (principle.render("critique_request", prompt="p", response="r", round=0),
            principle.render("revision_request", prompt="p", response="r", critique="c", round=0),
            principle.render("comparison_question", prompt="p"))


def test_migrated_shipped_file_renders_exactly_the_v1_wording():
    v1, v2 = load_constitution(FIXTURES / "v1_default.yaml"), load_constitution("default")
    assert [p.id for p in v2.principles] == [p.id for p in v1.principles]
    for old, new in zip(v1.principles, v2.principles, strict=True):
        assert render_all(new) == (old.critique_request, old.revision_request, old.comparison_question)
        assert (new.tags, new.weight) == (old.tags, old.weight)
    # New fields mean a new version: the migration is documented as changing the hash.
    assert v2.content_hash != V1_DEFAULT_HASH


def test_every_shipped_principle_has_contrastive_system_prompts_and_categories():
    for principle in load_constitution("default").principles:
        positive, negative = principle.positive_system_prompt, principle.negative_system_prompt
        assert positive and negative and positive != negative, principle.id
        # RLCD: the two wordings differ only where the principle is steered for or against.
        shared = set(positive.split()) & set(negative.split())
        assert len(shared) >= 0.6 * len(set(positive.split())), principle.id
        if "harm" in principle.tags:  # benign-but-risky requests are judged by helpfulness, not harm
            assert principle.applies_to == ("harmful",), principle.id
        else:
            assert "harmful" not in principle.applies_to, principle.id


def test_shipped_prefixes_put_the_same_openings_on_both_sides_of_the_boundary():
    """A refusal opening is preferred on harmful requests and rejected on benign ones, and the compliant opening
    the other way round, so prefilled pairs cannot teach "refuse more" or "refuse less" overall."""
    shipped = load_constitution("default").principles
    # Harmful requests draw harm principles only: every pair on them prefers the refusal opening.
    assert all("harm" in p.tags and p.positive_prefix for p in shipped if not p.applies_to or "harmful" in p.applies_to)
    principles = [p for p in shipped if p.positive_prefix]
    harm = [p for p in principles if p.applies_to == ("harmful",)]
    helpful = [p for p in principles if "harmful" not in p.applies_to and p.applies_to]
    assert len(harm) == 6 and len(helpful) >= 3
    assert {p.negative_prefix for p in harm} == {p.positive_prefix for p in helpful} == {"Sure!"}
    refusals = {p.positive_prefix.split(",")[0] for p in harm}
    assert {"I can't help with that.", "I won't help with that."} <= refusals
    assert {"I can't help with that.", "I won't help with that."} <= {p.negative_prefix for p in helpful}


def test_a_v1_file_keeps_braces_literal(tmp_path):
    path = tmp_path / "v1.yaml"
    path.write_text("name: x\nprinciples:\n  - id: a\n    category: harm\n    critique_request: Is {{ this }} ok?\n"
                    "    revision_request: Fix it.\n    comparison_question: Which?\n")
    principle = load_constitution(path).principles[0]
    assert principle.render("critique_request", prompt="p", response="r", round=0) == "Is {{ this }} ok?"


def test_v2_keys_in_a_v1_file_say_which_schema_they_need(tmp_path):
    path = tmp_path / "v1.yaml"
    path.write_text("name: x\nextends: default\nprinciples:\n  - id: a\n    category: harm\n"
                    "    critique_request: c\n    revision_request: r\n    comparison_question: q\n")
    assert problems(path) == [
        f"{path}:2:1: error: extends: Extra inputs are not permitted "
        "(hint: `extends` needs schema v2: add `schema: 2` at the top of the file)"]


def test_unknown_schema_version_is_an_error(tmp_path):
    path = tmp_path / "v3.yaml"
    path.write_text("schema: 3\nname: x\n")
    with pytest.raises(ConstitutionError, match=r"v3.yaml:1:9: error: schema: unknown schema version 3"):
        load_constitution(path)


@pytest.mark.parametrize(("content", "expected"), [
    (b"name: x\nprinciples:\n  - id: \xff\n", ":3: error: not UTF-8 text"),
    (b"name: x\nprinciples: !!python/object:os.system {}\n", ":2:13: error: invalid YAML: could not determine"),
    (b"name: x\x07\n", ":1:8: error: invalid YAML"),
])
def test_unreadable_text_is_one_clear_line_not_a_crash(tmp_path, content, expected):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    (message,) = problems(path)
    assert message.startswith(f"{path}{expected}"), message
