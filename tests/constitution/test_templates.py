"""The template sandbox: escapes and runaway templates are load errors at FILE:LINE:COLUMN."""

import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from constitution import check_constitution, load_constitution
from constitution.templates import VARIABLES, TemplateProblem, render

V2 = Path(__file__).parent / "fixtures" / "v2"
CRITIQUE = VARIABLES["critique_request"]


def errors(name: str) -> list[str]:
    checked = check_constitution(V2 / name)
    assert checked.constitution is None
    return [str(p) for p in checked.errors]


def test_sandbox_escapes_and_runaway_templates_are_rejected_at_load_with_their_place():
    started = time.perf_counter()
    found = errors("escapes.yaml")
    elapsed = time.perf_counter() - started
    path = V2 / "escapes.yaml"
    assert found == [
        f"{path}:5:42: error: principles[0].critique_request: access to the private attribute '__class__' is not "
        "allowed (hint: templates may only read declared variables)",
        f"{path}:10:44: error: principles[1].revision_request: the attr filter is not allowed (hint: allowed "
        "filters: capitalize, count, d, default, first, float, int, join, last, length, lower, replace, round, "
        "string, striptags, title, trim, truncate, upper, wordcount)",
        f"{path}:16:41: error: principles[2].comparison_question: method calls are not allowed ('format') "
        "(hint: use a filter instead, e.g. {{ prompt | trim }} or {{ prompt | upper }})",
        f"{path}:20:35: error: principles[3].critique_request: rendering took over 0.25 s "
        "(hint: a loop runs too many times; loop over fewer items)",
        f"{path}:26:7: error: principles[4].revision_request: output is over the limit of 100000 characters "
        "(hint: principle text should be short; loop over fewer items)",
        f"{path}:30:40: error: principles[5].critique_request: unsafe template: '*' would repeat a value 100000 "
        "times, over the limit of 100000 characters (hint: templates may only read the declared variables)",
    ]
    assert elapsed < 1.0  # the time limit stops the 10^10-step loop


def test_template_mistakes_point_at_the_exact_column():
    path = V2 / "template_errors.yaml"
    assert [m.split(" (hint")[0] for m in errors("template_errors.yaml")] == [
        f"{path}:7:41: error: principles[0].critique_request: unknown variable 'promt'",
        f"{path}:14:11: error: principles[1].revision_request: template syntax error: expected token 'name', "
        "got 'end of print statement'",
        f"{path}:19:36: error: principles[2].comparison_question: template syntax error: Unexpected end of "
        "template. Jinja was looking for the following tags: 'elif' or 'else' or 'endif'. The innermost block "
        "that needs to be closed is 'if'.",
        f"{path}:21:33: error: principles[3].critique_request: unknown variable 'critique'",
        f"{path}:22:47: error: principles[3].revision_request: unknown snippet 'rewrite_onyl'",
        f"{path}:25:47: error: principles[4].critique_request: undefined: 'dict object' has no attribute 'name'",
    ]
    hints = [m.split(" (hint: ")[1] for m in errors("template_errors.yaml")]
    assert hints[0] == "available here: principle, prompt, response, round, snippets)"
    assert hints[4] == "did you mean `rewrite_only`?)"


@pytest.mark.parametrize(("template", "message"), [
    ("{{ principle.__init__ }}", "private attribute '__init__'"),
    ("{{ snippets['__class__'] }}", "private attribute '__class__'"),
    ("{% set k = '__cla' ~ 'ss__' %}{{ prompt[k] }}", "computed subscripts"),
    ("{{ '%s' | format(prompt) }}", "filter 'format'"),
    ("{{ prompt.upper() }}", "method calls are not allowed ('upper')"),
    ("{{ lipsum(100000) }}", "unknown variable 'lipsum'"),
    ("{{ cycler }}", "unknown variable 'cycler'"),
    ("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", "macros are not allowed"),
    ("{% include 'x' %}", "includes are not allowed"),
    ("{{ 2 ** 100000 }}", "'**' 100000 is over the size limit"),
    ("{{ 9 ** 60 ** 60 ** 60 }}", "'**' 60 is over the size limit"),
])
def test_more_escape_routes_are_closed(template, message):
    with pytest.raises(TemplateProblem, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")
                       .replace("[", r"\[")):
        render(template, {"prompt": "p", "response": "r", "round": 0, "principle": {}, "snippets": {}}, CRITIQUE)


def test_allowed_features_render():
    out = render("{% if round > 0 %}Again: {% endif %}{{ prompt | trim | upper }} ({{ principle.tags | join(', ') }})"
                 "{% for t in principle.tags %}!{% endfor %}",
                 {"prompt": " hi ", "response": "r", "round": 1, "principle": {"tags": ["a", "b"]}, "snippets": {}},
                 CRITIQUE)
    assert out == "Again: HI (a, b)!!"


@given(st.text(max_size=200))
def test_model_text_is_data_never_template_code(text):
    """A prompt that contains Jinja syntax comes out exactly as it went in."""
    variables = {"prompt": text, "response": "r", "round": 0, "principle": {}, "snippets": {}}
    assert render("{{ prompt }}", variables, CRITIQUE) == text


@given(st.text(alphabet=st.characters(blacklist_characters="{}%#\r"), max_size=200))
def test_text_without_template_syntax_renders_to_itself(text):
    variables = {"prompt": "p", "response": "r", "round": 0, "principle": {}, "snippets": {}}
    assert render(text, variables, CRITIQUE) == text


def test_render_checks_the_variables_it_is_given():
    principle = load_constitution("default").get("concise")
    with pytest.raises(TypeError, match="takes exactly"):
        principle.render("critique_request", prompt="p")


def test_a_runtime_failure_is_a_template_problem_not_a_crash():
    variables = {"prompt": "p", "response": "r", "round": 0, "principle": {}, "snippets": {}}
    with pytest.raises(TemplateProblem, match="ZeroDivisionError"):
        render("ok\n{% if round == 0 %}{{ 1 / round }}{% endif %}", variables, CRITIQUE)
