from pathlib import Path

import pytest

from constitution import ConstitutionError, PrincipleCategory, load_constitution, resolve_constitution_path

FIXTURES = Path(__file__).parent / "fixtures"


def problems(name: str) -> list[str]:
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
    assert message == f"{FIXTURES / 'missing_field.yaml'}:8: principles[1].revision_request: Field required"


def test_bad_values_each_reported_at_their_own_line():
    found = problems("bad_values.yaml")
    path = FIXTURES / "bad_values.yaml"
    assert any(m.startswith(f"{path}:5: principles[0].weight: ") for m in found), found
    assert any(m.startswith(f"{path}:9: principles[1].id: ") for m in found), found
    assert any(m.startswith(f"{path}:10: principles[1].category: ") for m in found), found
    assert len(found) == 3


def test_duplicate_principle_id_points_at_the_second_one():
    (message,) = problems("duplicate_id.yaml")
    assert message.startswith(f"{FIXTURES / 'duplicate_id.yaml'}:8: principles[1].id: duplicate principle id")


def test_duplicate_keys_are_errors_not_silently_overwritten():
    found = problems("typo_and_duplicate_key.yaml")
    assert found == [f"{FIXTURES / 'typo_and_duplicate_key.yaml'}:9: comparison_question: duplicate key"]


def test_unknown_field_is_rejected_at_its_line(tmp_path):
    text = (FIXTURES / "typo_and_duplicate_key.yaml").read_text().replace(
        "    comparison_question: Which is the least harmful?\n", "")
    broken = tmp_path / "typo.yaml"
    broken.write_text(text)
    with pytest.raises(ConstitutionError) as caught:
        load_constitution(broken)
    assert [str(p) for p in caught.value.problems] == [
        f"{broken}:5: principles[0].critque_request: Extra inputs are not permitted"]


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
