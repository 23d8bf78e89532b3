"""extends / include / remove: how files combine into one constitution, and every way that can go wrong."""

from pathlib import Path

import yaml

from constitution import check_constitution, load_constitution

COMPOSE = Path(__file__).parent / "fixtures" / "v2" / "compose"


def test_extends_overrides_in_place_removes_and_includes():
    child = load_constitution(COMPOSE / "child.yaml")
    assert child.name == "child"
    assert child.description == "The base."  # inherited
    # alpha overridden where the base had it, beta removed, epsilon included, delta added last.
    assert [(p.id, p.weight) for p in child.principles] == [("alpha", 2.0), ("gamma", 1.0), ("epsilon", 1.0),
                                                            ("delta", 1.0)]
    assert child.get("alpha").critique_request == "Is it harmful in any way?"
    # The child's snippet replaces the base's for every principle, inherited ones included.
    assert child.get("gamma").render("revision_request", prompt="p", response="r", critique="c", round=0) == \
        "Answer the question. Give only the new response."
    assert child.get("epsilon").applies_to == ("benign",)


def test_the_hash_covers_the_resolved_constitution_not_the_file_layout(tmp_path):
    child = load_constitution(COMPOSE / "child.yaml")
    flat = tmp_path / "flat.yaml"
    # The same resolved content written out as one file hashes the same.
    data = {"schema": 2, "name": child.name, "description": child.description, "snippets": child.snippets,
            "principles": [p.model_dump(mode="json", exclude_defaults=True) for p in child.principles]}
    flat.write_text(yaml.safe_dump(data, sort_keys=False))
    assert load_constitution(flat).content_hash == child.content_hash
    base = load_constitution(COMPOSE / "base.yaml")
    assert base.content_hash != child.content_hash


def test_an_include_cycle_is_an_error_naming_both_files():
    a, b = COMPOSE / "cycle_a.yaml", COMPOSE / "cycle_b.yaml"
    (problem,) = check_constitution(a).errors
    assert str(problem) == (f"{b}:3:10: error: extends: include cycle: {b} and {a} include each other "
                            "(cycle_a.yaml -> cycle_b.yaml -> cycle_a.yaml) (hint: remove one of the two references)")


def test_a_missing_include_points_at_its_entry():
    (problem,) = check_constitution(COMPOSE / "missing_include.yaml").errors
    assert str(problem).startswith(f"{COMPOSE / 'missing_include.yaml'}:3:23: error: include[1]: cannot read "
                                   f"{COMPOSE / 'nothere.yaml'}: no such file (hint: paths are relative")


def test_removing_an_unknown_id_suggests_the_close_one():
    (problem,) = check_constitution(COMPOSE / "remove_unknown.yaml").errors
    assert str(problem) == (f"{COMPOSE / 'remove_unknown.yaml'}:5:5: error: remove[1]: no inherited principle "
                            "'betta' to remove (hint: did you mean `beta`?)")


def test_errors_in_an_included_file_are_reported_in_that_file():
    checked = check_constitution(COMPOSE / "broken_include.yaml")
    assert checked.constitution is None
    assert {p.path.name for p in checked.errors} == {"template_errors.yaml"}
    assert len(checked.errors) == 6


def test_the_same_id_from_two_includes_is_a_warning_and_the_later_wins():
    checked = check_constitution(COMPOSE / "twice.yaml")
    assert checked.constitution is not None
    assert checked.constitution.get("epsilon").critique_request == "Is it short and clear?"
    (warning,) = checked.warnings
    assert str(warning).startswith(f"{COMPOSE / 'twice.yaml'}:5:5: warning: include[1]: principle 'epsilon' is "
                                   f"defined in both {COMPOSE / 'extra.yaml'} and {COMPOSE / 'extra_again.yaml'}")


def test_nothing_left_is_an_error():
    (problem,) = check_constitution(COMPOSE / "empty.yaml").errors
    assert str(problem).startswith(f"{COMPOSE / 'empty.yaml'}:1:1: error: principles: no principles are left")


def test_a_file_can_extend_the_shipped_constitution_by_name(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("schema: 2\nname: mine\nextends: default\nremove: [concise]\nprinciples:\n"
                    "  - id: no-fabrication\n    tags: [honesty]\n    weight: 3\n    critique_request: c\n"
                    "    revision_request: r {{ snippets.rewrite_only }}\n    comparison_question: q\n")
    mine = load_constitution(path)
    default = load_constitution("default")
    assert len(mine.principles) == len(default.principles) - 1
    assert mine.get("no-fabrication").weight == 3
    assert [p.id for p in mine.principles] == [p.id for p in default.principles if p.id != "concise"]
