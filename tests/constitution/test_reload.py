"""Hot reload: a broken edit keeps the last good constitution and reports what is wrong."""

import time

import pytest

from constitution import ConstitutionError, load_constitution, load_constitution_or_last_good, resolve_constitution_path


def test_a_broken_edit_keeps_the_last_good_version_and_reports_it(tmp_path):
    path = tmp_path / "live.yaml"
    good_text = resolve_constitution_path("default").read_text()
    path.write_text(good_text)
    good, problems = load_constitution_or_last_good(path, None)
    assert problems == []

    path.write_text(good_text.replace("{{ snippets.rewrite_only }}", "{{ snippets.rewrite_onyl }}", 1))
    started = time.perf_counter()
    kept, problems = load_constitution_or_last_good(path, good)
    assert time.perf_counter() - started < 1.0
    assert kept is good
    assert [p.message for p in problems] == ["unknown snippet 'rewrite_onyl'"]
    assert problems[0].line is not None and problems[0].column is not None

    edited = good_text.replace("weight: 1.2", "weight: 1.5")
    path.write_text(edited)
    new, problems = load_constitution_or_last_good(path, good)
    assert problems == [] and new.content_hash != good.content_hash
    assert new.get("no-overcautious-refusal").weight == 1.5


def test_without_a_last_good_version_a_broken_file_raises(tmp_path):
    path = tmp_path / "live.yaml"
    path.write_text("schema: 2\nname: x\nprinciples: []\n")
    with pytest.raises(ConstitutionError, match="no principles are left"):
        load_constitution_or_last_good(path, None)
    with pytest.raises(ConstitutionError):
        load_constitution(tmp_path / "gone.yaml")
